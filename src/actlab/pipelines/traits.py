"""A trait end to end (actlab.run_trait): generate with capture, judge, fit
vectors, sweep steering at the chosen layer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from ..engine import Progress
from ..models import Model
from ..traits.definitions import Trait
from ..traits.fitting import steering_layer, vectors_run
from ..traits.generation import GenerationConfig
from ..traits.judges import Judge, judge_for
from ..traits.judging import judge_run
from ..traits.runs import TraitRun, generate_run
from ..traits.steering import steer_sweep, sweep_summary
from ..traits.vectors import best_layers


def run_trait(model: Model, trait: Trait, out_dir: str | Path, judge: Judge | None = None,
              coeffs: Sequence[float] = (-2, -1, 0, 1, 2), layers: Sequence[int] | None = None,
              cfg: GenerationConfig | None = None, held_out: float = 0.2, overwrite: bool = False,
              progress: Progress | None = None, runner: str = "local", ray=None) -> dict:
    """Every stage on one trait: generate with capture (`layers`, default
    every block; `cfg`, default sampled as in generate_run; runner="ray": on
    a Ray cluster), judge (the trait's own judge by default), vectors per
    layer, a steering sweep at the default steering layer (greedy, as many
    new tokens). Returns what each stage found."""
    judge = judge or judge_for(trait)
    start = time.perf_counter()
    run = generate_run(model, trait, out_dir, layers, cfg=cfg, overwrite=overwrite, progress=progress,
                       runner=runner, ray=ray)
    generated = time.perf_counter()
    scores = judge_run(run, judge)
    best = best_layers(vectors_run(run, held_out=held_out).to_pylist())["mean_diff"]
    layer = steering_layer(run)
    steer_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens if cfg else 48)
    steered = steer_sweep(model, run, layer, coeffs, judge, cfg=steer_cfg)
    sweep = sweep_summary(steered)
    kept = [p for p, k in zip(TraitRun(run).answers().column("polarity").to_pylist(), scores.column("kept").to_pylist())
            if k]
    return {"trait": trait.name, "run": str(run), "n_answers": scores.num_rows, "kept_pos": kept.count("pos"),
            "kept_neg": kept.count("neg"), "best_mean_diff": best, "steering_layer": layer, "steering": sweep,
            "steering_questions": steered.num_rows // len(coeffs),
            "seconds_generate": round(generated - start, 1),
            "seconds_total": round(time.perf_counter() - start, 1)}
