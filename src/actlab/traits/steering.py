"""The steering sweep of a trait run: its neutral questions answered with
coeff * v added at a layer, for each coefficient, every answer judged
(RUN/steering.parquet, RUN/steering.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from .. import plots
from ..errors import ActlabError
from ..models import Model
from ..runs.atomic import write_bytes_atomic, write_parquet_atomic
from .generation import GenerationConfig, Steering, generate, render_prompt
from .judges import Judge
from .runs import TraitRun


def steer_sweep(model: "Model", run: str | Path, layer: int, coeffs: Sequence[float], judge: Judge,
                method: str = "mean_diff", where: str = "all", n_questions: int | None = None,
                cfg: GenerationConfig | None = None) -> pa.Table:
    """The trait's questions with no instruction, answered with coeff * v added
    at `layer`, for each coefficient; every answer judged. v is the method's
    direction scaled to the length of that layer's mean difference, so coeff 1
    moves an activation by the distance between the pos and neg means. Written
    to RUN/steering.parquet (coeff, question, answer, score, reason), with the
    score-per-coefficient plot in RUN/steering.png."""
    trait_run = TraitRun(run)
    vectors = trait_run.vectors(method)
    if layer not in vectors:
        raise ActlabError(f"no {method} vector for layer {layer}; this run has layers {sorted(vectors)}",
                          param="layer")
    scale = trait_run.vectors("mean_diff")[layer].norm() if method != "mean_diff" else vectors[layer].norm()
    v = vectors[layer] / vectors[layer].norm() * scale
    questions = trait_run.trait.questions
    if not questions:
        raise ActlabError("steering needs neutral questions; this natural trait gives none (add 'questions')")
    questions = questions[:n_questions] if n_questions else questions
    cfg = cfg or GenerationConfig(max_new_tokens=48)
    prompts = [render_prompt(model.tokenizer, q) for q in questions]
    rows = []
    for coeff in coeffs:
        gens = generate(model, prompts, cfg=cfg, steering=Steering(layer, v, float(coeff), where))
        for question, answer, judgement in zip(questions, gens.answers,
                                               judge.judge(list(zip(questions, gens.answers)))):
            rows.append({"coeff": float(coeff), "question": question, "answer": answer,
                         "score": judgement.score, "reason": judgement.reason})
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
