"""Which judge scores a trait's answers (`JudgeConfig`, `judge_for`: the
trait's own judge, or a judge kind of actlab.judges with the trait's
eval_prompt), and which answers a vector is fitted from (`keep_answers`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from ..errors import ActlabError
from ..judges import JUDGE_KINDS, OPENAI_URL, Judge, Judgement, make_judge
from ..judges.base import asked_model
from ..judges.openai import OpenAIServer, server_options


@dataclass
class JudgeConfig:
    """Which judge scores a trait's answers (`make` builds it for a trait)."""

    judge: str | None = dataclasses.field(default=None, metadata={
        "help": "The trait's own judge (default), keyword / regex (its rule judge), local (a local HF model) or "
                "openai (an OpenAI-compatible server)."})
    judge_model: str | None = dataclasses.field(default=None, metadata={
        "help": "Judge model: for --judge local a hub id, folder or the default model's alias (default); for "
                "--judge openai the server's model name."})
    judge_url: str = dataclasses.field(default=OPENAI_URL, metadata={
        "help": "OpenAI-compatible base URL for --judge openai."})
    judge_logprobs: bool = dataclasses.field(default=True, metadata={
        "help": "For --judge openai: score by the reply token's top logprobs (OpenAI, vLLM, llama.cpp; a model "
                "whose tokenizer splits numbers into digits is refused); --no-judge-logprobs reads the number in "
                "the reply's text (such models, and servers without logprobs such as transformers serve)."})
    judge_timeout: float = dataclasses.field(default=OpenAIServer.timeout, metadata={
        "help": "For --judge openai: seconds to wait for one reply before asking again (a busy CPU server may "
                "need minutes). Not part of the judge's key: saved judgements stay valid."})
    judge_concurrency: int = dataclasses.field(default=OpenAIServer.concurrency, metadata={
        "help": "For --judge openai: requests in flight at once."})

    def __post_init__(self):
        if self.judge is not None:
            JUDGE_KINDS.pick(self.judge, param="judge")

    def make(self, trait, loaded=None) -> Judge:
        judge = judge_for(trait, self.judge, self.judge_model, self.judge_url, loaded)
        options = server_options(self.judge or trait.judge["kind"], "judge", logprobs=self.judge_logprobs,
                                 timeout=self.judge_timeout, concurrency=self.judge_concurrency)
        return dataclasses.replace(judge, **options) if options else judge


def judge_for(trait, kind: str | None = None, model: str | None = None, base_url: str = OPENAI_URL,
              loaded=None) -> Judge:
    """The judge a user asks for by kind: None, the trait's own judge;
    a rule kind, the trait's rule judge of that kind; a model kind, that
    judge with the trait's eval_prompt (`model`: the judge model; a local
    judge of the `loaded` model's name uses that model instead of loading it
    again; `base_url`: an OpenAI-compatible server)."""
    if kind is None:
        if not trait.judge:
            raise ActlabError(f"trait '{trait.name}' has no judge of its own; pass --judge local (or --judge openai "
                              "--judge-model M)", param="judge")
        return make_judge(trait.judge, trait.eval_prompt)
    if not JUDGE_KINDS.pick(kind, param="judge").model_judge:
        if not trait.judge or trait.judge.get("kind") != kind:
            raise ActlabError(f"trait '{trait.name}' has no {kind} judge; pass --judge local or --judge openai",
                              param="judge")
        return make_judge(trait.judge)
    if not trait.eval_prompt:
        raise ActlabError(f"trait '{trait.name}' has no eval_prompt for a model judge; add one with {{question}} "
                          "and {answer}", param="judge")
    return make_judge({"kind": kind, **asked_model(kind, model, base_url, loaded)}, trait.eval_prompt)


def keep_answers(polarity: Sequence[str], judgements: Sequence[Judgement], pos_min: float = 50.0,
                 neg_max: float = 50.0) -> list[str]:
    """Per answer 'kept' or the reason it was dropped: pos needs score >= pos_min,
    neg needs score < neg_max; an answer without a score is dropped, never a negative."""
    reasons = []
    for pol, j in zip(polarity, judgements):
        if j.score is None:
            reasons.append(f"no score: {j.reason}")
        elif pol == "pos" and j.score < pos_min:
            reasons.append(f"pos score {j.score:.0f} < {pos_min:g}")
        elif pol == "neg" and j.score >= neg_max:
            reasons.append(f"neg score {j.score:.0f} >= {neg_max:g}")
        else:
            reasons.append("kept")
    return reasons
