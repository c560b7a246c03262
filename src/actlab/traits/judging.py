"""Judging a trait run's answers, resumably: every answer scored by a judge
(saved chunk by chunk, keyed by the judge's fingerprint and each answer's
text), then kept or dropped by the thresholds (RUN/scores.parquet)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ..judges import Judge, Judgement, describe_judge, judge_fingerprint
from ..runs.atomic import write_parquet_atomic
from ..runs.fingerprint import fingerprint
from ..storage import read_parquet, run_path
from .judges import keep_answers
from .runs import TraitRun
from .vectors import VectorsConfig

JUDGE_CHUNK = 64  # answers judged between saves


def judge_run(run: str | Path, judge: Judge, cfg: VectorsConfig | None = None,
              chunk_size: int = JUDGE_CHUNK) -> pa.Table:
    """Score every answer, record each score or its reason and the keep / drop
    decision. Resumable: judgements are saved chunk by chunk under
    RUN/judgements/<judge fingerprint>/, so a rerun with the same judge
    scores only what an interruption or an unreachable judge left (an
    answer that changed is scored again), and new thresholds call no judge."""
    run = run_path(run)
    answers = TraitRun.open(run).answers()
    items = list(zip(answers.column("question").to_pylist(), answers.column("answer").to_pylist()))
    key = judge_fingerprint(judge)
    judgements: list[Judgement] = []
    for index, lo in enumerate(range(0, len(items), chunk_size)):
        chunk = items[lo:lo + chunk_size]
        path = run / "judgements" / key / f"chunk-{index:05d}.parquet" if key else None
        judgements += _saved_judgements(path, chunk) or _judge_chunk(judge, chunk, path)
    cfg = cfg or VectorsConfig()
    decisions = keep_answers(answers.column("polarity").to_pylist(), judgements, cfg.pos_min, cfg.neg_max)
    table = pa.table({"row": answers.column("row"), "score": pa.array([j.score for j in judgements], pa.float64()),
                      "reason": [j.reason for j in judgements], "decision": decisions,
                      "kept": [d == "kept" for d in decisions]})
    table = table.replace_schema_metadata({"actlab.judge": describe_judge(judge),
                                           "actlab.keep": cfg.keep_rule()})
    write_parquet_atomic(run / "scores.parquet", table)
    return table


def _answer_keys(chunk: list[tuple[str, str]]) -> list[str]:
    return [fingerprint(question, answer) for question, answer in chunk]


def _saved_judgements(path: Path | None, chunk: list[tuple[str, str]]) -> list[Judgement] | None:
    if path is None or not path.exists():
        return None
    saved = read_parquet(path)
    if saved.column("answer_sha256").to_pylist() != _answer_keys(chunk):
        return None
    return [Judgement(s, r) for s, r in zip(saved.column("score").to_pylist(), saved.column("reason").to_pylist())]


def _judge_chunk(judge: Judge, chunk: list[tuple[str, str]], path: Path | None) -> list[Judgement]:
    judgements = judge.judge(chunk)
    if path is not None and not any(j.failed for j in judgements):  # a judge not reached is asked again
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(path, pa.table({"answer_sha256": _answer_keys(chunk),
                                             "score": pa.array([j.score for j in judgements], pa.float64()),
                                             "reason": [j.reason for j in judgements]}))
    return judgements
