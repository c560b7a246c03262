"""Runs on disk: schema readable by pandas/polars/DuckDB/datasets, open_run
round trip, resume after interruption."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import actlab
from actlab import ActlabError, ExtractConfig
from actlab.activations import run as activation_runs
from actlab.activations import extract_run
from actlab.runs import shard_name
from actlab.inputs import Records

from conftest import TEXTS, Recorder, assert_tables_close, rel_error
from actlab.runs import RunControl

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


def records(n=40):
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(n)]
    return Records(texts, {"id": [f"t{i}" for i in range(n)], "category": [i % 3 for i in range(n)]},
                   list(range(1, n + 1)))


def test_pooled_run_round_trip(tmp_path, tiny_models):
    model = tiny_models["llama"]
    recs = records()
    run = extract_run(model, recs, tmp_path / "run", ExtractConfig(HOOKS, "mean"), control=RunControl(shard_size=16))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["complete"] and manifest["shards"] == [f"shard-0000{i}.parquet" for i in range(3)]
    assert manifest["settings"]["model"]["weights_sha256"] == model.weight_hash
    acts = actlab.open_run(run)
    direct = model.extract(recs.texts, HOOKS, pooling="mean", progress=False)
    for hook in HOOKS:
        assert rel_error(acts[hook], direct[hook]) < 1e-5
    assert acts.metadata["fields"]["id"] == recs.fields["id"]


def test_shards_open_in_dataframe_libraries(tmp_path, tiny_models):
    import datasets
    import duckdb
    import pandas as pd
    import polars as pl

    run = extract_run(tiny_models["llama"], records(), tmp_path / "run", ExtractConfig(HOOKS), control=RunControl(shard_size=16))
    acts = actlab.open_run(run)
    pattern = str(run / "*.parquet")
    frame = pl.read_parquet(pattern)
    assert frame.height == 40 and frame.schema[HOOKS[0]] == pl.Array(pl.Float32, 64)
    assert np.array_equal(frame[HOOKS[1]].to_numpy(), acts[HOOKS[1]].numpy())
    pdf = pd.concat(pd.read_parquet(run / name) for name in sorted(os.listdir(run)) if name.endswith(".parquet"))
    assert list(pdf["text_id"]) == list(range(40))
    (count,), = duckdb.sql(f"select count(*) from '{pattern}' where category = 1").fetchall()
    assert count == sum(1 for i in range(40) if i % 3 == 1)
    ds = datasets.load_dataset("parquet", data_files=pattern, split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 40 and len(ds[0][HOOKS[0]]) == 64


def test_per_token_run(tmp_path, tiny_models):
    model = tiny_models["gpt2"]
    recs = records(10)
    run = extract_run(model, recs, tmp_path / "run", ExtractConfig(HOOKS, "all"), control=RunControl(shard_size=4))
    table = pq.read_table(run / "shard-00000.parquet")
    assert table.column_names[:4] == ["text_id", "position", "token_id", "token"]
    acts = actlab.open_run(run)
    direct = model.extract(recs.texts, HOOKS, pooling="all", progress=False)
    assert torch.equal(acts.offsets, direct.offsets) and acts.tokens == direct.tokens
    assert rel_error(acts[HOOKS[0]], direct[HOOKS[0]]) < 1e-5


def test_interrupted_run_resumes_to_identical_result(tmp_path, tiny_models, monkeypatch):
    model = tiny_models["llama"]
    recs = records()
    clean = extract_run(model, recs, tmp_path / "clean", ExtractConfig(HOOKS), control=RunControl(shard_size=8))
    real_write = activation_runs.write_parquet_atomic
    written = []

    def dying_write(path, table):
        if len(written) == 2:
            raise KeyboardInterrupt  # as if killed while writing the third shard
        written.append(path)
        real_write(path, table)

    monkeypatch.setattr(activation_runs, "write_parquet_atomic", dying_write)
    with pytest.raises(KeyboardInterrupt):
        extract_run(model, recs, tmp_path / "resumed", ExtractConfig(HOOKS), control=RunControl(shard_size=8))
    with pytest.raises(ActlabError, match="incomplete"):
        actlab.open_run(tmp_path / "resumed")
    monkeypatch.setattr(activation_runs, "write_parquet_atomic", real_write)
    resumed = extract_run(model, recs, tmp_path / "resumed", ExtractConfig(HOOKS), control=RunControl(shard_size=8))
    for i in range(5):
        name = shard_name(i)
        assert pq.read_table(resumed / name).equals(pq.read_table(clean / name))


def test_other_settings_refuse_to_mix(tmp_path, tiny_models):
    model = tiny_models["llama"]
    extract_run(model, records(8), tmp_path / "run", ExtractConfig(HOOKS))
    with pytest.raises(ActlabError, match=r"other settings \(pooling\).*--overwrite"):
        extract_run(model, records(8), tmp_path / "run", ExtractConfig(HOOKS, "mean"))
    # overwrite removes what later stages derived from the old run; files that are not actlab's stay
    for folder in ("analysis", "vectors", "figures"):
        (tmp_path / "run" / folder).mkdir()
        (tmp_path / "run" / folder / "old.parquet").write_bytes(b"x")
    (tmp_path / "run" / "report.html").write_text("old")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    extract_run(model, records(8), tmp_path / "run", ExtractConfig(HOOKS, "mean"), control=RunControl(overwrite=True))
    assert actlab.open_run(tmp_path / "run").pooling == "mean"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["manifest.json", "notes.txt", "shard-00000.parquet"]


def test_killed_cli_run_resumes(tmp_path):
    """SIGKILL the real CLI mid-run on the default model, rerun, compare,
    with the default matrix path (auto): the resumed run takes the paths the
    run recorded when it started. Each session's paths and threads are in
    the failure message (a fresh-clone run once had a resumed run 3.1e-5 of
    block 20's largest magnitude from a clean one, docs/extraction.md)."""
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(48)) + "\n")

    def command(out):
        return [sys.executable, "-m", "actlab", "extract", "--input", str(texts), "--out", str(out),
                "--hook", "blocks.20.hook_resid_post", "--shard-size", "6", "--device", "cpu"]

    proc = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "shard-00001.parquet").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert not manifest["complete"]
    assert not (tmp_path / "killed" / "shard-00007.parquet").exists()
    subprocess.run(command(tmp_path / "killed"), check=True, capture_output=True)
    subprocess.run(command(tmp_path / "clean"), check=True, capture_output=True)
    runs = {name: json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("killed", "clean")}
    seen = {name: (m.get("matrix_paths"), m["timings"]) for name, m in runs.items()}
    assert runs["killed"]["matrix_paths"], seen
    for i in range(8):
        name = shard_name(i)
        assert_tables_close(pq.read_table(tmp_path / "killed" / name), pq.read_table(tmp_path / "clean" / name),
                            label=f"{name} {seen}")


def test_a_resumed_run_keeps_the_matrix_paths_it_started_with(tmp_path, tokenizer):
    """The manifest records the CPU matrix paths of the run's first process;
    a resumed run takes them, whatever its own model chose (here: oneDNN
    for every layer where the run started all-torch), and its rows agree."""
    from actlab.engine.linears import choose
    from conftest import build_tiny

    model = build_tiny("llama", tokenizer)
    model.matmul = choose(model.hf_model, "torch")
    cfg = ExtractConfig(HOOKS, "mean")
    run = extract_run(model, records(), tmp_path / "run", cfg, control=RunControl(shard_size=16))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["matrix_paths"] == model.matrix_paths and set(model.matrix_paths.values()) == {"torch"}
    assert manifest["timings"]["session_0"]["threads"] == torch.get_num_threads()
    clean = pq.read_table(run / shard_name(1))
    (run / shard_name(1)).unlink()
    (run / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    model.matmul = choose(model.hf_model, "onednn")
    assert set(model.matrix_paths.values()) == {"onednn"}
    extract_run(model, records(), run, cfg, control=RunControl(shard_size=16))
    assert model.matrix_paths == manifest["matrix_paths"]
    assert_tables_close(pq.read_table(run / shard_name(1)), clean)
    assert json.loads((run / "manifest.json").read_text())["matrix_paths"] == manifest["matrix_paths"]


def test_a_run_reports_texts_and_shards(tmp_path, tiny_models):
    """A resumed run reports only what is left: its texts and its shards."""
    cfg = ExtractConfig(HOOKS, "mean")
    run = extract_run(tiny_models["llama"], records(), tmp_path / "run", cfg, control=RunControl(shard_size=16))
    (run / shard_name(1)).unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    progress = Recorder()
    extract_run(tiny_models["llama"], records(), run, cfg, control=RunControl(shard_size=16, progress=progress))
    assert progress.started == (16, 1) and progress.texts == 16 and progress.shards == 1


def test_runs_take_what_a_user_naturally_passes(tmp_path, tiny_models):
    """extract_run, features_run, latents_run and generate_run take a list of dicts (the issue's
    AttributeError and transformers ValueError) and a pandas table, with the result of Records."""
    import pandas as pd

    from conftest import random_sae

    model = tiny_models["llama"]
    rows = [{"id": f"t{i}", "text": text, "category": i % 2} for i, text in enumerate(TEXTS[:5])]
    expected = Records([r["text"] for r in rows], {"id": [r["id"] for r in rows],
                                                   "category": [r["category"] for r in rows]}, list(range(1, 6)))
    cfg = ExtractConfig(HOOKS, "mean")
    reference = actlab.open_run(extract_run(model, expected, tmp_path / "records", cfg))
    for name, given in (("dicts", rows), ("pandas", pd.DataFrame(rows))):
        run = actlab.open_run(extract_run(model, given, tmp_path / name, cfg))
        assert run.fields == reference.fields == {"id": expected.fields["id"], "category": [0, 1, 0, 1, 0]}
        assert all(rel_error(run[hook], reference[hook]) < 1e-6 for hook in HOOKS)
    sae = {"s": random_sae(HOOKS[0], seed=1)}
    features = actlab.open_run(actlab.features_run(model, rows, sae, tmp_path / "features", ExtractConfig(pooling="mean")))
    assert features.fields["id"] == expected.fields["id"]
    latents = actlab.open_run(actlab.latents_run(model, rows, sae, tmp_path / "latents", actlab.LatentsConfig(context=8)))
    assert latents.manifest["settings"]["input"]["n_texts"] == 5
    answers = actlab.open_run(actlab.generate_run(model, rows[:2], tmp_path / "gen", actlab.GenerationConfig(
        max_new_tokens=2)))
    assert answers.manifest["n_rows"] == 2
    with pytest.raises(ActlabError, match="records must be a list of texts or of dicts.*not a str"):
        extract_run(model, "one text", tmp_path / "bad", cfg)
