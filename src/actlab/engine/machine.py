"""What this machine is, and what was measured on it once.

Some choices are made by timing: which matrix path multiplies a weight shape
faster (engine/linears.py). Timing is noisy, so two processes can decide
differently where both choices are close, and then compute different floats:
a killed and resumed run, or Ray workers on one node, would not agree. So such
a decision is measured once per machine and recorded in
`$ACTLAB_HOME/machine.json` under the machine's key (the CPU's model and
matrix ISA, torch's version and the thread count); every later process on the
machine reads it. A changed CPU, torch or thread count is another key, so it
is measured afresh; delete the file to measure everything again.

One process measures while the others wait for it (an exclusive lock on
`machine.json.lock`, where the platform has fcntl), and the record is
replaced whole (a temporary file renamed over it), so a reader never sees
half of one. A record that cannot be read is measured again; where
$ACTLAB_HOME cannot be written, each process measures for itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..default_model import actlab_home

RECORD = "machine.json"
MATRIX_ISA = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # the CPU flags that set its matrix throughput


def describe_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model and which of MATRIX_ISA it has, e.g. "Intel(R) Xeon(R)
    Processor (avx512_bf16 avx512f avx2)": one project's machine is not
    always the same CPU, and these decide its float32 and bfloat16 figures."""
    fields = {}
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    name = (fields.get("model name") or platform.processor() or platform.machine()).replace(",", "")
    flags = set(fields.get("flags", "").split())
    isa = [flag for flag in MATRIX_ISA if flag in flags]
    return f"{name} ({' '.join(isa)})" if isa else name


@functools.lru_cache(maxsize=None)
def _cpu() -> str:
    return describe_cpu()


def machine_key() -> str:
    """What a recorded measurement holds for: CPU, torch version, threads."""
    threads = torch.get_num_threads()
    return f"{_cpu()} | torch {torch.__version__} | {threads} thread{'s' if threads != 1 else ''}"


def recorded(topic: str, name: str, measure: Callable[[], dict]) -> dict:
    """This machine's record of `name` under `topic`; `measure()` makes it
    the first time (one process at a time), and it is kept for every later one."""
    path, key = actlab_home() / RECORD, machine_key()
    try:
        with _exclusive(path.with_name(RECORD + ".lock")):
            record = _read(path)
            entry = record.get(key, {}).get(topic, {}).get(name)
            if entry is None:
                entry = measure()
                record.setdefault(key, {}).setdefault(topic, {})[name] = entry
                _replace(path, record)
    except OSError:  # $ACTLAB_HOME cannot be written: this process decides alone
        return measure()
    return entry


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            import fcntl
        except ImportError:  # no fcntl (Windows): processes measuring at once may decide differently
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _replace(path: Path, record: dict) -> None:
    """Write the record whole, then rename it over the old one (readers
    hold no lock). runs/atomic.py is the run layer's writer; this layer is
    below it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
