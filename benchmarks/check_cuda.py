"""Checks of the CUDA paths that CI (CPU only) cannot run:

    python -m benchmarks.check_cuda MODEL_DIR   (from the repository root) [--out benchmarks/results/cuda-check.json]

MODEL_DIR is a model folder. When it holds a config and a tokenizer but no
weights, a copy with random weights is saved first and loaded through
`load_model` (so the real `from_pretrained` path runs); speed and exactness do
not depend on the weights. Checked on the GPU, float32:

- batched == one text at a time, for every pooling and both padding sides;
- CUDA == CPU on the same weights;
- a real out-of-memory (the allocator capped a little above the model) is
  split and the run goes on, with the same activations and the same SAE
  statistics as one text at a time;
- features in the pass on CUDA == on CPU;
- bfloat16 loading runs, and how far it is from float32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import actlab
import actlab.engine
from actlab.datasets import length_mix
from benchmarks.extract import describe_device
from benchmarks.features import random_topk_sae

POOLINGS = ["last", "mean", "first:3", "last:2", "all"]


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over rows of |a - b|_inf / |b|_inf."""
    a, b = a.double(), b.double()
    return float(((a - b).abs().amax(-1) / b.abs().amax(-1).clamp_min(1e-30)).max())


def with_weights(model_dir: Path, scratch: Path) -> Path:
    if any(model_dir.glob("*.safetensors")) or any(model_dir.glob("*.bin")):
        return model_dir
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    out = scratch / f"{model_dir.name}-random-init"
    model.save_pretrained(out)
    for f in model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def check_batched_equals_one_at_a_time(model, texts, hooks) -> dict:
    worst = {}
    for pooling in POOLINGS:
        for side in ("left", "right"):
            batched = model.extract(texts, hooks, pooling=pooling, padding_side=side, progress=False)
            single = model.extract(texts, hooks, pooling=pooling, batch_size=1, progress=False)
            worst[f"{pooling}/{side}"] = max(rel_error(batched[h], single[h]) for h in hooks)
    return worst


def check_out_of_memory_split(model, texts, hooks, saes) -> dict:
    """Cap the allocator a little above what is in use, then ask for one batch of everything."""
    expected = model.extract(texts, hooks, batch_size=1, progress=False)
    expected_features = model.features(texts, saes, batch_size=1, keep_dense=True, progress=False)
    device = model.device
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.empty_cache()
    cap = torch.cuda.memory_allocated(device) + 300 * 2**20
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    try:
        acts = model.extract(texts, hooks, max_batch_tokens=10**8, progress=False)
        feats = model.features(texts, saes, max_batch_tokens=10**8, keep_dense=True, progress=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {
        "cap_mib": round(cap / 2**20),
        "oom_splits_extract": acts.stats.oom_splits,
        "oom_splits_features": feats.stats.oom_splits,
        "max_rel_error_extract": max(rel_error(acts[h], expected[h]) for h in hooks),
        "max_rel_error_features": max(rel_error(feats.dense(n), expected_features.dense(n)) for n in feats.names),
        "stats_equal": all(torch.equal(feats.latent_stats[n].count, expected_features.latent_stats[n].count)
                           and len(feats.sparse[n].values) == len(expected_features.sparse[n].values)
                           for n in feats.names),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cuda-check.json"))
    parser.add_argument("--n-texts", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this script checks the CUDA paths")
    with tempfile.TemporaryDirectory() as scratch:
        path = with_weights(args.model_dir, Path(scratch))
        gpu = actlab.load_model(str(path), device="cuda")
        cpu = actlab.load_model(str(path), device="cpu")
        bf16 = actlab.load_model(str(path), device="cuda", dtype="bfloat16")
    texts = length_mix(gpu.tokenizer, args.n_texts)
    n = gpu.n_layers
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in (n // 4, n // 2, (3 * n) // 4)]
    saes = {f"L{i}": random_topk_sae(h, gpu.d_model, 4096, 32, seed=i) for i, h in enumerate(hooks)}
    started = time.perf_counter()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": describe_device(gpu.device),
              "torch": torch.__version__, "model": args.model_dir.name, "n_texts": len(texts), "hooks": hooks,
              "token_budget_auto": actlab.engine.auto_token_budget(gpu.device, gpu.d_model)}
    result["batched_vs_one_at_a_time"] = check_batched_equals_one_at_a_time(gpu, texts[:64], hooks)
    on_gpu = gpu.extract(texts, hooks, progress=False)
    on_cpu = cpu.extract(texts, hooks, progress=False)
    result["cuda_vs_cpu"] = max(rel_error(on_gpu[h], on_cpu[h]) for h in hooks)
    gpu_feats = gpu.features(texts, saes, keep_dense=True, progress=False)
    cpu_feats = cpu.features(texts, {n_: s for n_, s in saes.items()}, keep_dense=True, progress=False)
    result["features_cuda_vs_cpu"] = max(rel_error(gpu_feats.dense(n_), cpu_feats.dense(n_)) for n_ in saes)
    bf16_acts = bf16.extract(texts, hooks, progress=False)
    result["bfloat16_vs_float32"] = max(rel_error(bf16_acts[h], on_gpu[h]) for h in hooks)
    result["out_of_memory_split"] = check_out_of_memory_split(gpu, texts, hooks, saes)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
