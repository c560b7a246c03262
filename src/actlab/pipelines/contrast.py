"""The paired-contrast analysis end to end (actlab.contrast): the one-pass
run, its statistics and held-out detection, its findings and report."""

from __future__ import annotations

from pathlib import Path

from ..contrasts.analysis import analyze_contrast, contrast_findings
from ..contrasts.config import ContrastConfig
from ..contrasts.pairs import Pairs, load_pairs
from ..contrasts.run import ContrastRun, contrast_run
from ..engine import ExtractConfig
from ..models import Model, ModelSpec
from ..report.contrast import build_contrast_report


def contrast(model: Model | ModelSpec | str, pairs: "Pairs | str | Path | list", saes=None,
             out_dir: str | Path = "runs/contrast", cfg: ContrastConfig | None = None,
             extract: ExtractConfig | None = None, **control) -> dict:
    """Everything: the one-pass run (resumable; `control`: RunControl's
    fields, runner="ray" for its shards on a Ray cluster), statistics,
    detection (cfg.folds) and, with cfg.report, RUN/report.html. pairs: Pairs,
    or pairs file(s) / "builtin" read with the default field names. Returns
    the headline findings."""
    cfg = cfg or ContrastConfig()
    if not isinstance(pairs, Pairs):
        pairs = load_pairs(pairs)
    path = contrast_run(model, pairs, saes, out_dir, cfg, extract, **control)
    stats, detection = analyze_contrast(path, cfg.folds, cfg.seed)
    findings = contrast_findings(ContrastRun.open(path), stats, detection)
    if cfg.report:
        build_contrast_report(path)
    return {"run": str(path), "summary": findings, "stats": stats, "detection": detection}
