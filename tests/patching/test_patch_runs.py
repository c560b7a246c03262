"""Patching runs (patching/run.py): the run equals exact_effects on the
same pairs, a killed run resumes to the same effects, mean_effects equals
pandas's group-by mean, the tables open in pandas, polars and DuckDB, the
CLI end to end, and bad input as one line with exit 2 and nothing written."""

import json

import numpy as np
import pytest

import actlab
from actlab import ActlabError, PatchConfig, patch_run
from actlab.patching import exact_effects, ioi_pairs, tokenize_pairs
from actlab.patching import run as patch_runs
from actlab.runs import RunControl

from conftest import assert_tables_close, dies_on_the_second_call, run_cli

CFG = PatchConfig(components=["resid_pre", "head"], layers=[0, 2], heads=[1, 3])


def test_run_equals_exact_effects_and_resumes_after_a_kill(tiny_models, tmp_path, monkeypatch):
    model = tiny_models["llama"]
    pairs = ioi_pairs(5)
    direct = exact_effects(model, tokenize_pairs(model.tokenizer, pairs), CFG)
    real = patch_runs.patch_effects

    monkeypatch.setattr(patch_runs, "patch_effects", dies_on_the_second_call(real))
    with pytest.raises(KeyboardInterrupt):
        patch_run(model, pairs, tmp_path / "p", CFG, control=RunControl(shard_size=2))
    assert sorted(p.name for p in (tmp_path / "p").glob("effects-*")) == ["effects-00000.parquet"]
    monkeypatch.setattr(patch_runs, "patch_effects", real)
    path = patch_run(model, pairs, tmp_path / "p", CFG, control=RunControl(shard_size=2))
    run = actlab.open_run(path)
    assert isinstance(run, actlab.PatchRun) and run.manifest["n_rows"] == 5
    assert_tables_close(run.effects(), direct, label="effects")
    frame = run.to_pandas()
    means = run.mean_effects().to_pandas()
    expected = frame.groupby(["method", "component", "layer", "position", "head"], dropna=False)[
        ["metric_patched", "normalized", "prob_answer", "kl"]].mean().reset_index()
    assert len(means) == len(expected) == 2 * 14 + 2 * 14 * 2 and (means.n_pairs == 5).all()
    merged = means.merge(expected, on=["method", "component", "layer", "position", "head"], suffixes=("", "_pd"))
    assert np.allclose(merged.normalized, merged.normalized_pd, rtol=1e-5)
    pairs_table = run.pairs().to_pylist()
    assert [p["id"] for p in pairs_table] == [f"ioi-{i}" for i in range(5)]
    assert len(pairs_table[0]["clean_tokens"]) == 14 and pairs_table[0]["answer_token"] == pairs.fields["answer"][0]
    import duckdb
    import polars

    assert polars.read_parquet(str(path / "effects-00000.parquet")).height == direct.num_rows * 2 // 5
    count = duckdb.sql(f"select count(*) from read_parquet('{path}/effects-*.parquet')").fetchall()[0][0]
    assert count == direct.num_rows


def test_cli_end_to_end(tiny_models, tiny_model_dir, tmp_path, monkeypatch, capsys):
    pairs = tmp_path / "pairs.jsonl"
    records = ioi_pairs(3)
    pairs.write_text("".join(json.dumps({"id": i, "clean": c, "corrupted": records.fields["corrupted"][k],
                                         "answer": records.fields["answer"][k],
                                         "wrong_answer": records.fields["wrong_answer"][k]}) + "\n"
                             for k, (i, c) in enumerate(zip(records.fields["id"], records.texts))))
    code, stdout, stderr = run_cli(monkeypatch, capsys, "patch", "--pairs", pairs, "--out", tmp_path / "p",
                                   "--model", tiny_model_dir, "--device", "cpu", "--components", "attn_out,mlp_out",
                                   "--positions", "-1,-2,9")
    assert code == 0, stderr
    assert "strongest mean effects over 3 pairs" in stdout and (tmp_path / "p" / "report.html").is_file()
    run = actlab.open_run(tmp_path / "p")
    expected = exact_effects(tiny_models["llama"], tokenize_pairs(tiny_models["llama"].tokenizer, records),
                             PatchConfig(components=["attn_out", "mlp_out"], positions=[-1, -2, 9]))
    assert_tables_close(run.effects(), expected, label="effects")
    assert set(run.effects().column("position").to_pylist()) == {13, 12, 9}


@pytest.mark.parametrize("args, message", [
    (["--pairs", "UNEQUAL"], "pair 'u': clean has"),
    (["--pairs", "EMPTY"], "holds no pairs"),
    (["--layers", "7"], "layer 7 is outside 0..2 for this model (--layers)"),
    (["--heads", "4", "--components", "head"], "head 4 is outside 0..3 for this model (--heads)"),
    (["--components", "embed"], "unknown patching component 'embed'; use resid_pre, resid_post, attn_out, mlp_out"),
    (["--positions", "20"], "position 20 is outside pair 'ioi-0''s 14 tokens (--positions)"),
    (["--method", "magic"], "unknown patching method 'magic'"),
])
def test_cli_bad_input_is_one_line(args, message, tiny_model_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "unequal.jsonl").write_text(json.dumps({"id": "u", "clean": "When Mary and John went home",
                                                        "corrupted": "When Mary went", "answer": " Mary",
                                                        "wrong_answer": " John"}) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    args = [a.replace("UNEQUAL", str(tmp_path / "unequal.jsonl")).replace("EMPTY", str(tmp_path / "empty.jsonl"))
            for a in args]
    code, _, stderr = run_cli(monkeypatch, capsys, "patch", "--out", tmp_path / "p", "--model", tiny_model_dir,
                              "--device", "cpu", *args)
    assert code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not list((tmp_path / "p").glob("effects-*"))


def test_library_errors_name_the_parameter(tiny_models, tmp_path):
    with pytest.raises(ActlabError, match="head 9 is outside 0..3") as caught:
        patch_run(tiny_models["llama"], ioi_pairs(2), tmp_path / "p", PatchConfig(components=["head"], heads=[9]))
    assert caught.value.param == "heads"
