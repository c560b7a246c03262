"""A contrast run: shards of pairs through the contrast pass (actlab.contrasts.passes),
resumable, on one process or Ray.

    manifest.json          format "actlab.contrast": model, SAEs, position, noise, pairs source;
                           unequal_token_lengths and duplicate_prompts beside the settings
    shard-NNNNN.parquet    pairs [i * shard_size, ...): one row per text x layer, the metric
                           columns, and the residual, reconstruction, centroid and principal
                           axis as fixed_size_list<float32>[d_model] columns
    texts.parquet          every shard's rows without the vectors, with each pair's subdomain
    pairs.parquet          one row per pair x layer: centroid drift and axis twist between the
                           prompt and each continuation and between the continuations, the
                           cross-layer cosine, and each metric's difference (second - first)

Statistics and detection (stats.parquet, detection.parquet) are
actlab.contrasts.analysis's; the report is actlab.pipelines.build_contrast_report's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from ..engine import ExtractConfig, OnBatch
from ..errors import ActlabError
from ..models import Model, ModelSpec
from ..pooling import Pooling
from ..results import ExtractStats, column_matrix, summary_html
from ..runs.atomic import write_parquet_atomic
from ..runs.job import ShardJob, ShardWriter
from ..runs.manifest import Run, RunKind, finish_run, model_settings, register_run_kind
from ..runs.runner import RunControl, run_job
from ..runs.shards import ShardPlan, read_shards, shard_name
from ..saes import SAE, default_saes
from ..saes.features import features_config, name_saes
from ..storage import read_parquet, run_path
from ..tokens import tokenize
from .config import ContrastConfig
from .pairs import PROMPT, Pairs
from .passes import VECTORS, ContrastExtractor, continuation_starts, text_rows
from .tables import pair_table, shard_table, with_subdomains

CONTRAST_FORMAT = "actlab.contrast"


def unequal_lengths(model: Model, pairs: Pairs, cfg: ExtractConfig) -> int:
    """Pairs whose two continuations differ in token count after the prompt
    (a difference that length alone could explain)."""
    _, first, second = pairs.conditions
    lengths = {c: tokenize(model.tokenizer, [pairs.text(c, i) for i in range(len(pairs))], cfg.prepend_bos).lengths
               for c in (first, second)}
    return sum(a != b for a, b in zip(lengths[first], lengths[second]))


@dataclass
class ContrastWorker:
    """What one model copy builds once: the named SAEs and their extraction config."""

    model: Model
    saes: dict[str, SAE]
    extract: ExtractConfig


@dataclass
class ContrastJob(ShardJob):
    """A contrast run as a job (actlab.runs.job): shards of pairs, each pair's
    texts (prompt, first, second) through one ContrastExtractor pass."""

    pairs: Pairs
    out: Path
    cfg: ContrastConfig = field(default_factory=ContrastConfig)
    saes: object = None  # SAE objects, paths / release ids, a mapping, or None: the model's default SAEs
    extract: ExtractConfig | None = None
    FORMAT: ClassVar[str] = CONTRAST_FORMAT

    @property
    def plan(self) -> ShardPlan:
        return ShardPlan(len(self.pairs), self.cfg.shard_size)

    def texts_left(self) -> int:
        return self.plan.rows_left(self.out) * len(self.pairs.conditions)

    def worker(self, model: Model) -> ContrastWorker:
        named = name_saes(self.saes if self.saes is not None else default_saes(model.name), model.device)
        return ContrastWorker(model, named, features_config(named, self.extract))

    def settings(self, model: Model, worker: ContrastWorker) -> dict:
        pairs = self.pairs
        settings = {"model": model_settings(model), "saes": {n: s.cfg.hook_name for n, s in worker.saes.items()},
                    "sae_sources": {n: s.cfg.source for n, s in worker.saes.items()}, "contrast": self.cfg.settings(),
                    **worker.extract.settings(), "pairs": {"n_pairs": len(pairs), "conditions": pairs.conditions,
                                                          "separator": pairs.separator, "sources": pairs.sources}}
        settings.pop("pooling")
        return settings

    def extras(self, model: Model, worker: ContrastWorker) -> dict:
        return {"unequal_token_lengths": unequal_lengths(model, self.pairs, worker.extract),
                "duplicate_prompts": [d.to_dict() for d in self.pairs.duplicates]}

    def shard_writer(self, worker: ContrastWorker, on_batch: OnBatch | None = None) -> ShardWriter:
        model, pairs, cfg, base = worker.model, self.pairs, self.cfg, worker.extract

        def process(index: int, lo: int, hi: int) -> ExtractStats:
            texts, owners, conditions = text_rows(pairs, lo, hi)
            text_ids = np.arange(lo * len(pairs.conditions), hi * len(pairs.conditions))
            pooling: str | Pooling = "last"
            starts = None
            if cfg.position == "continuation" or cfg.score:
                starts = continuation_starts(model, texts, [pairs.prompts[i] for i in owners], conditions, base)
            if cfg.position == "continuation":
                pooling = Pooling("from", positions=tuple(starts))
            own = None if starts is None else np.where(np.asarray(conditions) == PROMPT, -1, starts)
            extractor = ContrastExtractor(model, worker.saes, ExtractConfig.of(base, pooling=pooling), cfg,
                                          text_ids, own)
            result = extractor(texts, on_batch=on_batch)
            write_parquet_atomic(self.out / shard_name(index), shard_table(result, pairs, owners, conditions))
            return result.stats
        return process

    def complete(self, manifest: dict, totals: ExtractStats, session: dict, **extras) -> dict:
        """texts.parquet and pairs.parquet from the shards, then the manifest."""
        names = self.plan.names()
        table = with_subdomains(read_shards(self.out, names), self.pairs)
        write_parquet_atomic(self.out / "texts.parquet", table.drop_columns(list(VECTORS)))
        write_parquet_atomic(self.out / "pairs.parquet", pair_table(table, self.pairs.conditions))
        return finish_run(self.out, manifest, names, table.num_rows, session, **extras)


def contrast_run(model: Model | ModelSpec | str, pairs: Pairs, saes=None, out_dir: str | Path = "runs/contrast",
                 cfg: ContrastConfig | None = None, extract: ExtractConfig | None = None,
                 control: RunControl | None = None) -> Path:
    """The pass over every pair (resumable, in shards of cfg.shard_size
    pairs), then texts.parquet and pairs.parquet. `control`: a RunControl
    without shard_size (runner="ray" with ray=RayConfig(...): the shards on
    a Ray cluster, the model reloaded there by its spec)."""
    run = control or RunControl()
    if run.shard_size is not None:
        raise ActlabError("a contrast run's shard size is ContrastConfig(shard_size=...) (--shard-size)",
                          param="shard_size")
    job = ContrastJob(pairs, run_path(out_dir), cfg or ContrastConfig(), saes, extract)
    run_job(model, job, run)
    return job.out


class ContrastRun(Run):
    """A contrast run read back: the per-text and per-pair tables, and the
    vectors (residual per text and layer) for probes. Its main table
    (to_arrow): the per-text table."""

    FORMAT: ClassVar[str] = CONTRAST_FORMAT

    def texts(self) -> pa.Table:
        return read_parquet(self.path / "texts.parquet")

    def pairs(self) -> pa.Table:
        return read_parquet(self.path / "pairs.parquet")

    def vectors(self, name: str = "residual", columns: tuple[str, ...] = ("pair_index", "condition", "layer")):
        """(table of `columns`, (rows, d_model) matrix of one vector column)."""
        table = read_shards(self.path, self.manifest["shards"], columns=[*columns, name])
        return table.select(list(columns)), column_matrix(table.column(name))

    def stats(self) -> pa.Table:
        """The paired statistics (after analyze_contrast): one row per metric x layer x domain."""
        return self._analysis("stats.parquet")

    def detection(self) -> pa.Table:
        """Held-out detection (after analyze_contrast): one row per layer x domain x detector."""
        return self._analysis("detection.parquet")

    def _analysis(self, name: str) -> pa.Table:
        if not (self.path / name).exists():
            raise ActlabError(f"{self.path} has no {name} yet; rerun the same `actlab contrast` command (or call "
                              "actlab.contrasts.analysis.analyze_contrast) first")
        return read_parquet(self.path / name)

    def to_arrow(self) -> pa.Table:
        return self.texts()

    def _repr_html_(self) -> str:
        pairs = self.settings["pairs"]
        return summary_html("ContrastRun", self.summary_rows() + [
            ("pairs", str(pairs["n_pairs"])), ("conditions", ", ".join(pairs["conditions"])),
            ("SAEs", ", ".join(f"{n} ({h})" for n, h in self.settings["saes"].items())),
            ("position", self.settings["contrast"]["position"])])


register_run_kind(RunKind(CONTRAST_FORMAT, "a contrast run", "contrast", ContrastRun,
                          derived=("analysis", "figures")))
