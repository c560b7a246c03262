"""The steering sweep of a trait run: its neutral questions answered with
coeff * v added at a layer, for each coefficient, every answer judged
(RUN/steering.parquet, RUN/steering.png)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import plots
from ..errors import ActlabError
from ..generation import GenerationConfig, Steering, generate, render_prompt
from ..models import Model
from ..runs.atomic import write_bytes_atomic, write_parquet_atomic
from .fitting import steering_layer
from .judges import Judge
from .runs import TRAIT_SAMPLING, TraitRun
from .vectors import VECTOR_METHODS


@dataclass
class SteerConfig:
    """A steering sweep: where, how strongly and on which questions."""

    layer: int | None = field(default=None, metadata={
        "help": "Block to steer (default: of the layers with held-out AUROC >= 0.9, the one nearest the middle)."})
    coeffs: list[float] = field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0], metadata={
        "comma": True, "help": "Multiples of the pos-neg mean distance at the layer, comma-separated."})
    method: str = field(default="mean_diff", metadata={"help": "The vector method: mean_diff, probe, pca_diff."})
    where: str = field(default="all", metadata={"help": "all positions, or answer tokens only."})
    questions: int | None = field(default=None, metadata={"help": "Use the first N questions."})
    max_new_tokens: int = field(default=TRAIT_SAMPLING.max_new_tokens, metadata={
        "help": "New tokens per steered answer (greedy)."})

    def __post_init__(self):
        self.coeffs = [float(c) for c in self.coeffs]
        if not self.coeffs:
            raise ActlabError("give at least one steering coefficient", param="coeffs")
        if self.where not in ("all", "answer"):
            raise ActlabError(f"where must be all or answer, not '{self.where}'", param="where")
        if self.method not in VECTOR_METHODS:
            raise ActlabError(f"unknown vector method '{self.method}'; use {', '.join(VECTOR_METHODS)}",
                              param="method")
        if self.questions is not None and self.questions < 1:
            raise ActlabError(f"questions must be at least 1, not {self.questions}", param="questions")
        GenerationConfig(max_new_tokens=self.max_new_tokens)  # validates it


def steer_sweep(model: Model, run: str | Path, judge: Judge, cfg: SteerConfig | None = None) -> pa.Table:
    """The trait's questions with no instruction, answered (greedy) with
    coeff * v added at the layer, for each coefficient, all in one continuous
    batch (each row steered by its own coefficient); every answer judged.
    v is the method's direction scaled to the length of that layer's mean
    difference, so coeff 1 moves an activation by the distance between the
    pos and neg means. Written to RUN/steering.parquet (layer, coeff,
    question, answer, score, reason), with the score-per-coefficient plot in
    RUN/steering.png."""
    cfg = cfg or SteerConfig()
    trait_run = TraitRun(run)
    method = cfg.method
    layer = steering_layer(run, method) if cfg.layer is None else cfg.layer
    vectors = trait_run.vectors(method)
    if layer not in vectors:
        raise ActlabError(f"no {method} vector for layer {layer}; this run has layers {sorted(vectors)}",
                          param="layer")
    scale = trait_run.vectors("mean_diff")[layer].norm() if method != "mean_diff" else vectors[layer].norm()
    v = vectors[layer] / vectors[layer].norm() * scale
    questions = trait_run.trait.questions
    if not questions:
        raise ActlabError("steering needs neutral questions; this natural trait gives none (add 'questions')")
    questions = questions[:cfg.questions] if cfg.questions else questions
    # every (coefficient, question) row in one continuous batch, each row with its own steering
    grid = [(coeff, question) for coeff in cfg.coeffs for question in questions]
    prompts = {q: render_prompt(model.tokenizer, q) for q in questions}
    gens = generate(model, [prompts[q] for _, q in grid], cfg=GenerationConfig(max_new_tokens=cfg.max_new_tokens),
                    steering=[Steering(layer, v, coeff, cfg.where) for coeff, _ in grid])
    judgements = judge.judge([(q, answer) for (_, q), answer in zip(grid, gens.answers)])
    rows = [{"layer": layer, "coeff": coeff, "question": q, "answer": answer, "score": j.score, "reason": j.reason}
            for (coeff, q), answer, j in zip(grid, gens.answers, judgements)]
    table = pa.Table.from_pylist(rows)
    write_parquet_atomic(trait_run.path / "steering.parquet", table)
    title = f"{trait_run.path.name}: layer {layer}, {method}"
    write_bytes_atomic(trait_run.path / "steering.png", plots.steering_sweep(sweep_summary(table), title))
    return table


def sweep_summary(table: pa.Table) -> list[dict]:
    """Mean judge score per coefficient over the scored answers."""
    out = []
    for coeff in sorted(set(table.column("coeff").to_pylist())):
        scores = [s for c, s in zip(table.column("coeff").to_pylist(), table.column("score").to_pylist())
                  if c == coeff and s is not None]
        out.append({"coeff": coeff, "mean_score": float(np.mean(scores)) if scores else None,
                    "n_scored": len(scores)})
    return out
