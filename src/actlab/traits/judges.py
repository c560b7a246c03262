"""Judges score an answer 0-100, or give None with the reason. None is never a
negative: an unscored answer is dropped, with its reason recorded.

    logprob_score   persona-vectors' rule on one completion token's top logprobs:
                    sum p(n) n / sum p(n) over tokens that are integers 0..100,
                    None when that mass is below 0.25
    OpenAIJudge     an OpenAI-compatible /chat/completions endpoint (top_logprobs),
                    bounded concurrency, timeouts, retries with backoff
    LocalJudge      a local Hugging Face model with the same rule over whole
                    numbers (actlab.traits.local_judge)
    KeywordJudge    keyword occurrences (or the fraction of words in a list)
    RegexJudge      regex matches
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

from ..errors import ActlabError

MIN_NUMBER_MASS = 0.25
JUDGE_KINDS = ("keyword", "regex", "local", "openai")


def unknown_judge_kind(kind) -> ActlabError:
    return ActlabError(f"unknown judge kind '{kind}'; use {', '.join(JUDGE_KINDS[:-1])} or {JUDGE_KINDS[-1]}")


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


@dataclass
class OpenAIJudge:
    """One-token completions with top-20 logprobs from an OpenAI-compatible
    server (OpenAI, vLLM, llama.cpp, ...), scored by `logprob_score`."""

    eval_prompt: str
    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = None
    concurrency: int = 8
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0

    def __post_init__(self):
        check_eval_prompt(self.eval_prompt)
        if not self.base_url.startswith(("http://", "https://")):
            raise ActlabError(f"judge base_url '{self.base_url}' must start with http:// or https://")
        if self.concurrency < 1 or self.timeout <= 0 or self.retries < 0:
            raise ActlabError("judge concurrency >= 1, timeout > 0 and retries >= 0, please")
        self.api_key = self.api_key or os.environ.get("OPENAI_API_KEY")

    def describe(self) -> str:
        return f"openai: {self.model} at {self.base_url} (logprob rule)"

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgement]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda item: self._one(*item), items))

    def _one(self, question: str, answer: str) -> Judgement:
        empty = unscored_if_empty(answer)
        if empty:
            return empty
        message = {"role": "user", "content": fill_prompt(self.eval_prompt, question, answer)}
        body = json.dumps({"model": self.model, "max_tokens": 1, "temperature": 0, "logprobs": True,
                           "top_logprobs": 20, "messages": [message]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", body, headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    payload = reply.read()
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code == 429 or exc.code >= 500:
                    continue
                return Judgement(None, f"{last} from the judge (not retried)")
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = f"timeout or connection error ({getattr(exc, 'reason', exc)})"
                continue
            return self._parse(payload)
        return Judgement(None, f"{last} after {self.retries + 1} attempt(s)")

    @staticmethod
    def _parse(payload: bytes) -> Judgement:
        try:
            top = json.loads(payload)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return logprob_score({entry["token"]: float(entry["logprob"]) for entry in top})
        except (ValueError, KeyError, IndexError, TypeError):
            return Judgement(None, "malformed reply: no choices[0].logprobs.content[0].top_logprobs")


def make_judge(spec: Mapping, eval_prompt: str | None = None) -> Judge:
    """A judge from a trait's `judge` block or the CLI: {kind: keyword | regex |
    openai | local, ...}; model judges take the trait's eval_prompt unless the
    block gives one."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    try:
        if kind == "keyword":
            return KeywordJudge(**spec)
        if kind == "regex":
            return RegexJudge(**spec)
        if kind in ("openai", "local"):
            prompt = spec.pop("eval_prompt", eval_prompt)
            if not prompt:
                raise ActlabError(f"a{'n' if kind == 'openai' else ''} {kind} judge needs the trait's eval_prompt")
            if kind == "openai":
                return OpenAIJudge(prompt, **spec)
            from .local_judge import LocalJudge

            return LocalJudge(prompt, **spec)
    except TypeError as exc:
        raise ActlabError(f"judge '{kind}': {exc}") from None
    raise unknown_judge_kind(kind)


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
        return str(value)

    fields = {f.name: getattr(judge, f.name) for f in dataclasses.fields(judge)
              if f.name != "api_key" and not f.name.startswith("_")}
    text = json.dumps({"kind": type(judge).__name__, **fields}, default=plain, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
