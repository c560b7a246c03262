"""The HTML page of a patching run (report.html): its settings, the
strongest effects, heatmaps of the mean normalised effect (layer x
position per component, layer x head for heads) with the tokens on the
axis, and attribution against exact patching where both ran. It draws the
data actlab.pipelines.patch_report gathers, and computes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np

from .. import plots
from .html import STYLE, image, section, table


@dataclass
class PatchMap:
    """One heatmap: the mean normalised effect of a method's component,
    rows (blocks) x columns (positions or heads)."""

    method: str
    component: str
    values: np.ndarray  # (rows, columns), NaN where not patched
    rows: list[str]
    columns: list[str]
    what: str  # what the columns are


@dataclass
class PatchReportData:
    """What the page shows, gathered from a patching run."""

    name: str  # the run folder's
    settings: dict
    n_pairs: int
    example: tuple[str, str]  # the first pair's clean and corrupted prompts
    maps: list[PatchMap]
    strongest: list[dict]  # mean effects rows: method, component, layer, position label, head, normalized, ...
    comparisons: list[dict]  # label, exact, estimate (per variant change of the metric), r


def patch_figures(data: PatchReportData) -> dict[str, bytes]:
    figures = {f"{m.method}-{m.component}.png": plots.effect_heatmap(
        m.values, m.rows, m.columns, f"{m.component} ({m.method}): mean normalised effect, blocks x {m.what}",
        "(patched - corrupted) / (clean - corrupted)") for m in data.maps}
    if data.comparisons:
        figures["attribution.png"] = plots.attribution_scatter(
            data.comparisons, "estimated against exact change of the logit difference, per variant")
    return figures


def render_patch_report(data: PatchReportData, figures: dict[str, bytes]) -> str:
    patch = data.settings["patch"]
    facts = [("model", data.settings["model"]["id"]), ("pairs", str(data.n_pairs)),
             ("example clean", data.example[0]), ("example corrupted", data.example[1]),
             ("methods", ", ".join(patch["method"])), ("components", ", ".join(patch["components"])),
             ("metric", "logit difference answer - wrong answer at the last position; normalised: (patched - "
                        "corrupted) / (clean - corrupted), 1 = the clean behaviour restored")]
    rows = [[escape(r["method"]), escape(r["component"]), str(r["layer"]), escape(r["position"]),
             "" if r["head"] is None else str(r["head"]), f"{r['normalized']:.3f}", f"{r['metric_patched']:.3f}"]
            for r in data.strongest]
    sections = [section("summary", "Run", table(["setting", "value"], [[escape(k), escape(v)] for k, v in facts])),
                section("strongest", "Strongest mean effects",
                        table(["method", "component", "block", "position", "head", "normalized", "logit diff"], rows))]
    sections += [section(f"{m.method}-{m.component}", f"{m.component} ({m.method})",
                         image(figures[f"{m.method}-{m.component}.png"], f"{m.component} heatmap")) for m in data.maps]
    if data.comparisons:
        sections.append(section("attribution", "Attribution against exact patching",
                                image(figures["attribution.png"], "attribution scatter") +
                                table(["method and component", "variants", "correlation r"],
                                      [[escape(c["label"]), str(len(c["exact"])), f"{c['r']:.3f}"]
                                       for c in data.comparisons])))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>actlab patching report</title>"
            f"<style>{STYLE}</style></head><body><h1>actlab patching report: {escape(data.name)}</h1>"
            f"{''.join(sections)}</body></html>\n")
