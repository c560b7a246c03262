"""The report as one self-contained HTML page: inline CSS, plots as data
URIs, no script, no network. Sections carry stable ids (summary, quality,
comparison, heatmaps, latents, tables, frequency) that tests look for."""

from __future__ import annotations

import base64
from html import escape
from typing import Iterable

from .. import plots
from ..links import neuronpedia_link
from ..plots import token_shades
from ..version import VERSION
from .data import ExampleText, LatentCard, ReportData

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .6em .9em; margin: .8em 0; }
.why { color: #555; }
.example { margin: .35em 0; padding: .3em .5em; background: #fafafa; font-family: ui-monospace, monospace;
  white-space: pre-wrap; word-break: break-word; font-size: 12.5px; }
.tok { border-radius: 2px; } .meta { color: #666; font-size: 12px; } .note { color: #666; font-style: italic; }
img { max-width: 100%; }
"""

QUALITY_COLUMNS = [("l0", "L0", "{:.1f}"), ("dead_fraction", "dead", "{:.1%}"), ("dense_fraction", "dense", "{:.1%}"),
                   ("n_tokens", "tokens", "{:d}"), ("mse", "MSE", "{:.4g}"),
                   ("explained_variance", "expl. var.", "{:.3f}"),
                   ("ce_clean", "CE clean", "{:.3f}"), ("ce_spliced", "CE spliced", "{:.3f}"),
                   ("ce_zero_ablation", "CE zero-abl.", "{:.3f}"), ("ce_loss_score", "CE score", "{:.3f}")]


def feature_figures(data: ReportData) -> dict[str, bytes]:
    """The page's figures: a category heatmap per SAE (when the input has categories) and the firing
    frequency histogram, file name -> PNG."""
    figures = {f"heatmap-{slug(name)}.png": plots.category_heatmap(means, labels, latents,
                                                                   f"{name}: mean activation per category")
               for name, (labels, latents, means) in data.heatmaps.items()}
    figures["firing-frequency.png"] = plots.firing_frequency_histogram(data.frequencies, data.unit)
    return figures


def render(data: ReportData, figures: dict[str, bytes]) -> str:
    settings = data.manifest["settings"]
    body = [f"<h1>actlab report: {escape(data.run.name)}</h1>",
            section("summary", "Run", _summary(data, settings)),
            section("quality", "SAE quality", _quality(data)),
            section("comparison", "SAE comparison", _comparison(data)),
            section("heatmaps", "Category × latent heatmaps", _heatmaps(data, figures)),
            section("latents", "Latents and their top texts", _latents(data)),
            section("tables", "Analysis tables", _tables(data)),
            section("frequency", "Firing frequency", image(figures["firing-frequency.png"],
                                                              "histogram of latent firing frequencies"))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>actlab report: {escape(data.run.name)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}<p class=\"meta\">made by actlab {escape(VERSION)}</p></body></html>\n")


def section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{content}</section>'


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """Cells are HTML already (escape text before passing it)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _link(url: str | None, text: str) -> str:
    return f'<a href="{escape(url)}">{escape(text)}</a>' if url else escape(text)


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _summary(data: ReportData, settings: dict) -> str:
    model = settings["model"]
    facts = [("model", f"{model['id']} ({model['architecture']}, {model['n_layers']} layers, "
                       f"d_model {model['d_model']}, {model['dtype']})"),
             ("weights sha256", model["weights_sha256"][:16] + "…"),
             ("texts", f"{data.n_texts}"), ("pooling", str(settings["pooling"])),
             ("created", data.manifest.get("created", "?")), ("run folder", str(data.run))]
    saes = [[escape(name), escape(cfg.hook_name), escape(cfg.architecture), str(cfg.d_sae),
             str(cfg.k) if cfg.k else "", _link(neuronpedia_link(cfg.neuronpedia_id, 0), cfg.neuronpedia_id or "—"),
             escape(cfg.source)] for name, cfg in data.configs.items()]
    return (table(["setting", "value"], [[escape(k), escape(v)] for k, v in facts]) +
            table(["SAE", "hook", "architecture", "latents", "k", "Neuronpedia", "source"], saes))


def _quality(data: ReportData) -> str:
    if not data.quality:
        return '<p class="note">Not computed: the report was made without the model.</p>'
    rows = []
    for name, scopes in data.quality.items():
        for scope, metrics in scopes.items():
            rows.append([escape(name), escape(scope)] + [
                f'<span class="num">{fmt.format(metrics[key])}</span>' if metrics.get(key) is not None else "—"
                for key, _, fmt in QUALITY_COLUMNS])
    note = ("<p class=\"meta\">L0: active latents per token; dead: never active on these tokens; dense: active on "
            "more than 10% of tokens; CE: next-token loss with the clean activation, with the SAE reconstruction "
            "spliced in, and zero-ablated; CE score = (zero - spliced) / (zero - clean). Dead fractions need "
            "many tokens: on N tokens a latent that fires less often than once in N looks dead.</p>")
    return table(["SAE", "measured on"] + [label for _, label, _ in QUALITY_COLUMNS], rows) + note


def _comparison(data: ReportData) -> str:
    rows = []
    for row in data.tables["comparison"]:
        cells = [escape(row["row"])]
        for name in data.names:
            npid = data.configs[name].neuronpedia_id
            ids = [int(x) for x in str(row.get(name, "")).split()]
            cells.append(" ".join(_link(neuronpedia_link(npid, j), str(j)) for j in ids) or "—")
        rows.append(cells)
    return (table(["latents that are…"] + [escape(n) for n in data.names], rows) +
            "<p class=\"meta\">Computed once per SAE from features extracted in one pass: strongest on any text, "
            "active on the most texts, above the threshold on the fewest texts, and category specialists "
            "(in-category minus out-of-category texts above the threshold; shown only when > 0).</p>")


def _heatmaps(data: ReportData, figures: dict[str, bytes]) -> str:
    maps = [(name, figures.get(f"heatmap-{slug(name)}.png")) for name in data.names]
    if not any(png for _, png in maps):
        return '<p class="note">No heatmaps: the run\'s input has no category field.</p>'
    return "".join(f"<h3>{escape(name)}</h3>{image(png, f'{name} category heatmap')}" for name, png in maps if png)


def _latents(data: ReportData) -> str:
    if not data.highlighted:
        parts = ['<p class="note">Token highlighting needs per-token values: a per-token run, or the model '
                 '(this report was made without it).</p>']
    else:
        parts = []
    for name in data.names:
        parts.append(f"<h3>{escape(name)}</h3>")
        parts += [_card(card) for card in data.cards if card.sae == name]
    return "".join(parts)


def _card(card: LatentCard) -> str:
    title = _link(card.link, f"latent {card.latent}") + (f' · {_link(card.browser, "browser")}' if card.browser else "")
    examples = "".join(_example(ex) for ex in card.examples) or '<p class="note">never active</p>'
    return (f'<div class="card" id="{escape(slug(card.sae))}-{card.latent}"><b>{title}</b> '
            f'<span class="why">{escape(card.why)}</span><br><span class="meta">fires on {card.count} texts; '
            f'max {card.max:.3g}</span>{examples}</div>')


def _example(ex: ExampleText) -> str:
    head = f"text {ex.text_id}" + (f" · {ex.category}" if ex.category else "") + f" · {ex.value:.3g}"
    if ex.tokens is None:
        body = escape(ex.text)
    else:
        shades = token_shades(ex.token_values, max(ex.token_values) or 1.0)
        body = "".join(f'<span class="tok" title="{v:.3g}" style="background: rgba(255,120,0,{shade:.2f})">'
                       f"{escape(t)}</span>" if v > 0 else escape(t)
                       for t, v, shade in zip(ex.tokens, ex.token_values, shades))
    return f'<div class="example"><span class="meta">{escape(head)}</span>\n{body}</div>'


def _tables(data: ReportData) -> str:
    parts = []
    for name, rows in data.tables.items():
        if name == "comparison" or not rows:
            continue
        header = list(rows[0])
        cells = [[_cell(key, row[key]) for key in header] for row in rows]
        parts.append(f"<details><summary>{escape(name)} ({len(rows)} rows)</summary>{table(header, cells)}</details>")
    return "".join(parts)


def _cell(key: str, value) -> str:
    if key == "neuronpedia":
        return _link(value, "open") if value else "—"
    if isinstance(value, float):
        return f'<span class="num">{value:.4g}</span>'
    return escape(str(value))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
