"""Pooling specs and the per-batch index/weight plans that apply them.

Every pooling reads real tokens only: the plan is built from each row's own
start offset and length in the padded batch, never from token ids (GPT-2's pad
id equals its BOS id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import ActlabError
from .tokens import offsets

_WINDOW = re.compile(r"^(first|last):(\d+)$")
_POSITION = re.compile(r"^(pos|from):(-?\d+)$")
POOLING_HELP = ("last, mean, all, first:K, last:K, pos:I, from:I (the mean from token I to the end; I may be "
                "negative), or one position per text")


@dataclass(frozen=True)
class Pooling:
    """kind is one of last, mean, all, first, lastk, position, from (the mean
    from a position to the end: a continuation's own tokens)."""

    kind: str
    k: int = 0
    positions: tuple[int, ...] = ()  # one per text, or a single shared one
    include_bos: bool = False  # mean, first:K and last:K skip BOS unless asked

    @property
    def per_token(self) -> bool:
        return self.kind == "all"

    @property
    def spec(self) -> str:
        if self.kind in ("first", "lastk"):
            return f"{'first' if self.kind == 'first' else 'last'}:{self.k}"
        if self.kind in ("position", "from"):
            prefix = "pos" if self.kind == "position" else "from"
            return f"{prefix}:{self.positions[0]}" if len(self.positions) == 1 else f"{prefix}:per-text"
        return self.kind


def parse_pooling(spec: "str | int | Sequence[int] | Pooling", include_bos: bool = False) -> Pooling:
    if isinstance(spec, Pooling):
        return spec
    if isinstance(spec, int):
        return Pooling("position", positions=(spec,), include_bos=include_bos)
    if not isinstance(spec, str):
        return Pooling("position", positions=tuple(int(p) for p in spec), include_bos=include_bos)
    if spec in ("last", "mean", "all"):
        return Pooling(spec, include_bos=include_bos)
    if m := _WINDOW.match(spec):
        k = int(m.group(2))
        if k < 1:
            raise ActlabError(f"pooling '{spec}': K must be at least 1")
        return Pooling("first" if m.group(1) == "first" else "lastk", k=k, include_bos=include_bos)
    if m := _POSITION.match(spec):
        kind = "position" if m.group(1) == "pos" else "from"
        return Pooling(kind, positions=(int(m.group(2)),), include_bos=include_bos)
    raise ActlabError(f"unknown pooling '{spec}'; use {POOLING_HELP}", param="pooling")


SPAN_POOLINGS = {"prompt": ("last", "mean"), "response": ("mean", "first")}  # what generation pools


def parse_span_pooling(spec: str) -> tuple[str, Pooling]:
    """Generation's poolings in the same grammar: '<span>_<pooling>', the span
    being the prompt or the response (prompt_last, prompt_mean,
    response_mean, response_first:K)."""
    span, _, rest = spec.partition("_")
    try:
        pooling = parse_pooling(rest) if span in SPAN_POOLINGS else None
    except ActlabError:
        pooling = None
    if pooling is None or pooling.kind not in SPAN_POOLINGS[span]:
        raise ActlabError(f"unknown pooling '{spec}'; use response_mean, response_first:K, prompt_last or "
                          "prompt_mean", param="poolings")
    return span, pooling


@dataclass
class PoolPlan:
    """One batch's pooling as a sparse map from real tokens to output rows.

    Pooled row r = sum over planned tokens t with rows[t] == r of
    weights[t] * hidden_flat[tokens[t]]. Single-token poolings (last, pos,
    all) map one token per row with weight 1 and are a plain gather.
    """

    tokens: torch.Tensor  # (N,) indices into the flattened (B * T) padded batch
    rows: torch.Tensor  # (N,) output row of each token
    weights: torch.Tensor  # (N,) float32
    n_rows: int

    @property
    def one_token_per_row(self) -> bool:
        return len(self.tokens) == self.n_rows

    def gather(self, hidden: torch.Tensor) -> torch.Tensor:
        """The planned tokens' vectors, (N, d), in plan order."""
        return hidden.reshape(-1, hidden.shape[-1])[self.tokens]

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """(N, k) per-token values -> (n_rows, k) pooled rows, float32."""
        values = values.float()
        if self.one_token_per_row:
            return values
        out = torch.zeros(self.n_rows, values.shape[1], device=values.device)
        return out.index_add_(0, self.rows, values * self.weights[:, None])

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.gather(hidden))

    def to(self, device: torch.device) -> "PoolPlan":
        return PoolPlan(self.tokens.to(device), self.rows.to(device), self.weights.to(device), self.n_rows)


def plan_pooling(pooling: Pooling, starts: torch.Tensor, lengths: torch.Tensor, has_bos: bool,
                 width: int, rows: Sequence[int]) -> PoolPlan:
    """Build the plan for a batch whose row r holds tokens starts[r]:starts[r]+lengths[r]."""
    batch = torch.arange(len(lengths))
    if pooling.kind == "all":
        lo, hi = starts, starts + lengths
    elif pooling.kind in ("last", "position"):
        index = lengths - 1 if pooling.kind == "last" else _positions(pooling, lengths, rows)
        flat = batch * width + starts + index
        return PoolPlan(flat, batch, torch.ones(len(flat)), len(flat))
    else:  # mean, first:K, last:K: a window of real tokens, BOS left out unless asked for
        skip = 1 if has_bos and not pooling.include_bos else 0
        lo = starts + torch.where(lengths > skip, skip, 0)  # a BOS-only text keeps its BOS
        hi = starts + lengths
        if pooling.kind == "first":
            hi = torch.minimum(hi, lo + pooling.k)
        elif pooling.kind == "lastk":
            lo = torch.maximum(lo, hi - pooling.k)
        elif pooling.kind == "from":
            lo = starts + _positions(pooling, lengths, rows)
    counts = hi - lo
    owner = torch.repeat_interleave(batch, counts)
    offset = torch.arange(int(counts.sum())) - torch.repeat_interleave(offsets(counts)[:-1], counts)
    flat = owner * width + lo[owner] + offset
    if pooling.kind == "all":
        return PoolPlan(flat, torch.arange(len(flat)), torch.ones(len(flat)), len(flat))
    return PoolPlan(flat, owner, 1.0 / counts[owner].float(), len(lengths))


def _positions(pooling: Pooling, lengths: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    wanted = torch.tensor([pooling.positions[r] if len(pooling.positions) > 1 else pooling.positions[0]
                           for r in rows])
    index = torch.where(wanted < 0, lengths + wanted, wanted)
    bad = ((index < 0) | (index >= lengths)).nonzero().flatten().tolist()
    if bad:
        r = bad[0]
        raise ActlabError(f"position {int(wanted[r])} is outside text {rows[r]}, which has "
                          f"{int(lengths[r])} tokens; use a position in range or another pooling")
    return index
