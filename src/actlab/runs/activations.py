"""Activation runs: `extract_run` writes one, `ActivationRun` reads it.

    manifest.json          settings (model and its weights hash, the extraction
                           settings, the input and its sha256), shards, timings
    shard-NNNNN.parquet    input rows [i * shard_size, ...) in Activations.to_arrow's
                           schema: pooled, one row per text (text_id, id / label /
                           category, n_tokens, one fixed_size_list<float32>[d] column
                           per hook); per token ('all'), one row per token (text_id,
                           position, token_id, token, the hooks)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow.parquet as pq
import torch

from ..activations import Activations, ExtractStats, column_matrix
from ..engine import ExtractConfig, Extractor, Progress
from ..inputs import Records
from ..models import peak_memory_bytes
from ..tokens import offsets, tokenizer_adds_bos
from .atomic import write_parquet_atomic
from .fingerprint import file_sha256
from .manifest import Run, RunKind, finish_run, read_manifest, register_run_kind, start_run
from .shards import ShardPlan, read_shards, run_shards, shard_name

if TYPE_CHECKING:
    from ..models import Model

FORMAT = "actlab.activations"
DEFAULT_SHARD_SIZE = 2048


def input_settings(records: Records) -> dict:
    """The input as a manifest records it: its source (and the file's sha256
    and text field), its size and its optional fields."""
    info: dict = {}
    if records.source is not None:
        info["path"] = records.source
        if Path(records.source).is_file():
            info["sha256"] = file_sha256(records.source)
            info["text_field"] = records.text_field
    return dict(info, n_texts=len(records), fields=sorted(records.fields))


def model_settings(model: "Model") -> dict:
    return {"id": model.name, "weights_sha256": model.weight_hash, "architecture": model.architecture,
            "n_layers": model.n_layers, "d_model": model.d_model, "dtype": model.dtype}


def engine_settings(model: "Model", extractor: Extractor, records: Records, shard_size: int) -> dict:
    """What a run's rows depend on; a resumed run must match them exactly."""
    cfg = extractor.cfg
    return {"model": model_settings(model), **cfg.settings(), "hooks": extractor.hook_names,
            "widths": extractor.widths, "max_length": extractor.max_length,
            "has_bos": tokenizer_adds_bos(model.tokenizer) if cfg.prepend_bos is None else cfg.prepend_bos,
            "shard_size": shard_size, "input": input_settings(records)}


def extraction_run(out: Path, extractor: Extractor, records: Records, format: str, settings: dict,
                   write_shard: Callable[[int, object, int, int], None], overwrite: bool = False,
                   progress: Progress | None = None) -> dict:
    """Run `extractor` shard by shard over `records` into `out` (resumable),
    `write_shard(index, result, lo, hi)` writing each shard's files, its
    marker shard_name(index) last. Returns the complete manifest."""
    manifest = start_run(out, format, settings, overwrite)
    plan = ShardPlan(len(records), settings["shard_size"])
    if manifest.get("complete"):
        return manifest
    if progress:
        progress.start(plan.rows_left(out))
    started = time.perf_counter()

    def process(index: int, lo: int, hi: int) -> ExtractStats:
        result = extractor(records.texts[lo:hi], on_batch=progress.advance if progress else None)
        write_shard(index, result, lo, hi)
        return result.stats

    totals = ExtractStats(0, 0, 0, 0.0)
    for stats in run_shards(out, plan, process):
        totals.add(stats)
    totals.seconds = time.perf_counter() - started
    totals.peak_memory_bytes = peak_memory_bytes(extractor.model.device)
    session = {"device": str(extractor.model.device), "seconds": round(totals.seconds, 3),
               "texts": totals.n_texts, "tokens": totals.n_tokens, "tokens_per_s": round(totals.tokens_per_s, 1),
               "padding_waste": round(totals.padding_waste, 4), "peak_memory_bytes": totals.peak_memory_bytes}
    n_rows = sum(pq.read_metadata(out / name).num_rows for name in plan.names())
    return finish_run(out, manifest, plan.names(), n_rows, session, batching=extractor.cfg.batching(),
                      n_truncated=manifest.get("n_truncated", 0) + totals.n_truncated)


def extract_run(model: "Model", records: Records, out_dir: str | Path, cfg: ExtractConfig,
                shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
                progress: Progress | None = None) -> Path:
    """Extract cfg.hooks for every record into a resumable run directory
    (open it with actlab.open_run)."""
    out = Path(out_dir)
    extractor = Extractor(model, cfg)
    settings = engine_settings(model, extractor, records, shard_size)

    def write_shard(index: int, acts: Activations, lo: int, hi: int) -> None:
        fields = {role: values[lo:hi] for role, values in records.fields.items()}
        write_parquet_atomic(out / shard_name(index), acts.to_arrow(lo, fields))

    extraction_run(out, extractor, records, FORMAT, settings, write_shard, overwrite, progress)
    return out


@dataclass
class ActivationRun(Activations, Run):
    """An activation run read back: the Activations interface, plus the run's
    `path`, `manifest`, `settings` and `model()`; `fields` holds the input's
    id / label / category (also in metadata["fields"])."""

    path: Path = None
    manifest: dict = None

    @classmethod
    def open(cls, path: str | Path) -> "ActivationRun":
        run = Path(path)
        manifest = read_manifest(run, FORMAT)
        settings = manifest["settings"]
        table = read_shards(run, manifest["shards"])
        values = {hook: torch.from_numpy(column_matrix(table.column(hook)).copy()) for hook in settings["hooks"]}
        fields: dict = {}
        if "position" in table.column_names:
            n_tokens = np.bincount(table.column("text_id").to_numpy(), minlength=settings["input"]["n_texts"])
            per_token = dict(offsets=offsets(n_tokens), tokens=table.column("token").to_pylist(),
                             token_ids=torch.from_numpy(table.column("token_id").to_numpy().astype(np.int64)))
        else:
            n_tokens = table.column("n_tokens").to_numpy()
            per_token = {}
            fields = {role: table.column(role).to_pylist() for role in settings["input"]["fields"]}
        return cls(values, pooling=settings["pooling"], n_tokens=torch.from_numpy(n_tokens.astype(np.int64)),
                   has_bos=settings.get("has_bos", False), metadata={"fields": fields}, path=run,
                   manifest=manifest, **per_token)

    @property
    def fields(self) -> dict[str, list]:
        return self.metadata["fields"]

    def summary_rows(self) -> list[tuple[str, str]]:
        return Run.summary_rows(self) + Activations.summary_rows(self)


ACTIVATIONS = register_run_kind(RunKind(FORMAT, "an actlab run (activations)", "extract", ActivationRun.open,
                                        derived=("analysis", "figures")))
