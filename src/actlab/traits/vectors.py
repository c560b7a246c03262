"""Trait vectors from pooled activations of kept pos / neg answers, per layer,
and their held-out evaluation. Pure functions on numpy arrays.

Methods (each returns a vector pointing from neg to pos):
    mean_diff  mean(pos) - mean(neg)
    probe      logistic-regression weights (pos = 1), on standardised features,
               mapped back to activation space
    pca_diff   first principal component of the centred paired differences
               pos_i - neg_i (repeng's pca_diff; not the mean difference)

The split is by pair (a pos answer and its neg twin, same instruction and
question), so no question is on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ActlabError

METHODS = ("mean_diff", "probe", "pca_diff")


def split_pairs(pairs: np.ndarray, held_out: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train / test masks over rows, whole pairs on one side."""
    unique = np.unique(pairs)
    if len(unique) < 2:
        raise ActlabError("need at least two pairs to hold some out; add questions or instructions")
    rng = np.random.default_rng(seed)
    n_test = min(max(1, round(len(unique) * held_out)), len(unique) - 1)
    test_pairs = rng.choice(unique, size=n_test, replace=False)
    test = np.isin(pairs, test_pairs)
    return ~test, test


def mean_diff(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    return pos.mean(axis=0) - neg.mean(axis=0)


def probe(pos: np.ndarray, neg: np.ndarray, c: float = 1.0, seed: int = 0) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - mu) / sd, y)
    return model.coef_[0] / sd  # w.(x - mu)/sd = (w/sd).x + const


def pca_diff(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """pos[i] and neg[i] must be twins (same pair)."""
    diffs = (pos - neg).astype(np.float64)
    centred = diffs - diffs.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    v = vt[0]
    return v if (diffs @ v).mean() >= 0 else -v


def auroc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """P(a pos score > a neg score), ties counting half (Mann-Whitney)."""
    order = np.concatenate([scores_pos, scores_neg])
    ranks = _average_ranks(order)
    n_pos, n_neg = len(scores_pos), len(scores_neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Mean difference over the pooled standard deviation (0 when that is 0,
    as with one sample per side)."""
    ss = sum(((x - x.mean()) ** 2).sum() for x in (a, b))
    pooled = np.sqrt(ss / max(len(a) + len(b) - 2, 1))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else 0.0


@dataclass
class Evaluation:
    accuracy: float  # threshold: midpoint of the train classes' mean projections
    auroc: float
    cohens_d: float
    n_test_pos: int
    n_test_neg: int


def evaluate(v: np.ndarray, train_pos, train_neg, test_pos, test_neg) -> Evaluation:
    unit = v / np.linalg.norm(v)
    threshold = ((train_pos @ unit).mean() + (train_neg @ unit).mean()) / 2
    sp, sn = test_pos @ unit, test_neg @ unit
    accuracy = float(((sp > threshold).sum() + (sn <= threshold).sum()) / (len(sp) + len(sn)))
    return Evaluation(accuracy, auroc(sp, sn), cohens_d(sp, sn), len(sp), len(sn))


def fit_vectors(x: np.ndarray, polarity: np.ndarray, pairs: np.ndarray, held_out: float = 0.2, seed: int = 0,
                methods=METHODS) -> dict[str, tuple[np.ndarray, Evaluation]]:
    """One layer: x (n, d) pooled activations of kept answers, polarity 'pos' /
    'neg', pair ids. Vectors come from the train split; evaluation from the
    held-out pairs. pca_diff uses only pairs whose both answers were kept."""
    polarity = np.asarray(polarity)
    train, test = split_pairs(np.asarray(pairs), held_out, seed)
    is_pos = polarity == "pos"
    for side, mask in (("train", train), ("held-out", test)):
        if not (mask & is_pos).any() or not (mask & ~is_pos).any():
            raise ActlabError(f"the {side} split has no kept {'pos' if not (mask & is_pos).any() else 'neg'} "
                              "answers; generate more or loosen the judge thresholds")
    tp, tn, ep, en = x[train & is_pos], x[train & ~is_pos], x[test & is_pos], x[test & ~is_pos]
    out = {}
    for method in methods:
        if method == "mean_diff":
            v = mean_diff(tp, tn)
        elif method == "probe":
            v = probe(tp, tn, seed=seed)
        elif method == "pca_diff":
            twins = _twins(np.asarray(pairs), polarity, train)
            if len(twins) < 2:
                continue
            v = pca_diff(x[[p for p, _ in twins]], x[[n for _, n in twins]])
        else:
            raise ActlabError(f"unknown method '{method}'; use {', '.join(METHODS)}")
        out[method] = (v.astype(np.float32), evaluate(v, tp, tn, ep, en))
    return out


def _twins(pairs: np.ndarray, polarity: np.ndarray, rows: np.ndarray) -> list[tuple[int, int]]:
    pos = {p: i for i, p in enumerate(pairs) if rows[i] and polarity[i] == "pos"}
    neg = {p: i for i, p in enumerate(pairs) if rows[i] and polarity[i] == "neg"}
    return [(pos[p], neg[p]) for p in sorted(pos.keys() & neg.keys())]


def best_layers(rows: list[dict]) -> dict[str, dict]:
    """Per method, the evaluation row with the highest held-out AUROC, ties
    going to the larger Cohen's d."""
    best: dict[str, dict] = {}
    for row in rows:
        current = best.get(row["method"])
        if current is None or (row["auroc"], row["cohens_d"]) > (current["auroc"], current["cohens_d"]):
            best[row["method"]] = row
    return best
