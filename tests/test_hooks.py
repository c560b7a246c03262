"""Hook values against HF output_hidden_states and the residual identities."""

import pytest
import torch

from actlab import ActlabError
from actlab.hooks import hook_names, resolve

from conftest import ARCHITECTURES, TEXTS, rel_error

KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def hf_hidden_states(model, text):
    ids = model.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model.hf_model(**ids, output_hidden_states=True).hidden_states


def all_hooks(model):
    return [n for n in hook_names(model.hf_model)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hooks_match_hf_hidden_states(tiny_models, arch):
    model = tiny_models[arch]
    names = all_hooks(model)
    acts = model.extract(TEXTS, names, pooling="all", progress=False)
    n = model.n_layers
    for i, text in enumerate(TEXTS):
        hidden = hf_hidden_states(model, text)
        # hidden_states[L] is block L's input; the last entry may carry the
        # final norm, so block n-1's output is checked through the identities.
        for layer in range(n):
            assert rel_error(acts.text(f"blocks.{layer}.hook_resid_pre", i), hidden[layer][0]) < 1e-5
        for layer in range(n - 1):
            assert rel_error(acts.text(f"blocks.{layer}.hook_resid_post", i), hidden[layer + 1][0]) < 1e-5
        if arch == "gpt2":
            with torch.no_grad():
                pos = model.hf_model.transformer.wpe(torch.arange(len(acts.text("hook_embed", i))))
            assert rel_error(acts.text("hook_embed", i) + pos, hidden[0][0]) < 1e-5
        else:
            assert rel_error(acts.text("hook_embed", i), hidden[0][0]) < 1e-5


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_residual_identities(tiny_models, arch):
    """resid_mid = resid_pre + attn_out; resid_post = resid_mid + mlp_out
    (parallel blocks: resid_post = resid_pre + attn_out + mlp_out)."""
    model = tiny_models[arch]
    acts = model.extract(TEXTS, all_hooks(model), pooling="all", progress=False)
    for layer in range(model.n_layers):
        get = lambda kind: acts[f"blocks.{layer}.{kind}"]  # noqa: E731
        if f"blocks.{layer}.hook_resid_mid" in acts:
            assert rel_error(get("hook_resid_pre") + get("hook_attn_out"), get("hook_resid_mid")) < 1e-5
            assert rel_error(get("hook_resid_mid") + get("hook_mlp_out"), get("hook_resid_post")) < 1e-5
        else:
            total = get("hook_resid_pre") + get("hook_attn_out") + get("hook_mlp_out")
            assert rel_error(total, get("hook_resid_post")) < 1e-5


def test_parallel_neox_has_no_resid_mid(tiny_models):
    model = tiny_models["gpt_neox"]
    assert "blocks.0.hook_resid_mid" not in hook_names(model.hf_model)
    with pytest.raises(ActlabError, match="parallel"):
        resolve(model.hf_model, "blocks.0.hook_resid_mid")


def test_raw_module_path_equals_hook_name(tiny_models):
    model = tiny_models["llama"]
    acts = model.extract(TEXTS, ["model.layers.1", "blocks.1.hook_resid_post", "model.layers.1.mlp"],
                         pooling="mean", progress=False)
    assert torch.equal(acts["model.layers.1"], acts["blocks.1.hook_resid_post"])
    assert torch.equal(acts["model.layers.1.mlp"],
                       model.extract(TEXTS, "blocks.1.hook_mlp_out", pooling="mean", progress=False)
                       ["blocks.1.hook_mlp_out"])


def test_unknown_hook_lists_valid_names(tiny_models):
    model = tiny_models["llama"]
    with pytest.raises(ActlabError, match="valid names: hook_embed, blocks.0.hook_resid_pre"):
        model.extract(TEXTS, ["blocks.0.hook_resid_typo"], progress=False)
    with pytest.raises(ActlabError, match="has 3 blocks"):
        model.extract(TEXTS, ["blocks.7.hook_resid_post"], progress=False)


def test_default_model_matches_hf(default_model):
    """The real default model against HF output_hidden_states, text by text."""
    layers = [0, 7, 15, 28]
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    acts = default_model.extract(TEXTS, hooks, pooling="all", progress=False)
    for i, text in enumerate(TEXTS):
        hidden = hf_hidden_states(default_model, text)
        for layer, hook in zip(layers, hooks):
            assert rel_error(acts.text(hook, i), hidden[layer + 1][0]) < 1e-5


def test_capture_and_replace_context_managers(tiny_models):
    """capture sees the hook's hidden state; replace changes what later blocks
    see (checked against HF hidden states), and both leave no hook behind."""
    from actlab.hooks import block_hook, capture, replace

    model = tiny_models["llama"]
    ids = torch.tensor([model.tokenizer(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        clean = model.hf_model(ids, output_hidden_states=True).hidden_states
    def n_hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())

    before, seen = n_hooks(), {}
    with capture(model.hf_model, {block_hook(0): lambda h: seen.setdefault("h", h.clone())}), torch.no_grad():
        model.hf_model(ids)
    assert rel_error(seen["h"][0], clean[1][0]) < 1e-6
    with replace(model.hf_model, {block_hook(0): lambda h: h * 0}), \
            capture(model.hf_model, {block_hook(0): lambda h: seen.__setitem__("replaced", h.clone())}), torch.no_grad():
        zeroed = model.hf_model(ids, output_hidden_states=True).hidden_states
    assert float(seen["replaced"].abs().max()) == 0.0 and rel_error(zeroed[2][0], clean[2][0]) > 1e-3
    with torch.no_grad():
        after = model.hf_model(ids, output_hidden_states=True).hidden_states
    assert torch.equal(after[2], clean[2])  # the hooks were removed
    assert n_hooks() == before


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "gpt_neox"])
def test_final_norm_is_the_last_hidden_state(tiny_models, arch):
    """ln_final.hook_normalized is what the LM head reads: HF's last hidden state,
    and the LM head on it gives the model's logits (Gemma-2's soft-capping included)."""
    from actlab.hooks import FINAL_NORM, lm_logits

    model = tiny_models[arch]
    acts = model.extract(TEXTS[:3], FINAL_NORM, pooling="all")
    for i, text in enumerate(TEXTS[:3]):
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            out = model.hf_model(ids, output_hidden_states=True)
            assert rel_error(acts.text(FINAL_NORM, i), out.hidden_states[-1][0]) < 1e-5
            assert rel_error(lm_logits(model.hf_model, acts.text(FINAL_NORM, i)), out.logits[0]) < 1e-4
