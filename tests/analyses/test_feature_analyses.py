"""Seed 000's analyses against naive per-latent / per-text loops."""

import math

import numpy as np
import pytest

from actlab.analyses import (
    category_specialists,
    coactivation,
    comparison_table,
    concept_features,
    explore,
    explore_tokens,
    most_frequent,
    most_selective,
    strongest,
)

T = 1.0


@pytest.fixture
def F():
    rng = np.random.default_rng(0)
    dense = rng.exponential(0.6, size=(40, 30)) * (rng.random((40, 30)) < 0.3)
    dense[:10, 3] += 4.0  # a category-0 specialist
    dense[5, 7] = 9.0  # one strong single hit
    return dense


CATEGORIES = [f"c{i // 10}" for i in range(40)]


def test_strongest(F):
    peaks = [(max(F[t][j] for t in range(40)), j) for j in range(30)]
    expected = [j for _, j in sorted(peaks, key=lambda p: -p[0])[:5]]
    rows = strongest(F)
    assert [r["latent"] for r in rows] == expected
    assert rows[0] == {"latent": 7, "max": 9.0, "text": 5}


def test_most_frequent(F):
    counts = [sum(1 for t in range(40) if F[t][j] > 0) for j in range(30)]
    rows = most_frequent(F, k=30)
    assert [r["count"] for r in rows] == sorted(counts, reverse=True)
    assert all(counts[r["latent"]] == r["count"] for r in rows)


def test_most_selective(F):
    counts = {j: sum(1 for t in range(40) if F[t][j] > T) for j in range(30)}
    eligible = sorted((c, -F[:, j].max(), j) for j, c in counts.items() if c >= 1)
    assert [r["latent"] for r in most_selective(F, T, k=6)] == [j for _, _, j in eligible[:6]]


def test_category_specialists(F):
    rows = category_specialists(F, CATEGORIES, threshold=T)
    assert rows[0]["category"] == "c0" and rows[0]["latent"] == 3 and rows[0]["specialist"]
    for row in rows:
        inside = [t for t in range(40) if CATEGORIES[t] == row["category"]]
        top = sorted(range(30), key=lambda j: -max(F[t][j] for t in inside))[:5]
        scores = {j: sum(F[t][j] > T for t in inside) - sum(F[t][j] > T for t in range(40) if t not in inside)
                  for j in top}
        assert row["score"] == max(scores.values())
        assert scores[row["latent"]] == row["score"]
        assert row["specialist"] == (row["score"] > 0)


def test_explore(F):
    rows = explore(F, 3, k=4)
    assert [r["text"] for r in rows] == sorted(range(40), key=lambda t: -F[t][3])[:4]


def test_concept_features_effect_size(F):
    concept, baseline = F[:10], F[10:]
    rows = concept_features(concept, baseline, threshold=T, k=30)
    for row in rows:
        j = row["latent"]
        a, b = list(concept[:, j]), list(baseline[:, j])
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
        vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
        pooled = math.sqrt(((len(a) - 1) * va + (len(b) - 1) * vb) / (len(a) + len(b) - 2))
        assert row["cohen_d"] == pytest.approx((ma - mb) / pooled if pooled else 0.0)
        assert row["concept_mean"] == pytest.approx(ma)  # a mean, not the original's sum
        assert row["concept_count"] == sum(x > T for x in a)
    assert rows[0]["latent"] == 3


def test_coactivation(F):
    rows = coactivation(F, latents=range(30), k=5)
    for row in rows:
        a, b = F[:, row["latent_a"]] > 0, F[:, row["latent_b"]] > 0
        assert row["both"] == int((a & b).sum())
        assert row["jaccard"] == pytest.approx((a & b).sum() / (a | b).sum())
    best_pair = max(((int(((F[:, i] > 0) & (F[:, j] > 0)).sum()), i, j)
                     for i in range(30) for j in range(i + 1, 30)))
    assert rows[0]["both"] == best_pair[0]


def test_comparison_table(F):
    table = comparison_table({"a": F, "b": F[:, ::-1].copy()}, CATEGORIES, threshold=T)
    assert set(table) == {"strongest", "frequent", "selective", "specialists"}
    assert table["strongest"]["a"][0] == 7 and table["strongest"]["b"][0] == 29 - 7
    assert 3 in table["specialists"]["a"]


def test_explore_tokens():
    values = np.array([0.0, 1.0, 0.5, 0.0, 0.0, 3.0, 0.2, 0.0, 0.0])
    offsets = [0, 3, 7, 9]  # three texts
    rows = explore_tokens(values, offsets, k=5)
    assert [r["text"] for r in rows] == [1, 0]  # text 2 never fires
    assert rows[0]["max"] == 3.0 and rows[0]["token_values"] == [0.0, 0.0, 3.0, 0.2]
