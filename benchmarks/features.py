"""`actlab bench features`: SAEs at several depths in one pass against one SAE
at the deepest of them, and the sparse store's size against dense features."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actlab.datasets import length_mix
from actlab.features import features_run
from actlab.hooks import block_hook
from actlab.inputs import Records
from actlab.models import load_model
from actlab.saes import SAE, SAEConfig
from actlab.version import VERSION

from .extract import console, describe_device, save_result, timed
from .options import BenchOptions


def random_topk_sae(hook: str, d_in: int, d_sae: int, k: int, seed: int) -> SAE:
    """Timing needs the shapes and the sparsity of a real SAE, not its weights."""
    g = torch.Generator().manual_seed(seed)
    weights = {"W_enc": torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5,
               "b_enc": torch.zeros(d_sae), "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae ** 0.5,
               "b_dec": torch.zeros(d_in)}
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", hook_name=hook, k=k, prepend_bos=False)
    return SAE(cfg, weights)


@dataclass
class FeaturesBench:
    n_texts: int = field(default=256, metadata={"help": "Texts in the length mix (20-150 tokens)."})
    d_sae: int = field(default=16384, metadata={"help": "Latents per SAE."})
    k: int = field(default=64, metadata={"help": "Active latents per token."})


def run_features_benchmark(bench: BenchOptions | None = None, cfg: FeaturesBench | None = None,
                           repeats: int = 2) -> dict:
    """Four SAEs at four depths in one pass vs one SAE at the deepest; the sparse store's size."""
    bench, cfg = bench or BenchOptions(), cfg or FeaturesBench()
    model_name, device, results_dir, readme = bench.model, bench.device, bench.results_dir, bench.readme
    n_texts, d_sae, k = cfg.n_texts, cfg.d_sae, cfg.k
    model = load_model(model_name, device=device)
    texts = length_mix(model.tokenizer, n_texts)
    n = model.n_layers
    layers = sorted({min(round(n * f), n - 1) for f in (0.2, 0.4, 0.6, 0.8)})
    saes = {f"L{layer}": random_topk_sae(block_hook(layer), model.d_model, d_sae, k, layer)
            for layer in layers}
    deepest = {f"L{layers[-1]}": saes[f"L{layers[-1]}"]}
    console.print(f"[bold]bench features[/bold]: {model_name} on {model.device}, {n_texts} texts, "
                  f"{len(saes)} TopK SAEs ({d_sae} latents, k={k}) at layers {layers}")
    model.features(texts[:8], saes)  # warm-up
    best = {"one_sae": float("inf"), "all_saes": float("inf")}
    for _ in range(repeats):  # alternate, best of `repeats`
        for name, chosen in (("one_sae", deepest), ("all_saes", saes)):
            _, seconds, _ = timed(lambda: model.features(texts, chosen), model.device)
            best[name] = min(best[name], seconds)
    with tempfile.TemporaryDirectory() as folder:
        records = Records.of(texts)
        run = features_run(model, records, saes, Path(folder) / "run")
        sparse_bytes = sum(f.stat().st_size for f in run.glob("shard-*.parquet"))
    dense_bytes = n_texts * d_sae * 4 * len(saes)
    result = {
        "benchmark": "features", "actlab_version": VERSION,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": describe_device(model.device),
        "model": model_name, "n_texts": n_texts, "layers": layers, "d_sae": d_sae, "k": k,
        "seconds": {k_: round(v, 3) for k_, v in best.items()},
        "cost_ratio_all_vs_one": round(best["all_saes"] / best["one_sae"], 3),
        "sparse_store_bytes": sparse_bytes, "dense_bytes": dense_bytes,
        "sparse_fraction_of_dense": round(sparse_bytes / dense_bytes, 4),
    }
    console.print(f"  one SAE (layer {layers[-1]}): {best['one_sae']:.2f}s; {len(saes)} SAEs: "
                  f"{best['all_saes']:.2f}s -> {result['cost_ratio_all_vs_one']:.2f}x")
    console.print(f"  sparse store {sparse_bytes / 2**20:.2f} MiB = "
                  f"{result['sparse_fraction_of_dense']:.1%} of dense float32")
    save_result(result, model.device, results_dir, readme, markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    return "\n".join([
        f"Device: {result['device']}; {result['model']}; {result['n_texts']} texts; TopK SAEs with "
        f"{result['d_sae']} latents, k={result['k']}, at layers {result['layers']}; last-token pooling; "
        f"{result['date'][:10]}.", "",
        "| features pass | seconds |", "|---|---:|",
        f"| one SAE (layer {result['layers'][-1]}) | {result['seconds']['one_sae']:.2f} |",
        f"| {len(result['layers'])} SAEs, one pass | {result['seconds']['all_saes']:.2f} |", "",
        f"{len(result['layers'])} SAEs cost {result['cost_ratio_all_vs_one']:.2f}x one SAE. Sparse store: "
        f"{result['sparse_store_bytes'] / 2**20:.2f} MiB, {result['sparse_fraction_of_dense']:.1%} of the "
        f"{result['dense_bytes'] / 2**20:.0f} MiB dense float32 features."])
