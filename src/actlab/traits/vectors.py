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

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..analyses.measures import auroc, cohens_d, logistic_direction, mean_difference
from ..errors import ActlabError
from ..pooling import parse_span_pooling
from ..registry import Registry


@dataclass
class VectorsConfig:
    """Which judged answers are kept, and how the vectors are fitted and evaluated."""

    pos_min: float = field(default=50.0, metadata={"help": "Keep pos answers scoring at least this."})
    neg_max: float = field(default=50.0, metadata={"help": "Keep neg answers scoring below this."})
    pooling: str = field(default="response_mean", metadata={
        "help": "response_mean, response_first:5, prompt_last, prompt_mean."})
    held_out: float = field(default=0.2, metadata={"help": "Fraction of pairs held out for evaluation."})
    seed: int = field(default=0, metadata={"help": "Seed of the held-out split and the probe."})

    def __post_init__(self):
        if not 0 < self.held_out < 1:
            raise ActlabError(f"held_out must be a fraction in (0, 1), not {self.held_out}", param="held_out")
        parse_span_pooling(self.pooling)

    def keep_rule(self) -> str:
        return f"pos score >= {self.pos_min:g}, neg score < {self.neg_max:g}"



def split_pairs(pairs: np.ndarray, held_out: float = VectorsConfig.held_out,
                seed: int = VectorsConfig.seed) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train / test masks over rows, whole pairs on one side."""
    unique = np.unique(pairs)
    if len(unique) < 2:
        raise ActlabError("need at least two pairs to hold some out; add questions or instructions")
    rng = np.random.default_rng(seed)
    n_test = min(max(1, round(len(unique) * held_out)), len(unique) - 1)
    test_pairs = rng.choice(unique, size=n_test, replace=False)
    test = np.isin(pairs, test_pairs)
    return ~test, test


@dataclass
class Split:
    """One layer's kept answers and their train split, as a vector method sees them."""

    x: np.ndarray  # (n, d) pooled activations
    is_pos: np.ndarray  # (n,) bool
    pairs: np.ndarray  # (n,) pair ids
    train: np.ndarray  # (n,) bool
    seed: int

    @property
    def train_pos(self) -> np.ndarray:
        return self.x[self.train & self.is_pos]

    @property
    def train_neg(self) -> np.ndarray:
        return self.x[self.train & ~self.is_pos]


VectorMethod = Callable[[Split], "np.ndarray | None"]  # a direction from neg to pos, or None: not fittable here
VECTOR_METHODS: Registry[VectorMethod] = Registry("vector method")


def mean_diff(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    return mean_difference(pos, neg)


def probe(pos: np.ndarray, neg: np.ndarray, c: float = 1.0, seed: int = 0) -> np.ndarray:
    return logistic_direction(pos, neg, c, seed)[0]


def pca_diff(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """pos[i] and neg[i] must be twins (same pair)."""
    diffs = (pos - neg).astype(np.float64)
    centred = diffs - diffs.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    v = vt[0]
    return v if (diffs @ v).mean() >= 0 else -v


def _pca_diff_of_twins(split: Split) -> np.ndarray | None:
    """pca_diff over the train pairs whose both answers were kept (None under two)."""
    twins = _twins(split.pairs, np.where(split.is_pos, "pos", "neg"), split.train)
    if len(twins) < 2:
        return None
    return pca_diff(split.x[[p for p, _ in twins]], split.x[[n for _, n in twins]])


VECTOR_METHODS.register("mean_diff", lambda split: mean_diff(split.train_pos, split.train_neg))
VECTOR_METHODS.register("probe", lambda split: probe(split.train_pos, split.train_neg, seed=split.seed))
VECTOR_METHODS.register("pca_diff", _pca_diff_of_twins)
METHODS = tuple(VECTOR_METHODS)  # the built-in methods, fitted by default


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
    scores, labels = np.r_[sp, sn], np.r_[np.ones(len(sp)), np.zeros(len(sn))]
    return Evaluation(accuracy, auroc(scores, labels), cohens_d(sp, sn), len(sp), len(sn))


def fit_vectors(x: np.ndarray, polarity: np.ndarray, pairs: np.ndarray, held_out: float = VectorsConfig.held_out,
                seed: int = VectorsConfig.seed, methods=METHODS) -> dict[str, tuple[np.ndarray, Evaluation]]:
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
    split = Split(x, is_pos, np.asarray(pairs), train, seed)
    tp, tn, ep, en = split.train_pos, split.train_neg, x[test & is_pos], x[test & ~is_pos]
    out = {}
    for method in methods:
        v = VECTOR_METHODS.pick(method, param="method")(split)
        if v is not None:
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
