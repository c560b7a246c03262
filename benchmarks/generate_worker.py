"""One engine of `actlab bench generate` in a fresh process, so that each
runs alone with its own thread count, memory high-water mark and CPU clock.
Prints one JSON line: answers (token ids), wall and CPU seconds, peak RSS, and
with capture each row's response_mean per captured layer. PROMPTS.json holds
the prompts and the dtype every engine loads the model in.

python -m benchmarks.generate_worker ENGINE MODEL PROMPTS.json MAX_NEW_TOKENS THREADS [LAYER ...]
python -m benchmarks.generate_worker steps MODEL PROMPTS.json SLOTS THREADS
python -m benchmarks.generate_worker matmul MODEL - M THREADS

ENGINE: hf_single, hf_batched, static_loop, actlab, actlab_whole_prompts (LAYERs: captured).
"""

import json
import sys
import time

import torch

HF_BATCH = 64  # HF generate batched: rows per call, input order, left padding


def main() -> None:
    engine, model_name, prompts_file, number, threads, *layers = sys.argv[1:]
    torch.set_num_threads(int(threads))
    from actlab.models import load_model

    from .sweep_worker import measure

    if engine == "matmul":  # float32 and bfloat16 figures, at the float32 model's own shapes and paths
        print(json.dumps(matrix_throughput(load_model(model_name, device="cpu"), int(number))))
        return
    spec = json.loads(open(prompts_file).read())
    model, prompts = load_model(model_name, device="cpu", dtype=spec.get("dtype", "float32")), spec["prompts"]
    if engine == "steps":
        print(json.dumps(decode_step_seconds(model, prompts, int(number))))
        return
    run = RUNNERS[engine]
    run(model, prompts[:2], 4, [int(x) for x in layers])  # warm-up
    found = []
    cpu = time.process_time()
    seconds, peak = measure(lambda: found.append(run(model, prompts, int(number), [int(x) for x in layers])))
    print(json.dumps({"engine": engine, "dtype": model.dtype, "seconds": seconds,
                      "cpu_seconds": time.process_time() - cpu, "peak_rss_bytes": peak, **found[0]}))


def _actlab(share_prefixes: bool):
    def run(model, prompts, max_new_tokens, layers):
        from actlab.generation import GenerationConfig, generate

        cfg = GenerationConfig(max_new_tokens=max_new_tokens, share_prefixes=share_prefixes)
        gens = generate(model, prompts, layers, cfg=cfg)
        pooled = {str(layer): v.tolist() for layer, v in gens.pooled.get("response_mean", {}).items()}
        return {"answers": gens.answer_ids, "pooled": pooled}
    return run


def _static_loop(model, prompts, max_new_tokens, layers):
    from .static_loop import static_loop_generate

    return {"answers": static_loop_generate(model, prompts, max_new_tokens)}


def _hf(batch: int):
    def run(model, prompts, max_new_tokens, layers):
        from actlab.generation import eos_ids, prompt_token_ids

        eos, ids = sorted(eos_ids(model)), prompt_token_ids(model.tokenizer, prompts)
        answers = []
        model.tokenizer.padding_side = "left"
        with torch.inference_mode():
            for lo in range(0, len(ids), batch):
                chunk = ids[lo:lo + batch]
                width = max(map(len, chunk))
                input_ids = torch.tensor([[model.pad_id] * (width - len(x)) + x for x in chunk])
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk])
                out = model.hf_model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                              do_sample=False, eos_token_id=eos, pad_token_id=model.pad_id)
                for row in out[:, width:].tolist():
                    answers.append(row[:next((k for k, t in enumerate(row) if t in eos), len(row))])
        return {"answers": answers}
    return run


RUNNERS = {"hf_single": _hf(1), "hf_batched": _hf(HF_BATCH), "static_loop": _static_loop, "actlab": _actlab(True),
           "actlab_whole_prompts": _actlab(False)}


def decode_step_seconds(model, prompts, slots: int) -> dict:
    """Seconds per decode step with `slots` rows: the same prompts generated
    to 33 and to 1 new tokens, their difference over the steps between."""
    from actlab.generation import GenerationConfig, generate

    chosen = (prompts * (slots // len(prompts) + 1))[:slots]
    generate(model, chosen[:2], cfg=GenerationConfig(max_new_tokens=2))  # warm-up
    times, steps = [], []
    for max_new in (1, 33):
        started = time.perf_counter()
        gens = generate(model, chosen, cfg=GenerationConfig(max_new_tokens=max_new, slots=slots))
        times.append(time.perf_counter() - started)
        steps.append(gens.stats["decode_steps"])
    return {"slots": slots, "seconds_per_step": (times[1] - times[0]) / max(1, steps[1] - steps[0]),
            "steps": steps[1]}


def matrix_throughput(model, rows: int) -> dict:
    """GFLOP/s of the model's own matrix shapes (its MLP's up projection and
    its LM head) at `rows` rows through torch.mm and oneDNN prepacked, and the
    path the model's load chose per weight shape; bfloat16 through torch
    beside them (the dtype a user may choose on a CPU with native bf16)."""
    from actlab.engine.linears import matrix_throughput as measure_shape

    config = model.config
    shapes = {"mlp": (getattr(config, "intermediate_size", 4 * config.hidden_size), config.hidden_size),
              "lm_head": (config.vocab_size, config.hidden_size)}
    out, bf16 = {}, {}
    for name, shape in shapes.items():
        weight = torch.randn(shape)
        for path, gflops in measure_shape([weight], rows).items():
            out[f"{name}_{path}_gflops"] = round(gflops, 1)
        x, w = torch.randn(rows, shape[1], dtype=torch.bfloat16), weight.bfloat16()
        torch.nn.functional.linear(x, w)  # warm-up
        best = min(_seconds(lambda: torch.nn.functional.linear(x, w)) for _ in range(3))
        bf16[f"{name}_torch_bf16_gflops"] = round(2 * rows * weight.numel() / best / 1e9, 1)
    return {"gflops": out, "bf16_gflops": bf16, "chosen": {shape: row["path"] for shape, row in model.matmul.items()}}


def _seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
