"""Judges score an answer 0-100, or give None with the reason. None is never a
negative: an unscored answer is dropped, with its reason recorded.

    logprob_score   persona-vectors' rule on one completion token's top logprobs:
                    sum p(n) n / sum p(n) over tokens that are integers 0..100,
                    None when that mass is below 0.25
    KeywordJudge    keyword occurrences (or the fraction of words in a list)
    RegexJudge      regex matches
    LocalJudge      a local Hugging Face model with the logprob rule over whole
                    numbers (actlab.traits.local_judge)
    OpenAIJudge     an OpenAI-compatible /chat/completions endpoint (top_logprobs),
                    bounded concurrency, timeouts, retries with backoff
                    (actlab.traits.api_judge)

Judge kinds are a registry (`register_judge_kind`): a trait file's or the
CLI's `kind` names one, and each model-judge module registers its own.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

from ..default_model import DEFAULT_MODEL
from ..errors import ActlabError
from ..registry import Registry
from ..runs.fingerprint import step_fingerprint

MIN_NUMBER_MASS = 0.25
JUDGE_FINGERPRINT_VERSION = 2


@dataclass(frozen=True)
class JudgeKind:
    name: str
    factory: Callable[..., "Judge"]  # the judge class: factory(**settings)
    model_judge: bool = False  # takes the trait's eval_prompt as its first argument


JUDGE_KINDS: Registry[JudgeKind] = Registry("judge kind")


def register_judge_kind(kind: JudgeKind) -> JudgeKind:
    return JUDGE_KINDS.register(kind.name, kind)


def judge_kind_names() -> list[str]:
    """The registered kinds: rule judges, then model judges, each alphabetical."""
    return sorted(JUDGE_KINDS, key=lambda name: (JUDGE_KINDS[name].model_judge, name))


def unknown_judge_kind(kind) -> ActlabError:
    names = judge_kind_names()
    return ActlabError(f"unknown judge kind '{kind}'; use {', '.join(names[:-1])} or {names[-1]}", param="judge")


@dataclass
class Judgement:
    score: float | None
    reason: str = "ok"


class Judge(Protocol):
    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgement]:
        """Scores for (question, answer) pairs, in order."""


def logprob_score(top_logprobs: Mapping[str, float], min_mass: float = MIN_NUMBER_MASS) -> Judgement:
    weighted = mass = 0.0
    for token, logprob in top_logprobs.items():
        text = token.strip()
        if text.isdigit() and int(text) <= 100 and (text == "0" or not text.startswith("0")):
            p = math.exp(logprob)
            weighted += p * int(text)
            mass += p
    if mass < min_mass:
        return Judgement(None, f"probability on numbers 0-100 is {mass:.2f} < {min_mass}")
    return Judgement(weighted / mass)


def unscored_if_empty(answer: str) -> Judgement | None:
    return Judgement(None, "empty answer") if not answer.strip() else None


def check_eval_prompt(eval_prompt: str) -> None:
    for slot in ("{question}", "{answer}"):
        if slot not in eval_prompt:
            raise ActlabError(f"the judge's eval_prompt lacks {slot}")


def fill_prompt(eval_prompt: str, question: str, answer: str) -> str:
    """The judge prompt for one answer (plain replacement: other braces in the
    prompt, JSON examples say, stay as they are)."""
    return eval_prompt.replace("{question}", question).replace("{answer}", answer)


@dataclass
class KeywordJudge:
    """100 when `full_at` keyword occurrences are found (per_word: when that
    fraction of the answer's words are keywords), proportionally below.
    With `opposite_keywords` (a lexicon of the trait's opposite), the score is
    the keywords' share of all hits of either list, 100 k / (k + o), and an
    answer with neither has no score. With ignore_question_keywords, a word
    that the question itself contains is not counted: an answer that echoes
    "why is X wonderful?" has not shown the trait."""

    keywords: Sequence[str]
    full_at: float = 1.0
    per_word: bool = False
    opposite_keywords: Sequence[str] = ()
    ignore_question_keywords: bool = False

    def __post_init__(self):
        if not self.keywords or self.full_at <= 0:
            raise ActlabError("a keyword judge needs keywords and full_at > 0")
        if self.opposite_keywords and self.per_word:
            raise ActlabError("a keyword judge takes opposite_keywords or per_word, not both")
        self._patterns = [_word_pattern(words) for words in (self.keywords, self.opposite_keywords) if words]

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgement]:
        out = []
        for question, answer in items:
            empty = unscored_if_empty(answer)
            if empty:
                out.append(empty)
                continue
            hits, *opposite = [self._hits(pattern, question, answer) for pattern in self._patterns]
            if opposite:
                total = hits + opposite[0]
                out.append(Judgement(100.0 * hits / total) if total else Judgement(None, "no keyword of either side"))
                continue
            value = hits / max(len(re.findall(r"\w+", answer)), 1) if self.per_word else hits
            out.append(Judgement(100.0 * min(1.0, value / self.full_at)))
        return out

    def _hits(self, pattern: re.Pattern, question: str, answer: str) -> int:
        hits = [h.lower() for h in pattern.findall(answer)]
        if self.ignore_question_keywords:
            echoed = {h.lower() for h in pattern.findall(question)}
            hits = [h for h in hits if h not in echoed]
        return len(hits)

    def describe(self) -> str:
        rule = (f"share of {len(self.keywords)} keywords among them and {len(self.opposite_keywords)} opposite ones"
                if self.opposite_keywords else
                f"{len(self.keywords)} keywords, 100 at {self.full_at:g}{' of the words' if self.per_word else ''}")
        return f"keyword: {rule}{'; question keywords ignored' if self.ignore_question_keywords else ''}"


def _word_pattern(words: Sequence[str]) -> re.Pattern:
    """Whole words or phrases, longest first, case-insensitive."""
    ordered = sorted({w.lower() for w in words}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, ordered)) + r")(?!\w)", re.IGNORECASE)


@dataclass
class RegexJudge:
    pattern: str
    full_at: float = 1.0

    def __post_init__(self):
        try:
            self._regex = re.compile(self.pattern)
        except re.error as exc:
            raise ActlabError(f"judge regex '{self.pattern}' does not compile: {exc}") from None

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgement]:
        return [unscored_if_empty(a) or Judgement(100.0 * min(1.0, len(self._regex.findall(a)) / self.full_at))
                for _, a in items]

    def describe(self) -> str:
        return f"regex: {self.pattern}, 100 at {self.full_at:g} match(es)"


def make_judge(spec: Mapping, eval_prompt: str | None = None) -> Judge:
    """A judge from a trait's `judge` block or the CLI: {kind: one of
    JUDGE_KINDS, ...}; model judges take the trait's eval_prompt unless the
    block gives one."""
    spec = dict(spec)
    name = spec.pop("kind", None)
    if name not in JUDGE_KINDS:
        raise unknown_judge_kind(name)
    kind = JUDGE_KINDS[name]
    try:
        if not kind.model_judge:
            return kind.factory(**spec)
        prompt = spec.pop("eval_prompt", eval_prompt)
        if not prompt:
            raise ActlabError(f"a {name} judge needs the trait's eval_prompt", param="eval_prompt")
        return kind.factory(prompt, **spec)
    except TypeError as exc:
        raise ActlabError(f"judge '{name}': {exc}", param="judge") from None


OPENAI_URL = "https://api.openai.com/v1"


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

    def __post_init__(self):
        if self.judge is not None and self.judge not in JUDGE_KINDS:
            raise unknown_judge_kind(self.judge)

    def make(self, trait, loaded=None) -> Judge:
        return judge_for(trait, self.judge, self.judge_model, self.judge_url, loaded)


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
    if kind not in JUDGE_KINDS:
        raise unknown_judge_kind(kind)
    if not JUDGE_KINDS[kind].model_judge:
        if not trait.judge or trait.judge.get("kind") != kind:
            raise ActlabError(f"trait '{trait.name}' has no {kind} judge; pass --judge local or --judge openai",
                              param="judge")
        return make_judge(trait.judge)
    if not trait.eval_prompt:
        raise ActlabError(f"trait '{trait.name}' has no eval_prompt for a model judge; add one with {{question}} "
                          "and {answer}", param="judge")
    if kind == "local":
        name = model or DEFAULT_MODEL
        return make_judge({"kind": kind, "model": loaded if loaded is not None and loaded.name == name else name},
                          trait.eval_prompt)
    if not model:
        raise ActlabError(f"--judge {kind} needs --judge-model", param="judge_model")
    return make_judge({"kind": kind, "model": model, "base_url": base_url}, trait.eval_prompt)


def describe_judge(judge: Judge) -> str:
    """What scored a run, for its records (never a key or a secret)."""
    describe = getattr(judge, "describe", None)
    return describe() if describe else type(judge).__name__


def judge_fingerprint(judge: Judge) -> str | None:
    """A short id of a judge's settings, to reuse its saved judgements: its
    kind and dataclass fields (never the API key; a loaded model by its name
    and weights hash). None for a judge that is no dataclass: not reused."""
    if not dataclasses.is_dataclass(judge):
        return None

    def plain(value):
        if hasattr(value, "weight_hash"):
            return {"model": value.name, "weights_sha256": value.weight_hash}
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

    settings = [f for f in dataclasses.fields(judge) if f.name != "api_key" and not f.name.startswith("_")]
    args = {f.name: plain(getattr(judge, f.name)) for f in settings}
    defaults = {f.name: plain(f.default) for f in settings if f.default is not dataclasses.MISSING}
    return step_fingerprint(None, type(judge).__name__, JUDGE_FINGERPRINT_VERSION, args, defaults)


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


register_judge_kind(JudgeKind("keyword", KeywordJudge))
register_judge_kind(JudgeKind("regex", RegexJudge))
