"""What auto-interpretation shows and asks per latent (delphi's split): the
explainer sees the latent's top windows and interval samples (half each),
its active tokens marked; the explanation is scored on held-out windows -
other interval samples spread over the activation deciles, then top windows
not shown (activating) - and pool windows where the latent is not
active anywhere (non-activating) - by detection (plain texts: activating or
not?) and fuzzing (the held-out activating texts, half with the latent's own
tokens marked, half with as many other tokens marked: are the marks right?).
Every choice is seeded by (seed, sae, latent)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .prompts import baseline_explanation, explainer_prompt, marked_text


@dataclass
class ScoredExample:
    window: int
    text: str
    label: int  # 1: activating (detection) or rightly marked (fuzzing)


@dataclass
class LatentCase:
    sae: str
    latent: int
    shown: list[int]  # the windows the explainer sees
    prompt: str  # the explainer's
    baseline: str  # the token-frequency baseline explanation
    detection: list[ScoredExample]
    fuzzing: list[ScoredExample]

    @property
    def calls(self) -> int:
        """Explainer and scorer calls: one explanation, then both explanations scored on every example."""
        return 1 + 2 * (len(self.detection) + len(self.fuzzing))


@dataclass
class SAEExamples:
    """One SAE's tables, read once: each latent's examples and the windows' tokens."""

    sae: str
    top: dict[int, list[int]]  # latent -> its top windows, best first
    intervals: dict[int, list[tuple[int, int]]]  # latent -> (decile, window), by decile then rank
    active: dict[tuple[int, int], set[int]]  # (latent, window) -> positions where the latent is active
    tokens: dict[int, list[str]]  # window -> its token strings
    pool: list[tuple[int, set[int]]]  # (window, latents active in it) of the random pool
    first: int  # the first position shown (1 skips the BOS)


def sae_examples(run, sae: str, examples: pa.Table, pool: pa.Table) -> SAEExamples:
    top = run.table("top", sae)
    intervals = run.table("intervals", sae, sort="decile,rank")
    mine = examples.filter(pc.equal(examples.column("sae"), sae))
    pooled = pool.filter(pc.equal(pool.column("sae"), sae))
    windows = pa.concat_tables([top.select(["window"]), intervals.select(["window"]), pooled.select(["window"])])
    tokens = run.with_tokens(windows.group_by("window").aggregate([]))
    by_top: dict[int, list[int]] = {}
    for latent, window in zip(top.column("latent").to_pylist(), top.column("window").to_pylist()):
        by_top.setdefault(latent, []).append(window)
    by_interval: dict[int, list[tuple[int, int]]] = {}
    for latent, decile, window in zip(*(intervals.column(c).to_pylist() for c in ("latent", "decile", "window"))):
        by_interval.setdefault(latent, []).append((decile, window))
    active = {(j, k): set(p) for j, k, p in zip(*(mine.column(c).to_pylist()
                                                  for c in ("latent", "window", "positions")))}
    return SAEExamples(sae, by_top, by_interval, active,
                       dict(zip(tokens.column("window").to_pylist(), tokens.column("tokens").to_pylist())),
                       [(k, set(a)) for k, a in zip(pooled.column("window").to_pylist(),
                                                    pooled.column("active").to_pylist())],
                       int(run.settings["has_bos"]))


def latent_case(data: SAEExamples, latent: int, shown: int, held_out: int, seed: int) -> LatentCase:
    rng = np.random.default_rng([seed, zlib.crc32(data.sae.encode()), latent])
    top = data.top.get(latent, [])
    intervals = data.intervals.get(latent, [])
    known = list(dict.fromkeys(top + [w for _, w in intervals]))
    n_test = min(held_out, len(known) // 2)
    n_shown = max(min(shown, len(known) - n_test), 0)
    explain = top[:(n_shown + 1) // 2]  # half top windows, half interval samples over the deciles
    spread = _spread(intervals, set(explain))
    explain += spread[:n_shown - len(explain)]
    explain += [w for w in top if w not in explain][:n_shown - len(explain)]
    test = [w for w in dict.fromkeys(spread + top) if w not in explain][:n_test]

    def marks(window: int) -> set[int]:
        return data.active.get((latent, window), set())

    def text(window: int, marked: set[int]) -> str:
        return marked_text(data.tokens[window], marked, data.first)

    prompt = explainer_prompt([text(w, marks(w)) for w in explain])
    baseline = baseline_explanation([data.tokens[w] for w in explain], [marks(w) for w in explain])
    silent = [w for w, active in data.pool if latent not in active]
    negatives = sorted(rng.choice(silent, size=min(len(test), len(silent)), replace=False).tolist()) if silent else []
    detection = [ScoredExample(w, text(w, set()), 1) for w in test] + \
        [ScoredExample(w, text(w, set()), 0) for w in negatives]
    right = set(rng.permutation(len(test))[:(len(test) + 1) // 2].tolist())
    fuzzing = []
    for i, w in enumerate(test):
        if i in right:
            fuzzing.append(ScoredExample(w, text(w, marks(w)), 1))
            continue
        others = [p for p in range(data.first, len(data.tokens[w])) if p not in marks(w)]
        if others:
            wrong = rng.choice(others, size=min(max(len(marks(w)), 1), len(others)), replace=False)
            fuzzing.append(ScoredExample(w, text(w, set(wrong.tolist())), 0))
    return LatentCase(data.sae, latent, explain, prompt, baseline, detection, fuzzing)


def _spread(intervals: list[tuple[int, int]], skip: set[int]) -> list[int]:
    """Interval windows not in `skip`, one per decile in turn (highest decile first), so that any prefix
    covers the activation range."""
    by_decile: dict[int, list[int]] = {}
    for decile, window in intervals:
        if window not in skip:
            by_decile.setdefault(decile, []).append(window)
    columns = [by_decile[d] for d in sorted(by_decile, reverse=True)]
    return [column[i] for i in range(max(map(len, columns), default=0)) for column in columns if i < len(column)]
