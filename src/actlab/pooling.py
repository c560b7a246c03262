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

_WINDOW = re.compile(r"^(first|last):(\d+)$")
_POSITION = re.compile(r"^pos:(-?\d+)$")
POOLING_HELP = "last, mean, all, first:K, last:K, pos:I (I may be negative), or one position per text"


@dataclass(frozen=True)
class Pooling:
    """kind is one of last, mean, all, first, lastk, position."""

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
        if self.kind == "position":
            return f"pos:{self.positions[0]}" if len(self.positions) == 1 else "positions"
        return self.kind


def parse_pooling(spec: str | int | Sequence[int], include_bos: bool = False) -> Pooling:
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
        return Pooling("position", positions=(int(m.group(1)),), include_bos=include_bos)
    raise ActlabError(f"unknown pooling '{spec}'; use {POOLING_HELP}")


@dataclass
class PoolPlan:
    """How to reduce one padded batch (B, T, d) to the pooled rows."""

    gather: torch.Tensor | None = None  # (B,) padded index of the single token per row
    weights: torch.Tensor | None = None  # (B, T) float, rows sum to 1, zero on padding
    token_mask: torch.Tensor | None = None  # (B, T) bool, real tokens ('all')

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.gather is not None:
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), self.gather]
        if self.weights is not None:
            # where() rather than multiply-only: padded positions may hold NaN/inf.
            w = self.weights.unsqueeze(-1)
            return torch.where(w > 0, hidden.float() * w, 0).sum(dim=1)
        return hidden[self.token_mask]


def plan_pooling(pooling: Pooling, starts: torch.Tensor, lengths: torch.Tensor, has_bos: bool,
                 width: int, rows: Sequence[int]) -> PoolPlan:
    """Build the plan for a batch whose row r holds tokens starts[r]:starts[r]+lengths[r]."""
    pos = torch.arange(width).unsqueeze(0)
    real = (pos >= starts.unsqueeze(1)) & (pos < (starts + lengths).unsqueeze(1))
    if pooling.kind == "all":
        return PoolPlan(token_mask=real)
    if pooling.kind == "last":
        return PoolPlan(gather=starts + lengths - 1)
    if pooling.kind == "position":
        wanted = torch.tensor([pooling.positions[r] if len(pooling.positions) > 1 else pooling.positions[0]
                               for r in rows])
        index = torch.where(wanted < 0, lengths + wanted, wanted)
        bad = ((index < 0) | (index >= lengths)).nonzero().flatten().tolist()
        if bad:
            r = bad[0]
            raise ActlabError(f"position {int(wanted[r])} is outside text {rows[r]}, which has "
                              f"{int(lengths[r])} tokens; use a position in range or another pooling")
        return PoolPlan(gather=starts + index)
    # mean, first:K, last:K: a window of real tokens, BOS left out unless asked for.
    skip = 1 if has_bos and not pooling.include_bos else 0
    lo = starts + torch.where(lengths > skip, skip, 0)  # a BOS-only text keeps its BOS
    hi = starts + lengths
    if pooling.kind == "first":
        hi = torch.minimum(hi, lo + pooling.k)
    elif pooling.kind == "lastk":
        lo = torch.maximum(lo, hi - pooling.k)
    window = (pos >= lo.unsqueeze(1)) & (pos < hi.unsqueeze(1))
    weights = window.float() / window.sum(dim=1, keepdim=True).float()
    return PoolPlan(weights=weights)
