"""A trait end to end (actlab.run_trait): generate with capture, judge, fit
vectors, sweep steering at the chosen layer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..generation import GenerationConfig
from ..models import Model, ModelSpec
from ..traits.definitions import Trait
from ..traits.fitting import vectors_run
from ..traits.judges import Judge, judge_for
from ..traits.judging import judge_run
from ..traits.runs import TRAIT_SAMPLING, TRAIT_SHARD_SIZE, TraitRun, generate_run
from ..traits.steering import SteerConfig, steer_sweep, sweep_summary
from ..traits.vectors import VectorsConfig, best_layers


@dataclass
class TraitPipelineConfig:
    """Every stage's settings for run_trait: generation (sampled, TRAIT_SAMPLING
    by default) with capture at `layers` (None: every block), the keep rule
    and vector fitting, and the steering sweep (greedy; None: the default
    sweep with as many new tokens as generation)."""

    generation: GenerationConfig = field(default_factory=lambda: TRAIT_SAMPLING)
    layers: list[int] | None = None
    vectors: VectorsConfig = field(default_factory=VectorsConfig)
    steer: SteerConfig | None = None
    shard_size: int = TRAIT_SHARD_SIZE

    def steering(self) -> SteerConfig:
        return self.steer or SteerConfig(max_new_tokens=self.generation.max_new_tokens)


def run_trait(model: Model | ModelSpec | str, trait: Trait, out_dir: str | Path, judge: Judge | None = None,
              cfg: TraitPipelineConfig | None = None, **control) -> dict:
    """Every stage on one trait: generate with capture (resumable; `control`:
    overwrite, progress, runner="ray" with ray=RayConfig(...) for a Ray
    cluster), judge (the trait's own judge by default), vectors per layer, a
    steering sweep at the steering layer. Returns what each stage found."""
    cfg = cfg or TraitPipelineConfig()
    judge = judge or judge_for(trait)
    start = time.perf_counter()
    run = generate_run(model, trait, out_dir, cfg.layers, cfg=cfg.generation, shard_size=cfg.shard_size, **control)
    generated = time.perf_counter()
    trait_run = TraitRun(run)
    scores = judge_run(run, judge, cfg.vectors)
    best = best_layers(vectors_run(run, cfg.vectors).to_pylist())["mean_diff"]
    steer = cfg.steering()
    loaded = model if isinstance(model, Model) else trait_run.model()
    steered = steer_sweep(loaded, run, judge, steer)
    steered_layers = sorted(set(steered.column("layer").to_pylist()))
    kept = [p for p, k in zip(trait_run.answers().column("polarity").to_pylist(), scores.column("kept").to_pylist())
            if k]
    return {"trait": trait.name, "run": str(run), "n_answers": scores.num_rows, "kept_pos": kept.count("pos"),
            "kept_neg": kept.count("neg"), "best_mean_diff": best,
            "steering_layers": steered_layers, "steering": sweep_summary(steered),
            "steering_questions": steered.num_rows // (len(steer.coeffs) * len(steered_layers)),
            "seconds_generate": round(generated - start, 1),
            "seconds_total": round(time.perf_counter() - start, 1)}
