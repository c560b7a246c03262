"""Vector methods and their held-out evaluation against independent
computations (numpy loops, scikit-learn)."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from actlab import ActlabError
from actlab.traits.vectors import evaluate, fit_vectors, mean_diff, pca_diff, probe, split_pairs


def planted(n_pairs=40, d=16, seed=0, shift=2.0):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    base = rng.normal(size=(n_pairs, d))
    strength = shift * rng.uniform(0.5, 2.0, size=(n_pairs, 1))  # pairs express the trait unequally
    pos = base + strength * direction + rng.normal(size=(n_pairs, d)) * 0.5
    neg = base - strength * direction + rng.normal(size=(n_pairs, d)) * 0.5
    return pos, neg, direction


def test_mean_diff_and_pca_diff_against_references():
    pos, neg, _ = planted()
    expected = np.array([sum(pos[i, j] for i in range(len(pos))) / len(pos) -
                         sum(neg[i, j] for i in range(len(neg))) / len(neg) for j in range(pos.shape[1])])
    assert np.allclose(mean_diff(pos, neg), expected)
    v = pca_diff(pos, neg)
    reference = PCA(n_components=1).fit(pos - neg).components_[0]
    assert abs(abs(v @ reference) - 1) < 1e-8  # same axis
    assert ((pos - neg) @ v).mean() > 0  # pointing from neg to pos


def test_probe_is_scikit_learns_standardised_logistic_regression():
    pos, neg, _ = planted(seed=1, shift=0.3)
    v = probe(pos, neg)
    x = np.concatenate([pos, neg])
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0)).fit(x, y)
    offset = pipe.decision_function(x) - x @ v
    assert np.allclose(offset, offset[0], atol=1e-6)  # same score up to the intercept


def test_split_keeps_pairs_together():
    pairs = np.repeat(np.arange(50), 2)
    train, test = split_pairs(pairs, 0.2, seed=5)
    assert not set(pairs[train]) & set(pairs[test])
    assert len(set(pairs[test])) == 10 and (train | test).all()
    again, _ = split_pairs(pairs, 0.2, seed=5)
    assert (again == train).all()


def test_fit_vectors_never_sees_held_out_rows():
    pos, neg, direction = planted(n_pairs=30)
    x = np.empty((60, pos.shape[1]))
    x[0::2], x[1::2] = pos, neg
    polarity = np.array(["pos", "neg"] * 30)
    pairs = np.repeat(np.arange(30), 2)
    fitted = fit_vectors(x, polarity, pairs, seed=0)
    assert set(fitted) == {"mean_diff", "probe", "pca_diff"}
    for method, (v, ev) in fitted.items():
        assert ev.auroc > 0.95 and ev.accuracy > 0.9 and ev.cohens_d > 2, method
        assert abs(v @ direction) / np.linalg.norm(v) > 0.5, method
    _, test = split_pairs(pairs, 0.2, 0)
    scrambled = x.copy()
    scrambled[test] = np.random.default_rng(9).normal(size=(test.sum(), x.shape[1])) * 100
    for method, (v, _) in fit_vectors(scrambled, polarity, pairs, seed=0).items():
        assert np.allclose(v, fitted[method][0]), method  # held-out rows never enter a vector


def test_evaluate_by_hand():
    v = np.array([1.0, 0.0])
    ev = evaluate(v, np.array([[2.0, 0]]), np.array([[0.0, 0]]), np.array([[3.0, 1], [0.5, 0]]),
                  np.array([[1.5, 0], [-1.0, 0]]))
    # threshold 1.0: pos 3.0 right, 0.5 wrong; neg 1.5 wrong, -1.0 right
    assert ev.accuracy == 0.5 and ev.auroc == 0.75


def test_too_few_kept_answers_is_a_clear_error():
    x = np.zeros((4, 3))
    with pytest.raises(ActlabError, match="no kept"):
        fit_vectors(x, np.array(["pos", "pos", "pos", "neg"]), np.array([0, 1, 2, 3]), held_out=0.25)


def test_best_layer_breaks_auroc_ties_by_effect_size():
    from actlab.traits.vectors import best_layers

    rows = [{"layer": 0, "method": "m", "auroc": 1.0, "cohens_d": 2.0},
            {"layer": 5, "method": "m", "auroc": 1.0, "cohens_d": 4.0},
            {"layer": 9, "method": "m", "auroc": 0.9, "cohens_d": 9.0},
            {"layer": 2, "method": "p", "auroc": 0.8, "cohens_d": 1.0}]
    best = best_layers(rows)
    assert best["m"]["layer"] == 5 and best["p"]["layer"] == 2
