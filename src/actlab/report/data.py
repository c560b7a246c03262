"""The data a report shows, gathered by actlab.pipelines before report/ draws and renders it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


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


@dataclass
class LatentBrowserData:
    """A latents run's browser, gathered (pipelines.latents_report) for
    report.latents to write: `meta` (the run, its SAEs, the histogram's bin
    edges), per SAE its latent list (count, frequency, mean, max,
    explanation, score: one list each), and its chunks, produced one at a
    time so 65k latents never sit in memory at once: (SAE index, chunk index,
    {"latents": {latent: card}, "windows": {window: tokens}})."""

    meta: dict
    lists: list[dict]
    chunks: Iterator[tuple[int, int, dict]]
