"""A run as a job of shards, and the single-process runner of any job.

A job holds everything its shards need (the inputs, the configs, the run
folder) and is picklable, so that a distributed runner (actlab.runs.ray)
rebuilds it on each worker and runs the very code a single process runs:

    worker = job.worker(model)               once per model copy (an Extractor, the SAEs)
    settings = job.settings(model, worker)   what the rows depend on (the manifest's)
    process = job.shard_writer(worker)       process(index, lo, hi): one shard, written atomically
    job.complete(manifest, totals, session, **job.extras(model, worker))   the manifest, last

Activation, feature, contrast and trait-generation runs are jobs.
"""

from __future__ import annotations

import ctypes
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch

from ..engine import OnBatch, Progress
from ..inputs import ParquetRecords, Records
from ..models import peak_memory_bytes
from ..results import ExtractStats
from ..storage import RunPath
from .atomic import write_json_atomic
from .lock import run_lock
from .manifest import MANIFEST, start_run
from .shards import ShardPlan, run_shards

if TYPE_CHECKING:
    from ..models import Model

ShardWriter = Callable[[int, int, int], ExtractStats]  # process(index, lo, hi) -> the shard's figures


@lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl, Windows): nothing to trim
        return None


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim).
    A shard's tensors leave the heap fragmented; without this a long run's
    resident memory creeps up shard after shard (about 15% from 1 to 16
    shards of a latents run) although what it holds does not grow."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def trimming(process: ShardWriter) -> ShardWriter:
    """`process`, the heap trimmed after each shard (every runner wraps its shard writer in it)."""
    def run(index: int, lo: int, hi: int) -> ExtractStats:
        stats = process(index, lo, hi)
        trim_heap()
        return stats
    return run


class ShardJob(ABC):
    """The interface every run kind's job implements (see the module docstring)."""

    out: RunPath
    FORMAT: ClassVar[str]

    @property
    @abstractmethod
    def plan(self) -> ShardPlan:
        """The run's fixed shards of input rows, and the marker file that says one is done."""

    def texts_left(self) -> int:
        """What the progress bar counts: texts (prompts) in the unfinished shards."""
        return self.plan.rows_left(self.out)

    def worker(self, model: "Model") -> Any:
        """What one model copy builds once and reuses for every shard."""
        return model

    @abstractmethod
    def settings(self, model: "Model", worker: Any) -> dict:
        """What the run's rows depend on: the manifest's settings, compared on resume."""

    def extras(self, model: "Model", worker: Any) -> dict:
        """Manifest entries that need the model but are not settings (not compared on resume)."""
        return {}

    @abstractmethod
    def shard_writer(self, worker: Any, on_batch: OnBatch | None = None) -> ShardWriter:
        """process(index, lo, hi): compute one shard and write it atomically, its marker file last."""

    @abstractmethod
    def complete(self, manifest: dict, totals: ExtractStats, session: dict, **extras) -> dict:
        """What a kind writes once every shard is done, then the manifest, last; returns the manifest."""


@dataclass
class RecordsJob(ShardJob):
    """A job over records (texts and their fields) in shards of
    `shard_size` rows (a field each kind declares with its own default):
    activation, feature, generation and latents runs."""

    records: Records | ParquetRecords
    out: RunPath
    MARKER: ClassVar[str] = "shard"  # shard i is done when MARKER-0000i.parquet exists

    @property
    def plan(self) -> ShardPlan:
        return ShardPlan(len(self.records), self.shard_size, marker=self.MARKER)


def session_record(totals: ExtractStats, device, runner: str, **extra) -> dict:
    """One session's figures, kept in the manifest's timings."""
    return {"runner": runner, "device": str(device), "seconds": round(totals.seconds, 3), "texts": totals.n_texts,
            "tokens": totals.n_tokens, "tokens_per_s": round(totals.tokens_per_s, 1),
            "padding_waste": round(totals.padding_waste, 4) if totals.n_padded_tokens else None,
            "peak_memory_bytes": totals.peak_memory_bytes, **extra}


def run_matrix_paths(manifest: dict, out: RunPath, paths: dict[str, str]) -> dict[str, str]:
    """The CPU matrix paths ("OUTxIN" -> "torch" | "onednn") every process
    of the run computes with: those its manifest recorded when it started,
    else `paths` (its first process's, `Model.matrix_paths`), recorded now.
    `--matmul` decides a new run's paths; a resumed run, and each Ray worker,
    keeps the run's, so that its shards agree with an uninterrupted run's
    within float32 rounding (engine/linears.py)."""
    if "matrix_paths" not in manifest and paths:
        manifest["matrix_paths"] = paths
        write_json_atomic(out / MANIFEST, manifest)
    return manifest.get("matrix_paths", {})


def local_run(model: "Model", job: ShardJob, overwrite: bool = False, progress: Progress | None = None) -> dict:
    """Run a job shard by shard in this process (resumable), holding the run
    folder's lock (a second driver refuses); returns the complete manifest."""
    with run_lock(job.out):
        return _local_run(model, job, overwrite, progress)


def _local_run(model: "Model", job: ShardJob, overwrite: bool, progress: Progress | None) -> dict:
    worker = job.worker(model)
    manifest = start_run(job.out, job.FORMAT, job.settings(model, worker), overwrite)
    if manifest.get("complete"):
        return manifest
    model.take_matrix_paths(run_matrix_paths(manifest, job.out, model.matrix_paths))
    if progress:
        progress.start(job.texts_left(), len(job.plan.todo(job.out)))
    started, totals = time.perf_counter(), ExtractStats(0, 0, 0, 0.0)
    process = trimming(job.shard_writer(worker, progress.advance if progress else None))

    def reported(index: int, lo: int, hi: int) -> ExtractStats:
        stats = process(index, lo, hi)
        if progress:
            progress.shard_done()
        return stats

    for stats in run_shards(job.out, job.plan, reported):
        totals.add(stats)
    totals.seconds = time.perf_counter() - started
    totals.peak_memory_bytes = peak_memory_bytes(model.device)
    session = session_record(totals, model.device, "local", threads=torch.get_num_threads())
    return job.complete(manifest, totals, session, **job.extras(model, worker))
