"""A circuit run's report page: the data gathered here from the run's
tables (and a latents run's dashboards and explanations, when given),
drawn and rendered by actlab.report.circuits."""

from __future__ import annotations

import os
from pathlib import Path

from ..circuits import CircuitRun
from ..latents import LatentsRun
from ..report.circuits import CircuitReportData, circuit_figures, render_circuit_report
from ..report.page import write_page
from ..storage import run_path
from .latents_report import latent_explanations, latents_run_at


def build_circuit_report(path: str | Path, latents: str | Path | None = None, out: str | Path | None = None) -> Path:
    """RUN/report.html (or `out`) of a circuit run, its figures beside it;
    with `latents` (a latents run of the same SAEs) each latent node links
    to its dashboard in that run's browser (RUN/browser, `actlab latents
    report`) and shows its explanation."""
    run = CircuitRun.open(path)
    page = run_path(out) if out else run.path / "report.html"
    opened = latents_run_at(run_path(latents), "--latents takes a latents run") if latents else None
    data = collect_circuit_report(run, opened, Path(str(page)).parent)
    return write_page(page, render_circuit_report(data, circuit_figures(data)), circuit_figures(data))


def collect_circuit_report(run: CircuitRun, latents: LatentsRun | None, page_dir: Path) -> CircuitReportData:
    """What the circuit page shows; node links relative to the page's folder."""
    graph = run.graph()
    by_hook = _latents_saes(latents, graph["sites"]) if latents is not None else {}
    notes = latent_explanations(latents) if latents is not None else {}
    browser = None
    if latents is not None:
        index = latents.path / "browser" / "index.html"
        browser = os.path.relpath(str(index), str(page_dir)) if "://" not in str(index) else str(index)
    nodes = []
    for node in graph["nodes"]:
        match = by_hook.get(node["site"])
        link, explanation = None, None
        if match is not None and node["latent"] is not None:
            name, position = match
            link = f"{browser}#{position}/{node['latent']}"
            explanation = notes.get(name, {}).get(node["latent"], {}).get("explanation")
        nodes.append({**node, "link": link, "explanation": explanation})
    return CircuitReportData(run.path.name, run.settings, run.manifest["n_rows"], graph["example"], graph["tokens"],
                             graph["sites"], nodes, graph["edges"], graph["faithfulness"], graph["selection"],
                             str(latents.path) if latents is not None else None)


def _latents_saes(latents: LatentsRun, sites: list[dict]) -> dict[str, tuple[str, int]]:
    """Circuit site name -> (the latents run's SAE name, its index in the
    browser) for each SAE of the same hook and width."""
    found = {}
    for site in sites:
        for position, name in enumerate(latents.saes):
            config = latents.sae_config(name)
            if site["d_sae"] and config.hook_name == site["hook"] and config.d_sae == site["d_sae"]:
                found[site["name"]] = (name, position)
                break
    return found
