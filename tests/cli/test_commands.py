"""The CLI end to end: extract, models, and one-line errors with non-zero exit."""


import pytest

import actlab

from conftest import TEXTS, random_sae, run_cli


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(f'{{"text": {t!r}, "label": {i % 2}}}'.replace("'", '"')
                              for i, t in enumerate(["one two", "three four five", "six"])) + "\n")
    return path


def test_extract_end_to_end(monkeypatch, capsys, tmp_path, tiny_model_dir, texts_file):
    code, out, err = run_cli(monkeypatch, capsys, "extract", "--model", tiny_model_dir, "--input", texts_file,
                             "--hook", "blocks.1.hook_resid_post", "--hook", "hook_embed",
                             "--pooling", "mean", "--out", tmp_path / "run")
    assert code == 0, err
    assert "wrote 3 rows" in out
    acts = actlab.open_run(tmp_path / "run")
    assert acts.hooks == ["blocks.1.hook_resid_post", "hook_embed"]
    assert acts["hook_embed"].shape == (3, 64)
    assert acts.metadata["fields"]["label"] == [0, 1, 0]


def test_models_lists_hook_names(monkeypatch, capsys, tiny_model_dir):
    code, out, _ = run_cli(monkeypatch, capsys, "models", tiny_model_dir)
    assert code == 0
    assert "llama, 3 layers, d_model 64" in " ".join(out.split())  # rich wraps at the terminal's width
    assert "blocks.2.hook_mlp_out" in out


@pytest.mark.parametrize("args, message", [
    (["--input", "missing.txt"], "input file not found"),
    (["--model", "no/such-model-here", "--input", "{texts}"], "cannot load model"),
    (["--model", "./not-a-dir", "--input", "{texts}"], "unknown model"),
    (["--hook", "blocks.99.hook_resid_post", "--input", "{texts}"], "has 3 blocks"),
    (["--hook", "blocks.0.hook_resid_typo", "--input", "{texts}"], "unknown hook"),
    (["--pooling", "median", "--input", "{texts}"], "unknown pooling"),
    (["--input", "{empty}"], "empty text"),
    (["--input", "{texts}", "--text-field", "body"], "no field 'body'"),
    (["--input", "{binary}"], "not valid UTF-8"),
])
def test_bad_input_is_one_line_error(monkeypatch, capsys, tmp_path, tiny_model_dir, texts_file,
                                     args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("a\n\nb\n")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"ok\n\xff\n")
    args = [a.format(texts=texts_file, empty=empty, binary=binary) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_model_dir)]
    if "--hook" not in args:
        args += ["--hook", "blocks.0.hook_resid_post"]
    code, out, err = run_cli(monkeypatch, capsys, "extract", "--out", tmp_path / "run", *args)
    assert code == 2
    assert message in err
    assert err.strip().startswith("error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_skip_empty(monkeypatch, capsys, tmp_path, tiny_model_dir):
    path = tmp_path / "t.txt"
    path.write_text("\n".join([TEXTS[0], "", TEXTS[1]]) + "\n")
    code, out, err = run_cli(monkeypatch, capsys, "extract", "--model", tiny_model_dir, "--input", path,
                             "--hook", "blocks.0.hook_resid_post", "--skip-empty", "--out", tmp_path / "run")
    assert code == 0 and "skipped 1 empty" in err
    assert len(actlab.open_run(tmp_path / "run")) == 2


def test_usage_error_exits_2_without_traceback(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "extract", "--out", tmp_path / "run")
    assert code == 2 and "Missing option '--input'" in err and "Traceback" not in err


def test_features_end_to_end(monkeypatch, capsys, tmp_path, tiny_model_dir, texts_file, tiny_models):
    from actlab.features import FeatureRun

    import sae_lens

    lens = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=64, d_sae=32))
    lens.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    lens.cfg.metadata.prepend_bos = False
    lens.save_model(tmp_path / "sae")
    code, out, err = run_cli(monkeypatch, capsys, "features", "--model", tiny_model_dir, "--input", texts_file,
                             "--sae", tmp_path / "sae", "--pooling", "mean", "--out", tmp_path / "run")
    assert code == 0, err
    assert "mean L0" in out
    feats = FeatureRun.open(tmp_path / "run")
    assert feats.names == [str(tmp_path / "sae")] and len(feats) == 3
    code, _, err = run_cli(monkeypatch, capsys, "features", "--model", tiny_model_dir, "--input", texts_file,
                           "--sae", tmp_path / "nope", "--out", tmp_path / "run2")
    assert code == 2 and "SAE" in err and "not found" in err


def test_analyze_end_to_end(monkeypatch, capsys, tmp_path, tiny_models):
    import pyarrow.parquet as pq

    from actlab.analyses import strongest
    from actlab.inputs import Records
    from actlab.features import FeatureRun, features_run

    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(12)]
    records = Records(texts, {"category": [f"c{i % 3}" for i in range(12)]}, list(range(1, 13)))
    sae = random_sae("blocks.1.hook_resid_post", neuronpedia_id="tiny/1-res")
    run = features_run(tiny_models["llama"], records, {"mid": sae}, tmp_path / "run")
    code, out, err = run_cli(monkeypatch, capsys, "analyze", run, "--threshold", "0.5")
    assert code == 0, err
    assert "comparison" in out and "specialists" in out
    table = pq.read_table(run / "analysis" / "strongest.parquet").to_pylist()
    expected = strongest(FeatureRun.open(run).dense("mid").numpy())
    assert [r["latent"] for r in table] == [r["latent"] for r in expected]
    assert table[0]["neuronpedia"] == f"https://neuronpedia.org/tiny/1-res/{expected[0]['latent']}"
    code, _, err = run_cli(monkeypatch, capsys, "analyze", tmp_path / "nothing")
    assert code == 2 and "not an actlab run" in err


def test_sae_quality_command(monkeypatch, capsys, tmp_path, tiny_model_dir, texts_file):
    import sae_lens

    lens = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=64, d_sae=32))
    lens.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    lens.save_model(tmp_path / "sae")
    code, out, err = run_cli(monkeypatch, capsys, "sae", "quality", "--model", tiny_model_dir,
                             "--input", texts_file, "--sae", tmp_path / "sae")
    assert code == 0, err
    assert "SAE quality on 3 texts" in out


def test_explore_highlights_tokens(monkeypatch, capsys, tmp_path, tiny_models):
    from actlab.inputs import Records
    from actlab import ExtractConfig
    from actlab.features import FeatureRun, features_run

    records = Records(TEXTS, {}, list(range(1, len(TEXTS) + 1)))
    run = features_run(tiny_models["llama"], records, {"mid": random_sae("blocks.1.hook_resid_post")},
                       tmp_path / "run", ExtractConfig(pooling="all"))
    feats = FeatureRun.open(run)
    assert feats.tokens == tiny_models["llama"].extract(TEXTS, "blocks.1.hook_resid_post", pooling="all",
                                                        progress=False).tokens
    latent = int(feats.latent_stats["mid"].count.argmax())
    code, out, err = run_cli(monkeypatch, capsys, "explore", run, "--latent", latent, "--top", 3)
    assert code == 0, err
    assert out.count("text ") == 3 and "max" in out
    code, _, err = run_cli(monkeypatch, capsys, "explore", run, "--latent", 10**6)
    assert code == 2 and "outside" in err


def test_library_errors_name_the_flag(monkeypatch, capsys, tmp_path, tiny_model_dir, texts_file):
    """An error about a Python parameter gets the CLI's flag for it."""
    code, _, err = run_cli(monkeypatch, capsys, "extract", "--model", tiny_model_dir, "--input", texts_file,
                           "--hook", "blocks.0.hook_resid_post", "--padding-side", "middle", "--out", tmp_path / "r")
    assert code == 2 and "padding_side must be 'left' or 'right', not 'middle' (--padding-side)" in err
    code, _, err = run_cli(monkeypatch, capsys, "extract", "--model", tiny_model_dir, "--input", texts_file,
                           "--hook", "blocks.0.hook_resid_post", "--batch-size", "0", "--out", tmp_path / "r")
    assert code == 2 and "batch_size must be at least 1, not 0 (--batch-size)" in err


def test_extract_options_come_from_the_config(monkeypatch, capsys):
    """Every ExtractConfig field is an option of `actlab extract`, with its help."""
    import dataclasses

    from actlab import ExtractConfig

    code, out, _ = run_cli(monkeypatch, capsys, "extract", "--help")
    assert code == 0
    for field in dataclasses.fields(ExtractConfig):
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        assert flag[:12] in out, flag


def test_bench_without_the_repository_is_one_line(monkeypatch):
    """An actlab installed without its repository: `actlab bench ...`, whatever follows, says in one line
    what to do and exits 2; an editable checkout finds its benchmarks/ (tests/bench runs them)."""
    from pathlib import Path

    import typer
    from typer.testing import CliRunner

    import actlab.cli.bench as bench

    assert bench.repository() == Path(actlab.__file__).resolve().parents[2]  # this editable checkout
    assert bench.benchmarks_module("cli").app.registered_commands
    monkeypatch.setattr(bench, "repository", lambda: None)
    assert bench.benchmarks_module("cli") is None
    app = typer.Typer()
    app.command("models")(lambda: None)
    bench.add_bench(app)
    for args in ([], ["extract"], ["generate", "--threads", "2"], ["--help"]):
        result = CliRunner().invoke(app, ["bench", *args])
        assert result.exit_code == 2 and result.output.strip() == f"error: {bench.GET_THE_REPOSITORY}", args
