"""Rule judges: keyword and regex counts, no model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import ActlabError
from .base import JudgeKind, Judgement, register_judge_kind, unscored_if_empty


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


register_judge_kind(JudgeKind("keyword", KeywordJudge))
register_judge_kind(JudgeKind("regex", RegexJudge))
