"""`actlab bench capacity`: what a large feature run costs, from measured figures.

Measured here: the sparse feature store's size, from per-token and pooled
features runs of the default model with its default SAEs over the built-in
texts (bytes of the Parquet files per token, per text and per stored
nonzero). Read from the GPU benchmark results (benchmarks/results): the
engine's tokens/s per GPU for the default model's architecture
(extract-cuda.json) and for Gemma-2-2B's (extract-cuda-gemma-2-2b.json).
Projected: a 1B-token feature run with three SAEs on 1, 8 and 64 GPUs,
GPU-hours, wall-clock hours and storage. What is assumed rather than
measured is written into the result beside each figure.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actlab import datasets
from actlab.engine import ExtractConfig
from actlab.features.run import features_run
from actlab.models import load_model
from actlab.runs import RunControl
from actlab.runs.manifest import read_manifest
from actlab.saes import default_saes
from actlab.version import VERSION

from .extract import console, describe_device, save_result
from .options import BenchOptions

TOKENS = 1_000_000_000
GPUS = (1, 8, 64)
SAES = 3
SCALING = 0.9  # per-GPU throughput under Ray vs the engine alone: the target, measured on CPU only
GEMMA = {"d_model": 2304, "params": 2.6e9, "d_sae": 16384, "l0": 70}  # Gemma Scope 16k SAEs, L0 about 70


def store_bytes(run: Path, prefixes: tuple[str, ...] = ("shard", "texts", "stats")) -> dict[str, int]:
    """Bytes of a run's files by kind (shard: the features; texts: texts and token strings; stats)."""
    return {prefix: sum(p.stat().st_size for p in run.glob(f"{prefix}-*.parquet")) for prefix in prefixes}


def measure_store(model_name: str, n_texts: int, scratch: Path) -> dict:
    """Bytes per token and per nonzero of per-token and pooled features runs."""
    model = load_model(model_name, device="cpu")
    saes = default_saes(model_name)
    texts = datasets.categories()
    records = texts.select(list(range(min(n_texts, len(texts)))))
    rows = {}
    for pooling in ("all", "mean"):
        path = features_run(model, records, saes, scratch / pooling, ExtractConfig(pooling=pooling),
                            control=RunControl(shard_size=64))
        manifest, sizes = read_manifest(path), store_bytes(path)
        tokens = manifest["timings"]["session_0"]["tokens"]
        nonzeros = manifest["n_rows"]
        rows[pooling] = {"texts": len(records), "tokens": tokens, "nonzeros": nonzeros, "bytes": sizes,
                         "nonzeros_per_row_per_sae": round(nonzeros / (tokens if pooling == "all" else len(records))
                                                           / len(saes), 2),
                         "feature_bytes_per_nonzero": round(sizes["shard"] / nonzeros, 2)}
    per_token = rows["all"]
    per_token["feature_bytes_per_token_per_sae"] = round(per_token["bytes"]["shard"] / per_token["tokens"] / len(saes),
                                                         1)
    per_token["text_bytes_per_token"] = round(per_token["bytes"]["texts"] / per_token["tokens"], 1)
    rows["mean"]["feature_bytes_per_text_per_sae"] = round(rows["mean"]["bytes"]["shard"] / len(records) / len(saes),
                                                           1)
    rows["saes"] = {name: {"d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture} for name, sae in saes.items()}
    return rows


def gpu_throughput(results_dir: Path) -> dict[str, dict]:
    """tokens/s of the engine per GPU, from the GPU extraction benchmarks that exist."""
    found = {}
    for name, file in (("default model architecture", "extract-cuda.json"),
                       ("Gemma-2-2B architecture", "extract-cuda-gemma-2-2b.json")):
        path = results_dir / file
        if path.is_file():
            result = json.loads(path.read_text())
            found[name] = {"tokens_per_s": result["methods"]["engine"]["tokens_per_s"], "device": result["device"],
                           "dtype": result["dtype"], "source": file}
    return found


def sae_share() -> float:
    """The Gemma SAEs' encoder FLOPs per token over the forward pass's (2 x d x d_sae each vs 2 x params)."""
    return SAES * GEMMA["d_model"] * GEMMA["d_sae"] / GEMMA["params"]


def project(throughput: dict[str, dict], store: dict) -> list[dict]:
    """A 1B-token per-token feature run with SAES SAEs, per model and GPU count."""
    bytes_per_nonzero = store["all"]["feature_bytes_per_nonzero"]
    rows = []
    for model, figures in throughput.items():
        gemma = model.startswith("Gemma")
        tokens_per_s = figures["tokens_per_s"] / (1 + sae_share()) if gemma else figures["tokens_per_s"]
        l0 = GEMMA["l0"] if gemma else store["all"]["nonzeros_per_row_per_sae"]
        gpu_hours = TOKENS / tokens_per_s / 3600
        for gpus in GPUS:
            rows.append({"model": model, "gpus": gpus, "tokens_per_s_per_gpu": round(tokens_per_s),
                         "gpu_hours": round(gpu_hours / SCALING, 1),
                         "wall_hours": round(gpu_hours / SCALING / gpus, 2),
                         "l0_per_sae": l0, "feature_store_tb": round(TOKENS * SAES * l0 * bytes_per_nonzero / 1e12, 2),
                         "text_store_gb": round(TOKENS * store["all"]["text_bytes_per_token"] / 1e9, 1)})
    return rows


@dataclass
class CapacityBench:
    n_texts: int = field(default=256, metadata={"help": "Built-in texts in the measured features runs."})


def run_capacity_benchmark(bench: BenchOptions | None = None, cfg: CapacityBench | None = None) -> dict:
    """The capacity plan: the sparse store's bytes per token (measured here,
    on the CPU: bench.device is not used) and a 1B-token feature run's
    GPU-hours and storage on 1, 8 and 64 GPUs (from the GPU results)."""
    bench, cfg = bench or BenchOptions(), cfg or CapacityBench()
    model_name, results_dir, readme, n_texts = bench.model, bench.results_dir, bench.readme, cfg.n_texts
    console.print(f"[bold]bench capacity[/bold]: {model_name} with its default SAEs over {n_texts} texts")
    with tempfile.TemporaryDirectory() as scratch:
        store = measure_store(model_name, n_texts, Path(scratch))
    throughput = gpu_throughput(results_dir or Path("benchmarks/results"))
    cpu = torch.device("cpu")
    result = {"benchmark": "capacity", "actlab_version": VERSION,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": describe_device(cpu),
              "model": model_name, "store": store,
              "gpu_throughput": throughput, "plan": project(throughput, store),
              "assumptions": {
                  "scaling": f"{SCALING} of the engine's tokens/s per GPU under Ray (the target; measured on CPU only)",
                  "gemma_saes": f"{SAES} SAEs of {GEMMA['d_sae']} latents at L0 {GEMMA['l0']} (Gemma Scope-like); "
                                f"their encoders add {sae_share():.1%} to the forward pass's FLOPs",
                  "bytes_per_nonzero": "the bytes per nonzero measured on the default model's SAEs, for every model",
                  "startup": "Ray's start-up (seconds to a few minutes per run: actors loading the model) left out",
                  "dtype": "the GPU figures are float32; bfloat16 is faster (not measured here)"}}
    console.print(json.dumps(result["plan"], indent=1))
    save_result(result, cpu, results_dir, readme, markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    store = result["store"]
    per_token, pooled = store["all"], store["mean"]
    lines = [f"Measured on {result['device']}, {result['date'][:10]}: a per-token features run of {result['model']} "
             f"with its {len(store['saes'])} default SAEs ({per_token['tokens']} tokens, "
             f"{per_token['nonzeros_per_row_per_sae']} nonzeros per token per SAE) stores "
             f"**{per_token['feature_bytes_per_nonzero']} bytes per nonzero**, "
             f"{per_token['feature_bytes_per_token_per_sae']} bytes per token per SAE, plus "
             f"{per_token['text_bytes_per_token']} bytes per token of texts and token strings; a mean-pooled run "
             f"{pooled['feature_bytes_per_text_per_sae']} bytes per text per SAE.", "",
             f"A 1B-token per-token feature run with {SAES} SAEs:", "",
             "| model | GPUs | tokens/s per GPU | GPU-hours | wall-clock hours | L0 per SAE | features (TB) | "
             "texts (GB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["plan"]:
        lines.append(f"| {row['model']} | {row['gpus']} | {row['tokens_per_s_per_gpu']:,} | {row['gpu_hours']} | "
                     f"{row['wall_hours']} | {row['l0_per_sae']} | {row['feature_store_tb']} | "
                     f"{row['text_store_gb']} |")
    lines += ["", "Assumed, not measured: " + "; ".join(result["assumptions"].values()) + "."]
    return "\n".join(lines)
