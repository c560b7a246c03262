"""Generation runs: the run equals actlab.generate on the same prompts, a
killed run resumes to the same answers, the CLI end to end with steering
from a vectors file, bad input as one-line errors."""

import json
import math

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

import actlab
from actlab import ActlabError, GenerationConfig, GenerationRunConfig, Steering, generate, generate_run
from actlab.generation import run as generation_runs
from actlab.inputs import Records

from conftest import random_sae, rel_error, run_cli, save_sae_lens_folder
from actlab.runs import RunControl

QUESTIONS = [f"Question number {i}: what is {i} + {i}?" for i in range(10)]
GEN = GenerationConfig(max_new_tokens=6, temperature=0.8, seed=2, slots=3)


def records():
    return Records.of(QUESTIONS, id=[f"q{i}" for i in range(10)])


def test_run_equals_generate_and_resumes_after_a_kill(tiny_models, tmp_path, monkeypatch):
    model = tiny_models["llama"]
    cfg = GenerationRunConfig(layers=[0, 2], poolings=["response_mean", "prompt_last"], system="Be brief.",
                              generation=GEN)
    clean = generate_run(model, records(), tmp_path / "clean", cfg, control=RunControl(shard_size=4))
    run = actlab.open_run(clean)
    assert isinstance(run, actlab.GenerationRun)
    answers = run.answers()
    assert answers.column("row").to_pylist() == list(range(10)) and answers.column("id").to_pylist()[3] == "q3"
    prompts = [actlab.render_prompt(model.tokenizer, q, "Be brief.") for q in QUESTIONS]
    direct = generate(model, prompts, [0, 2], ["response_mean", "prompt_last"], GEN)
    assert answers.column("answer").to_pylist() == direct.answers  # shards sample as one call
    assert answers.column("prompt").to_pylist() == prompts
    assert answers.column("n_answer_tokens").to_pylist() == [len(a) for a in direct.answer_ids]
    for pooling in ("response_mean", "prompt_last"):
        for layer in (0, 2):
            stored = torch.tensor(run.activations(pooling)[layer])
            assert rel_error(stored, direct.pooled[pooling][layer]) < 1e-5
    real_write, written = generation_runs.write_parquet_atomic, []

    def dying_write(path, table):
        if len(written) == 3:
            raise KeyboardInterrupt  # as if killed while writing the second shard's answers
        written.append(path)
        real_write(path, table)

    monkeypatch.setattr(generation_runs, "write_parquet_atomic", dying_write)
    with pytest.raises(KeyboardInterrupt):
        generate_run(model, records(), tmp_path / "resumed", cfg, control=RunControl(shard_size=4))
    with pytest.raises(ActlabError, match="incomplete"):
        actlab.open_run(tmp_path / "resumed")
    monkeypatch.setattr(generation_runs, "write_parquet_atomic", real_write)
    resumed = generate_run(model, records(), tmp_path / "resumed", cfg, control=RunControl(shard_size=4))
    for name in ("answers-00000.parquet", "answers-00001.parquet", "answers-00002.parquet"):
        assert pq.read_table(resumed / name).equals(pq.read_table(clean / name))
    with pytest.raises(ActlabError, match="other settings"):
        generate_run(model, records(), tmp_path / "resumed", GenerationRunConfig(layers=[1], generation=GEN), control=RunControl(shard_size=4))
    # batching is not a setting: another slot count resumes the same run
    other = GenerationRunConfig(layers=[0, 2], poolings=["response_mean", "prompt_last"], system="Be brief.",
                                generation=GenerationConfig(max_new_tokens=6, temperature=0.8, seed=2, slots=1))
    generate_run(model, records(), tmp_path / "resumed", other, control=RunControl(shard_size=4))


def test_cli_end_to_end_with_steering(tiny_models, tiny_model_dir, tmp_path, monkeypatch, capsys):
    model = tiny_models["llama"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": q}) + "\n" for q in QUESTIONS[:5]))
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    save_file({"layer_1": v, "layer_2": -v}, tmp_path / "vectors.safetensors")
    code, stdout, stderr = run_cli(monkeypatch, capsys, "generate", "--input", prompts, "--out", tmp_path / "g",
                                   "--model", tiny_model_dir, "--layers", "1", "--pooling", "response_mean",
                                   "--max-new-tokens", "5", "--slots", "2", "--no-chat-template",
                                   "--steer", f"{tmp_path / 'vectors.safetensors'}:1:3.0", "--device", "cpu",
                                   "--project", f"{tmp_path / 'vectors.safetensors'}:2",
                                   "--project", f"{tmp_path / 'vectors.safetensors'}:1")
    assert code == 0, stderr
    assert "wrote 5 answers" in stdout
    run = actlab.open_run(tmp_path / "g")
    direct = generate(model, QUESTIONS[:5], [1], ["response_mean"], GenerationConfig(max_new_tokens=5),
                      Steering(1, v, 3.0), directions={1: v, 2: -v})
    answers = run.answers()
    assert answers.column("answer").to_pylist() == direct.answers
    for column, layer in (("projection_vectors_1", 1), ("projection_vectors_2", 2)):
        for stored, expected in zip(answers.column(column).to_pylist(), direct.projections[layer]):
            assert len(stored) == len(expected) and rel_error(torch.tensor([stored]), torch.tensor([expected])) < 1e-5
    assert rel_error(torch.tensor(run.activations()[1]), direct.pooled["response_mean"][1]) < 1e-5
    assert run.to_pandas().shape[0] == 5


def test_cli_ablate_cap_and_clamp_equal_the_library(tiny_models, tiny_model_dir, tmp_path, monkeypatch, capsys):
    model = tiny_models["llama"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(q + "\n" for q in QUESTIONS[:4]))
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    save_file({"layer_1": v, "layer_2": -v}, tmp_path / "vectors.safetensors")
    sae = random_sae("blocks.1.hook_resid_post", seed=3)
    folder = save_sae_lens_folder(sae, tmp_path / "sae")
    vectors = tmp_path / "vectors.safetensors"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "generate", "--input", prompts, "--out", tmp_path / "g",
                                   "--model", tiny_model_dir, "--layers", "2", "--max-new-tokens", "5",
                                   "--no-chat-template", "--device", "cpu", "--ablate", f"{vectors}:2",
                                   "--cap", f"{vectors}:1:-inf:0.5", "--clamp", f"{folder}:7:2.5")
    assert code == 0, stderr
    run = actlab.open_run(tmp_path / "g")
    assert run.settings["edits"] == {"ablate": [f"{vectors}:2"], "cap": [f"{vectors}:1:-inf:0.5"],
                                     "clamp": [f"{folder}:7:2.5"]}
    edits = [actlab.ProjectOut("blocks.2.hook_resid_post", -v), actlab.Cap("blocks.1.hook_resid_post", v, -math.inf, 0.5),
             actlab.EditLatents(actlab.load_sae(folder), [7], "clamp", 2.5)]
    direct = generate(model, QUESTIONS[:4], [2], ["response_mean"], GenerationConfig(max_new_tokens=5),
                      interventions=edits)
    plain = generate(model, QUESTIONS[:4], [2], ["response_mean"], GenerationConfig(max_new_tokens=5))
    assert run.answers().column("answer").to_pylist() == direct.answers != plain.answers
    assert rel_error(torch.tensor(run.activations()[2]), direct.pooled["response_mean"][2]) < 1e-5
    # a rerun with other edits is refused, not mixed into the same run
    code, _, stderr = run_cli(monkeypatch, capsys, "generate", "--input", prompts, "--out", tmp_path / "g",
                              "--model", tiny_model_dir, "--layers", "2", "--max-new-tokens", "5",
                              "--no-chat-template", "--device", "cpu", "--ablate", f"{vectors}:1")
    assert code == 2 and len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--ablate", "VEC"], "is not VECTORS.safetensors:LAYER (e.g."),
    (["--ablate", "missing.safetensors:1"], "vectors file missing.safetensors does not exist"),
    (["--cap", "VEC:1:2"], "is not VECTORS.safetensors:LAYER:LO:HI"),
    (["--cap", "VEC:1:2:1"], "cap range [2, 1] is empty; give LO <= HI (--cap)"),
    (["--cap", "WIDE:1:0:1"], "has width 3, the hook's is 64"),
    (["--clamp", "sae:x:1"], "is not SAE:LATENT:VALUE"),
    (["--steer", "missing.safetensors:1:2"], "vectors file missing.safetensors does not exist; give a trait run's vectors/<method>.safetensors (--steer)"),
    (["--steer", "VEC:x:2"], "is not VECTORS.safetensors:LAYER:COEFF"),
    (["--steer", "VEC:0:2"], "has no layer_0 vector"),
    (["--steer", "WIDE:1:2"], "steering vector has width 3"),
    (["--layers", "9"], "layer 9 is outside 0..2"),
    (["--project", "VEC"], "is not VECTORS.safetensors:LAYER"),
    (["--project", "VEC:1", "--project", "VEC:1"], "gives column projection_vec_1 twice"),
    (["--project", "missing.safetensors:1"], "vectors file missing.safetensors does not exist; give a trait run's vectors/<method>.safetensors (--project)"),
    (["--pooling", "response_last"], "unknown pooling"),
    (["--system", "x", "--no-chat-template"], "a system message needs the chat template; keep the template or drop the system message (--system)"),
])
def test_cli_bad_input_is_one_line(args, message, tiny_model_dir, tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    save_file({"layer_1": torch.ones(64), "layer_2": torch.ones(64)}, tmp_path / "vec.safetensors")
    save_file({"v": torch.ones(3)}, tmp_path / "wide.safetensors")
    args = [a.replace("VEC", str(tmp_path / "vec.safetensors")).replace("WIDE", str(tmp_path / "wide.safetensors"))
            for a in args]
    code, _, stderr = run_cli(monkeypatch, capsys, "generate", "--input", prompts, "--out", tmp_path / "g",
                              "--model", tiny_model_dir, "--device", "cpu", *args)
    assert code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
