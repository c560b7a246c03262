"""A contrast run: the prompt and both continuations of every pair through the
engine in one forward pass per batch, each requested SAE encoding its hook's
residual (at the last token, or averaged over the continuation's own tokens)
and computing every per-text metric on the device.

    manifest.json          format "actlab.contrast": model, SAEs, position, noise, pairs source
    shard-NNNNN.parquet    pairs [i * shard_size, ...): one row per text x layer, the metric
                           columns, and the residual, reconstruction, centroid and principal
                           axis as fixed_size_list<float32>[d_model] columns
    texts.parquet          every shard's rows without the vectors
    pairs.parquet          one row per pair x layer: centroid drift and axis twist between the
                           prompt and each continuation and between the continuations, the
                           cross-layer cosine, and each metric's difference (second - first)

Statistics and detection (stats.parquet, detection.parquet) and the report
are written by actlab.report.contrast, which reads this run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping

import numpy as np
import pyarrow as pa
import torch

from ..activations import ExtractStats, column_matrix, summary_html, vector_column
from ..engine import ExtractConfig, Extractor, OnBatch, Progress
from ..errors import ActlabError
from ..hooks import FINAL_NORM, lm_logits
from ..pooling import Pooling
from ..runs.activations import model_settings
from ..runs.atomic import write_parquet_atomic
from ..runs.job import ShardJob, ShardWriter
from ..runs.manifest import Run, RunKind, finish_run, read_manifest, register_run_kind
from ..runs.runner import run_job
from ..runs.shards import ShardPlan, read_shards, shard_name
from ..saes import SAE, default_saes
from ..saes.features import features_config, name_saes
from ..storage import read_parquet, run_path
from ..tokens import tokenize
from .metrics import angle_deg, noise, shape_class, text_metrics
from .pairs import PROMPT, Pairs

if TYPE_CHECKING:
    from ..models import Model

CONTRAST_FORMAT = "actlab.contrast"
METRICS = ("l0", "recon_error", "recon_rel_error", "gini", "energy", "l2", "sphericity", "elongation",
           "eigen_entropy", "eigen_entropy_norm", "participation_ratio", "misalignment_deg", "stability_jaccard",
           "top50_entropy")
VECTORS = ("residual", "reconstruction", "centroid", "axis")
POSITIONS = ("last", "continuation")


@dataclass
class ContrastConfig:
    """What the contrast pass measures (batching is the ExtractConfig's)."""

    position: str = field(default="last", metadata={
        "help": "last (the last real token) or continuation (the mean over the continuation's own tokens; the "
                "prompt alone over its own)."})
    noise: float = field(default=0.1, metadata={"help": "Noise scale for stability: relative to |x| (0.1: a noise "
                                                        "of 10% of the residual's norm), or absolute sigma."})
    absolute_noise: bool = field(default=False, metadata={"help": "Read --noise as an absolute per-dimension sigma."})
    draws: int = field(default=8, metadata={"help": "Noisy copies per text for stability."})
    seed: int = field(default=0, metadata={"help": "Seed of the noise (row by row: batching changes no draw)."})
    shard_size: int = field(default=256, metadata={"help": "Pairs per shard."})
    score: bool = field(default=False, metadata={
        "help": "Also the model's log-probability of each continuation given its prompt (the same pass, the LM "
                "head at the continuation's positions only), to split results by what the model prefers."})

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ActlabError(f"position must be last or continuation, not '{self.position}'", param="position")
        if self.draws < 1 or self.noise < 0 or self.shard_size < 1:
            raise ActlabError("draws >= 1, noise >= 0 and shard_size >= 1, please", param="draws")


def text_rows(pairs: Pairs, lo: int, hi: int) -> tuple[list[str], list[int], list[str]]:
    """The texts of pairs [lo, hi), pair-major (prompt, first, second, prompt, ...),
    with each text's pair index and condition."""
    texts, owners, conditions = [], [], []
    for i in range(lo, hi):
        for condition in pairs.conditions:
            texts.append(pairs.text(condition, i))
            owners.append(i)
            conditions.append(condition)
    return texts, owners, conditions


def unequal_lengths(model: "Model", pairs: Pairs, cfg: ExtractConfig) -> int:
    """Pairs whose two continuations differ in token count after the prompt
    (a difference that length alone could explain)."""
    _, first, second = pairs.conditions
    lengths = {c: tokenize(model.tokenizer, [pairs.text(c, i) for i in range(len(pairs))], cfg.prepend_bos).lengths
               for c in (first, second)}
    return sum(a != b for a, b in zip(lengths[first], lengths[second]))


def continuation_starts(model: "Model", texts: list[str], prompts: list[str], conditions: list[str],
                        cfg: ExtractConfig) -> list[int]:
    """Each text's first token of its own continuation: after the prompt's tokens
    (their common prefix, should a merge cross the boundary); a prompt alone
    starts after its BOS."""
    full = tokenize(model.tokenizer, texts, cfg.prepend_bos, cfg.max_length)
    alone = tokenize(model.tokenizer, prompts, cfg.prepend_bos, cfg.max_length)
    starts = []
    for ids, prompt_ids, condition in zip(full.ids, alone.ids, conditions):
        if condition == PROMPT:
            starts.append(min(int(full.has_bos), len(ids) - 1))
            continue
        common = next((i for i, (a, b) in enumerate(zip(ids, prompt_ids)) if a != b), min(len(ids), len(prompt_ids)))
        if common >= len(ids):
            raise ActlabError(f"a continuation has no tokens of its own (truncated by max_length?): {texts[0][:60]}",
                              param="max_length")
        starts.append(common)
    return starts


class ContrastSink:
    """One SAE at its hook: pooled residual -> code, reconstruction, noisy codes
    -> every metric, written into the shard's host arrays at the batch's rows.
    Rerunning a batch (after an out-of-memory split) rewrites the same rows."""

    def __init__(self, name: str, sae: SAE, layer_index: int, n_rows: int, d: int, text_ids: np.ndarray,
                 cfg: ContrastConfig):
        self.name, self.sae, self.layer_index, self.cfg, self.text_ids = name, sae, layer_index, cfg, text_ids
        self.metrics = {metric: np.full(n_rows, np.nan) for metric in METRICS}
        self.vectors = {vector: np.zeros((n_rows, d), np.float32) for vector in VECTORS}

    def consume(self, hidden: torch.Tensor, batch) -> None:
        x = batch.plan.apply(hidden)  # (B, d) float32
        f, x_hat = self.sae.reconstruct(x)  # (B, d_sae), (B, d)
        rows = batch.dest.numpy()
        generators = [torch.Generator().manual_seed(int(self.cfg.seed * 1_000_003 + self.text_ids[r] * 97 +
                                                        self.layer_index)) for r in rows]
        eps = noise(x, generators, self.cfg.draws, self.cfg.noise, relative=not self.cfg.absolute_noise)  # (B, K, d)
        noisy = self.sae.encode((x[:, None] + eps).reshape(-1, x.shape[-1])).reshape(len(x), self.cfg.draws, -1)
        metrics, geo = text_metrics(x, f, x_hat, self.sae.W_dec, noisy)
        for metric, values in metrics.items():
            self.metrics[metric][rows] = values.cpu().numpy()
        for vector, values in zip(VECTORS, (x, x_hat, geo.centroid, geo.axis)):
            self.vectors[vector][rows] = values.float().cpu().numpy()

    def mark(self) -> None:
        return None

    def rollback(self, mark) -> None:
        return None

    def end_batch(self) -> None:
        return None

    def finish(self) -> None:
        return None


class ScoreSink:
    """At the final norm: each text's log-probability of its continuation given
    its prompt, sum over the continuation's tokens of log p(token | before),
    from the LM head at those positions only (NaN for a prompt alone)."""

    def __init__(self, hf_model, n_rows: int, starts: np.ndarray):
        self.hf_model, self.starts = hf_model, starts  # starts[i]: text i's first continuation token, -1: none
        self.logprob = np.full(n_rows, np.nan)

    def consume(self, hidden: torch.Tensor, batch) -> None:
        width = hidden.shape[1]
        flat, owner = [], []
        for k, (row, column, length) in enumerate(zip(batch.rows, batch.padded.starts, batch.padded.lengths)):
            start = int(self.starts[row])
            if start >= 1:  # the logits at position p score the token at p + 1
                flat.append(k * width + int(column) + torch.arange(start - 1, int(length) - 1))
                owner.append(torch.full((int(length) - start,), k))
        if not flat:
            return
        flat, owner = torch.cat(flat).to(hidden.device), torch.cat(owner).to(hidden.device)
        logp = torch.log_softmax(lm_logits(self.hf_model, hidden.reshape(-1, hidden.shape[-1])[flat]).float(), -1)
        targets = batch.padded.input_ids.reshape(-1)[flat + 1]
        token_logp = logp.gather(-1, targets[:, None])[:, 0].double()  # (N,)
        per_row = torch.zeros(len(batch.rows), dtype=torch.float64, device=hidden.device).index_add_(0, owner,
                                                                                                    token_logp)
        scored = sorted(set(owner.tolist()))
        self.logprob[batch.dest.numpy()[scored]] = per_row[scored].cpu().numpy()

    def mark(self) -> None:
        return None

    def rollback(self, mark) -> None:
        return None  # a rerun batch rewrites the same rows

    def end_batch(self) -> None:
        return None

    def finish(self) -> None:
        return None


class ContrastExtractor(Extractor):
    """An Extractor whose hooks feed ContrastSinks, one per SAE, and (scoring)
    a ScoreSink at the final norm."""

    def __init__(self, model: "Model", saes: Mapping[str, SAE], cfg: ExtractConfig, contrast: ContrastConfig,
                 text_ids: np.ndarray, starts: np.ndarray | None = None):
        self.saes, self.contrast, self.text_ids, self.starts = saes, contrast, text_ids, starts
        if contrast.score:
            cfg = ExtractConfig.of(cfg, hooks=[*cfg.hooks, FINAL_NORM])
        super().__init__(model, cfg)
        self.layers = {name: i for i, name in enumerate(self.saes)}

    def make_sinks(self, n_rows: int) -> dict[str, list]:
        sinks: dict[str, list] = {hook: [] for hook in self.hook_names}
        for name, sae in self.saes.items():
            sinks[sae.cfg.hook_name].append(ContrastSink(name, sae, self.layers[name], n_rows, self.model.d_model,
                                                         self.text_ids, self.contrast))
        if self.contrast.score:
            sinks[FINAL_NORM].append(ScoreSink(self.model.hf_model, n_rows, self.starts))
        return sinks

    def make_result(self, sinks: dict[str, list], **fields) -> dict:
        every = [sink for group in sinks.values() for sink in group]
        scores = [sink.logprob for sink in every if isinstance(sink, ScoreSink)]
        return {"sinks": [s for s in every if isinstance(s, ContrastSink)],
                "logprob": scores[0] if scores else None, **fields}


def layer_of(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else -1


def shard_table(result: dict, pairs: Pairs, owners: list[int], conditions: list[str]) -> pa.Table:
    parts = []
    for sink in result["sinks"]:
        n = len(owners)
        columns = {"pair_id": pa.array([pairs.ids[i] for i in owners]), "pair_index": pa.array(owners, pa.int64()),
                   "domain": pa.array([pairs.domains[i] for i in owners]),
                   "condition": pa.array(conditions),
                   "layer": pa.array(np.full(n, layer_of(sink.sae.cfg.hook_name)), pa.int32()),
                   "hook": pa.array([sink.sae.cfg.hook_name] * n), "sae": pa.array([sink.name] * n),
                   "n_tokens": pa.array(result["n_tokens"].numpy(), pa.int32())}
        columns.update({metric: pa.array(values, pa.float64()) for metric, values in sink.metrics.items()})
        if result["logprob"] is not None:
            columns["logprob"] = pa.array(result["logprob"], pa.float64())
        columns["shape"] = pa.array([shape_class(s, e) for s, e in zip(sink.metrics["sphericity"],
                                                                       sink.metrics["elongation"])])
        columns.update({vector: vector_column(values) for vector, values in sink.vectors.items()})
        parts.append(pa.table(columns))
    return pa.concat_tables(parts)


@dataclass
class ContrastWorker:
    """What one model copy builds once: the named SAEs and their extraction config."""

    model: "Model"
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

    def worker(self, model: "Model") -> ContrastWorker:
        named = name_saes(self.saes if self.saes is not None else default_saes(model.name), model.device)
        return ContrastWorker(model, named, features_config(named, self.extract))

    def settings(self, model: "Model", worker: ContrastWorker) -> dict:
        pairs = self.pairs
        settings = {"model": model_settings(model), "saes": {n: s.cfg.hook_name for n, s in worker.saes.items()},
                    "sae_sources": {n: s.cfg.source for n, s in worker.saes.items()}, "contrast": asdict(self.cfg),
                    **worker.extract.settings(), "pairs": {"n_pairs": len(pairs), "conditions": pairs.conditions,
                                                          "separator": pairs.separator, "sources": pairs.sources}}
        settings.pop("pooling")
        return settings

    def extras(self, model: "Model", worker: ContrastWorker) -> dict:
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
            return result["stats"]
        return process

    def complete(self, manifest: dict, totals: ExtractStats, session: dict, **extras) -> dict:
        """texts.parquet and pairs.parquet from the shards, then the manifest."""
        names = self.plan.names()
        table = with_subdomains(read_shards(self.out, names), self.pairs)
        write_parquet_atomic(self.out / "texts.parquet", table.drop_columns(list(VECTORS)))
        write_parquet_atomic(self.out / "pairs.parquet", pair_table(table, self.pairs.conditions))
        return finish_run(self.out, manifest, names, table.num_rows, session, **extras)


def with_subdomains(table: pa.Table, pairs: Pairs) -> pa.Table:
    """The table with each row's pair's subdomain (the seed's inner `domain`;
    null where a record has none) after its domain."""
    subdomains = pairs.subdomains or [None] * len(pairs)
    column = pa.array([subdomains[i] for i in table.column("pair_index").to_pylist()], pa.string())
    if "subdomain" in table.column_names:
        table = table.drop_columns(["subdomain"])
    return table.add_column(table.column_names.index("domain") + 1, "subdomain", column)


def contrast_run(model: "Model", pairs: Pairs, saes=None, out_dir: str | Path = "runs/contrast",
                 cfg: ContrastConfig | None = None, extract: ExtractConfig | None = None,
                 overwrite: bool = False, progress: Progress | None = None, runner: str = "local",
                 ray=None) -> Path:
    """The pass over every pair (resumable, in shards of pairs), then
    texts.parquet and pairs.parquet. runner="ray" runs the shards on a Ray
    cluster (`ray`: a RayConfig; the model is reloaded there by its name)."""
    job = ContrastJob(pairs, run_path(out_dir), cfg or ContrastConfig(), saes, extract)
    run_job(model, job, overwrite, progress, runner, ray)
    return job.out


def pair_table(table: pa.Table, conditions: list[str]) -> pa.Table:
    """Per pair and layer: centroid drift and axis twist (degrees) from the
    prompt to each continuation and between the continuations; the cosine
    between this layer's reconstruction and the previous layer's (the shared
    residual space) per condition; each metric's difference, second - first."""
    _, first, second = conditions
    condition, layer = np.asarray(table.column("condition").to_pylist()), table.column("layer").to_numpy()
    pair_index = table.column("pair_index").to_numpy()
    layers = sorted(set(layer.tolist()))

    def rows(c: str, at: int) -> np.ndarray:  # this condition's rows at this layer, in pair order
        chosen = np.flatnonzero((condition == c) & (layer == at))
        return chosen[np.argsort(pair_index[chosen], kind="stable")]

    vectors = {v: torch.from_numpy(column_matrix(table.column(v)).astype(np.float64)) for v in VECTORS}
    parts = []
    for k, at in enumerate(layers):
        index = {c: rows(c, at) for c in conditions}
        part = table.take(index[PROMPT]).select(["pair_id", "pair_index", "domain", "subdomain", "layer", "hook",
                                                 "sae"])
        columns: dict[str, np.ndarray] = {}
        for name, (u, v) in {f"drift_{first}": (PROMPT, first), f"drift_{second}": (PROMPT, second),
                             "drift_between": (first, second)}.items():
            columns[name] = angle_deg(vectors["centroid"][index[u]], vectors["centroid"][index[v]]).numpy()
            columns[name.replace("drift", "twist")] = angle_deg(vectors["axis"][index[u]], vectors["axis"][index[v]],
                                                                unsigned=True).numpy()
        for c in conditions:
            current = vectors["reconstruction"][index[c]]
            previous = vectors["reconstruction"][rows(c, layers[k - 1])] if k else None
            columns[f"cross_layer_cos_{c}"] = (torch.cosine_similarity(current, previous, dim=-1).numpy()
                                               if previous is not None else np.full(len(current), np.nan))
        columns["cross_layer_cos_diff"] = columns[f"cross_layer_cos_{second}"] - columns[f"cross_layer_cos_{first}"]
        if "logprob" in table.column_names:
            logprob = table.column("logprob").to_numpy()
            columns[f"logprob_{first}"], columns[f"logprob_{second}"] = logprob[index[first]], logprob[index[second]]
        for metric in METRICS:
            values = table.column(metric).to_numpy()
            columns[f"{metric}_diff"] = values[index[second]] - values[index[first]]
        for name, values in columns.items():
            part = part.append_column(name, pa.array(values, pa.float64()))
        if "logprob" in table.column_names:  # which continuation the model itself finds likelier
            prefers = np.where(columns[f"logprob_{first}"] >= columns[f"logprob_{second}"], first, second)
            part = part.append_column("prefers", pa.array(prefers.tolist()))
        parts.append(part)
    return pa.concat_tables(parts)


class ContrastRun(Run):
    """A contrast run read back: the per-text and per-pair tables, and the
    vectors (residual per text and layer) for probes."""

    def __init__(self, path: str | Path):
        self.path = run_path(path)
        self.manifest = read_manifest(self.path, CONTRAST_FORMAT)

    def texts(self) -> pa.Table:
        return read_parquet(self.path / "texts.parquet")

    def pairs(self) -> pa.Table:
        return read_parquet(self.path / "pairs.parquet")

    def vectors(self, name: str = "residual", columns: tuple[str, ...] = ("pair_index", "condition", "layer")):
        """(table of `columns`, (rows, d_model) matrix of one vector column)."""
        table = read_shards(self.path, self.manifest["shards"], columns=[*columns, name])
        return table.select(list(columns)), column_matrix(table.column(name))

    def to_pandas(self):
        return self.texts().to_pandas()

    def _repr_html_(self) -> str:
        pairs = self.settings["pairs"]
        return summary_html("ContrastRun", self.summary_rows() + [
            ("pairs", str(pairs["n_pairs"])), ("conditions", ", ".join(pairs["conditions"])),
            ("SAEs", ", ".join(f"{n} ({h})" for n, h in self.settings["saes"].items())),
            ("position", self.settings["contrast"]["position"])])


register_run_kind(RunKind(CONTRAST_FORMAT, "a contrast run", "contrast", ContrastRun,
                          derived=("analysis", "figures")))
