"""The run layer's shared pieces: the run-kind registry, open_run's dispatch,
the shard plan, the atomic writer and datasets-style fingerprints."""

import json

import pytest

import actlab
from actlab import ActlabError, ExtractConfig
from actlab.runs import RUN_KINDS, RunKind, ShardPlan, register_run_kind, run_shards
from actlab.runs.atomic import atomic_path, write_json_atomic
from actlab.runs.fingerprint import fingerprint, step_fingerprint
from conftest import TEXTS


def test_every_kind_is_registered_once():
    assert set(RUN_KINDS) >= {"actlab.activations", "actlab.features", "actlab.traits"}
    with pytest.raises(ValueError, match="already registered"):
        register_run_kind(RunKind("actlab.traits", "a trait run", "traits generate", actlab.TraitRun))
    with pytest.raises(ValueError, match="TraitRun.FORMAT is 'actlab.traits', not the kind's 'other'"):
        register_run_kind(RunKind("other", "another run", "other", actlab.TraitRun))


def test_every_kind_opens_one_way_and_gives_its_table(tmp_path, tiny_models):
    """Kind.open(path) and actlab.open_run(path), never Kind(path) (one line saying so); each kind's
    reader names its format; to_pandas / to_polars are its to_arrow table's."""
    for name, kind in RUN_KINDS.items():
        assert issubclass(kind.reader, actlab.runs.Run) and kind.reader.FORMAT == name, name
        with pytest.raises(TypeError) as caught:
            kind.reader(tmp_path)
        if kind.reader.__init__ is actlab.runs.Run.__init__:  # not a result dataclass (ActivationRun, FeatureRun)
            assert str(caught.value) == f"open a run with {kind.reader.__name__}.open(path) or actlab.open_run(path)"
    model = tiny_models["llama"]
    path = actlab.generate_run(model, TEXTS[:3], tmp_path / "g", actlab.GenerationConfig(max_new_tokens=2))
    run = actlab.GenerationRun.open(path)
    assert type(actlab.open_run(path)) is actlab.GenerationRun and run.to_arrow().equals(run.answers())
    assert run.to_pandas().answer.tolist() == run.to_polars()["answer"].to_list() == \
        run.answers().column("answer").to_pylist()
    with pytest.raises(ActlabError, match="is a generation run, not a trait run"):
        actlab.TraitRun.open(path)


def test_open_run_dispatches_on_the_manifest(tmp_path, tiny_models):
    model = tiny_models["llama"]
    records = actlab.Records.of(TEXTS)
    path = actlab.extract_run(model, records, tmp_path / "a", ExtractConfig(["blocks.1.hook_resid_post"]))
    run = actlab.open_run(path)
    assert isinstance(run, actlab.ActivationRun) and run.path == path and run.settings["hooks"] == \
        ["blocks.1.hook_resid_post"]
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = "actlab.nonsense"
    write_json_atomic(path / "manifest.json", manifest)
    with pytest.raises(ActlabError, match="unknown run kind 'actlab.nonsense'"):
        actlab.open_run(path)
    with pytest.raises(ActlabError, match="not an actlab run"):
        actlab.open_run(tmp_path / "nothing")


def test_run_model_is_weight_checked(tmp_path, tiny_models, tiny_model_dir):
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    path = actlab.extract_run(model, actlab.Records.of(TEXTS[:3]), tmp_path / "a",
                              ExtractConfig(["blocks.1.hook_resid_post"]))
    run = actlab.open_run(path)
    assert run.model().weight_hash == model.weight_hash
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["settings"]["model"]["weights_sha256"] = "0" * 64
    write_json_atomic(path / "manifest.json", manifest)
    with pytest.raises(ActlabError, match="other weights"):
        actlab.open_run(path).model()


def test_a_run_of_another_kind_is_refused(tmp_path, tiny_models):
    model = tiny_models["llama"]
    records = actlab.Records.of(TEXTS)
    path = actlab.features_run(model, records, {"s": __import__("conftest").random_sae("blocks.1.hook_resid_post")},
                               tmp_path / "f")
    with pytest.raises(ActlabError, match="holds an actlab run \\(features\\), not an actlab run \\(activations\\)"):
        actlab.extract_run(model, records, path, ExtractConfig(["blocks.1.hook_resid_post"]))


def test_shard_plan_and_loop(tmp_path):
    plan = ShardPlan(10, 4, marker="answers")
    assert plan.n_shards == 3 and [plan.bounds(i) for i in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert plan.names() == ["answers-00000.parquet", "answers-00001.parquet", "answers-00002.parquet"]
    (tmp_path / "answers-00001.parquet").write_bytes(b"")
    assert plan.todo(tmp_path) == [0, 2] and plan.rows_left(tmp_path) == 6
    assert run_shards(tmp_path, plan, lambda i, lo, hi: (i, lo, hi)) == [(0, 0, 4), (2, 8, 10)]
    assert ShardPlan(0, 4).n_shards == 1  # an empty input still makes one (empty) shard


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed while writing")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_fingerprints_key_only_what_differs_from_defaults():
    defaults = {"a": 1, "b": None}
    assert step_fingerprint(None, "judge", 1, {"a": 1, "b": None}, defaults) == \
        step_fingerprint(None, "judge", 1, {}, defaults)  # adding a defaulted argument keeps old keys
    assert step_fingerprint(None, "judge", 1, {"a": 2}, defaults) != step_fingerprint(None, "judge", 1, {}, defaults)
    assert step_fingerprint("prev", "judge", 1, {}) != step_fingerprint(None, "judge", 1, {})
    assert step_fingerprint(None, "judge", 2, {}) != step_fingerprint(None, "judge", 1, {})
    assert fingerprint("q", "a") != fingerprint("qa", "") and len(fingerprint("x")) == 16


def test_a_run_from_a_newer_actlab_is_refused(tmp_path, tiny_models):
    model = tiny_models["llama"]
    path = actlab.extract_run(model, actlab.Records.of(TEXTS), tmp_path / "a",
                              ExtractConfig(["blocks.1.hook_resid_post"]))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    write_json_atomic(path / "manifest.json", {**manifest, "format_version": 7, "actlab_version": "9.0"})
    for attempt in (lambda: actlab.open_run(path),
                    lambda: actlab.extract_run(model, actlab.Records.of(TEXTS), path,
                                               ExtractConfig(["blocks.1.hook_resid_post"]))):
        with pytest.raises(ActlabError, match=r"written by a newer actlab \(9.0, run format 7; this actlab .* reads "
                                              r"format 1 and older\); upgrade actlab"):
            attempt()


def test_an_older_run_resumes_after_a_setting_is_added(tmp_path):
    """A kind that added settings after its first runs: an older manifest
    without them resumes when the new values are the defaults (which are then
    recorded), is refused otherwise, and keeps its fingerprint."""
    from actlab.runs.manifest import settings_fingerprint, start_run

    class GrownRun(actlab.runs.Run):
        FORMAT = "test.grown"

    kind = register_run_kind(RunKind("test.grown", "a grown run", "grow", GrownRun,
                                     added_settings={"new": 3, "engine": {"fast": False}}))
    old = {"hooks": ["h"], "engine": {"batch": 4}}
    out = tmp_path / "run"
    out.mkdir()
    write_json_atomic(out / "manifest.json", {"format": "test.grown", "settings": old, "complete": False,
                                              "fingerprint": fingerprint("test.grown", old)})
    now = {"hooks": ["h"], "engine": {"batch": 4, "fast": False}, "new": 3}
    assert settings_fingerprint(kind, now) == fingerprint("test.grown", old)
    with pytest.raises(ActlabError, match=r"other settings \(new\)"):
        start_run(out, "test.grown", {**now, "new": 4})
    with pytest.raises(ActlabError, match=r"other settings \(engine\)"):
        start_run(out, "test.grown", {**now, "engine": {"batch": 4, "fast": True}})
    manifest = start_run(out, "test.grown", now)
    assert manifest["settings"] == now == json.loads((out / "manifest.json").read_text())["settings"]
    RUN_KINDS.pop("test.grown")
