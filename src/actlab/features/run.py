"""Feature runs: `features_run` writes one, `FeatureRun` reads it. Same
manifest, shard and resume rules as activation runs.

    manifest.json            settings include each SAE's config
    shard-NNNNN.parquet      nonzero features (Features.to_arrow): text_id, [position,] sae,
                             latent, value
    texts-NNNNN.parquet      text_id, text, n_tokens, the optional id / label / category, and
                             (per-token runs) tokens, the token strings
    stats-NNNNN.parquet      per-latent statistics of that shard
    latent_stats.parquet     merged: sae, latent, count, sum, max, argmax_text_id[, argmax_position]

Pooled runs have one (text_id, sae, latent) row per nonzero feature; per-token
runs ('all') add position, the token's index in the tokenized text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..activations.run import DEFAULT_SHARD_SIZE, ActivationRun, ExtractionJob, engine_settings
from ..engine import ExtractConfig
from ..inputs import Records, RecordsLike, as_records
from ..models import Model, ModelSpec
from ..runs.atomic import write_parquet_atomic
from ..runs.manifest import Run, RunKind, register_run_kind
from ..runs.runner import RunControl, run_job
from ..runs.shards import read_shards, shard_name
from ..saes.features import FeatureExtractor, Features, LatentStats, SparseFeatures
from ..saes.sae import SAEConfig
from ..storage import RunPath, StorePath, read_parquet, run_path
from ..tokens import offsets

FEATURES_FORMAT = "actlab.features"


def texts_table(feats: Features, rows: Records, lo: int) -> pa.Table:
    """The shard's texts (rows, whose first is input row lo) and their fields."""
    columns = {"text_id": pa.array(np.arange(lo, lo + len(rows)), pa.int64()),
               "text": pa.array(rows.texts, pa.string()),
               "n_tokens": pa.array(feats.n_tokens.numpy(), pa.int32()),
               **{role: pa.array(values) for role, values in rows.fields.items()}}
    if feats.per_token:  # token strings, for highlighting
        bounds = feats.offsets.tolist()
        columns["tokens"] = pa.array([feats.tokens[a:b] for a, b in zip(bounds, bounds[1:])], pa.list_(pa.string()))
    return pa.table(columns)


def stats_table(feats: Features, lo: int) -> pa.Table:
    parts = []
    for name, stats in feats.latent_stats.items():
        argmax = stats.argmax.numpy()
        active = argmax >= 0
        text_id, position = feats.text_and_position(np.where(active, argmax, 0))
        columns = {"sae": pa.array([name] * len(argmax), pa.string()),
                   "latent": pa.array(np.arange(len(argmax)), pa.int32()),
                   "count": pa.array(stats.count.numpy(), pa.int64()),
                   "sum": pa.array(stats.sum.numpy(), pa.float64()),
                   "max": pa.array(stats.max.numpy(), pa.float32()),
                   "argmax_text_id": pa.array(np.where(active, text_id + lo, -1), pa.int64())}
        if position is not None:
            columns["argmax_position"] = pa.array(np.where(active, position, -1), pa.int32())
        parts.append(pa.table(columns))
    return pa.concat_tables(parts)


def merge_stats(tables: list[pa.Table]) -> pa.Table:
    """Shard statistics -> run statistics; ties keep the earliest shard's argmax."""
    stacked = [t.to_pandas() for t in tables]
    first = stacked[0].copy()
    best = first["max"].to_numpy().copy()
    for other in stacked[1:]:
        first["count"] += other["count"].to_numpy()
        first["sum"] += other["sum"].to_numpy()
        better = other["max"].to_numpy() > best
        best = np.where(better, other["max"].to_numpy(), best)
        for column in [c for c in first.columns if c.startswith("argmax")]:
            first[column] = np.where(better, other[column].to_numpy(), first[column].to_numpy())
    first["max"] = best.astype(np.float32)
    return pa.Table.from_pandas(first, preserve_index=False)


@dataclass
class FeaturesJob(ExtractionJob):
    """An ExtractionJob whose hooks feed SAEs (None: the model's default SAEs);
    shards are sparse features, texts and per-shard latent statistics."""

    saes: object = None
    FORMAT: ClassVar[str] = FEATURES_FORMAT

    def worker(self, model: Model) -> FeatureExtractor:
        return FeatureExtractor(model, self.saes, self.cfg)

    def settings(self, model: Model, extractor: FeatureExtractor) -> dict:
        settings = engine_settings(model, extractor, self.records, self.shard_size)
        settings["saes"] = {name: sae.cfg.settings() for name, sae in extractor.saes.items()}
        return settings

    def write_shard(self, index: int, feats: Features, rows: Records, lo: int) -> None:
        write_parquet_atomic(self.out / f"texts-{index:05d}.parquet", texts_table(feats, rows, lo))
        write_parquet_atomic(self.out / f"stats-{index:05d}.parquet", stats_table(feats, lo))
        write_parquet_atomic(self.out / shard_name(index), feats.to_arrow(lo))  # last: marks done

    def finish(self) -> None:
        stats = [read_parquet(self.out / name) for name in self.plan.names("stats")]
        write_parquet_atomic(self.out / "latent_stats.parquet", merge_stats(stats))


def features_run(model: Model | ModelSpec | str, records: RecordsLike, saes=None,
                 out_dir: str | Path | StorePath = "runs/features", cfg: ExtractConfig | None = None,
                 control: RunControl | None = None) -> RunPath:
    """SAE features of every record, one forward pass per batch for all SAEs
    (None: the default SAEs); open the run with actlab.open_run. `control`:
    a RunControl, as for extract_run."""
    run = control or RunControl()
    job = FeaturesJob(as_records(records), run_path(out_dir), cfg or ExtractConfig(), run.shards(DEFAULT_SHARD_SIZE),
                      saes)
    run_job(model, job, run)
    return job.out



@dataclass
class FeatureRun(Features, Run):
    """A features run read back: the Features interface (sparse features,
    latent statistics, SAE configs), plus the run's `path`, `manifest`,
    `settings` and `model()`; `fields` holds the texts and their id / label /
    category (also in metadata["fields"])."""

    path: RunPath = None
    manifest: dict = None
    FORMAT: ClassVar[str] = FEATURES_FORMAT

    @classmethod
    def open(cls, path: str | Path | StorePath) -> "FeatureRun":
        run, manifest = cls.located(path)
        settings = manifest["settings"]
        table = read_shards(run, manifest["shards"]).combine_chunks()
        texts = read_shards(run, manifest["shards"], "texts")
        stats = read_parquet(run / "latent_stats.parquet").to_pandas()
        n_tokens = texts.column("n_tokens").to_numpy().astype(np.int64)
        rows = table.column("text_id").to_numpy()
        token_rows = None
        if "position" in table.column_names:
            token_rows = offsets(n_tokens)
            rows = token_rows.numpy()[rows] + table.column("position").to_numpy()
        n_rows = int(token_rows[-1]) if token_rows is not None else len(n_tokens)
        sae_column = table.column("sae").cast(pa.string())
        configs, sparse, latent_stats = {}, {}, {}
        for name, described in settings["saes"].items():
            configs[name] = SAEConfig(**described)
            keep = pc.equal(sae_column, name).to_numpy(zero_copy_only=False)
            sparse[name] = SparseFeatures(
                torch.from_numpy(rows[keep].astype(np.int64)),
                torch.from_numpy(table.column("latent").to_numpy()[keep].astype(np.int64)),
                torch.from_numpy(table.column("value").to_numpy()[keep].copy()), n_rows, described["d_sae"])
            own = stats[stats["sae"] == name].sort_values("latent")
            argmax = own["argmax_text_id"].to_numpy()
            if token_rows is not None:  # as in memory: the token row holding the max
                argmax = np.where(argmax >= 0, token_rows.numpy()[argmax.clip(0)] + own["argmax_position"], -1)
            latent_stats[name] = LatentStats(*(torch.from_numpy(np.asarray(v).copy()) for v in
                                               (own["count"], own["sum"], own["max"], argmax)))
        fields = {role: texts.column(role).to_pylist() for role in settings["input"]["fields"]}
        fields["text"] = texts.column("text").to_pylist()
        tokens = texts.column("tokens").combine_chunks().flatten().to_pylist() if token_rows is not None else None
        return cls(configs=configs, sparse=sparse, latent_stats=latent_stats, pooling=settings["pooling"],
                   n_tokens=torch.from_numpy(n_tokens), offsets=token_rows, tokens=tokens,
                   has_bos=settings.get("has_bos", False), metadata={"fields": fields}, path=run, manifest=manifest)

    fields = ActivationRun.fields  # the texts and their id / label / category

    def summary_rows(self) -> list[tuple[str, str]]:
        return Run.summary_rows(self) + Features.summary_rows(self)


FEATURES = register_run_kind(RunKind(FEATURES_FORMAT, "an actlab run (features)", "features", FeatureRun,
                                     derived=("analysis", "figures")))
