"""Activation runs (`actlab extract`): `extract_run` writes one, `ActivationRun` reads it.

    manifest.json          settings (model and its weights hash, the extraction
                           settings, the input and its sha256), shards, timings
    shard-NNNNN.parquet    input rows [i * shard_size, ...) in Activations.to_arrow's
                           schema: pooled, one row per text (text_id, id / label /
                           category, n_tokens, one fixed_size_list<float32>[d] column
                           per hook); per token ('all'), one row per token (text_id,
                           position, token_id, token, the hooks)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ..engine import ExtractConfig, Extractor, OnBatch
from ..inputs import ParquetRecords, Records, RecordsLike, as_records
from ..results import Activations, ExtractStats, column_matrix
from ..runs.atomic import write_parquet_atomic
from ..runs.job import RecordsJob, ShardWriter
from ..runs.manifest import Run, RunKind, finish_run, input_settings, model_settings, register_run_kind
from ..runs.runner import RunControl, run_job
from ..runs.shards import read_shards, shard_name
from ..storage import RunPath, StorePath, parquet_rows, run_path
from ..tokens import offsets, tokenizer_adds_bos

if TYPE_CHECKING:
    from ..models import Model, ModelSpec

FORMAT = "actlab.activations"
DEFAULT_SHARD_SIZE = 2048


def engine_settings(model: "Model", extractor: Extractor, records: Records | ParquetRecords, shard_size: int) -> dict:
    """What a run's rows depend on; a resumed run must match them exactly."""
    cfg = extractor.cfg
    return {"model": model_settings(model), **cfg.settings(), "hooks": extractor.hook_names,
            "widths": extractor.widths, "max_length": extractor.max_length,
            "has_bos": tokenizer_adds_bos(model.tokenizer) if cfg.prepend_bos is None else cfg.prepend_bos,
            "shard_size": shard_size, "input": input_settings(records)}


@dataclass
class ExtractionJob(RecordsJob):
    """An activation run as a job (actlab.runs.job): the records, the config,
    the run folder. FeaturesJob adds the SAEs."""

    cfg: ExtractConfig
    shard_size: int = DEFAULT_SHARD_SIZE
    FORMAT: ClassVar[str] = FORMAT

    def worker(self, model: "Model") -> Extractor:
        return Extractor(model, self.cfg)

    def settings(self, model: "Model", extractor: Extractor) -> dict:
        return engine_settings(model, extractor, self.records, self.shard_size)

    def write_shard(self, index: int, result: Activations, rows: Records, lo: int) -> None:
        write_parquet_atomic(self.out / shard_name(index), result.to_arrow(lo, rows.fields))

    def finish(self) -> None:
        """What a kind writes once every shard is done, before the manifest (features: merged statistics)."""

    def shard_writer(self, extractor: Extractor, on_batch: OnBatch | None = None) -> ShardWriter:
        """process(index, lo, hi): extract and write one shard, its marker last."""
        def process(index: int, lo: int, hi: int) -> ExtractStats:
            rows = self.records.slice(lo, hi)
            result = extractor(rows.texts, on_batch=on_batch)
            self.write_shard(index, result, rows, lo)
            return result.stats
        return process

    def complete(self, manifest: dict, totals: ExtractStats, session: dict, **extras) -> dict:
        """The manifest, written last: every shard's rows, this session's figures."""
        self.finish()
        names = self.plan.names()
        n_rows = sum(parquet_rows(self.out / name) for name in names)
        return finish_run(self.out, manifest, names, n_rows, session, batching=self.cfg.batching(),
                          n_truncated=manifest.get("n_truncated", 0) + totals.n_truncated)


@dataclass
class ActivationRun(Activations, Run):
    """An activation run read back: the Activations interface, plus the run's
    `path`, `manifest`, `settings` and `model()`; `fields` holds the input's
    id / label / category (also in metadata["fields"])."""

    path: RunPath = None
    manifest: dict = None
    FORMAT: ClassVar[str] = FORMAT

    @classmethod
    def open(cls, path: str | Path | StorePath) -> "ActivationRun":
        run, manifest = cls.located(path)
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


ACTIVATIONS = register_run_kind(RunKind(FORMAT, "an actlab run (activations)", "extract", ActivationRun,
                                        derived=("analysis", "figures")))


def extract_run(model: "Model | ModelSpec | str", records: RecordsLike,
                out_dir: str | Path | StorePath, cfg: ExtractConfig, control: RunControl | None = None) -> RunPath:
    """Extract cfg.hooks for every record into a resumable run directory
    (open it with actlab.open_run). `control`: how it runs (RunControl:
    shard_size, overwrite, progress, runner="ray" with ray=RayConfig(...):
    the shards on a Ray cluster, the model reloaded there by its spec)."""
    run = control or RunControl()
    job = ExtractionJob(as_records(records), run_path(out_dir), cfg, run.shards(DEFAULT_SHARD_SIZE))
    run_job(model, job, run)
    return job.out
