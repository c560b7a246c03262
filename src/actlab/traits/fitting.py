"""Fitting a judged trait run's vectors per layer and method, with their
held-out evaluation (RUN/vectors/, RUN/evaluation.parquet), and choosing
layers from that evaluation: the best per method, and the layer to steer."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import save_file

from ..errors import ActlabError
from ..runs.atomic import atomic_path, write_json_atomic, write_parquet_atomic
from ..storage import run_path
from .run import TraitRun
from .vectors import METHODS, VectorsConfig, best_layers, fit_vectors

STEERING_MIN_AUROC = 0.9


def vectors_run(run: str | Path, cfg: VectorsConfig | None = None, methods: Sequence[str] = METHODS) -> pa.Table:
    """Vectors per layer and method from the kept answers, evaluated on held-out pairs."""
    cfg = cfg or VectorsConfig()
    trait_run = TraitRun.open(run)
    run = trait_run.path
    answers, scores = trait_run.answers(), trait_run.scores()
    kept = scores.column("kept").to_numpy(zero_copy_only=False)
    empty = answers.column("n_answer_tokens").to_numpy() == 0
    keep = kept & ~empty
    all_polarity = np.asarray(answers.column("polarity").to_pylist())
    _check_both_kept(all_polarity, keep, scores.column("decision").to_pylist(), run)
    polarity = all_polarity[keep]
    pairs = answers.column("pair").to_numpy()[keep]
    rows, vectors = [], {m: {} for m in methods}
    for layer, x in trait_run.activations(cfg.pooling).items():
        for method, (v, ev) in fit_vectors(x[keep], polarity, pairs, cfg.held_out, cfg.seed, methods).items():
            vectors[method][f"layer_{layer}"] = torch.from_numpy(v)
            rows.append({"layer": layer, "method": method, **asdict(ev)})
    table = pa.Table.from_pylist(rows)
    write_parquet_atomic(run / "evaluation.parquet", table)
    folder = run / "vectors"
    folder.mkdir(exist_ok=True)
    for method, tensors in vectors.items():
        if tensors:
            with atomic_path(folder / f"{method}.safetensors") as tmp:
                save_file(tensors, tmp)
    best = {method: row["layer"] for method, row in best_layers(rows).items()}
    write_json_atomic(folder / "metadata.json", {
        "trait": trait_run.trait.name, "model": trait_run.settings["model"],
        "pooling": cfg.pooling, "held_out": cfg.held_out, "seed": cfg.seed,
        "n_kept_pos": int((polarity == "pos").sum()),
        "n_kept_neg": int((polarity == "neg").sum()), "best_layer": best,
        "layers": "layer L is block L's output: blocks.L.hook_resid_post, HF hidden_states[L + 1]",
        "direction": "from neg to pos; unnormalised (mean_diff keeps the activation scale, probe and pca_diff are "
                     "directions)"})
    return table


def _check_both_kept(polarity: np.ndarray, keep: np.ndarray, decisions: list[str], run: Path) -> None:
    for side in ("pos", "neg"):
        mine = polarity == side
        if mine.any() and not (keep & mine).any():
            reason, count = Counter(d for d, m in zip(decisions, mine) if m).most_common(1)[0]
            raise ActlabError(f"the judge kept no {side} answers ({count} of {int(mine.sum())}: '{reason}'; every "
                              f"decision is in {run / 'scores.parquet'}); use another judge or loosen --pos-min / "
                              "--neg-max")


def best_layer(run: str | Path, method: str = "mean_diff") -> int:
    path = run_path(run) / "vectors" / "metadata.json"
    if not path.exists():
        raise ActlabError(f"no vectors in {run}; run `actlab traits vectors` first")
    best = json.loads(path.read_text())["best_layer"]
    if method not in best:
        raise ActlabError(f"no {method} vectors in {run}; have {', '.join(best)}", param="method")
    return int(best[method])


def steering_layer(run: str | Path, method: str = "mean_diff", min_auroc: float = STEERING_MIN_AUROC) -> int:
    """Default layer to steer: of the layers whose vector separates held-out
    answers (AUROC >= min_auroc), the one nearest the middle of the captured
    range; middle layers steered the default model far better than the
    detection-best last layers (measured: French score 0 -> 92 at block 15,
    0 -> 27 at block 29, coeff 1). Falls back to best_layer."""
    trait_run = TraitRun.open(run)
    rows = [r for r in trait_run.evaluation().to_pylist() if r["method"] == method and r["auroc"] >= min_auroc]
    if not rows:
        return best_layer(run, method)
    layers = trait_run.settings["layers"]
    middle = (min(layers) + max(layers)) / 2
    return min((r["layer"] for r in rows), key=lambda layer: (abs(layer - middle), layer))
