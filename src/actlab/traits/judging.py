"""Judging a trait run's answers, resumably: every answer scored by a judge
(saved chunk by chunk in a judges.cache.JudgementCache keyed by the judge's
fingerprint, each answer by its text), then kept or dropped by the
thresholds (RUN/scores.parquet)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ..judges import Judge, Judgement, describe_judge, judge_fingerprint
from ..judges.cache import JudgementCache
from ..runs.atomic import write_parquet_atomic
from ..runs.fingerprint import fingerprint
from ..storage import run_path
from .judges import keep_answers
from .run import TraitRun
from .vectors import VectorsConfig

JUDGE_CHUNK = 64  # answers judged between saves
ANSWERS = "chunk"  # the cache's part: answer_sha256, score, reason


def judge_run(run: str | Path, judge: Judge, cfg: VectorsConfig | None = None,
              chunk_size: int = JUDGE_CHUNK) -> pa.Table:
    """Score every answer, record each score or its reason and the keep / drop
    decision. Resumable: judgements are saved chunk by chunk in the judge's
    JudgementCache (RUN/judgements/<judge fingerprint>/, each answer keyed
    by its question and text), so a rerun with the same judge scores only
    what an interruption or an unreachable judge left (an answer that
    changed is scored again), and new thresholds call no judge."""
    run = run_path(run)
    answers = TraitRun.open(run).answers()
    items = list(zip(answers.column("question").to_pylist(), answers.column("answer").to_pylist()))
    keys = [fingerprint(question, answer) for question, answer in items]
    key = judge_fingerprint(judge)
    cache = JudgementCache.of(run, key, ANSWERS) if key else None
    known = _saved_judgements(cache)
    todo = [i for i, k in enumerate(keys) if k not in known]
    for lo in range(0, len(todo), chunk_size):
        chunk = todo[lo:lo + chunk_size]
        judged = judge.judge([items[i] for i in chunk])
        if cache is not None and not any(j.failed for j in judged):  # a judge not reached is asked again
            cache.save({ANSWERS: pa.table({"answer_sha256": [keys[i] for i in chunk],
                                           "score": pa.array([j.score for j in judged], pa.float64()),
                                           "reason": [j.reason for j in judged]})})
        known |= {keys[i]: j for i, j in zip(chunk, judged)}
    judgements = [known[k] for k in keys]
    cfg = cfg or VectorsConfig()
    decisions = keep_answers(answers.column("polarity").to_pylist(), judgements, cfg.pos_min, cfg.neg_max)
    table = pa.table({"row": answers.column("row"), "score": pa.array([j.score for j in judgements], pa.float64()),
                      "reason": [j.reason for j in judgements], "decision": decisions,
                      "kept": [d == "kept" for d in decisions]})
    table = table.replace_schema_metadata({"actlab.judge": describe_judge(judge),
                                           "actlab.keep": cfg.keep_rule()})
    write_parquet_atomic(run / "scores.parquet", table)
    return table


def _saved_judgements(cache: JudgementCache | None) -> dict[str, Judgement]:
    saved = cache.read(ANSWERS) if cache is not None else None
    if saved is None:
        return {}
    return {k: Judgement(s, r) for k, s, r in zip(*(saved.column(c).to_pylist()
                                                    for c in ("answer_sha256", "score", "reason")))}
