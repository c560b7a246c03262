"""`actlab latents` end to end on the tiny model with an SAELens folder:
the same tables as actlab.latents_run, and bad input as one line."""

import json

import pyarrow.parquet as pq

import actlab
from conftest import TEXTS, random_sae, run_cli, save_sae_lens_folder


def test_latents_command_equals_the_python_api(monkeypatch, capsys, tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    sae = save_sae_lens_folder(random_sae("blocks.1.hook_resid_post", seed=2), tmp_path / "sae")
    code, out, err = run_cli(monkeypatch, capsys, "latents", "--model", tiny_model_dir, "--device", "cpu",
                             "--input", corpus, "--sae", sae, "--out", tmp_path / "cli", "--context", "8", "--top", "3")
    assert code == 0, err
    assert "latents of 8 texts" in out and "128" in out
    run = actlab.open_run(tmp_path / "cli")
    assert isinstance(run, actlab.LatentsRun) and run.saes == [sae]
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    api = actlab.latents_run(model, TEXTS, {sae: actlab.load_sae(sae)}, tmp_path / "api",
                             actlab.LatentsConfig(context=8, top=3))
    for name in ("latents", "top", "histograms"):
        assert pq.read_table(tmp_path / "cli" / f"{name}.parquet").equals(pq.read_table(api / f"{name}.parquet"))


def test_bad_input_is_one_line(monkeypatch, capsys, tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one two\n")
    for args, message in ((("--context", "0"), "context must be 1..65536"),
                          ((), "needs --input CORPUS and --out RUN"),
                          (("--input", corpus, "--out", tmp_path / "r", "--sae", tmp_path / "missing"), "missing")):
        code, _, err = run_cli(monkeypatch, capsys, "latents", "--model", tiny_model_dir, "--device", "cpu", *args)
        assert code == 2 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) <= 2  # one line, folded by the terminal at most once


def test_explore_reads_a_latents_run(monkeypatch, capsys, tmp_path, tiny_models):
    model = tiny_models["llama"]
    run = actlab.open_run(actlab.latents_run(model, TEXTS, {"s": random_sae("blocks.1.hook_resid_post", seed=2)},
                                             tmp_path / "run", actlab.LatentsConfig(context=8, top=3)))
    busiest = int(run.latents().to_pandas().sort_values("count").latent.iloc[-1])
    code, out, err = run_cli(monkeypatch, capsys, "explore", tmp_path / "run", "--latent", busiest, "--top", 2)
    assert code == 0, err
    top = run.top("s", busiest).to_pandas()
    assert f"s latent {busiest}" in out and out.count("(max ") == min(2, len(top))
    assert f"text {top.text_id[0]} @{top.start[0]} (max {top.value[0]:.2f})" in out
    code, _, err = run_cli(monkeypatch, capsys, "explore", tmp_path / "run", "--latent", 999)
    assert code == 2 and "outside 0..127" in err


def test_explain_bad_input_is_one_line(monkeypatch, capsys, tmp_path, tiny_model_dir, digit_server):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    sae = save_sae_lens_folder(random_sae("blocks.1.hook_resid_post", seed=2), tmp_path / "sae")
    run = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, "latents", "--model", tiny_model_dir, "--device", "cpu", "--input", corpus,
                   "--sae", sae, "--out", run, "--context", "8")[0] == 0
    features = tmp_path / "features"
    assert run_cli(monkeypatch, capsys, "features", "--model", tiny_model_dir, "--device", "cpu", "--input", corpus,
                   "--sae", sae, "--pooling", "mean", "--out", features)[0] == 0
    for args, message in (((features,), "is not a latents run"),
                          ((run, "--explainer", "oracle"), "unknown explainer kind 'oracle'; use local, openai"),
                          ((run, "--explainer", "openai"), "--explainer openai needs --explainer-model"),
                          ((run, "--no-explainer-logprobs"), "--no-explainer-logprobs is for --explainer openai"),
                          ((run, "--explainer-timeout", "300"), "--explainer-timeout is for --explainer openai"),
                          ((run, "--explainer", "openai", "--explainer-model", "m", "--explainer-concurrency", "0"),
                           "--explainer-concurrency must be at least 1, not 0"),
                          ((run, "--explainer", "openai", "--explainer-model", "m", "--explainer-url", digit_server),
                           "writes numbers across tokens ('8' then '5'), and one token's logprobs read only the "
                           "first digit; pass --no-explainer-logprobs"),
                          ((run, "--latents", "1", "--max-latents", "2"), "--latents or --max-latents, not both"),
                          ((run, "--latents", "128"), "latent 128 is outside 0..127"),
                          ((run, "--sae", "other"), "no SAE 'other' in this run"),
                          ((run, "--test-examples", "0"), "test_examples must be at least 1"),
                          ((tmp_path / "missing",), "no manifest.json")):
        code, _, err = run_cli(monkeypatch, capsys, "latents", "explain", *args, "--model", tiny_model_dir,
                               "--device", "cpu")
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) <= 2
