"""The paired-contrast analysis end to end (actlab.contrast): the one-pass
run, its statistics and held-out detection, its findings and report (the
page's data gathered here, drawn and rendered by actlab.report.contrast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contrasts.analysis import ALL, analyze_contrast, contrast_findings
from ..contrasts.config import ContrastConfig
from ..contrasts.pairs import Pairs, load_pairs
from ..contrasts.run import ContrastRun, contrast_run
from ..engine import ExtractConfig
from ..models import Model, ModelSpec
from ..report.contrast import ContrastReportData, contrast_figures, render_contrast_report
from ..report.page import write_page
from ..runs import RunControl
from ..storage import run_path

DETECTORS_SHOWN = ("sae_metrics_logistic", "residual_linear_probe", "residual_mean_diff_probe")


def contrast(model: Model | ModelSpec | str, pairs: "Pairs | str | Path | list", saes=None,
             out_dir: str | Path = "runs/contrast", cfg: ContrastConfig | None = None,
             extract: ExtractConfig | None = None, control: RunControl | None = None) -> dict:
    """Everything: the one-pass run (resumable; `control`: a RunControl,
    runner="ray" for its shards on a Ray cluster), statistics,
    detection (cfg.folds) and, with cfg.report, RUN/report.html. pairs: Pairs,
    or pairs file(s) / "builtin" read with the default field names. Returns
    the headline findings."""
    cfg = cfg or ContrastConfig()
    if not isinstance(pairs, Pairs):
        pairs = load_pairs(pairs)
    path = contrast_run(model, pairs, saes, out_dir, cfg, extract, control)
    stats, detection = analyze_contrast(path, cfg.folds, cfg.seed)
    findings = contrast_findings(ContrastRun.open(path), stats, detection)
    if cfg.report:
        build_contrast_report(path)
    return {"run": str(path), "summary": findings, "stats": stats, "detection": detection}


def build_contrast_report(path: str | Path, out: str | Path | None = None) -> Path:
    """report.html of a contrast run whose statistics are written
    (actlab.contrasts.analysis.analyze_contrast, which `actlab contrast` runs)."""
    run = ContrastRun.open(path)
    data = collect_contrast_report(run)
    figures = contrast_figures(data)
    return write_page(run_path(out) if out else run.path / "report.html", render_contrast_report(data, figures),
                      figures)


def collect_contrast_report(run: ContrastRun) -> ContrastReportData:
    """What the contrast page shows, from the run's texts, statistics and detection."""
    stats, detection = run.stats(), run.detection()
    stats_rows, detection_rows = stats.to_pylist(), detection.to_pylist()
    _, first, second = run.settings["pairs"]["conditions"]
    pooled = [r for r in stats_rows if r["domain"] == ALL]
    forest = [{"label": f"L{r['layer']} {r['metric']}", "d_z": r["d_z"], "low": r["d_z_low"], "high": r["d_z_high"],
               "significant": r["significant"]} for r in pooled if np.isfinite(r["d_z"])]
    domains = sorted({r["domain"] for r in stats_rows if r["domain"] != ALL})
    layers = sorted({r["layer"] for r in stats_rows})
    significant = np.array([[sum(r["significant"] for r in stats_rows if r["domain"] == d and r["layer"] == layer)
                             for layer in layers] for d in domains])
    texts = run.texts().to_pandas()
    top = sorted((r for r in pooled if r["kind"] == "text" and np.isfinite(r["d_z"])),
                 key=lambda r: -abs(r["d_z"]))[:3]
    panels = []
    for r in top:
        here = texts[(texts["layer"] == r["layer"])]
        panels.append({"label": f"{r['metric']}, layer {r['layer']} (d_z {r['d_z']:.2f})", "names": [first, second],
                       "first": here[here["condition"] == first][r["metric"]].to_numpy(),
                       "second": here[here["condition"] == second][r["metric"]].to_numpy()})
    pooled_detection = [r for r in detection_rows if r["domain"] == ALL]
    series = {name: [(r["layer"], r["auroc"]) for r in pooled_detection if r["detector"] == name]
              for name in DETECTORS_SHOWN}
    series["best single SAE metric"] = [(layer, max(r["auroc"] for r in pooled_detection if r["layer"] == layer
                                                    and r["detector"].startswith("metric:"))) for layer in layers]
    detectors = [r for r in pooled_detection if not r["detector"].startswith("metric:")]
    return ContrastReportData(run.path.name, run.settings, (first, second), contrast_findings(run, stats, detection),
                              pooled, forest, domains, layers, significant, panels, detectors, series)
