"""Generation runs: `generate_run` writes one, `GenerationRun` reads it.

    manifest.json                settings (model, generation, what is captured
                                 and steered, the input), shards, timings
    answers-NNNNN.parquet        row, id / label / category, prompt, answer,
                                 n_prompt_tokens, n_answer_tokens, finished,
                                 projection_<vectors>_<layer> (with projections:
                                 one float per answer token)
    acts-NNNNN.parquet           row, pooling, layer, activation (d_model floats)

A shard is done when its answers file exists (written after its acts);
a rerun resumes at the first shard not done. Row i samples with the counter
(seed, i, step), so the shard split never changes an answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pyarrow as pa
import torch

from ..engine import OnBatch
from ..errors import ActlabError
from ..inputs import Records, RecordsLike, as_records
from ..results import ExtractStats, column_matrix, summary_html, vector_column
from ..runs.atomic import write_parquet_atomic
from ..runs.job import RecordsJob, ShardWriter
from ..runs.manifest import Run, RunKind, finish_run, input_settings, model_settings, register_run_kind
from ..runs.runner import RunControl, run_job
from ..runs.shards import read_shards, shard_name
from ..storage import StorePath, run_path
from .api import Generations, RunSlice, generate, render_prompt
from .config import STEERING_PLACES, GenerationConfig, Steering
from .files import EditConfig, FileVector
from .taps import parse_generation_pooling

if TYPE_CHECKING:
    from ..models import Model, ModelSpec

FORMAT = "actlab.generations"
GENERATION_SHARD_SIZE = 256


@dataclass
class GenerationRunConfig:
    """What a generation run asks, captures and steers; with `generation`
    (GenerationConfig), how it answers."""

    layers: list[int] = field(default_factory=list, metadata={
        "comma": True, "help": "Blocks whose outputs are pooled while generating, e.g. 7,15 (default: none)."})
    poolings: list[str] = field(default_factory=lambda: ["response_mean"], metadata={
        "flag": "--pooling", "help": "response_mean, response_first:K, prompt_last or prompt_mean; repeatable."})
    system: str | None = field(default=None, metadata={"help": "A system message before every prompt."})
    chat_template: bool = field(default=True, metadata={
        "flag": "--chat-template/--no-chat-template",
        "help": "Render each text as a user message with the tokenizer's chat template (else the text is the prompt)."})
    steer: FileVector | None = field(default=None, metadata={
        "help": "Add coeff x the file's layer vector at that block's output (None: no steering)."})
    steer_where: str = field(default="all", metadata={"help": "Steer at all positions, or answer tokens only."})
    project: list[FileVector] = field(default_factory=list, metadata={
        "help": "Every answer token's projection onto each vector, in column FileVector.column."})
    edits: EditConfig = field(default_factory=EditConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self):
        self.layers, self.poolings = [int(x) for x in self.layers], list(self.poolings)
        if not self.poolings:
            raise ActlabError("give at least one pooling", param="poolings")
        for spec in self.poolings:
            parse_generation_pooling(spec)
        if self.steer_where not in STEERING_PLACES:
            raise ActlabError(f"steer_where must be all or answer, not '{self.steer_where}'", param="steer_where")
        if self.system is not None and not self.chat_template:
            raise ActlabError("a system message needs the chat template; keep the template or drop the system "
                              "message", param="system")
        self.project = list(self.project)
        self.steering()  # the files exist and hold the vectors
        self.projections()

    def steering(self) -> Steering | None:
        if self.steer is None:
            return None
        return Steering(self.steer.layer, self.steer.load("steer"), self.steer.coeff, self.steer_where)

    def projections(self) -> dict[str, tuple[int, torch.Tensor]]:
        """Column name -> (layer, vector), of each projection."""
        out = {}
        for vector in self.project:
            if vector.column in out:
                raise ActlabError(f"the projection list gives column {vector.column} twice; drop one",
                                  param="project")
            out[vector.column] = (vector.layer, vector.load("project"))
        return out

    def prompt(self, tokenizer, text: str) -> str:
        return render_prompt(tokenizer, text, self.system) if self.chat_template else text

    def settings(self) -> dict:
        """What the answers depend on (a rerun resumes only with these equal)."""
        steer = f"{self.steer.path}:{self.steer.layer}:{self.steer.coeff:g}" if self.steer else None
        return {"generation": self.generation.settings(), "layers": self.layers, "poolings": self.poolings,
                "system": self.system, "chat_template": self.chat_template, "steer": steer,
                "steer_where": self.steer_where, "project": [f"{v.path}:{v.layer}" for v in self.project],
                **({"edits": self.edits.settings()} if self.edits else {})}


@dataclass
class GenerateJob(RecordsJob):
    """A generation run as a job (actlab.runs.job): shards of the records,
    each answered with pooled activations captured while generating."""

    cfg: GenerationRunConfig
    shard_size: int = GENERATION_SHARD_SIZE
    FORMAT: ClassVar[str] = FORMAT
    MARKER: ClassVar[str] = "answers"

    def settings(self, model: "Model", worker) -> dict:
        return {"model": model_settings(model), **self.cfg.settings(), "layers": self.layers(model),
                "shard_size": self.shard_size, "input": input_settings(self.records)}

    def layers(self, model: "Model") -> list[int]:
        """The blocks whose outputs are pooled (the config's)."""
        return self.cfg.layers

    def prompts(self, tokenizer, rows: Records) -> list[str]:
        """The rendered prompts of a shard's rows (the config's chat template and system message)."""
        return [self.cfg.prompt(tokenizer, text) for text in rows.texts]

    def worker(self, model: "Model"):
        steering = self.cfg.steering()
        for layer in self.layers(model):
            if not 0 <= layer < model.n_layers:
                raise ActlabError(f"layer {layer} is outside 0..{model.n_layers - 1} for this model", param="layers")
        if steering is not None:
            steering.check_model(model.n_layers, model.d_model)
        by_layer: dict[int, list[torch.Tensor]] = {}
        columns = {}  # column name -> (layer, the vector's row in that layer's directions)
        for name, (layer, vector) in self.cfg.projections().items():
            columns[name] = (layer, len(by_layer.setdefault(layer, [])))
            by_layer[layer].append(vector)
        edits = self.cfg.edits.interventions(model.device)
        return model, steering, edits, {layer: torch.stack(vs) for layer, vs in by_layer.items()}, columns

    def shard_writer(self, worker, on_batch: OnBatch | None = None) -> ShardWriter:
        model, steering, edits, directions, columns = worker
        layers = self.layers(model)

        def process(index: int, lo: int, hi: int) -> ExtractStats:
            started, rows = time.perf_counter(), self.records.slice(lo, hi)
            prompts = self.prompts(model.tokenizer, rows)
            gens = generate(model, prompts, layers, self.cfg.poolings, self.cfg.generation, steering,
                            interventions=edits, directions=directions, within=RunSlice(lo, on_batch))
            if layers:
                write_parquet_atomic(self.out / shard_name(index, "acts"), activation_table(gens.pooled, lo))
            table = answer_table(gens, lo, rows.fields)
            for name, (layer, k) in columns.items():
                values = [v[:, k] for v in gens.projections[layer]]
                table = table.append_column(name, pa.array(values, pa.list_(pa.float32())))
            write_parquet_atomic(self.out / shard_name(index, "answers"), table)
            n_tokens = sum(map(len, gens.prompt_ids)) + sum(map(len, gens.answer_ids))
            return ExtractStats(len(prompts), n_tokens, 0, time.perf_counter() - started)
        return process

    def complete(self, manifest: dict, totals: ExtractStats, session: dict, **extras) -> dict:
        return finish_run(self.out, manifest, self.plan.names(), self.plan.n_rows, session,
                          batching=self.cfg.generation.batching())


def answer_table(gens: Generations, first_row: int, fields: dict[str, list] | None = None) -> pa.Table:
    """One row per prompt: row, the input's fields, prompt, answer, token counts, finished."""
    n = len(gens)
    columns = {"row": pa.array(np.arange(first_row, first_row + n), pa.int64()), **(fields or {}),
               "prompt": gens.prompts, "answer": gens.answers,
               "n_prompt_tokens": pa.array([len(x) for x in gens.prompt_ids], pa.int32()),
               "n_answer_tokens": pa.array([len(x) for x in gens.answer_ids], pa.int32()),
               "finished": gens.finished}
    return pa.table(columns)


def activation_table(pooled: dict[str, dict[int, torch.Tensor]], first_row: int) -> pa.Table:
    """Pooled activations in long form: row, pooling, layer, activation."""
    parts = []
    for pooling, by_layer in pooled.items():
        for layer, values in by_layer.items():
            n = len(values)
            parts.append(pa.table({"row": pa.array(np.arange(first_row, first_row + n), pa.int64()),
                                   "pooling": pa.array([pooling] * n, pa.string()),
                                   "layer": pa.array(np.full(n, layer), pa.int32()),
                                   "activation": vector_column(values.numpy())}))
    return pa.concat_tables(parts)


def read_activations(run: Run, pooling: str) -> dict[int, np.ndarray]:
    """layer -> (rows, d) for one pooling of a run with acts shards, rows in run order."""
    poolings = run.settings["poolings"]
    if pooling not in poolings:
        raise ActlabError(f"this run pooled {', '.join(poolings)}, not '{pooling}'", param="pooling")
    table = read_shards(run.path, run.manifest["shards"], "acts", filters=[("pooling", "=", pooling)])
    table = table.sort_by("row")
    layers = table.column("layer").to_numpy()
    return {layer: column_matrix(table.column("activation").filter(pa.array(layers == layer)))
            for layer in run.settings["layers"]}


class GenerationRun(Run):
    """A generation run read back: its answers (the main table) and pooled activations."""

    FORMAT: ClassVar[str] = FORMAT

    def answers(self) -> pa.Table:
        """row, the input's fields, prompt, answer, n_prompt_tokens, n_answer_tokens, finished."""
        return read_shards(self.path, self.manifest["shards"]).sort_by("row")

    def activations(self, pooling: str = "response_mean") -> dict[int, np.ndarray]:
        """layer -> (rows, d_model) for one pooling, rows in run order."""
        if not self.settings["layers"]:
            raise ActlabError(f"{self.path} captured no layers; rerun with --layers", param="layers")
        return read_activations(self, pooling)

    def to_arrow(self) -> pa.Table:
        return self.answers()

    def _repr_html_(self) -> str:
        return summary_html("GenerationRun", self.summary_rows() + [
            ("answers", str(self.manifest["n_rows"])), ("layers", str(self.settings["layers"])),
            ("poolings", ", ".join(self.settings["poolings"]))])


register_run_kind(RunKind(FORMAT, "a generation run", "generate", GenerationRun))


def generate_run(model: "Model | ModelSpec | str", records: RecordsLike,
                 out_dir: str | Path | StorePath, cfg: GenerationRunConfig | GenerationConfig | None = None,
                 control: RunControl | None = None) -> Path:
    """An answer to every record's text (rendered with the chat template
    unless cfg.chat_template is False), with pooled activations at
    cfg.layers, written shard by shard; a rerun resumes. `control`: a
    RunControl (shard_size, default GENERATION_SHARD_SIZE;
    runner="ray" with ray=RayConfig(...) for a cluster)."""
    if isinstance(cfg, GenerationConfig):
        cfg = GenerationRunConfig(generation=cfg)
    records = as_records(records)
    run = control or RunControl()
    job = GenerateJob(records, run_path(out_dir), cfg or GenerationRunConfig(), run.shards(GENERATION_SHARD_SIZE))
    run_job(model, job, run)
    return job.out

