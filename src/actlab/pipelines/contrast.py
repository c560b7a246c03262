"""The paired-contrast analysis end to end (actlab.contrast): the one-pass
run, its statistics and held-out detection, its findings and report."""

from __future__ import annotations

from pathlib import Path

from ..contrasts.analysis import analyze_contrast, contrast_findings
from ..contrasts.config import ContrastConfig
from ..contrasts.pairs import Pairs, load_pairs
from ..contrasts.run import ContrastRun, contrast_run
from ..engine import ExtractConfig, Progress
from ..models import Model
from ..report.contrast import build_contrast_report


def contrast(model: Model, pairs: "Pairs | str | Path | list", saes=None, out_dir: str | Path = "runs/contrast",
             cfg: ContrastConfig | None = None, extract: ExtractConfig | None = None, overwrite: bool = False,
             progress: Progress | None = None, folds: int = 5, report: bool = True, runner: str = "local",
             ray=None) -> dict:
    """Everything: the one-pass run (resumable; runner="ray": its shards on a
    Ray cluster), statistics, detection and, with report, RUN/report.html.
    pairs: Pairs, or pairs file(s) / "builtin" read with the default field
    names. Returns the headline findings."""
    if not isinstance(pairs, Pairs):
        pairs = load_pairs(pairs)
    path = contrast_run(model, pairs, saes, out_dir, cfg, extract, overwrite, progress, runner, ray)
    seed = (cfg or ContrastConfig()).seed
    stats, detection = analyze_contrast(path, folds, seed)
    findings = contrast_findings(ContrastRun(path), stats, detection)
    if report:
        build_contrast_report(path)
    return {"run": str(path), "summary": findings, "stats": stats, "detection": detection}
