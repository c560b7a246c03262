"""Patching runs: `patch_run` writes one, `PatchRun` reads it.

    manifest.json              settings (model, the grid, the input), shards, timings
    pairs-NNNNN.parquet        pair, id, clean, corrupted, answer, wrong_answer,
                               clean_tokens, corrupted_tokens, answer_token,
                               wrong_token, metric_clean, metric_corrupted
    effects-NNNNN.parquet      one row per (pair, component, layer, position, head):
                               metric_patched, metric_clean, metric_corrupted,
                               normalized, prob_answer, kl (patching/exact.py)

A shard (PATCH_SHARD_SIZE pairs) is done when its effects file exists
(written after its pairs); a rerun resumes at the first shard not done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa

from ..engine import OnBatch
from ..inputs import Records
from ..results import ExtractStats, summary_html
from ..runs.atomic import write_parquet_atomic
from ..runs.job import RecordsJob, ShardWriter
from ..runs.manifest import Run, RunKind, finish_run, input_settings, model_settings, register_run_kind
from ..runs.runner import RunControl, run_job
from ..runs.shards import read_shards, shard_name
from ..storage import StorePath, run_path
from .config import PatchConfig
from .methods import patch_effects
from .pairs import TokenPair, load_prompt_pairs, tokenize_pairs

if TYPE_CHECKING:
    from ..models import Model, ModelSpec

FORMAT = "actlab.patch"
PATCH_SHARD_SIZE = 16  # pairs per shard: a shard of the built-in pairs, every block and position, is ~10k variants
EFFECT_KEYS = ["method", "component", "layer", "position", "head"]
EFFECT_VALUES = ["metric_patched", "normalized", "prob_answer", "kl"]


@dataclass
class PatchJob(RecordsJob):
    """A patching run as a job (actlab.runs.job): shards of pairs, each
    patched over the whole grid."""

    cfg: PatchConfig
    shard_size: int = PATCH_SHARD_SIZE
    FORMAT: ClassVar[str] = FORMAT
    MARKER: ClassVar[str] = "effects"

    def worker(self, model: "Model") -> tuple["Model", list[TokenPair]]:
        """The model and every pair's tokens (refused before any shard when one is bad)."""
        self.cfg.check(model.n_layers, model.config.num_attention_heads)
        pairs = tokenize_pairs(model.tokenizer, self.records)
        for pair in pairs:
            self.cfg.chosen_positions(len(pair.clean), pair.id)
        return model, pairs

    def settings(self, model: "Model", worker) -> dict:
        return {"model": model_settings(model), "patch": self.cfg.settings(), "shard_size": self.shard_size,
                "input": input_settings(self.records)}

    def shard_writer(self, worker, on_batch: OnBatch | None = None) -> ShardWriter:
        model, pairs = worker

        def process(index: int, lo: int, hi: int) -> ExtractStats:
            started = time.perf_counter()
            effects = patch_effects(model, pairs[lo:hi], self.cfg, lo)
            write_parquet_atomic(self.out / shard_name(index, "pairs"), self.pair_table(model, pairs, effects, lo, hi))
            write_parquet_atomic(self.out / shard_name(index, "effects"), effects)
            forwards = np.bincount(effects.column("pair").to_numpy() - lo, minlength=hi - lo) + 2  # + clean, corrupted
            n_tokens = int(sum(len(p.clean) * k for p, k in zip(pairs[lo:hi], forwards)))
            if on_batch:
                on_batch(hi - lo, n_tokens)
            return ExtractStats(hi - lo, n_tokens, 0, time.perf_counter() - started)
        return process

    def pair_table(self, model: "Model", pairs: list[TokenPair], effects: pa.Table, lo: int, hi: int) -> pa.Table:
        """The shard's pairs, their metrics read from its effects."""
        by_pair = effects.group_by("pair").aggregate([("metric_clean", "max"), ("metric_corrupted", "max")])
        metrics = {p: (c, x) for p, c, x in zip(*(by_pair.column(name).to_pylist() for name in
                                                   ("pair", "metric_clean_max", "metric_corrupted_max")))}
        return pairs_table(model, self.records, pairs, lo, hi, [metrics[i] for i in range(lo, hi)])

    def complete(self, manifest: dict, totals: ExtractStats, session: dict, **extras) -> dict:
        return finish_run(self.out, manifest, self.plan.names(), self.plan.n_rows, session)


def pairs_table(model: "Model", records: Records, pairs: list[TokenPair], lo: int, hi: int,
               metrics: list[tuple[float, float]]) -> pa.Table:
    """Pairs lo..hi: their texts, tokens, answer tokens, and (clean, corrupted) metrics."""
    rows, shard = records.slice(lo, hi), pairs[lo:hi]
    return pa.table({
        "pair": pa.array(range(lo, hi), pa.int64()), "id": [p.id for p in shard],
        "clean": rows.texts, "corrupted": rows.fields["corrupted"], "answer": rows.fields["answer"],
        "wrong_answer": rows.fields["wrong_answer"],
        "clean_tokens": [model.token_strings([p.clean]) for p in shard],
        "corrupted_tokens": [model.token_strings([p.corrupted]) for p in shard],
        "answer_token": [model.tokenizer.decode([p.answer]) for p in shard],
        "wrong_token": [model.tokenizer.decode([p.wrong]) for p in shard],
        "metric_clean": pa.array([m[0] for m in metrics], pa.float32()),
        "metric_corrupted": pa.array([m[1] for m in metrics], pa.float32())})


class PatchRun(Run):
    """A patching run read back: effects per (pair, component, layer,
    position, head), the pairs, and effects averaged over pairs."""

    FORMAT: ClassVar[str] = FORMAT

    def effects(self) -> pa.Table:
        """pair, id, component, layer, position, head, metric_patched,
        metric_clean, metric_corrupted, normalized, prob_answer, kl."""
        return read_shards(self.path, self.manifest["shards"])

    def pairs(self) -> pa.Table:
        """pair, id, the texts, their tokens, answer_token, wrong_token, metric_clean, metric_corrupted."""
        return read_shards(self.path, self.manifest["shards"], "pairs")

    def mean_effects(self) -> pa.Table:
        """Per (component, layer, position, head): the mean over pairs of
        metric_patched, normalized, prob_answer and kl, and n_pairs."""
        table = self.effects()
        means = table.group_by(EFFECT_KEYS, use_threads=False).aggregate(
            [(name, "mean") for name in EFFECT_VALUES] + [("pair", "count")])
        means = means.rename_columns([{f"{v}_mean": v for v in EFFECT_VALUES}.get(n, n) for n in means.column_names])
        means = means.rename_columns(["n_pairs" if n == "pair_count" else n for n in means.column_names])
        return means.sort_by([(key, "ascending") for key in EFFECT_KEYS])

    def to_arrow(self) -> pa.Table:
        return self.effects()

    def _repr_html_(self) -> str:
        patch = self.settings["patch"]
        return summary_html("PatchRun", self.summary_rows() + [
            ("pairs", str(self.manifest["n_rows"])), ("components", ", ".join(patch["components"])),
            ("method", ", ".join(patch["method"]))])


register_run_kind(RunKind(FORMAT, "a patching run", "patch", PatchRun))


def patch_run(model: "Model | ModelSpec | str", pairs: Records | str | Path, out_dir: str | Path | StorePath,
              cfg: PatchConfig | None = None, control: RunControl | None = None) -> Path:
    """Patch every pair (a pairs file, "ioi" for the built-in set, or
    Records from actlab.patching.load_prompt_pairs) over cfg's grid, shard
    by shard; a rerun resumes. `control`: a RunControl (shard_size, default
    PATCH_SHARD_SIZE; runner="ray" with ray=RayConfig(...) for a cluster)."""
    records = pairs if isinstance(pairs, Records) else load_prompt_pairs(pairs)
    run = control or RunControl()
    job = PatchJob(records, run_path(out_dir), cfg or PatchConfig(), run.shards(PATCH_SHARD_SIZE))
    run_job(model, job, run)
    return job.out
