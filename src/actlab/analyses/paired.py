"""Paired statistics and held-out detection, pure functions on arrays (scipy,
scikit-learn).

Paired: the same prompts under two conditions, a (first) and b (second).
    mean_diff         mean(b - a)
    d_z               mean(b - a) / sd(b - a): the paired effect size, with a seeded
                      bootstrap confidence interval
    cohens_d_pooled   (mean(b) - mean(a)) / sqrt((sd(a)^2 + sd(b)^2) / 2): the seed's
                      pooled-SD "Cohen's d", reported under its own name
    wilcoxon_p        two-sided Wilcoxon signed-rank p-value
    q                 Benjamini-Hochberg FDR over every test of one analysis

Detection: does a text come from condition b? Scores are held out by grouped
k-fold cross-validation (a pair, and every pair of a repeated prompt, never
straddles a split); AUROC of the out-of-fold scores.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ActlabError
from ..registry import Registry
from .measures import auroc, cohens_d, logistic_direction, mean_difference

BOOTSTRAP_RESAMPLES = 2000


def _stats():
    try:
        from scipy import stats
    except ImportError:
        raise ActlabError("paired statistics need scipy: pip install 'actlab[stats]'") from None
    return stats


def d_z(diff: np.ndarray) -> float:
    sd = diff.std(ddof=1) if len(diff) > 1 else 0.0
    return float(diff.mean() / sd) if sd > 0 else float("nan")


def paired_effects(a: np.ndarray, b: np.ndarray, seed: int = 0, confidence: float = 0.95,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Effect of b over a on paired rows (pairs with a NaN on either side are left out)."""
    stats = _stats()
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    diff = b - a
    nan = float("nan")
    out = {"n": int(len(diff)), "mean_first": float(a.mean()) if len(a) else nan,
           "mean_second": float(b.mean()) if len(b) else nan, "mean_diff": float(diff.mean()) if len(diff) else nan,
           "d_z": d_z(diff), "d_z_low": nan, "d_z_high": nan, "cohens_d_pooled": nan, "wilcoxon_p": nan}
    if len(diff) < 2:
        return out
    out["cohens_d_pooled"] = cohens_d(b, a)
    if np.isfinite(out["d_z"]) and len(diff) >= 3:
        interval = stats.bootstrap((diff,), lambda x, axis=-1: x.mean(axis) / x.std(axis, ddof=1),
                                   n_resamples=resamples, confidence_level=confidence, method="percentile",
                                   random_state=np.random.default_rng(seed)).confidence_interval
        out["d_z_low"], out["d_z_high"] = float(interval.low), float(interval.high)
    if np.any(diff != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
    return out


def fdr(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (NaN p-values stay NaN and are not counted)."""
    p = np.asarray(pvalues, np.float64)
    q = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = _stats().false_discovery_control(p[ok], method="bh")
    return q


def grouped_folds(labels: np.ndarray, groups: np.ndarray, k: int = 5, seed: int = 0) -> list[tuple]:
    """(train, test) index arrays of a stratified grouped k-fold split."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ActlabError("held-out detection needs at least two pairs", param="pairs")
    splitter = StratifiedGroupKFold(n_splits=min(k, n_groups), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


Detector = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (fit x, fit labels, held-out x) -> scores
DETECTORS: Registry[Detector] = Registry("detection method")


def _single(fit: np.ndarray, y: np.ndarray, held: np.ndarray) -> np.ndarray:
    """The one column, its sign chosen on the training split."""
    return (1.0 if fit[y == 1, 0].mean() >= fit[y == 0, 0].mean() else -1.0) * held[:, 0]


def _logistic(fit: np.ndarray, y: np.ndarray, held: np.ndarray) -> np.ndarray:
    """A standardised logistic regression's logit."""
    w, b = logistic_direction(fit[y == 1], fit[y == 0])
    return held @ w + b


def _mean_diff(fit: np.ndarray, y: np.ndarray, held: np.ndarray) -> np.ndarray:
    """The projection on mean(label 1) - mean(label 0) (a difference-of-means probe)."""
    return held @ mean_difference(fit[y == 1], fit[y == 0])


DETECTORS.register("single", _single)
DETECTORS.register("logistic", _logistic)
DETECTORS.register("mean_diff", _mean_diff)


def held_out_scores(x: np.ndarray, labels: np.ndarray, folds: list[tuple], method: str) -> np.ndarray:
    """Out-of-fold scores of rows x (n, m) for label 1, each fold's detector
    fitted on its training split (NaNs imputed by the training medians):
    single, logistic or mean_diff (DETECTORS; register more)."""
    detector = DETECTORS.pick(method, param="method")
    x = np.asarray(x, np.float64).reshape(len(labels), -1)
    scores = np.full(len(labels), np.nan)
    for train, test in folds:
        medians = np.nanmedian(x[train], axis=0)
        medians = np.where(np.isnan(medians), 0.0, medians)
        fit, held = np.where(np.isnan(x[train]), medians, x[train]), np.where(np.isnan(x[test]), medians, x[test])
        scores[test] = detector(fit, labels[train], held)
    return scores


__all__ = ["DETECTORS", "auroc", "d_z", "fdr", "grouped_folds", "held_out_scores", "paired_effects"]
