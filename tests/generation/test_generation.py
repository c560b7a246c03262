"""The generation engine against independent references: Hugging Face
`generate` one prompt at a time (token identity, per architecture), one
forward over prompt + answer (capture), a batch of one (steering), and
itself under other slot counts, sync intervals and admission orders
(sampling)."""

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

import actlab
from actlab import ActlabError
from actlab.generation import GenerationConfig, RunSlice, Steering, eos_ids, generate, render_prompt
from actlab.generation import engine as engine_module

from conftest import ARCHITECTURES, SMALL, rel_error

POOLINGS = ["response_mean", "response_first:3", "prompt_last", "prompt_mean"]
QUESTIONS = ["Hi", "What is the capital of France?", "2+2?",
             "Tell me a long story about a dragon who loves to eat tomatoes every single day of the week, "
             "and about the village that grows them, in as much detail as you can."]
NEAR_TIE = 1e-5  # greedy may diverge from the reference only where its top two logits are this close


def reference_answer(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """HF generate on this prompt alone, greedy; the answer stops before EOS."""
    ids = torch.tensor([prompt_ids])
    eos = sorted(eos_ids(model))
    out = model.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, eos_token_id=eos, pad_token_id=model.pad_id)[0, ids.shape[1]:]
    answer = out.tolist()
    return answer[:next((k for k, t in enumerate(answer) if t in eos), len(answer))]


def assert_matches_reference(model, gens, max_new_tokens: int) -> None:
    """Token identity with HF generate per prompt, unless the first
    difference sits where the reference's top two logits are a near-tie."""
    for i, prompt_ids in enumerate(gens.prompt_ids):
        expected, got = reference_answer(model, prompt_ids, max_new_tokens), gens.answer_ids[i]
        if got == expected:
            continue
        k = next(k for k in range(min(len(got), len(expected)) + 1) if k == len(got) or k == len(expected)
                 or got[k] != expected[k])
        with torch.no_grad():
            logits = model.hf_model(input_ids=torch.tensor([prompt_ids + expected[:k]])).logits[0, -1]
        top = logits.float().topk(2).values
        assert float(top[0] - top[1]) < NEAR_TIE, f"prompt {i} differs at answer token {k}: {got} vs {expected}"


def block_outputs(model, ids, layers):
    """Reference: one forward over prompt + answer, block outputs (T, d) by hooks."""
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


def prompts_for(model, questions=QUESTIONS, repeat=3):
    return [render_prompt(model.tokenizer, q) for q in questions * repeat]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_matches_hf_generate_per_prompt(tiny_models, arch):
    model = tiny_models[arch]
    gens = generate(model, prompts_for(model), cfg=GenerationConfig(max_new_tokens=12, slots=5, sync_every=3))
    assert gens.stats["shared_prefix_tokens"] > 0  # the chat template's beginning prefilled once per admission
    assert_matches_reference(model, gens, 12)


def tiny_gemma2(tokenizer, window: int) -> actlab.Model:
    torch.manual_seed(0)
    config = transformers.Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=16, sliding_window=window)
    hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for p in hf_model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return actlab.Model(hf_model, tokenizer, f"tiny-gemma2-window{window}")


def test_gemma2_sliding_window_and_soft_capping(tokenizer):
    """A window shorter than the prompts (every other layer) and attention
    and final-logit soft-capping, against HF's eager attention."""
    model = tiny_gemma2(tokenizer, 5)
    config = model.hf_model.config
    assert "sliding_attention" in config.layer_types and config.attn_logit_softcapping
    cfg = GenerationConfig(max_new_tokens=10, slots=3, sync_every=2)
    gens = generate(model, prompts_for(model, repeat=2), [0, 1], POOLINGS, cfg)
    assert gens.stats["shared_prefix_tokens"] > 0  # a shared beginning longer than the window
    assert_matches_reference(model, gens, 10)
    check_capture(model, gens, [0, 1], 1e-4)
    # the window matters: the same weights without it give other states
    wide = generate(tiny_gemma2(tokenizer, 4096), prompts_for(model, repeat=2), [1], POOLINGS, cfg)
    assert rel_error(wide.pooled["prompt_last"][1], gens.pooled["prompt_last"][1]) > 1e-2


def test_admission_edge_cases(tiny_models, monkeypatch):
    """One prompt; more prompts than slots with one much longer than the
    rest; max_new_tokens 1; a row ending at its first token."""
    model = tiny_models["llama"]
    prompts = prompts_for(model, QUESTIONS[:3], 2) + prompts_for(model, [QUESTIONS[3] * 4], 1)
    for cfg in [GenerationConfig(max_new_tokens=9, slots=1), GenerationConfig(max_new_tokens=9, slots=2),
                GenerationConfig(max_new_tokens=1, slots=3)]:
        gens = generate(model, prompts, cfg=cfg)
        assert_matches_reference(model, gens, cfg.max_new_tokens)
        assert all(len(a) <= cfg.max_new_tokens for a in gens.answer_ids)
    # the host knows when every row has surely ended: no decode step past it
    assert generate(model, prompts, cfg=GenerationConfig(max_new_tokens=1, slots=3)).stats["decode_steps"] == 0
    assert generate(model, prompts, [0], cfg=GenerationConfig(max_new_tokens=1, slots=7)).stats["decode_steps"] == 1
    one = generate(model, prompts[:1], cfg=GenerationConfig(max_new_tokens=9))
    assert_matches_reference(model, one, 9)
    first = one.answer_ids[0][0]  # make row 0's first token its EOS
    monkeypatch.setattr(engine_module, "eos_ids", lambda m: {first})
    ended = generate(model, prompts, [0], POOLINGS, GenerationConfig(max_new_tokens=9, slots=2))
    assert ended.answer_ids[0] == [] and ended.finished[0] and ended.answers[0] == ""
    assert ended.pooled["response_mean"][0][0].abs().sum() == 0  # no answer tokens: nothing pooled
    assert ended.answer_ids[1:] == [a[:a.index(first)] if first in a else a
                                    for a in generate(model, prompts[1:], cfg=GenerationConfig(9)).answer_ids]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_capture_equals_a_separate_forward_pass(tiny_models, arch, monkeypatch):
    model = tiny_models[arch]
    prompts = [render_prompt(model.tokenizer, q, "Be brief.") for q in QUESTIONS * 2]
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=1, slots=3, sync_every=2)  # sampled: varied
    free = generate(model, prompts, cfg=cfg)
    # Make a token of row 1's answer the EOS, so rows end at different steps.
    firsts = {answer[0] for answer in free.answer_ids}
    stop = next(t for t in free.answer_ids[1][1:] if t not in firsts)
    monkeypatch.setattr(engine_module, "eos_ids", lambda m: {stop})
    d = model.d_model
    directions = {1: torch.randn(d, generator=torch.Generator().manual_seed(1)),
                  2: torch.randn(3, d, generator=torch.Generator().manual_seed(2))}
    gens = generate(model, prompts, [0, 1, 2], POOLINGS, cfg, directions=directions)
    assert gens.finished[1] and stop not in gens.answer_ids[1]
    assert len({len(a) for a in gens.answer_ids}) > 1
    check_capture(model, gens, [0, 1, 2], 1e-4)
    check_projections(model, gens, directions, 1e-4)
    alone = generate(model, prompts, cfg=cfg, directions=directions)  # projections without pooled capture
    assert alone.answer_ids == gens.answer_ids and not alone.pooled
    for layer in directions:
        for got, expected in zip(alone.projections[layer], gens.projections[layer]):
            assert np.allclose(got, expected, rtol=1e-5, atol=1e-5)


def check_projections(model, gens, directions, tolerance):
    """Every answer token's h . v / |v| against one forward over prompt + answer."""
    for i in range(len(gens)):
        p, a = len(gens.prompt_ids[i]), len(gens.answer_ids[i])
        hidden = block_outputs(model, gens.prompt_ids[i] + gens.answer_ids[i], list(directions))
        for layer, v in directions.items():
            unit = v / v.norm(dim=-1, keepdim=True)
            expected = (hidden[layer][p:p + a] @ unit.T).numpy()  # (a,) or (a, k)
            got = gens.projections[layer][i]
            assert got.shape == expected.shape, (i, layer)
            scale = np.abs(expected).max()
            assert np.abs(got - expected).max() <= tolerance * scale, (i, layer)


def test_batched_capture_equals_batch_one(tiny_models):
    model = tiny_models["llama"]
    prompts = prompts_for(model)
    batched = generate(model, prompts, [1], ["response_mean"], GenerationConfig(max_new_tokens=12))
    single = generate(model, prompts, [1], ["response_mean"], GenerationConfig(max_new_tokens=12, slots=1))
    assert batched.answer_ids == single.answer_ids and batched.answers == single.answers
    assert rel_error(batched.pooled["response_mean"][1], single.pooled["response_mean"][1]) < 1e-5


def test_sampling_does_not_depend_on_slots_sync_or_admission(tiny_models):
    model = tiny_models["llama"]
    prompts = prompts_for(model)
    base = dict(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=3)
    reference = generate(model, prompts, cfg=GenerationConfig(**base)).answer_ids
    for batching in [dict(slots=1), dict(slots=4, sync_every=1), dict(slots=5, sync_every=7)]:
        assert generate(model, prompts, cfg=GenerationConfig(**base, **batching)).answer_ids == reference
    # rows 6.. admitted alone, with other neighbours, sample as in the whole call
    tail = generate(model, prompts[6:], cfg=GenerationConfig(**base, slots=2), within=RunSlice(first_row=6))
    assert tail.answer_ids == reference[6:]
    other_seed = generate(model, prompts, cfg=GenerationConfig(**{**base, "seed": 4})).answer_ids
    assert other_seed != reference
    whole = {**base, "top_p": 1.0}
    assert (generate(model, prompts, cfg=GenerationConfig(**whole)).answer_ids
            == generate(model, prompts, cfg=GenerationConfig(**whole, slots=2)).answer_ids)


def test_steering_per_row_equals_a_batch_of_one(tiny_models):
    model = tiny_models["llama"]
    prompts = prompts_for(model, repeat=2)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    steerings = [None, Steering(0, v, 6.0), Steering(1, -v, 4.0, where="answer"), Steering(2, v, 2.0),
                 Steering(0, v, 6.0, where="answer"), None, Steering(1, v, -3.0), Steering(0, 2 * v, 1.0)]
    cfg = GenerationConfig(max_new_tokens=8, slots=3, sync_every=2)
    mixed = generate(model, prompts, [0, 1, 2], POOLINGS, cfg, steerings)
    assert mixed.stats["shared_prefix_tokens"] > 0  # rows steered alike at their prompts share its beginning
    for i, (prompt, steering) in enumerate(zip(prompts, steerings)):
        alone = generate(model, [prompt], [0, 1, 2], POOLINGS, cfg, steering)
        assert mixed.answer_ids[i] == alone.answer_ids[0], i
        for pooling in POOLINGS:
            for layer in (0, 1, 2):
                assert rel_error(mixed.pooled[pooling][layer][i:i + 1], alone.pooled[pooling][layer]) < 1e-5
    plain = generate(model, prompts, [0, 1, 2], POOLINGS, cfg)
    assert mixed.answer_ids[0] == plain.answer_ids[0] and mixed.answer_ids[1] != plain.answer_ids[1]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_beginnings_change_nothing(tiny_models, arch):
    """Prompts sharing a system prompt, prefilled once per admission or
    each whole: the same answers and captured states (every pooling)."""
    model = tiny_models[arch]
    prompts = [render_prompt(model.tokenizer, q, system) for system in ("Be brief.", "Answer like a pirate, always.")
               for q in QUESTIONS]
    base = dict(max_new_tokens=6, temperature=0.8, seed=2, slots=5, sync_every=2)
    shared = generate(model, prompts, [0, 2], POOLINGS, GenerationConfig(**base))
    whole = generate(model, prompts, [0, 2], POOLINGS, GenerationConfig(**base, share_prefixes=False))
    assert shared.stats["shared_prefix_tokens"] > 0 and whole.stats["shared_prefix_tokens"] == 0
    assert shared.answer_ids == whole.answer_ids
    for pooling in POOLINGS:
        for layer in (0, 2):
            assert rel_error(shared.pooled[pooling][layer], whole.pooled[pooling][layer]) < 1e-5, (pooling, layer)


def test_steering_semantics(tiny_models):
    model = tiny_models["llama"]
    prompts = prompts_for(model, repeat=1)
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


def test_bad_input_is_one_line_errors(tiny_models):
    model = tiny_models["llama"]
    cases = [
        (lambda: generate(model, ["hi"], [7]), "outside 0..2"),
        (lambda: generate(model, ["hi"], [0], ["response_last"]), "unknown pooling"),
        (lambda: generate(model, "hi"), "list of strings"),
        (lambda: generate(model, ["hi", ""]), "prompt 1 has no tokens"),
        (lambda: generate(model, ["hi"], steering=Steering(0, torch.ones(3), 1.0)), "width 3"),
        (lambda: generate(model, ["hi"], steering=Steering(5, torch.ones(64), 1.0)), "steering layer 5"),
        (lambda: generate(model, ["hi", "ho"], steering=[None]), "1 steerings for 2 prompts"),
        (lambda: Steering(0, torch.ones(64), 1.0, where="prompt"), "use 'all' or 'answer'"),
        (lambda: GenerationConfig(slots=0), "slots must be at least 1"),
        (lambda: generate(model, ["hi", "x " * 600]), r"prompt 1 has \d+ tokens.*context of 512"),
        (lambda: generate(model, ["hi"], directions={4: torch.ones(64)}), "direction layer 4"),
        (lambda: generate(model, ["hi"], directions={0: torch.ones(2, 5)}), r"shape \(2, 5\)"),
        (lambda: generate(model, ["hi"], directions={0: torch.zeros(64)}), "all zeros"),
        (lambda: generate(model, ["hi"], direction={0: torch.ones(64)}), "no option 'direction'"),
    ]
    for call, message in cases:
        with pytest.raises(ActlabError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):  # a shared default (TRAIT_SAMPLING) cannot be changed
        GenerationConfig().max_new_tokens = 3
    assert generate(model, []).answers == []


def test_default_model(default_model):
    prompts = [render_prompt(default_model.tokenizer, q, "Answer in one short sentence.") for q in QUESTIONS]
    cfg = GenerationConfig(max_new_tokens=16, slots=3, sync_every=4)
    directions = {15: torch.randn(default_model.d_model, generator=torch.Generator().manual_seed(0))}
    gens = generate(default_model, prompts, [3, 15, 29], POOLINGS, cfg, directions=directions)
    assert all(gens.prompts[i].startswith("<|im_start|>system\nAnswer in one short sentence.") for i in range(4))
    check_capture(default_model, gens, [3, 15, 29], 1e-4)
    check_projections(default_model, gens, directions, 1e-4)
    assert_matches_reference(default_model, gens, 16)
    assert "Paris" in gens.answers[1]


def test_default_slots_follow_the_budget_and_the_cache_size():
    from actlab.generation.config import CPU_CACHE_BYTES, CPU_GENERATION_BUDGET

    cpu, cfg = torch.device("cpu"), GenerationConfig(max_new_tokens=100)
    assert cfg.slot_count(28, 10_000, cpu, 1) == CPU_GENERATION_BUDGET // 128  # small rows: the token budget
    assert cfg.slot_count(28, 10_000, cpu, 2 ** 20) == CPU_CACHE_BYTES // 2 ** 20 // 128  # wide rows: the cache
    assert cfg.slot_count(28, 3, cpu, 1) == 3  # never more slots than prompts
    assert GenerationConfig(slots=5).slot_count(28, 10, cpu, 2 ** 30) == 5
    assert GenerationConfig(max_new_tokens=100, max_batch_tokens=1280).slot_count(28, 100, cpu, 2 ** 30) == 10
