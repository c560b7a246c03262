"""Extraction runs on disk: manifest.json plus atomically written Parquet shards.

Layout of a run directory:
    manifest.json          settings, model and input hashes, timings, shard list
    shard-00000.parquet    input rows [0, shard_size), and so on

Pooled runs: one row per text with columns text_id (int64, 0-based input
index), the optional id / label / category, n_tokens (int32), and one
fixed-size list<float32>[d] column per hook, named by the hook.
Per-token runs (pooling 'all'): one row per token with text_id, position
(int32, index in the tokenized text), token_id (int32), token (string), and
the hook columns.

Each shard covers a fixed range of input rows and is renamed into place only
when complete, so rerunning an interrupted command skips finished shards and
ends with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import __version__
from .activations import Activations, ExtractStats
from .engine import Extractor
from .errors import ActlabError
from .inputs import Records
from .progress import ExtractProgress, console
from .tokens import tokenizer_adds_bos

FORMAT = "actlab.activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def activation_table(acts: Activations, text_ids: np.ndarray, fields: dict[str, list]) -> pa.Table:
    """One shard's Arrow table (see the module docstring for the schema)."""
    columns: dict[str, pa.Array] = {}
    if acts.offsets is None:
        columns["text_id"] = pa.array(text_ids, pa.int64())
        for role, values in fields.items():
            columns[role] = pa.array(values)
        columns["n_tokens"] = pa.array(acts.n_tokens.numpy(), pa.int32())
    else:
        counts = acts.n_tokens.numpy()
        columns["text_id"] = pa.array(np.repeat(text_ids, counts), pa.int64())
        columns["position"] = pa.array(np.concatenate([np.arange(c) for c in counts]), pa.int32())
        columns["token_id"] = pa.array(acts.token_ids.numpy(), pa.int32())
        columns["token"] = pa.array(acts.tokens, pa.string())
    for hook, values in acts.values.items():
        columns[hook] = vector_column(values.numpy())
    return pa.table(columns)


def vector_column(values: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) float32 -> an Arrow fixed_size_list<float32>[d] column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), values.shape[1])


def column_matrix(column: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """A fixed_size_list<float32>[d] column -> (n, d) float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy().reshape(-1, column.type.list_size)


def engine_settings(model, extractor: Extractor, records: Records, shard_size: int,
                    input_info: dict | None) -> dict:
    """What a run's rows depend on; a resumed run must match them exactly."""
    return {
        "model": {"id": model.name, "weights_sha256": model.weight_hash,
                  "architecture": model.architecture, "n_layers": model.n_layers,
                  "d_model": model.d_model, "dtype": model.dtype},
        "hooks": extractor.hook_names,
        "widths": extractor.widths,
        "pooling": extractor.pooling.spec,
        "include_bos": extractor.pooling.include_bos,
        "prepend_bos": extractor.prepend_bos,
        "has_bos": tokenizer_adds_bos(model.tokenizer) if extractor.prepend_bos is None else extractor.prepend_bos,
        "max_length": extractor.max_length,
        "shard_size": shard_size,
        "input": dict(input_info or {}, n_texts=len(records), fields=sorted(records.fields)),
    }


def run_shards(extractor: Extractor, records: Records, out: Path, settings: dict, write_shard,
               kind: str = FORMAT, overwrite: bool = False, progress: bool | None = None) -> dict:
    """The resumable loop: shard i covers input rows [i * shard_size, ...);
    `write_shard(index, result, lo, hi)` must write shard_name(index) last and
    atomically, since its existence marks the shard done. Returns the manifest."""
    manifest = open_manifest(out, settings, overwrite, kind)
    if manifest.get("complete"):
        if progress is not False:
            console.print(f"{out} is already complete; nothing to do")
        return manifest
    shard_size = settings["shard_size"]
    n_shards = max(1, -(-len(records) // shard_size))
    todo = [i for i in range(n_shards) if not (out / shard_name(i)).exists()]
    started = time.perf_counter()
    totals = ExtractStats(0, 0, 0, 0.0)
    remaining = sum(min(shard_size, len(records) - i * shard_size) for i in todo)
    with ExtractProgress(remaining, enabled=progress) as bar:
        for index in todo:
            lo, hi = index * shard_size, min((index + 1) * shard_size, len(records))
            result = extractor(records.texts[lo:hi], on_batch=bar.advance)
            write_shard(index, result, lo, hi)
            _accumulate(totals, result.stats)
    from .models import peak_memory_bytes

    totals.seconds = time.perf_counter() - started
    totals.peak_memory_bytes = peak_memory_bytes(extractor.model.device)
    sessions = manifest.get("timings", {})
    sessions[f"session_{len(sessions)}"] = {
        "device": str(extractor.model.device), "seconds": round(totals.seconds, 3),
        "texts": totals.n_texts, "tokens": totals.n_tokens,
        "tokens_per_s": round(totals.tokens_per_s, 1), "padding_waste": round(totals.padding_waste, 4),
        "peak_memory_bytes": totals.peak_memory_bytes}
    manifest.update(
        complete=True, shards=[shard_name(i) for i in range(n_shards)], timings=sessions,
        n_rows=sum(pq.read_metadata(out / shard_name(i)).num_rows for i in range(n_shards)),
        n_truncated=manifest.get("n_truncated", 0) + totals.n_truncated)
    bar.print_summary(totals)
    return manifest


def extract_run(model, records: Records, hooks: Sequence[str], out_dir: str | Path,
                pooling="last", shard_size: int = 2048, overwrite: bool = False,
                input_info: dict | None = None, progress: bool | None = None,
                **engine_options) -> Path:
    """Extract `hooks` for every record into a resumable run directory."""
    out = Path(out_dir)
    extractor = Extractor(model, hooks, pooling, **engine_options)
    settings = engine_settings(model, extractor, records, shard_size, input_info)

    def write_shard(index: int, acts: Activations, lo: int, hi: int) -> None:
        fields = {k: v[lo:hi] for k, v in records.fields.items()}
        write_parquet_atomic(out / shard_name(index), activation_table(acts, np.arange(lo, hi), fields))

    manifest = run_shards(extractor, records, out, settings, write_shard, FORMAT, overwrite, progress)
    write_json_atomic(out / MANIFEST, manifest)
    return out


def _accumulate(totals: ExtractStats, part: ExtractStats) -> None:
    totals.n_texts += part.n_texts
    totals.n_tokens += part.n_tokens
    totals.n_padded_tokens += part.n_padded_tokens
    totals.n_truncated += part.n_truncated
    totals.oom_splits += part.oom_splits


def open_manifest(out: Path, settings: dict, overwrite: bool, kind: str) -> dict:
    """Start a new run, or check that the existing one has the same settings."""
    path = out / MANIFEST
    settings = json.loads(json.dumps(settings))  # as it reads back from disk
    if path.exists() and not overwrite:
        existing = json.loads(path.read_text())
        before = existing.get("settings", {})
        differing = [key for key in settings if before.get(key) != settings[key]]
        if differing:
            raise ActlabError(f"{out} holds a run with other settings ({', '.join(differing)}); "
                              "pass --overwrite to replace it or choose another --out")
        return existing
    if out.exists() and any(out.iterdir()) and not path.exists() and not overwrite:
        raise ActlabError(f"{out} exists and is not an actlab run; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _remove_outputs(out)
    manifest = {"format": kind, "format_version": FORMAT_VERSION, "actlab_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "settings": settings, "complete": False}
    write_json_atomic(path, manifest)
    return manifest


DERIVED_FOLDERS = ("analysis", "figures", "vectors", "judgements")  # written by later stages of a run


def _remove_outputs(out: Path) -> None:
    """What actlab wrote in a run folder: shards, tables, plots, the report, and
    the later stages' folders, which would otherwise outlive the run they
    came from (vectors steering a regenerated run, say). Other files stay."""
    for stale in [*out.glob("*.parquet"), *out.glob("*.safetensors"), *out.glob("*.png"), *out.glob("report.html")]:
        stale.unlink()
    for folder in DERIVED_FOLDERS:
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)


RUN_KINDS = {FORMAT: ("an actlab run", "extract"), "actlab.features": ("an actlab run", "features"),
             "actlab.traits": ("a trait run", "traits generate")}


def read_manifest(path: str | Path, kind: str = FORMAT) -> dict:
    """A complete run's manifest, or a one-line error naming what is wrong."""
    run = Path(path)
    file = run / MANIFEST
    what, command = RUN_KINDS.get(kind, ("an actlab run", "actlab"))
    if not file.exists():
        raise ActlabError(f"{run} is not {what} (no {MANIFEST}); start one with `actlab {command}`")
    manifest = json.loads(file.read_text())
    if manifest.get("format") != kind:
        raise ActlabError(f"{file} is a '{manifest.get('format')}' run, not '{kind}'")
    if not manifest.get("complete"):
        raise ActlabError(f"run {run} is incomplete; rerun the same `actlab {command}` command to resume it")
    return manifest


def open_run(path: str | Path) -> Activations:
    """The run's activations with the same interface `Model.extract` returns."""
    run = Path(path)
    manifest = read_manifest(run)
    settings = manifest["settings"]
    table = pa.concat_tables([pq.read_table(run / name) for name in manifest["shards"]])
    values = {}
    for hook in settings["hooks"]:
        values[hook] = torch.from_numpy(column_matrix(table.column(hook)).copy())
    text_ids = table.column("text_id").to_numpy()
    per_token = "position" in table.column_names
    if per_token:
        n_tokens = np.bincount(text_ids, minlength=settings["input"]["n_texts"])
        offsets = torch.zeros(len(n_tokens) + 1, dtype=torch.int64)
        offsets[1:] = torch.from_numpy(np.cumsum(n_tokens))
        acts = Activations(values, settings["pooling"], torch.from_numpy(n_tokens), offsets=offsets,
                           tokens=table.column("token").to_pylist(),
                           token_ids=torch.from_numpy(table.column("token_id").to_numpy().astype(np.int64)))
    else:
        acts = Activations(values, settings["pooling"],
                           torch.from_numpy(table.column("n_tokens").to_numpy().astype(np.int64)))
        acts.metadata["fields"] = {role: table.column(role).to_pylist()
                                   for role in settings["input"]["fields"]}
    acts.metadata["manifest"] = manifest
    return acts
