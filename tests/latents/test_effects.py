"""Logit effects against W_dec @ W_U computed directly (the final norm's
scale folded in by hand per architecture), neighbours against a dense
cosine matrix."""

import copy

import numpy as np
import pytest
import torch

from actlab.latents.effects import final_norm_scale, logit_effects, neighbours
from conftest import random_sae

# where each architecture keeps its final norm, and how its weight scales
FINAL_NORM = {"llama": ("model.norm", lambda w: w), "gemma2": ("model.norm", lambda w: 1 + w),
              "gpt2": ("transformer.ln_f", lambda w: w), "gpt_neox": ("gpt_neox.final_layer_norm", lambda w: w)}


@pytest.mark.parametrize("arch", list(FINAL_NORM))
def test_final_norm_scale_is_the_weight(tiny_models, arch):
    hf = copy.deepcopy(tiny_models[arch].hf_model)
    path, scale = FINAL_NORM[arch]
    norm = hf.get_submodule(path)
    with torch.no_grad():
        norm.weight.copy_(torch.randn_like(norm.weight))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn_like(norm.bias))  # a LayerNorm's bias must not leak in
    assert torch.allclose(final_norm_scale(hf), scale(norm.weight.float()), rtol=1e-4, atol=1e-5)


def test_logit_effects_against_a_direct_product(tiny_models):
    hf = copy.deepcopy(tiny_models["gemma2"].hf_model)
    with torch.no_grad():
        hf.model.norm.weight.copy_(torch.randn_like(hf.model.norm.weight) * 0.5)
    sae = random_sae("blocks.1.hook_resid_post", seed=5)
    W_U = hf.get_output_embeddings().weight.double().T  # (d, vocab)
    gamma = 1 + hf.model.norm.weight.double()
    direct = (sae.W_dec.double() / sae.W_dec.double().norm(dim=1, keepdim=True) * gamma) @ W_U  # (d_sae, vocab)
    direct = (direct - direct.mean(dim=1, keepdim=True)).detach().numpy()
    table = logit_effects(sae, hf, 7, lambda i: f"<{i}>", "s").to_pandas()
    for j in (0, 5, 127):
        for side, order in (("top", np.argsort(-direct[j])), ("bottom", np.argsort(direct[j]))):
            rows = table[(table.latent == j) & (table.side == side)].sort_values("rank")
            assert rows.token_id.tolist() == order[:7].tolist()
            assert np.allclose(rows.effect, direct[j][order[:7]], rtol=1e-4)
            assert rows.token.tolist() == [f"<{i}>" for i in order[:7]]


def test_neighbours_against_a_dense_cosine_matrix():
    sae = random_sae("blocks.1.hook_resid_post", seed=6)
    W = sae.W_dec.double().numpy()
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    cosine = W @ W.T
    np.fill_diagonal(cosine, -np.inf)
    table = neighbours(sae, 5, "s").to_pandas()
    assert len(table) == 128 * 5
    for j in range(128):
        rows = table[table.latent == j].sort_values("rank")
        expected = np.argsort(-cosine[j], kind="stable")[:5]
        assert rows.other.tolist() == expected.tolist()
        assert np.allclose(rows.cosine, cosine[j][expected], rtol=1e-5)
