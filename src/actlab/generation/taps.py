"""Capture per slot at block outputs, as tensor operations on buffers
allocated once per call: no host loop, no host sync (interventions, steering
among them, are generation/edits.py's, and run first at a block). Capture
pools block outputs per slot, after any edit at that block:

    prompt_last      the last prompt token
    prompt_mean      mean over the prompt's tokens
    response_mean    mean over the answer's tokens
    response_first:K mean over the answer's first K tokens

and, for monitoring, projects every answer token's block output onto given
unit directions (h . v / |v|, actlab.traits.monitor's value), written per
slot into a buffer of one row per answer token.

An answer token's state is the block output where that token is fed, exactly
what a separate forward over prompt + answer gives. Layer L is block L's
output (`blocks.L.hook_resid_post`, HF `hidden_states[L + 1]`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..hooks import block_hook
from ..hooks import capture as capture_at
from ..pooling import parse_span_pooling
from .cache import keep_rows

if TYPE_CHECKING:
    from ..models import Model


def parse_generation_pooling(spec: str) -> tuple[str, int | None]:
    """('response_first', 5) for 'response_first:5' (actlab.pooling's grammar)."""
    span, pooling = parse_span_pooling(spec)
    return f"{span}_{pooling.kind}", pooling.k or None


@dataclass
class Phase:
    """What the forward about to run feeds: a prefill of prompts into `rows`
    (right-padded, `lengths` real tokens each), or a decode step where
    `answering` marks the slots whose fed token is an answer token, the
    `index`-th of its answer."""

    rows: torch.Tensor | None = None  # prefill: (n,) slots
    lengths: torch.Tensor | None = None  # prefill: (n,) prompt tokens fed (after a shared beginning)
    answering: torch.Tensor | None = None  # decode: (S,) bool
    index: torch.Tensor | None = None  # decode: (S,) the fed token's place in its answer


@dataclass(frozen=True)
class Capture:
    """What is recorded while generating: block outputs at `layers` pooled
    as `poolings`, and each answer token's projection at a block onto the
    rows of `directions[layer]` (k, d_model), made unit length here."""

    layers: tuple[int, ...] = ()
    poolings: tuple[str, ...] = ("response_mean",)
    directions: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        units = {layer: torch.atleast_2d(torch.as_tensor(v).detach().float()) for layer, v in self.directions.items()}
        object.__setattr__(self, "directions", {layer: v / v.norm(dim=-1, keepdim=True) for layer, v in units.items()})


class Taps:
    """Per-slot pooled sums and projections at the blocks that need them;
    `answer_tokens` answer tokens per slot at most."""

    def __init__(self, model: "Model", capture: Capture, slots: int, answer_tokens: int):
        d, device = model.d_model, model.device
        self.layers = list(capture.layers)
        self.specs = [parse_generation_pooling(p) for p in capture.poolings] if self.layers else []
        self.directions = {layer: v.to(device) for layer, v in capture.directions.items()}  # (k, d) unit rows
        self.projections = {layer: torch.zeros(slots, answer_tokens, len(v), device=device)
                            for layer, v in self.directions.items()}  # (S, answer tokens, k)
        self.firsts = sorted({k for kind, k in self.specs if kind == "response_first"})
        zeros = lambda: {layer: torch.zeros(slots, d, device=device) for layer in self.layers}  # noqa: E731
        self.prompt_last, self.prompt_sum, self.response_sum = zeros(), zeros(), zeros()  # (S, d) each
        self.first_sums = {k: zeros() for k in self.firsts}
        self.response_count = torch.zeros(slots, device=device)  # (S,)
        self.prompt_count = torch.zeros(slots, device=device)  # (S,)
        self.phase = Phase()

    def hooked(self, model: "Model"):
        """Context manager: the blocks run `tap` while inside."""
        sites = sorted(set(self.layers) | set(self.directions))
        return capture_at(model.hf_model, {block_hook(layer): (lambda hidden, layer=layer: self.tap(layer, hidden))
                                           for layer in sites})

    def admit(self, rows: torch.Tensor) -> None:
        """New prompts take the slots `rows`: zeroed sums."""
        for sums in [self.prompt_sum, self.response_sum, *self.first_sums.values()]:
            for values in sums.values():
                values.index_fill_(0, rows, 0.0)
        self.response_count.index_fill_(0, rows, 0.0)
        self.prompt_count.index_fill_(0, rows, 0.0)

    def copy_prompt(self, source: int, targets: torch.Tensor) -> None:
        """Slot `source`'s prompt sums so far (a shared beginning's) into the slots `targets`."""
        for values in self.prompt_sum.values():
            values[targets] = values[source].clone()
        self.prompt_count[targets] = self.prompt_count[source].clone()

    def tap(self, layer: int, hidden: torch.Tensor) -> None:
        """Capture block `layer`'s output (B, T, d)."""
        phase = self.phase
        if layer in self.prompt_sum:
            if phase.rows is not None:
                self._prompt(layer, hidden.float(), phase)
            else:
                self._answer(layer, hidden[:, 0].float(), phase)
        if layer in self.directions and phase.rows is None:
            self._project(layer, hidden[:, 0].float(), phase)

    def _prompt(self, layer: int, hidden: torch.Tensor, phase: Phase) -> None:
        """A prefill's real tokens (all of a prompt, or its part after a shared beginning)."""
        n, t = hidden.shape[:2]
        real = torch.arange(t, device=hidden.device) < phase.lengths.unsqueeze(-1)  # (n, T)
        self.prompt_last[layer].index_copy_(0, phase.rows, hidden[torch.arange(n), phase.lengths - 1])
        self.prompt_sum[layer].index_add_(0, phase.rows, (hidden * real.unsqueeze(-1)).sum(dim=1))
        if layer == self.layers[0]:
            self.prompt_count.index_add_(0, phase.rows, phase.lengths.float())

    def _answer(self, layer: int, hidden: torch.Tensor, phase: Phase) -> None:
        on = phase.answering.unsqueeze(-1)  # (S, 1)
        self.response_sum[layer] += hidden * on
        for k in self.firsts:
            self.first_sums[k][layer] += hidden * (on & (phase.index < k).unsqueeze(-1))
        if layer == self.layers[0]:
            self.response_count += phase.answering

    def _project(self, layer: int, hidden: torch.Tensor, phase: Phase) -> None:
        """Each answering slot's fed token: its projections at its place in the answer."""
        slots = torch.arange(hidden.shape[0], device=hidden.device)
        at = phase.index.clamp(min=0)  # (S,)
        values = hidden @ self.directions[layer].T  # (S, k)
        buffer = self.projections[layer]
        buffer[slots, at] = torch.where(phase.answering.unsqueeze(-1), values, buffer[slots, at])

    def projected(self, slots: torch.Tensor) -> dict[int, torch.Tensor]:
        """layer -> (m, answer tokens, k) on the host, for these slots."""
        return {layer: v[slots].cpu() for layer, v in self.projections.items()}

    def pooled(self, slots: torch.Tensor) -> dict[str, dict[int, torch.Tensor]]:
        """pooling -> layer -> (m, d) float32 on the host, for these slots."""
        answered = self.response_count[slots].clamp(min=1).unsqueeze(-1)  # (m, 1)
        out = {}
        for kind, k in self.specs:
            if kind == "prompt_last":
                values = {layer: v[slots] for layer, v in self.prompt_last.items()}
            elif kind == "prompt_mean":
                prompt = self.prompt_count[slots].unsqueeze(-1)  # (m, 1)
                values = {layer: v[slots] / prompt for layer, v in self.prompt_sum.items()}
            elif kind == "response_mean":
                values = {layer: v[slots] / answered for layer, v in self.response_sum.items()}
            else:
                first = self.response_count[slots].clamp(min=1, max=k).unsqueeze(-1)
                values = {layer: v[slots] / first for layer, v in self.first_sums[k].items()}
            out[kind if k is None else f"{kind}:{k}"] = {layer: v.cpu() for layer, v in values.items()}
        return out

    def keep(self, order: np.ndarray) -> None:
        """Keep the slots `order` (see cache.keep_rows), in that order."""
        for buffers in [self.prompt_last, self.prompt_sum, self.response_sum, *self.first_sums.values(),
                        self.projections]:
            for layer in buffers:
                buffers[layer] = keep_rows(buffers[layer], order)
        self.response_count = keep_rows(self.response_count, order)
        self.prompt_count = keep_rows(self.prompt_count, order)
