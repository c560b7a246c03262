"""The engine: batched == one-at-a-time, pooling semantics against a naive
per-text loop, early stopping, batching plan."""

import numpy as np
import pytest
import torch

from actlab import ActlabError
from actlab.engine import plan_batches

from conftest import TEXTS, rel_error

POOLINGS = ["last", "mean", "all", "first:3", "last:2", "pos:1", "pos:-2", [0, 1, 2, 0, 1, 3, 0, 1]]
HOOKS = ["hook_embed", "blocks.0.hook_resid_mid", "blocks.1.hook_resid_post", "blocks.2.hook_attn_out"]


def naive(model, text, hook_layer, pooling, prepend_bos=False, index=0):
    """Independent reference: HF forward on one unpadded text, numpy pooling."""
    ids = model.tokenizer(text)["input_ids"]
    if prepend_bos:
        ids = [model.tokenizer.bos_token_id] + ids
    with torch.no_grad():
        hidden = model.hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    h = hidden[hook_layer + 1][0].numpy()
    body = h[1:] if prepend_bos and len(h) > 1 else h
    if pooling == "last":
        return h[-1]
    if pooling == "mean":
        return body.mean(0)
    if pooling == "all":
        return h
    if pooling == "first:3":
        return body[:3].mean(0)
    if pooling == "last:2":
        return body[-2:].mean(0)
    if pooling == "pos:1":
        return h[1]
    if pooling == "pos:-2":
        return h[-2]
    return h[pooling[index]]


def cases(model):
    """(texts, pooling) for every pooling, on texts long enough for all of them."""
    texts = [t for t in TEXTS if len(model.tokenizer(t)["input_ids"]) >= 4]
    for pooling in POOLINGS:
        yield texts, pooling[:len(texts)] if isinstance(pooling, list) else pooling


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_equals_one_at_a_time(tiny_models, arch, padding_side):
    model = tiny_models[arch]
    for texts, pooling in cases(model):
        single = model.extract(texts, HOOKS, pooling=pooling, batch_size=1, progress=False)
        batched = model.extract(texts, HOOKS, pooling=pooling, max_batch_tokens=64,
                                padding_side=padding_side, progress=False)
        assert batched.stats.n_padded_tokens > batched.stats.n_tokens  # padding really happened
        for hook in HOOKS:
            assert batched[hook].shape == single[hook].shape
            assert rel_error(batched[hook], single[hook]) < 1e-5, (pooling, hook)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("prepend_bos", [False, True])
def test_pooling_matches_naive_loop(tiny_models, arch, prepend_bos):
    model = tiny_models[arch]
    for texts, pooling in cases(model):
        acts = model.extract(texts, "blocks.1.hook_resid_post", pooling=pooling, padding_side="left",
                             prepend_bos=prepend_bos, progress=False)
        for i, text in enumerate(texts):
            expected = torch.from_numpy(naive(model, text, 1, pooling, prepend_bos, i))
            got = acts.text("blocks.1.hook_resid_post", i) if pooling == "all" \
                else acts["blocks.1.hook_resid_post"][i]
            assert rel_error(got, expected) < 1e-5, (pooling, i)


def test_gpt2_pad_equal_to_bos(tiny_models):
    """GPT-2's pad id equals its BOS id: counting non-pad tokens would drop BOS."""
    model = tiny_models["gpt2"]
    original = model.tokenizer.pad_token
    model.tokenizer.pad_token = model.tokenizer.bos_token
    try:
        texts = TEXTS[:5]
        batched = model.extract(texts, "blocks.1.hook_resid_post", prepend_bos=True,
                                padding_side="left", progress=False)
        for i, text in enumerate(texts):
            expected = torch.from_numpy(naive(model, text, 1, "last", prepend_bos=True))
            assert rel_error(batched["blocks.1.hook_resid_post"][i], expected) < 1e-5
    finally:
        model.tokenizer.pad_token = original


def test_early_stop_runs_no_later_block(tiny_models):
    model = tiny_models["llama"]
    calls = []
    handles = [block.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
               for i, block in enumerate(model.hf_model.model.layers)]
    head = model.hf_model.lm_head.register_forward_hook(lambda m, a, o: calls.append("head"))
    try:
        acts = model.extract(TEXTS, "blocks.0.hook_resid_post", progress=False)
    finally:
        for h in handles + [head]:
            h.remove()
    assert set(calls) == {0}
    # and stopping early changes nothing: same values as a pass that runs on
    full = model.extract(TEXTS, ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"], progress=False)
    assert torch.equal(acts["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"])


def test_default_model_batched_equals_single(default_model):
    texts = TEXTS
    hooks = ["blocks.3.hook_resid_post", "blocks.20.hook_resid_post"]
    for pooling in ("last", "mean"):
        single = default_model.extract(texts, hooks, pooling=pooling, batch_size=1, progress=False)
        for side in ("right", "left"):
            batched = default_model.extract(texts, hooks, pooling=pooling, padding_side=side, progress=False)
            for hook in hooks:
                assert rel_error(batched[hook], single[hook]) < 1e-5


def test_plan_batches_budget_and_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 151, size=256)
    batches = plan_batches(lengths, max_batch_tokens=2048)
    seen = np.sort(np.concatenate(batches))
    assert np.array_equal(seen, np.arange(256))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert all(len(b) * lengths[b].max() <= 2048 for b in batches)
    assert 1 - lengths.sum() / padded < 0.10  # padding waste on a realistic mix
    assert [len(b) for b in plan_batches(lengths, batch_size=1)] == [1] * 256
    assert max(len(b) for b in plan_batches(lengths, batch_size=16, max_batch_tokens=10**6)) == 16


def test_truncation_is_reported(tiny_models):
    model = tiny_models["llama"]
    acts = model.extract(TEXTS, "blocks.0.hook_resid_post", pooling="all", max_length=4, progress=False)
    long = sum(len(model.tokenizer(t)["input_ids"]) > 4 for t in TEXTS)
    assert acts.stats.n_truncated == long > 0
    assert int(acts.n_tokens.max()) == 4


def test_bad_engine_arguments(tiny_models):
    model = tiny_models["llama"]
    with pytest.raises(ActlabError, match="unknown pooling"):
        model.extract(TEXTS, "blocks.0.hook_resid_post", pooling="median", progress=False)
    with pytest.raises(ActlabError, match="outside text"):
        model.extract(TEXTS, "blocks.0.hook_resid_post", pooling="pos:40", progress=False)
    with pytest.raises(ActlabError, match="one position per text"):
        model.extract(TEXTS, "blocks.0.hook_resid_post", pooling=[0, 1], progress=False)
    with pytest.raises(ActlabError, match="padding_side"):
        model.extract(TEXTS, "blocks.0.hook_resid_post", padding_side="middle", progress=False)
    with pytest.raises(ActlabError, match="list of strings"):
        model.extract("one text", "blocks.0.hook_resid_post", progress=False)


def test_out_of_memory_splits_the_batch(tiny_models, monkeypatch):
    """A batch that does not fit is split in two and the run goes on, unchanged."""
    model = tiny_models["llama"]
    base = model.hf_model.base_model
    forward = base.forward

    def forward_with_small_memory(*args, input_ids, **kwargs):
        if input_ids.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*args, input_ids=input_ids, **kwargs)

    expected = model.extract(TEXTS, HOOKS, batch_size=1, progress=False)
    monkeypatch.setattr(base, "forward", forward_with_small_memory)
    acts = model.extract(TEXTS, HOOKS, batch_size=8, progress=False)
    assert acts.stats.oom_splits >= 3
    for hook in HOOKS:
        assert rel_error(acts[hook], expected[hook]) < 1e-5


def test_include_bos_in_mean(tiny_models):
    model = tiny_models["llama"]
    acts = model.extract(TEXTS, "blocks.1.hook_resid_post", pooling="mean", prepend_bos=True,
                         include_bos=True, progress=False)
    for i, text in enumerate(TEXTS):
        full = torch.from_numpy(naive(model, text, 1, "all", prepend_bos=True))
        assert rel_error(acts["blocks.1.hook_resid_post"][i], full.mean(0)) < 1e-5


def test_token_strings_join_to_the_text(tiny_models):
    """Characters split over byte-level tokens go whole to the completing token."""
    model = tiny_models["llama"]
    texts = ["Buenos días, ¿cómo está usted?", "lol 😂😂 ok", "日本語のテキスト", "plain ascii"]
    acts = model.extract(texts, "blocks.0.hook_resid_post", pooling="all", progress=False)
    offsets = acts.offsets.tolist()
    for i, text in enumerate(texts):
        pieces = acts.tokens[offsets[i]:offsets[i + 1]]
        assert len(pieces) == offsets[i + 1] - offsets[i]
        assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert "" in acts.tokens  # some token only began a character
