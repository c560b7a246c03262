"""Exact activation patching, many variants per forward.

For each pair: one forward of the clean prompt caches every hook the grid
patches (and the clean next-token distribution), one of the corrupted
prompt gives the corrupted metric. Each variant (component, layer,
position[, head]) is then a row of a batch: the corrupted prompt with that
one cell set to the clean run's value (an actlab.Set, through the one
intervention mechanism), so a forward computes as many variants as the
token budget holds, where TransformerLens's helpers run one variant per
forward. A variant runs from its patched block and position on, over the
corrupted run's keys and values and block input (suffix.py), and only the
last position's final-norm output goes through the LM head.

The metric is the logit difference answer - wrong answer at the last
position; `normalized` is (patched - corrupted) / (clean - corrupted), as
TransformerLens's IOI demos normalise it (1: the clean behaviour restored,
0: no effect; NaN where clean equals corrupted). prob_answer is the
patched run's probability of the answer token, kl the KL divergence of the
patched next-token distribution from the clean one, KL(clean || patched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from ..engine import plan_batches
from ..hooks import capture, head_dim
from ..interventions import BatchEdits, Intervention, Set
from ..tokens import pad
from .config import COMPONENTS, PATCH_METHODS, PatchConfig
from .pairs import TokenPair
from .suffix import Consume, SuffixRows, last_token_logits, suffix_logits


@dataclass(frozen=True)
class Variant:
    """One patched copy of pair `pair`'s corrupted prompt."""

    pair: int  # index into the pairs of the call
    component: str
    layer: int
    position: int | None  # None: every position (head_all_pos)
    head: int | None


def last_position_logits(model, padded) -> torch.Tensor:
    """The LM head on each row's last real token: padded (actlab.tokens.Padded, right-padded) -> (b, V)."""
    hidden = model.base_model(**padded.inputs(), use_cache=False).last_hidden_state  # (b, T, d)
    return last_token_logits(model, hidden, padded.lengths)


def last_logits(model, sequences: Sequence[Sequence[int]], interventions: Sequence[tuple[Intervention, ...]] | None,
                budget: int, consume: Consume) -> None:
    """Forward token sequences in batches of at most `budget` padded tokens
    (longest first), each row with its interventions; consume(rows, logits)
    gets every batch's last-position logits."""
    lengths = np.array([len(s) for s in sequences])
    edits = BatchEdits(model, interventions if interventions is not None else [()] * len(sequences))
    with edits.hooked(), torch.inference_mode():
        for rows in plan_batches(lengths, None, budget):
            padded = pad([sequences[r] for r in rows], "right", model.pad_id, model.device)
            if edits:
                edits.plan(rows, padded)
            consume(rows, last_position_logits(model, padded))


def cached_runs(model, sequences: Sequence[Sequence[int]], hooks: Sequence[str], budget: int
                ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """Per sequence, its activation (T, w) at every hook, and its
    last-position log-probabilities (n, V)."""
    batches: dict[str, list[torch.Tensor]] = {hook: [] for hook in hooks}
    cache: list[dict[str, torch.Tensor]] = [{} for _ in sequences]
    logprobs = [None] * len(sequences)

    def consume(rows: np.ndarray, logits: torch.Tensor) -> None:
        for k, r in enumerate(rows):
            cache[r] = {hook: batches[hook][-1][k, :len(sequences[r])] for hook in hooks}
            logprobs[r] = logits[k].log_softmax(-1)

    seen = {hook: (lambda hidden, hook=hook: batches[hook].append(hidden.detach().clone())) for hook in hooks}
    with capture(model.hf_model, seen):
        last_logits(model, sequences, None, budget, consume)
    return cache, torch.stack(logprobs)


def grid(model, pairs: Sequence[TokenPair], cfg: PatchConfig) -> list[Variant]:
    """Every variant of every pair, in (pair, component, layer, position, head) order."""
    heads = model.config.num_attention_heads
    out = []
    for i, pair in enumerate(pairs):
        positions = cfg.chosen_positions(len(pair.clean), pair.id)
        for name in cfg.components:
            component = COMPONENTS[name]
            for layer in cfg.chosen_layers(model.n_layers):
                places = [None] if component.all_positions else positions
                for position in places:
                    for head in (cfg.chosen_heads(heads) if component.per_head else [None]):
                        out.append(Variant(i, name, layer, position, head))
    return out


def patch(variant: Variant, clean: Mapping[str, torch.Tensor], width: int, start: int = 0) -> Set:
    """The variant's edit: its cell of the corrupted run set to the clean
    run's value, positions counted from `start` (where the forward begins)."""
    hook = COMPONENTS[variant.component].hook(variant.layer)
    value = clean[hook]  # (T, w)
    if variant.head is not None:
        value = value[:, variant.head * width:(variant.head + 1) * width]  # (T, d_head)
    if variant.position is None:
        return Set(hook, value[start:], positions="all", head=variant.head)
    p = variant.position
    return Set(hook, value[p:p + 1], positions=[p - start], head=variant.head)


def metrics(logits: torch.Tensor, answers: torch.Tensor, wrongs: torch.Tensor, clean: torch.Tensor) -> dict:
    """logits (b, V) at the last position -> logit difference, the answer's
    probability, and KL(clean || this) for clean log-probabilities (b, V)."""
    logprobs = logits.log_softmax(-1)  # (b, V)
    rows = torch.arange(len(logits))
    return {"metric": (logits[rows, answers] - logits[rows, wrongs]).cpu().numpy(),
            "prob_answer": logprobs[rows, answers].exp().cpu().numpy(),
            "kl": (clean.exp() * (clean - logprobs)).sum(-1).cpu().numpy()}


@dataclass
class Baseline:
    """What every method starts from: the pairs' clean activations at the
    grid's hooks, clean log-probabilities (n, V), and the clean and
    corrupted metrics (n,)."""

    cache: list[dict[str, torch.Tensor]]
    clean_logprobs: torch.Tensor
    answers: torch.Tensor  # (n,)
    wrongs: torch.Tensor  # (n,)
    clean: np.ndarray
    corrupted: np.ndarray

    @classmethod
    def of(cls, model, pairs: Sequence[TokenPair], hooks: Sequence[str], budget: int) -> "Baseline":
        cache, clean_logprobs = cached_runs(model, [p.clean for p in pairs], hooks, budget)
        device = clean_logprobs.device
        answers = torch.tensor([p.answer for p in pairs], device=device)
        wrongs = torch.tensor([p.wrong for p in pairs], device=device)
        rows = torch.arange(len(pairs), device=device)
        clean = (clean_logprobs[rows, answers] - clean_logprobs[rows, wrongs]).cpu().numpy()  # log-softmax cancels
        corrupted = np.zeros(len(pairs))

        def measure(rows: np.ndarray, logits: torch.Tensor) -> None:
            index = torch.as_tensor(rows, device=device)
            corrupted[rows] = metrics(logits, answers[index], wrongs[index], clean_logprobs[index])["metric"]

        last_logits(model, [p.corrupted for p in pairs], None, budget, measure)
        return cls(cache, clean_logprobs, answers, wrongs, clean, corrupted)


def effects_table(variants: Sequence[Variant], pairs: Sequence[TokenPair], base: Baseline, found: dict,
                  method: str, first_pair: int) -> pa.Table:
    """The effects table's rows (see exact_effects) from each variant's
    metric, prob_answer and kl in `found` (prob_answer and kl may be None)."""
    pair_of = np.array([v.pair for v in variants], dtype=np.int64)
    clean, corrupted = base.clean[pair_of], base.corrupted[pair_of]
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = (found["metric"] - corrupted) / (clean - corrupted)
    return pa.table({
        "pair": pa.array(pair_of + first_pair, pa.int64()),
        "id": pa.array([pairs[v.pair].id for v in variants], pa.string()),
        "method": pa.array([method] * len(variants), pa.string()),
        "component": pa.array([v.component for v in variants], pa.string()),
        "layer": pa.array([v.layer for v in variants], pa.int32()),
        "position": pa.array([v.position for v in variants], pa.int32()),
        "head": pa.array([v.head for v in variants], pa.int32()),
        "metric_patched": pa.array(found["metric"], pa.float32()),
        "metric_clean": pa.array(clean, pa.float32()),
        "metric_corrupted": pa.array(corrupted, pa.float32()),
        "normalized": pa.array(normalized, pa.float32()),
        **{key: pa.array(found[key], pa.float32()) if key in found else pa.nulls(len(variants), pa.float32())
           for key in ("prob_answer", "kl")},
    })


def grid_hooks(variants: Sequence[Variant]) -> list[str]:
    """The hooks the variants patch."""
    return sorted({COMPONENTS[v.component].hook(v.layer) for v in variants})


def exact_effects(model, pairs: Sequence[TokenPair], cfg: PatchConfig, first_pair: int = 0,
                  base: Baseline | None = None) -> pa.Table:
    """One row per (pair, component, layer, position, head): pair (its
    index, counting from first_pair), id, method ("exact"), component,
    layer, position (null: every position), head (null: the whole
    activation), metric_patched, metric_clean, metric_corrupted,
    normalized, prob_answer, kl. `base`: the pairs' Baseline when the
    caller has it."""
    cfg.check(model.n_layers, model.config.num_attention_heads)
    budget = cfg.batch_tokens(model)
    variants = grid(model, pairs, cfg)
    base = base or Baseline.of(model, pairs, grid_hooks(variants), budget)
    device = base.clean_logprobs.device
    width = head_dim(model.config)
    of_pair = torch.tensor([v.pair for v in variants], device=device)
    found = {key: np.zeros(len(variants)) for key in ("metric", "prob_answer", "kl")}

    def patched(rows: np.ndarray, logits: torch.Tensor) -> None:
        index = of_pair[torch.as_tensor(rows, device=device)]
        for key, values in metrics(logits, base.answers[index], base.wrongs[index],
                                   base.clean_logprobs[index]).items():
            found[key][rows] = values

    starts = [0 if v.position is None else v.position for v in variants]
    edits = [(patch(v, base.cache[v.pair], width, start),) for v, start in zip(variants, starts)]
    rows = SuffixRows([v.pair for v in variants], starts, [v.layer for v in variants], edits)
    suffix_logits(model, [p.corrupted for p in pairs], rows, budget, patched)
    return effects_table(variants, pairs, base, found, "exact", first_pair)


PATCH_METHODS.register("exact", exact_effects)
