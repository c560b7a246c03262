"""A patching run's report page: the data gathered here from the run's
tables, drawn and rendered by actlab.report.patching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..patching import COMPONENTS, PatchRun
from ..report.page import write_page
from ..report.patching import PatchMap, PatchReportData, patch_figures, render_patch_report
from ..storage import run_path

STRONGEST = 12  # rows of the strongest-effects table
KEYS = ["pair", "component", "layer", "position", "head"]


def build_patch_report(path: str | Path, out: str | Path | None = None) -> Path:
    """RUN/report.html (or `out`) of a patching run, its figures beside it."""
    run = PatchRun.open(path)
    data = collect_patch_report(run)
    figures = patch_figures(data)
    return write_page(run_path(out) if out else run.path / "report.html", render_patch_report(data, figures), figures)


def collect_patch_report(run: PatchRun) -> PatchReportData:
    """What the patching page shows: mean effects as heatmaps and the
    strongest of them, and per-variant attribution against exact patching."""
    means = run.mean_effects()
    first = run.pairs().slice(0, 1).to_pylist()[0]
    tokens = first["clean_tokens"]
    label = lambda p: "all" if p is None else f"{p} {tokens[p]!r}" if p < len(tokens) else str(p)  # noqa: E731
    maps = [effect_map(means, method, component, label)
            for method in dict.fromkeys(means.column("method").to_pylist())
            for component in dict.fromkeys(means.column("component").to_pylist())]
    strongest = means.filter(pc.is_finite(means.column("normalized"))).sort_by([("normalized", "descending")])
    rows = [{**r, "position": label(r["position"])} for r in strongest.slice(0, STRONGEST).to_pylist()]
    return PatchReportData(run.path.name, run.settings, run.manifest["n_rows"], (first["clean"], first["corrupted"]),
                           [m for m in maps if m is not None], rows, comparisons(run.effects()))


def effect_map(means: pa.Table, method: str, component: str, label) -> PatchMap | None:
    """blocks x positions (heads: blocks x heads, at the last position patched) of a method's component."""
    rows = means.filter(pc.and_(pc.equal(means.column("method"), method),
                                pc.equal(means.column("component"), component))).to_pylist()
    if not rows:
        return None
    kind = COMPONENTS[component]
    layers = sorted({r["layer"] for r in rows})
    if kind.per_head:
        last = max((r["position"] for r in rows if r["position"] is not None), default=None)
        rows = [r for r in rows if r["position"] == last]
        columns, what = sorted({r["head"] for r in rows}), "heads" if last is None else f"heads at {label(last)}"
        column_of = lambda r: r["head"]  # noqa: E731
        names = [str(h) for h in columns]
    else:
        columns, what = sorted({r["position"] for r in rows}), "positions"
        column_of = lambda r: r["position"]  # noqa: E731
        names = [label(p) for p in columns]
    values = np.full((len(layers), len(columns)), np.nan)
    for r in rows:
        values[layers.index(r["layer"]), columns.index(column_of(r))] = r["normalized"]
    return PatchMap(method, component, values, [f"block {layer}" for layer in layers], names, what)


def comparisons(effects: pa.Table) -> list[dict]:
    """Per estimating method and component: each variant's change of the
    metric (patched - corrupted) by exact patching and by the estimate, and
    their correlation."""
    methods = set(effects.column("method").to_pylist())
    if "exact" not in methods:
        return []
    change = pc.subtract(effects.column("metric_patched"), effects.column("metric_corrupted"))
    table = effects.select(["method"] + KEYS).append_column("change", change)
    table = table.set_column(table.schema.get_field_index("position"), "position",
                             pc.fill_null(table.column("position"), -1))
    table = table.set_column(table.schema.get_field_index("head"), "head", pc.fill_null(table.column("head"), -1))
    exact = table.filter(pc.equal(table.column("method"), "exact")).drop(["method"])
    out = []
    for method in sorted(methods - {"exact"}):
        estimated = table.filter(pc.equal(table.column("method"), method)).drop(["method"])
        joined = exact.join(estimated, KEYS, right_suffix="_estimate")
        for component in dict.fromkeys(joined.column("component").to_pylist()):
            part = joined.filter(pc.equal(joined.column("component"), component))
            x, y = part.column("change").to_numpy(), part.column("change_estimate").to_numpy()
            r = float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 and x.std() > 0 and y.std() > 0 else float("nan")
            out.append({"label": f"{method}: {component}", "exact": x, "estimate": y, "r": r})
    return out
