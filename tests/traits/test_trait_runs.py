"""Trait runs: resumable generation, judging with recorded reasons, vectors
per layer against numpy on the stored activations."""

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actlab import ActlabError
from actlab.judges import Judgement
from actlab.traits import GenerationConfig, TraitRun, VectorsConfig, generate_trait_run, judge_run, vectors_run
from actlab.traits.definitions import parse_trait
from actlab.traits.judges import keep_answers
from actlab.traits.vectors import split_pairs
from actlab.runs import RunControl

TRAIT = parse_trait({"name": "toy", "instruction": [{"pos": "Be happy.", "neg": "Be sad."},
                                                     {"pos": "Smile a lot.", "neg": "Frown a lot."}],
                     "questions": [f"Question number {i}?" for i in range(6)]})
CFG = GenerationConfig(max_new_tokens=5, temperature=0.8, seed=2)


class ByPolarity:
    """pos scores 80, neg 20; the first neg answer gets no score."""

    def __init__(self, polarity):
        self.polarity = polarity

    def judge(self, items):
        out = [Judgement(80.0 if p == "pos" else 20.0) for p in self.polarity]
        out[self.polarity.index("neg")] = Judgement(None, "judge timed out")
        return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("trait") / "run"
    return generate_trait_run(tiny_models["llama"], TRAIT, out, layers=[0, 2], cfg=CFG, control=RunControl(shard_size=5, progress=False))


def test_generation_resumes_to_the_same_run(run, tiny_models, tmp_path):
    answers = TraitRun.open(run).answers()
    assert answers.num_rows == 24 and answers.column("row").to_pylist() == list(range(24))
    assert answers.column("polarity").to_pylist()[:2] == ["pos", "neg"]
    acts = TraitRun.open(run).activations("response_mean")
    assert set(acts) == {0, 2} and acts[0].shape == (24, 64)
    # the shards open in DuckDB: one row per answer, pooling and layer
    import duckdb

    rows = duckdb.sql(f"select row, activation from '{run}/acts-*.parquet' where pooling = 'response_mean' "
                      "and layer = 2 order by row").fetchall()
    assert [r[0] for r in rows] == list(range(24))
    assert np.allclose(np.array([r[1] for r in rows], dtype=np.float32), acts[2])
    # interrupt: drop the last two shards, resume
    copy = tmp_path / "copy"
    generate_trait_run(tiny_models["llama"], TRAIT, copy, layers=[0, 2], cfg=CFG, control=RunControl(shard_size=5, progress=False))
    for name in ("answers-00003.parquet", "answers-00004.parquet", "acts-00004.parquet"):
        (copy / name).unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["complete"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    generate_trait_run(tiny_models["llama"], TRAIT, copy, layers=[0, 2], cfg=CFG, control=RunControl(shard_size=5, progress=False))
    assert TraitRun.open(copy).answers().column("answer").to_pylist() == answers.column("answer").to_pylist()
    assert np.array_equal(TraitRun.open(copy).activations("prompt_last")[2], TraitRun.open(run).activations("prompt_last")[2])
    with pytest.raises(ActlabError, match="other settings"):
        generate_trait_run(tiny_models["llama"], TRAIT, copy, layers=[1], cfg=CFG, control=RunControl(shard_size=5, progress=False))


def test_trait_generation_is_a_generation_run_of_its_prompts(run, tiny_models):
    """The trait's prompts, each with its own instruction as the system message, answered by one
    actlab.generate call equal the run's shards of 5; the manifest records the model as every kind does."""
    from actlab import generate, render_prompt
    from actlab.runs.manifest import model_settings

    model = tiny_models["llama"]
    prompts = TRAIT.prompts()
    alone = generate(model, [render_prompt(model.tokenizer, p.user, p.system) for p in prompts], cfg=CFG)
    answers = TraitRun.open(run).answers()
    assert answers.column("answer").to_pylist() == alone.answers
    assert answers.column("system").to_pylist() == [p.system for p in prompts]
    assert answers.column_names[:5] == ["row", "polarity", "pair", "system", "question"]
    settings = TraitRun.open(run).settings
    assert settings["model"] == model_settings(model) and settings["trait"]["name"] == TRAIT.name
    assert settings["layers"] == [0, 2] and settings["input"] == {"n_texts": 24,
                                                                  "fields": ["pair", "polarity", "question", "system"]}


def test_trait_generation_captures_every_block_by_default(tiny_models, tmp_path):
    run = TraitRun.open(generate_trait_run(tiny_models["llama"], TRAIT, tmp_path / "run", cfg=CFG, control=RunControl(progress=False)))
    assert run.settings["layers"] == [0, 1, 2] and set(run.activations("prompt_mean")) == {0, 1, 2}


def test_judge_and_vectors(run):
    polarity = TraitRun.open(run).answers().column("polarity").to_pylist()
    scores = judge_run(run, ByPolarity(polarity))
    assert scores.column("kept").to_pylist().count(False) == 1
    assert scores.column("decision").to_pylist()[1] == "no score: judge timed out"
    recorded = pq.read_schema(run / "scores.parquet").metadata
    assert recorded[b"actlab.judge"] == b"ByPolarity" and recorded[b"actlab.keep"] == b"pos score >= 50, neg score < 50"
    evaluation = vectors_run(run, VectorsConfig(seed=1)).to_pylist()
    assert {(r["layer"], r["method"]) for r in evaluation} == {(l, m) for l in (0, 2)
                                                               for m in ("mean_diff", "probe", "pca_diff")}
    # mean_diff against numpy on the stored activations, kept rows, train pairs
    answers = TraitRun.open(run).answers()
    keep = pq.read_table(run / "scores.parquet").column("kept").to_numpy(zero_copy_only=False)
    x = TraitRun.open(run).activations("response_mean")[2][keep]
    pol = np.asarray(polarity)[keep]
    train, _ = split_pairs(answers.column("pair").to_numpy()[keep], 0.2, 1)
    expected = x[train & (pol == "pos")].mean(0) - x[train & (pol == "neg")].mean(0)
    assert np.allclose(TraitRun.open(run).vectors()[2].numpy(), expected, rtol=1e-5, atol=1e-6)
    meta = json.loads((run / "vectors" / "metadata.json").read_text())
    assert meta["n_kept_pos"] == 12 and meta["n_kept_neg"] == 11 and "hidden_states[L + 1]" in meta["layers"]


def test_not_a_trait_run(tmp_path):
    with pytest.raises(ActlabError, match="not a trait run"):
        TraitRun.open(tmp_path).answers()


def test_steering_layer_prefers_the_middle_of_the_separating_layers(run, tmp_path):
    import shutil

    import pyarrow as pa

    from actlab.traits import steering_layer

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    rows = [{"layer": 0, "method": "mean_diff", "auroc": 0.95, "cohens_d": 1.0},
            {"layer": 2, "method": "mean_diff", "auroc": 0.85, "cohens_d": 5.0}]
    pq.write_table(pa.Table.from_pylist(rows), copy / "evaluation.parquet")
    assert steering_layer(copy) == 0  # layer 2 separates too poorly
    rows[1]["auroc"] = 0.99
    pq.write_table(pa.Table.from_pylist(rows), copy / "evaluation.parquet")
    assert steering_layer(copy) == 0  # both separate; equally far from the middle (1): the earlier one


@dataclass
class CountingJudge:
    """Scores by answer length; records what it is asked and raises (an
    interruption) once `_stop_after` answers are scored. Fields with a leading
    underscore are state, not settings: they leave the fingerprint alone."""

    threshold: float = 50.0
    _stop_after: int | None = None
    _asked: list = field(default_factory=list)

    def judge(self, items):
        out = []
        for question, answer in items:
            if self._stop_after is not None and len(self._asked) >= self._stop_after:
                raise KeyboardInterrupt
            self._asked.append(answer)
            out.append(Judgement(float(len(answer) % 100)))
        return out


def test_judging_resumes_and_reuses_saved_judgements(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    clean = judge_run(copy, CountingJudge(), chunk_size=5)
    shutil.rmtree(copy / "judgements")
    with pytest.raises(KeyboardInterrupt):
        judge_run(copy, CountingJudge(_stop_after=12), chunk_size=5)  # chunks 0 and 1 saved, 2 lost
    resumed_judge = CountingJudge()
    resumed = judge_run(copy, resumed_judge, chunk_size=5)
    assert len(resumed_judge._asked) == 24 - 10 and resumed.column("score").equals(clean.column("score"))
    stricter = CountingJudge()  # new thresholds: no judge call, new decisions
    table = judge_run(copy, stricter, VectorsConfig(pos_min=90, neg_max=10), chunk_size=5)
    assert stricter._asked == [] and table.column("kept").to_pylist() != clean.column("kept").to_pylist()
    other = CountingJudge(threshold=60)  # other settings: judged afresh
    judge_run(copy, other, chunk_size=5)
    assert len(other._asked) == 24
    # a saved chunk whose answers no longer match is judged again
    from actlab.judges import judge_fingerprint

    chunk = copy / "judgements" / judge_fingerprint(other) / "chunk-00001.parquet"
    saved = pq.read_table(chunk)
    pq.write_table(saved.set_column(0, "answer_sha256", pa.array(["0" * 16] * saved.num_rows)), chunk)
    again = CountingJudge(threshold=60)
    judge_run(copy, again, chunk_size=5)
    assert len(again._asked) == 5


def test_judge_fingerprints():
    from actlab.judges import judge_fingerprint
    from actlab.judges.openai import OpenAIJudge
    from actlab.judges.rules import KeywordJudge

    prompt = "Q: {question} A: {answer}"
    assert judge_fingerprint(OpenAIJudge(prompt, "m", base_url="http://h/v1", api_key="sk-1")) == \
        judge_fingerprint(OpenAIJudge(prompt, "m", base_url="http://h/v1", api_key="sk-2"))  # the key is no setting
    patient = OpenAIJudge(prompt, "m", base_url="http://h/v1", timeout=600, concurrency=1, retries=0, backoff=9)
    assert judge_fingerprint(patient) == judge_fingerprint(OpenAIJudge(prompt, "m", base_url="http://h/v1"))
    assert judge_fingerprint(OpenAIJudge(prompt, "m", base_url="http://h/v1")) != judge_fingerprint(
        OpenAIJudge(prompt + "!", "m", base_url="http://h/v1"))
    assert judge_fingerprint(KeywordJudge(["a"])) != judge_fingerprint(KeywordJudge(["b"]))
    assert judge_fingerprint(ByPolarity(["pos"])) is None  # not a dataclass: never reused


def test_trait_run_object(run):
    """open_run gives a TraitRun whose tables are the shards' own, read here with pyarrow alone."""
    import actlab

    trait_run = actlab.open_run(run)
    assert isinstance(trait_run, actlab.TraitRun) and trait_run.trait.name == "toy"
    shards = sorted(run.glob("answers-*.parquet"))
    assert trait_run.answers().equals(pa.concat_tables(pq.read_table(p) for p in shards))
    acts = pa.concat_tables(pq.read_table(p) for p in sorted(run.glob("acts-*.parquet"))).to_pandas()
    chosen = acts[(acts["pooling"] == "prompt_last") & (acts["layer"] == 2)].sort_values("row")
    assert np.array_equal(trait_run.activations("prompt_last")[2], np.stack(chosen["activation"].to_numpy()))
    with pytest.raises(ActlabError, match="not 'median'"):
        trait_run.activations("median")
    frame = trait_run.to_pandas()
    assert list(frame["row"]) == list(range(24)) and "<b>TraitRun</b>" in trait_run._repr_html_()
    assert trait_run.to_polars().height == 24


def test_judge_config_sets_how_patiently_a_server_is_asked():
    from actlab.judges.openai import OpenAIJudge
    from actlab.traits import JudgeConfig

    trait = parse_trait({"name": "t", "eval_prompt": "Q: {question} A: {answer}", "instruction": [
        {"pos": "a", "neg": "b"}], "questions": ["q"], "judge": {"kind": "keyword", "keywords": ["x"]}})
    judge = JudgeConfig(judge="openai", judge_model="m", judge_url="http://h/v1", judge_timeout=300,
                        judge_concurrency=2, judge_logprobs=False).make(trait)
    assert isinstance(judge, OpenAIJudge) and (judge.timeout, judge.concurrency, judge.logprobs) == (300, 2, False)
    assert JudgeConfig(judge="openai", judge_model="m").make(trait).timeout == OpenAIJudge.timeout == 30
    for cfg, message in ((JudgeConfig(judge_timeout=60), "--judge-timeout is for --judge openai, not --judge keyword"),
                         (JudgeConfig(judge_logprobs=False), "--no-judge-logprobs is for --judge openai"),
                         (JudgeConfig(judge="openai", judge_model="m", judge_concurrency=0),
                          "--judge-concurrency must be at least 1, not 0"),
                         (JudgeConfig(judge="openai", judge_model="m", judge_timeout=-1),
                          "--judge-timeout must be more than 0 seconds")):
        with pytest.raises(ActlabError, match=message) as caught:
            cfg.make(trait)
        assert caught.value.param == message.split()[0][2:].replace("-", "_").removeprefix("no_")


def test_keep_answers_never_counts_none_as_negative():
    reasons = keep_answers(["pos", "neg", "neg", "pos", "neg"],
                           [Judgement(80), Judgement(10), Judgement(None, "timeout"), Judgement(20), Judgement(70)])
    assert reasons[:2] == ["kept", "kept"]
    assert reasons[2] == "no score: timeout"
    assert reasons[3] == "pos score 20 < 50" and reasons[4] == "neg score 70 >= 50"
