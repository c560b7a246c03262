"""A trait run on disk, and its first stage: generation with capture
(resumable, in shards; on one process or Ray). Later stages write into the
same folder: judging (actlab.traits.judging), vectors (.fitting), steering
(.steering), monitoring (.monitor); actlab.run_trait runs them all.

    manifest.json               format "actlab.traits": trait, model, generation settings
    answers-NNNNN.parquet       row, polarity, pair, system, question, prompt, answer,
                                n_prompt_tokens, n_answer_tokens, finished
    acts-NNNNN.parquet          row, pooling, layer, activation (fixed_size_list<float32>[d_model]):
                                one row per answer, pooling and layer
    judgements/<judge>/chunk-NNNNN.parquet   each judge's saved scores (answer_sha256, score, reason)
    scores.parquet              row, score, reason, decision, kept; the judge and the keep rule in its
                                schema metadata (actlab.judge, actlab.keep)
    vectors/<method>.safetensors  "layer_<L>": (d_model,), from the train split
    vectors/metadata.json       what the vectors are, and the best layer per method
    evaluation.parquet          layer, method, accuracy, auroc, cohens_d, n_test_pos, n_test_neg

Layer L is block L's output (blocks.L.hook_resid_post = HF hidden_states[L + 1]).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load

from ..errors import ActlabError
from ..generation import GenerationConfig, GenerationRunConfig, render_prompt
from ..generation.run import GenerateJob, read_activations
from ..inputs import Records
from ..models import Model, ModelSpec
from ..results import summary_html
from ..runs.manifest import Run, RunKind, register_run_kind
from ..runs.runner import RunControl, run_job
from ..runs.shards import read_shards
from ..storage import read_parquet, run_path
from .definitions import Trait

TRAITS_FORMAT = "actlab.traits"
DEFAULT_POOLINGS = ("response_mean", "response_first:5", "prompt_last", "prompt_mean")
# Prompts per shard, one generate call each, so at most this many slots (runs begun with the earlier 64
# resume with --shard-size 64).
TRAIT_SHARD_SIZE = 256
TRAIT_SAMPLING = GenerationConfig(max_new_tokens=48, temperature=0.7, top_p=0.9)  # generate_trait_run's default


class TraitRun(Run):
    """A trait run read back: answers, pooled activations, judge scores,
    vectors and their evaluation, as far as the stages have run. Its main
    table (to_arrow): the answers with their judge scores when judged."""

    FORMAT: ClassVar[str] = TRAITS_FORMAT

    @property
    def trait(self) -> Trait:
        return Trait(**self.settings["trait"])

    def answers(self) -> pa.Table:
        """row, polarity, pair, system, question, prompt, answer, token counts, finished."""
        return read_shards(self.path, self.manifest["shards"])

    def activations(self, pooling: str) -> dict[int, np.ndarray]:
        """layer -> (rows, d) for one pooling, rows in run order."""
        return read_activations(self, pooling)

    def scores(self) -> pa.Table:
        """row, score, reason, decision, kept (after judging)."""
        return self._table("scores.parquet", "judge the answers first (actlab traits vectors does)")

    def evaluation(self) -> pa.Table:
        """layer, method, accuracy, auroc, cohens_d, held-out counts (after vectors_run)."""
        return self._table("evaluation.parquet", "run `actlab traits vectors` first")

    def steering(self) -> pa.Table:
        """layer, coeff, question, answer, score, reason (after steer_sweep; its method and where in the
        schema metadata)."""
        return self._table("steering.parquet", "run `actlab traits steer` first")

    def vectors(self, method: str = "mean_diff") -> dict[int, torch.Tensor]:
        """{block: (d_model,) vector} of one method (after vectors_run)."""
        path = self.path / "vectors" / f"{method}.safetensors"
        if not path.exists():
            raise ActlabError(f"no {method} vectors in {self.path}; run `actlab traits vectors` first",
                              param="method")
        return {int(k.split("_")[1]): v for k, v in load(path.read_bytes()).items()}

    def _table(self, name: str, fix: str) -> pa.Table:
        if not (self.path / name).exists():
            raise ActlabError(f"{self.path} has no {name} yet; {fix}")
        return read_parquet(self.path / name)

    def to_arrow(self) -> pa.Table:
        """The answers, with their judge scores when judged."""
        table = self.answers()
        if (self.path / "scores.parquet").exists():
            table = table.join(self.scores(), "row")
        return table.sort_by("row")

    def _repr_html_(self) -> str:
        stages = [name for name in ("scores.parquet", "vectors", "evaluation.parquet", "steering.parquet")
                  if (self.path / name).exists()]
        return summary_html("TraitRun", self.summary_rows() + [
            ("trait", self.trait.name), ("answers", str(self.answers().num_rows)),
            ("layers", str(self.settings["layers"])), ("stages done", ", ".join(["generate"] + stages))])


register_run_kind(RunKind(TRAITS_FORMAT, "a trait run", "traits generate", TraitRun,
                          derived=("vectors", "judgements", "figures", "analysis")))


def trait_records(trait: Trait) -> Records:
    """The trait's pos and neg prompts as records: the user turn as the text,
    polarity, pair, system (the instruction) and question as fields."""
    prompts = trait.prompts()
    fields = {name: [getattr(p, name) for p in prompts] for name in ("polarity", "pair", "system", "question")}
    return Records.of([p.user for p in prompts], **fields)


@dataclass
class TraitGenerateJob(GenerateJob):
    """Trait generation: a generation run (actlab.generation.run.GenerateJob)
    of the trait's records, each prompt rendered with its own system message
    (the pos or neg instruction), written as a trait run whose settings
    also name the trait. Sampling seeds row i by (seed, i), so any shard
    split samples the same."""

    trait: Trait | None = None
    every_block: bool = False  # capture every block's output (the model decides how many)
    FORMAT: ClassVar[str] = TRAITS_FORMAT

    def layers(self, model: Model) -> list[int]:
        return list(range(model.n_layers)) if self.every_block else self.cfg.layers

    def prompts(self, tokenizer, rows: Records) -> list[str]:
        return [render_prompt(tokenizer, text, system) for text, system in zip(rows.texts, rows.fields["system"])]

    def settings(self, model: Model, worker) -> dict:
        return {"trait": asdict(self.trait), **super().settings(model, worker)}


def generate_trait_run(model: Model | ModelSpec | str, trait: Trait, out_dir: str | Path,
                       layers: Sequence[int] | None = None, poolings: Sequence[str] = DEFAULT_POOLINGS,
                       cfg: GenerationConfig | None = None, control: RunControl | None = None) -> Path:
    """Answers to every pos / neg prompt with pooled activations at `layers`
    (default: every block), written shard by shard; a rerun resumes.
    `control`: a RunControl (shard_size: prompts per shard, default
    TRAIT_SHARD_SIZE; runner="ray" with ray=RayConfig(...) for a cluster)."""
    run = control or RunControl()
    capture = GenerationRunConfig(layers=list(layers or []), poolings=list(poolings), generation=cfg or TRAIT_SAMPLING)
    job = TraitGenerateJob(trait_records(trait), run_path(out_dir), capture, run.shards(TRAIT_SHARD_SIZE), trait,
                           every_block=layers is None)
    run_job(model, job, run)
    return job.out
