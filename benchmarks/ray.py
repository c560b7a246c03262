"""`actlab bench ray`: one extraction run in this process and on a local Ray
instance with 1 and 2 actors, side by side on the same texts. On a 2-core
machine Ray cannot scale; what this measures is its overhead. Start-up (Ray's
own start, the settings task, the actors loading the model) is reported apart
from the work: the span from the first shard's start to the last shard's end,
as the actors time them. On a GPU (--device cuda) the single actor holds the
GPU and two actors share it (half a GPU each); the figure that matters there
is one actor's tokens/s over the engine's alone in this process."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from actlab import datasets
from actlab.activations import extract_run
from actlab.engine import ExtractConfig
from actlab.hooks import block_hook
from actlab.inputs import Records
from actlab.models import load_model
from actlab.runs import RunControl
from actlab.runs.manifest import read_manifest
from actlab.runs.ray import RayConfig, ray_module
from actlab.version import VERSION

from .extract import console, describe_device, save_result
from .options import BenchOptions


def bench_records(n: int) -> Records:
    """n texts: the built-in categorized texts, numbered so that none repeats."""
    base = datasets.categories().texts
    return Records.of([f"{base[i % len(base)]} ({i})" for i in range(n)])


@dataclass
class RayBench:
    device: str = field(default="cpu", metadata={"help": "cpu, or cuda: one actor holds the GPU, two share it."})
    n_texts: int = field(default=2000, metadata={"help": "Texts to extract."})
    shard_size: int = field(default=250, metadata={"help": "Texts per shard (the unit Ray hands to an actor)."})


def run_ray_benchmark(bench: BenchOptions | None = None, cfg: RayBench | None = None) -> dict:
    """One extraction in this process vs on a local Ray instance with 1 and 2
    actors (Ray's overhead; on a GPU, an actor's tokens/s vs the engine's
    alone). The device is cfg's (bench.device is not used)."""
    bench, cfg = bench or BenchOptions(), cfg or RayBench()
    model_name, results_dir, readme = bench.model, bench.results_dir, bench.readme
    device, n_texts, shard_size = cfg.device, cfg.n_texts, cfg.shard_size
    ray = ray_module()
    model = load_model(model_name, device=device)
    gpus = 1 if model.device.type == "cuda" else 0
    records = bench_records(n_texts)
    extract_cfg = ExtractConfig([block_hook(model.n_layers // 2)], "mean")
    console.print(f"[bold]bench ray[/bold]: {model_name}, {n_texts} texts, shards of {shard_size}, "
                  f"hook {extract_cfg.hooks}")
    assert model.weight_hash  # computed once, like loading the model
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        path = extract_run(model, records, Path(scratch) / "local", extract_cfg,
                           control=RunControl(shard_size=shard_size))
        rows["single_process"] = {"seconds": round(time.perf_counter() - start, 2),
                                  "tokens_per_s": read_manifest(path)["timings"]["session_0"]["tokens_per_s"]}
        start = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        try:
            for actors in (1, 2):
                start = time.perf_counter()
                path = extract_run(model_name, records, Path(scratch) / f"ray{actors}", extract_cfg,
                                   control=RunControl(shard_size=shard_size, runner="ray",
                                                      ray=RayConfig(actors=actors, cpus_per_actor=2 / actors,
                                                                    gpus_per_actor=gpus / actors)))
                total = time.perf_counter() - start
                session = read_manifest(path)["timings"]["session_0"]
                work = max(actor["seconds"] for actor in session["actors"].values())
                rows[f"ray_{actors}_actor{'s' if actors > 1 else ''}"] = {
                    "seconds": round(total, 2), "work_seconds": round(work, 2),
                    "startup_seconds": round(total - work, 2), "tokens_per_s": session["tokens_per_s"],
                    "per_actor_tokens_per_s": [a["tokens_per_s"] for a in session["actors"].values()]}
        finally:
            ray.shutdown()
    single = rows["single_process"]["seconds"]
    result = {"benchmark": "ray", "actlab_version": VERSION, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "device": describe_device(model.device), "model": model_name, "n_texts": n_texts,
              "shard_size": shard_size, "ray_init_seconds": round(ray_start, 2), "methods": rows,
              "ray_1_actor_work_over_single_process": round(rows["ray_1_actor"]["work_seconds"] / single, 3),
              "ray_1_actor_tokens_per_s_over_engine": round(rows["ray_1_actor"]["per_actor_tokens_per_s"][0]
                                                            / rows["single_process"]["tokens_per_s"], 3)}
    for name, row in rows.items():
        console.print(f"  {name:<16} {row}")
    save_result(result, model.device, results_dir, readme, markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    lines = [f"Device: {result['device']}; {result['model']}; {result['n_texts']} texts in shards of "
             f"{result['shard_size']}; mean pooling at one hook; {result['date'][:10]}.", "",
             "| runner | seconds | of which start-up | work |", "|---|---:|---:|---:|"]
    for name, row in result["methods"].items():
        lines.append(f"| {name} | {row['seconds']:.1f} | {row.get('startup_seconds', 0):.1f} | "
                     f"{row.get('work_seconds', row['seconds']):.1f} |")
    lines += ["", f"Ray itself started in {result['ray_init_seconds']:.1f} s. With one actor the work took "
              f"{result['ray_1_actor_work_over_single_process']:.2f}x the single-process run; the actor's own "
              f"tokens/s were {result['ray_1_actor_tokens_per_s_over_engine']:.2f}x the engine's alone."]
    return "\n".join(lines)
