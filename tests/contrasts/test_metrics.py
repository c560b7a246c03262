"""Every per-text metric against a naive numpy implementation on dense
matrices (d_model x d_model inertia tensors), degenerate cases included, and
the formulas on hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from actlab.contrasts.metrics import (active_set, angle_deg, gini, jaccard, noise, shape_class, text_metrics,
                                     top_indices)

D, D_SAE = 24, 40


def naive(x, f, x_hat, w_dec):
    """One row, the obvious way: dense T (d x d), numpy eigh, sorted lists."""
    active = np.flatnonzero(f > 0)
    out = {"l0": len(active), "recon_error": np.linalg.norm(x - x_hat),
           "recon_rel_error": np.linalg.norm(x - x_hat) / np.linalg.norm(x),
           "energy": f.sum(), "l2": np.linalg.norm(f)}
    nan = float("nan")
    if len(active) == 0:
        return out | dict(gini=nan, top50_entropy=nan, sphericity=nan, elongation=nan, eigen_entropy=nan,
                          eigen_entropy_norm=nan, participation_ratio=nan, misalignment_deg=nan), None
    v = np.sort(f[active])
    n = len(v)
    out["gini"] = 2 * np.sum(np.arange(1, n + 1) * v) / (n * v.sum()) - (n + 1) / n
    top = np.sort(f[active])[::-1][:50]
    p = top / top.sum()
    out["top50_entropy"] = -np.sum(p * np.log(p))
    w = f[active] / f[active].sum()
    r = w_dec[active].astype(np.float64)
    c = w @ r
    t = sum(wi * np.outer(ri - c, ri - c) for wi, ri in zip(w, r))
    lam, vec = np.linalg.eigh(t)
    lam, vec = np.clip(lam[::-1], 0, None), vec[:, ::-1]
    if lam[0] <= 1e-12:
        return out | dict(sphericity=nan, elongation=nan, eigen_entropy=nan, eigen_entropy_norm=nan,
                          participation_ratio=nan, misalignment_deg=nan), (c, None)
    out["sphericity"], out["elongation"] = math.sqrt(lam[2] / lam[0]), math.sqrt(lam[1] / lam[0])
    q = lam[lam > 1e-9 * lam[0]] / lam.sum()
    out["eigen_entropy"] = -np.sum(q * np.log(q))
    out["eigen_entropy_norm"] = out["eigen_entropy"] / math.log(len(q)) if len(q) > 1 else nan
    out["participation_ratio"] = lam.sum() ** 2 / np.sum(lam ** 2)
    e1 = vec[:, 0]
    out["misalignment_deg"] = math.degrees(math.acos(min(1.0, abs(c @ e1) / np.linalg.norm(c))))
    return out, (c, e1)


def codes(rows, l0s, seed=0):
    g = np.random.default_rng(seed)
    f = np.zeros((rows, D_SAE), np.float32)
    for i, l0 in enumerate(l0s):
        f[i, g.choice(D_SAE, l0, replace=False)] = g.uniform(0.1, 3.0, l0)
    return f


@pytest.mark.parametrize("l0s", [[0, 1, 2, 3, 7, 25], [12, 12, 5]])
def test_metrics_against_dense_numpy(l0s):
    g = np.random.default_rng(1)
    w_dec = g.normal(size=(D_SAE, D)).astype(np.float32)
    f = codes(len(l0s), l0s)
    x = g.normal(size=(len(l0s), D)).astype(np.float32)
    x_hat = x + 0.1 * g.normal(size=x.shape).astype(np.float32)
    got, geo = text_metrics(*(torch.from_numpy(a) for a in (x, f, x_hat, w_dec)))
    for i in range(len(l0s)):
        expected, shape = naive(x[i], f[i], x_hat[i], w_dec)
        for name, value in expected.items():
            value_got = float(got[name][i])
            if math.isnan(value):
                assert math.isnan(value_got), (l0s[i], name)
            else:
                assert value_got == pytest.approx(value, rel=1e-4, abs=1e-6), (l0s[i], name)
        if shape is not None and shape[1] is not None:  # the axis: the dense top eigenvector, up to sign
            assert abs(float(torch.cosine_similarity(geo.axis[i], torch.from_numpy(shape[1]), dim=0))) >= 0.9999
            assert np.allclose(geo.centroid[i].numpy(), shape[0], rtol=1e-5, atol=1e-6)


def test_two_active_latents_have_one_direction():
    w_dec = torch.eye(3)
    f = torch.tensor([[1.0, 3.0, 0.0]])
    got, geo = text_metrics(torch.ones(1, 3), f, torch.ones(1, 3), w_dec)
    assert float(got["elongation"][0]) == 0 and float(got["sphericity"][0]) == 0
    assert shape_class(0.0, 0.0) == "Prolate"
    # masses 1/4, 3/4 on e1, e2: c = (1/4, 3/4, 0); the spread is along e1 - e2
    assert torch.allclose(geo.centroid[0], torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64))
    assert abs(float(geo.axis[0] @ torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))) == pytest.approx(2 ** 0.5)
    assert float(got["participation_ratio"][0]) == pytest.approx(1.0)
    assert math.isnan(float(got["eigen_entropy_norm"][0]))  # rank 1: no spectrum to normalise by


def test_gini_entropy_and_participation_by_hand():
    f = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 4.0, 0.0], [1.0, 2.0, 3.0, 0.0, 0.0]])
    g = gini(active_set(f))
    assert float(g[0]) == pytest.approx(0.0) and float(g[1]) == pytest.approx(0.0)
    # ascending 1, 2, 3: 2 (1 + 4 + 9) / (3 * 6) - 4 / 3 = 28 / 18 - 24 / 18 = 2 / 9
    assert float(g[2]) == pytest.approx(2 / 9)
    from actlab.contrasts.metrics import shannon, spectrum_metrics
    assert float(shannon(torch.tensor([[0.5, 0.5, 0.0]]))[0]) == pytest.approx(math.log(2))
    m = spectrum_metrics(torch.tensor([[4.0, 1.0, 1.0, 0.0]], dtype=torch.float64))
    assert float(m["participation_ratio"][0]) == pytest.approx(36 / 18)  # (4+1+1)^2 / (16+1+1)
    assert float(m["elongation"][0]) == pytest.approx(0.5) and float(m["sphericity"][0]) == pytest.approx(0.5)
    p = np.array([4, 1, 1]) / 6
    assert float(m["eigen_entropy"][0]) == pytest.approx(-(p * np.log(p)).sum())
    assert float(m["eigen_entropy_norm"][0]) == pytest.approx(-(p * np.log(p)).sum() / math.log(3))


def test_shape_classes_use_the_seeds_thresholds():
    assert shape_class(0.95, 0.95) == "Spherical"
    assert shape_class(0.5, 0.85) == "Oblate"
    assert shape_class(0.5, 0.5) == "Prolate"
    assert shape_class(0.7, 0.7) == "Triaxial"
    assert shape_class(float("nan"), 0.5) == "undefined"


def test_jaccard_and_ties():
    a = torch.tensor([[3, 1, -1]])
    b = torch.tensor([[1, 2, 5]])
    assert float(jaccard(a, b)[0]) == pytest.approx(1 / 4)
    assert math.isnan(float(jaccard(torch.tensor([[-1, -1]]), torch.tensor([[-1, -1]]))[0]))
    tied = torch.tensor([[2.0, 2.0, 2.0, 0.0]])
    assert sorted(top_indices(tied, 3)[0].tolist()) == [0, 1, 2] and top_indices(tied, 4)[0, 3] == -1
    assert float(angle_deg(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]]), unsigned=True)[0]) == 0.0


def test_noise_is_per_row_and_scaled():
    x = torch.tensor([[3.0, 4.0] + [0.0] * 98, [0.0] * 100])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (7, 8)]  # noqa: E731
    a = noise(x, gens(), 2000, 0.1)
    assert torch.equal(a, noise(x, gens(), 2000, 0.1))
    assert float(a[0].norm(dim=-1).mean()) == pytest.approx(0.5, rel=0.02)  # 10% of |x| = 5
    assert float(a[1].abs().max()) == 0.0
    assert torch.equal(noise(x[:1], gens()[:1], 3, 0.1), noise(x, gens(), 3, 0.1)[:1])  # batching changes no draw
