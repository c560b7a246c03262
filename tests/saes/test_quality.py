"""SAE quality metrics against a naive one-text-at-a-time computation."""

import pytest
import torch
import torch.nn.functional as F

from actlab import ActlabError
from actlab.saes.quality import sae_quality

from conftest import TEXTS, random_sae


def naive_quality(model, sae, texts, layer):
    xs, clean, spliced, zero = [], [], [], []
    block = model.hf_model.model.layers[layer]
    for text in texts:
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            out = model.hf_model(ids, output_hidden_states=True)
            x = out.hidden_states[layer + 1][0]
            xs.append(x)
            clean.append(F.cross_entropy(out.logits[0, :-1], ids[0, 1:], reduction="none"))
            for store, value in ((spliced, sae.reconstruct(x)[1]), (zero, torch.zeros_like(x))):
                handle = block.register_forward_hook(lambda m, a, o, v=value: v[None])
                try:
                    logits = model.hf_model(ids).logits
                finally:
                    handle.remove()
                store.append(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none"))
    X = torch.cat(xs)
    f, X_hat = sae.reconstruct(X)
    sse = ((X - X_hat) ** 2).sum()
    return {"l0": float((f > 0).sum(1).float().mean()),
            "dead_fraction": float(((f > 0).sum(0) == 0).float().mean()),
            "mse": float(((X - X_hat) ** 2).mean()),
            "explained_variance": float(1 - sse / ((X - X.mean(0)) ** 2).sum()),
            "ce_clean": float(torch.cat(clean).mean()), "ce_spliced": float(torch.cat(spliced).mean()),
            "ce_zero_ablation": float(torch.cat(zero).mean())}


def test_quality_matches_naive_loop(tiny_models):
    model = tiny_models["llama"]
    sae = random_sae("blocks.1.hook_resid_post")
    got = sae_quality(model, sae, TEXTS, max_batch_tokens=40)
    expected = naive_quality(model, sae, TEXTS, 1)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert got["ce_increase"] == pytest.approx(got["ce_spliced"] - got["ce_clean"])
    assert got["ce_spliced"] != pytest.approx(got["ce_clean"])  # the splice really changed the model


def test_resid_mid_splice_refused(tiny_models):
    with pytest.raises(ActlabError, match="hook_resid_mid"):
        sae_quality(tiny_models["llama"], random_sae("blocks.1.hook_resid_mid"), TEXTS)


def test_bos_left_out_of_sae_metrics(tiny_models):
    model = tiny_models["llama"]
    sae = random_sae("blocks.1.hook_resid_post")
    without = sae_quality(model, sae, TEXTS)
    sae.cfg.prepend_bos = True
    with_bos = sae_quality(model, sae, TEXTS)
    assert with_bos["n_tokens"] == without["n_tokens"] == sum(len(model.tokenizer(t)["input_ids"]) for t in TEXTS)
