"""A trait end to end (actlab.run_trait): generate with capture, judge, fit
vectors, sweep steering at the chosen layer; and the figures the trait
stages leave in a run (draw_steering, draw_monitor)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import plots
from ..generation import GenerationConfig
from ..models import Model, ModelSpec
from ..runs import RunControl
from ..runs.atomic import write_bytes_atomic
from ..storage import RunPath
from ..traits.definitions import Trait
from ..traits.fitting import vectors_run
from ..traits.judges import Judge, JudgeConfig
from ..traits.judging import judge_run
from ..traits.monitor import MonitoredText
from ..traits.run import TRAIT_SAMPLING, TraitRun, generate_trait_run
from ..traits.steering import SteerConfig, steer_sweep, sweep_summary
from ..traits.vectors import VectorsConfig, best_layers


@dataclass
class TraitPipelineConfig:
    """Every stage's settings for run_trait: generation (sampled, TRAIT_SAMPLING
    by default) with capture at `layers` (None: every block), the judge (the
    trait's own by default), the keep rule and vector fitting, and the
    steering sweep (greedy, as many new tokens as generation unless `steer`
    says)."""

    generation: GenerationConfig = TRAIT_SAMPLING  # frozen: shared safely
    layers: list[int] | None = None
    vectors: VectorsConfig = field(default_factory=VectorsConfig)
    steer: SteerConfig = field(default_factory=SteerConfig)
    judging: JudgeConfig = field(default_factory=JudgeConfig)


def run_trait(model: Model | ModelSpec | str, trait: Trait, out_dir: str | Path, judge: Judge | None = None,
              cfg: TraitPipelineConfig | None = None, control: RunControl | None = None) -> dict:
    """Every stage on one trait: generate with capture (resumable; `control`: a
    RunControl: shard_size (default TRAIT_SHARD_SIZE), overwrite, progress,
    runner="ray" with ray=RayConfig(...) for a Ray cluster), judge (`judge`,
    else cfg.judging's), vectors per layer, a steering sweep at the steering
    layer. Returns what each stage found."""
    cfg = cfg or TraitPipelineConfig()
    judge = judge or cfg.judging.make(trait, model if isinstance(model, Model) else None)
    start = time.perf_counter()
    run = generate_trait_run(model, trait, out_dir, cfg.layers, cfg=cfg.generation, control=control)
    generated = time.perf_counter()
    trait_run = TraitRun.open(run)
    scores = judge_run(run, judge, cfg.vectors)
    best = best_layers(vectors_run(run, cfg.vectors).to_pylist())["mean_diff"]
    loaded = model if isinstance(model, Model) else trait_run.model()
    steered = steer_sweep(loaded, run, judge, cfg.steer)
    draw_steering(run)
    steered_layers = sorted(set(steered.column("layer").to_pylist()))
    kept = [p for p, k in zip(trait_run.answers().column("polarity").to_pylist(), scores.column("kept").to_pylist())
            if k]
    return {"trait": trait.name, "run": str(run), "n_answers": scores.num_rows, "kept_pos": kept.count("pos"),
            "kept_neg": kept.count("neg"), "best_mean_diff": best,
            "steering_layers": steered_layers, "steering": sweep_summary(steered),
            "steering_questions": steered.num_rows // (len(cfg.steer.coeffs) * len(steered_layers)),
            "seconds_generate": round(generated - start, 1),
            "seconds_total": round(time.perf_counter() - start, 1)}


def draw_steering(run: str | Path) -> RunPath:
    """RUN/steering.png from the run's steering sweep: the mean judge score per
    coefficient, a line per layer."""
    trait_run = TraitRun.open(run)
    table = trait_run.steering()
    method = (table.schema.metadata or {}).get(b"actlab.method", b"").decode() or "steering"
    png = trait_run.path / "steering.png"
    write_bytes_atomic(png, plots.steering_sweep(sweep_summary(table), f"{trait_run.path.name}: {method}"))
    return png


def draw_monitor(run: str | Path, monitored: MonitoredText) -> RunPath:
    """RUN/monitor-layer<L>.png: a text's per-token projection (monitor_run's) as bars."""
    png = TraitRun.open(run).path / f"monitor-layer{monitored.layer}.png"
    title = f"projection on the layer-{monitored.layer} {monitored.method} vector"
    write_bytes_atomic(png, plots.token_projections(monitored.tokens, monitored.values, title))
    return png
