"""Generation with capture against a separate forward pass over prompt +
answer, batched greedy generation against batch 1, response slicing under
left padding."""

import pytest
import torch

from actlab import ActlabError
from actlab.traits import GenerationConfig, generate, render_prompt
from actlab.traits import generation as generation_module

from conftest import rel_error

POOLINGS = ["response_mean", "response_first:3", "prompt_last", "prompt_mean"]
QUESTIONS = ["Hi", "What is the capital of France?", "2+2?",
             "Tell me a long story about a dragon who loves to eat tomatoes every single day of the week, "
             "and about the village that grows them, in as much detail as you can."]


def block_outputs(model, ids, layers):
    """Reference: one forward over prompt + answer, block outputs by hooks."""
    seen = {}
    blocks = model.base_model.layers if hasattr(model.base_model, "layers") else model.base_model.h
    handles = [blocks[layer].register_forward_hook(
        lambda m, a, out, layer=layer: seen.__setitem__(layer, (out[0] if isinstance(out, tuple) else out)[0]))
        for layer in layers]
    try:
        with torch.no_grad():
            model.hf_model(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return seen


def check_capture(model, gens, layers, tolerance):
    for i in range(len(gens)):
        p, a = len(gens.prompt_ids[i]), len(gens.answer_ids[i])
        assert a > 0
        hidden = block_outputs(model, gens.prompt_ids[i] + gens.answer_ids[i], layers)
        for layer in layers:
            h = hidden[layer]
            expected = {"response_mean": h[p:p + a].mean(0), "response_first:3": h[p:p + min(3, a)].mean(0),
                        "prompt_last": h[p - 1], "prompt_mean": h[:p].mean(0)}
            for pooling in POOLINGS:
                got = gens.pooled[pooling][layer][i]
                assert rel_error(got[None], expected[pooling][None]) < tolerance, (i, layer, pooling)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_capture_equals_a_separate_forward_pass(tiny_models, arch, monkeypatch):
    model = tiny_models[arch]
    prompts = [render_prompt(model.tokenizer, q, "Be brief.") for q in QUESTIONS]
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=1)  # sampled: varied tokens
    free = generate(model, prompts, cfg=cfg)
    # Make a token of row 1's answer the EOS, so rows end at different steps.
    firsts = {answer[0] for answer in free.answer_ids}
    stop = next(t for t in free.answer_ids[1][1:] if t not in firsts)
    monkeypatch.setattr(generation_module, "eos_ids", lambda m: {stop})
    gens = generate(model, prompts, [0, 1, 2], POOLINGS, cfg)
    assert gens.finished[1] and stop not in gens.answer_ids[1]
    assert len({len(a) for a in gens.answer_ids}) > 1
    check_capture(model, gens, [0, 1, 2], 1e-4)


def test_batched_greedy_equals_batch_one(tiny_models):
    model = tiny_models["llama"]
    prompts = [render_prompt(model.tokenizer, q) for q in QUESTIONS * 3]
    batched = generate(model, prompts, [1], ["response_mean"], GenerationConfig(max_new_tokens=12))
    single = generate(model, prompts, [1], ["response_mean"], GenerationConfig(max_new_tokens=12, batch_size=1))
    assert batched.answer_ids == single.answer_ids and batched.answers == single.answers
    assert rel_error(batched.pooled["response_mean"][1], single.pooled["response_mean"][1]) < 1e-5


def test_seeded_sampling_does_not_depend_on_batching(tiny_models):
    model = tiny_models["llama"]
    prompts = [render_prompt(model.tokenizer, q) for q in QUESTIONS]
    cfg = dict(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=3)
    a = generate(model, prompts, cfg=GenerationConfig(**cfg))
    b = generate(model, prompts, cfg=GenerationConfig(**cfg, batch_size=1))
    c = generate(model, prompts, cfg=GenerationConfig(**{**cfg, "seed": 4}))
    assert a.answer_ids == b.answer_ids and a.answer_ids != c.answer_ids


@pytest.mark.parametrize("spread", ["peaked", "flat"])
def test_top_p_samples_the_nucleus(spread):
    """Draws match softmax(logits / T) restricted to the smallest set of
    likeliest tokens reaching top_p (numpy), whether that set lies within
    the top-k candidates (peaked) or needs the whole vocabulary sorted (flat)."""
    import numpy as np

    vocab, draws, cfg = 3000, 6000, GenerationConfig(temperature=0.7, top_p=0.8)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(vocab, generator=g) * (4.0 if spread == "peaked" else 0.3)
    p = np.exp((logits.double() / 0.7).numpy() - (logits.double() / 0.7).numpy().max())
    p /= p.sum()
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    nucleus = order[before <= 0.8]
    assert (len(nucleus) < generation_module.NUCLEUS_CANDIDATES) == (spread == "peaked")
    expected = np.zeros(vocab)
    expected[nucleus] = p[nucleus] / p[nucleus].sum()
    picks = generation_module._choose(logits.expand(draws, vocab), cfg,
                                      [torch.Generator().manual_seed(i) for i in range(draws)]).numpy()
    assert set(picks) <= set(nucleus.tolist())
    counts = np.bincount(picks, minlength=vocab) / draws
    top = nucleus[:5]  # the likeliest tokens: frequencies within 4 standard errors
    assert np.all(np.abs(counts[top] - expected[top]) <= 4 * np.sqrt(expected[top] / draws) + 1e-9)


def test_default_model(default_model):
    prompts = [render_prompt(default_model.tokenizer, q, "Answer in one short sentence.") for q in QUESTIONS]
    cfg = GenerationConfig(max_new_tokens=16)
    gens = generate(default_model, prompts, [3, 15, 29], POOLINGS, cfg)
    assert all(gens.prompts[i].startswith("<|im_start|>system\nAnswer in one short sentence.") for i in range(4))
    check_capture(default_model, gens, [3, 15, 29], 1e-4)
    single = generate(default_model, prompts, [], cfg=GenerationConfig(max_new_tokens=16, batch_size=1))
    assert single.answer_ids == gens.answer_ids
    assert "Paris" in gens.answers[1]


def test_bad_arguments(tiny_models):
    model = tiny_models["llama"]
    with pytest.raises(ActlabError, match="outside"):
        generate(model, ["hi"], [7])
    with pytest.raises(ActlabError, match="unknown pooling"):
        generate(model, ["hi"], [0], ["response_last"])
    with pytest.raises(ActlabError, match="list of strings"):
        generate(model, "hi")


def test_steering(tiny_models):
    from actlab.traits import Steering

    model = tiny_models["llama"]
    prompts = [render_prompt(model.tokenizer, q) for q in QUESTIONS]
    cfg = GenerationConfig(max_new_tokens=8)
    plain = generate(model, prompts, [0, 1], POOLINGS, cfg)
    zero = generate(model, prompts, [0, 1], POOLINGS, cfg, Steering(0, torch.ones(64), 0.0))
    assert zero.answer_ids == plain.answer_ids
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    steered = generate(model, prompts, [0, 1], POOLINGS, cfg, Steering(0, v, 8.0))
    assert steered.answer_ids != plain.answer_ids
    # every position steered: the captured block-0 prompt states moved by exactly 8 v
    assert rel_error(steered.pooled["prompt_last"][0], plain.pooled["prompt_last"][0] + 8 * v) < 1e-5
    answer_only = generate(model, prompts, [0, 1], POOLINGS, cfg, Steering(0, v, 8.0, where="answer"))
    assert rel_error(answer_only.pooled["prompt_mean"][1], plain.pooled["prompt_mean"][1]) < 1e-6
    assert answer_only.answer_ids != plain.answer_ids
    with pytest.raises(ActlabError, match="width"):
        generate(model, prompts, cfg=cfg, steering=Steering(0, torch.ones(3), 1.0))
