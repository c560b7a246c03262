"""`actlab traits run` end to end, today's code against the code before the
generation engine (the static-batch loop it replaced), on the same built-in
trait: python -m benchmarks.traits_run_before_after [--trait french]
[--before REV] [--repeats 2] [--threads 1] [--max-new-tokens N]

Each run is a fresh process with one compute thread (OMP_NUM_THREADS), the
two alternating, best of the repeats; greedy (--temperature 0), since the
two versions draw samples differently. The older code comes from
`git archive REV src` of this repository, run from the same virtual
environment. Compares the answers of the generation stage and of the
steering sweep (text, row by row), and writes
benchmarks/results/traits-run-cpu.json and its table in docs/benchmarks.md
(actlab's own writer for benchmark results).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from actlab.engine.machine import describe_cpu
from benchmarks.extract import save_result

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "af80490^"  # the commit before actlab.generation replaced the static-batch loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trait", default="french")
    parser.add_argument("--before", default=BEFORE, help="The older revision (default: %(default)s).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Default: the trait run's own.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        old_src = export_source(args.before, folder / "before")
        trees = {"before": old_src, "after": ROOT / "src"}
        best: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for name, src in trees.items():
                out = folder / f"{name}-{repeat}"
                result = run_trait(src, out, args)
                print(f"{name:<7} {result['seconds']:8.1f} s wall {result['cpu_seconds']:8.1f} s CPU", flush=True)
                if name not in best or result["seconds"] < best[name]["seconds"]:
                    best[name] = {**result, "out": out}
        agreement = compare(best["before"]["out"], best["after"]["out"])
    result = summary(args, best, agreement)
    save_result(result, torch.device("cpu"), ROOT / "benchmarks" / "results", ROOT / "docs" / "benchmarks.md",
                markdown(result))
    print(result["ratios"])


def export_source(revision: str, into: Path) -> Path:
    """The package source at `revision` (git archive of src/), unpacked into `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True)
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_trait(src: Path, out: Path, args) -> dict:
    """One `actlab traits run` in a fresh process importing actlab from `src`."""
    command = [sys.executable, "-m", "actlab", "traits", "run", "--trait", args.trait, "--out", str(out),
               "--temperature", "0"]
    if args.max_new_tokens:
        command += ["--max-new-tokens", str(args.max_new_tokens)]
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=src.parent)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2)}


def answers(run: Path) -> dict[str, dict]:
    """The generation stage's answers by row and the steering sweep's by (layer, coeff, question)."""
    generated = [r for shard in sorted(run.glob("answers-*.parquet"))
                 for r in pq.read_table(shard, columns=["row", "answer"]).to_pylist()]
    steered = pq.read_table(run / "steering.parquet", columns=["layer", "coeff", "question", "answer"]).to_pylist()
    return {"generated": {r["row"]: r["answer"] for r in generated},
            "steered": {(r["layer"], r["coeff"], r["question"]): r["answer"] for r in steered}}


def compare(before: Path, after: Path) -> dict:
    """Per stage: rows of today's run, and how many have the older run's answer."""
    old, new = answers(before), answers(after)
    return {stage: {"rows": len(new[stage]), "same": sum(old[stage].get(key) == a for key, a in new[stage].items())}
            for stage in new}


def summary(args, best: dict, agreement: dict) -> dict:
    before, after = best["before"], best["after"]
    return {
        "benchmark": "traits-run", "device": f"cpu: {describe_cpu()}, {args.threads} thread(s)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "trait": args.trait, "before": args.before, "threads": args.threads, "repeats": args.repeats,
        "greedy": True, "max_new_tokens": args.max_new_tokens,
        "runs": {name: {k: v for k, v in row.items() if k != "out"} for name, row in best.items()},
        "ratios": {"after_vs_before": round(before["seconds"] / after["seconds"], 2),
                   "after_vs_before_cpu_time": round(before["cpu_seconds"] / after["cpu_seconds"], 2)},
        "same_answers": agreement,
    }


def markdown(result: dict) -> str:
    lines = [f"Trait `{result['trait']}`, greedy, {result['threads']} thread(s), best of {result['repeats']} "
             f"alternating runs; before = `{result['before']}`; {result['date'][:10]}.", "",
             "| code | seconds | CPU seconds |", "|---|---:|---:|"]
    for name, row in result["runs"].items():
        lines.append(f"| {name} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} |")
    same = "; ".join(f"{stage}: {a['same']} of {a['rows']} answers the same" for stage, a in
                     result["same_answers"].items())
    ratios = result["ratios"]
    lines += ["", f"Today's code is {ratios['after_vs_before']:.2f}x the code before the engine in wall time, "
                  f"{ratios['after_vs_before_cpu_time']:.2f}x in CPU time; {same}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
