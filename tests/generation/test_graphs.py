"""The decode step in the static form CUDA graphs replay (whole-cache
attention, buffers updated in place, rows packed into slot buckets), run
eagerly on CPU, against the dynamic form; the slot buckets by brute force.
The replays themselves are checked on a GPU by
benchmarks/check_generation_cuda.py."""

import torch

from actlab.generation import GenerationConfig, Steering, generate, render_prompt
from actlab.generation import engine as engine_module
from actlab.generation.graphs import DecodeGraphs, slot_bucket

from conftest import rel_error

POOLINGS = ["response_mean", "response_first:3", "prompt_last", "prompt_mean"]


def test_slot_buckets():
    sizes = sorted({2 ** k for k in range(12)} | {3 * 2 ** k for k in range(11)})
    for n in range(1, 2000):
        assert slot_bucket(n) == min(s for s in sizes if s >= n)
        assert slot_bucket(n) - n < slot_bucket(n) / 3  # at most a third of a packed batch is padding


def test_static_decode_equals_the_dynamic_one(tiny_models, monkeypatch):
    model = tiny_models["llama"]
    questions = ["Hi", "What is the capital of France?", "2+2?", "Tell me a long story about a dragon. " * 3]
    prompts = [render_prompt(model.tokenizer, q) for q in questions * 4]
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    steerings = [None, Steering(0, v, 5.0), Steering(1, -v, 3.0, where="answer"), None] * 4
    plain = generate(model, prompts, cfg=GenerationConfig(max_new_tokens=14)).answer_ids
    ending = {plain[0][4], plain[1][7]}  # rows end at these tokens, apart: the live rows are packed
    monkeypatch.setattr(engine_module, "eos_ids", lambda m: ending)
    runs = {}
    for form in ("dynamic", "static"):
        if form == "static":
            calls, packed = [], []
            monkeypatch.setattr(engine_module, "decode_graphs", lambda device, cfg: calls.append(1)
                                or DecodeGraphs(capture=False))
            keep = engine_module.SlotDecoder._keep
            monkeypatch.setattr(engine_module.SlotDecoder, "_keep",
                                lambda self, order: packed.append(len(order)) or keep(self, order))
        for name, cfg in {"greedy": GenerationConfig(max_new_tokens=14, slots=7, sync_every=3),
                          "sampled": GenerationConfig(max_new_tokens=14, slots=16, sync_every=2, temperature=0.8,
                                                      top_p=0.9, seed=1)}.items():
            runs[form, name] = generate(model, prompts, [0, 1], POOLINGS, cfg, steerings)
    assert calls  # the static form ran
    for name in ("greedy", "sampled"):
        dynamic, static = runs["dynamic", name], runs["static", name]
        assert static.answer_ids == dynamic.answer_ids and static.finished == dynamic.finished
        for pooling in POOLINGS:
            for layer in (0, 1):
                assert rel_error(static.pooled[pooling][layer], dynamic.pooled[pooling][layer]) < 1e-5
    assert len({len(a) for a in runs["static", "greedy"].answer_ids}) > 1  # rows ended apart ...
    assert packed and set(packed) <= {slot_bucket(n) for n in range(1, 17)}  # ... and were packed into buckets
