"""`actlab bench traits`: the three trait-generation pipelines on the same prompts,
side by side in one process, plus a batch-size sweep of the batched one.

    two_stage_serial   one prompt at a time: generate, then a second forward pass
                       over prompt + answer to extract (the usual two-stage pipeline)
    combined_serial    one prompt at a time, activations captured while generating
    batched            actlab: batched generation with capture, one pass

All greedy, so the three give the same answers; the activations (response
mean at three depths) are compared too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from actlab.models import Model, load_model
from actlab.traits import GenerationConfig, generate, render_prompt
from actlab.traits.definitions import load_trait
from actlab.version import VERSION

from .extract import (
    bench_layers,
    console,
    describe_device,
    max_rel_error,
    save_result,
    sweep_point_in_subprocess,
    timed,
)
from .options import BenchOptions

SWEEP = (1, 4, 8, 16, 32)


def bench_prompts(model: Model, n: int) -> list[str]:
    """The built-in French trait's pos / neg prompts, rendered, first n."""
    prompts = load_trait("french").prompts()[:n]
    return [render_prompt(model.tokenizer, p.user, p.system) for p in prompts]


def two_stage_serial(model: Model, prompts, layers, cfg: GenerationConfig):
    answers, pooled = [], {layer: [] for layer in layers}
    for prompt in prompts:
        gens = generate(model, [prompt], cfg=cfg)
        ids = gens.prompt_ids[0] + gens.answer_ids[0]
        p, a = len(gens.prompt_ids[0]), len(gens.answer_ids[0])
        with torch.inference_mode():
            hidden = model.hf_model(input_ids=torch.tensor([ids], device=model.device),
                                    output_hidden_states=True).hidden_states
        for layer in layers:  # hidden_states[L + 1] is block L's output (L below the last block)
            answer = hidden[layer + 1][0, p:p + a].float()
            pooled[layer].append(answer.mean(0).cpu() if a else torch.zeros(answer.shape[-1]))
        answers.append(gens.answer_ids[0])
    return answers, {layer: torch.stack(v) for layer, v in pooled.items()}


@dataclass
class TraitsBench:
    n_prompts: int = field(default=64, metadata={"help": "Prompts of the built-in French trait."})
    max_new_tokens: int = field(default=32, metadata={"help": "New tokens per answer."})
    batch_size: int = field(default=16, metadata={"help": "Batch size of the batched pipeline."})
    sweep: bool = field(default=True, metadata={"help": "Run the batch-size sweep (1, 4, 8, 16, 32)."})


def run_traits_benchmark(bench: BenchOptions | None = None, cfg: TraitsBench | None = None) -> dict:
    """Trait generation: two-stage serial vs combined serial vs batched generation with capture."""
    bench, cfg = bench or BenchOptions(), cfg or TraitsBench()
    model_name, device, results_dir, readme = bench.model, bench.device, bench.results_dir, bench.readme
    n_prompts, max_new_tokens, batch_size, sweep = cfg.n_prompts, cfg.max_new_tokens, cfg.batch_size, cfg.sweep
    model = load_model(model_name, device=device)
    prompts = bench_prompts(model, n_prompts)
    layers = bench_layers(model)
    console.print(f"[bold]bench traits[/bold]: {model_name} on {model.device}, {len(prompts)} prompts, "
                  f"{max_new_tokens} new tokens (greedy), response mean at layers {layers}")
    serial_cfg = GenerationConfig(max_new_tokens, slots=1)
    batched_cfg = GenerationConfig(max_new_tokens, slots=batch_size)
    generate(model, prompts[:2], layers, cfg=batched_cfg)  # warm-up
    rows, outputs = {}, {}
    pipelines = {
        "two_stage_serial": lambda: two_stage_serial(model, prompts, layers, serial_cfg),
        "combined_serial": lambda: _answers_and_means(generate(model, prompts, layers, cfg=serial_cfg)),
        "batched": lambda: _answers_and_means(generate(model, prompts, layers, cfg=batched_cfg)),
    }
    for name, fn in pipelines.items():
        outputs[name], seconds, peak = timed(fn, model.device)
        rows[name] = {"seconds": round(seconds, 2), "prompts_per_s": round(len(prompts) / seconds, 2)}
        if model.device.type == "cuda":
            rows[name]["peak_memory_mb"] = round(peak / 2**20, 1)
        console.print(f"  {name:<18} {seconds:7.1f}s")
    reference = outputs["two_stage_serial"]
    same_answers = {name: out[0] == reference[0] for name, out in outputs.items()}
    errors = {name: max_rel_error(reference[1], out[1]) for name, out in outputs.items() if name != "two_stage_serial"}
    base = rows["two_stage_serial"]["seconds"]
    speedups = {name: round(base / row["seconds"], 2) for name, row in rows.items()}
    sweep_rows = _sweep(model, model_name, len(prompts), max_new_tokens, layers, base) if sweep else []
    result = {"benchmark": "traits", "actlab_version": VERSION,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": describe_device(model.device),
              "model": model_name, "n_prompts": len(prompts), "max_new_tokens": max_new_tokens, "layers": layers,
              "batch_size": batch_size, "pipelines": rows, "speedup_vs_two_stage": speedups,
              "same_answers_as_two_stage": same_answers, "max_rel_error_vs_two_stage": errors,
              "batch_size_sweep": sweep_rows}
    for name, value in speedups.items():
        console.print(f"  {name:<18} {value:.2f}x the two-stage serial pipeline")
    save_result(result, model.device, results_dir, readme, markdown_table(result))
    return result


def _answers_and_means(gens):
    return gens.answer_ids, gens.pooled["response_mean"]


def _sweep(model: Model, model_name: str, n_prompts: int, max_new_tokens: int, layers,
           two_stage_seconds: float) -> list:
    rows = []
    for batch_size in SWEEP:
        if model.device.type == "cuda":
            prompts = bench_prompts(model, n_prompts)
            cfg = GenerationConfig(max_new_tokens, slots=batch_size)
            _, seconds, peak = timed(lambda: generate(model, prompts, layers, cfg=cfg), model.device)
            memory = "cuda allocator peak above the loaded model"
        else:
            seconds, peak = sweep_point_in_subprocess("traits", model_name, model.device.type, batch_size,
                                                      n_prompts, max_new_tokens, *layers)
            memory = "peak process RSS during generation, model included"
        rows.append({"batch_size": batch_size, "seconds": round(seconds, 2),
                     "speedup_vs_two_stage": round(two_stage_seconds / seconds, 2),
                     "peak_memory_mb": round(peak / 2**20, 1), "memory": memory})
        console.print(f"  sweep batch {batch_size:>3}: {seconds:6.1f}s  {two_stage_seconds / seconds:5.2f}x  "
                      f"peak {peak / 2**20:.0f} MiB")
    return rows


def markdown_table(result: dict) -> str:
    lines = [f"Device: {result['device']}; {result['model']}; {result['n_prompts']} prompts (built-in French trait), "
             f"{result['max_new_tokens']} new tokens, greedy; response mean at layers {result['layers']}; "
             f"{result['date'][:10]}.", "",
             "| pipeline | seconds | prompts/s | speed-up | same answers |", "|---|---:|---:|---:|---|"]
    for name, row in result["pipelines"].items():
        label = f"{name} (batch {result['batch_size']})" if name == "batched" else name
        lines.append(f"| {label} | {row['seconds']:.1f} | {row['prompts_per_s']:.2f} | "
                     f"{result['speedup_vs_two_stage'][name]:.2f}x | {result['same_answers_as_two_stage'][name]} |")
    lines += ["", "Max relative error of the captured activations vs the two-stage pipeline: " + ", ".join(
        f"{k} {v:.1e}" for k, v in result["max_rel_error_vs_two_stage"].items()) + "."]
    if result["batch_size_sweep"]:
        memory = result["batch_size_sweep"][0]["memory"]
        lines += ["", f"Batch-size sweep of the batched pipeline (peak memory: {memory}):",
                  "", "| batch size | seconds | speed-up vs two-stage | peak memory (MiB) |", "|---|---:|---:|---:|"]
        lines += [f"| {r['batch_size']} | {r['seconds']:.1f} | {r['speedup_vs_two_stage']:.2f}x | "
                  f"{r['peak_memory_mb']:.0f} |" for r in result["batch_size_sweep"]]
    return "\n".join(lines)
