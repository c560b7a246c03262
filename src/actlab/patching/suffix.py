"""Exact patching's forward from the patched block and position on.

A variant patched at block L and position p leaves positions 0..p-1 at
every block (attention is causal), and every position at blocks below L,
exactly as the corrupted run computed them. So each pair's corrupted
prompt is prefilled once into a slot of a static cache
(actlab.generation.cache.SlotCache, its attention supplied to the Hugging
Face modules through transformers' extension points, as the generation
engine's shared prompt beginnings are); a variant's slot gets a copy of
the first p positions' keys and values; and only tokens p..T-1 go through
blocks L.. (the model's own modules: its block list is cut to them while
the variant's batch runs, `blocks_from`), starting from the corrupted
run's input of block L, the patch on their first position. A head patched
at every position starts at position 0. On a sweep over every block and
position this computes about a quarter of the tokens x blocks that one
whole forward per variant does; the results equal a whole forward's within
float32 rounding (the tests compare both, and TransformerLens).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..engine import plan_batches
from ..generation import cache_keyword
from ..generation.cache import SlotCache, attending_through
from ..hooks import block_hook, capture, layout_for, lm_logits
from ..interventions import BatchEdits, Intervention, Set
from ..tokens import pad

Consume = Callable[[np.ndarray, torch.Tensor], None]  # (rows, last-position logits (b, V))


def last_token_logits(model, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The LM head on each row's last real token: final-norm outputs (b, T, d)
    of right-padded rows of `lengths` tokens -> (b, V), float32 at least."""
    last = hidden[torch.arange(len(hidden)), lengths.to(hidden.device) - 1]  # (b, d)
    logits = lm_logits(model.hf_model, last)
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


@dataclass
class SuffixRows:
    """Row r runs prompt `prompts[r]` from token `starts[r]` and block
    `firsts[r]` on, with `edits[r]` (positions counted from starts[r])."""

    prompts: list[int]
    starts: list[int]
    firsts: list[int]
    edits: list[tuple[Intervention, ...]]


@contextmanager
def blocks_from(model, first: int) -> Iterator[None]:
    """Within it, the model's forward runs its blocks first.. only (the same
    modules, so their hooks and cache layers are theirs; a config's
    per-block layer_types is cut alike, for models that index it by place)."""
    if first == 0:
        yield
        return
    base, name = model.base_model, layout_for(model.config).layers
    blocks, types = getattr(base, name), getattr(model.config, "layer_types", None)
    setattr(base, name, nn.ModuleList(list(blocks)[first:]))
    if types is not None:
        model.config.layer_types = types[first:]
    try:
        yield
    finally:
        setattr(base, name, blocks)
        if types is not None:
            model.config.layer_types = types


def suffix_logits(model, prompts: Sequence[Sequence[int]], rows: SuffixRows, budget: int, consume: Consume) -> None:
    """Every row's last-position logits (see the module docstring), in
    batches of at most `budget` padded tokens, each batch's rows starting
    at one block; consume(rows, logits) gets them."""
    starts, firsts = np.asarray(rows.starts, dtype=np.int64), np.asarray(rows.firsts, dtype=np.int64)
    suffixes = [prompts[p][s:] for p, s in zip(rows.prompts, starts)]
    lengths = np.array([len(s) for s in suffixes])
    batches = [(first, members[batch]) for first in sorted(set(firsts.tolist()))
               for members in [np.flatnonzero(firsts == first)]
               for batch in plan_batches(lengths[members], None, budget)]
    n, device = len(prompts), model.device
    cache = SlotCache(model.n_layers, n + max(len(b) for _, b in batches), 2 * max(map(len, prompts)), device)
    inputs = _block_inputs(model, prompts, cache, sorted(set(firsts.tolist()) - {0}), budget)
    injected = [((Set(block_hook(f, "hook_resid_pre"), inputs[p][f][s:]),) if f else ()) + e
                for p, s, f, e in zip(rows.prompts, starts, firsts, rows.edits)]
    per_row = BatchEdits(model, injected)
    keyword = cache_keyword(model.base_model)
    with attending_through(model.hf_model, cache), per_row.hooked(), torch.inference_mode():
        for first, batch in batches:
            targets = torch.arange(n, n + len(batch), device=device)
            for (prompt, start), members in _groups(batch, rows.prompts, starts).items():
                if start:
                    cache.copy_prefix(prompt, targets[members], start)
            padded = pad([suffixes[r] for r in batch], "right", model.pad_id, device)
            cache.plan_prefill(targets, torch.as_tensor(starts[batch], device=device), padded.input_ids.shape[1])
            per_row.plan(batch, padded)
            with blocks_from(model, first):
                hidden = model.base_model(input_ids=padded.input_ids, use_cache=True, **{keyword: cache},
                                          position_ids=cache.prefill_positions(padded.input_ids.shape[1])
                                          ).last_hidden_state  # (b, T, d)
            consume(batch, last_token_logits(model, hidden, padded.lengths))


def _block_inputs(model, prompts: Sequence[Sequence[int]], cache: SlotCache, firsts: list[int], budget: int
                  ) -> list[dict[int, torch.Tensor]]:
    """Prefill the prompts into slots 0..n-1; per prompt, the input (T, d)
    of each block in `firsts`."""
    seen: dict[int, torch.Tensor] = {}
    out: list[dict[int, torch.Tensor]] = [{} for _ in prompts]
    hooks = {block_hook(f, "hook_resid_pre"): (lambda hidden, f=f: seen.__setitem__(f, hidden.detach().clone()))
             for f in firsts}
    keyword = cache_keyword(model.base_model)
    with attending_through(model.hf_model, cache), capture(model.hf_model, hooks), torch.inference_mode():
        for rows in plan_batches(np.array([len(p) for p in prompts]), None, budget):
            padded = pad([prompts[r] for r in rows], "right", model.pad_id, model.device)
            width = padded.input_ids.shape[1]
            cache.plan_prefill(torch.as_tensor(rows, device=model.device), None, width)
            model.base_model(input_ids=padded.input_ids, use_cache=True, **{keyword: cache},
                             position_ids=torch.arange(width, device=model.device).expand_as(padded.input_ids))
            for k, r in enumerate(rows):
                out[r] = {f: seen[f][k, :len(prompts[r])] for f in firsts}
    return out


def _groups(batch: np.ndarray, prompts: Sequence[int], starts: np.ndarray) -> dict[tuple[int, int], list[int]]:
    """(prompt, start) -> the batch's members (indices into batch) that share that beginning."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, r in enumerate(batch):
        groups.setdefault((int(prompts[r]), int(starts[r])), []).append(k)
    return groups
