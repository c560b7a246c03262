"""Latents runs: `latents_run` writes one, `LatentsRun` reads it.

    manifest.json             settings: model, SAEs, LatentsConfig's fields, input, shard size
    windows-NNNNN.parquet     the shard's windows: window, text_id, start, token_ids, tokens
    stats|top|sample|hist|minhash-NNNNN.parquet   the shard's partial summary (summary.to_tables)
    codes-NNNNN.parquet       with keep_tokens: window, position, sae, latent, value of every nonzero code
    shard-NNNNN.parquet       the shard's texts (text_id, n_tokens, n_windows), written last: the marker
    latents|top|intervals|histograms|cofiring.parquet   the merged summary (tables.py)
    logit_effects.parquet, neighbours.parquet          from the SAEs' weights (effects.py)
    examples.parquet, pool.parquet                     later: the example windows' token values and a random
                                                       pool of windows (examples.py, for the browser and explain)
    judgements/<key>/, explanations.parquet            later: explanations and their scores (explain.py)
    analysis/, browser/                                later: actlab analyze, actlab latents report

Shards hold partial summaries that merge exactly, so a killed run resumes
and a run on Ray ends with the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..engine import OnBatch
from ..errors import ActlabError
from ..inputs import RecordsLike, as_records
from ..results import ExtractStats
from ..runs import RunControl, register_run_kind
from ..runs.atomic import write_parquet_atomic
from ..runs.job import RecordsJob, ShardWriter
from ..runs.manifest import Run, RunKind, finish_run, input_settings, model_settings
from ..runs.runner import run_job
from ..runs.shards import shard_name
from ..saes.sae import SAEConfig
from ..storage import RunPath, StorePath, read_parquet, run_path
from .config import LatentsConfig
from .effects import logit_effects, neighbours
from .sink import LatentsPass, WindowExtractor, latents_extractor
from .summary import LatentSummary, from_tables, merge, to_tables
from .tables import cofiring_table, histograms_table, intervals_table, latents_table, top_table
from .windows import WINDOW_BITS, cut_windows

if TYPE_CHECKING:
    from ..models import Model, ModelSpec

LATENTS_FORMAT = "actlab.latents"
LATENTS_SHARD_SIZE = 1024
PARTS = ("stats", "top", "sample", "hist", "minhash")
TABLES = ("latents", "top", "intervals", "histograms", "cofiring", "logit_effects", "neighbours")
EXPLANATIONS = "explanations.parquet"  # sae, latent, explanation, score (written by explanation steps)
EXAMPLES = "examples.parquet"  # sae, latent, window, positions, values (written by examples.example_activations)


@dataclass
class LatentsJob(RecordsJob):
    """A latents run as a job (actlab.runs.job)."""

    cfg: LatentsConfig
    shard_size: int
    saes: object = None
    FORMAT: ClassVar[str] = LATENTS_FORMAT

    def worker(self, model: "Model") -> WindowExtractor[LatentsPass]:
        return latents_extractor(model, self.saes, self.cfg)

    def settings(self, model: "Model", extractor: WindowExtractor[LatentsPass]) -> dict:
        return {"model": model_settings(model), "latents": self.cfg.settings(),
                "saes": {name: sae.cfg.settings() for name, sae in extractor.saes.items()},
                "has_bos": extractor.prepend_bos, "content": self.cfg.context - extractor.prepend_bos,
                "shard_size": self.shard_size, "input": input_settings(self.records)}

    def extras(self, model: "Model", extractor: WindowExtractor[LatentsPass]) -> dict:
        """The logit effects and decoder neighbours of every SAE (from weights only)."""
        def decode(token_id: int) -> str:
            return model.token_strings([[token_id]])[0]
        effects = [logit_effects(sae, model.hf_model, self.cfg.logit_tokens, decode, name)
                   for name, sae in extractor.saes.items()]
        near = [neighbours(sae, self.cfg.neighbours, name) for name, sae in extractor.saes.items()]
        return {"logit_effects": pa.concat_tables(effects), "neighbours": pa.concat_tables(near)}

    def shard_writer(self, extractor: WindowExtractor[LatentsPass], on_batch: OnBatch | None = None) -> ShardWriter:
        def tokens_only(n_windows: int, n_tokens: int) -> None:  # the bar counts texts, per shard
            if on_batch:
                on_batch(0, n_tokens)

        def process(index: int, lo: int, hi: int) -> ExtractStats:
            rows = self.records.slice(lo, hi)
            windows = cut_windows(extractor.model.tokenizer, rows.texts, lo, self.cfg.context, extractor.prepend_bos)
            result = extractor.run_windows(windows, tokens_only)
            keys = windows.keys
            write_parquet_atomic(self.out / shard_name(index, "windows"), pa.table({
                "window": pa.array(keys, pa.int64()), "text_id": pa.array(windows.text_id, pa.int64()),
                "start": pa.array(windows.start, pa.int64()),
                "token_ids": pa.array(windows.ids, pa.list_(pa.int32())),
                "tokens": pa.ListArray.from_arrays(pa.array(np.cumsum([0] + lengths_of(windows.ids)), pa.int32()),
                                                   pa.array(extractor.model.token_strings(windows.ids), pa.string()))}))
            self._write_parts(index, result)
            lengths = np.array([len(ids) - windows.has_bos for ids in windows.ids], dtype=np.int64)
            texts = np.arange(lo, hi)
            per_text = np.searchsorted(texts, windows.text_id)
            write_parquet_atomic(self.out / shard_name(index), pa.table({
                "text_id": pa.array(texts, pa.int64()),
                "n_tokens": np.bincount(per_text, weights=lengths, minlength=hi - lo).astype(np.int64),
                "n_windows": np.bincount(per_text, minlength=hi - lo).astype(np.int64)}))  # last: the marker
            if on_batch:
                on_batch(hi - lo, 0)
            stats = result.stats
            stats.n_texts = hi - lo
            return stats
        return process

    def _write_parts(self, index: int, result: LatentsPass) -> None:
        parts = [to_tables(summary, name) for name, summary in result.summaries.items()]
        for part in PARTS:
            write_parquet_atomic(self.out / shard_name(index, part), pa.concat_tables([p[part] for p in parts]))
        if self.cfg.keep_tokens:
            write_parquet_atomic(self.out / shard_name(index, "codes"), pa.concat_tables([pa.table({
                "window": pa.array(key, pa.int64()), "position": pa.array(position, pa.int32()),
                "sae": pa.array([name] * len(key), pa.string()), "latent": pa.array(latent, pa.int32()),
                "value": pa.array(value, pa.float32())}) for name, (key, position, latent, value)
                in result.codes.items()]))

    def complete(self, manifest: dict, totals: ExtractStats, session: dict, **extras) -> dict:
        """Merge every shard's summary, write the run's tables, then the manifest."""
        settings = manifest["settings"]
        names = self.plan.names()
        texts = pa.concat_tables([read_parquet(self.out / name) for name in names])
        n_tokens = int(pc.sum(texts.column("n_tokens")).as_py() or 0)
        outputs: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
        for sae, described in settings["saes"].items():
            summary = merged_summary(self.out, names, sae, described["d_sae"], self.cfg)
            content = settings["content"]
            outputs["latents"].append(latents_table(summary, sae, n_tokens))
            outputs["top"].append(top_table(summary, sae, content))
            outputs["intervals"].append(intervals_table(summary, sae, self.cfg.intervals, content))
            outputs["histograms"].append(histograms_table(summary, sae))
            outputs["cofiring"].append(cofiring_table(summary, sae, self.cfg.cofiring))
        outputs["logit_effects"] = [extras["logit_effects"]]
        outputs["neighbours"] = [extras["neighbours"]]
        for name, tables in outputs.items():
            write_parquet_atomic(self.out / f"{name}.parquet", pa.concat_tables(tables))
        return finish_run(self.out, manifest, names, texts.num_rows, session, n_tokens=n_tokens,
                          n_windows=int(pc.sum(texts.column("n_windows")).as_py() or 0),
                          batching={"batch_size": self.cfg.batch_size, "max_batch_tokens": self.cfg.max_batch_tokens})


def lengths_of(ids: list[list[int]]) -> list[int]:
    return [len(x) for x in ids]


def merged_summary(out: RunPath, names: list[str], sae: str, d_sae: int, cfg: LatentsConfig) -> LatentSummary:
    """One SAE's summary over every shard (merged one shard at a time)."""
    summary = LatentSummary.empty(d_sae)
    for name in names:
        suffix = name.split("-", 1)[1]
        tables = {part: read_parquet(out / f"{part}-{suffix}", filters=[("sae", "=", sae)]) for part in PARTS}
        summary = merge(summary, from_tables(tables, d_sae), cfg)
    return summary



def latents_run(model: "Model | ModelSpec | str", records: RecordsLike, saes=None,
                out_dir: str | Path | StorePath = "runs/latents", cfg: LatentsConfig | None = None,
                control: RunControl | None = None) -> RunPath:
    """Summarise every latent of every SAE (None: the model's default SAEs)
    over a corpus cut into windows, in one pass with the SAEs fused: top
    windows, interval samples, histograms, frequencies, co-firing, logit
    effects and decoder neighbours. Open it with actlab.open_run.
    `control`: a RunControl, as for extract_run."""
    records = as_records(records)
    run = control or RunControl()
    job = LatentsJob(records, run_path(out_dir), cfg or LatentsConfig(), run.shards(LATENTS_SHARD_SIZE), saes)
    run_job(model, job, run)
    return job.out


class LatentsRun(Run):
    """A latents run read back. Every method returns a pyarrow table (call
    .to_pandas()); `sae` may be left out when the run has one SAE. Its main
    table (to_arrow) is every SAE's latents.parquet rows."""

    FORMAT: ClassVar[str] = LATENTS_FORMAT

    def to_arrow(self) -> pa.Table:
        return read_parquet(self.path / "latents.parquet").sort_by([("sae", "ascending"), ("latent", "ascending")])

    @property
    def saes(self) -> list[str]:
        return list(self.settings["saes"])

    def sae_config(self, sae: str | None = None) -> SAEConfig:
        return SAEConfig(**self.settings["saes"][self.sae_name(sae)])

    def sae_name(self, sae: str | None) -> str:
        if sae is None and len(self.saes) == 1:
            return self.saes[0]
        if sae not in self.settings["saes"]:
            raise ActlabError(f"{'pick an SAE' if sae is None else f'no SAE {sae!r} in this run'}; "
                              f"the run has {', '.join(self.saes)}", param="sae")
        return sae

    def table(self, name: str, sae: str | None = None, latent: int | None = None, sort: str = "rank") -> pa.Table:
        """Rows of one SAE (and one latent, when given) of RUN/<name>.parquet, by latent, then `sort`'s
        columns (comma-separated): the one reader of the run's per-latent tables."""
        sae = self.sae_name(sae)
        filters = [("sae", "=", sae)]
        if latent is not None:
            d_sae = self.settings["saes"][sae]["d_sae"]
            if not 0 <= int(latent) < d_sae:
                raise ActlabError(f"latent {latent} is outside 0..{d_sae - 1} of SAE {sae}", param="latent")
            filters.append(("latent", "=", int(latent)))
        table = read_parquet(self.path / f"{name}.parquet", filters=filters)
        keys = [("latent", "ascending")] + [(c, "ascending") for c in sort.split(",") if c in table.column_names]
        return table.sort_by(keys)

    def latents(self, sae: str | None = None) -> pa.Table:
        """One row per latent: count, frequency, mean, max, windows, and
        explanation and score where explanations.parquet holds them."""
        table = self.table("latents", sae)
        if not (self.path / EXPLANATIONS).exists():
            return table
        notes = self.table("explanations", sae).select(["latent", "explanation", "score"])
        return table.join(notes, "latent", join_type="left outer").sort_by("latent")

    def top(self, sae: str | None = None, latent: int = 0) -> pa.Table:
        """The latent's top windows, best first: value, window, text_id, start, position, token_ids, tokens."""
        return self.with_tokens(self.table("top", sae, latent))

    def intervals(self, sae: str | None = None, latent: int = 0) -> pa.Table:
        """Seeded samples of the latent's active windows per decile (lowest first)."""
        return self.with_tokens(self.table("intervals", sae, latent, "decile,rank"))

    def histogram(self, sae: str | None = None, latent: int = 0) -> pa.Table:
        """Active token values per log-spaced bin: bin, lower, upper, count."""
        return self.table("histograms", sae, latent, "bin")

    def logit_effects(self, sae: str | None = None, latent: int = 0) -> pa.Table:
        """The most promoted ("top") and suppressed ("bottom") tokens."""
        return self.table("logit_effects", sae, latent, "side,rank")

    def neighbours(self, sae: str | None = None, latent: int = 0) -> pa.Table:
        """The latents of largest decoder cosine."""
        return self.table("neighbours", sae, latent)

    def cofiring(self, sae: str | None = None, latent: int = 0) -> pa.Table:
        """The latents most often active on the same tokens (MinHash Jaccard)."""
        return self.table("cofiring", sae, latent)

    def explanations(self) -> pa.Table | None:
        """explanations.parquet (every SAE's explained latents and their scores), None before one is written."""
        path = self.path / EXPLANATIONS
        return read_parquet(path) if path.exists() else None

    def example_values(self, sae: str | None, latent: int | None = None) -> dict[tuple[int, int], tuple[list, list]]:
        """{(latent, window): (positions, values)}: every token the latent is
        active on in its example windows, from examples.parquet (actlab latents
        report computes it), empty before that: the one reader of exact values."""
        if not (self.path / EXAMPLES).exists():
            return {}
        filters = [("sae", "=", self.sae_name(sae))] + ([("latent", "=", int(latent))] if latent is not None else [])
        examples = read_parquet(self.path / EXAMPLES, filters=filters)
        return {(j, k): (p, v) for j, k, p, v in zip(*(examples.column(c).to_pylist()
                                                     for c in ("latent", "window", "positions", "values")))}

    def token_values(self, sae: str | None, latent: int, table: pa.Table) -> list[list[float]]:
        """For each row of a top or intervals table of this latent, the
        latent's value at every token of its window: the exact values where
        example_values has them, else only the window's maximum, at its position."""
        known = self.example_values(sae, latent)
        rows = []
        for key, position, value, ids in zip(*(table.column(c).to_pylist()
                                               for c in ("window", "position", "value", "token_ids"))):
            values = [0.0] * len(ids)
            for p, v in zip(*known.get((int(latent), key), ([position], [value]))):
                values[p] = v
            rows.append(values)
        return rows

    def windows(self, keys) -> pa.Table | None:
        """The windows shards' rows (window, text_id, start, token_ids, tokens) of these window keys,
        read from the shards that hold them, sorted by key; None for no keys: the one window reader."""
        keys = np.unique(np.asarray(keys, dtype=np.int64))
        if not len(keys):
            return None
        shards = np.unique((keys >> WINDOW_BITS) // self.settings["shard_size"])
        return pa.concat_tables([read_parquet(self.path / shard_name(int(i), "windows"),
                                              filters=[("window", "in", keys.tolist())])
                                 for i in shards]).sort_by("window")

    def with_tokens(self, table: pa.Table) -> pa.Table:
        """`table` (a window column) with each window's token_ids and tokens."""
        keys = table.column("window").to_numpy()
        windows = self.windows(keys)
        if windows is None:
            return table.append_column("token_ids", pa.array([], pa.list_(pa.int32()))).append_column(
                "tokens", pa.array([], pa.list_(pa.string())))
        where = {k: i for i, k in enumerate(windows.column("window").to_numpy().tolist())}
        rows = pa.array([where[k] for k in keys.tolist()], pa.int64())
        return table.append_column("token_ids", windows.column("token_ids").take(rows)).append_column(
            "tokens", windows.column("tokens").take(rows))

    def summary_rows(self) -> list[tuple[str, str]]:
        return Run.summary_rows(self) + [("texts", str(self.manifest["n_rows"])),
                                         ("tokens", str(self.manifest.get("n_tokens"))),
                                         ("SAEs", ", ".join(self.saes))]


LATENTS = register_run_kind(RunKind(LATENTS_FORMAT, "an actlab run (latents)", "latents", LatentsRun,
                                    derived=("browser",)))
