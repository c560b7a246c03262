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

import numpy as np

from ..errors import ActlabError

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
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    out["cohens_d_pooled"] = float((b.mean() - a.mean()) / pooled) if pooled > 0 else nan
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


def held_out_scores(x: np.ndarray, labels: np.ndarray, folds: list[tuple], method: str) -> np.ndarray:
    """Out-of-fold scores of rows x (n, m) for label 1, fitted on each training split:
    single      the one column, its sign chosen on the training split
    logistic    standardised logistic regression (NaNs imputed by the training medians)
    mean_diff   projection on mean(label 1) - mean(label 0) (a difference-of-means probe)"""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, np.float64).reshape(len(labels), -1)
    scores = np.full(len(labels), np.nan)
    for train, test in folds:
        medians = np.nanmedian(x[train], axis=0)
        medians = np.where(np.isnan(medians), 0.0, medians)
        fit, held = np.where(np.isnan(x[train]), medians, x[train]), np.where(np.isnan(x[test]), medians, x[test])
        y = labels[train]
        if method == "single":
            sign = 1.0 if fit[y == 1, 0].mean() >= fit[y == 0, 0].mean() else -1.0
            scores[test] = sign * held[:, 0]
        elif method == "mean_diff":
            scores[test] = held @ (fit[y == 1].mean(0) - fit[y == 0].mean(0))
        elif method == "logistic":
            mu, sd = fit.mean(0), fit.std(0)
            sd[sd == 0] = 1.0
            model = LogisticRegression(max_iter=2000).fit((fit - mu) / sd, y)
            scores[test] = model.decision_function((held - mu) / sd)
        else:
            raise ActlabError(f"unknown detection method '{method}'; use single, logistic or mean_diff")
    return scores


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")
