"""The measures every analysis shares, one implementation each (numpy, and
scikit-learn for the logistic probe): AUROC, balanced accuracy, Cohen's d, the
difference-of-means and logistic probes. Trait vectors, paired contrasts and
detection all use these."""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for label 1 against label 0:
    P(a label-1 score > a label-0 score), ties counting half (Mann-Whitney U
    over average ranks). NaN unless both labels occur."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """The mean of the recall of label 1 and of label 0 (0.5: chance,
    whatever the class balance). NaN unless both labels occur."""
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels) == 1
    if labels.all() or not labels.any():
        return float("nan")
    return float((predicted[labels].mean() + (~predicted[~labels]).mean()) / 2)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1]  # first index of each run of ties
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """(mean(a) - mean(b)) over the pooled standard deviation
    sqrt(((n_a - 1) var_a + (n_b - 1) var_b) / (n_a + n_b - 2)); for paired
    samples (n_a = n_b) that is sqrt((var_a + var_b) / 2). NaN when the pooled
    deviation is 0 or undefined (one value per side)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    df = len(a) + len(b) - 2
    if len(a) == 0 or len(b) == 0 or df < 1:
        return float("nan")
    pooled = np.sqrt((((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / df)
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("nan")


def mean_difference(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The difference-of-means direction mean(pos) - mean(neg), (d,)."""
    return np.asarray(pos).mean(axis=0) - np.asarray(neg).mean(axis=0)


def logistic_direction(pos: np.ndarray, neg: np.ndarray, c: float = 1.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """A logistic-regression probe (pos = 1) fitted on standardised features,
    mapped back to activation space: (w (d,), b) with the probe's logit
    x @ w + b. Constant features are left unscaled."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - mu) / sd, y)
    w = model.coef_[0] / sd  # w.(x - mu)/sd + b0 = (w/sd).x + (b0 - (w/sd).mu)
    return w, float(model.intercept_[0] - w @ mu)
