"""Latents runs against brute force over the same windows (one window per
forward, the SAE applied to the hook's activations, plain loops), invariant
to shard and batch size, resumable after a kill, with per-token codes kept
on request, and one-line errors for bad input."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import actlab
from actlab import ActlabError, LatentsConfig, latents_run
from actlab.latents import run as latents_runs
from actlab.latents.summary import HIST_EDGES
from conftest import TEXTS, assert_tables_close, random_sae
from actlab.runs import RunControl

HOOK, LAYER = "blocks.1.hook_resid_post", 1
TIE = 1e-5  # windows whose values differ by less than this may swap places between batch shapes


def corpus(n=14):
    return [" ".join([TEXTS[(i + k) % len(TEXTS)] for k in range(1 + i % 4)]) for i in range(n)]


def saes(bos):
    return {"std": random_sae(HOOK, seed=3, prepend_bos=bos),
            "topk": random_sae(HOOK, arch="topk", seed=4, prepend_bos=bos)}


def brute_windows(tokenizer, texts, context, bos):
    content = context - bos
    out = []
    for t, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for w, s in enumerate(range(0, len(ids), content)):
            out.append(((t << 24) | w, t, s, ([tokenizer.bos_token_id] if bos else []) + ids[s:s + content]))
    return out


@torch.no_grad()
def brute_codes(model, sae, windows, bos):
    """{window key: (T, d_sae) codes}, BOS zeroed, one window per forward."""
    codes = {}
    for key, _, _, ids in windows:
        hidden = model.hf_model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER + 1]
        f = sae.encode(hidden[0].float())
        if bos:
            f[0] = 0
        codes[key] = f.numpy().astype(np.float64)
    return codes


def check_top(mine, reference):
    """Same windows in the same order, except where values tie within TIE."""
    assert len(mine) == len(reference)
    for (v, k), (rv, rk) in zip(mine, reference):
        assert v == pytest.approx(rv, rel=1e-5)
        if k != rk:
            assert abs(v - dict((b, a) for a, b in reference)[k]) <= TIE * max(abs(v), 1)


@pytest.mark.parametrize("bos", [True, False])
def test_run_equals_brute_force(tmp_path, tiny_models, bos):
    model, texts, cfg = tiny_models["llama"], corpus(), LatentsConfig(context=6, top=5, batch_size=3)
    path = latents_run(model, texts, saes(bos), tmp_path / "run", cfg, control=RunControl(shard_size=4))
    run = actlab.open_run(path)
    windows = brute_windows(model.tokenizer, texts, 6, bos)
    n_tokens = sum(len(ids) - bos for *_, ids in windows)
    assert run.manifest["n_tokens"] == n_tokens and run.manifest["n_windows"] == len(windows)
    for name, sae in saes(bos).items():
        codes = brute_codes(model, sae, windows, bos)
        latents = run.latents(name).to_pandas()
        histograms = pq.read_table(path / "histograms.parquet").to_pandas()
        histograms = histograms[histograms.sae == name]
        for j in range(sae.cfg.d_sae):
            values = np.concatenate([c[:, j] for c in codes.values()])
            active = values[values > 0]
            row = latents[latents.latent == j].iloc[0]
            assert row["count"] == len(active)
            assert row["frequency"] == pytest.approx(len(active) / n_tokens)
            assert row["max"] == pytest.approx(active.max(initial=0), rel=1e-5)
            assert row["mean"] == pytest.approx(active.mean() if len(active) else 0, rel=1e-5)
            peaks = sorted(((c[:, j].max(), k) for k, c in codes.items() if c[:, j].max() > 0),
                           key=lambda p: (-p[0], p[1]))
            assert row["windows"] == len(peaks)
            hist = histograms[histograms.latent == j]
            bins = np.searchsorted(HIST_EDGES[1:-1], active.astype(np.float32), side="right")
            expected = np.bincount(bins, minlength=len(HIST_EDGES) - 1)
            assert dict(zip(hist["bin"], hist["count"])) == {b: c for b, c in enumerate(expected) if c}
            if j % 8 == 0:
                top = run.top(name, j).to_pandas()
                check_top(list(zip(top.value, top.window)), peaks[:5])
                for _, entry in top.iterrows():  # the position holds the window's max; tokens are the window's
                    key = entry.window
                    assert codes[key][entry.position, j] == pytest.approx(entry.value, rel=1e-5)
                    ids = next(w[3] for w in windows if w[0] == key)
                    assert list(entry.token_ids) == ids and len(entry.tokens) == len(ids)
                    assert entry.text_id == key >> 24 and entry.start == (key & (2**24 - 1)) * (6 - bos)


def random_corpus(n=16, seed=0):
    rng = np.random.default_rng(seed)
    words = "the a cat dog runs sleeps red blue under over quickly slowly one two three".split()
    return [" ".join(rng.choice(words, size=rng.integers(3, 30))) for _ in range(n)]


def test_shard_size_and_batch_size_change_nothing(tmp_path, tiny_models):
    """Counts and histograms exactly, values within 1e-5; top and interval
    windows identical except where float noise from the batch shape reorders
    windows whose values tie within TIE (equal prefixes give equal values)."""
    model, texts = tiny_models["llama"], random_corpus()
    a = latents_run(model, texts, saes(True), tmp_path / "a", LatentsConfig(context=7, batch_size=1), control=RunControl(shard_size=3))
    b = latents_run(model, texts, saes(True), tmp_path / "b", LatentsConfig(context=7, max_batch_tokens=300), control=RunControl(shard_size=100))
    for name in ("latents", "histograms", "cofiring", "logit_effects", "neighbours"):
        assert_tables_close(pq.read_table(a / f"{name}.parquet"), pq.read_table(b / f"{name}.parquet"), label=name)
    ta, tb = (pq.read_table(p / "top.parquet").to_pandas() for p in (a, b))
    assert ta[["sae", "latent", "rank"]].equals(tb[["sae", "latent", "rank"]])
    assert np.allclose(ta.value, tb.value, rtol=1e-5)
    swapped = ta.window != tb.window
    gap = np.abs(ta.value[swapped].to_numpy() - tb.value[swapped].to_numpy()) / ta.value[swapped].to_numpy()
    assert gap.max() <= TIE, gap.max()
    # intervals: identical for every latent whose whole seeded sample is free of ties
    sample = pq.read_table(b / "sample-00000.parquet").to_pandas()  # b's one shard holds the run's sample
    ia, ib = (pq.read_table(p / "intervals.parquet").to_pandas() for p in (a, b))
    checked = 0
    for (sae, latent), group in sample.groupby(["sae", "latent"]):
        if (np.diff(np.sort(group.value.to_numpy())) <= TIE).any():
            continue
        rows_a = ia[(ia.sae == sae) & (ia.latent == latent)]
        rows_b = ib[(ib.sae == sae) & (ib.latent == latent)]
        assert rows_a.drop(columns="value").reset_index(drop=True).equals(
            rows_b.drop(columns="value").reset_index(drop=True))
        checked += 1
    assert checked >= 20  # of 256: short random windows share prefixes, so most samples hold ties


def test_killed_run_resumes_to_the_same_tables(tmp_path, tiny_models, monkeypatch):
    model, texts, cfg = tiny_models["llama"], corpus(), LatentsConfig(context=6)
    clean = latents_run(model, texts, saes(True), tmp_path / "clean", cfg, control=RunControl(shard_size=4))
    real_write, written = latents_runs.write_parquet_atomic, []

    def dying_write(path, table):
        if str(path).endswith("shard-00001.parquet"):
            raise KeyboardInterrupt  # killed as the second shard's marker is written
        written.append(path)
        real_write(path, table)

    monkeypatch.setattr(latents_runs, "write_parquet_atomic", dying_write)
    with pytest.raises(KeyboardInterrupt):
        latents_run(model, texts, saes(True), tmp_path / "resumed", cfg, control=RunControl(shard_size=4))
    with pytest.raises(ActlabError, match="incomplete"):
        actlab.open_run(tmp_path / "resumed")
    monkeypatch.setattr(latents_runs, "write_parquet_atomic", real_write)
    resumed = latents_run(model, texts, saes(True), tmp_path / "resumed", cfg, control=RunControl(shard_size=4))
    for name in latents_runs.TABLES:
        assert pq.read_table(resumed / f"{name}.parquet").equals(pq.read_table(clean / f"{name}.parquet")), name


def test_kept_codes_are_the_per_token_codes(tmp_path, tiny_models):
    model, texts = tiny_models["llama"], corpus(6)
    path = latents_run(model, texts, saes(True), tmp_path / "run", LatentsConfig(context=6, keep_tokens=True))
    codes = pq.read_table(path / "codes-00000.parquet").to_pandas()
    windows = brute_windows(model.tokenizer, texts, 6, True)
    for name, sae in saes(True).items():
        reference = brute_codes(model, sae, windows, True)
        mine = codes[codes.sae == name]
        expected = [(k, p, j) for k, c in reference.items() for p, j in zip(*np.nonzero(c))]
        assert sorted(zip(mine.window, mine.position, mine.latent)) == sorted(expected)
        got = np.array([reference[k][p, j] for k, p, j in zip(mine.window, mine.position, mine.latent)])
        assert np.allclose(mine.value, got, rtol=1e-5, atol=1e-5 * got.max())  # near-zero codes: absolute


def test_bad_input_is_one_line(tmp_path, tiny_models):
    model = tiny_models["llama"]
    with pytest.raises(ActlabError, match="context must be"):
        LatentsConfig(context=0)
    with pytest.raises(ActlabError, match="no room"):
        latents_run(model, corpus(), saes(True), tmp_path / "a", LatentsConfig(context=1))
    with pytest.raises(ActlabError, match="d_in"):
        latents_run(model, corpus(), {"wide": random_sae(HOOK, d_in=32)}, tmp_path / "b")
    path = latents_run(model, corpus(4), saes(False), tmp_path / "c", LatentsConfig(context=8))
    run = actlab.open_run(path)
    with pytest.raises(ActlabError, match="outside 0..127"):
        run.top("std", 128)
    with pytest.raises(ActlabError, match="no SAE 'nope'"):
        run.latents("nope")
    with pytest.raises(ActlabError, match="pick an SAE"):
        run.latents()
    with pytest.raises(ActlabError, match="not a str; wrap one text as \\[text\\]"):
        latents_run(model, "a text", saes(True), tmp_path / "d")


def test_explanations_join_the_latents_table(tmp_path, tiny_models):
    import pyarrow as pa

    path = latents_run(tiny_models["llama"], corpus(4), saes(False), tmp_path / "run", LatentsConfig(context=8))
    run = actlab.open_run(path)
    assert "explanation" not in run.latents("std").column_names
    pq.write_table(pa.table({"sae": ["std", "std", "topk"], "latent": pa.array([3, 5, 3], pa.int32()),
                             "explanation": ["dogs", "cats", "other"], "score": [0.9, None, 0.1]}),
                   path / "explanations.parquet")
    table = run.latents("std").to_pandas()
    assert len(table) == 128 and table.latent.tolist() == list(range(128))
    assert table.explanation[3] == "dogs" and table.explanation[5] == "cats" and table.explanation.isna().sum() == 126
    assert table.score[3] == 0.9 and np.isnan(table.score[5])
