"""Run folders in an object store (s3:// on a local S3-compatible server):
the same rows as a local run, resumable, atomic, opened by open_run, readable
by pyarrow and DuckDB, and a report written beside them."""

import json
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

import actlab
from actlab import ExtractConfig
from actlab.features import features_run
from actlab.runs import shard_name
from actlab.runs.atomic import atomic_path, write_json_atomic
from actlab.storage import StorePath, read_parquet, run_path
from conftest import TEXTS, random_sae, run_cli
from actlab.runs import RunControl

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


def records(n=24):
    return actlab.Records.of([f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(n)], category=[i % 3 for i in range(n)])


def test_run_path_reads_uris_and_paths(tmp_path):
    assert run_path("s3://bucket/runs/a") == StorePath("s3://bucket/runs/a")
    assert run_path(Path("s3://bucket/runs/a")) == StorePath("s3://bucket/runs/a")  # pathlib collapses '//'
    assert str(run_path("gs://bucket/x/") / "shard-00000.parquet") == "gs://bucket/x/shard-00000.parquet"
    assert run_path(f"file://{tmp_path}") == tmp_path
    assert run_path("runs/a") == Path("runs/a") and run_path("C:/runs/a") == Path("C:/runs/a")
    assert StorePath("s3://bucket/runs/a").parent.name == "runs"


def test_upload_is_atomic(s3_bucket):
    target = StorePath(f"{s3_bucket}/atomic/file.json")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    write_json_atomic(target, {"whole": True})
    assert json.loads(target.read_text()) == {"whole": True}


def test_extraction_run_in_s3_equals_local_and_resumes(tmp_path, tiny_models, s3_bucket):
    model, cfg, uri = tiny_models["llama"], ExtractConfig(HOOKS, "mean"), f"{s3_bucket}/extract"
    local = actlab.open_run(actlab.extract_run(model, records(), tmp_path / "local", cfg, control=RunControl(shard_size=8)))
    remote_path = actlab.extract_run(model, records(), uri, cfg, control=RunControl(shard_size=8))
    assert remote_path == StorePath(uri)
    remote = actlab.open_run(uri)
    assert remote.settings == local.settings
    for hook in HOOKS:
        assert torch.equal(remote[hook], local[hook])
    assert remote.fields == local.fields
    # interrupted: one shard's object gone, the manifest not yet complete; a rerun computes just that shard
    before = {name: read_parquet(remote_path / name) for name in remote.manifest["shards"]}
    (remote_path / shard_name(1)).unlink()
    manifest = json.loads((remote_path / "manifest.json").read_text())
    write_json_atomic(remote_path / "manifest.json", dict(manifest, complete=False))
    actlab.extract_run(model, records(), uri, cfg, control=RunControl(shard_size=8))
    for name, table in before.items():
        assert read_parquet(remote_path / name).equals(table), name
    assert len(json.loads((remote_path / "manifest.json").read_text())["timings"]) == 2
    # other tools read the shards where they are
    fs, path = pafs.FileSystem.from_uri(uri)
    import pyarrow.dataset as ds

    shards = [f"{path}/{name}" for name in remote.manifest["shards"]]
    assert ds.dataset(shards, filesystem=fs, format="parquet").count_rows() == 24


def test_features_run_and_report_in_s3(tmp_path, tiny_models, s3_bucket):
    model, uri = tiny_models["llama"], f"{s3_bucket}/features"
    saes = {"late": random_sae("blocks.2.hook_resid_post", seed=3)}
    local = features_run(model, records(), saes, tmp_path / "local", control=RunControl(shard_size=8))
    features_run(model, records(), saes, uri, control=RunControl(shard_size=8))
    remote = actlab.open_run(uri)
    for name in ("latent_stats.parquet", *(f"{p}-00002.parquet" for p in ("shard", "texts", "stats"))):
        assert read_parquet(StorePath(f"{uri}/{name}")).equals(read_parquet(local / name)), name
    assert torch.equal(remote.dense("late"), actlab.open_run(local).dense("late"))
    report = actlab.build_report(uri, use_model=False)
    assert report == StorePath(f"{uri}/report.html") and "<html" in report.read_text().lower()
    assert StorePath(f"{uri}/figures").glob("*.png")
    from actlab.pipelines import analyze_run

    tables = analyze_run(uri)
    written = {p.name for p in StorePath(f"{uri}/analysis").iterdir()}
    assert written == {f"{name}.parquet" for name, rows in tables.items() if rows} and written


def test_trait_stages_in_s3(tmp_path, tiny_models, s3_bucket):
    """Generate, judge and fit vectors with the run in s3://: the same vectors as a local run."""
    from actlab.traits import GenerationConfig
    from actlab.traits.definitions import parse_trait
    from actlab.judges import Judgement
    from actlab.traits import TraitRun, VectorsConfig, generate_trait_run, judge_run, vectors_run

    class ByPolarity:
        """pos answers score 80, neg 20 (answers are judged in run order, in one chunk here)."""

        def __init__(self, polarity):
            self.polarity = polarity

        def judge(self, items):
            return [Judgement(80.0 if p == "pos" else 20.0) for p in self.polarity]

    trait = parse_trait({"name": "toy", "instruction": [{"pos": "Be happy.", "neg": "Be sad."}],
                         "questions": [f"Question number {i}?" for i in range(6)]})
    runs = {}
    for name, where in (("local", tmp_path / "trait"), ("s3", f"{s3_bucket}/trait")):
        path = generate_trait_run(tiny_models["llama"], trait, where, layers=[0, 2], cfg=GenerationConfig(max_new_tokens=4), control=RunControl(shard_size=5))
        judge_run(path, ByPolarity(TraitRun.open(path).answers().column("polarity").to_pylist()))
        vectors_run(path, VectorsConfig(held_out=0.34))
        runs[name] = TraitRun.open(path)
    assert runs["s3"].answers().equals(runs["local"].answers())
    for layer, vector in runs["local"].vectors().items():
        assert torch.equal(runs["s3"].vectors()[layer], vector)
    assert runs["s3"].evaluation().equals(runs["local"].evaluation())


def test_cli_writes_to_s3(monkeypatch, capsys, tmp_path, tiny_model_dir, s3_bucket):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t}) for t in records(6).texts) + "\n")
    code, out, err = run_cli(monkeypatch, capsys, "extract", "--model", tiny_model_dir, "--input", texts,
                             "--hook", HOOKS[1], "--out", f"{s3_bucket}/cli", "--shard-size", 4)
    assert code == 0, err
    assert f"{s3_bucket}/cli" in out.replace("\n", "")
    assert actlab.open_run(f"{s3_bucket}/cli").manifest["n_rows"] == 6
    code, _, err = run_cli(monkeypatch, capsys, "extract", "--model", tiny_model_dir, "--input", texts,
                           "--hook", HOOKS[0], "--out", f"{s3_bucket}/cli")
    assert code == 2 and "other settings" in err and "Traceback" not in err
    code, _, err = run_cli(monkeypatch, capsys, "extract", "--model", tiny_model_dir, "--input", texts,
                           "--hook", HOOKS[0], "--out", f"{s3_bucket}/cli", "--overwrite")
    assert code == 0, err
    run = actlab.open_run(f"{s3_bucket}/cli")
    assert run.settings["hooks"] == [HOOKS[0]] and run.manifest["shards"] == ["shard-00000.parquet"]
    assert [p.name for p in StorePath(f"{s3_bucket}/cli").glob("shard-*")] == ["shard-00000.parquet"]


def test_inputs_in_s3(tmp_path, tiny_models, s3_bucket):
    """Inputs read from s3:// equal the same files read locally, whole or by row range,
    and the manifest records the object's sha256."""
    import pyarrow as pa

    from actlab.inputs import ParquetRecords, read_records
    from actlab.runs.atomic import write_bytes_atomic

    table = pa.table({"text": records(20).texts, "category": [i % 3 for i in range(20)]})
    pq_local, jsonl_local = tmp_path / "in.parquet", tmp_path / "in.jsonl"
    pq.write_table(table, pq_local, row_group_size=6)
    jsonl_local.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    write_bytes_atomic(StorePath(f"{s3_bucket}/inputs/in.parquet"), pq_local.read_bytes())
    write_bytes_atomic(StorePath(f"{s3_bucket}/inputs/in.jsonl"), jsonl_local.read_bytes())
    for name in ("in.parquet", "in.jsonl"):
        remote, local = read_records(f"{s3_bucket}/inputs/{name}"), read_records(tmp_path / name)
        assert (remote.texts, remote.fields) == (local.texts, local.fields)
        assert remote.source == f"{s3_bucket}/inputs/{name}"
    by_range = read_records(f"{s3_bucket}/inputs/in.parquet", by_row_range=True)
    assert isinstance(by_range, ParquetRecords) and by_range.location == f"{s3_bucket}/inputs/in.parquet"
    assert by_range.slice(4, 13).texts == table.column("text").to_pylist()[4:13]
    cfg = ExtractConfig(HOOKS, "mean")
    a = actlab.extract_run(tiny_models["llama"], by_range, tmp_path / "from-s3", cfg, control=RunControl(shard_size=8))
    b = actlab.extract_run(tiny_models["llama"], read_records(pq_local), tmp_path / "local", cfg, control=RunControl(shard_size=8))
    for i in range(3):
        assert pq.read_table(a / shard_name(i)).equals(pq.read_table(b / shard_name(i)))
    settings = (actlab.open_run(a).settings["input"], actlab.open_run(b).settings["input"])
    assert settings[0]["sha256"] == settings[1]["sha256"] and settings[0]["fields"] == ["category"]
    with pytest.raises(actlab.ActlabError, match="input file not found"):
        read_records(f"{s3_bucket}/inputs/missing.jsonl")


def test_storage_errors_are_one_line(monkeypatch, capsys, tmp_path, tiny_model_dir, s3_bucket):
    with pytest.raises(actlab.ActlabError, match="s3://no-such-bucket/run: .*not found; check the bucket"):
        actlab.extract_run(str(tiny_model_dir), records(4), "s3://no-such-bucket/run", ExtractConfig(HOOKS, "mean"))
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": "one"}) + "\n")
    code, _, err = run_cli(monkeypatch, capsys, "extract", "--model", tiny_model_dir, "--input", texts,
                           "--hook", HOOKS[0], "--out", "s3://no-such-bucket/run")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(actlab.ActlabError, match="is not an actlab run"):
        actlab.open_run(f"{s3_bucket}/nothing-here")
