"""Benchmarks: side-by-side timings written to benchmarks/results/*.json and
summarised in docs/benchmarks.md. They live in the repository, not in the
actlab wheel; `actlab bench ...` (actlab.cli.bench) runs them from a checkout.

A benchmark that runs a part in a fresh process starts it as
`python -m benchmarks.<worker>` with `worker_env()`, which puts the
repository on the worker's import path."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository


def worker_env(**extra: str) -> dict:
    """This process's environment, the repository first on PYTHONPATH, plus `extra`."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
