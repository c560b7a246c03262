"""The latent browser: a self-contained folder that opens from file://.

    index.html                 the app (latents_page.PAGE: inline CSS and JS, no network)
    data/meta.js               the run, its SAEs, the histogram's bin edges
    data/S/list.js             SAE S's latents: count, frequency, mean, max, explanation, score
    data/S/chunk-NNNN.js       CHUNK latents each: histogram, top and interval examples (the windows'
                               tokens once per chunk, each example's nonzero values), logit effects,
                               neighbours, co-firing

Data files are scripts that call a loader (`actlabData(kind, sae, chunk,
value)`), since a page from file:// may not fetch files; a latent's chunk is
loaded when it is first opened, so 65k latents open at once.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..analyses import neuronpedia_link
from ..errors import ActlabError
from ..latents.run import EXPLANATIONS
from ..latents.summary import HIST_EDGES
from ..runs.atomic import write_text_atomic
from ..version import VERSION
from .latents_page import PAGE


@dataclass
class BrowserConfig:
    """What the latent browser shows."""

    top: int = field(default=10, metadata={"help": "Top examples shown per latent."})
    per_decile: int = field(default=2, metadata={"help": "Interval examples shown per decile."})
    chunk: int = field(default=256, metadata={"help": "Latents per data file (loaded when one is opened)."})


def _script(kind: str, sae: int, chunk: int, value) -> str:
    return f"actlabData({json.dumps(kind)},{sae},{chunk},{json.dumps(value, separators=(',', ':'))});\n"


def _round(values, digits: int = 4) -> list:
    return [round(float(v), digits) for v in values]


def write_latent_browser(run, out: Path, examples: pa.Table | None, cfg: BrowserConfig | None = None) -> Path:
    """Write the browser of a LatentsRun into `out`; `examples` (from
    example_activations) gives token-level values, else only each
    example's maximum is marked. Returns index.html."""
    cfg = cfg or BrowserConfig()
    data = out / "data"
    explained = _explanations(run)
    meta = {"run": str(run.path), "model": run.settings["model"]["id"], "actlab": VERSION,
            "n_tokens": run.manifest.get("n_tokens"), "n_texts": run.manifest.get("n_rows"),
            "has_bos": run.settings["has_bos"], "chunk": cfg.chunk, "edges": _round(HIST_EDGES, 6), "saes": []}
    for index, sae in enumerate(run.saes):
        config = run.sae_config(sae)
        link = neuronpedia_link(config.neuronpedia_id, 0)
        meta["saes"].append({"name": sae, "hook": config.hook_name, "d_sae": config.d_sae,
                             "neuronpedia": link[:-1] if link else None})
        (data / str(index)).mkdir(parents=True, exist_ok=True)
        latents = run.latents(sae).to_pandas()
        notes = explained.get(sae, {})
        listing = {"count": latents["count"].tolist(), "frequency": _round(latents["frequency"], 6),
                   "mean": _round(latents["mean"]), "max": _round(latents["max"]),
                   "explanation": [notes.get(j, {}).get("explanation") for j in range(config.d_sae)],
                   "score": [notes.get(j, {}).get("score") for j in range(config.d_sae)]}
        write_text_atomic(data / str(index) / "list.js", _script("list", index, 0, listing))
        _write_chunks(run, sae, index, examples, data / str(index), cfg, explained.get(sae, {}))
    write_text_atomic(data / "meta.js", f"var ACTLAB_META = {json.dumps(meta)};\n")
    write_text_atomic(out / "index.html", PAGE)
    return out / "index.html"


SCORES = ("score", "fuzzing_auroc", "baseline_score", "baseline_fuzzing_auroc")


def _explanations(run) -> dict[str, dict[int, dict]]:
    """Per SAE and latent: explanation, baseline, and the scores (None: not scored)."""
    path = run.path / EXPLANATIONS
    if not path.exists():
        return {}
    out: dict = defaultdict(dict)
    for row in pq.read_table(path).to_pylist():
        scores = {name: None if row.get(name) is None or row[name] != row[name] else round(float(row[name]), 3)
                  for name in SCORES}  # NaN: not scored
        out[row["sae"]][int(row["latent"])] = {"explanation": row["explanation"], "baseline": row.get("baseline"),
                                               **scores}
    return dict(out)


def _by_latent(table: pa.Table) -> dict[int, list[dict]]:
    rows: dict[int, list[dict]] = defaultdict(list)
    for row in table.to_pylist():
        rows[row["latent"]].append(row)
    return rows


def _write_chunks(run, sae: str, index: int, examples: pa.Table | None, folder: Path, cfg: BrowserConfig,
                  notes: dict) -> None:
    d_sae = run.sae_config(sae).d_sae
    tables = {name: _by_latent(run.table(name, sae)) for name in
              ("top", "intervals", "histograms", "logit_effects", "neighbours", "cofiring")}
    values: dict[tuple[int, int], tuple[list, list]] = {}
    if examples is not None:
        mine = examples.filter(pc.equal(examples.column("sae"), sae))
        for j, k, p, v in zip(*(mine.column(c).to_pylist() for c in ("latent", "window", "positions", "values"))):
            values[j, k] = (p, _round(v, 3))
    for lo in range(0, d_sae, cfg.chunk):
        chunk_latents, keys = {}, set()
        for j in range(lo, min(lo + cfg.chunk, d_sae)):
            shown = [("top", r["rank"], r) for r in tables["top"].get(j, [])[:cfg.top]]
            shown += [(f"decile {r['decile'] + 1}", r["rank"], r) for r in tables["intervals"].get(j, [])
                      if r["rank"] < cfg.per_decile]
            entries = []
            for kind, _, r in shown:
                positions, vals = values.get((j, r["window"]), ([r["position"]], [round(r["value"], 3)]))
                entries.append([kind, str(r["window"]), round(r["value"], 4), r["position"], positions, vals,
                                r["text_id"], r["start"]])
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
        windows = _window_tokens(run, sorted(keys))
        write_text_atomic(folder / f"chunk-{lo // cfg.chunk:04d}.js",
                          _script("chunk", index, lo // cfg.chunk, {"latents": chunk_latents, "windows": windows}))


def _window_tokens(run, keys: list[int]) -> dict[str, list[str]]:
    if not keys:
        return {}
    table = run.with_tokens(pa.table({"window": pa.array(np.asarray(keys, dtype=np.int64))}))
    return {str(k): tokens for k, tokens in zip(table.column("window").to_pylist(), table.column("tokens").to_pylist())}


def browser_links(browser: Path, page: Path, saes: dict) -> dict[str, str]:
    """{SAE name: link prefix} into a latent browser, relative to the page
    that links (append the latent): SAEs match by name, else by hook and
    width when one SAE of the browser has them. `saes`: name -> SAEConfig."""
    meta_file = Path(browser) / "data" / "meta.js"
    if not meta_file.is_file():
        raise ActlabError(f"{browser} is not a latent browser (no data/meta.js); write one with actlab latents report",
                          param="browser")
    meta = json.loads(meta_file.read_text().split("=", 1)[1].strip().rstrip(";"))
    index = Path(os.path.relpath(Path(browser).resolve() / "index.html", Path(page).resolve().parent)).as_posix()
    links = {}
    for name, cfg in saes.items():
        same = [i for i, s in enumerate(meta["saes"]) if s["name"] == name] or \
            [i for i, s in enumerate(meta["saes"]) if (s["hook"], s["d_sae"]) == (cfg.hook_name, cfg.d_sae)]
        if len(same) == 1:
            links[name] = f"{index}#{same[0]}/"
    return links
