"""Analyses: pure functions on activation arrays."""

from __future__ import annotations

import numpy as np


def nearest_centroid_accuracy(x: np.ndarray, labels: list) -> float:
    """Leave-one-out accuracy of a cosine nearest-centroid classifier: how well
    the rows of x separate by label. Each row is scored against centroids that
    exclude it."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    sums = np.zeros((len(classes), x.shape[1]))
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=len(classes)).astype(np.float64)
    # Centroids without row i: (sum - x_i) / (count - 1) for its own class.
    loo_own = (sums[y] - x) / np.maximum(counts[y] - 1, 1)[:, None]
    scores = x @ (sums / counts[:, None]).T
    own = np.einsum("ij,ij->i", x, loo_own)
    norms = np.linalg.norm(sums / counts[:, None], axis=1)
    scores = scores / norms.clip(1e-12)
    scores[np.arange(len(x)), y] = own / np.linalg.norm(loo_own, axis=1).clip(1e-12)
    return float((scores.argmax(axis=1) == y).mean())
