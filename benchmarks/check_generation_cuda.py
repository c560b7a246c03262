"""Checks and figures of the generation engine on a GPU, which CI (CPU only)
cannot run; one script, at most 10 minutes on an H100/H200:

    python benchmarks/check_generation_cuda.py MODEL_DIR [--out benchmarks/results/generation-cuda.json]
    python benchmarks/check_generation_cuda.py MODEL_DIR --device cpu --small   # a dry run of the script

MODEL_DIR is the default model's folder (config and tokenizer suffice: the
figures use its architecture with random weights, saved and loaded through
`load_model`). Checked and measured:

- greedy answers token-identical to HF `generate` one prompt at a time
  (float32), captured activations equal to a separate forward (1e-4), a
  row steered in a mixed batch equal to a batch of one;
- new tokens/s of the default architecture at 256 slots with 3 layers
  captured, bfloat16 and float32, with CUDA graphs and without, and of a
  Gemma-2-2B-shaped model at 64 slots in bfloat16; milliseconds per decode
  step (graphs on and off) against one bare forward step of the same rows
  over HF's own static cache, eager and replayed as a CUDA graph: the
  engine's overhead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

import actlab
from actlab.bench.extract import describe_device
from actlab.bench.generate import generation_prompts
from actlab.generation import GenerationConfig, Steering, eos_ids, generate

GEMMA2_2B = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, vocab_size=256000, sliding_window=4096,
                 attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256)


def random_model(config, tokenizer_dir: Path, scratch: Path, name: str) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = scratch / name
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            (out / f.name).write_bytes(f.read_bytes())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exactness(model, prompts: list[str]) -> dict:
    """Token identity with HF generate per prompt; capture vs a forward; steering vs a batch of one."""
    cfg = GenerationConfig(max_new_tokens=24, slots=7, sync_every=4)
    layers = [1, model.n_layers // 2]
    gens = generate(model, prompts, layers, ("response_mean", "prompt_last"), cfg)
    eos, identical = sorted(eos_ids(model)), 0
    worst_capture = 0.0
    for i, ids in enumerate(gens.prompt_ids):
        x = torch.tensor([ids], device=model.device)
        out = model.hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                                      eos_token_id=eos, pad_token_id=model.pad_id)[0, len(ids):].tolist()
        identical += out[:next((k for k, t in enumerate(out) if t in eos), len(out))] == gens.answer_ids[i]
        if gens.answer_ids[i]:
            with torch.no_grad():
                hidden = model.hf_model(torch.tensor([ids + gens.answer_ids[i]], device=model.device),
                                        output_hidden_states=True).hidden_states
            for layer in layers:
                want = hidden[layer + 1][0, len(ids):].float().mean(0).cpu()
                got = gens.pooled["response_mean"][layer][i]
                worst_capture = max(worst_capture, float((got - want).norm() / want.norm()))
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)) * 4
    steerings = [Steering(1, v, c) if c else None for c in (0, 1, -1, 2)] * (len(prompts) // 4)
    mixed = generate(model, prompts[:len(steerings)], cfg=cfg, steering=steerings)
    alone = sum(generate(model, [p], cfg=cfg, steering=s).answer_ids[0] == mixed.answer_ids[i]
                for i, (p, s) in enumerate(zip(prompts, steerings)))
    return {"identical_to_hf_generate": f"{identical}/{len(prompts)}", "capture_max_rel_error": worst_capture,
            "steered_rows_equal_batch_of_one": f"{alone}/{len(steerings)}"}


def throughput(model, prompts: list[str], slots: int, max_new: int, layers: list[int], graphs: bool = True) -> dict:
    cfg = GenerationConfig(max_new_tokens=max_new, slots=slots, cuda_graphs=graphs)
    generate(model, prompts[:slots], layers, cfg=GenerationConfig(max_new_tokens=4, slots=slots))  # warm-up
    sync(model.device)
    started = time.perf_counter()
    gens = generate(model, prompts, layers, cfg=cfg)
    sync(model.device)
    seconds = time.perf_counter() - started
    tokens = sum(map(len, gens.answer_ids))
    return {"slots": slots, "layers_captured": layers, "cuda_graphs": gens.stats.get("cuda_graphs", 0),
            "prompts": len(prompts), "new_tokens": tokens,
            "seconds": round(seconds, 2), "new_tokens_per_s": round(tokens / seconds, 1),
            "decode_steps": gens.stats["decode_steps"], "ms_per_step_incl_prefill": round(seconds / max(1, gens.stats[
                "decode_steps"]) * 1000, 2)}


def step_ms(model, prompts: list[str], slots: int, graphs: bool) -> float:
    """The engine's milliseconds per decode step at `slots` rows: the same
    prompts to 33 and to 1 new tokens, the difference over the steps between."""
    chosen = (prompts * (slots // len(prompts) + 1))[:slots]
    times, steps = [], []
    for max_new in (1, 33, 1, 33):  # the first pair warms up (and captures the graphs)
        cfg = GenerationConfig(max_new_tokens=max_new, slots=slots, cuda_graphs=graphs)
        sync(model.device)
        started = time.perf_counter()
        gens = generate(model, chosen, cfg=cfg)
        sync(model.device)
        times.append(time.perf_counter() - started)
        steps.append(gens.stats["decode_steps"])
    return round((times[3] - times[2]) / max(1, steps[3] - steps[2]) * 1000, 2)


def bare_step_ms(model, slots: int, context: int) -> dict:
    """One forward of `slots` rows x 1 token over a `context`-long HF static
    cache, eager and (on CUDA) replayed as a CUDA graph."""
    cache = transformers.StaticCache(config=model.hf_model.config, max_cache_len=context + 64)
    ids = torch.randint(0, 1000, (slots, context), device=model.device)
    step = torch.randint(0, 1000, (slots, 1), device=model.device)
    position = torch.tensor([context], device=model.device)
    forward = lambda: model.hf_model(step, past_key_values=cache, use_cache=True, logits_to_keep=1,  # noqa: E731
                                     cache_position=position)
    out = {}
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


def _median_ms(device: torch.device, run) -> float:
    times = []
    for _ in range(7):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - started)
    return round(sorted(times)[len(times) // 2] * 1000, 2)


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
    started = time.perf_counter()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
              "transformers": transformers.__version__}
    with tempfile.TemporaryDirectory() as scratch:
        config = AutoConfig.from_pretrained(args.model_dir)
        default_dir = random_model(config, args.model_dir, Path(scratch), "default-random")
        f32 = actlab.load_model(str(default_dir), device=args.device)
        result["device"] = describe_device(f32.device)
        prompts = generation_prompts(f32, n_prompts)
        result["exactness_float32"] = exactness(f32, prompts[:16 if not args.small else 4])
        layers = sorted({f32.n_layers // 4, f32.n_layers // 2, (3 * f32.n_layers) // 4})
        result["default_float32"] = throughput(f32, prompts, big_slots, max_new, layers)
        del f32
        bf16 = actlab.load_model(str(default_dir), device=args.device, dtype="bfloat16")
        result["default_bfloat16"] = throughput(bf16, prompts, big_slots, max_new, layers)
        result["default_bfloat16_no_capture"] = throughput(bf16, prompts, big_slots, max_new, [])
        result["default_bfloat16_no_graphs"] = throughput(bf16, prompts, big_slots, max_new, layers, graphs=False)
        result["default_bfloat16_step_ms"] = {"cuda_graphs": step_ms(bf16, prompts, big_slots, True),
                                              "eager": step_ms(bf16, prompts, big_slots, False)}
        result["default_bfloat16_bare_step_ms"] = bare_step_ms(bf16, big_slots, 192)
        del bf16
        shape = dict(GEMMA2_2B, num_hidden_layers=2, vocab_size=49152) if args.small else GEMMA2_2B
        gemma_config = transformers.Gemma2Config(**shape, bos_token_id=config.bos_token_id,
                                                 eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
        if not args.small:
            gemma_config.vocab_size = max(gemma_config.vocab_size, config.vocab_size)
        gemma_dir = random_model(gemma_config, args.model_dir, Path(scratch), "gemma2-2b-shaped-random")
        gemma = actlab.load_model(str(gemma_dir), device=args.device, dtype="bfloat16")
        result["gemma2_2b_shaped_bfloat16"] = throughput(gemma, prompts[:max(gemma_slots * 4, 8)], gemma_slots,
                                                         max_new, [gemma.n_layers // 2])
        result["gemma2_2b_shaped_no_graphs"] = throughput(gemma, prompts[:max(gemma_slots * 4, 8)], gemma_slots,
                                                          max_new, [gemma.n_layers // 2], graphs=False)
        result["gemma2_2b_shaped_step_ms"] = {"cuda_graphs": step_ms(gemma, prompts, gemma_slots, True),
                                              "eager": step_ms(gemma, prompts, gemma_slots, False)}
        result["gemma2_2b_shaped_bare_step_ms"] = bare_step_ms(gemma, gemma_slots, 192)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
