"""Interventions: edits of a model's activations at a hook, at chosen positions.

One family, one mechanism, used by extraction (`Model.extract(...,
interventions=)`), by `actlab.generate` (per row, inside the continuous
batch) and by patching. Every edit but the SAE's is one formula,

    x -> keep * x + add + (clamp(x . u, lo, hi) - x . u) * u       (u unit or 0)

so that rows with different edits run as one tensor expression:

    Add(hook, vector, coeff)        keep 1, add coeff * vector (actlab.Steering is this)
    Set(hook, value)                keep 0, add value ((w,), or one row per selected position)
    Ablate(hook, mean=None)         keep 0, add 0 or a mean activation (w,)
    ProjectOut(hook, direction)     u = direction / |direction|, lo = hi = 0 (directional ablation)
    Cap(hook, direction, lo, hi)    the projection onto u held within [lo, hi]

and EditLatents(sae, latents, mode, value) changes chosen latents of an SAE at
its hook (ablate: 0, clamp: value, scale: value x f) and adds the change of
the SAE's reconstruction, x + dec(f') - dec(f): the SAE's error term is kept,
and an edit of nothing returns x exactly.

`positions` picks where: "all" (every real token), "last" (the last real
token), a list of token indices (negative ones count from the end; padding
never counts), and while generating "prompt" (the prompt's tokens) or
"answer" (the tokens of the answer, as they are fed). `head` (at
`blocks.L.attn.hook_z` only) edits one attention head's slice of width
d_head. An identity edit (Add of zeros, Cap to (-inf, inf), an EditLatents
of no latents) changes nothing: keep * x + 0 is x to the bit.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .errors import ActlabError
from .hooks import HOOK_Z, head_dim, replace, resolve

POSITION_WORDS = ("all", "last", "prompt", "answer")
GENERATION_ONLY = ("prompt", "answer")
LATENT_MODES = ("ablate", "clamp", "scale")


def _vector(value: Any, param: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value).detach().float()
    if tensor.dim() not in (1, 2):
        raise ActlabError(f"{param} must be a vector (width,) or rows (positions, width), not shape "
                          f"{tuple(tensor.shape)}", param=param)
    return tensor


def _positions(positions: str | int | Sequence[int]) -> str | tuple[int, ...]:
    if isinstance(positions, str):
        if positions not in POSITION_WORDS:
            raise ActlabError(f"positions '{positions}': use {', '.join(POSITION_WORDS)} or a list of token "
                              "indices", param="positions")
        return positions
    if isinstance(positions, (int, np.integer)):
        return (int(positions),)
    listed = tuple(int(p) for p in positions)
    if not listed:
        raise ActlabError("positions is an empty list; give at least one token index, or 'all'", param="positions")
    return listed


@dataclass(frozen=True, eq=False)
class Affine:
    """keep * x + add + (clamp(x . u, lo, hi) - x . u) * u, the vector edits' one formula."""

    keep: float = 1.0
    add: torch.Tensor | None = None  # (w,) or (positions, w)
    unit: torch.Tensor | None = None  # (w,), unit length
    lo: float = -math.inf
    hi: float = math.inf

    def apply(self, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """x (m, w) at selected positions; at (m,): each one's index among them."""
        out = x if self.keep == 1.0 else torch.zeros_like(x) if self.keep == 0.0 else x * self.keep
        if self.add is not None:
            add = self.add.to(x)
            out = out + (add if add.dim() == 1 else add[at])  # (m, w)
        if self.unit is not None:
            unit = self.unit.to(x)
            along = x @ unit  # (m,)
            out = out + (along.clamp(self.lo, self.hi) - along).unsqueeze(-1) * unit
        return out


@dataclass(frozen=True, eq=False)
class Intervention(ABC):
    """An edit at `hook` (a TransformerLens-style name or a module path), at
    `positions`, of one attention head where `head` is given (hook_z only)."""

    positions: str | tuple[int, ...] = field(default="all", kw_only=True)
    head: int | None = field(default=None, kw_only=True)

    def __post_init__(self):
        object.__setattr__(self, "positions", _positions(self.positions))
        if self.head is not None and (self.head < 0 or not self.hook.endswith(HOOK_Z)):
            raise ActlabError(f"head={self.head}: a head is chosen at a blocks.L.{HOOK_Z} hook, with an index "
                              f">= 0 (this intervention is at '{self.hook}')", param="head")

    @abstractmethod
    def edit(self, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """The edited activations x (m, w) at the selected positions; at (m,)
        is each one's index among the positions (for per-position values)."""

    def check(self, width: int) -> None:
        """One line when a vector's width is not the hook's (or the head's) `width`."""

    def per_position_rows(self) -> int | None:
        """How many positions a per-position value covers (None: one value for all)."""
        return None

    def key(self) -> str:
        """A digest of what this edit does, equal for equal edits (prompts
        share a prefill only where their prompt-side edits are equal)."""
        digest = hashlib.sha256(repr((type(self).__name__, self.hook, self.positions, self.head)).encode())
        for value in self._contents():
            digest.update(value.numpy().tobytes() if torch.is_tensor(value) else repr(value).encode())
        return digest.hexdigest()

    def _contents(self) -> Iterable[Any]:
        return ()


@dataclass(frozen=True, eq=False)
class VectorEdit(Intervention, ABC):
    """An edit of the one formula (Affine)."""

    @property
    @abstractmethod
    def affine(self) -> Affine:
        """This edit as keep, add, unit, lo, hi."""

    def edit(self, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        return self.affine.apply(x, at)

    def check(self, width: int) -> None:
        affine = self.affine
        for name, value in (("add", affine.add), ("direction", affine.unit)):
            if value is not None and value.shape[-1] != width:
                raise ActlabError(f"the {type(self).__name__} {name} at '{self.hook}' has width {value.shape[-1]}, "
                                  f"the {'head' if self.head is not None else 'hook'}'s is {width}",
                                  param="interventions")

    def _contents(self) -> Iterable[Any]:
        affine = self.affine
        return affine.keep, affine.add, affine.unit, affine.lo, affine.hi


@dataclass(frozen=True, eq=False)
class Add(VectorEdit):
    """x + coeff * vector: steering."""

    hook: str
    vector: Any
    coeff: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "vector", _vector(self.vector, "vector"))

    @property
    def affine(self) -> Affine:
        return Affine(add=self.coeff * self.vector)


@dataclass(frozen=True, eq=False)
class Set(VectorEdit):
    """The activation replaced by `value`: one vector (width,) for every
    selected position, or one row per selected position (positions, width),
    e.g. the same hook's activations of another prompt (patching)."""

    hook: str
    value: Any

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "value", _vector(self.value, "value"))

    @property
    def affine(self) -> Affine:
        return Affine(keep=0.0, add=self.value)

    def per_position_rows(self) -> int | None:
        return len(self.value) if self.value.dim() == 2 else None


@dataclass(frozen=True, eq=False)
class Ablate(VectorEdit):
    """The activation replaced by zero, or by `mean` (width,): a mean over
    some data, e.g. `actlab.open_run(run).activations()[hook].mean(0)`."""

    hook: str
    mean: Any = None

    def __post_init__(self):
        super().__post_init__()
        if self.mean is not None:
            mean = _vector(self.mean, "mean")
            if mean.dim() != 1:
                raise ActlabError(f"an ablation mean is one vector (width,), not shape {tuple(mean.shape)}",
                                  param="mean")
            object.__setattr__(self, "mean", mean)

    @property
    def affine(self) -> Affine:
        return Affine(keep=0.0, add=self.mean)


def _unit(direction: Any, param: str = "direction") -> torch.Tensor:
    vector = _vector(direction, param)
    if vector.dim() != 1:
        raise ActlabError(f"a direction is one vector (width,), not shape {tuple(vector.shape)}", param=param)
    norm = vector.norm()
    if norm == 0:
        raise ActlabError("the direction is all zeros; it has no projection to edit", param=param)
    return vector / norm


@dataclass(frozen=True, eq=False)
class ProjectOut(VectorEdit):
    """x - (x . u) u, u = direction / |direction|: directional ablation."""

    hook: str
    direction: Any

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "direction", _unit(self.direction))

    @property
    def affine(self) -> Affine:
        return Affine(unit=self.direction, lo=0.0, hi=0.0)


@dataclass(frozen=True, eq=False)
class Cap(VectorEdit):
    """The projection x . u onto u = direction / |direction| held within
    [lo, hi] (activation capping); the rest of x is left as it is."""

    hook: str
    direction: Any
    lo: float = -math.inf
    hi: float = math.inf

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "direction", _unit(self.direction))
        if not self.lo <= self.hi:
            raise ActlabError(f"cap range [{self.lo}, {self.hi}] is empty; give lo <= hi", param="lo")

    @property
    def affine(self) -> Affine:
        return Affine(unit=self.direction, lo=float(self.lo), hi=float(self.hi))


@dataclass(frozen=True, eq=False)
class EditLatents(Intervention):
    """Latents `latents` of `sae` (an actlab SAE) edited at the SAE's hook:
    mode "ablate" sets them to 0, "clamp" to `value`, "scale" multiplies them
    by `value`. The activation moves by the change of the SAE's
    reconstruction, x + dec(f') - dec(f), so the error term x - dec(f) stays
    and ablating a latent subtracts its decoder contribution f_i W_dec[i]."""

    sae: Any
    latents: Sequence[int]
    mode: str = "ablate"
    value: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "latents", torch.as_tensor(list(self.latents), dtype=torch.long))
        super().__post_init__()
        if self.mode not in LATENT_MODES:
            raise ActlabError(f"latent edit mode '{self.mode}': use {', '.join(LATENT_MODES)}", param="mode")
        d_sae = self.sae.cfg.d_sae
        if len(self.latents) and not (0 <= int(self.latents.min()) and int(self.latents.max()) < d_sae):
            raise ActlabError(f"latent {int(self.latents.max() if self.latents.max() >= d_sae else self.latents.min())}"
                              f" is outside 0..{d_sae - 1} for this SAE", param="latents")

    @property
    def hook(self) -> str:
        return self.sae.cfg.hook_name

    def check(self, width: int) -> None:
        if self.sae.cfg.d_in != width:
            raise ActlabError(f"the SAE at '{self.hook}' reads width {self.sae.cfg.d_in}, the hook's is {width}",
                              param="interventions")

    @property
    def scale_and_value(self) -> tuple[float, float]:
        """The edit as f -> scale * f + value of each chosen latent."""
        return {"ablate": (0.0, 0.0), "clamp": (0.0, float(self.value)), "scale": (float(self.value), 0.0)}[self.mode]

    def edit(self, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        if not len(self.latents):
            return x
        latents = self.latents.to(x.device)
        scale, value = self.scale_and_value
        f = self.sae.encode(x)[..., latents]  # (m, K)
        change = self.sae.latent_change(x.float(), latents, f * scale + value - f)  # (m, w)
        return x + change.to(x.dtype)

    def _contents(self) -> Iterable[Any]:
        return self.sae.cfg.hook_name, id(self.sae), self.latents, self.mode, self.value


# -- applying per-row interventions to a padded batch ---------------------------

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
