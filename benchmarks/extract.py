"""`actlab bench extract`: the one-text-at-a-time baseline loop, the engine, the bare
stopped forward pass and peer libraries on the same texts and hooks, measured
side by side in one process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from actlab.datasets import length_mix
from actlab.engine import StopForward, auto_token_budget, padded_batch, plan_batches
from actlab.engine.linears import plain_linears
from actlab.engine.machine import describe_cpu
from actlab.hooks import block_hook, capture
from actlab.models import Model, load_model
from actlab.pooling import parse_pooling
from actlab.runs.atomic import write_text_atomic
from actlab.tokens import tokenize
from actlab.version import VERSION

from . import peers, worker_env
from .options import BenchOptions, compute_threads

console = Console(stderr=True)  # benchmarks report as they go

PEER_BATCH = 32
SWEEP = (1, 4, 8, 16, 32, None)  # None: the engine's token budget


def bench_layers(model: Model) -> list[int]:
    """Three depths, n/4, n/2, 3n/4, kept below the last block, whose HF hidden
    state may carry the final norm and so is no baseline for its output."""
    n = model.n_layers
    return sorted({min(depth, n - 2) for depth in (n // 4, n // 2, (3 * n) // 4)})


def baseline_loop(model: Model, texts, layers) -> dict[int, torch.Tensor]:
    """Seed baseline: one text per forward, whole model with LM head,
    output_hidden_states (hidden_states[L + 1] is block L's output)."""
    out = {layer: [] for layer in layers}
    with torch.no_grad():
        for text in texts:
            enc = model.tokenizer(text, return_tensors="pt").to(model.device)
            hidden = model.hf_model(**enc, output_hidden_states=True).hidden_states
            for layer in layers:
                out[layer].append(hidden[layer + 1][0, -1].float().cpu())
    return {layer: torch.stack(v) for layer, v in out.items()}


def bare_forward(model: Model, texts, layers) -> Callable[[], None]:
    """HF's bare forward: the engine's own batches through the base model as
    Hugging Face runs it (every linear layer plain, whatever matrix path the
    load chose), stopped after the deepest block, capturing nothing. Returns
    a function that runs it."""
    tok = tokenize(model.tokenizer, texts)
    budget = auto_token_budget(model.device, model.d_model)
    batches = [padded_batch(model, tok, rows, parse_pooling("last"), "right")
               for rows in plan_batches(tok.lengths, None, budget)]

    def stop(hidden) -> None:
        raise StopForward

    def run() -> None:
        with capture(model.hf_model, {block_hook(max(layers)): stop}), torch.inference_mode(), \
                plain_linears(model.hf_model):
            for batch in batches:
                try:
                    model.base_model(**batch.padded.inputs(), use_cache=False)
                except StopForward:
                    pass
        _sync(model.device)

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device):
    """(result, seconds, CUDA allocator peak above the start; 0 on CPU)."""
    _sync(device)
    peak = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    return result, seconds, peak


def max_rel_error(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> float:
    """max over layers and texts of |a - b|_inf / |a|_inf, row by row."""
    worst = 0.0
    for layer in a:
        diff = (a[layer] - b[layer]).abs().amax(dim=1) / a[layer].abs().amax(dim=1)
        worst = max(worst, float(diff.max()))
    return worst


@dataclass
class ExtractBench:
    n_texts: int = field(default=256, metadata={"help": "Texts in the length mix (20-150 tokens)."})
    peers: bool = field(default=True, metadata={"help": "Include TransformerLens and nnsight if installed."})
    sweep: bool = field(default=True, metadata={"help": "Run the batch-size sweep."})
    threads: int = field(default=1, metadata={
        "help": "CPU compute threads of every method and sweep point (on a shared machine, more threads than "
                "idle cores measure the other jobs too)."})


def run_extract_benchmark(bench: BenchOptions | None = None, cfg: ExtractBench | None = None,
                          repeats: int = 2) -> dict:
    """Baseline loop vs engine vs bare stopped forward vs peers (repeats:
    alternating, best of), computing with cfg.threads threads on CPU (the
    caller's thread count is restored after)."""
    bench, cfg = bench or BenchOptions(), cfg or ExtractBench()
    with compute_threads(cfg.threads):
        return _extract_benchmark(bench, cfg, repeats)


def _extract_benchmark(bench: BenchOptions, cfg: ExtractBench, repeats: int) -> dict:
    model_name, device, results_dir, readme = bench.model, bench.device, bench.results_dir, bench.readme
    n_texts, peers, sweep = cfg.n_texts, cfg.peers, cfg.sweep
    model = load_model(model_name, device=device)
    texts = length_mix(model.tokenizer, n_texts)
    layers = bench_layers(model)
    hooks = [block_hook(layer) for layer in layers]
    n_tokens = int(sum(tokenize(model.tokenizer, texts).lengths))
    console.print(f"[bold]bench extract[/bold]: {model_name} on {model.device}, {n_texts} texts, "
                  f"{n_tokens} tokens, hooks {hooks}")
    model.extract(texts[:8], hooks)  # warm-up

    engine_stats = {}

    def engine():
        acts = model.extract(texts, hooks, pooling="last")
        engine_stats["padding_waste"] = round(acts.stats.padding_waste, 4)
        return {layer: acts[hook] for layer, hook in zip(layers, hooks)}

    rows = {}

    def record(name: str, seconds: float, peak: int, **extra) -> None:
        rows[name] = dict(seconds=round(seconds, 3), texts_per_s=round(n_texts / seconds, 2),
                          tokens_per_s=round(n_tokens / seconds, 1), **extra)
        if model.device.type == "cuda":
            rows[name]["peak_memory_mb"] = round(peak / 2**20, 1)
        console.print(f"  {name:<22} {seconds:7.2f}s  {n_tokens / seconds:8.0f} tok/s")

    reference, seconds, peak = timed(lambda: baseline_loop(model, texts, layers), model.device)
    record("baseline_loop", seconds, peak)
    bare = bare_forward(model, texts, layers)
    # Engine and bare limit alternate, best of `repeats`, so drift hits both alike.
    best = {"engine": (None, float("inf"), 0), "bare_forward": (None, float("inf"), 0)}
    for _ in range(repeats):
        for name, fn in (("bare_forward", bare), ("engine", engine)):
            result, seconds, peak = timed(fn, model.device)
            if seconds < best[name][1]:
                best[name] = (result, seconds, peak)
    record("engine", best["engine"][1], best["engine"][2], **engine_stats)
    record("bare_forward", best["bare_forward"][1], best["bare_forward"][2])
    ours = best["engine"][0]
    errors = {"engine_vs_baseline": max_rel_error(reference, ours)}
    if peers:
        for name, make in _peer_factories(model).items():
            try:
                runner = make()
            except ImportError as exc:
                console.print(f"  {name}: skipped ({exc}); pip install 'actlab[bench]'")
                continue
            runner(texts[:4], layers, PEER_BATCH)  # warm-up
            result, seconds, peak = timed(lambda: runner(texts, layers, PEER_BATCH), model.device)
            record(name, seconds, peak, batch_size=PEER_BATCH)
            errors[f"{name}_vs_baseline"] = max_rel_error(reference, result)
    sweep_rows = _sweep(model, model_name, texts, hooks, n_tokens) if sweep else []
    engine_s = rows["engine"]["seconds"]
    ratios = {"engine_vs_baseline": rows["baseline_loop"]["seconds"] / engine_s,
              "engine_vs_bare_forward": rows["bare_forward"]["seconds"] / engine_s}
    for name in rows:
        if name not in ("baseline_loop", "engine", "bare_forward"):
            ratios[f"engine_vs_{name}"] = rows[name]["seconds"] / engine_s
    result = {
        "benchmark": "extract", "actlab_version": VERSION,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": describe_device(model.device), "model": model_name, "dtype": model.dtype,
        "n_texts": n_texts, "n_tokens": n_tokens, "hooks": hooks, "pooling": "last",
        "methods": rows, "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "max_rel_error": {k: float(f"{v:.3g}") for k, v in errors.items()},
        "batch_size_sweep": sweep_rows, "matmul": model.matmul,
    }
    for key, value in result["ratios"].items():
        console.print(f"  {key:<32} {value:.2f}x")
    console.print(f"  max relative error engine vs baseline: {errors['engine_vs_baseline']:.2e}")
    save_result(result, model.device, results_dir, readme, markdown_table(result))
    return result


def save_result(result: dict, device: torch.device, results_dir: Path | None, readme: Path | None,
                markdown: str) -> None:
    """benchmarks/results/<benchmark>-<device type>[-<variant>].json, and the README table."""
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{result['benchmark']}-{device.type}{_variant(result)}.json"
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {path}")
    if readme is not None:
        update_readme(readme, result, markdown)


def _peer_factories(model: Model) -> dict[str, Callable]:
    return {"transformer_lens": lambda: peers.transformer_lens_runner(model),
            "nnsight": lambda: peers.nnsight_runner(model)}


def _sweep(model: Model, model_name: str, texts, hooks, n_tokens: int) -> list[dict]:
    """Throughput and peak memory per batch size. CUDA: allocator peak above the
    loaded model, in this process. CPU: peak RSS of a fresh process per point
    (model included), since a process's resident high-water mark never drops."""
    rows = []
    for batch_size in SWEEP:
        if model.device.type == "cuda":
            _, seconds, peak = timed(lambda: model.extract(texts, hooks, batch_size=batch_size), model.device)
            memory = "cuda allocator peak above the loaded model"
        else:
            seconds, peak = sweep_point_in_subprocess("extract", model_name, model.device.type, batch_size,
                                                      len(texts), *hooks)
            memory = "peak process RSS during the extraction, model included"
        rows.append({"batch_size": batch_size or "auto", "seconds": round(seconds, 3),
                     "tokens_per_s": round(n_tokens / seconds, 1), "peak_memory_mb": round(peak / 2**20, 1),
                     "memory": memory})
        console.print(f"  sweep batch {batch_size or 'auto':>4}: {seconds:6.2f}s  "
                      f"{n_tokens / seconds:7.0f} tok/s  peak {peak / 2**20:.0f} MiB")
    return rows


def sweep_point_in_subprocess(kind: str, model_name: str, device: str, batch_size: int | None,
                              *args) -> tuple[float, int]:
    """(seconds, peak RSS) of one sweep point run by benchmarks.sweep_worker."""
    result = sweep_point(kind, model_name, device, batch_size, *args)
    return result["seconds"], result["peak_memory_bytes"]


def sweep_point(kind: str, model_name: str, device: str, batch_size: int | None, *args) -> dict:
    """Everything the sweep_worker process reports (its last line, JSON)."""
    command = [sys.executable, "-m", "benchmarks.sweep_worker", kind, model_name, device,
               str(batch_size or "auto"), *map(str, args)]
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}  # the worker computes with this process's threads
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=worker_env(**threads))
    return json.loads(done.stdout.strip().splitlines()[-1])




def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    threads = torch.get_num_threads()
    return f"cpu: {describe_cpu()}, {threads} thread{'s' if threads != 1 else ''}"


def markdown_table(result: dict) -> str:
    lines = [f"Device: {result['device']}; {result['model']} ({result['dtype']}); {result['n_texts']} texts, "
             f"{result['n_tokens']} tokens; hooks {', '.join(result['hooks'])}; last-token pooling; "
             f"{result['date'][:10]}.", "",
             f"Engine padding waste {result['methods']['engine']['padding_waste']:.1%}.", "",
             "| method | seconds | tokens/s | engine speed-up |", "|---|---:|---:|---:|"]
    engine_s = result["methods"]["engine"]["seconds"]
    for name, row in result["methods"].items():
        lines.append(f"| {name} | {row['seconds']:.2f} | {row['tokens_per_s']:.0f} | "
                     f"{row['seconds'] / engine_s:.2f}x |")
    lines += ["", "Max relative error vs the baseline loop: " + ", ".join(
        f"{k.replace('_vs_baseline', '')} {v:.1e}" for k, v in result["max_rel_error"].items()) + "."]
    if result.get("matmul"):
        lines += ["", "bare_forward runs every linear layer plain, as HF does; the engine runs the matrix path the "
                  "load chose per weight shape (GFLOP/s torch / oneDNN prepacked at the probe's rows): " + ", ".join(
                      f"{shape} {row['path']} ({row.get('torch_gflops', '-')} / {row.get('onednn_gflops', '-')})"
                      for shape, row in result["matmul"].items()) + "."]
    return "\n".join(lines + sweep_table(result["batch_size_sweep"], "Batch-size sweep", "tokens_per_s"))


def sweep_table(rows: list[dict], title: str, rate: str) -> list[str]:
    """Markdown lines of a batch-size sweep: seconds, a rate column and peak memory."""
    if not rows:
        return []
    unit = rate.replace("_per_s", "/s")
    return ["", f"{title} (peak memory: {rows[0]['memory']}):", "",
            f"| batch size | seconds | {unit} | peak memory (MiB) |", "|---|---:|---:|---:|"] + [
        f"| {r['batch_size']} | {r['seconds']:.2f} | {r[rate]:.0f} | {r['peak_memory_mb']:.0f} |" for r in rows]


def _variant(result: dict) -> str:
    """"-bfloat16" for a result of that variant (its own file and README block), else ""."""
    return f"-{result['variant']}" if result.get("variant") else ""


def update_readme(readme: Path, result: dict, markdown: str) -> None:
    """Replace the block between the benchmark's device markers in the README."""
    kind = result["device"].split(":")[0] + _variant(result)
    name = result["benchmark"]
    start, end = f"<!-- bench:{name}:{kind} -->", f"<!-- /bench:{name}:{kind} -->"
    text = readme.read_text()
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    write_text_atomic(readme, f"{head}{start}\n{markdown}\n{end}{tail}")
