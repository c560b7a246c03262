"""The HTML page of a circuit run (report.html): the circuit drawn as a
graph over sites (rows, the embeddings at the bottom, the metric at the
top) and token positions (columns), its nodes linked to a latents run's
dashboards with their explanations where one is given, the strongest
nodes, and the faithfulness curve. It draws the data
actlab.pipelines.circuit_report gathers, and computes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from .. import plots
from .html import STYLE, image, section, table

CELL, SLOT, ROW, MARGIN = 64, 30, 110, 100  # pixels: a position's least width, a node's, a site's row, the left margin


@dataclass
class CircuitReportData:
    """What the page shows, gathered from a circuit run."""

    name: str
    settings: dict
    n_pairs: int
    example: dict  # clean, corrupted
    tokens: list[str]  # the first pair's clean tokens
    sites: list[dict]  # name, hook, d_sae (embeddings first)
    nodes: list[dict]  # the circuit's: node, site, kind, position, latent, effect, rank, link, explanation
    edges: list[dict]  # upstream, downstream, effect
    faithfulness: list[dict]  # ablation, nodes, metric, metric_model, metric_empty, faithfulness
    selection: dict  # node_threshold, edge_threshold, aggregation
    latents_run: str | None  # the latents run the nodes link to


def circuit_figures(data: CircuitReportData) -> dict[str, bytes]:
    return {"faithfulness.png": plots.faithfulness_by_size(
        data.faithfulness, len(data.nodes), "faithfulness against circuit size")}


def _columns(data: CircuitReportData) -> list[float]:
    """Each token position's left edge, then the right edge: a position is
    as wide as its fullest site's nodes need, at least a token's width."""
    per_cell: dict[tuple, int] = {}
    for node in data.nodes:
        per_cell[node["site"], node["position"]] = per_cell.get((node["site"], node["position"]), 0) + 1
    edges = [float(MARGIN)]
    for p in range(max(1, len(data.tokens))):
        crowd = max([n for (_, position), n in per_cell.items() if position == p], default=0)
        edges.append(edges[-1] + max(CELL, SLOT * crowd + SLOT))
    spread = max([n for (_, position), n in per_cell.items() if position is None], default=0)
    if spread and edges[-1] - MARGIN < SLOT * (spread + 1):  # summed over positions: the row must hold them
        edges = [MARGIN + (e - MARGIN) * SLOT * (spread + 1) / (edges[-1] - MARGIN) for e in edges]
    return edges


def _layout(data: CircuitReportData, columns: list[float]) -> dict[str, tuple[float, float]]:
    """Each node's (x, y): its site's row, its position's column (spread within the cell)."""
    rows = {s["name"]: len(data.sites) - k for k, s in enumerate(data.sites)}  # the metric is row 0
    cells: dict[tuple, list[dict]] = {}
    for node in data.nodes:
        cells.setdefault((node["site"], node["position"]), []).append(node)
    where = {"metric": ((columns[-2] + columns[-1]) / 2, ROW * 0.5)}
    for (site, position), members in cells.items():
        left, right = (columns[0], columns[-1]) if position is None else (columns[position], columns[position + 1])
        for i, node in enumerate(members):
            where[node["node"]] = (left + (right - left) * (i + 1) / (len(members) + 1), ROW * (rows[site] + 0.5))
    return where


def _svg(data: CircuitReportData) -> str:
    columns = _columns(data)
    where = _layout(data, columns)
    width, height = columns[-1] + 20, ROW * (len(data.sites) + 1) + 40
    biggest = max([abs(n["effect"]) for n in data.nodes] + [1e-12])
    strongest_edge = max([abs(e["effect"]) for e in data.edges] + [1e-12])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="circuit">']
    for k, site in enumerate([{"name": "metric"}] + list(reversed(data.sites))):
        parts.append(f'<text x="4" y="{ROW * (k + 0.5) + 4}" class="site">{escape(site["name"])}</text>')
    for p, token in enumerate(data.tokens):
        parts.append(f'<text x="{(columns[p] + columns[p + 1]) / 2:.1f}" y="{height - 12}" class="token">'
                     f'{escape(token)}</text>')
    for edge in data.edges:
        if edge["upstream"] in where and edge["downstream"] in where:
            (x1, y1), (x2, y2) = where[edge["upstream"]], where[edge["downstream"]]
            colour = "#2166ac" if edge["effect"] > 0 else "#b2182b"
            parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                         f'stroke-width="{0.5 + 4 * abs(edge["effect"]) / strongest_edge:.2f}" stroke-opacity="0.55">'
                         f'<title>{escape(edge["upstream"])} → {escape(edge["downstream"])}: '
                         f'{edge["effect"]:+.4g}</title></line>')
    x, y = where["metric"]
    parts.append(f'<rect x="{x - 30}" y="{y - 12}" width="60" height="24" rx="4" class="metric"/>'
                 f'<text x="{x}" y="{y + 4}" class="token">metric</text>')
    for node in data.nodes:
        x, y = where[node["node"]]
        colour = "#2166ac" if node["effect"] > 0 else "#b2182b"
        shape = (f'<rect x="{x - 7}" y="{y - 7}" width="14" height="14" fill="#999"/>' if node["kind"] != "latent"
                 else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{4 + 10 * (abs(node["effect"]) / biggest) ** 0.5:.1f}" '
                      f'fill="{colour}"/>')
        tip = f'{node["node"]}: effect {node["effect"]:+.4g}' + (f' - {node["explanation"]}' if node["explanation"]
                                                                  else "")
        label = "" if node["latent"] is None else str(node["latent"])
        body = (f'{shape}<text x="{x:.1f}" y="{y + 22:.1f}" class="label">{escape(label)}</text>'
                f'<title>{escape(tip)}</title>')
        parts.append(f'<a href="{escape(node["link"])}">{body}</a>' if node["link"] else f"<g>{body}</g>")
    return "".join(parts) + "</svg>"


SVG_STYLE = """
svg.circuit text.site { font-size: 11px; fill: #555; } svg.circuit text.token { font-size: 11px; text-anchor: middle; }
svg.circuit text.label { font-size: 9px; text-anchor: middle; fill: #333; }
svg.circuit rect.metric { fill: #eee; stroke: #888; } .scroll { overflow-x: auto; }
"""


def render_circuit_report(data: CircuitReportData, figures: dict[str, bytes]) -> str:
    method = data.settings["circuit"]
    facts = [("model", data.settings["model"]["id"]), ("pairs", str(data.n_pairs)),
             ("example clean", data.example["clean"]), ("example corrupted", data.example["corrupted"]),
             ("SAEs", ", ".join(f'{s["name"]} ({s["hook"]})' for s in data.sites if s["d_sae"])),
             ("node effects", method["method"] + (f' ({method["ig_steps"]} steps)' if "ig_steps" in method else "")),
             ("thresholds", f'nodes |effect| ≥ {data.selection["node_threshold"]}, edges ≥ '
                            f'{data.selection["edge_threshold"]}; aggregation {data.selection["aggregation"]}'),
             ("circuit", f"{len(data.nodes)} nodes, {len(data.edges)} edges"),
             ("latents run", data.latents_run or "none given (--latents RUN links the nodes to its dashboards)")]
    where = lambda p: "" if p is None else escape(f"{p} {data.tokens[p]!r}")  # noqa: E731
    rows = [[f'<a href="{escape(n["link"])}">{escape(n["node"])}</a>' if n["link"] else escape(n["node"]),
             escape(n["kind"]), where(n["position"]),
             f'{n["effect"]:+.4f}', escape(n["explanation"] or "")] for n in data.nodes[:40]]
    curve = table(["ablation", "nodes", "metric", "faithfulness"], [
        [escape(r["ablation"]), str(r["nodes"]), f'{r["metric"]:.3f}', f'{r["faithfulness"]:.3f}']
        for r in data.faithfulness])
    sections = [
        section("summary", "Run", table(["setting", "value"], [[escape(k), escape(v)] for k, v in facts])),
        section("graph", "The circuit", '<p>Rows: sites, the embeddings at the bottom; columns: token positions. '
                'Circles are latents (area: |effect|; blue raises the logit difference, red lowers it), grey squares '
                'error terms and embeddings; lines are edges (width: |effect|). Hover for values; a latent opens its '
                f'dashboard when a latents run is given.</p><div class="scroll">{_svg(data)}</div>'),
        section("nodes", "Strongest nodes", table(["node", "kind", "position", "effect", "explanation"], rows)),
        section("faithfulness", "Faithfulness", "<p>Everything outside the strongest n nodes ablated, to its mean "
                "over the pairs' clean runs (Marks et al.) or to the pair's corrupted run: (m(circuit) - m(empty)) / "
                "(m(model) - m(empty)).</p>" + image(figures["faithfulness.png"],
                                                                               "faithfulness curve") + curve)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>actlab circuit report</title>"
            f"<style>{STYLE}{SVG_STYLE}</style></head><body><h1>actlab circuit report: {escape(data.name)}</h1>"
            f"{''.join(sections)}</body></html>\n")
