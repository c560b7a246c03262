"""Interventions from files, as runs record them: a vectors file's layer
vector (FileVector, a trait run's vectors/<method>.safetensors), and the
edits every row of a run gets (EditConfig): directional ablation and
capping along such vectors, and clamps of SAE latents."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ActlabError
from ..hooks import block_hook
from ..interventions import Cap, EditLatents, Intervention, ProjectOut
from ..saes import load_sae


@dataclass(frozen=True)
class FileVector:
    """One layer's vector in a vectors file (a trait run's
    vectors/<method>.safetensors): its layer_LAYER tensor, or its only one;
    `coeff` scales it where it steers."""

    path: Path
    layer: int
    coeff: float = 1.0

    def load(self, param: str) -> torch.Tensor:
        """The vector (`param`: the option it came from, for errors)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not Path(self.path).is_file():
            raise ActlabError(f"vectors file {self.path} does not exist; give a trait run's "
                              "vectors/<method>.safetensors", param=param)
        try:
            tensors = load_file(self.path)
        except (SafetensorError, OSError) as error:
            raise ActlabError(f"{self.path} is not a safetensors file ({error}); give a trait run's "
                              "vectors/<method>.safetensors", param=param) from None
        if f"layer_{self.layer}" in tensors:
            return tensors[f"layer_{self.layer}"]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise ActlabError(f"{self.path} has no layer_{self.layer} vector (it has {', '.join(sorted(tensors))}); "
                          "choose one of its layers", param=param)

    @property
    def column(self) -> str:
        """Its projection's column in a generation run: projection_<file stem>_<layer>."""
        return f"projection_{Path(self.path).stem}_{self.layer}"


@dataclass(frozen=True)
class FileCap:
    """The projection onto a file's layer vector held within [lo, hi] at
    that block's output (activation capping)."""

    vector: FileVector
    lo: float = -math.inf
    hi: float = math.inf


@dataclass(frozen=True)
class LatentClamp:
    """Latent `latent` of an SAE (a folder or release id) clamped to `value`
    at the SAE's hook (0: ablated); the SAE's error term is kept."""

    sae: str
    latent: int
    value: float = 0.0


@dataclass
class EditConfig:
    """Interventions every row of a run gets, at every position (prompt and
    answer), after any steering: actlab.ProjectOut, actlab.Cap and
    actlab.EditLatents built from files."""

    ablate: list[FileVector] = field(default_factory=list, metadata={
        "help": "Project the file's layer vector out of that block's output (directional ablation)."})
    cap: list[FileCap] = field(default_factory=list, metadata={
        "help": "Hold the projection onto the file's layer vector within [lo, hi] at that block's output."})
    clamp: list[LatentClamp] = field(default_factory=list, metadata={
        "help": "Clamp an SAE latent to a value at the SAE's hook, keeping the SAE's error term."})

    def __post_init__(self):
        self.ablate, self.cap, self.clamp = list(self.ablate), list(self.cap), list(self.clamp)
        for capped in self.cap:
            if not capped.lo <= capped.hi:
                raise ActlabError(f"cap range [{capped.lo:g}, {capped.hi:g}] is empty; give LO <= HI", param="cap")
        for vector in self.ablate + [c.vector for c in self.cap]:
            vector.load("ablate" if vector in self.ablate else "cap")  # the files exist and hold the vectors

    def __bool__(self) -> bool:
        return bool(self.ablate or self.cap or self.clamp)

    def interventions(self, device: torch.device | str = "cpu") -> list[Intervention]:
        """The edits, vectors loaded and SAEs loaded onto `device` (one SAE object per source)."""
        edits: list[Intervention] = [ProjectOut(block_hook(v.layer), v.load("ablate")) for v in self.ablate]
        edits += [Cap(block_hook(c.vector.layer), c.vector.load("cap"), c.lo, c.hi) for c in self.cap]
        saes = {source: load_sae(source, device=device) for source in dict.fromkeys(c.sae for c in self.clamp)}
        edits += [EditLatents(saes[c.sae], [c.latent], "clamp", c.value) for c in self.clamp]
        return edits

    def settings(self) -> dict:
        """What the answers depend on, as strings a manifest records."""
        return {"ablate": [f"{v.path}:{v.layer}" for v in self.ablate],
                "cap": [f"{c.vector.path}:{c.vector.layer}:{c.lo:g}:{c.hi:g}" for c in self.cap],
                "clamp": [f"{c.sae}:{c.latent}:{c.value:g}" for c in self.clamp]}
