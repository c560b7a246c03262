"""The HTML page of a contrast run (report.html): its settings, findings,
paired effects (forest plot and table), domains x layers, the largest
effects' distributions and held-out detection per layer. It renders what
actlab.contrasts.analysis computed and computes nothing itself."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import plots
from ..contrasts.analysis import ALL, contrast_findings
from ..contrasts.run import ContrastRun
from ..errors import ActlabError
from ..storage import read_parquet, run_path
from .html import STYLE, image, section, table
from .page import write_page


@dataclass
class ContrastReportData:
    run: ContrastRun
    stats: list[dict]
    detection: list[dict]
    findings: list[str]  # what the data show, null results included
    figures: dict[str, bytes]


def collect_contrast_report(run: ContrastRun, stats: pa.Table, detection: pa.Table) -> ContrastReportData:
    stats_rows, detection_rows = stats.to_pylist(), detection.to_pylist()
    _, first, second = run.settings["pairs"]["conditions"]
    pooled = [r for r in stats_rows if r["domain"] == ALL]
    forest = [{"label": f"L{r['layer']} {r['metric']}", "d_z": r["d_z"], "low": r["d_z_low"], "high": r["d_z_high"],
               "significant": r["significant"]} for r in pooled if np.isfinite(r["d_z"])]
    figures = {"forest.png": plots.forest_plot(forest, f"{second} minus {first}, every domain pooled")}
    domains = sorted({r["domain"] for r in stats_rows if r["domain"] != ALL})
    layers = sorted({r["layer"] for r in stats_rows})
    counts = np.array([[sum(r["significant"] for r in stats_rows if r["domain"] == d and r["layer"] == layer)
                        for layer in layers] for d in domains])
    figures["heatmap.png"] = plots.value_heatmap(counts, domains, [f"layer {layer}" for layer in layers],
                                                 "metrics with an FDR-significant difference", "tests with q < 0.05")
    texts = run.texts().to_pandas()
    top = sorted((r for r in pooled if r["kind"] == "text" and np.isfinite(r["d_z"])),
                 key=lambda r: -abs(r["d_z"]))[:3]
    panels = []
    for r in top:
        here = texts[(texts["layer"] == r["layer"])]
        panels.append({"label": f"{r['metric']}, layer {r['layer']} (d_z {r['d_z']:.2f})", "names": [first, second],
                       "first": here[here["condition"] == first][r["metric"]].to_numpy(),
                       "second": here[here["condition"] == second][r["metric"]].to_numpy()})
    if panels:
        figures["distributions.png"] = plots.paired_histograms(panels, "the largest effects")
    pooled_detection = [r for r in detection_rows if r["domain"] == ALL]
    series = {name: [(r["layer"], r["auroc"]) for r in pooled_detection if r["detector"] == name]
              for name in ("sae_metrics_logistic", "residual_linear_probe", "residual_mean_diff_probe")}
    series["best single SAE metric"] = [(layer, max(r["auroc"] for r in pooled_detection if r["layer"] == layer
                                                    and r["detector"].startswith("metric:"))) for layer in layers]
    figures["detection.png"] = plots.auroc_by_layer(series, f"held-out detection of {second} vs {first}")
    return ContrastReportData(run, stats_rows, detection_rows, contrast_findings(run, stats, detection), figures)


def noise_setting(cfg: dict) -> str:
    scale = "absolute sigma" if cfg["absolute_noise"] else "relative to |x|"
    return f"{cfg['noise']:g} ({scale}), {cfg['draws']} draws per text, seed {cfg['seed']}"


def render_contrast_report(data: ContrastReportData) -> str:
    settings = data.run.settings
    facts = [("model", settings["model"]["id"]), ("pairs", str(settings["pairs"]["n_pairs"])),
             ("conditions", ", ".join(settings["pairs"]["conditions"])),
             ("SAEs", ", ".join(f"{n} ({h})" for n, h in settings["saes"].items())),
             ("position", settings["contrast"]["position"]),
             ("noise", noise_setting(settings["contrast"]))]
    pooled = [r for r in data.stats if r["domain"] == ALL]
    stat_rows = [[escape(r["metric"]), str(r["layer"]), str(r["n"]), f"{r['mean_diff']:.4g}",
                  f"{r['d_z']:.3f} [{r['d_z_low']:.3f}, {r['d_z_high']:.3f}]", f"{r['cohens_d_pooled']:.3f}",
                  f"{r['wilcoxon_p']:.2g}", f"{r['q']:.2g}", "yes" if r["significant"] else ""] for r in pooled]
    detection = [r for r in data.detection if r["domain"] == ALL and not r["detector"].startswith("metric:")]
    sections = [
        section("summary", "Run", table(["setting", "value"], [[escape(k), escape(v)] for k, v in facts]) +
                "".join(f"<p>{escape(line)}</p>" for line in data.findings)),
        section("effects", "Paired effects", image(data.figures["forest.png"], "forest plot") +
                table(["metric", "layer", "n", "mean diff", "d_z [95% CI]", "pooled-SD d", "Wilcoxon p", "q (BH)",
                       "significant"], stat_rows)),
        section("domains", "Domains x layers", image(data.figures["heatmap.png"], "heatmap")),
        section("distributions", "Distributions",
                image(data.figures["distributions.png"], "histograms") if "distributions.png" in data.figures
                else '<p class="note">No finite effects to show.</p>'),
        section("detection", "Held-out detection", image(data.figures["detection.png"], "AUROC per layer") +
                table(["layer", "detector", "AUROC", "texts"], [[str(r["layer"]), escape(r["detector"]),
                                                                 f"{r['auroc']:.3f}", str(r["n_texts"])]
                                                                for r in detection]))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>actlab contrast report</title>"
            f"<style>{STYLE}</style></head><body><h1>actlab contrast report: {escape(data.run.path.name)}</h1>"
            f"{''.join(sections)}</body></html>\n")


def build_contrast_report(path: str | Path, out: str | Path | None = None) -> Path:
    """report.html of a contrast run whose statistics are written
    (actlab.contrasts.analysis.analyze_contrast, which `actlab contrast` runs)."""
    run = ContrastRun.open(path)
    if not ((run.path / "stats.parquet").exists() and (run.path / "detection.parquet").exists()):
        raise ActlabError(f"{run.path} has no stats.parquet / detection.parquet yet; rerun the same `actlab "
                          "contrast` command (or call actlab.contrasts.analysis.analyze_contrast) first")
    stats, detection = read_parquet(run.path / "stats.parquet"), read_parquet(run.path / "detection.parquet")
    data = collect_contrast_report(run, stats, detection)
    return write_page(run_path(out) if out else run.path / "report.html", render_contrast_report(data), data.figures)
