"""Latent summaries against brute force: every part of summarize, merges in
any split and order, the tables round trip, interval deciles, co-firing."""

import numpy as np
import pytest
import torch

from actlab.latents import LatentsConfig
from actlab.latents.config import DECILES, HASHES
from actlab.latents.summary import (EMPTY, Codes, HIST_EDGES, LatentSummary, from_tables, merge, summarize, to_tables,
                                    token_hashes, window_priority)
from actlab.latents.tables import cofiring_table, intervals_table

MASK64 = (1 << 64) - 1
CFG = LatentsConfig(top=4, intervals=2, seed=7)


def py_mix64(x: int) -> int:
    """splitmix64's finaliser on Python ints, cut to 62 bits: the reference for the torch version."""
    x &= MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    x ^= x >> 31
    return x & ((1 << 62) - 1)


def py_priority(seed, latent, key):
    inner = py_mix64((key * 0x9E3779B97F4A7C15 + seed) & MASK64)
    return py_mix64(inner ^ (((latent + 1) * 0xBF58476D1CE4E5B9) & MASK64))


def py_token_hash(seed, key, position, slot):
    token = py_mix64((py_mix64((key * 0x9E3779B97F4A7C15 + seed) & MASK64) + position) & MASK64)
    return py_mix64(token ^ (((slot + 1) * 0x94D049BB133111EB) & MASK64))


def random_codes(B=12, T=7, D=9, seed=0, density=0.3):
    g = torch.Generator().manual_seed(seed)
    codes = torch.rand(B, T, D, generator=g) * 10 ** (torch.rand(B, T, D, generator=g) * 6 - 3)
    codes = codes * (torch.rand(B, T, D, generator=g) < density)
    codes[:, -2:][::3] = 0  # some padded tails
    keys = torch.randperm(10_000, generator=g)[:B].long() * 37 + (1 << 30)
    return codes, keys


def test_hashes_match_a_python_reference():
    keys = torch.tensor([0, 1, 5, 1 << 40, (123 << 24) | 7])
    for latent in (0, 3, 2047):
        got = window_priority(11, torch.tensor(latent), keys).tolist()
        assert got == [py_priority(11, latent, k) for k in keys.tolist()]
    got = token_hashes(11, keys, torch.tensor([0, 3, 1, 63, 2]), range(5, 8))
    for i, (k, p) in enumerate(zip(keys.tolist(), [0, 3, 1, 63, 2])):
        assert got[i].tolist() == [py_token_hash(11, k, p, s) for s in range(5, 8)]


def brute_force(codes, keys, cfg):
    """Every summary part, one latent at a time, from plain loops."""
    c, keys = codes.numpy().astype(np.float64), keys.tolist()
    B, T, D = c.shape
    out = {}
    for j in range(D):
        v = c[:, :, j]
        active = v[v > 0]
        windows = [(v[b].max(), keys[b], int(v[b].argmax())) for b in range(B) if v[b].max() > 0]
        top = sorted(windows, key=lambda w: (-w[0], w[1]))[:cfg.top]
        prio = sorted(((py_priority(cfg.seed, j, k), k, m, p) for m, k, p in windows))[:cfg.sample_size]
        tokens = [(keys[b], t) for b in range(B) for t in range(T) if v[b, t] > 0]
        minhash = [min((py_token_hash(cfg.seed, k, t, s) for k, t in tokens), default=EMPTY) for s in range(HASHES)]
        bins = np.searchsorted(HIST_EDGES[1:-1], active.astype(np.float32), side="right")
        out[j] = dict(count=len(active), sum=active.sum(), max=active.max(initial=0.0), windows=len(windows),
                      hist=np.bincount(bins, minlength=len(HIST_EDGES) - 1), top=top, sample=prio, minhash=minhash)
    return out


def filled(summary: LatentSummary, prefix: str, j: int) -> list[tuple]:
    key = getattr(summary, f"{prefix}_key")[j]
    keep = key != EMPTY
    return list(zip(getattr(summary, f"{prefix}_value")[j][keep].double().tolist(), key[keep].tolist(),
                    getattr(summary, f"{prefix}_position")[j][keep].tolist()))


def assert_matches(summary: LatentSummary, reference: dict) -> None:
    for j, ref in reference.items():
        assert summary.count[j] == ref["count"] and summary.windows[j] == ref["windows"]
        assert summary.sum[j].item() == pytest.approx(ref["sum"], rel=1e-6)
        assert summary.max[j].item() == pytest.approx(ref["max"], rel=1e-6)
        assert summary.hist[j].tolist() == ref["hist"].tolist()
        assert summary.minhash[j].tolist() == ref["minhash"]
        top = filled(summary, "top", j)
        assert [(k, p) for _, k, p in top] == [(k, p) for _, k, p in ref["top"]]
        assert np.allclose([v for v, _, _ in top], [v for v, _, _ in ref["top"]], rtol=1e-6)
        sample = filled(summary, "sample", j)
        assert [(k, p) for _, k, p in sample] == [(k, p) for _, k, _, p in ref["sample"]]
        priorities = summary.sample_priority[j][summary.sample_key[j] != EMPTY].tolist()
        assert priorities == [q for q, _, _, _ in ref["sample"]]


def test_summarize_then_merge_equals_brute_force():
    codes, keys = random_codes()
    summary = merge(LatentSummary.empty(codes.shape[-1]), summarize(Codes.of(codes), keys, codes.shape[-1], CFG.seed), CFG)
    assert_matches(summary, brute_force(codes, keys, CFG))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_split_and_order_merges_to_the_same_summary(seed):
    codes, keys = random_codes(B=20, seed=seed)
    whole = merge(LatentSummary.empty(codes.shape[-1]), summarize(Codes.of(codes), keys, codes.shape[-1], CFG.seed), CFG)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(20, generator=g)
    cuts = sorted(torch.randperm(19, generator=g)[:4].add(1).tolist())
    parts = [order[a:b] for a, b in zip([0] + cuts, cuts + [20])]
    # shards of batches, each shard its own running summary, shards merged in reverse
    shards = []
    for part in parts:
        state = LatentSummary.empty(codes.shape[-1])
        for batch in part.split(2):
            state = merge(state, summarize(Codes.of(codes[batch]), keys[batch], codes.shape[-1], CFG.seed), CFG)
        shards.append(state)
    total = LatentSummary.empty(codes.shape[-1])
    for shard in reversed(shards):
        total = merge(total, from_tables(to_tables(shard, "s"), codes.shape[-1]), CFG)
    for name in ("count", "windows", "max", "hist", "minhash"):
        assert torch.equal(getattr(total, name), getattr(whole, name)), name
    assert torch.allclose(total.sum, whole.sum, rtol=1e-12)
    for j in range(codes.shape[-1]):
        assert filled(total, "top", j) == filled(whole, "top", j)
        assert filled(total, "sample", j) == filled(whole, "sample", j)


def test_interval_deciles_against_brute_force_and_reproducible():
    codes, keys = random_codes(B=300, T=3, D=4, density=0.5)
    cfg = LatentsConfig(intervals=2, seed=3)
    summary = merge(LatentSummary.empty(4), summarize(Codes.of(codes), keys, 4, cfg.seed), cfg)
    table = intervals_table(summary, "s", cfg.intervals, content=3).to_pandas()
    for j in range(4):
        sample = sorted(zip(summary.sample_value[j].tolist(), summary.sample_key[j].tolist(),
                            summary.sample_priority[j].tolist()))
        sample = [s for s in sample if s[1] != EMPTY]
        n = len(sample)
        assert n == min(cfg.sample_size, int(summary.windows[j]))
        expected = []
        for d in range(DECILES):
            group = [s for i, s in enumerate(sample) if i * DECILES // n == d]
            expected += [(d, k) for _, k, _ in sorted(group, key=lambda s: (s[2], s[1]))[:cfg.intervals]]
        mine = table[table.latent == j]
        assert list(zip(mine.decile, mine.window)) == expected
        # deciles rise in value
        assert mine.groupby("decile").value.min().is_monotonic_increasing
    again = merge(LatentSummary.empty(4), summarize(Codes.of(codes), keys, 4, cfg.seed), cfg)
    assert intervals_table(again, "s", 2, 3).equals(intervals_table(summary, "s", 2, 3))
    other = LatentsConfig(intervals=2, seed=4)
    reseeded = merge(LatentSummary.empty(4), summarize(Codes.of(codes), keys, 4, other.seed), other)
    assert not intervals_table(reseeded, "s", 2, 3).equals(intervals_table(summary, "s", 2, 3))


def test_cofiring_against_brute_force_and_true_jaccard():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(40, 16, generator=g) < 0.4  # latent 0's tokens
    D = 6
    on = torch.zeros(40, 16, D, dtype=torch.bool)
    on[..., 0] = base
    on[..., 1] = base ^ (torch.rand(40, 16, generator=g) < 0.1)  # mostly with 0
    on[..., 2] = torch.rand(40, 16, generator=g) < 0.4  # independent
    on[..., 3] = base & (torch.rand(40, 16, generator=g) < 0.5)  # a subset of 0
    on[..., 4] = on[..., 2]  # identical to 2
    codes = on.float() * (1 + torch.rand(40, 16, D, generator=g))
    keys = torch.arange(40) + 1000
    summary = merge(LatentSummary.empty(D), summarize(Codes.of(codes), keys, D, 0), LatentsConfig())
    table = cofiring_table(summary, "s", k=3).to_pandas()
    sig = summary.minhash.numpy()
    for j in range(5):  # latent 5 never fires: no row
        equal = {o: int((sig[j] == sig[o]).sum()) for o in range(5) if o != j}
        expected = sorted(equal, key=lambda o: (-equal[o], o))[:3]
        mine = table[table.latent == j]
        assert mine.other.tolist() == expected
        assert np.allclose(mine.jaccard, [equal[o] / HASHES for o in expected])
    assert 5 not in table.latent.tolist()
    flat = on.reshape(-1, D).numpy()
    for a, b in ((0, 1), (0, 3), (2, 4), (0, 2)):
        true = (flat[:, a] & flat[:, b]).sum() / (flat[:, a] | flat[:, b]).sum()
        estimate = (sig[a] == sig[b]).mean()
        assert abs(estimate - true) <= 4 * max(np.sqrt(true * (1 - true) / HASHES), 1 / HASHES)
