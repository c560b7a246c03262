"""`actlab sae train` on a tiny model: SAELens trains, actlab and sae_lens load the result."""

import json

import pytest
import torch

from actlab.saes import load_sae
from actlab.training import TrainConfig, cache_activations, read_corpus, train_saes

from conftest import TEXTS

sae_lens = pytest.importorskip("sae_lens")


def test_read_corpus_fortune_and_paragraphs(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("A fortune that is long enough\nto span two lines.\n%\nshort\n%\n"
                    "Another paragraph of real text here.\n\nAnd a third one, also long.\n")
    assert read_corpus([path]) == ["A fortune that is long enough to span two lines.",
                                   "Another paragraph of real text here.", "And a third one, also long."]


def test_cache_drops_bos_rows(tiny_models):
    model = tiny_models["llama"]
    cached = cache_activations(model, TEXTS, ["blocks.1.hook_resid_post"], max_length=64)
    n_tokens = sum(len(model.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert cached["blocks.1.hook_resid_post"].shape == (n_tokens, 64)


def test_train_saes_end_to_end(tmp_path, tiny_models):
    model = tiny_models["llama"]
    corpus = [f"{TEXTS[i % len(TEXTS)]} number {i} of the corpus" for i in range(60)]
    cfg = TrainConfig(layers=[0, 2], d_sae=96, k=8, steps=30, batch_size=64, max_length=32)
    report = train_saes(model, corpus, tmp_path, cfg)
    assert set(report) == {"resid_post-0", "resid_post-2"}
    for name, quality in report.items():
        sae = load_sae(tmp_path / name)
        assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.prepend_bos) == ("topk", 8, True)
        assert 0 < quality["l0"] <= 8
        assert quality["explained_variance"] > 0  # it learned something in 30 steps
        reference = sae_lens.SAE.load_from_disk(str(tmp_path / name))
        x = torch.randn(5, 64)
        with torch.no_grad():
            expected = reference.encode(x.to(reference.dtype)).float()
        assert torch.allclose(sae.encode(x), expected, rtol=1e-2, atol=1e-2)
    summary = json.loads((tmp_path / "quality.json").read_text())
    assert summary["settings"]["layers"] == [0, 2] and summary["n_held_out_texts"] == 6


def test_cached_run_is_reused(tmp_path, tiny_models):
    model = tiny_models["llama"]
    hooks = ["blocks.1.hook_resid_post"]
    first = cache_activations(model, TEXTS, hooks, 64, tmp_path / "acts")
    stamp = (tmp_path / "acts" / "shard-00000.parquet").stat().st_mtime_ns
    again = cache_activations(model, TEXTS, hooks, 64, tmp_path / "acts")
    assert (tmp_path / "acts" / "shard-00000.parquet").stat().st_mtime_ns == stamp
    assert torch.equal(first[hooks[0]], again[hooks[0]])
