"""Feature runs on disk, under the same manifest, atomic-shard and resume rules
as activation runs (actlab.store).

    manifest.json            format "actlab.features"; settings include each SAE's config
    shard-NNNNN.parquet      nonzero features: text_id, [position,] sae, latent, value
    texts-NNNNN.parquet      text_id, text, n_tokens, the optional id / label / category, and
                             (per-token runs) tokens, the token strings
    stats-NNNNN.parquet      per-latent statistics of that shard
    latent_stats.parquet     merged: sae, latent, count, sum, max, argmax_text_id[, argmax_position]

Pooled runs have one (text_id, sae, latent) row per nonzero feature; per-token
runs ('all') add position, the token's index in the tokenized text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..inputs import Records
from ..store import (MANIFEST, engine_settings, read_manifest, run_shards, shard_name,
                     write_json_atomic, write_parquet_atomic)
from .features import FeatureExtractor, Features, LatentStats, SparseFeatures
from .sae import SAEConfig

FEATURES_FORMAT = "actlab.features"


def _text_and_position(rows: np.ndarray, offsets: torch.Tensor | None, lo: int):
    """Global text ids (and positions, per-token runs) of local result rows."""
    if offsets is None:
        return rows + lo, None
    starts = offsets.numpy()
    text = np.searchsorted(starts, rows, side="right") - 1
    return text + lo, rows - starts[text]


def features_table(feats: Features, lo: int) -> pa.Table:
    parts = []
    for name, sparse in feats.sparse.items():
        text_id, position = _text_and_position(sparse.rows.numpy(), feats.offsets, lo)
        columns = {"text_id": pa.array(text_id, pa.int64())}
        if position is not None:
            columns["position"] = pa.array(position, pa.int32())
        columns["sae"] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(text_id), np.int32)),
                                                        pa.array([name]))
        columns["latent"] = pa.array(sparse.latents.numpy(), pa.int32())
        columns["value"] = pa.array(sparse.values.numpy(), pa.float32())
        parts.append(pa.table(columns))
    return pa.concat_tables(parts).unify_dictionaries().combine_chunks()


def stats_table(feats: Features, lo: int) -> pa.Table:
    parts = []
    for name, stats in feats.latent_stats.items():
        argmax = stats.argmax.numpy()
        active = argmax >= 0
        text_id, position = _text_and_position(np.where(active, argmax, 0), feats.offsets, lo)
        columns = {"sae": pa.array([name] * len(argmax), pa.string()),
                   "latent": pa.array(np.arange(len(argmax)), pa.int32()),
                   "count": pa.array(stats.count.numpy(), pa.int64()),
                   "sum": pa.array(stats.sum.numpy(), pa.float64()),
                   "max": pa.array(stats.max.numpy(), pa.float32()),
                   "argmax_text_id": pa.array(np.where(active, text_id, -1), pa.int64())}
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


def features_run(model, records: Records, saes, out_dir: str | Path, pooling="last",
                 shard_size: int = 2048, overwrite: bool = False, input_info: dict | None = None,
                 progress: bool | None = None, **engine_options) -> Path:
    """SAE features of every record, one forward pass per batch for all SAEs."""
    out = Path(out_dir)
    extractor = FeatureExtractor(model, saes, pooling, **engine_options)
    settings = engine_settings(model, extractor, records, shard_size, input_info)
    settings["saes"] = {name: _describe(sae.cfg) for name, sae in extractor.saes.items()}

    def write_shard(index: int, feats: Features, lo: int, hi: int) -> None:
        texts = {"text_id": pa.array(np.arange(lo, hi), pa.int64()),
                 "text": pa.array(records.texts[lo:hi], pa.string()),
                 "n_tokens": pa.array(feats.n_tokens.numpy(), pa.int32()),
                 **{role: pa.array(values[lo:hi]) for role, values in records.fields.items()}}
        if feats.offsets is not None:  # token strings, for highlighting
            bounds = feats.offsets.tolist()
            texts["tokens"] = pa.array([feats.tokens[a:b] for a, b in zip(bounds, bounds[1:])],
                                       pa.list_(pa.string()))
        write_parquet_atomic(out / f"texts-{index:05d}.parquet", pa.table(texts))
        write_parquet_atomic(out / f"stats-{index:05d}.parquet", stats_table(feats, lo))
        write_parquet_atomic(out / shard_name(index), features_table(feats, lo))  # last: marks done

    manifest = run_shards(extractor, records, out, settings, write_shard, FEATURES_FORMAT, overwrite, progress)
    n_shards = len(manifest["shards"])
    merged = merge_stats([pq.read_table(out / f"stats-{i:05d}.parquet") for i in range(n_shards)])
    write_parquet_atomic(out / "latent_stats.parquet", merged)
    write_json_atomic(out / MANIFEST, manifest)
    return out


def _describe(cfg: SAEConfig) -> dict:
    described = cfg.to_dict()
    described.pop("metadata")
    return described


def open_features(path: str | Path) -> Features:
    """A features run as `Features` (sparse features, latent statistics, SAE
    configs; `metadata["fields"]` holds the texts and their id / label / category)."""
    run = Path(path)
    manifest = read_manifest(run, FEATURES_FORMAT)
    settings = manifest["settings"]
    n_shards = len(manifest["shards"])
    table = pa.concat_tables([pq.read_table(run / shard_name(i)) for i in range(n_shards)]).combine_chunks()
    texts = pa.concat_tables([pq.read_table(run / f"texts-{i:05d}.parquet") for i in range(n_shards)])
    stats = pq.read_table(run / "latent_stats.parquet").to_pandas()
    n_tokens = texts.column("n_tokens").to_numpy().astype(np.int64)
    rows = table.column("text_id").to_numpy()
    offsets = None
    if "position" in table.column_names:
        offsets = torch.zeros(len(n_tokens) + 1, dtype=torch.int64)
        offsets[1:] = torch.from_numpy(np.cumsum(n_tokens))
        rows = offsets.numpy()[rows] + table.column("position").to_numpy()
    n_rows = int(offsets[-1]) if offsets is not None else len(n_tokens)
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
        if offsets is not None:  # as in memory: the token row holding the max
            argmax = np.where(argmax >= 0, offsets.numpy()[argmax.clip(0)] + own["argmax_position"], -1)
        latent_stats[name] = LatentStats(*(torch.from_numpy(np.asarray(v).copy()) for v in
                                           (own["count"], own["sum"], own["max"], argmax)))
    fields = {role: texts.column(role).to_pylist() for role in settings["input"]["fields"]}
    fields["text"] = texts.column("text").to_pylist()
    tokens = texts.column("tokens").combine_chunks().flatten().to_pylist() if offsets is not None else None
    return Features(configs, sparse, latent_stats, {}, settings["pooling"], torch.from_numpy(n_tokens),
                    offsets=offsets, tokens=tokens, has_bos=settings.get("has_bos", False),
                    metadata={"manifest": manifest, "fields": fields})
