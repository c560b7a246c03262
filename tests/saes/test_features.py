"""Features in the extraction pass against features computed separately:
activations extracted per token, then SAE.encode and numpy pooling."""

import numpy as np
import pytest
import torch

from actlab import ActlabError

from conftest import D_SAE, TEXTS, random_sae, rel_error

def separately(model, sae, texts, pooling, prepend_bos=False):
    """Reference: per-token activations from `extract`, encoded, pooled in numpy."""
    acts = model.extract(texts, sae.cfg.hook_name, pooling="all", prepend_bos=prepend_bos, progress=False)
    rows = []
    for i in range(len(texts)):
        x = acts.text(sae.cfg.hook_name, i)
        if sae.cfg.center_writing_weights:
            x = x - x.mean(-1, keepdim=True)
        f = sae.encode(x).numpy()
        body = f[1:] if prepend_bos and len(f) > 1 else f
        rows.append({"last": f[-1], "mean": body.mean(0), "first:2": body[:2].mean(0)}.get(pooling, f))
    return np.concatenate(rows) if pooling == "all" else np.stack(rows)


@pytest.mark.parametrize("pooling", ["last", "mean", "first:2", "all"])
def test_single_pass_equals_separate_extraction(tiny_models, pooling):
    model = tiny_models["llama"]
    saes = {"early": random_sae("blocks.0.hook_resid_post", seed=1),
            "late": random_sae("blocks.2.hook_resid_post", arch="topk", seed=2),
            "mid": random_sae("blocks.1.hook_resid_mid", arch="jumprelu", seed=3)}
    feats = model.features(TEXTS, saes, pooling=pooling, max_batch_tokens=48, padding_side="left",
                           keep_dense=True, progress=False)
    for name, sae in saes.items():
        expected = torch.from_numpy(separately(model, sae, TEXTS, pooling))
        assert (expected > 0).any()
        assert rel_error(feats.dense(name), expected) < 1e-5, name
        # the sparse store holds exactly the dense matrix
        assert torch.equal(feats.sparse[name].dense(), feats.dense_values[name])


def test_latent_stats_against_numpy(tiny_models):
    model = tiny_models["gpt2"]
    sae = random_sae("blocks.1.hook_resid_post")
    feats = model.features(TEXTS, [sae], pooling="mean", progress=False)
    name = feats.names[0]
    dense = feats.dense(name).numpy()
    stats = feats.latent_stats[name]
    assert np.array_equal(stats.count.numpy(), (dense > 0).sum(0))
    assert np.allclose(stats.sum.numpy(), dense.sum(0, dtype=np.float64), rtol=1e-6)
    assert np.allclose(stats.max.numpy(), dense.max(0))
    active = dense.max(0) > 0
    assert np.array_equal(stats.argmax.numpy()[active], dense.argmax(0)[active])
    assert (stats.argmax.numpy()[~active] == -1).all()


def test_out_of_memory_mid_forward_counts_nothing_twice(tiny_models, monkeypatch):
    """An OOM in block 1 comes after block 0's SAE has fed its sink: the split
    batches must not add those rows to the statistics or the sparse store again."""
    model = tiny_models["llama"]
    saes = [random_sae("blocks.0.hook_resid_post", seed=1), random_sae("blocks.2.hook_resid_post", seed=2)]
    expected = model.features(TEXTS, saes, batch_size=1, keep_dense=True, progress=False)
    block = model.hf_model.model.layers[1]
    forward = block.forward

    def forward_with_small_memory(hidden_states, *args, **kwargs):
        if hidden_states.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(hidden_states, *args, **kwargs)

    monkeypatch.setattr(block, "forward", forward_with_small_memory)
    feats = model.features(TEXTS, saes, batch_size=8, keep_dense=True, progress=False)
    assert feats.stats.oom_splits >= 3
    for name in feats.names:
        assert rel_error(feats.dense(name), expected.dense(name)) < 1e-5
        assert len(feats.sparse[name].values) == len(expected.sparse[name].values)
        assert torch.equal(feats.latent_stats[name].count, expected.latent_stats[name].count)
        assert torch.allclose(feats.latent_stats[name].sum, expected.latent_stats[name].sum)


def test_centring_for_layer_norm_models(tiny_models):
    """SAEs trained on TransformerLens's centred GPT-2 see resid - mean(resid)."""
    model = tiny_models["gpt2"]
    sae = random_sae("blocks.1.hook_resid_pre", center_writing_weights=True)
    feats = model.features(TEXTS, [sae], pooling="last", progress=False)
    expected = torch.from_numpy(separately(model, sae, TEXTS, "last"))
    assert rel_error(feats.dense(feats.names[0]), expected) < 1e-5
    # and it matters: uncentred features differ
    sae.cfg.center_writing_weights = False
    assert rel_error(torch.from_numpy(separately(model, sae, TEXTS, "last")), expected) > 1e-3


def test_sae_prepend_bos_metadata(tiny_models):
    model = tiny_models["llama"]
    sae = random_sae("blocks.1.hook_resid_post")
    sae.cfg.prepend_bos = True
    feats = model.features(TEXTS, [sae], pooling="mean", progress=False)
    assert feats.has_bos
    expected = separately(model, sae, TEXTS, "mean", prepend_bos=True)
    assert rel_error(feats.dense(feats.names[0]), torch.from_numpy(expected)) < 1e-5
    other = random_sae("blocks.0.hook_resid_post")
    with pytest.raises(ActlabError, match="disagree on prepend_bos"):
        model.features(TEXTS, [sae, other], progress=False)


def test_mismatched_sae_is_an_error(tiny_models):
    model = tiny_models["llama"]
    with pytest.raises(ActlabError, match="d_in=32 but blocks.0.hook_resid_post of this model has width 64"):
        model.features(TEXTS, [random_sae("blocks.0.hook_resid_post", d_in=32)], progress=False)
    with pytest.raises(ActlabError, match="has 3 blocks"):
        model.features(TEXTS, [random_sae("blocks.9.hook_resid_post")], progress=False)


def test_equals_transformer_lens_plus_sae_lens_on_gpt2(tiny_models, tmp_path):
    """GPT-2 with an SAE trained on TransformerLens defaults (centred writing
    weights): actlab features == HookedTransformer.run_with_cache + SAELens encode."""
    sae_lens = pytest.importorskip("sae_lens")
    from benchmarks.peers import hooked_transformer
    from actlab.saes import load_sae

    model = tiny_models["gpt2"]
    hook = "blocks.1.hook_resid_pre"
    lens = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=64, d_sae=D_SAE))
    source = random_sae(hook)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(lens, name).copy_(getattr(source, name))
    lens.cfg.metadata.hook_name = hook
    lens.cfg.metadata.prepend_bos = False
    lens.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": True}
    lens.save_model(tmp_path)
    sae = load_sae(tmp_path)
    assert sae.cfg.center_writing_weights
    tl = hooked_transformer(model, processed=True)
    expected = []
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([model.tokenizer(text)["input_ids"]])
            _, cache = tl.run_with_cache(ids, names_filter=[hook], stop_at_layer=2)
            expected.append(lens.encode(cache[hook][0, -1]))
    feats = model.features(TEXTS, [sae], pooling="last", padding_side="left", progress=False)
    assert rel_error(feats.dense(feats.names[0]), torch.stack(expected)) <= 1e-4


@pytest.mark.parametrize("prepend_bos", [False, True])
def test_per_text_of_a_per_token_run_is_the_max_over_real_tokens(tiny_models, prepend_bos):
    model = tiny_models["llama"]
    sae = random_sae("blocks.1.hook_resid_post", seed=4)
    feats = model.features(TEXTS, [sae], pooling="all", prepend_bos=prepend_bos, progress=False)
    name = feats.names[0]
    dense, offsets = feats.dense(name).numpy(), feats.offsets.numpy()
    skip = 1 if prepend_bos else 0
    expected = np.stack([dense[a + skip:b].max(0) if b - a > skip else np.zeros(D_SAE, np.float32)
                         for a, b in zip(offsets[:-1], offsets[1:])])
    assert np.array_equal(feats.per_text(name), expected)
    assert np.array_equal(model.features(TEXTS, [sae], pooling="last", progress=False).per_text(name),
                          model.features(TEXTS, [sae], pooling="last", progress=False).dense(name).numpy())
