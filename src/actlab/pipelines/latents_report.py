"""A latents run's browser (`actlab latents report`): token-level example
values from one more pass of the run's model and SAEs over the example
windows (kept in the run), the browser's data gathered from the run
(LatentBrowserData), then actlab.report writes the folder; and its
explanations (`actlab latents explain`) with the run's model loaded."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.batches import Progress
from ..errors import ActlabError
from ..latents import LatentsRun
from ..latents.examples import example_activations
from ..latents.explain import ExplainConfig, ExplainResult, explain_latents
from ..latents.summary import HIST_EDGES
from ..links import neuronpedia_link
from ..models import DEFAULT_DEVICE, Model
from ..report.data import LatentBrowserData
from ..report.latents import write_latent_browser
from ..runs import open_run
from ..storage import run_path
from ..version import VERSION

SCORES = ("score", "fuzzing_auroc", "baseline_score", "baseline_fuzzing_auroc")


@dataclass
class BrowserConfig:
    """What the latent browser shows."""

    top: int = field(default=10, metadata={"help": "Top examples shown per latent."})
    per_decile: int = field(default=2, metadata={"help": "Interval examples shown per decile."})
    chunk: int = field(default=256, metadata={"help": "Latents per data file (loaded when one is opened)."})


def build_latent_browser(run: str | Path, out: str | Path | None = None, model=None, cfg: BrowserConfig | None = None,
                         use_model: bool = True, saes: dict | None = None, device: str = DEFAULT_DEVICE) -> Path:
    """Write the latent browser of a latents run into `out` (default
    RUN/browser) and return its index.html. The model (a Model, a name, or
    by default the run's own) and the SAEs (default: reloaded from their
    sources) give each example's token-level values; use_model=False marks
    only each example's maximum (unless an earlier report computed them)."""
    path = run_path(run)
    opened = latents_run_at(path, "`actlab report` reads features runs")
    if use_model:
        if not isinstance(model, Model):
            try:
                model = opened.model(model, device)
            except ActlabError as exc:
                raise ActlabError(f"{exc}, or report without it (--no-model)", param=exc.param) from None
        example_activations(opened, model, saes)
    return write_latent_browser(collect_latent_browser(opened, cfg or BrowserConfig()),
                                run_path(out) if out is not None else path / "browser")


def collect_latent_browser(run: LatentsRun, cfg: BrowserConfig) -> LatentBrowserData:
    """What the browser of a latents run shows, read from the run; its
    chunks are read one at a time as they are written."""
    explained = latent_explanations(run)
    meta = {"run": str(run.path), "model": run.settings["model"]["id"], "actlab": VERSION,
            "n_tokens": run.manifest.get("n_tokens"), "n_texts": run.manifest.get("n_rows"),
            "has_bos": run.settings["has_bos"], "chunk": cfg.chunk, "edges": _round(HIST_EDGES, 6), "saes": []}
    lists = []
    for sae in run.saes:
        config = run.sae_config(sae)
        link = neuronpedia_link(config.neuronpedia_id, 0)
        meta["saes"].append({"name": sae, "hook": config.hook_name, "d_sae": config.d_sae,
                             "neuronpedia": link[:-1] if link else None})
        latents = run.latents(sae).to_pandas()
        notes = explained.get(sae, {})
        lists.append({"count": latents["count"].tolist(), "frequency": _round(latents["frequency"], 6),
                      "mean": _round(latents["mean"]), "max": _round(latents["max"]),
                      "explanation": [notes.get(j, {}).get("explanation") for j in range(config.d_sae)],
                      "score": [notes.get(j, {}).get("score") for j in range(config.d_sae)]})
    chunks = (chunk for index, sae in enumerate(run.saes)
              for chunk in _chunks(run, sae, index, cfg, explained.get(sae, {})))
    return LatentBrowserData(meta, lists, chunks)


def _round(values, digits: int = 4) -> list:
    return [round(float(v), digits) for v in values]


def latent_explanations(run: LatentsRun) -> dict[str, dict[int, dict]]:
    """Per SAE and latent: explanation, baseline, and the scores (None: not scored)."""
    table = run.explanations()
    out: dict = defaultdict(dict)
    for row in table.to_pylist() if table is not None else []:
        scores = {name: None if row.get(name) is None or row[name] != row[name] else round(float(row[name]), 3)
                  for name in SCORES}  # NaN: not scored
        out[row["sae"]][int(row["latent"])] = {"explanation": row["explanation"], "baseline": row.get("baseline"),
                                               **scores}
    return dict(out)


def _chunks(run: LatentsRun, sae: str, index: int, cfg: BrowserConfig, notes: dict) -> Iterator[tuple[int, int, dict]]:
    d_sae = run.sae_config(sae).d_sae
    tables = {name: _by_latent(run.table(name, sae)) for name in
              ("top", "intervals", "histograms", "logit_effects", "neighbours", "cofiring")}
    values = run.example_values(sae)
    for lo in range(0, d_sae, cfg.chunk):
        chunk_latents, keys = {}, set()
        for j in range(lo, min(lo + cfg.chunk, d_sae)):
            shown = [("top", r) for r in tables["top"].get(j, [])[:cfg.top]]
            shown += [(f"decile {r['decile'] + 1}", r) for r in tables["intervals"].get(j, [])
                      if r["rank"] < cfg.per_decile]
            entries = []
            for kind, r in shown:
                positions, vals = values.get((j, r["window"]), ([r["position"]], [r["value"]]))
                entries.append([kind, str(r["window"]), round(r["value"], 4), r["position"], positions,
                                _round(vals, 3), r["text_id"], r["start"]])
                keys.add(r["window"])
            effects = tables["logit_effects"].get(j, [])
            chunk_latents[j] = {
                "hist": [[r["bin"], r["count"]] for r in tables["histograms"].get(j, [])],
                "examples": entries,
                "top_tokens": [[r["token"], round(r["effect"], 3)] for r in effects if r["side"] == "top"],
                "bottom_tokens": [[r["token"], round(r["effect"], 3)] for r in effects if r["side"] == "bottom"],
                "neighbours": [[r["other"], round(r["cosine"], 3)] for r in tables["neighbours"].get(j, [])],
                "cofiring": [[r["other"], round(r["jaccard"], 3)] for r in tables["cofiring"].get(j, [])],
                "explanation": notes.get(j, {}).get("explanation"), "scores": notes.get(j)}
        yield index, lo // cfg.chunk, {"latents": chunk_latents, "windows": _window_tokens(run, sorted(keys))}


def _by_latent(table) -> dict[int, list[dict]]:
    rows: dict[int, list[dict]] = defaultdict(list)
    for row in table.to_pylist():
        rows[row["latent"]].append(row)
    return rows


def _window_tokens(run: LatentsRun, keys: list[int]) -> dict[str, list[str]]:
    table = run.windows(keys)
    if table is None:
        return {}
    return {str(k): tokens for k, tokens in zip(table.column("window").to_pylist(), table.column("tokens").to_pylist())}


def explain_run(run: str | Path, model=None, cfg: ExplainConfig | None = None, saes: dict | None = None,
                device: str = DEFAULT_DEVICE, progress: Progress | None = None) -> ExplainResult:
    """actlab.latents.explain.explain_latents on a run folder, with its model
    (a Model, a name, or by default the run's own, its weights checked)."""
    opened = latents_run_at(run_path(run), "explain reads latents runs")
    if not isinstance(model, Model):
        model = opened.model(model, device)
    return explain_latents(opened, model, cfg, saes, progress)


def latents_run_at(path, other: str) -> LatentsRun:
    opened = open_run(path)
    if not isinstance(opened, LatentsRun):
        raise ActlabError(f"{path} is not a latents run (actlab latents); {other}", param="run")
    return opened

