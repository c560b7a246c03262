"""Exact patching (patching/exact.py) against TransformerLens's own patching
helpers on the same weights (HookedTransformer built from the model, as the
other TL reference tests do), pair by pair with the logit difference as
the metric; batched variants against one variant per forward. Tolerance:
1e-4 of the metric's scale (float32 through two implementations and other
batch shapes)."""

import numpy as np
import pytest
import torch

from actlab import ActlabError
from actlab.patching import PatchConfig, exact_effects, ioi_pairs, load_prompt_pairs, tokenize_pairs
from actlab.patching.exact import Baseline, cached_runs, grid, last_logits, patch

TL_HELPERS = {  # component -> (TransformerLens helper, how our rows sort into its tensor)
    "resid_pre": ("get_act_patch_resid_pre", ["layer", "position"]),
    "attn_out": ("get_act_patch_attn_out", ["layer", "position"]),
    "mlp_out": ("get_act_patch_mlp_out", ["layer", "position"]),
    "head": ("get_act_patch_attn_head_out_by_pos", ["layer", "position", "head"]),
    "head_all_pos": ("get_act_patch_attn_head_out_all_pos", ["layer", "head"]),
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_equals_transformer_lens_patching_helpers(tiny_models, arch):
    pytest.importorskip("transformer_lens")
    from transformer_lens import patching

    from benchmarks.peers import hooked_transformer

    model = tiny_models[arch]
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(2))
    effects = exact_effects(model, pairs, PatchConfig(components=list(TL_HELPERS), max_batch_tokens=200)).to_pandas()
    tl = hooked_transformer(model)
    for i, pair in enumerate(pairs):
        clean, corrupted = torch.tensor([pair.clean]), torch.tensor([pair.corrupted])
        with torch.no_grad():
            clean_logits, cache = tl.run_with_cache(clean)
            corrupted_logits = tl(corrupted)
        metric = lambda logits: logits[0, -1, pair.answer] - logits[0, -1, pair.wrong]  # noqa: E731
        rows = effects[effects.pair == i]
        scale = max(abs(float(metric(clean_logits))), abs(float(metric(corrupted_logits))))
        assert abs(rows.metric_clean.iloc[0] - float(metric(clean_logits))) <= 1e-4 * scale
        assert abs(rows.metric_corrupted.iloc[0] - float(metric(corrupted_logits))) <= 1e-4 * scale
        for component, (helper, order) in TL_HELPERS.items():
            with torch.no_grad():
                expected = getattr(patching, helper)(tl, corrupted, cache, metric)  # (layers, positions[, heads])
            ours = rows[rows.component == component].sort_values(order).metric_patched.to_numpy()
            assert np.abs(ours - expected.numpy().reshape(-1)).max() <= 1e-4 * scale, (arch, component, i)
    normalized = (effects.metric_patched - effects.metric_corrupted) / (effects.metric_clean - effects.metric_corrupted)
    assert np.allclose(effects.normalized, normalized, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["gemma2", "gpt_neox", "qwen2"])
def test_batched_variants_equal_one_variant_per_forward(tiny_models, arch):
    """Many variants per forward, each from its block and position on over
    the corrupted run's cache, against a whole forward per variant."""
    model = tiny_models[arch]
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(2))
    cfg = PatchConfig(components=["resid_post", "head"], layers=[1, 2], positions=[0, -1, 5])
    batched = exact_effects(model, pairs, cfg).to_pandas()
    variants = grid(model, pairs, cfg)
    cache_model = cached_runs(model, [p.clean for p in pairs], sorted(
        {f"blocks.{v.layer}.hook_resid_post" if v.component == "resid_post" else f"blocks.{v.layer}.attn.hook_z"
         for v in variants}), 10 ** 6)[0]  # the clean runs, one whole forward each
    alone = []
    for v in variants:
        last_logits(model, [pairs[v.pair].corrupted], [(patch(v, cache_model[v.pair], 16),)], 10 ** 6,
                    lambda rows, logits, v=v: alone.append(float(logits[0, pairs[v.pair].answer]
                                                                 - logits[0, pairs[v.pair].wrong])))
    got = batched.metric_patched.to_numpy()
    assert len(got) == len(variants) == 2 * 2 * 3 * (1 + 4)
    assert np.abs(got - np.array(alone)).max() <= 1e-5 * np.abs(alone).max()
    assert set(batched.position.dropna()) == {0, 5, len(pairs[0].clean) - 1}


def test_patching_the_whole_clean_stream_restores_the_clean_metric(tiny_models):
    """resid_pre at block 0 patched at every position is the clean run: normalized 1 there."""
    model = tiny_models["llama"]
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(2))
    effects = exact_effects(model, pairs, PatchConfig(components=["head_all_pos"], layers=[0])).to_pandas()
    assert effects.position.isna().all() and len(effects) == 2 * 4
    effects = exact_effects(model, pairs, PatchConfig(components=["resid_pre"], layers=[0])).to_pandas()
    # patching every position of the first residual stream one at a time: the last position carries most
    last = effects[effects.position == len(pairs[0].clean) - 1]
    assert (last.kl >= 0).all() and np.isfinite(effects.normalized).all()


def test_bad_pairs_are_one_line_errors(tiny_models, tmp_path):
    model = tiny_models["llama"]
    lines = {
        "unequal.jsonl": ('{"clean": "When Mary and John went to the store", "corrupted": "When Mary went", '
                          '"answer": " Mary", "wrong_answer": " John"}', "clean has 8 tokens, corrupted 3"),
        "same.jsonl": ('{"clean": "a b", "corrupted": "a c", "answer": " Mary", "wrong_answer": " Mary and"}',
                       "begin with the same token"),
        "missing.jsonl": ('{"clean": "a b", "corrupted": "a c", "answer": " Mary"}', "has no text field 'wrong_answer'"),
        "empty.jsonl": ("", "holds no pairs"),
    }
    for name, (line, message) in lines.items():
        path = tmp_path / name
        path.write_text(line + "\n" if line else "")
        with pytest.raises(ActlabError, match=message):
            tokenize_pairs(model.tokenizer, load_prompt_pairs(path))
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(1))
    with pytest.raises(ActlabError, match="position 40 is outside pair 'ioi-0''s"):
        exact_effects(model, pairs, PatchConfig(positions=[40]))
    with pytest.raises(ActlabError, match="layer 3 is outside 0..2"):
        exact_effects(model, pairs, PatchConfig(layers=[3]))
    with pytest.raises(ActlabError, match="unknown patching component 'embed'"):
        PatchConfig(components=["embed"])


def test_default_model_solves_the_builtin_pairs(default_model):
    pairs = tokenize_pairs(default_model.tokenizer, ioi_pairs())
    base = Baseline.of(default_model, pairs, [], 640)  # the clean and corrupted runs alone
    assert len(pairs) == 48 and (base.clean > 0).all() and (base.corrupted < 0).all()
