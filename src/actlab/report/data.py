"""What a features report shows, collected before it is rendered."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Example:
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
    examples: list[Example] = field(default_factory=list)


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
    figures: dict[str, bytes]  # file name -> PNG
    highlighted: bool
