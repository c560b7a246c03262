import numpy as np

from actlab.analyses.probes import nearest_centroid_accuracy


def naive_loo_accuracy(x, labels):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.asarray(labels)
    hits = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        best, best_score = None, -np.inf
        for label in np.unique(labels):
            centroid = x[keep & (labels == label)].mean(0)
            score = x[i] @ centroid / np.linalg.norm(centroid)
            if score > best_score:
                best, best_score = label, score
        hits += best == labels[i]
    return hits / len(x)


def test_nearest_centroid_matches_naive_loop():
    rng = np.random.default_rng(0)
    labels = [i % 4 for i in range(60)]
    x = rng.normal(size=(60, 16)) + np.eye(16)[np.array(labels)] * 1.5
    assert nearest_centroid_accuracy(x, labels) == naive_loo_accuracy(x, labels)
    assert 0.25 < nearest_centroid_accuracy(x, labels) < 1.0
