"""What a features report shows (ReportConfig), and the data collected for it
(by actlab.pipelines) before it is rendered."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..analyses.run import AnalysisConfig
from ..errors import ActlabError


@dataclass
class ReportConfig(AnalysisConfig):
    """What a features run's report shows (the analyses' threshold and top, and more)."""

    latents_per_sae: int = field(default=8, metadata={"flag": "--latents",
                                                      "help": "Latents shown with their top texts, per SAE."})
    texts_per_latent: int = field(default=5, metadata={"flag": "--texts", "help": "Top texts per latent."})
    heatmap_latents_per_category: int = field(default=2, metadata={
        "flag": "--heatmap-latents", "help": "Latents per category in the category heatmap."})
    quality_texts: int = field(default=64, metadata={"help": "Texts of the run scored for SAE quality (0: skip)."})
    browser: Path | None = field(default=None, metadata={
        "help": "A latent browser (actlab latents report) of the same SAEs: each latent card links into it."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("latents_per_sae", "texts_per_latent", "heatmap_latents_per_category"):
            if getattr(self, name) < 1:
                raise ActlabError(f"{name} must be at least 1, not {getattr(self, name)}", param=name)
        if self.quality_texts < 0:
            raise ActlabError(f"quality_texts must be 0 or more, not {self.quality_texts}", param="quality_texts")


@dataclass
class ExampleText:
    text_id: int
    value: float  # the latent on this text, as pooled in the run
    category: str | None
    text: str
    tokens: list[str] | None = None  # with per-token values when highlighted
    token_values: list[float] | None = None


@dataclass
class LatentCard:
    sae: str
    latent: int
    why: str
    count: int  # texts on which it fires
    max: float
    link: str | None
    examples: list[ExampleText] = field(default_factory=list)
    browser: str | None = None  # the latent's page in a latent browser


@dataclass
class ReportData:
    run: Path
    manifest: dict
    n_texts: int
    names: list[str]
    configs: dict
    tables: dict[str, list[dict]]
    quality: dict[str, dict]  # sae -> {"this run": metrics, "held-out (training)": metrics}
    cards: list[LatentCard]
    heatmaps: dict[str, tuple[list[str], list[int], object]]  # sae -> (categories, latents, (categories, latents)
    # mean activations), when the input has categories
    frequencies: dict[str, object]  # sae -> (d_sae,) share of rows each latent fires on
    unit: str  # what a row is: texts or tokens
    highlighted: bool
