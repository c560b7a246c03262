"""Packing slots: engine.compaction's order and cache.keep_rows against a
plain gather of the live rows."""

import numpy as np
import torch

from actlab.generation.cache import keep_rows
from actlab.generation.engine import compaction


def test_compaction_keeps_every_live_slot_and_moves_only_rows_past_the_end():
    rng = np.random.default_rng(0)
    for _ in range(200):
        live = rng.random(rng.integers(1, 40)) < rng.random()
        order = compaction(live, int(live.sum()))
        assert sorted(order) == list(np.flatnonzero(live))
        moved = order != np.arange(len(order))
        assert (order[moved] >= len(order)).all()  # a row below the end never moves
        assert not live[:len(order)][moved].any()  # and a mover only fills a hole


def test_keep_rows_equals_a_gather():
    rng = np.random.default_rng(1)
    for _ in range(50):
        live = rng.random(rng.integers(1, 30)) < 0.6
        rows = torch.randn(len(live), 3, 5)
        order = compaction(live, int(live.sum()))
        kept = keep_rows(rows.clone(), order)
        torch.testing.assert_close(kept, rows[torch.as_tensor(order, dtype=torch.long)], rtol=0, atol=0)
