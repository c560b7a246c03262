"""Auto-interpretation: the prompts' marks and parsing by hand, the held-out
split against the run's own tables (and the pool against brute force), the
scores against scikit-learn, and the explain loop with the local explainer:
resumable (a rerun asks nothing), capped by --max-calls (then resumed to the
uninterrupted result), a server that stops answering losing nothing."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

import actlab
from actlab import ActlabError, ExplainConfig, LatentsConfig
from actlab.judges import Judgement, Reply
from actlab.latents import explain as explain_module
from actlab.latents.cases import latent_case, sae_examples
from actlab.latents.examples import example_activations, window_pool
from actlab.latents.explain import explain_latents, explanation_scores
from actlab.latents.prompts import baseline_explanation, marked_text, parse_explanation
from conftest import TEXTS, random_sae, run_cli

HOOK, LAYER = "blocks.1.hook_resid_post", 1
FEW = dict(examples=3, test_examples=2)  # few calls per latent: 1 + 2 x (4 + 2)


def test_marks_and_parsing_by_hand():
    tokens = ["<s>", "The", " cat", " sat", " on", " the", " mat"]
    assert marked_text(tokens, {2, 3, 6}, first=1) == "The<< cat sat>> on the<< mat>>"
    assert marked_text(tokens, set(), first=0) == "<s>The cat sat on the mat"
    assert parse_explanation("Some thinking.\n[EXPLANATION]: Cats <<sitting>>.\nmore") == "Cats sitting."
    assert parse_explanation('\n  "the word on"  \nsecond line') == "the word on"
    assert parse_explanation("") == ""
    assert baseline_explanation([tokens, tokens], [{2, 6}, {2}]) == 'the tokens "cat", "mat"'
    assert baseline_explanation([tokens], [set()]) == ""


def test_scores_equal_scikit_learn():
    rng = np.random.default_rng(0)
    rows = []
    for latent in range(3):
        for kind in ("explained", "baseline"):
            for task in ("detection", "fuzzing"):
                for label in (1, 0) * 6:
                    score = None if rng.random() < 0.1 else float(rng.integers(0, 101))
                    rows.append(("s", latent, kind, task, label, score))
    scores = pa.table({name: [r[i] for r in rows] for i, name in
                       enumerate(("sae", "latent", "kind", "task", "label", "score"))})
    notes = pa.table({"sae": ["s"] * 3, "latent": [0, 1, 2]})
    out = explanation_scores(scores, notes)
    for latent in range(3):
        unscored = 0
        for kind, prefix in (("explained", ""), ("baseline", "baseline_")):
            for task in ("detection", "fuzzing"):
                mine = [(r[4], r[5]) for r in rows if r[1:4] == (latent, kind, task)]
                unscored += sum(s is None for _, s in mine)
                labels = [lab for lab, s in mine if s is not None]
                values = [s for _, s in mine if s is not None]
                assert out[f"{prefix}{task}_auroc"][latent].as_py() == pytest.approx(roc_auc_score(labels, values))
                assert out[f"{prefix}{task}_accuracy"][latent].as_py() == pytest.approx(
                    balanced_accuracy_score(labels, [v >= 50 for v in values]))
        assert out["n_unscored"][latent].as_py() == unscored
    assert out["score"].equals(out["detection_auroc"])


@pytest.fixture(scope="module")
def latents(tmp_path_factory, tiny_models):
    """A latents run of the tiny Llama with its SAE, examples and pool computed."""
    saes = {"s": random_sae(HOOK, seed=2)}
    texts = [" ".join(TEXTS[(i + k) % len(TEXTS)] for k in range(3)) for i in range(24)]
    path = actlab.latents_run(tiny_models["llama"], texts, saes, tmp_path_factory.mktemp("explain") / "run",
                              LatentsConfig(context=8, top=6, intervals=2))
    run = actlab.open_run(path)
    example_activations(run, tiny_models["llama"], saes)
    window_pool(run, tiny_models["llama"], saes)
    return run, saes


@torch.no_grad()
def test_pool_and_held_out_split(latents, tiny_models):
    run, saes = latents
    model, sae = tiny_models["llama"], saes["s"]
    pool = window_pool(run, model).to_pandas()
    windows = run.with_tokens(pa.table({"window": pa.array(pool.window.tolist(), pa.int64())})).to_pandas()
    for ids, active in zip(windows.token_ids, pool.active):  # each pool window's active latents, brute force
        hidden = model.hf_model(input_ids=torch.tensor([ids.tolist()]), output_hidden_states=True).hidden_states[LAYER + 1]
        assert set(active.tolist()) == set(torch.nonzero(sae.encode(hidden[0].float()).amax(0) > 0).flatten().tolist())
    data = sae_examples(run, "s", example_activations(run, model), window_pool(run, model))
    silent = {j: sum(j not in set(a) for a in pool.active) for j in range(128)}
    busy = max((j for j in silent if silent[j] >= 2), key=lambda j: run.latents("s").column("count")[j].as_py())
    case = latent_case(data, int(busy), 3, 2, seed=0)
    top = run.top("s", int(busy)).column("window").to_pylist()
    intervals = run.intervals("s", int(busy)).column("window").to_pylist()
    held_out = [e.window for e in case.detection if e.label == 1]
    negatives = [e.window for e in case.detection if e.label == 0]
    assert case.shown[:2] == top[:2] and case.shown[2] in intervals and case.prompt.count("Example ") == 3
    assert len(held_out) == 2 and not set(held_out) & set(case.shown) and set(held_out) <= set(intervals)
    assert all(int(busy) not in set(pool.active[pool.window == w].iloc[0]) for w in negatives)
    assert [e.window for e in case.fuzzing] == held_out and sorted(e.label for e in case.fuzzing) == [0, 1]
    right = next(e for e in case.fuzzing if e.label == 1)
    assert right.text == marked_text(data.tokens[right.window], data.active[(int(busy), right.window)], 0)
    wrong = next(e for e in case.fuzzing if e.label == 0)
    assert wrong.text.count("<<") >= 1 and wrong.text != marked_text(data.tokens[wrong.window], set(), 0)
    assert latent_case(data, int(busy), 3, 2, seed=0) == case and case.calls == 1 + 2 * (4 + 2)


class Counting:
    """Wraps an asker, counting what it is asked; `fail_after` calls it stops being reachable."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.asked, self.fail_after = inner, 0, fail_after

    def describe(self):
        return self.inner.describe()

    def _down(self, n):
        self.asked += n
        return self.fail_after is not None and self.asked > self.fail_after

    def ask(self, prompts):
        if self._down(len(prompts)):
            return [Reply(None, "timeout or connection error (refused)", failed=True) for _ in prompts]
        return self.inner.ask(prompts)

    def judge(self, items):
        if self._down(len(items)):
            return [Judgement(None, "timeout or connection error (refused)", failed=True) for _ in items]
        return self.inner.judge(items)


REAL_ASKERS = explain_module.askers


def counting(monkeypatch, fail_after=None):
    """The explainer and scorers of every explain call, counted (two latents per chunk)."""
    made = []

    def askers(cfg, model=None):
        real = REAL_ASKERS(cfg, model)
        made.append(explain_module.Askers(*(Counting(a, fail_after) for a in (real.explainer, real.detection,
                                                                               real.fuzzing))))
        return made[-1]

    monkeypatch.setattr(explain_module, "askers", askers)
    monkeypatch.setattr(explain_module, "EXPLAIN_CHUNK", 2)
    return made


def asked(made) -> int:
    return sum(a.asked for ask in made for a in (ask.explainer, ask.detection, ask.fuzzing))


def test_explain_resumes_and_caps(latents, tiny_models, monkeypatch, tmp_path):
    import shutil

    run, saes = latents
    model = tiny_models["llama"]
    made = counting(monkeypatch)
    cfg = ExplainConfig(max_latents=5, explainer_model=model.name, **FEW)
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    full = explain_latents(copy, model, cfg, saes)
    assert full.wanted == full.done == full.explained == 5
    assert full.calls == asked(made) <= 5 * (1 + 2 * (4 + 2))  # an empty explanation is not scored
    table = pq.read_table(copy / "explanations.parquet").to_pandas()
    assert len(table) == 5 and set(table.latent) == set(explain_module.chosen_latents(run, "s", cfg))
    assert {"score", "detection_accuracy", "fuzzing_auroc", "baseline", "baseline_score"} <= set(table.columns)
    assert (table.n_activating == 2).all() and (table.n_non_activating <= 2).all()  # dense ones lack negatives
    assert (table.explainer == f"local: {model.name}").all()
    latents_table = actlab.open_run(copy).latents("s").to_pandas().set_index("latent")  # joined for the browser
    assert latents_table.loc[table.latent, "explanation"].tolist() == table.explanation.tolist()
    again = explain_latents(copy, model, cfg, saes)  # a rerun asks nothing
    assert again.explained == 0 and again.done == 5 and asked(made) == full.calls
    # capped after two latents, then resumed: the uninterrupted result
    capped_copy = tmp_path / "capped"
    shutil.copytree(run.path, capped_copy)
    capped = explain_latents(capped_copy, model, dataclasses.replace(cfg, max_calls=2 * 13 + 12), saes)
    assert 2 <= capped.done < 5 and capped.calls <= 38 and capped.stopped == "--max-calls 38 reached"
    rest = explain_latents(capped_copy, model, cfg, saes)
    assert rest.explained == 5 - capped.done and rest.done == 5
    import pandas.testing

    pandas.testing.assert_frame_equal(pq.read_table(capped_copy / "explanations.parquet").to_pandas(),
                                      pq.read_table(copy / "explanations.parquet").to_pandas())


def test_an_unreachable_explainer_loses_nothing(latents, tiny_models, monkeypatch, tmp_path):
    import shutil

    run, saes = latents
    model = tiny_models["llama"]
    counting(monkeypatch, fail_after=2 * 13 + 1)  # answers for two latents, then goes away
    cfg = ExplainConfig(max_latents=4, explainer_model=model.name, **FEW)
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    with pytest.raises(ActlabError, match="could not be asked .*the 2 latents explained so far are saved"):
        explain_latents(copy, model, cfg, saes)
    assert len(pq.read_table(copy / "explanations.parquet")) == 2
    counting(monkeypatch)
    assert explain_latents(copy, model, cfg, saes).done == 4


def test_server_patience_reaches_explainer_and_scorers_and_leaves_the_key():
    server = dict(explainer="openai", explainer_model="m", explainer_url="http://h/v1", explainer_logprobs=False)
    patient = explain_module.askers(ExplainConfig(**server, explainer_timeout=300, explainer_concurrency=2))
    for asker in (patient.explainer, patient.detection, patient.fuzzing):
        assert (asker.timeout, asker.concurrency) == (300, 2)
    assert not patient.detection.logprobs and not patient.fuzzing.logprobs
    hasty = explain_module.askers(ExplainConfig(**server))
    assert (hasty.explainer.timeout, hasty.detection.concurrency) == (30, 8)
    assert explain_module.explain_key(patient, ExplainConfig()) == explain_module.explain_key(hasty, ExplainConfig())


def test_the_default_model_explains(latents, default_model, tmp_path):
    import shutil

    run, saes = latents
    shutil.copytree(run.path, tmp_path / "run")
    result = explain_latents(tmp_path / "run", default_model, ExplainConfig(max_latents=2, **FEW), saes)
    table = result.table.to_pandas()
    assert result.done == 2 and (table.explanation.str.len() > 0).all() and result.prompt_tokens > 0
    assert result.completion_tokens > 0 and table.explainer.iloc[0] == f"local: {default_model.name}"
    assert table.n_unscored.max() < 12  # the 135M model mostly puts >= 5% on a number
