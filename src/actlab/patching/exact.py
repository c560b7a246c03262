"""Exact activation patching, many variants per forward.

For each pair: one forward of the clean prompt caches every hook the grid
patches (and the clean next-token distribution), one of the corrupted
prompt gives the corrupted metric. Each variant (component, layer,
position[, head]) is then a row of a batch: the corrupted prompt with that
one cell set to the clean run's value (an actlab.Set, through the one
intervention mechanism), so a forward computes as many variants as the
token budget holds, where TransformerLens's helpers run one variant per
forward. Only the last position's final-norm output goes through the LM
head.

The metric is the logit difference answer - wrong answer at the last
position; `normalized` is (patched - corrupted) / (clean - corrupted), as
TransformerLens's IOI demos normalise it (1: the clean behaviour restored,
0: no effect; NaN where clean equals corrupted). prob_answer is the
patched run's probability of the answer token, kl the KL divergence of the
patched next-token distribution from the clean one, KL(clean || patched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from ..engine import auto_token_budget, plan_batches
from ..hooks import capture, head_dim, lm_logits
from ..interventions import BatchEdits, Intervention, Set
from ..tokens import pad
from .config import COMPONENTS, PatchConfig
from .pairs import TokenPair

Consume = Callable[[np.ndarray, torch.Tensor], None]  # (rows, last-position logits (b, V) float32)


@dataclass(frozen=True)
class Variant:
    """One patched copy of pair `pair`'s corrupted prompt."""

    pair: int  # index into the pairs of the call
    component: str
    layer: int
    position: int | None  # None: every position (head_all_pos)
    head: int | None


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
            hidden = model.base_model(**padded.inputs(), use_cache=False).last_hidden_state  # (b, T, d)
            last = hidden[torch.arange(len(rows)), padded.lengths.to(hidden.device) - 1]  # (b, d)
            consume(rows, lm_logits(model.hf_model, last).float())


def clean_runs(model, pairs: Sequence[TokenPair], hooks: Sequence[str], budget: int
               ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """Per pair, the clean run's activation (T, w) at every hook, and the
    clean last-position log-probabilities (n, V)."""
    batches: dict[str, list[torch.Tensor]] = {hook: [] for hook in hooks}
    cache: list[dict[str, torch.Tensor]] = [{} for _ in pairs]
    logprobs = [None] * len(pairs)

    def consume(rows: np.ndarray, logits: torch.Tensor) -> None:
        for k, r in enumerate(rows):
            length = len(pairs[r].clean)
            cache[r] = {hook: batches[hook][-1][k, :length] for hook in hooks}
            logprobs[r] = logits[k].log_softmax(-1)

    seen = {hook: (lambda hidden, hook=hook: batches[hook].append(hidden.detach().clone())) for hook in hooks}
    with capture(model.hf_model, seen):
        last_logits(model, [p.clean for p in pairs], None, budget, consume)
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


def patch(variant: Variant, clean: Mapping[str, torch.Tensor], width: int) -> Set:
    """The variant's edit: its cell of the corrupted run set to the clean run's value."""
    hook = COMPONENTS[variant.component].hook(variant.layer)
    value = clean[hook]  # (T, w)
    if variant.head is not None:
        value = value[:, variant.head * width:(variant.head + 1) * width]  # (T, d_head)
    if variant.position is None:
        return Set(hook, value, positions="all", head=variant.head)
    return Set(hook, value[variant.position:variant.position + 1], positions=[variant.position], head=variant.head)


def metrics(logits: torch.Tensor, answers: torch.Tensor, wrongs: torch.Tensor, clean: torch.Tensor) -> dict:
    """logits (b, V) at the last position -> logit difference, the answer's
    probability, and KL(clean || this) for clean log-probabilities (b, V)."""
    logprobs = logits.log_softmax(-1)  # (b, V)
    rows = torch.arange(len(logits))
    return {"metric": (logits[rows, answers] - logits[rows, wrongs]).cpu().numpy(),
            "prob_answer": logprobs[rows, answers].exp().cpu().numpy(),
            "kl": (clean.exp() * (clean - logprobs)).sum(-1).cpu().numpy()}


def exact_effects(model, pairs: Sequence[TokenPair], cfg: PatchConfig, first_pair: int = 0) -> pa.Table:
    """One row per (pair, component, layer, position, head): pair (its
    index, counting from first_pair), id, component, layer, position
    (null: every position), head (null: the whole activation),
    metric_patched, metric_clean, metric_corrupted, normalized, prob_answer, kl."""
    cfg.check(model.n_layers, model.config.num_attention_heads)
    budget = cfg.max_batch_tokens or auto_token_budget(model.device, model.d_model)
    variants = grid(model, pairs, cfg)
    hooks = sorted({COMPONENTS[v.component].hook(v.layer) for v in variants})
    cache, clean_logprobs = clean_runs(model, pairs, hooks, budget)
    device = clean_logprobs.device
    answers = torch.tensor([p.answer for p in pairs], device=device)
    wrongs = torch.tensor([p.wrong for p in pairs], device=device)
    rows = torch.arange(len(pairs), device=device)
    clean_metric = (clean_logprobs[rows, answers] - clean_logprobs[rows, wrongs]).cpu().numpy()  # log-softmax cancels
    corrupted_metric = np.zeros(len(pairs))

    def corrupted(rows: np.ndarray, logits: torch.Tensor) -> None:
        index = torch.as_tensor(rows, device=device)
        corrupted_metric[rows] = metrics(logits, answers[index], wrongs[index], clean_logprobs[index])["metric"]

    last_logits(model, [p.corrupted for p in pairs], None, budget, corrupted)
    width = head_dim(model.config)
    of_pair = torch.tensor([v.pair for v in variants], device=device)
    found = {key: np.zeros(len(variants)) for key in ("metric", "prob_answer", "kl")}

    def patched(rows: np.ndarray, logits: torch.Tensor) -> None:
        index = of_pair[torch.as_tensor(rows, device=device)]
        for key, values in metrics(logits, answers[index], wrongs[index], clean_logprobs[index]).items():
            found[key][rows] = values

    edits = [(patch(v, cache[v.pair], width),) for v in variants]
    last_logits(model, [pairs[v.pair].corrupted for v in variants], edits, budget, patched)
    pair_of = np.array([v.pair for v in variants], dtype=np.int64)
    clean_v, corrupted_v = clean_metric[pair_of], corrupted_metric[pair_of]
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = (found["metric"] - corrupted_v) / (clean_v - corrupted_v)
    return pa.table({
        "pair": pa.array(pair_of + first_pair, pa.int64()),
        "id": pa.array([pairs[v.pair].id for v in variants], pa.string()),
        "component": pa.array([v.component for v in variants], pa.string()),
        "layer": pa.array([v.layer for v in variants], pa.int32()),
        "position": pa.array([v.position for v in variants], pa.int32()),
        "head": pa.array([v.head for v in variants], pa.int32()),
        "metric_patched": pa.array(found["metric"], pa.float32()),
        "metric_clean": pa.array(clean_v, pa.float32()),
        "metric_corrupted": pa.array(corrupted_v, pa.float32()),
        "normalized": pa.array(normalized, pa.float32()),
        "prob_answer": pa.array(found["prob_answer"], pa.float32()),
        "kl": pa.array(found["kl"], pa.float32()),
    })
