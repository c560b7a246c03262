"""The contrast pass: batched equals one text at a time on both padding
sides; the residual at the continuation equals a naive HF forward over the
text (the span under left padding); metrics equal the metric functions on
that residual; the run resumes and reads back."""

import numpy as np
import pytest
import torch

import actlab
from actlab import ExtractConfig
from actlab.contrasts.metrics import noise, text_metrics
from actlab.contrasts.pairs import Pairs
from actlab.contrasts.config import ContrastConfig
from actlab.contrasts.passes import METRICS
from actlab.contrasts.run import ContrastRun, contrast_run

from conftest import random_sae

PAIRS = Pairs(["a", "b", "c", "d"], ["x", "x", "y", "y"],
              ["The capital of France is", "Water boils at", "The sky on a clear day is", "Two plus two is"],
              {"fact": ["Paris.", "one hundred degrees Celsius.", "blue.", "four."],
               "hallucination": ["Berlin.", "fifty degrees Celsius.", "green.", "five."]})


def saes():
    return {"early": random_sae("blocks.0.hook_resid_post", arch="topk", seed=1),
            "late": random_sae("blocks.1.hook_resid_post", arch="jumprelu", seed=2)}


def table(path, columns=("pair_index", "condition", "layer", *METRICS)):
    return ContrastRun.open(path).texts().select(list(columns)).to_pandas().sort_values(["pair_index", "condition", "layer"])


@pytest.mark.parametrize("position", ["last", "continuation"])
def test_batched_equals_one_at_a_time(tmp_path, tiny_models, position):
    model = tiny_models["llama"]
    cfg = ContrastConfig(position=position, shard_size=3)
    single = contrast_run(model, PAIRS, saes(), tmp_path / "single", cfg, ExtractConfig(batch_size=1))
    for side in ("left", "right"):
        batched = contrast_run(model, PAIRS, saes(), tmp_path / side, cfg,
                               ExtractConfig(max_batch_tokens=64, padding_side=side))
        a, b = table(single), table(batched)
        for metric in METRICS:
            assert np.allclose(a[metric], b[metric], rtol=1e-4, atol=1e-5, equal_nan=True), (side, metric)
        assert np.allclose(ContrastRun.open(single).vectors()[1], ContrastRun.open(batched).vectors()[1], rtol=1e-4, atol=1e-5)


def test_continuation_span_and_metrics_against_a_naive_pass(tmp_path, tiny_models):
    model = tiny_models["llama"]
    cfg = ContrastConfig(position="continuation", draws=3)
    named = saes()
    path = contrast_run(model, PAIRS, named, tmp_path / "run", cfg, ExtractConfig(padding_side="left"))
    run = ContrastRun.open(path)
    keys, residual = run.vectors()
    keys = keys.to_pandas()
    texts = run.texts().to_pandas()
    for i in range(len(PAIRS)):
        prompt_ids = model.tokenizer(PAIRS.prompts[i])["input_ids"]
        for condition in ("fact", "hallucination"):
            ids = model.tokenizer(PAIRS.text(condition, i))["input_ids"]
            assert ids[:len(prompt_ids)] == prompt_ids
            with torch.no_grad():
                hidden = model.hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            for j, (name, layer) in enumerate((("early", 0), ("late", 1))):
                x = hidden[layer + 1][0, len(prompt_ids):].mean(0)  # the continuation's own tokens
                row = np.flatnonzero((keys["pair_index"] == i) & (keys["condition"] == condition) &
                                     (keys["layer"] == layer))[0]
                assert np.allclose(residual[row], x.numpy(), rtol=1e-4, atol=1e-5)
                sae = named[name]
                f, x_hat = sae.reconstruct(x[None])
                text_id = i * 3 + (1 if condition == "fact" else 2)
                gen = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + text_id * 97 + j)]
                noisy = sae.encode(x[None, None] + noise(x[None], gen, cfg.draws, cfg.noise)).reshape(1, cfg.draws, -1)
                expected, _ = text_metrics(x[None], f, x_hat, sae.W_dec, noisy)
                got = texts[(texts["pair_index"] == i) & (texts["condition"] == condition) & (texts["layer"] == layer)]
                for metric in METRICS:
                    assert np.allclose(got[metric].iloc[0], float(expected[metric][0]), rtol=1e-4, atol=1e-5,
                                       equal_nan=True), (metric, i, condition)


def test_pairs_table_and_open_run(tmp_path, tiny_models):
    path = contrast_run(tiny_models["llama"], PAIRS, saes(), tmp_path / "run", ContrastConfig(shard_size=2))
    run = actlab.open_run(path)
    assert isinstance(run, ContrastRun) and "<b>ContrastRun</b>" in run._repr_html_()
    texts, pairs = run.texts().to_pandas(), run.pairs().to_pandas()
    assert len(texts) == 4 * 3 * 2 and len(pairs) == 4 * 2
    for metric in ("l0", "gini", "stability_jaccard"):  # differences are second - first, pair by pair
        for _, row in pairs.iterrows():
            here = texts[(texts["pair_index"] == row["pair_index"]) & (texts["layer"] == row["layer"])]
            value = here[here["condition"] == "hallucination"][metric].iloc[0] - \
                here[here["condition"] == "fact"][metric].iloc[0]
            assert np.isclose(row[f"{metric}_diff"], value, equal_nan=True)
    assert pairs[pairs["layer"] == 0]["cross_layer_cos_fact"].isna().all()
    assert pairs[pairs["layer"] == 1]["cross_layer_cos_fact"].between(-1, 1).all()
    assert ((pairs["drift_fact"] >= 0) & (pairs["drift_fact"] <= 180)).all()
    assert ((pairs["twist_between"] >= 0) & (pairs["twist_between"] <= 90)).all()


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_scores_against_teacher_forced_log_probabilities(tmp_path, tiny_models, arch):
    """logprob = sum over the continuation's tokens of log p(token | everything
    before), from one full HF forward per text (Gemma-2: soft-capped logits)."""
    model = tiny_models[arch]
    named = {"early": random_sae("blocks.0.hook_resid_post", arch="topk", seed=1)}
    path = contrast_run(model, PAIRS, named, tmp_path / "run", ContrastConfig(score=True),
                        ExtractConfig(max_batch_tokens=48, padding_side="left"))
    texts = ContrastRun.open(path).texts().to_pandas()
    pairs = ContrastRun.open(path).pairs().to_pandas()
    for i in range(len(PAIRS)):
        prompt_ids = model.tokenizer(PAIRS.prompts[i])["input_ids"]
        expected = {}
        for condition in ("fact", "hallucination"):
            ids = model.tokenizer(PAIRS.text(condition, i))["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model.hf_model(torch.tensor([ids])).logits[0].double(), -1)
            expected[condition] = sum(float(logp[p - 1, ids[p]]) for p in range(len(prompt_ids), len(ids)))
            got = texts[(texts["pair_index"] == i) & (texts["condition"] == condition)]["logprob"]
            assert np.allclose(got, expected[condition], rtol=1e-4, atol=1e-4), (i, condition)
        assert texts[(texts["pair_index"] == i) & (texts["condition"] == "prompt")]["logprob"].isna().all()
        prefers = pairs[pairs["pair_index"] == i]["prefers"].iloc[0]
        assert prefers == ("fact" if expected["fact"] >= expected["hallucination"] else "hallucination")


def test_contrast_takes_a_pairs_file(tmp_path, tiny_models):
    """actlab.contrast(model, pairs, saes, ...) reads pairs files itself; the
    subpackage actlab.contrasts stays reachable beside the function."""
    import json

    import actlab.contrasts.metrics

    rows = [{"prompt": PAIRS.prompts[i], "fact": PAIRS.continuations["fact"][i],
             "hallucination": PAIRS.continuations["hallucination"][i]} for i in range(len(PAIRS))]
    (tmp_path / "facts.json").write_text(json.dumps(rows))
    result = actlab.contrast(tiny_models["llama"], tmp_path / "facts.json", saes(), tmp_path / "run",
                             ContrastConfig(folds=2, report=False))
    assert ContrastRun.open(result["run"]).settings["pairs"]["n_pairs"] == 4
    assert callable(actlab.contrast) and actlab.contrasts.metrics.text_metrics is text_metrics
