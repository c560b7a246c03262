"""The kinds of intervention: one formula (Affine) for the vector edits,
and EditLatents for an SAE's latents. See the package docstring."""


from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..errors import ActlabError
from ..hooks import HOOK_Z

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
