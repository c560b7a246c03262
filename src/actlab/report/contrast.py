"""The HTML page of a contrast run (report.html): its settings, findings,
paired effects (forest plot and table), domains x layers, the largest
effects' distributions and held-out detection per layer. It draws and
renders the data actlab.pipelines.contrast gathers, and computes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np

from .. import plots
from .html import STYLE, image, section, table


@dataclass
class ContrastReportData:
    """What the page shows, gathered from a contrast run's tables."""

    name: str  # the run folder's
    settings: dict  # the run's
    conditions: tuple[str, str]  # (first, second): effects are second minus first
    findings: list[str]  # what the data show, null results included
    effects: list[dict]  # stats rows pooled over every domain
    forest: list[dict]  # of them, the finite ones: label, d_z, low, high, significant
    domains: list[str]
    layers: list[int]
    significant: np.ndarray  # (domains, layers): FDR-significant tests
    panels: list[dict]  # the largest text effects: label, names, first, second (values per condition)
    detectors: list[dict]  # pooled detection rows of the detectors (not single metrics)
    detection_series: dict[str, list[tuple[int, float]]]  # detector -> (layer, AUROC) per layer


def contrast_figures(data: ContrastReportData) -> dict[str, bytes]:
    first, second = data.conditions
    figures = {"forest.png": plots.forest_plot(data.forest, f"{second} minus {first}, every domain pooled"),
               "heatmap.png": plots.value_heatmap(data.significant, data.domains,
                                                  [f"layer {layer}" for layer in data.layers],
                                                  "metrics with an FDR-significant difference", "tests with q < 0.05")}
    if data.panels:
        figures["distributions.png"] = plots.paired_histograms(data.panels, "the largest effects")
    figures["detection.png"] = plots.auroc_by_layer(data.detection_series, f"held-out detection of {second} vs "
                                                                           f"{first}")
    return figures


def noise_setting(cfg: dict) -> str:
    scale = "absolute sigma" if cfg["absolute_noise"] else "relative to |x|"
    return f"{cfg['noise']:g} ({scale}), {cfg['draws']} draws per text, seed {cfg['seed']}"


def render_contrast_report(data: ContrastReportData, figures: dict[str, bytes]) -> str:
    settings = data.settings
    facts = [("model", settings["model"]["id"]), ("pairs", str(settings["pairs"]["n_pairs"])),
             ("conditions", ", ".join(settings["pairs"]["conditions"])),
             ("SAEs", ", ".join(f"{n} ({h})" for n, h in settings["saes"].items())),
             ("position", settings["contrast"]["position"]),
             ("noise", noise_setting(settings["contrast"]))]
    stat_rows = [[escape(r["metric"]), str(r["layer"]), str(r["n"]), f"{r['mean_diff']:.4g}",
                  f"{r['d_z']:.3f} [{r['d_z_low']:.3f}, {r['d_z_high']:.3f}]", f"{r['cohens_d_pooled']:.3f}",
                  f"{r['wilcoxon_p']:.2g}", f"{r['q']:.2g}", "yes" if r["significant"] else ""] for r in data.effects]
    sections = [
        section("summary", "Run", table(["setting", "value"], [[escape(k), escape(v)] for k, v in facts]) +
                "".join(f"<p>{escape(line)}</p>" for line in data.findings)),
        section("effects", "Paired effects", image(figures["forest.png"], "forest plot") +
                table(["metric", "layer", "n", "mean diff", "d_z [95% CI]", "pooled-SD d", "Wilcoxon p", "q (BH)",
                       "significant"], stat_rows)),
        section("domains", "Domains x layers", image(figures["heatmap.png"], "heatmap")),
        section("distributions", "Distributions",
                image(figures["distributions.png"], "histograms") if "distributions.png" in figures
                else '<p class="note">No finite effects to show.</p>'),
        section("detection", "Held-out detection", image(figures["detection.png"], "AUROC per layer") +
                table(["layer", "detector", "AUROC", "texts"], [[str(r["layer"]), escape(r["detector"]),
                                                                 f"{r['auroc']:.3f}", str(r["n_texts"])]
                                                                for r in data.detectors]))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>actlab contrast report</title>"
            f"<style>{STYLE}</style></head><body><h1>actlab contrast report: {escape(data.name)}</h1>"
            f"{''.join(sections)}</body></html>\n")
