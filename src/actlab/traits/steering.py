"""The steering sweep of a trait run: its neutral questions answered with
coeff * v added at a layer, for each layer and coefficient, every answer
judged (RUN/steering.parquet; actlab.pipelines.draw_steering draws it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import ActlabError
from ..generation import EditConfig, GenerationConfig, Steering, generate, render_prompt
from ..judges import Judge
from ..models import Model
from ..runs.atomic import write_parquet_atomic
from .fitting import steering_layer
from .run import TraitRun
from .vectors import VECTOR_METHODS


@dataclass
class SteerConfig:
    """A steering sweep: where, how strongly and on which questions."""

    layers: list[int] = field(default_factory=list, metadata={
        "comma": True, "help": "Blocks to steer, comma-separated; every (layer, coeff, question) goes in one "
                               "continuous batch (default: of the layers with held-out AUROC >= 0.9, the one nearest "
                               "the middle)."})
    coeffs: list[float] = field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0], metadata={
        "comma": True, "help": "Multiples of the pos-neg mean distance at the layer, comma-separated."})
    method: str = field(default="mean_diff", metadata={"help": "The vector method: mean_diff, probe, pca_diff."})
    where: str = field(default="all", metadata={"help": "all positions, or answer tokens only."})
    questions: int | None = field(default=None, metadata={"help": "Use the first N questions."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "New tokens per steered answer (greedy; default: as many as the run's generation)."})
    edits: EditConfig = field(default_factory=EditConfig)  # on every row, steered or not

    def __post_init__(self):
        self.layers = [int(x) for x in self.layers]
        self.coeffs = [float(c) for c in self.coeffs]
        if not self.coeffs:
            raise ActlabError("give at least one steering coefficient", param="coeffs")
        if self.where not in ("all", "answer"):
            raise ActlabError(f"where must be all or answer, not '{self.where}'", param="where")
        VECTOR_METHODS.pick(self.method, param="method")
        if self.questions is not None and self.questions < 1:
            raise ActlabError(f"questions must be at least 1, not {self.questions}", param="questions")
        if self.max_new_tokens is not None:
            GenerationConfig(max_new_tokens=self.max_new_tokens)  # validates it


def steer_sweep(model: Model, run: str | Path, judge: Judge, cfg: SteerConfig | None = None) -> pa.Table:
    """The trait's questions with no instruction, answered (greedy) with
    coeff * v added at each layer, for each coefficient, all in one
    continuous batch (each row steered by its own layer and coefficient;
    coefficient 0 is generated and judged once per question, whatever the
    layer); every answer judged. v is the method's direction scaled to the
    length of that layer's mean difference, so coeff 1 moves an activation
    by the distance between the pos and neg means. Written to
    RUN/steering.parquet (layer, coeff, question, answer, score, reason; the
    method, where and new tokens per answer in its schema metadata,
    actlab.method, actlab.where and actlab.max_new_tokens; cfg.edits, which
    every row gets, in actlab.edits as JSON). Answers are as long as the
    run's generation unless cfg.max_new_tokens says."""
    cfg = cfg or SteerConfig()
    trait_run = TraitRun.open(run)
    method = cfg.method
    layers = cfg.layers or [steering_layer(run, method)]
    vectors = trait_run.vectors(method)
    missing = [layer for layer in layers if layer not in vectors]
    if missing:
        raise ActlabError(f"no {method} vector for layer {missing[0]}; this run has layers {sorted(vectors)}",
                          param="layers")
    lengths = vectors if method == "mean_diff" else trait_run.vectors("mean_diff")
    # each layer's direction at the length of that layer's mean difference
    directions = {layer: vectors[layer] / vectors[layer].norm() * lengths[layer].norm() for layer in layers}
    questions = trait_run.trait.questions
    if not questions:
        raise ActlabError("steering needs neutral questions; this natural trait gives none (add 'questions')")
    questions = questions[:cfg.questions] if cfg.questions else questions
    grid = [(layer, coeff, question) for layer in layers for coeff in cfg.coeffs for question in questions]
    unsteered = lambda layer, coeff, q: (None, 0.0, q) if coeff == 0 else (layer, coeff, q)  # noqa: E731
    distinct = list(dict.fromkeys(unsteered(*row) for row in grid))  # what is generated and judged
    prompts = {q: render_prompt(model.tokenizer, q) for q in questions}
    steerings = [None if layer is None else Steering(layer, directions[layer], coeff, cfg.where)
                 for layer, coeff, _ in distinct]
    max_new_tokens = cfg.max_new_tokens or trait_run.settings["generation"]["max_new_tokens"]
    gens = generate(model, [prompts[q] for _, _, q in distinct], cfg=GenerationConfig(max_new_tokens=max_new_tokens),
                    steering=steerings, interventions=cfg.edits.interventions(model.device))
    judgements = judge.judge([(q, answer) for (_, _, q), answer in zip(distinct, gens.answers)])
    found = {key: (answer, j) for key, answer, j in zip(distinct, gens.answers, judgements)}
    rows = []
    for layer, coeff, q in grid:
        answer, j = found[unsteered(layer, coeff, q)]
        rows.append({"layer": layer, "coeff": coeff, "question": q, "answer": answer, "score": j.score,
                     "reason": j.reason})
    table = pa.Table.from_pylist(rows).replace_schema_metadata({
        "actlab.method": method, "actlab.where": cfg.where, "actlab.max_new_tokens": str(max_new_tokens),
        **({"actlab.edits": json.dumps(cfg.edits.settings())} if cfg.edits else {})})
    write_parquet_atomic(trait_run.path / "steering.parquet", table)
    return table


def sweep_summary(table: pa.Table) -> list[dict]:
    """Mean judge score per (layer, coefficient) over the scored answers."""
    columns = [table.column(name).to_pylist() for name in ("layer", "coeff", "score")]
    scores: dict[tuple, list[float]] = {}
    for layer, coeff, score in zip(*columns):
        scores.setdefault((layer, coeff), [])
        if score is not None:
            scores[layer, coeff].append(score)
    return [{"layer": layer, "coeff": coeff, "mean_score": float(np.mean(found)) if found else None,
             "n_scored": len(found)} for (layer, coeff), found in sorted(scores.items())]
