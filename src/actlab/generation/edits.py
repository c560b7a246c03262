"""Interventions per slot while generating: the edits of actlab.interventions
held as buffers over the slots, allocated once per call, so rows with
different edits (a sweep of 50 steering vectors, ablations, caps, SAE latent
clamps) decode as one batch, with no host loop and no host sync.

A row's k-th intervention at a hook is its stage k there. A stage of vector
edits holds, per slot, the one formula's terms (actlab.interventions.Affine)

    x -> keep * x + add + (clamp(x . u, lo, hi) - x . u) * u

with keep, add, u (S, w) and lo, hi (S,); a head's edit at hook_z is a
full-width row with keep 1 and add 0 outside the head's columns. A stage of
one SAE's latent edits holds the chosen latents (S, K), their f -> scale f +
value (S, K) and which are real (S, K). A slot without an edit at a stage
holds the identity (keep 1, add 0, u 0, no real latent), and `where` leaves
its activation untouched.

A row edits its answer's tokens (positions "all" or "answer": every decode
step) and the prompt tokens its positions pick (a mask built on the host at
each prefill, which knows where each prompt part starts).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np
import torch

from ..hooks import HOOK_Z, head_dim, replace
from ..interventions import EditLatents, Intervention, VectorEdit, check_against, edits_answer, prompt_indices
from .cache import keep_rows

if TYPE_CHECKING:
    from ..models import Model

Row = Sequence[Intervention]


@dataclass
class Prefill:
    """What a prefill feeds: slots `rows` take prompt parts (right-padded)
    that start at prompt token `starts` and have `parts` real tokens."""

    rows: torch.Tensor  # (n,) slots
    starts: np.ndarray  # (n,) host
    parts: np.ndarray  # (n,) host


class Stage(ABC):
    """One stage at one hook: per-slot buffers, the prompt positions of
    each slot's edit (host), and whether it edits the answer (S,)."""

    def __init__(self, hook: str, slots: int, device: torch.device):
        self.hook = hook
        self.prompt_positions: list[np.ndarray | None] = [None] * slots  # host: each slot's edited prompt tokens
        self.on_answer = torch.zeros(slots, dtype=torch.bool, device=device)  # (S,)

    def admit(self, rows: torch.Tensor, edits: Sequence[Intervention | None], lengths: Sequence[int]) -> None:
        """Slots `rows` take these edits (None: identity) for prompts of `lengths`."""
        for slot, edit, length in zip(rows.tolist(), edits, lengths):
            picked = prompt_indices(edit, length, slot) if edit is not None else np.arange(0)
            self.prompt_positions[slot] = picked if len(picked) else None
        answer = torch.tensor([e is not None and edits_answer(e) for e in edits], device=rows.device)
        self.on_answer.index_copy_(0, rows, answer)

    def prompt_mask(self, prefill: Prefill, width: int) -> torch.Tensor | None:
        """(n, width) bool: the prefill's cells whose prompt token this stage edits (None: none)."""
        mask = np.zeros((len(prefill.starts), width), dtype=bool)
        for k, slot in enumerate(prefill.rows.tolist()):
            picked = self.prompt_positions[slot]
            if picked is not None:
                columns = picked - prefill.starts[k]
                columns = columns[(columns >= 0) & (columns < prefill.parts[k])]
                mask[k, columns] = True
        return torch.from_numpy(mask).to(prefill.rows.device) if mask.any() else None

    def apply(self, hidden: torch.Tensor, prefill: Prefill | None) -> torch.Tensor:
        """hidden (B, T, w): a prefill's (B = its rows) or a decode step's (B = S, T = 1)."""
        if prefill is None:
            return torch.where(self.on_answer.view(-1, 1, 1), self.edit(hidden, None), hidden)
        mask = self.prompt_mask(prefill, hidden.shape[1])
        if mask is None:
            return hidden
        return torch.where(mask.unsqueeze(-1), self.edit(hidden, prefill.rows), hidden)

    @abstractmethod
    def edit(self, hidden: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Every cell of hidden edited by its slot's terms (rows: the slots of hidden's rows; None: all)."""

    def keep(self, order: np.ndarray) -> None:
        self.prompt_positions = [self.prompt_positions[i] for i in order]
        self.on_answer = keep_rows(self.on_answer, order)


class VectorStage(Stage):
    """keep, add, unit (S, w), lo, hi (S,): the one formula per slot."""

    def __init__(self, hook: str, slots: int, width: int, head_width: int, model: "Model"):
        super().__init__(hook, slots, model.device)
        device, dtype = model.device, model.hf_model.dtype
        self.width, self.head_width = width, head_width
        self.kept = torch.ones(slots, width, device=device, dtype=dtype)  # (S, w)
        self.add = torch.zeros(slots, width, device=device, dtype=dtype)  # (S, w)
        self.unit = torch.zeros(slots, width, device=device, dtype=dtype)  # (S, w)
        self.lo = torch.full((slots,), -torch.inf, device=device, dtype=dtype)  # (S,)
        self.hi = torch.full((slots,), torch.inf, device=device, dtype=dtype)  # (S,)

    def admit(self, rows, edits, lengths) -> None:
        super().admit(rows, edits, lengths)
        keep, add, unit = (torch.zeros(len(edits), self.width) for _ in range(3))
        keep += 1.0
        lo, hi = torch.full((len(edits),), -torch.inf), torch.full((len(edits),), torch.inf)
        for k, edit in enumerate(edits):
            if edit is None:
                continue
            affine = edit.affine
            columns = slice(None) if edit.head is None else \
                slice(edit.head * self.head_width, (edit.head + 1) * self.head_width)
            keep[k, columns] = affine.keep
            if affine.add is not None:
                add[k, columns] = affine.add
            if affine.unit is not None:
                unit[k, columns], lo[k], hi[k] = affine.unit, affine.lo, affine.hi
        for buffer, values in ((self.kept, keep), (self.add, add), (self.unit, unit), (self.lo, lo), (self.hi, hi)):
            buffer.index_copy_(0, rows, values.to(buffer))

    def edit(self, hidden, rows):
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        keep, add, unit = (pick(t).unsqueeze(1) for t in (self.kept, self.add, self.unit))  # (B, 1, w)
        along = (hidden * unit).sum(-1)  # (B, T)
        moved = along.clamp(pick(self.lo).unsqueeze(-1), pick(self.hi).unsqueeze(-1)) - along  # (B, T)
        return keep * hidden + add + moved.unsqueeze(-1) * unit

    def keep(self, order: np.ndarray) -> None:
        super().keep(order)
        for name in ("kept", "add", "unit", "lo", "hi"):
            setattr(self, name, keep_rows(getattr(self, name), order))


class LatentStage(Stage):
    """One SAE's latent edits: latents, scale, value, real (S, K)."""

    def __init__(self, hook: str, slots: int, sae, most: int, device: torch.device):
        super().__init__(hook, slots, device)
        self.sae = sae
        self.latents = torch.zeros(slots, most, dtype=torch.long, device=device)  # (S, K)
        self.scale = torch.ones(slots, most, device=device)  # (S, K)
        self.value = torch.zeros(slots, most, device=device)  # (S, K)
        self.real = torch.zeros(slots, most, dtype=torch.bool, device=device)  # (S, K)

    def admit(self, rows, edits, lengths) -> None:
        super().admit(rows, edits, lengths)
        n, most = len(edits), self.latents.shape[1]
        latents, real = torch.zeros(n, most, dtype=torch.long), torch.zeros(n, most, dtype=torch.bool)
        scale, value = torch.ones(n, most), torch.zeros(n, most)
        for k, edit in enumerate(edits):
            if edit is not None:
                count = len(edit.latents)
                latents[k, :count], real[k, :count] = edit.latents, True
                scale[k, :count], value[k, :count] = edit.scale_and_value
        for buffer, values in ((self.latents, latents), (self.real, real), (self.scale, scale),
                               (self.value, value)):
            buffer.index_copy_(0, rows, values.to(buffer.device))

    def edit(self, hidden, rows):
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        latents, scale, value, real = (pick(t).unsqueeze(1) for t in (self.latents, self.scale, self.value,
                                                                     self.real))  # (B, 1, K)
        x = hidden.float()
        f = self.sae.encode(x)  # (B, T, d_sae)
        chosen = f.gather(-1, latents.expand(*f.shape[:2], -1))  # (B, T, K)
        delta = torch.where(real, chosen * scale + value - chosen, 0.0)  # (B, T, K)
        return hidden + self.sae.latent_change(x, latents[:, 0], delta).to(hidden.dtype)

    def keep(self, order: np.ndarray) -> None:
        super().keep(order)
        for name in ("latents", "scale", "value", "real"):
            setattr(self, name, keep_rows(getattr(self, name), order))


class SlotEdits:
    """Every request's interventions as stages per hook (see the module docstring)."""

    def __init__(self, model: "Model", rows: Sequence[Row], lengths: Sequence[int], slots: int):
        """rows: each request's interventions; lengths: its prompt's tokens
        (positions are checked against them here, before anything runs)."""
        self.model = model
        check_against(model, [i for row in rows for i in row])
        for number, (row, length) in enumerate(zip(rows, lengths)):
            for intervention in row:
                prompt_indices(intervention, length, number)
        self.stages: dict[str, list[tuple[Hashable, Stage]]] = {}
        for hook, level, family, edits in _families(rows):
            if family == "vector":
                width = model.hook_widths([hook])[hook]
                stage: Stage = VectorStage(hook, slots, width, head_dim(model.config) if hook.endswith(HOOK_Z)
                                           else width, model)
            else:
                sae = edits[0].sae
                stage = LatentStage(hook, slots, sae, max(len(e.latents) for e in edits), model.device)
            self.stages.setdefault(hook, []).append(((level, family), stage))
        self.prefill: Prefill | None = None

    def __bool__(self) -> bool:
        return bool(self.stages)

    def admit(self, rows: torch.Tensor, requests: Sequence[Row], lengths: Sequence[int]) -> None:
        """Slots `rows` take these requests' interventions (prompts of `lengths` tokens)."""
        for hook, stages in self.stages.items():
            for (level, family), stage in stages:
                stage.admit(rows, [_at(row, hook, level, family) for row in requests], lengths)

    def hooked(self):
        """Context manager: every edited hook runs its stages while inside."""
        return replace(self.model.hf_model, {hook: (lambda hidden, hook=hook: self._apply(hook, hidden))
                                             for hook in self.stages})

    def _apply(self, hook: str, hidden: torch.Tensor) -> torch.Tensor:
        for _, stage in self.stages[hook]:
            hidden = stage.apply(hidden, self.prefill)
        return hidden

    def keep(self, order: np.ndarray) -> None:
        for stages in self.stages.values():
            for _, stage in stages:
                stage.keep(order)


def _family(intervention: Intervention) -> Hashable:
    """Which stage kind holds it: "vector", or its SAE (one stage per SAE)."""
    if isinstance(intervention, VectorEdit):
        return "vector"
    if isinstance(intervention, EditLatents):
        return id(intervention.sae)
    raise TypeError(f"no slot stage for {type(intervention).__name__}")


def _at(row: Row, hook: str, level: int, family: Hashable) -> Intervention | None:
    """The row's `level`-th intervention at `hook` when it is of `family`."""
    at_hook = [i for i in row if i.hook == hook]
    return at_hook[level] if level < len(at_hook) and _family(at_hook[level]) == family else None


def _families(rows: Sequence[Row]) -> list[tuple[str, int, Hashable, list[Intervention]]]:
    """(hook, level, family, its edits) of every stage the rows need, in order."""
    found: dict[tuple[str, int, Hashable], list[Intervention]] = {}
    for row in rows:
        depth: dict[str, int] = {}
        for intervention in row:
            level = depth[intervention.hook] = depth.get(intervention.hook, -1) + 1
            found.setdefault((intervention.hook, level, _family(intervention)), []).append(intervention)
    # a row's k-th edit at a hook runs before its (k+1)-th: stages in level order
    return sorted([(hook, level, family, edits) for (hook, level, family), edits in found.items()],
                  key=lambda stage: stage[1])


def prompt_key(row: Row, length: int) -> Hashable:
    """What of a row's edits changes its prompt's states (prompts share a
    prefill only where this is equal): the keys of its prompt-side edits,
    and the prompt's length where an index counts from its end."""
    keys = tuple(i.key() for i in row if i.positions != "answer")
    from_end = any(isinstance(i.positions, tuple) and min(i.positions) < 0 for i in row)
    return (keys, length) if from_end else keys
