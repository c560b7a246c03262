"""Every method a patching config asks for, on one baseline."""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from . import attribution, exact  # noqa: F401 - they register their methods
from .attribution import EMBED
from .config import PATCH_METHODS, PatchConfig
from .exact import Baseline, grid, grid_hooks
from .pairs import TokenPair


def patch_effects(model, pairs: Sequence[TokenPair], cfg: PatchConfig, first_pair: int = 0) -> pa.Table:
    """The effects table of every method in cfg.method (rows of each, its
    name in the `method` column), the clean and corrupted runs shared."""
    cfg.check(model.n_layers, model.config.num_attention_heads)
    hooks = grid_hooks(grid(model, pairs, cfg)) + ([EMBED] if "ig" in cfg.method else [])
    base = Baseline.of(model, pairs, hooks, cfg.batch_tokens(model))
    return pa.concat_tables([PATCH_METHODS.pick(method, "method")(model, pairs, cfg, first_pair, base)
                             for method in cfg.method])
