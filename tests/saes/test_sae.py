"""SAEs against SAELens itself: every architecture, normalisation and
b_dec mode, v6 and pre-6.0 folders; sparsify folders against numpy."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from actlab import ActlabError
from actlab.saes import load_sae

sae_lens = pytest.importorskip("sae_lens")

D_IN, D_SAE = 32, 96
ARCHS = ["standard", "topk", "jumprelu", "gated"]
NORMS = ["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]


def rel_error(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def lens_sae(arch, normalize="none", apply_b_dec=True, **extra):
    """A SAELens SAE of `arch` with random weights (thresholds that some latents pass)."""
    from sae_lens.saes.sae import SAEMetadata

    config_cls, sae_cls = {
        "standard": (sae_lens.StandardSAEConfig, sae_lens.StandardSAE),
        "topk": (sae_lens.TopKSAEConfig, sae_lens.TopKSAE),
        "jumprelu": (sae_lens.JumpReLUSAEConfig, sae_lens.JumpReLUSAE),
        "gated": (sae_lens.GatedSAEConfig, sae_lens.GatedSAE),
    }[arch]
    kwargs = dict(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec, normalize_activations=normalize,
                  metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post", model_name="tiny",
                                       neuronpedia_id="tiny/1-res", prepend_bos=False))
    if arch == "topk":
        kwargs["k"] = 8
    kwargs.update(extra)
    sae = sae_cls(config_cls(**kwargs))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn_like(param) * 0.3)
        if arch == "jumprelu":
            sae.threshold.abs_()  # positive thresholds that some latents pass
    return sae.eval()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("normalize", NORMS)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_decode_equal_sae_lens(tmp_path, arch, normalize, apply_b_dec):
    lens = lens_sae(arch, normalize, apply_b_dec)
    lens.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert (ours.cfg.architecture, ours.cfg.hook_name, ours.cfg.neuronpedia_id) == \
        (arch, "blocks.1.hook_resid_post", "tiny/1-res")
    x = torch.randn(50, D_IN) * 3
    with torch.no_grad():
        expected_f = lens.encode(x)
        expected_x_hat = lens.decode(expected_f)
    f, x_hat = ours.reconstruct(x)
    assert (expected_f > 0).sum() > 0
    assert rel_error(ours.encode(x), expected_f) <= 1e-5
    assert rel_error(f, expected_f) <= 1e-5
    assert rel_error(x_hat, expected_x_hat) <= 1e-5


def test_topk_rescaled_by_decoder_norm(tmp_path):
    lens = lens_sae("topk", rescale_acts_by_decoder_norm=True)
    lens.save_model(tmp_path)
    ours = load_sae(tmp_path)
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        assert rel_error(ours.encode(x), lens.encode(x)) <= 1e-5
        assert rel_error(ours.decode(ours.encode(x)), lens.decode(lens.encode(x))) <= 1e-5


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "gated"])
def test_fold_decoder_norms_matches_sae_lens(tmp_path, arch):
    lens = lens_sae(arch)
    lens.save_model(tmp_path)
    ours = load_sae(tmp_path, fold_decoder_norms=True)
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        unfolded_x_hat = lens.decode(lens.encode(x))
        lens.fold_W_dec_norm()
        assert rel_error(ours.encode(x), lens.encode(x)) <= 1e-5
    assert torch.allclose(ours.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-5)
    assert rel_error(ours.reconstruct(x)[1], unfolded_x_hat) <= 1e-5


def test_topk_refuses_unsafe_fold(tmp_path):
    lens_sae("topk").save_model(tmp_path)
    with pytest.raises(ActlabError, match="TopK"):
        load_sae(tmp_path, fold_decoder_norms=True)


def test_pre_6_flat_config(tmp_path):
    """Pre-6.0 SAELens folders: flat keys, hook_point, topk via activation_fn."""
    lens = lens_sae("topk")
    save_file({k: v.contiguous() for k, v in lens.state_dict().items()}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({
        "d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.1.hook_resid_pre", "hook_point_layer": 1,
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 8}, "apply_b_dec_to_input": True,
        "normalize_activations": False, "model_name": "gpt2", "dtype": "float32",
        "model_from_pretrained_kwargs": {"center_writing_weights": True}}))
    ours = load_sae(tmp_path)
    assert (ours.cfg.architecture, ours.cfg.k, ours.cfg.hook_name) == ("topk", 8, "blocks.1.hook_resid_pre")
    assert ours.cfg.center_writing_weights and ours.cfg.prepend_bos
    reference = sae_lens.SAE.load_from_disk(str(tmp_path))
    x = torch.randn(10, D_IN)
    with torch.no_grad():
        assert rel_error(ours.encode(x), reference.encode(x)) <= 1e-5


def test_sparsify_folder_against_numpy(tmp_path):
    folder = tmp_path / "layers.3"
    folder.mkdir()
    rng = np.random.default_rng(0)
    enc_w, enc_b = rng.normal(size=(D_SAE, D_IN)), rng.normal(size=D_SAE)
    w_dec, b_dec = rng.normal(size=(D_SAE, D_IN)), rng.normal(size=D_IN)
    save_file({"encoder.weight": torch.tensor(enc_w, dtype=torch.float32),
               "encoder.bias": torch.tensor(enc_b, dtype=torch.float32),
               "W_dec": torch.tensor(w_dec, dtype=torch.float32),
               "b_dec": torch.tensor(b_dec, dtype=torch.float32)}, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"d_in": D_IN, "num_latents": D_SAE, "k": 5,
                                                 "expansion_factor": 3, "normalize_decoder": True}))
    sae = load_sae(folder)
    assert sae.cfg.hook_name == "blocks.3.hook_resid_post"
    x = rng.normal(size=(7, D_IN))
    pre = np.maximum((x - b_dec) @ enc_w.T + enc_b, 0)
    expected = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :5]
    np.put_along_axis(expected, top, np.take_along_axis(pre, top, axis=1), axis=1)
    got = sae.encode(torch.tensor(x, dtype=torch.float32)).numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-5
    x_hat = sae.decode(torch.tensor(expected, dtype=torch.float32)).numpy()
    assert np.allclose(x_hat, expected @ w_dec + b_dec, rtol=1e-4, atol=1e-4)
    mlp = folder.rename(tmp_path / "model.layers.3.mlp")  # an SAE of block 3's MLP output
    assert load_sae(mlp).cfg.hook_name == "blocks.3.hook_mlp_out"
    config = json.loads((mlp / "cfg.json").read_text())
    for flag in ("transcode", "skip_connection"):  # a transcoder: refused, not read as an SAE
        (mlp / "cfg.json").write_text(json.dumps({**config, flag: True}))
        with pytest.raises(ActlabError, match="is a sparsify transcoder"):
            load_sae(mlp)


def test_bad_sae_folders(tmp_path):
    with pytest.raises(ActlabError, match="not found"):
        load_sae(tmp_path / "missing")
    with pytest.raises(ActlabError, match="no cfg.json"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(ActlabError, match="neither"):
        load_sae(tmp_path)
    lens_sae("standard").save_model(tmp_path / "ok")
    cfg = json.loads((tmp_path / "ok" / "cfg.json").read_text())
    (tmp_path / "ok" / "cfg.json").write_text(json.dumps(dict(cfg, d_in=D_IN + 1)))
    with pytest.raises(ActlabError, match="W_enc' has shape"):
        load_sae(tmp_path / "ok")
    (tmp_path / "ok" / "cfg.json").write_text(json.dumps(dict(cfg, architecture="matryoshka")))
    with pytest.raises(ActlabError, match="not supported"):
        load_sae(tmp_path / "ok")


def test_unknown_release():
    with pytest.raises(ActlabError, match="unknown SAE release"):
        load_sae("no-such-release/blocks.0")
    with pytest.raises(ActlabError, match="has no SAE"):
        load_sae("gpt2-small-res-jb/blocks.99.hook_resid_pre")
