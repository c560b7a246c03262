"""One batch-size sweep point in a fresh process, so that its memory belongs to
that configuration alone. The peak is the largest resident set sampled during
the work (model included); the process high-water mark would report the
model's loading instead. Prints one JSON line: seconds and peak RSS in bytes.

python -m benchmarks.sweep_worker extract MODEL DEVICE BATCH_SIZE|auto N_TEXTS HOOK [HOOK ...]
python -m benchmarks.sweep_worker traits MODEL DEVICE BATCH_SIZE N_PROMPTS MAX_NEW_TOKENS LAYER [LAYER ...]
python -m benchmarks.sweep_worker contrast MODEL DEVICE BATCH_SIZE|auto N_PAIRS
python -m benchmarks.sweep_worker latents MODEL DEVICE auto N_TEXTS D_SAE K CONTEXT
"""

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from actlab.contrasts.config import ContrastConfig
from actlab.contrasts.pairs import load_pairs
from actlab.contrasts.run import contrast_run
from actlab.datasets import length_mix
from actlab.engine import ExtractConfig
from actlab.hooks import block_hook
from actlab.latents import LatentsConfig, latents_run
from actlab.models import load_model
from actlab.runs import RunControl
from actlab.traits import GenerationConfig, generate

from .features import random_topk_sae
from .traits import bench_prompts

LATENTS_MEMORY_SHARD = 32  # texts per shard of the latents memory points


def measure(fn) -> tuple[float, int]:
    """(seconds, peak resident set sampled every 5 ms) of fn()."""
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, max(peak[0], process.memory_info().rss)  # work shorter than one sampling period too


def main() -> None:
    kind, model_name, device, batch, *rest = sys.argv[1:]
    # latents: torch's matmul, so that every process holds the same weights (auto may prepack other
    # layers in each process, by timing) and peak memory compares corpus sizes alone
    model = load_model(model_name, device=device, matmul="torch" if kind == "latents" else "auto")
    batch_size = None if batch == "auto" else int(batch)
    if kind == "extract":
        n_texts, *hooks = rest
        texts = length_mix(model.tokenizer, int(n_texts))
        model.extract(texts[:4], hooks, batch_size=batch_size, progress=False)  # warm-up
        seconds, peak = measure(lambda: model.extract(texts, hooks, batch_size=batch_size, progress=False))
    elif kind == "contrast":
        n_pairs = int(rest[0])
        pairs = load_pairs("builtin")
        pairs = pairs.select(np.linspace(0, len(pairs) - 1, min(n_pairs, len(pairs))).astype(int).tolist())
        cfg, batching = ContrastConfig(shard_size=len(pairs)), ExtractConfig(slots=batch_size)
        with tempfile.TemporaryDirectory() as scratch:
            contrast_run(model, pairs.select(range(4)), None, Path(scratch) / "warm", cfg, batching)  # warm-up
            seconds, peak = measure(lambda: contrast_run(model, pairs, None, Path(scratch) / "run", cfg, batching))
    elif kind == "latents":
        n_texts, d_sae, k, context = (int(x) for x in rest)
        layer = model.n_layers // 2
        saes = {f"L{layer}": random_topk_sae(block_hook(layer), model.d_model, d_sae, k, seed=layer)}
        # logit effects and neighbours read only the weights (their time is the benchmark's dashboard figure)
        texts, cfg = length_mix(model.tokenizer, n_texts), LatentsConfig(context=context, logit_tokens=0, neighbours=0)
        with tempfile.TemporaryDirectory() as scratch:
            latents_run(model, texts[:4], saes, Path(scratch) / "warm", cfg)  # warm-up: effects, allocator
            baseline = psutil.Process().memory_info().rss
            # a fixed shard size (the 1x corpus): a shard's windows are held while it runs, whatever the corpus
            seconds, peak = measure(lambda: latents_run(model, texts, saes, Path(scratch) / "run", cfg,
                                                        control=RunControl(shard_size=LATENTS_MEMORY_SHARD)))
        print(json.dumps({"seconds": seconds, "peak_memory_bytes": peak, "above_warm_bytes": peak - baseline}))
        return
    else:
        n_prompts, max_new, *layers = rest
        prompts, cfg = bench_prompts(model, int(n_prompts)), GenerationConfig(int(max_new), slots=batch_size)
        layers = [int(x) for x in layers]
        generate(model, prompts[:2], layers, cfg=cfg)  # warm-up
        seconds, peak = measure(lambda: generate(model, prompts, layers, cfg=cfg))
    print(json.dumps({"seconds": seconds, "peak_memory_bytes": peak}))


if __name__ == "__main__":
    main()
