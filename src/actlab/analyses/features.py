"""Feature analyses of SAE-comparison notebooks, on a texts x latents matrix F (numpy, >= 0).

The rankings (strongest, most_frequent, most_selective, comparison_table)
read only per-latent statistics, so they also take a RankingStats: a latents
run's summaries over its windows (actlab.latents.analysis).

Each returns a list of row dicts (ready for a table, pandas or Arrow). The
threshold t marks a latent as clearly on for a text (F > t); 5.0 suits
for GPT-2 small's SAEs. Fixes against the original notebooks: concept
features are ranked by an effect size and report means that are means, and
specialists are found from precomputed category indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np


@dataclass(frozen=True)
class RankingStats:
    """Per latent, what the rankings read, over some unit (the texts of F, the windows of a latents run)."""

    peak: np.ndarray  # (d_sae,) the largest value
    where: np.ndarray  # (d_sae,) the unit it is in
    active: np.ndarray  # (d_sae,) units where the latent is > 0
    above: np.ndarray  # (d_sae,) units where it exceeds the threshold it was counted at
    n: int  # units in all
    unit: str = "text"

    @classmethod
    def of(cls, F: np.ndarray, threshold: float = 5.0) -> "RankingStats":
        return cls(F.max(axis=0), F.argmax(axis=0), (F > 0).sum(axis=0), (F > threshold).sum(axis=0), len(F))


Latents = Union[np.ndarray, RankingStats]  # F, or its statistics
EXPLORED_TEXTS = 5  # texts explore_tokens (and `actlab explore`) shows


def _stats(F: Latents, threshold: float = 5.0) -> RankingStats:
    return F if isinstance(F, RankingStats) else RankingStats.of(F, threshold)


def strongest(F: Latents, k: int = 5) -> list[dict]:
    """Latents with the largest activation on any text, and that text."""
    s = _stats(F)
    order = np.argsort(-s.peak, kind="stable")[:k]
    return [{"latent": int(j), "max": float(s.peak[j]), s.unit: int(s.where[j])} for j in order]


def most_frequent(F: Latents, k: int = 5) -> list[dict]:
    """Latents active (> 0) on the most texts."""
    s = _stats(F)
    order = np.argsort(-s.active, kind="stable")[:k]
    return [{"latent": int(j), "count": int(s.active[j]), "fraction": float(s.active[j] / s.n)} for j in order]


def most_selective(F: Latents, threshold: float = 5.0, k: int = 5) -> list[dict]:
    """Latents above the threshold on the fewest texts (at least one); ties go
    to the larger peak. (A RankingStats was counted at its own threshold.)"""
    s = _stats(F, threshold)
    count, peak = s.above, s.peak
    candidates = np.flatnonzero(count >= 1)
    order = candidates[np.lexsort((-peak[candidates], count[candidates]))][:k]
    return [{"latent": int(j), "count": int(count[j]), "max": float(peak[j])} for j in order]


def category_specialists(F: np.ndarray, categories: Sequence[str], threshold: float = 5.0,
                         candidates: int = 5) -> list[dict]:
    """Per category: among its `candidates` latents with the largest in-category
    peak, the one maximising (#in-category texts > t) - (#other texts > t).
    A true specialist scores > 0."""
    categories = np.asarray(categories)
    above = F > threshold
    rows = []
    for category in dict.fromkeys(categories.tolist()):
        inside = categories == category
        top = np.argsort(-F[inside].max(axis=0), kind="stable")[:candidates]
        n_in = above[inside][:, top].sum(axis=0)
        n_out = above[~inside][:, top].sum(axis=0)
        best = int(np.argmax(n_in - n_out))
        score = int(n_in[best] - n_out[best])
        rows.append({"category": category, "latent": int(top[best]), "score": score,
                     "in_category": int(n_in[best]), "out_of_category": int(n_out[best]),
                     "specialist": score > 0})
    return rows


def explore(F: np.ndarray, latent: int, k: int = 10) -> list[dict]:
    """The k texts on which `latent` is strongest."""
    column = F[:, latent]
    order = np.argsort(-column, kind="stable")[:k]
    return [{"text": int(i), "value": float(column[i])} for i in order if column[i] > 0]


def explore_tokens(values: np.ndarray, offsets: Sequence[int], k: int = EXPLORED_TEXTS) -> list[dict]:
    """Per-token mode: one latent's values for every token row (n_tokens,) and
    each text's row range; the k texts with the largest token value, with the
    value of each of their tokens (for highlighting)."""
    offsets = np.asarray(offsets)
    peaks = np.array([values[a:b].max() if b > a else 0.0 for a, b in zip(offsets[:-1], offsets[1:])])
    order = np.argsort(-peaks, kind="stable")[:k]
    return [{"text": int(i), "max": float(peaks[i]), "token_values": values[offsets[i]:offsets[i + 1]].tolist()}
            for i in order if peaks[i] > 0]


def concept_features(F_concept: np.ndarray, F_baseline: np.ndarray, threshold: float = 5.0,
                     k: int = 10) -> list[dict]:
    """Latents that separate concept texts from baseline texts, ranked by
    Cohen's d (pooled standard deviation), with means and counts above t."""
    n_c, n_b = len(F_concept), len(F_baseline)
    mean_c, mean_b = F_concept.mean(axis=0), F_baseline.mean(axis=0)
    var_c = F_concept.var(axis=0, ddof=1) if n_c > 1 else np.zeros_like(mean_c)
    var_b = F_baseline.var(axis=0, ddof=1) if n_b > 1 else np.zeros_like(mean_b)
    pooled = np.sqrt(((n_c - 1) * var_c + (n_b - 1) * var_b) / max(n_c + n_b - 2, 1))
    d = np.where(pooled > 0, (mean_c - mean_b) / np.where(pooled > 0, pooled, 1), 0.0)
    order = np.argsort(-d, kind="stable")[:k]
    return [{"latent": int(j), "cohen_d": float(d[j]), "concept_mean": float(mean_c[j]),
             "baseline_mean": float(mean_b[j]), "concept_count": int((F_concept[:, j] > threshold).sum()),
             "baseline_count": int((F_baseline[:, j] > threshold).sum())} for j in order]


def coactivation(F: np.ndarray, latents: Sequence[int] | None = None, k: int = 10) -> list[dict]:
    """Pairs of latents most often active on the same texts, with Jaccard
    overlap; among `latents` (default: the 50 most frequent)."""
    active = F > 0
    if latents is None:
        latents = np.argsort(-active.sum(axis=0), kind="stable")[:50]
    latents = np.asarray(latents)
    A = active[:, latents].astype(np.int64)
    both = A.T @ A
    count = A.sum(axis=0)
    union = count[:, None] + count[None, :] - both
    i, j = np.triu_indices(len(latents), k=1)
    jaccard = np.where(union[i, j] > 0, both[i, j] / np.maximum(union[i, j], 1), 0.0)
    order = np.lexsort((-jaccard, -both[i, j]))[:k]
    return [{"latent_a": int(latents[i[o]]), "latent_b": int(latents[j[o]]), "both": int(both[i[o], j[o]]),
             "jaccard": float(jaccard[o])} for o in order if both[i[o], j[o]] > 0]


def comparison_table(features: dict[str, Latents], categories: Sequence[str] | None = None,
                     threshold: float = 5.0, k: int = 5) -> dict[str, dict[str, list[int]]]:
    """The SAE comparison table: rows strongest / frequent / selective / specialists,
    one column per SAE, each cell the top-k latent ids (features extracted once)."""
    table: dict[str, dict[str, list[int]]] = {"strongest": {}, "frequent": {}, "selective": {}}
    if categories is not None:
        table["specialists"] = {}
    for name, F in features.items():
        table["strongest"][name] = [r["latent"] for r in strongest(F, k)]
        table["frequent"][name] = [r["latent"] for r in most_frequent(F, k)]
        table["selective"][name] = [r["latent"] for r in most_selective(F, threshold, k)]
        if categories is not None:
            table["specialists"][name] = [r["latent"] for r in category_specialists(F, categories, threshold)
                                          if r["specialist"]]
    return table
