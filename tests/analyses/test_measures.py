"""The shared measures against independent references: scikit-learn's AUROC,
scipy's ranks, the textbook pooled-SD Cohen's d, scikit-learn's standardised
logistic regression; and their degenerate cases."""

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from actlab.analyses.measures import auroc, average_ranks, cohens_d, logistic_direction, mean_difference


def test_auroc_against_scikit_learn_with_ties():
    rng = np.random.default_rng(2)
    a, b = np.round(rng.normal(1, 1, 30), 1), np.round(rng.normal(0, 1, 25), 1)  # with ties
    scores, labels = np.r_[a, b], np.r_[np.ones(30), np.zeros(25)]
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    order = rng.permutation(len(scores))
    assert auroc(scores[order], labels[order]) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    assert np.isnan(auroc(scores, np.ones(len(scores))))  # one class: undefined
    assert auroc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5


def test_average_ranks_are_scipys():
    x = np.round(np.random.default_rng(3).normal(size=200), 1)
    assert np.array_equal(average_ranks(x), rankdata(x))


def test_cohens_d_is_the_pooled_sd_formula():
    rng = np.random.default_rng(4)
    a, b = rng.normal(1, 1, 30), rng.normal(0, 2, 25)
    pooled = np.sqrt((29 * np.var(a, ddof=1) + 24 * np.var(b, ddof=1)) / 53)
    assert cohens_d(a, b) == pytest.approx((a.mean() - b.mean()) / pooled, rel=1e-12)
    # paired (equal sizes): the average of the two variances
    b = b[:30] if len(b) >= 30 else rng.normal(0, 2, 30)
    assert cohens_d(a, b) == pytest.approx((a.mean() - b.mean()) / np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
    assert np.isnan(cohens_d(np.ones(4), np.ones(4)))  # no spread
    assert np.isnan(cohens_d(np.array([1.0]), np.array([0.0])))  # one value per side


def test_probes_against_references():
    rng = np.random.default_rng(5)
    pos, neg = rng.normal(0.3, 1, (40, 6)), rng.normal(0, 1, (50, 6))
    pos[:, 5] = neg[:, 5] = 2.0  # a constant feature is left unscaled
    assert np.allclose(mean_difference(pos, neg), pos.mean(0) - neg.mean(0))
    w, b = logistic_direction(pos, neg)
    x, y = np.concatenate([pos, neg]), np.r_[np.ones(40), np.zeros(50)]
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0)).fit(x, y)
    assert np.allclose(x @ w + b, pipe.decision_function(x), rtol=1e-6, atol=1e-8)
