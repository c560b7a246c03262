"""Counter-based sampling against numpy and scipy: the noise is uniform and
independent across rows, steps and tokens, its int32 hash equals the same
hash in exact 64-bit arithmetic, and a draw follows softmax(logits / T)
restricted to the nucleus."""

import numpy as np
import pytest
import torch
from scipy import stats

from actlab.generation import GenerationConfig
from actlab.generation import sampling


def exact_hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 in Python's unbounded integers, modulo 2**32."""
    out = []
    for v in x.tolist():
        v &= 0xFFFFFFFF
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        out.append(v ^ (v >> 16))
    return np.array(out, dtype=np.int64)


def test_int32_hash_equals_exact_arithmetic():
    x = torch.randint(-2 ** 31, 2 ** 31 - 1, (5000,), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    got = sampling._hash32(x).long().numpy() & 0xFFFFFFFF
    assert np.array_equal(got, exact_hash32(x.long().numpy()))


def test_counter_noise_is_uniform_and_depends_on_each_counter():
    n = 20000
    rows, zeros = torch.arange(n), torch.zeros(n, dtype=torch.long)
    by_row = sampling.counter_uniform(sampling.counter_keys(7, rows, zeros), zeros[:, None])[:, 0].numpy()
    by_step = sampling.counter_uniform(sampling.counter_keys(7, zeros, rows), zeros[:, None])[:, 0].numpy()
    by_token = sampling.counter_uniform(sampling.counter_keys(7, zeros[:1], zeros[:1]), rows[None])[0].numpy()
    for u in (by_row, by_step, by_token):
        assert stats.kstest(u, "uniform").pvalue > 1e-3 and 0 < u.min() and u.max() < 1
        assert abs(stats.pearsonr(u[:-1], u[1:]).statistic) < 0.03  # neighbours unrelated
    other_seed = sampling.counter_uniform(sampling.counter_keys(8, rows, zeros), zeros[:, None])[:, 0].numpy()
    assert abs(stats.pearsonr(by_row, other_seed).statistic) < 0.03
    flipped = sampling.counter_uniform(sampling.counter_keys(7, rows.flip(0), zeros), zeros[:, None])[:, 0]
    assert np.array_equal(by_row, flipped.flip(0).numpy())  # a row's noise does not depend on where it sits


@pytest.mark.parametrize("spread", ["peaked", "flat"])
@pytest.mark.parametrize("top_p", [0.8, 1.0])
def test_draws_follow_the_nucleus(spread, top_p):
    """Draws match softmax(logits / T) restricted to the smallest set of
    likeliest tokens reaching top_p (numpy), whether that set lies within
    the top-k candidates (peaked) or needs the whole vocabulary sorted (flat)."""
    vocab, draws, cfg = 3000, 6000, GenerationConfig(temperature=0.7, top_p=top_p, seed=5)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(vocab, generator=g) * (4.0 if spread == "peaked" else 0.3)
    p = np.exp((logits.double() / 0.7).numpy() - (logits.double() / 0.7).numpy().max())
    p /= p.sum()
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    nucleus = order[before <= top_p]
    if top_p < 1:
        assert (len(nucleus) < sampling.NUCLEUS_CANDIDATES) == (spread == "peaked")
    expected = np.zeros(vocab)
    expected[nucleus] = p[nucleus] / p[nucleus].sum()
    rows = torch.arange(draws)
    picks = sampling.choose_tokens(logits.expand(draws, vocab), cfg, rows, torch.zeros_like(rows)).numpy()
    assert set(picks) <= set(nucleus.tolist())
    counts = np.bincount(picks, minlength=vocab) / draws
    top = nucleus[:5]  # the likeliest tokens: frequencies within 4 standard errors
    assert np.all(np.abs(counts[top] - expected[top]) <= 4 * np.sqrt(expected[top] / draws) + 1e-9)
    head = nucleus[:20]  # chi-square over the likeliest tokens, the rest (if any) pooled
    observed, wanted = counts[head] * draws, expected[head] * draws
    if len(nucleus) > len(head):
        observed, wanted = np.append(observed, draws - observed.sum()), np.append(wanted, draws - wanted.sum())
    assert stats.chisquare(observed, wanted).pvalue > 1e-4


def test_a_last_digit_change_in_the_logits_does_not_change_a_draw():
    """What batch shapes do to logits (relative 1e-6) leaves draws alone,
    even from a flat distribution over the whole vocabulary."""
    logits = torch.randn(500, 49152, generator=torch.Generator().manual_seed(2)) * 0.3
    noisy = logits * (1 + 1e-6 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(3)))
    rows = torch.arange(500)
    for top_p in (0.9, 1.0):
        cfg = GenerationConfig(temperature=1.0, top_p=top_p)
        a = sampling.choose_tokens(logits, cfg, rows, rows)
        b = sampling.choose_tokens(noisy, cfg, rows, rows)
        assert (a != b).sum() <= 1


def test_greedy_is_argmax():
    logits = torch.randn(5, 100, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(5)
    assert torch.equal(sampling.choose_tokens(logits, GenerationConfig(), rows, rows), logits.argmax(-1))


@pytest.mark.parametrize("width", [100, 2048, 3 * sampling.MAX_BLOCK + 17, 49152])
def test_first_max_is_argmax_on_ties_and_nan(width):
    """The blocked CPU path against torch.argmax: random rows, a maximum
    repeated across blocks (the first one wins), one in the last partial
    block, a NaN (argmax takes it as largest), and -inf rows."""
    g = torch.Generator().manual_seed(width)
    scores = torch.randn(8, width, generator=g)
    scores[1, [width // 3, width - 1]] = 50.0  # a tie across blocks
    scores[2, width - 1] = 60.0  # the maximum is the last score
    scores[3, width // 2] = float("nan")
    scores[4] = float("-inf")
    scores[5, :] = 7.0  # all equal: the first
    assert torch.equal(sampling.first_max(scores), scores.argmax(-1))
