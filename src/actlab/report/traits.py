"""The HTML page of a trait run (`actlab traits report RUN`): the judge's
decisions, held-out separation per layer and method, the steering sweep, and
per-token monitoring of kept answers, rendered from the data that
actlab.pipelines.trait_report collects."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from html import escape

import numpy as np

from .. import plots
from ..traits.definitions import Trait
from .html import STYLE, image, section, table


@dataclass
class MonitoredAnswer:
    answer: dict  # the answers-table row
    tokens: list[str]  # the answer's tokens (prompt left out)
    values: np.ndarray  # their projections on the vector


@dataclass
class TraitReportData:
    trait: Trait
    path: str  # the run's
    method: str
    layer: int  # the steering layer, whose vector is monitored
    answers: list[dict]
    scores: list[dict]
    judged: dict[bytes, bytes]  # scores.parquet's schema metadata: judge and keep rule
    evaluation: list[dict]
    best: dict[str, dict]  # method -> its evaluation row at its best layer
    sweep: list[dict] | None  # score per steered block and coefficient, when swept
    monitored: list[MonitoredAnswer]


def trait_figures(data: TraitReportData) -> dict[str, bytes]:
    """separation.png, and steering.png / monitor.png when there is a sweep / a monitored answer."""
    name = data.trait.name
    figures = {"separation.png": plots.separation_by_layer(data.evaluation, f"{name}: held-out AUROC per layer")}
    if data.sweep is not None:
        figures["steering.png"] = plots.steering_sweep(data.sweep, f"{name}: steering")
    if data.monitored:
        first = data.monitored[0]
        figures["monitor.png"] = plots.token_projections(
            first.tokens, first.values,
            f"row {first.answer['row']}: projection on the block-{data.layer} {data.method} vector")
    return figures


def render_trait_report(data: TraitReportData, figures: dict[str, bytes]) -> str:
    name = data.trait.name
    sections = [section("summary", "Trait run", _summary(data)),
                section("separation", "Held-out separation per layer",
                         image(figures["separation.png"], "AUROC") + _best_table(data.best))]
    if data.sweep is not None:
        rows = [[str(r["layer"]), f"{r['coeff']:g}", "—" if r["mean_score"] is None else f"{r['mean_score']:.1f}",
                 str(r["n_scored"])] for r in data.sweep]
        sections.append(section("steering", "Steering sweep", image(figures["steering.png"], "steering sweep") +
                                table(["block", "coeff", "mean judge score", "scored answers"], rows)))
    else:
        sections.append(section("steering", "Steering sweep", '<p class="note">No sweep yet: '
                                 f"actlab traits steer {escape(data.path)}</p>"))
    monitor_html = (f'<p class="meta">Each answer token\'s block-{data.layer} output projected on the {data.method} '
                    "vector (red: towards the trait, blue: away); prompts not shown.</p>" +
                    "".join(_monitor_card(m) for m in data.monitored) +
                    (image(figures["monitor.png"], "per-token projections") if "monitor.png" in figures else ""))
    sections.append(section("monitoring", "Per-token monitoring", monitor_html))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>actlab trait report: {escape(name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>actlab trait report: {escape(name)}</h1>{''.join(sections)}</body></html>\n")


def _summary(data: TraitReportData) -> str:
    trait, judged = data.trait, data.judged
    decisions = Counter(s["decision"] for s in data.scores)
    facts = [("trait", trait.name), ("description", trait.description or "—"), ("answers", str(len(data.answers))),
             ("judge", judged.get(b"actlab.judge", b"not recorded").decode()),
             ("kept", judged.get(b"actlab.keep", b"not recorded").decode()),
             ("layers", "layer L is block L's output (blocks.L.hook_resid_post, HF hidden_states[L + 1])")]
    return (table(["setting", "value"], [[escape(k), escape(v)] for k, v in facts]) +
            table(["judge decision", "answers"], [[escape(d), str(n)] for d, n in decisions.most_common()]))


def _best_table(best: dict[str, dict]) -> str:
    rows = [[escape(m), str(r["layer"]), f"{r['auroc']:.3f}", f"{r['accuracy']:.3f}", f"{r['cohens_d']:.2f}",
             f"{r['n_test_pos']}/{r['n_test_neg']}"] for m, r in best.items()]
    return table(["method", "best layer", "AUROC", "accuracy", "Cohen's d", "held-out pos/neg"], rows)


def _monitor_card(monitored: MonitoredAnswer) -> str:
    answer, values = monitored.answer, monitored.values
    spans = "".join(
        f'<span class="tok" title="{v:.3g}" style="background: '
        f'{"rgba(220,60,30," if shade > 0 else "rgba(40,90,220,"}{abs(shade):.2f})">{escape(t)}</span>'
        for t, v, shade in zip(monitored.tokens, values, plots.token_shades(values)))
    head = f"row {answer['row']} · {answer['polarity']} · {answer['question']}"
    return f'<div class="example"><span class="meta">{escape(head)}</span>\n{spans}</div>'
