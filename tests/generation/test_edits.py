"""Interventions while generating (generation/edits.py): a sweep of
different edits in one continuous batch equals each edit alone (greedy
answers identical, captures within 1e-5: float rounding of other batch
shapes), and an answer generated under an edit has the block outputs of one
extraction forward over prompt + answer under the same edit (1e-4: the
decode step's cached attention against one forward)."""

import numpy as np
import pytest
import torch

import actlab
from actlab import ActlabError
from actlab.engine import ExtractConfig, Extractor
from actlab.generation import GenerationConfig, Steering, generate, render_prompt
from actlab.hooks import block_hook
from actlab.interventions import BatchEdits
from actlab.tokens import Tokenized

from conftest import random_sae, rel_error

QUESTIONS = ["Hi", "What is the capital of France?", "2+2?", "Name three colours.", "Why is the sky blue?",
             "Tell me a joke.", "Count to five.", "What is a cat?"]
POOLINGS = ["response_mean", "prompt_mean", "prompt_last"]
D = 64


def sweep(model):
    """One intervention (or none) per prompt, of every kind and place."""
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(D, generator=g), torch.randn(D, generator=g)
    sae = random_sae(block_hook(1), seed=5)
    return [
        None,
        actlab.Add(block_hook(0), v, 4.0, positions="answer"),
        actlab.Cap(block_hook(1), v, -0.2, 0.2),
        actlab.ProjectOut("blocks.1.hook_mlp_out", w, positions="prompt"),
        actlab.EditLatents(sae, [0, 1, 2, 3], "clamp", 3.0),
        actlab.Ablate("blocks.0.attn.hook_z", head=1, positions="all"),
        [Steering(2, w, 3.0), actlab.Set(block_hook(1), w, positions=[-1])],
        [actlab.EditLatents(sae, [7], "scale", 4.0, positions="answer"), actlab.Add(block_hook(1), v, -2.0)],
    ]


def test_a_sweep_in_one_batch_equals_each_edit_alone(tiny_models):
    model = tiny_models["llama"]
    prompts = [render_prompt(model.tokenizer, q, "Be brief.") for q in QUESTIONS]
    edits = sweep(model)
    cfg = GenerationConfig(max_new_tokens=8, slots=3, sync_every=2)
    together = generate(model, prompts, [0, 1, 2], POOLINGS, cfg, interventions=edits)
    plain = generate(model, prompts, [0, 1, 2], POOLINGS, cfg)
    wide = generate(model, prompts, [0, 1, 2], POOLINGS, GenerationConfig(max_new_tokens=8), interventions=edits)
    assert wide.stats["shared_prefix_tokens"] > 0  # rows that leave the prompt alone share its beginning
    assert wide.answer_ids == together.answer_ids
    changed = 0
    for i, (prompt, edit) in enumerate(zip(prompts, edits)):
        alone = generate(model, [prompt], [0, 1, 2], POOLINGS, cfg, interventions=edit)
        assert together.answer_ids[i] == alone.answer_ids[0], i
        for pooling in POOLINGS:
            for layer in (0, 1, 2):
                assert rel_error(together.pooled[pooling][layer][i:i + 1], alone.pooled[pooling][layer]) < 1e-5
        changed += together.answer_ids[i] != plain.answer_ids[i]
    assert together.answer_ids[0] == plain.answer_ids[0] and changed >= 4


def extraction_under(model, ids: list[int], edit, prompt_length: int) -> dict[int, torch.Tensor]:
    """Block outputs (T, d) at layers 0-2 of one forward over `ids` with
    `edit`'s generation positions written as token indices."""
    def placed(intervention):
        where = intervention.positions
        answer = list(range(prompt_length, len(ids)))
        indices = {"all": list(range(len(ids))), "prompt": list(range(prompt_length)), "answer": answer}.get(where)
        if indices is None:  # "last" or indices: the prompt's
            indices = [prompt_length - 1] if where == "last" else [p % prompt_length for p in where]
        clone = object.__new__(type(intervention))
        clone.__dict__.update(intervention.__dict__)
        object.__setattr__(clone, "positions", tuple(indices))
        return clone

    row = () if edit is None else tuple(placed(i) for i in ([edit] if isinstance(edit, actlab.Intervention) else edit))
    extractor = Extractor(model, ExtractConfig(hooks=[block_hook(layer) for layer in range(3)], pooling="all"))
    acts = extractor.run_tokenized(Tokenized([ids], False, 0), edits=BatchEdits(model, [row]))
    return {layer: acts[block_hook(layer)] for layer in range(3)}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_edited_answer_has_the_states_of_one_edited_forward(tiny_models, arch):
    model = tiny_models[arch]
    prompts = [render_prompt(model.tokenizer, q, "Be brief.") for q in QUESTIONS]
    edits = sweep(model) if arch == "llama" else [None, actlab.Cap(block_hook(1), torch.ones(D), -0.1, 0.1),
                                                  actlab.Add(block_hook(0), torch.ones(D), 2.0, positions="answer")]
    prompts = prompts[:len(edits)]
    gens = generate(model, prompts, [0, 1, 2], POOLINGS, GenerationConfig(max_new_tokens=6, slots=3),
                    interventions=edits)
    for i, edit in enumerate(edits):
        p, a = len(gens.prompt_ids[i]), len(gens.answer_ids[i])
        hidden = extraction_under(model, gens.prompt_ids[i] + gens.answer_ids[i], edit, p)
        for layer in range(3):
            expected = {"response_mean": hidden[layer][p:p + a].mean(0) if a else torch.zeros(D),
                        "prompt_mean": hidden[layer][:p].mean(0), "prompt_last": hidden[layer][p - 1]}
            for pooling in POOLINGS:
                if pooling == "response_mean" and a == 0:
                    continue
                assert rel_error(gens.pooled[pooling][layer][i:i + 1], expected[pooling][None]) < 1e-4, \
                    (i, layer, pooling)


def test_steering_is_an_add_at_the_block_output(tiny_models):
    model = tiny_models["llama"]
    prompts = [render_prompt(model.tokenizer, q) for q in QUESTIONS[:4]]
    v = torch.randn(D, generator=torch.Generator().manual_seed(2))
    cfg = GenerationConfig(max_new_tokens=6)
    for where in ("all", "answer"):
        steered = generate(model, prompts, [2], cfg=cfg, steering=Steering(1, v, 4.0, where))
        added = generate(model, prompts, [2], cfg=cfg, interventions=actlab.Add(block_hook(1), v, 4.0,
                                                                                   positions=where))
        assert steered.answer_ids == added.answer_ids
        assert torch.equal(steered.pooled["response_mean"][2], added.pooled["response_mean"][2])


def test_bad_interventions_are_one_line_errors(tiny_models):
    model = tiny_models["llama"]
    prompts = [render_prompt(model.tokenizer, q) for q in QUESTIONS[:2]]
    cases = [
        (actlab.Add(block_hook(1), torch.ones(D), positions=[500]), "position 500 is outside text 0's"),
        (actlab.Set(block_hook(1), torch.ones(2, D), positions=[0, 1]), "one value per position"),
        (actlab.Add("blocks.7.hook_resid_post", torch.ones(D)), "has 3 blocks"),
        (actlab.Add(block_hook(1), torch.ones(3)), "has width 3"),
    ]
    for edit, message in cases:
        with pytest.raises(ActlabError, match=message):
            generate(model, prompts, cfg=GenerationConfig(max_new_tokens=2), interventions=edit)


def test_default_model_ablating_a_direction_in_a_sweep(default_model):
    """The default model, a sweep of 4 rows in one batch: capping the
    projection onto a direction at every position holds every answer
    token's projection within the cap."""
    model = default_model
    prompt = render_prompt(model.tokenizer, "Write one sentence about the sea.")
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    layer = 10
    edits = [None, actlab.Cap(block_hook(layer), direction, -0.5, 0.5),
             actlab.ProjectOut(block_hook(layer), direction), Steering(layer, direction, 8.0)]
    gens = generate(model, [prompt] * 4, cfg=GenerationConfig(max_new_tokens=8), interventions=edits,
                    directions={layer: direction})
    capped, removed = gens.projections[layer][1], gens.projections[layer][2]
    assert np.all(np.abs(capped) <= 0.5 + 1e-4) and np.all(np.abs(removed) <= 1e-4)
    assert np.abs(gens.projections[layer][0]).max() > 0.5
