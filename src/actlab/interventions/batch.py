"""Per-row interventions applied to padded batches (extraction, patching):
each forward, every hook's steps edit the cells (row, token) their rows and
positions pick, one intervention at a time, in each row's order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import ActlabError
from ..hooks import head_dim, replace, resolve
from .kinds import GENERATION_ONLY, Intervention

RowInterventions = Sequence[Intervention]


def per_row(interventions, n: int) -> list[tuple[Intervention, ...]]:
    """One tuple of interventions per row: `interventions` is None, one
    Intervention or a list of them (every row), or one list (or None) per row."""
    if interventions is None:
        return [()] * n
    if isinstance(interventions, Intervention):
        return [(interventions,)] * n
    listed = list(interventions)
    if all(isinstance(i, Intervention) for i in listed):
        return [tuple(listed)] * n
    if len(listed) != n:
        raise ActlabError(f"{len(listed)} per-row intervention lists for {n} rows; give one list (or None) per "
                          "row, or Interventions that apply to every row", param="interventions")
    rows = []
    for i, item in enumerate(listed):
        item = () if item is None else (item,) if isinstance(item, Intervention) else tuple(item)
        if not all(isinstance(x, Intervention) for x in item):
            raise ActlabError(f"row {i}'s interventions hold something that is not an actlab Intervention",
                              param="interventions")
        rows.append(item)
    return rows


@dataclass
class Step:
    """One intervention applied to some (row, position) cells of a batch:
    `cells` index the flattened (rows x tokens) activations, `at` is each
    cell's index among the intervention's positions."""

    intervention: Intervention
    cells: torch.Tensor  # (m,) long
    at: torch.Tensor  # (m,) long


def _indices(intervention: Intervention, length: int, row: int) -> np.ndarray:
    """The token indices (0..length-1) of a sequence of `length` real tokens
    that "all", "last" or a list of indices picks."""
    positions = intervention.positions
    if positions == "all":
        return np.arange(length)
    if positions == "last":
        return np.array([length - 1])
    chosen = np.array([p if p >= 0 else length + p for p in positions])
    bad = (chosen < 0) | (chosen >= length)
    if bad.any():
        raise ActlabError(f"position {positions[int(np.flatnonzero(bad)[0])]} is outside text {row}'s "
                          f"{length} tokens", param="positions")
    return chosen


def selected(intervention: Intervention, length: int, row: int) -> np.ndarray:
    """The token indices (0..length-1) of a row of `length` real tokens that
    `intervention` edits outside generation; one line for a position out of range."""
    if intervention.positions in GENERATION_ONLY:
        raise ActlabError(f"positions '{intervention.positions}' apply while generating; here use 'all', 'last' "
                          "or token indices", param="positions")
    chosen = _indices(intervention, length, row)
    rows_needed = intervention.per_position_rows()
    if rows_needed is not None and rows_needed != len(chosen):
        raise ActlabError(f"a per-position value of {rows_needed} rows at '{intervention.hook}' for text {row}'s "
                          f"{len(chosen)} selected positions; give one row per selected position", param="value")
    return chosen


def prompt_indices(intervention: Intervention, length: int, row: int) -> np.ndarray:
    """While generating: the indices of the prompt's `length` tokens that
    `intervention` edits ("last" and indices count within the prompt)."""
    if intervention.per_position_rows() is not None:
        raise ActlabError(f"the Set at '{intervention.hook}' has one value per position; while generating give "
                          "one vector (width,)", param="value")
    if intervention.positions == "answer":
        return np.arange(0)
    if intervention.positions == "prompt":
        return np.arange(length)
    return _indices(intervention, length, row)


def edits_answer(intervention: Intervention) -> bool:
    """While generating: whether the answer's tokens are edited too."""
    return intervention.positions in ("all", "answer")


def plan_steps(rows: Sequence[RowInterventions], starts: Sequence[int], lengths: Sequence[int], width: int,
               numbers: Sequence[int] | None = None) -> dict[str, list[Step]]:
    """hook -> the steps of a padded batch, in order: the k-th intervention
    of every row at a hook runs before any row's (k+1)-th. Row r's real
    tokens are columns starts[r] .. starts[r] + lengths[r] - 1 of `width`;
    numbers[r] names row r in messages (default r)."""
    numbers = range(len(rows)) if numbers is None else numbers
    stages: dict[str, list[dict[int, tuple[Intervention, list, list]]]] = {}
    for r, (row, start, length, number) in enumerate(zip(rows, starts, lengths, numbers)):
        depth: dict[str, int] = {}
        for intervention in row:
            hook = intervention.hook
            k = depth[hook] = depth.get(hook, -1) + 1
            levels = stages.setdefault(hook, [])
            if k == len(levels):
                levels.append({})
            chosen = selected(intervention, int(length), int(number))
            entry = levels[k].setdefault(id(intervention), (intervention, [], []))
            entry[1].append(r * width + int(start) + chosen)
            entry[2].append(np.arange(len(chosen)))
    return {hook: [Step(iv, torch.from_numpy(np.concatenate(cells)), torch.from_numpy(np.concatenate(at)))
                   for level in levels for iv, cells, at in level.values()]
            for hook, levels in stages.items()}


def run_steps(hidden: torch.Tensor, steps: Sequence[Step], head_width: int | None = None) -> torch.Tensor:
    """hidden (B, T, w) with each step's cells edited, in order (a new
    tensor: the forward's own stays as it was for autograd). At hook_z a
    step with a head edits that head's slice of width head_width."""
    flat = hidden.reshape(-1, hidden.shape[-1]).clone()  # (B*T, w)
    for step in steps:
        cells, at = step.cells.to(flat.device), step.at.to(flat.device)
        head = step.intervention.head
        if head is None:
            flat[cells] = step.intervention.edit(flat[cells], at)
        else:
            columns = slice(head * head_width, (head + 1) * head_width)
            flat[cells, columns] = step.intervention.edit(flat[cells, columns], at)
    return flat.view_as(hidden)


def check_against(model, interventions: Iterable[Intervention]) -> None:
    """One line for a hook the model lacks, a head it lacks, or a vector of
    another width, before anything runs."""
    for intervention in {id(i): i for i in interventions}.values():
        resolve(model.hf_model, intervention.hook)
        width = model.hook_widths([intervention.hook])[intervention.hook]
        if intervention.head is not None:
            heads = model.config.num_attention_heads
            if intervention.head >= heads:
                raise ActlabError(f"head {intervention.head} is outside 0..{heads - 1} for this model", param="head")
            width = head_dim(model.config)
        intervention.check(width)


class BatchEdits:
    """Per-row interventions over a call's padded batches: `hooked` registers
    one rewrite per hook for the call, and `plan` points them at a batch."""

    def __init__(self, model, rows: Sequence[RowInterventions]):
        self.model, self.rows = model, list(rows)
        check_against(model, [i for row in self.rows for i in row])
        self.hooks = sorted({i.hook for row in self.rows for i in row})
        self.head_width = head_dim(model.config)
        self.steps: dict[str, list[Step]] = {}

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def check_lengths(self, lengths: Sequence[int]) -> None:
        """One line for a position outside a row of `lengths` real tokens, before any forward."""
        for r, (row, length) in enumerate(zip(self.rows, lengths)):
            for intervention in row:
                selected(intervention, int(length), r)

    def plan(self, rows: np.ndarray, padded) -> None:
        """The next forward is the batch of rows `rows` (indices into the
        call's rows), padded as `padded` (actlab.tokens.Padded)."""
        self.steps = plan_steps([self.rows[r] for r in rows], padded.starts.tolist(), padded.lengths.tolist(),
                                padded.input_ids.shape[1], rows.tolist())

    def hooked(self):
        """Context manager: the hooks' rewrites are registered while inside."""
        return replace(self.model.hf_model, {hook: (lambda hidden, hook=hook: self._apply(hook, hidden))
                                             for hook in self.hooks})

    def _apply(self, hook: str, hidden: torch.Tensor) -> torch.Tensor:
        steps = self.steps.get(hook)
        return run_steps(hidden, steps, self.head_width) if steps else hidden
