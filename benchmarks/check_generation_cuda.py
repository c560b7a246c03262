"""Checks and figures of the generation engine on a GPU, which CI (CPU only)
cannot run; one script, at most 10 minutes on an H100/H200:

    python -m benchmarks.check_generation_cuda MODEL_DIR [--out benchmarks/results/generation-cuda.json]
    python -m benchmarks.check_generation_cuda MODEL_DIR --device cpu --small   # a dry run of the script

MODEL_DIR is the default model's folder (config and tokenizer suffice: the
figures use its architecture with random weights, saved and loaded through
`load_model`). Checked and measured:

- greedy answers token-identical to HF `generate` one prompt at a time
  (float32, CUDA graphs on; a divergence is reported with the top-two logit
  gap where it starts, so a near-tie is told apart from an error), captured
  activations equal to a separate forward (1e-4), a row steered in a mixed
  batch equal to a batch of one; sampled answers equal whatever the slots,
  sync_every or device (CPU against GPU);
- new tokens/s of the default architecture at 256 slots with 3 layers
  captured, bfloat16 and float32, with CUDA graphs and without, and of a
  Gemma-2-2B-shaped model at 64 slots in bfloat16; milliseconds per decode
  step by slot count (graphs on and off) against one bare forward step of
  the same rows over HF's own static cache, eager and replayed as a CUDA
  graph: the engine's overhead; SDPA's backends timed on the engine's
  decode and prefill shapes (why the engine leaves cuDNN's out).

Each section is recorded as it ends (the JSON is rewritten after every one),
and a section that fails records its error and lets the others run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

import actlab
from actlab.generation import GenerationConfig, Steering, eos_ids, generate
from benchmarks.extract import describe_device
from benchmarks.generate import generation_prompts

GEMMA2_2B = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, vocab_size=256000, sliding_window=4096,
                 attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256)


def random_model(config, tokenizer_dir: Path, out: Path, device: str, dtype: torch.dtype) -> Path:
    """A model of `config` with random weights, built on `device` in `dtype`,
    saved with the default model's tokenizer files."""
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    del model
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def top_two_gap(model, ids: list[int]) -> float:
    """HF's top-two logit gap for the token after `ids`."""
    with torch.no_grad():
        logits = model.hf_model(torch.tensor([ids], device=model.device)).logits[0, -1].float()
    top = logits.topk(2).values
    return float(top[0] - top[1])


def exactness(model, prompts: list[str]) -> dict:
    """Token identity with HF generate per prompt; capture vs a forward; steering vs a batch of one."""
    cfg = GenerationConfig(max_new_tokens=24, slots=7, sync_every=4)
    layers = [1, model.n_layers // 2]
    gens = generate(model, prompts, layers, ("response_mean", "prompt_last"), cfg)
    eos, identical, divergences = sorted(eos_ids(model)), 0, []
    worst_capture = 0.0
    for i, ids in enumerate(gens.prompt_ids):
        x = torch.tensor([ids], device=model.device)
        out = model.hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                                      eos_token_id=eos, pad_token_id=model.pad_id)[0, len(ids):].tolist()
        want = out[:next((k for k, t in enumerate(out) if t in eos), len(out))]
        if want == gens.answer_ids[i]:
            identical += 1
        else:
            got = gens.answer_ids[i]
            at = next((k for k, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            divergences.append({"prompt": i, "at_token": at, "top_two_gap": top_two_gap(model, ids + want[:at])})
        if gens.answer_ids[i]:
            with torch.no_grad():
                hidden = model.hf_model(torch.tensor([ids + gens.answer_ids[i]], device=model.device),
                                        output_hidden_states=True).hidden_states
            for layer in layers:
                want_h = hidden[layer + 1][0, len(ids):].float().mean(0).cpu()
                got_h = gens.pooled["response_mean"][layer][i]
                worst_capture = max(worst_capture, float((got_h - want_h).norm() / want_h.norm()))
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)) * 4
    steerings = [Steering(1, v, c) if c else None for c in (0, 1, -1, 2)] * (len(prompts) // 4)
    mixed = generate(model, prompts[:len(steerings)], cfg=cfg, steering=steerings)
    alone = sum(generate(model, [p], cfg=cfg, steering=s).answer_ids[0] == mixed.answer_ids[i]
                for i, (p, s) in enumerate(zip(prompts, steerings)))
    return {"identical_to_hf_generate": f"{identical}/{len(prompts)}", "divergences": divergences,
            "cuda_graphs_in_engine": gens.stats.get("cuda_graphs", 0),
            "capture_max_rel_error": worst_capture,
            "steered_rows_equal_batch_of_one": f"{alone}/{len(steerings)}"}


def sampling_invariance(model, cpu_model, prompts: list[str]) -> dict:
    """Sampled answers (temperature 0.8, top-p 0.9) under different slots and
    sync_every on the device, and on the CPU: the same whatever the batching."""
    sampled = dict(max_new_tokens=24, temperature=0.8, top_p=0.9, seed=1)
    runs = {"device_7_slots": generate(model, prompts, cfg=GenerationConfig(slots=7, sync_every=4, **sampled)),
            "device_3_slots_sync_1": generate(model, prompts, cfg=GenerationConfig(slots=3, sync_every=1, **sampled)),
            "cpu_4_slots": generate(cpu_model, prompts, cfg=GenerationConfig(slots=4, **sampled))}
    first = runs["device_7_slots"].answer_ids
    return {name: f"{sum(a == b for a, b in zip(first, g.answer_ids))}/{len(prompts)} equal to device_7_slots"
            for name, g in runs.items() if name != "device_7_slots"}


def throughput(model, prompts: list[str], slots: int, max_new: int, layers: list[int], graphs: bool = True) -> dict:
    cfg = GenerationConfig(max_new_tokens=max_new, slots=slots, cuda_graphs=graphs)
    generate(model, prompts, layers, cfg=GenerationConfig(max_new_tokens=4, slots=slots, cuda_graphs=graphs))  # warm-up
    sync(model.device)
    peak_before = torch.cuda.max_memory_allocated() if model.device.type == "cuda" else 0
    started = time.perf_counter()
    gens = generate(model, prompts, layers, cfg=cfg)
    sync(model.device)
    seconds = time.perf_counter() - started
    tokens = sum(map(len, gens.answer_ids))
    out = {"slots": slots, "layers_captured": layers, "cuda_graphs": gens.stats.get("cuda_graphs", 0),
           "prompts": len(prompts), "new_tokens": tokens, "finished_at_eos": int(sum(gens.finished)),
           "seconds": round(seconds, 3), "new_tokens_per_s": round(tokens / seconds, 1),
           "decode_steps": gens.stats["decode_steps"], "prefill_forwards": gens.stats["prefill_forwards"],
           "ms_per_step_incl_prefill": round(seconds / max(1, gens.stats["decode_steps"]) * 1000, 3)}
    if model.device.type == "cuda":
        out["peak_gib"] = round(max(peak_before, torch.cuda.max_memory_allocated()) / 2 ** 30, 2)
    return out


def step_ms(model, prompts: list[str], slots: int, graphs: bool, short: int = 9, long: int = 73) -> float:
    """The engine's milliseconds per decode step at `slots` rows: the same
    prompts to `long` and to `short` new tokens (each call with the same
    warm-up steps and graph capture), the difference over the steps between;
    the median of three pairs."""
    chosen = (prompts * (slots // len(prompts) + 1))[:slots]
    pairs = []
    for _ in range(3):
        times, steps = [], []
        for max_new in (short, long):
            cfg = GenerationConfig(max_new_tokens=max_new, slots=slots, cuda_graphs=graphs, sync_every=32)
            sync(model.device)
            started = time.perf_counter()
            gens = generate(model, chosen, cfg=cfg)
            sync(model.device)
            times.append(time.perf_counter() - started)
            steps.append(gens.stats["decode_steps"])
        pairs.append((times[1] - times[0]) / max(1, steps[1] - steps[0]) * 1000)
    return round(sorted(pairs)[1], 3)


def attention_backends(device: torch.device) -> dict:
    """Microseconds per SDPA call by backend in bfloat16, CUDA events over 50
    calls: a decode step's attention at 256 slots (the default model's 9
    query and 3 KV heads of width 64, as 3 x 3 grouped queries over 192
    cached positions under an additive mask, cache.decode_attention) and a
    prefill's (64 prompts x 64 tokens, causal); and the host milliseconds of
    the first call of a new shape (a plan built), per backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def shapes(tokens: int) -> dict:
        g = torch.Generator(device=device).manual_seed(0)
        rand = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=torch.bfloat16)  # noqa: E731
        bias = torch.zeros(256, 1, 1, 192, device=device, dtype=torch.bfloat16)
        bias[:, :, :, tokens:] = float("-inf")
        return {"decode": dict(query=rand(256, 3, 3, 64), key=rand(256, 3, 192, 64), value=rand(256, 3, 192, 64),
                               attn_mask=bias),
                "prefill": dict(query=rand(64, 9, tokens, 64), key=rand(64, 9, tokens, 64),
                                value=rand(64, 9, tokens, 64), is_causal=True)}

    out = {}
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH):
        row = {}
        for kind in ("decode", "prefill"):
            try:
                with sdpa_kernel([backend]):
                    sync(device)
                    began = time.perf_counter()
                    F.scaled_dot_product_attention(**shapes(61)[kind])
                    sync(device)
                    row[f"{kind}_first_call_ms"] = round((time.perf_counter() - began) * 1000, 2)
                    args = shapes(64)[kind]
                    for _ in range(3):
                        F.scaled_dot_product_attention(**args)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(50):
                        F.scaled_dot_product_attention(**args)
                    end.record()
                    sync(device)
                    row[f"{kind}_us"] = round(start.elapsed_time(end) * 1000 / 50, 1)
            except RuntimeError as error:
                row[f"{kind}_us"] = f"unsupported: {str(error).splitlines()[0][:120]}"
        out[backend.name] = row
    return out


def steps_by_slots(model, prompts: list[str], slot_counts, graphs: bool) -> dict:
    return {str(s): step_ms(model, prompts, s, graphs) for s in slot_counts}


def bare_step_ms(model, slots: int, context: int) -> dict:
    """One forward of `slots` rows x 1 token over a `context`-long HF static
    cache, eager and (on CUDA) replayed as a CUDA graph."""
    cache = transformers.StaticCache(config=model.hf_model.config, max_cache_len=context + 64)
    ids = torch.randint(0, 1000, (slots, context), device=model.device)
    step = torch.randint(0, 1000, (slots, 1), device=model.device)
    position = torch.tensor([context], device=model.device)
    forward = lambda: model.hf_model(step, past_key_values=cache, use_cache=True, logits_to_keep=1,  # noqa: E731
                                     cache_position=position)
    out = {"slots": slots, "context": context}
    with torch.inference_mode():
        model.hf_model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        out["eager"] = _median_ms(model.device, forward)
        if model.device.type == "cuda":
            for _ in range(2):
                forward()  # warm-up before capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                forward()
            out["cuda_graph"] = _median_ms(model.device, graph.replay)
    return out


def _median_ms(device: torch.device, run, repeats: int = 21) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - started)
    return round(sorted(times)[len(times) // 2] * 1000, 3)


class Report:
    """The result so far, rewritten to `path` after every section; a
    section's error is recorded in its place."""

    def __init__(self, path: Path, result: dict):
        self.path, self.result, self.started = path, result, time.perf_counter()

    def section(self, name: str, run, *args, **kwargs) -> object:
        """Record run(*args, **kwargs) under `name`."""
        began = time.perf_counter()
        try:
            value = run(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - recorded, the other sections still run
            value = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        self.result[name] = value
        self.result["seconds"] = round(time.perf_counter() - self.started, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.result, indent=2) + "\n")
        print(f"[{self.result['seconds']:7.1f} s] {name} ({time.perf_counter() - began:.1f} s): "
              f"{json.dumps(value)[:600]}", flush=True)
        return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generation-cuda.json"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a dry run: few prompts, short answers, small models")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this script checks the CUDA paths (--device cpu --small: a dry run)")
    n_prompts, max_new, big_slots, gemma_slots = (8, 8, 4, 2) if args.small else (1024, 128, 256, 64)
    slot_counts = (1, 4) if args.small else (1, 16, 64, 256)
    report = Report(args.out, {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "torch": torch.__version__, "transformers": transformers.__version__})
    with tempfile.TemporaryDirectory() as scratch:
        config = AutoConfig.from_pretrained(args.model_dir)
        default_dir = random_model(config, args.model_dir, Path(scratch) / "default-random", args.device,
                                   torch.float32)
        f32 = actlab.load_model(str(default_dir), device=args.device)
        report.result["device"] = describe_device(f32.device)
        prompts = generation_prompts(f32, n_prompts)
        layers = sorted({f32.n_layers // 4, f32.n_layers // 2, (3 * f32.n_layers) // 4})
        report.section("exactness_float32", exactness, f32, prompts[:16 if not args.small else 4])
        cpu_f32 = actlab.load_model(str(default_dir), device="cpu")
        report.section("sampling_invariance", sampling_invariance, f32, cpu_f32, prompts[:16 if not args.small else 4])
        del cpu_f32
        if f32.device.type == "cuda":
            report.section("attention_backends_bfloat16", attention_backends, f32.device)
        report.section("default_float32", throughput, f32, prompts, big_slots, max_new, layers)
        del f32
        bf16 = actlab.load_model(str(default_dir), device=args.device, dtype="bfloat16")
        report.section("default_bfloat16", throughput, bf16, prompts, big_slots, max_new, layers)
        report.section("default_bfloat16_no_capture", throughput, bf16, prompts, big_slots, max_new, [])
        report.section("default_bfloat16_no_graphs", throughput, bf16, prompts, big_slots, max_new, layers,
                       graphs=False)
        report.section("default_bfloat16_step_ms_by_slots", steps_by_slots, bf16, prompts, slot_counts, True)
        report.section("default_bfloat16_step_ms_no_graphs", steps_by_slots, bf16, prompts, (big_slots,), False)
        report.section("default_bfloat16_bare_step_ms", bare_step_ms, bf16, big_slots, 96)
        del bf16
        shape = dict(GEMMA2_2B, num_hidden_layers=2, vocab_size=49152) if args.small else GEMMA2_2B
        gemma_config = transformers.Gemma2Config(**shape, bos_token_id=config.bos_token_id,
                                                 eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
        gemma_config.vocab_size = max(gemma_config.vocab_size, config.vocab_size)
        gemma_dir = random_model(gemma_config, args.model_dir, Path(scratch) / "gemma2-2b-shaped-random",
                                 args.device, torch.bfloat16)
        gemma = actlab.load_model(str(gemma_dir), device=args.device, dtype="bfloat16")
        gemma_prompts, middle = prompts[:max(gemma_slots * 4, 8)], [gemma.n_layers // 2]
        report.section("gemma2_2b_shaped_bfloat16", throughput, gemma, gemma_prompts, gemma_slots, max_new, middle)
        report.section("gemma2_2b_shaped_no_graphs", throughput, gemma, gemma_prompts, gemma_slots, max_new, middle,
                       graphs=False)
        report.section("gemma2_2b_shaped_step_ms", steps_by_slots, gemma, prompts, (gemma_slots,), True)
        report.section("gemma2_2b_shaped_step_ms_no_graphs", steps_by_slots, gemma, prompts, (gemma_slots,), False)
        report.section("gemma2_2b_shaped_bare_step_ms", bare_step_ms, gemma, gemma_slots, 96)

if __name__ == "__main__":
    main()
