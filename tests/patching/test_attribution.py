"""Attribution patching (patching/attribution.py) against independent
references: AtP is the directional derivative of the metric along
a_clean - a_corrupted at the corrupted run, checked by central finite
differences through hand-written PyTorch hooks on a float64 copy of a tiny
Llama. Its RMSNorm computes in float32 whatever the model's dtype, so the
metric carries float32 noise (~1e-7): the differences are taken at eps
1e-2 and 5e-3 and extrapolated (Richardson: truncation O(eps^4) ~1e-8,
noise ~1e-5), compared within 1e-4 relative; IG is complete, its estimates over the whole embedding summing to
clean - corrupted as the steps grow (a right Riemann sum: error O(1/steps));
and on the default model IG tracks exact patching closely and AtP loosely."""

import copy

import numpy as np
import pytest
import torch

import actlab
from actlab.patching import PatchConfig, attribution_effects, exact_effects, ioi_pairs, patch_effects, tokenize_pairs

EPS = 1e-2


def double(model):
    return actlab.Model(copy.deepcopy(model.hf_model).double(), model.tokenizer, model.name + "-float64", "float64")


def site(model, component, layer):
    """(module, is a pre-hook) where a component of block `layer` is read and written."""
    block = model.base_model.layers[layer]
    return {"resid_pre": (block, True), "attn_out": (block.self_attn, False), "mlp_out": (block.mlp, False),
            "head": (block.self_attn.o_proj, True), "head_all_pos": (block.self_attn.o_proj, True)}[component]


def run(model, ids, component, layer, edit=None):
    """The metric's logits and the component's activation (T, w) over ids; edit(hidden) rewrites it in place."""
    module, pre = site(model, component, layer)
    seen = {}

    def hook(m, args, *out):
        hidden = args[0] if pre else (out[0][0] if isinstance(out[0], tuple) else out[0])
        if edit is not None:
            hidden = hidden.clone()
            edit(hidden[0])
            seen["a"] = hidden[0]
            if pre:
                return (hidden,) + tuple(args[1:])
            return (hidden,) + tuple(out[0][1:]) if isinstance(out[0], tuple) else hidden
        seen["a"] = hidden[0].clone()

    handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model.hf_model(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        handle.remove()
    return logits, seen["a"]


@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out", "head", "head_all_pos"])
def test_atp_is_the_directional_derivative(tiny_models, component):
    model = double(tiny_models["llama"])
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(2))
    effects = attribution_effects(model, pairs, PatchConfig(components=[component], layers=[0, 2]), "atp").to_pandas()
    rng = np.random.default_rng(0)
    for row in effects.iloc[rng.choice(len(effects), size=6, replace=False)].itertuples():
        pair = pairs[row.pair]
        _, clean = run(model, list(pair.clean), component, row.layer)
        _, corrupted = run(model, list(pair.corrupted), component, row.layer)
        cells = (slice(None) if np.isnan(row.position) else int(row.position),
                 slice(None) if np.isnan(row.head) else slice(int(row.head) * 16, int(row.head) * 16 + 16))
        direction = torch.zeros_like(clean)
        direction[cells] = (clean - corrupted)[cells]

        def metric(eps):
            logits, _ = run(model, list(pair.corrupted), component, row.layer,
                            edit=lambda hidden: hidden.add_(eps * direction))
            return float(logits[pair.answer] - logits[pair.wrong])

        central = [(metric(h) - metric(-h)) / (2 * h) for h in (EPS, EPS / 2)]
        derivative = (4 * central[1] - central[0]) / 3
        estimate = row.metric_patched - row.metric_corrupted
        assert abs(estimate - derivative) <= 1e-4 * max(abs(derivative), abs(row.metric_clean - row.metric_corrupted)), row


def test_ig_over_the_whole_embedding_is_complete(tiny_models):
    """hook_resid_pre of block 0 is the embedding output the steps move: its
    estimates over every position add up to metric_clean - metric_corrupted."""
    model = tiny_models["llama"]
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(2))
    errors = []
    for steps in (4, 64):
        cfg = PatchConfig(components=["resid_pre"], layers=[0], ig_steps=steps)
        effects = attribution_effects(model, pairs, cfg, "ig").to_pandas()
        for _, rows in effects.groupby("pair"):
            total = (rows.metric_patched - rows.metric_corrupted).sum()
            gap = rows.metric_clean.iloc[0] - rows.metric_corrupted.iloc[0]
            errors.append((steps, abs(total - gap) / abs(gap)))
    coarse = max(e for s, e in errors if s == 4)
    fine = max(e for s, e in errors if s == 64)
    assert fine < 0.03 and fine < coarse / 4, errors


def test_one_baseline_for_every_method(tiny_models):
    model = tiny_models["gpt2"]
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(2))
    cfg = PatchConfig(components=["attn_out", "head"], layers=[1], method=["exact", "atp", "ig"], ig_steps=3)
    both = patch_effects(model, pairs, cfg).to_pandas()
    assert list(both.method.unique()) == ["exact", "atp", "ig"]
    alone = exact_effects(model, pairs, cfg).to_pandas()
    assert np.allclose(both[both.method == "exact"].metric_patched, alone.metric_patched, rtol=1e-5)
    atp = attribution_effects(model, pairs, cfg, "atp").to_pandas()
    assert np.allclose(both[both.method == "atp"].metric_patched, atp.metric_patched, rtol=1e-5, atol=1e-6)
    assert both[both.method == "atp"].kl.isna().all() and both[both.method == "exact"].kl.notna().all()


def test_default_model_ig_tracks_exact_patching(default_model):
    pairs = tokenize_pairs(default_model.tokenizer, ioi_pairs(2))
    cfg = PatchConfig(components=["resid_pre"], layers=[0, 10, 20, 29], method=["exact", "atp", "ig"], ig_steps=5)
    effects = patch_effects(default_model, pairs, cfg).to_pandas()
    change = {m: (g.metric_patched - g.metric_corrupted).to_numpy() for m, g in effects.groupby("method")}
    assert np.corrcoef(change["exact"], change["ig"])[0, 1] > 0.9
    assert np.corrcoef(change["exact"], change["atp"])[0, 1] > 0.3
