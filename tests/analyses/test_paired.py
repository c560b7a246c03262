"""Paired statistics against scipy and numpy on fixed data; the grouped
split never puts a pair (or a repeated prompt) on both sides."""

import numpy as np
import pytest
from scipy import stats

from actlab.analyses.paired import auroc, fdr, grouped_folds, held_out_scores, paired_effects


def test_paired_effects_against_scipy():
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 60)
    b = a + rng.normal(0.4, 1, 60)
    a[5] = np.nan  # a pair with a missing value is left out
    out = paired_effects(a, b, seed=1)
    keep = ~np.isnan(a)
    diff = b[keep] - a[keep]
    assert out["n"] == 59 and out["mean_diff"] == pytest.approx(diff.mean())
    assert out["d_z"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diff).pvalue)
    pooled = np.sqrt((a[keep].var(ddof=1) + b[keep].var(ddof=1)) / 2)
    assert out["cohens_d_pooled"] == pytest.approx((b[keep].mean() - a[keep].mean()) / pooled)
    assert out["d_z_low"] < out["d_z"] < out["d_z_high"]
    assert paired_effects(a, b, seed=1) == out  # seeded
    ci = stats.bootstrap((diff,), lambda x, axis=-1: x.mean(axis) / x.std(axis, ddof=1), n_resamples=2000,
                         method="percentile", random_state=np.random.default_rng(1)).confidence_interval
    assert (out["d_z_low"], out["d_z_high"]) == pytest.approx((ci.low, ci.high))


def test_degenerate_effects():
    same = paired_effects(np.ones(5), np.ones(5))
    assert np.isnan(same["d_z"]) and np.isnan(same["wilcoxon_p"])
    assert paired_effects(np.array([1.0]), np.array([2.0]))["n"] == 1


def test_fdr_against_scipy():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2, 0.001])
    q = fdr(p)
    assert np.isnan(q[2])
    ok = ~np.isnan(p)
    assert np.allclose(q[ok], stats.false_discovery_control(p[ok], method="bh"))
    # by hand: sorted 0.001, 0.01, 0.03, 0.04, 0.2 (m = 5) -> q = min over the tail of p * m / rank
    assert np.allclose(q[ok], [0.025, 0.05, 0.05, 0.2, 0.005])


def test_grouped_folds_keep_groups_whole():
    groups = np.repeat(np.arange(30), 2)  # a pair: two texts
    groups[:4] = 99  # a repeated prompt: two pairs in one group
    labels = np.tile([0, 1], 30)
    folds = grouped_folds(labels, groups, k=5, seed=0)
    assert len(folds) == 5
    seen = np.zeros(len(labels), int)
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        seen[test] += 1
    assert (seen == 1).all()


def test_held_out_detection():
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 100)
    groups = np.repeat(np.arange(100), 2)
    signal = rng.normal(size=(200, 5))
    signal[labels == 1, 0] += 3.0  # one informative column
    folds = grouped_folds(labels, groups, 5, 0)
    for method in ("single", "logistic", "mean_diff"):
        x = signal[:, :1] if method == "single" else signal
        assert auroc(held_out_scores(x, labels, folds, method), labels) > 0.9, method
    flipped = held_out_scores(-signal[:, :1], labels, folds, "single")  # the sign is learned on training splits
    assert auroc(flipped, labels) > 0.9
    noise = held_out_scores(rng.normal(size=(200, 5)), labels, folds, "logistic")
    assert 0.3 < auroc(noise, labels) < 0.7
