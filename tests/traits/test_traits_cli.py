"""`actlab traits` end to end on the default model with a small French trait."""

import json

import pyarrow.parquet as pq

from actlab import Cap, GenerationConfig, Steering, generate, render_prompt
from actlab.traits import TraitRun
from actlab.traits.definitions import load_trait

from conftest import run_cli


def small_french(tmp_path):
    trait = load_trait("french")
    data = {"name": "french-small", "instruction": trait.instructions, "questions": trait.questions[:4],
            "judge": trait.judge, "eval_prompt": trait.eval_prompt}
    path = tmp_path / "french.json"
    path.write_text(json.dumps(data))
    return path


def test_traits_pipeline(monkeypatch, capsys, tmp_path, default_model, digit_server):
    run = tmp_path / "run"
    code, out, err = run_cli(monkeypatch, capsys, "traits", "generate", "--trait", small_french(tmp_path),
                             "--out", run, "--layers", "4,10,16,22", "--max-new-tokens", 20, "--temperature", 0)
    assert code == 0, err
    assert "wrote 24 answers" in out
    code, out, err = run_cli(monkeypatch, capsys, "traits", "vectors", run, "--held-out", 0.25)
    assert code == 0, err
    assert "best layer per method" in out and (run / "vectors" / "mean_diff.safetensors").is_file()
    evaluation = pq.read_table(run / "evaluation.parquet").to_pylist()
    assert {r["layer"] for r in evaluation} == {4, 10, 16, 22}
    code, out, err = run_cli(monkeypatch, capsys, "traits", "steer", run, "--coeffs", "0,6", "--questions", 2,
                             "--max-new-tokens", 12, "--layers", "10,16")
    assert code == 0, err
    assert (run / "steering.png").read_bytes()[:4] == b"\x89PNG"
    sweep = pq.read_table(run / "steering.parquet").to_pylist()
    assert [(r["layer"], r["coeff"]) for r in sweep] == [(layer, c) for layer in (10, 16) for c in (0, 6) for _ in "qq"]
    # one continuous batch: each row as generated alone with its own steering (coefficient 0: unsteered)
    vectors = TraitRun.open(run).vectors("mean_diff")
    for r in sweep:
        steering = Steering(r["layer"], vectors[r["layer"]], r["coeff"]) if r["coeff"] else None
        alone = generate(default_model, [render_prompt(default_model.tokenizer, r["question"])],
                         cfg=GenerationConfig(max_new_tokens=12), steering=steering)
        assert alone.answers[0] == r["answer"], r
    # the sweep with the trait direction capped at another block on every row: each row as generated alone
    mean_diff = run / "vectors" / "mean_diff.safetensors"
    code, _, err = run_cli(monkeypatch, capsys, "traits", "steer", run, "--coeffs", "6", "--questions", 1,
                           "--max-new-tokens", 12, "--layers", "10", "--cap", f"{mean_diff}:16:-2:2")
    assert code == 0, err
    capped = pq.read_table(run / "steering.parquet")
    assert json.loads(capped.schema.metadata[b"actlab.edits"])["cap"] == [f"{mean_diff}:16:-2:2"]
    row = capped.to_pylist()[0]
    alone = generate(default_model, [render_prompt(default_model.tokenizer, row["question"])],
                     cfg=GenerationConfig(max_new_tokens=12), steering=Steering(10, vectors[10], 6.0),
                     interventions=Cap("blocks.16.hook_resid_post", vectors[16], -2.0, 2.0))
    assert alone.answers[0] == row["answer"]
    # the default model as a local judge: too small to put a quarter of its mass on numbers for most
    # answers, which are dropped with that reason; fitting says so in one line
    code, _, err = run_cli(monkeypatch, capsys, "traits", "vectors", run, "--judge", "local")
    scores = pq.read_table(run / "scores.parquet").to_pylist()
    assert code == 2 and "the judge kept no pos answers" in err and "probability on numbers" in err
    assert sum(r["decision"].startswith("no score: probability on numbers 0-100 is") for r in scores) >= 12
    assert all(r["kept"] == (r["decision"] == "kept") and (r["score"] is None) == (r["reason"] != "ok")
               for r in scores)
    # steering judged by the local default model: the run's model serves as the judge, loaded once
    import actlab.models

    loads = []
    real_load = actlab.models.load_model
    monkeypatch.setattr(actlab.models, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    code, out, err = run_cli(monkeypatch, capsys, "traits", "steer", run, "--coeffs", "0", "--questions", 2,
                             "--max-new-tokens", 8, "--judge", "local")
    assert code == 0, err
    assert len(loads) == 1 and pq.read_table(run / "steering.parquet").num_rows == 2
    code, _, err = run_cli(monkeypatch, capsys, "traits", "vectors", run, "--judge", "oracle")
    assert code == 2 and "unknown judge kind 'oracle'; use keyword, regex, local, openai" in err
    # a server whose tokenizer writes numbers digit by digit: refused in one line, or read from the text
    code, _, err = run_cli(monkeypatch, capsys, "traits", "vectors", run, "--judge", "openai", "--judge-model", "m",
                           "--judge-url", digit_server)
    assert code == 2 and "writes numbers across tokens ('8' then '5')" in err and "--no-judge-logprobs" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run_cli(monkeypatch, capsys, "traits", "vectors", run, "--judge", "openai", "--judge-model", "m",
                           "--judge-url", digit_server, "--no-judge-logprobs")
    assert code == 2 and "the judge kept no neg answers" in err  # every answer read as 85
    assert set(pq.read_table(run / "scores.parquet").column("score").to_pylist()) == {85.0}
    code, out, err = run_cli(monkeypatch, capsys, "traits", "monitor", run, "--row", 0)
    assert code == 0, err
    assert any(p.name.startswith("monitor-layer") for p in run.iterdir())
    code, _, err = run_cli(monkeypatch, capsys, "traits", "monitor", run)
    assert code == 2 and "exactly one of --text or --row" in err
    code, _, err = run_cli(monkeypatch, capsys, "traits", "generate", "--trait", "nope", "--out", tmp_path / "x")
    assert code == 2 and "no built-in trait" in err
