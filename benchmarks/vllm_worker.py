"""vLLM's CPU build as a peer of `actlab bench generate`, run by the Python of
the virtual environment the benchmark made for it (never actlab's): it
imports nothing from actlab. Prints one JSON line like generate_worker.

python vllm_worker.py MODEL_DIR PROMPTS.json MAX_NEW_TOKENS EAGER(0|1) [LAYER ...]

PROMPTS.json holds the prompts' token ids, the EOS ids and the dtype, so
that vLLM sees exactly the tokens (and weights) actlab's engines see. With LAYERs, vllm-lens (on
PYTHONPATH, a vLLM plugin) captures those blocks' outputs while generating
(its residual_stream: every fed position), and each row's response_mean
over the answer tokens vLLM fed is printed too.
"""

import json
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: its CPU time is ours
# In this process vLLM binds no OpenMP threads (VLLM_CPU_OMP_THREADS_BIND applies to its worker processes only)
# and forbids torch.set_num_threads: OMP_NUM_THREADS (set by the benchmark) is its compute thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    model_dir, prompts_file, max_new, eager, *layers = sys.argv[1:]
    layers = [int(x) for x in layers]
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = json.loads(open(prompts_file).read())
    eos = set(spec["eos"])
    longest = max(map(len, spec["ids"])) + int(max_new)
    llm = LLM(model=model_dir, dtype=spec.get("dtype", "float32"), enable_prefix_caching=False,
              enforce_eager=eager == "1", max_model_len=longest, seed=0)
    extra = {"extra_args": {"output_residual_stream": layers}} if layers else {}
    params = SamplingParams(temperature=0.0, max_tokens=int(max_new), stop_token_ids=sorted(eos), **extra)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in spec["ids"]]
    llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
    cpu, started = time.process_time(), time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    answers = [[t for t in out.outputs[0].token_ids if t not in eos] for out in outputs]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    name = "vllm_lens" if layers else "vllm" + ("_eager" if eager == "1" else "")
    import torch

    result = {"engine": name, "dtype": spec.get("dtype", "float32"), "seconds": seconds, "cpu_seconds": cpu,
              "peak_rss_bytes": peak, "answers": answers, "threads": torch.get_num_threads()}
    if layers:
        result["pooled"], result["pooled_tokens"] = response_means(outputs, spec["ids"], answers, layers)
    print(json.dumps(result))


def response_means(outputs, prompt_ids, answers, layers):
    """{layer: per row the mean of the captured states at the answer's fed
    positions}, and per row how many answer tokens that mean covers (vLLM
    never feeds a row's last sampled token)."""
    pooled, counts = {str(layer): [] for layer in layers}, []
    for out, ids, answer in zip(outputs, prompt_ids, answers):
        states = out.activations["residual_stream"].float()  # (layers, fed positions, d)
        p = len(ids)
        n = max(1, min(len(answer), states.shape[1] - p))
        counts.append(n)
        for k, layer in enumerate(layers):
            pooled[str(layer)].append(states[k, p:p + n].mean(0).tolist())
    return pooled, counts


if __name__ == "__main__":
    main()
