"""Interventions in extraction (actlab/interventions.py) against independent
references: a hook written by hand in the test, one text at a time, on the
Hugging Face modules; TransformerLens's hook_z for heads; an SAE's encoder
and decoder rows for latent edits.

Tolerances: a batch against one text at a time is float32 rounding of
other batch shapes (1e-5 relative). An identity edit runs the very same
kernels on the same batch and computes keep * x + add with keep 1 and add 0
(or adds a reconstruction change of exactly 0), which IEEE arithmetic leaves
equal to x: there the outputs are compared for equality."""

import math

import numpy as np
import pytest
import torch

import actlab
from actlab import ActlabError
from actlab.hooks import block_hook

from conftest import TEXTS, rel_error, random_sae

D = 64  # the tiny models' width
LAYER = 1  # the edited block; block 2's output is read


def blocks_of(model):
    base = model.base_model
    return base.layers if hasattr(base, "layers") else base.h


def reference(model, text: str, edit, positions) -> torch.Tensor:
    """Block 2's output over `text` alone, block LAYER's output at
    `positions` (indices into its tokens) rewritten by edit(x) (m, d)."""
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])

    def hook(module, args, out):
        hidden = (out[0] if isinstance(out, tuple) else out).clone()
        hidden[0, positions] = edit(hidden[0, positions])
        return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden

    seen = {}
    handles = [blocks_of(model)[LAYER].register_forward_hook(hook),
               blocks_of(model)[2].register_forward_hook(
                   lambda m, a, out: seen.setdefault(2, out[0] if isinstance(out, tuple) else out))]
    try:
        with torch.no_grad():
            model.hf_model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen[2][0]  # (T, d): block 2's output (HF's last hidden state is after the final norm)


def unit(v):
    return v / v.norm()


V = torch.randn(D, generator=torch.Generator().manual_seed(0))
W = torch.randn(D, generator=torch.Generator().manual_seed(1))
HOOK = block_hook(LAYER)
# (intervention, the same edit written out on x (m, d))
EDITS = {
    "add": (actlab.Add(HOOK, V, 3.0), lambda x: x + 3.0 * V),
    "set": (actlab.Set(HOOK, W), lambda x: W.expand_as(x)),
    "ablate": (actlab.Ablate(HOOK), torch.zeros_like),
    "mean": (actlab.Ablate(HOOK, mean=W), lambda x: W.expand_as(x)),
    "project_out": (actlab.ProjectOut(HOOK, V), lambda x: x - (x @ unit(V))[:, None] * unit(V)),
    "cap": (actlab.Cap(HOOK, V, -0.5, 0.25),
            lambda x: x - (x @ unit(V))[:, None] * unit(V) + (x @ unit(V)).clamp(-0.5, 0.25)[:, None] * unit(V)),
}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("kind", list(EDITS))
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_each_edit_equals_a_hand_written_hook(tiny_models, arch, kind, padding_side):
    model = tiny_models[arch]
    intervention, by_hand = EDITS[kind]
    got = model.extract(TEXTS, block_hook(2), pooling="all", interventions=intervention, batch_size=3,
                        padding_side=padding_side, progress=False)
    for i, text in enumerate(TEXTS):
        n = got.offsets[i + 1] - got.offsets[i]
        expected = reference(model, text, by_hand, list(range(n)))
        assert rel_error(got.text(block_hook(2), i), expected) < 1e-5, (arch, kind, i)


@pytest.mark.parametrize("positions", ["last", [0], [-1, 0], [1, -2]])
def test_positions_pick_the_tokens_a_hand_written_hook_edits(tiny_models, positions):
    model = tiny_models["llama"]
    texts = [t for t in TEXTS if len(model.tokenizer(t)["input_ids"]) >= 2]
    got = model.extract(texts, block_hook(2), pooling="all", interventions=actlab.Add(HOOK, V, 3.0,
                        positions=positions), batch_size=4, progress=False)
    for i, text in enumerate(texts):
        n = int(got.offsets[i + 1] - got.offsets[i])
        picked = [n - 1] if positions == "last" else [p % n for p in positions]
        expected = reference(model, text, lambda x: x + 3.0 * V, picked)
        assert rel_error(got.text(block_hook(2), i), expected) < 1e-5, (positions, i)


def test_a_set_with_one_row_per_position_patches_another_texts_activations(tiny_models):
    model = tiny_models["llama"]
    clean, corrupted = "The cat sat on the mat", "The dog sat on the rug"
    assert len(model.tokenizer(clean)["input_ids"]) == len(model.tokenizer(corrupted)["input_ids"])
    source = model.extract([clean], [HOOK, block_hook(2)], pooling="all", progress=False)
    patched = model.extract([corrupted], block_hook(2), pooling="all", progress=False,
                            interventions=actlab.Set(HOOK, source[HOOK]))
    assert rel_error(patched[block_hook(2)], source[block_hook(2)]) < 1e-5  # every position: the clean run
    one = model.extract([corrupted], block_hook(2), pooling="all", progress=False,
                        interventions=actlab.Set(HOOK, source[HOOK][[2]], positions=[2]))
    expected = reference(model, corrupted, lambda x: source[HOOK][[2]], [2])
    assert rel_error(one[block_hook(2)], expected) < 1e-5


def test_per_row_interventions_in_one_batch_equal_each_alone(tiny_models):
    model = tiny_models["gpt2"]
    add, cap, project = EDITS["add"][0], EDITS["cap"][0], EDITS["project_out"][0]
    rows = [add, None, [cap], [add, project], None, [project, add], cap, add]
    together = model.extract(TEXTS, block_hook(2), pooling="mean", interventions=rows, batch_size=5,
                             progress=False)
    for i, (text, row) in enumerate(zip(TEXTS, rows)):
        alone = model.extract([text], block_hook(2), pooling="mean", interventions=row, progress=False)
        assert rel_error(together[block_hook(2)][i:i + 1], alone[block_hook(2)]) < 1e-5, i
    # order matters, and is kept: add then project out is not project out then add
    assert rel_error(together[block_hook(2)][3:4], together[block_hook(2)][5:6]) > 1e-3


def test_identity_edits_change_nothing(tiny_models):
    model = tiny_models["llama"]
    sae = random_sae(HOOK)
    plain = model.extract(TEXTS, [HOOK, block_hook(2)], pooling="all", progress=False)
    for identity in [actlab.Add(HOOK, torch.zeros(D)), actlab.Cap(HOOK, V, -math.inf, math.inf),
                     actlab.EditLatents(sae, []), actlab.EditLatents(sae, [3, 5], "scale", 1.0)]:
        edited = model.extract(TEXTS, [HOOK, block_hook(2)], pooling="all", interventions=identity,
                               progress=False)
        for hook in (HOOK, block_hook(2)):
            assert torch.equal(edited[hook], plain[hook]), (identity, hook)


@pytest.mark.parametrize("mode,value", [("ablate", 0.0), ("clamp", 2.5), ("scale", 3.0)])
def test_latent_edits_move_the_activation_by_the_decoder_rows(tiny_models, mode, value):
    model = tiny_models["llama"]
    sae = random_sae(HOOK, seed=2)
    plain = model.extract(TEXTS, HOOK, pooling="all", progress=False)[HOOK]  # (N, d)
    f = sae.encode(plain)  # (N, d_sae)
    latents = [int(i) for i in (f > 0).float().mean(0).argsort(descending=True)[:3]]  # often on
    new = {"ablate": torch.zeros_like(f), "clamp": torch.full_like(f, value), "scale": f * value}[mode]
    expected = plain + (new - f)[:, latents] @ sae.W_dec[latents]  # the error term kept
    got = model.extract(TEXTS, HOOK, pooling="all", progress=False,
                        interventions=actlab.EditLatents(sae, latents, mode, value))[HOOK]
    assert rel_error(got, expected) < 1e-5
    if mode == "ablate":  # subtracting each latent's decoder contribution f_i W_dec[i]
        contribution = sum(f[:, [i]] * sae.W_dec[i] for i in latents)
        assert rel_error(got, plain - contribution) < 1e-5
    downstream = model.extract(TEXTS[:1], block_hook(2), pooling="all", progress=False,
                               interventions=actlab.EditLatents(sae, latents, mode, value))[block_hook(2)]

    def by_hand(x):
        f = sae.encode(x)
        changed = {"ablate": 0 * f, "clamp": 0 * f + value, "scale": f * value}[mode]
        return x + (changed - f)[:, latents] @ sae.W_dec[latents]

    assert rel_error(downstream, reference(model, TEXTS[0], by_hand, list(range(len(downstream))))) < 1e-5


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_head_edit_at_hook_z_equals_transformer_lens(tiny_models, arch):
    pytest.importorskip("transformer_lens")
    from benchmarks.peers import hooked_transformer

    model = tiny_models[arch]
    tl = hooked_transformer(model)
    hook_z, head, mean = "blocks.1.attn.hook_z", 2, torch.randn(16, generator=torch.Generator().manual_seed(3))
    got = model.extract(TEXTS, block_hook(2), pooling="all", progress=False,
                        interventions=[actlab.Ablate(hook_z, head=head), actlab.Ablate(hook_z, mean=mean, head=3)])
    assert model.hook_widths([hook_z])[hook_z] == 64

    def ablate(z, hook):  # z (1, T, heads, d_head)
        z = z.clone()
        z[:, :, head] = 0.0
        z[:, :, 3] = mean
        return z

    for i, text in enumerate(TEXTS):
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        seen = {}
        with torch.no_grad():
            tl.run_with_hooks(ids, fwd_hooks=[(hook_z, ablate),
                                              (block_hook(2), lambda x, hook: seen.setdefault("x", x[0]))])
        assert rel_error(got.text(block_hook(2), i), seen["x"]) < 1e-4, (arch, i)


def test_bad_input_is_one_line_errors(tiny_models):
    model = tiny_models["llama"]
    sae = random_sae(HOOK)
    cases = [
        (lambda: actlab.Add("blocks.9.hook_resid_post", V), "has 3 blocks"),
        (lambda: actlab.Add("blocks.nope", V), "unknown hook 'blocks.nope'"),
        (lambda: actlab.Add(HOOK, torch.ones(5)), "has width 5, the hook's is 64"),
        (lambda: actlab.Ablate("blocks.1.attn.hook_z", head=4), "head 4 is outside 0..3"),
        (lambda: actlab.Ablate("blocks.1.attn.hook_z", mean=torch.ones(64), head=1), "has width 64, the head's is 16"),
        (lambda: actlab.Add(HOOK, V, positions=[40]), "position 40 is outside text 0's"),
        (lambda: actlab.Add(HOOK, V, positions="answer"), "apply while generating"),
        (lambda: actlab.Set(HOOK, torch.ones(3, D), positions=[0, 1]), "a per-position value of 3 rows"),
        (lambda: actlab.Add("blocks.1.hook_resid_mid", V), "replacing hook_resid_mid is not supported"),
        (lambda: actlab.EditLatents(random_sae(HOOK, d_in=32), [0]), "reads width 32, the hook's is 64"),
    ]
    for make, message in cases:
        with pytest.raises(ActlabError, match=message):
            model.extract(TEXTS[:2], block_hook(2), interventions=make(), progress=False)
    constructed = [
        (lambda: actlab.Add(HOOK, V, head=0), "head=0: a head is chosen at a blocks.L.attn.hook_z hook"),
        (lambda: actlab.Add(HOOK, V, positions="middle"), "positions 'middle'"),
        (lambda: actlab.Add(HOOK, V, positions=[]), "positions is an empty list"),
        (lambda: actlab.Cap(HOOK, V, 1.0, -1.0), r"cap range \[1.0, -1.0\] is empty"),
        (lambda: actlab.ProjectOut(HOOK, torch.zeros(D)), "the direction is all zeros"),
        (lambda: actlab.EditLatents(sae, [0, 999]), "latent 999 is outside 0..127"),
        (lambda: actlab.EditLatents(sae, [0], "zero"), "latent edit mode 'zero'"),
        (lambda: model.extract(TEXTS[:2], HOOK, interventions=[[actlab.Add(HOOK, V)]], progress=False),
         "1 per-row intervention lists for 2 rows"),
    ]
    for make, message in constructed:
        with pytest.raises(ActlabError, match=message):
            make()


def test_default_model_steering_a_direction_changes_the_next_token(default_model):
    """On the real model: ablating the direction of the answer's unembedding at
    the last block lowers the answer's logit; adding it raises it."""
    model = default_model
    text = "The capital of France is"
    token = model.tokenizer(" Paris")["input_ids"][0]
    direction = model.hf_model.get_output_embeddings().weight[token].detach()
    last = block_hook(model.n_layers - 1)
    plain = model.extract([text], "ln_final.hook_normalized", progress=False)["ln_final.hook_normalized"]
    logit = lambda acts: float(acts["ln_final.hook_normalized"][0] @ direction)  # noqa: E731
    pushed = model.extract([text], "ln_final.hook_normalized", progress=False,
                           interventions=actlab.Add(last, direction, 5.0, positions="last"))
    removed = model.extract([text], "ln_final.hook_normalized", progress=False,
                            interventions=actlab.ProjectOut(last, direction, positions="last"))
    assert logit(removed) < float(plain[0] @ direction) < logit(pushed)
    assert np.isfinite(logit(removed))
