"""The extraction benchmark runs end to end (speed is measured by running it,
not asserted here): results JSON, agreement with the baseline, README table."""

import json

import pytest
import torch
from conftest import random_sae

from actlab import ActlabError
from benchmarks.extract import ExtractBench, run_extract_benchmark, sweep_point_in_subprocess
from benchmarks import worker_env
from benchmarks.options import BenchOptions


def test_bench_extract_on_tiny_model(tmp_path, tiny_model_dir):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench:extract:cpu -->\nold\n<!-- /bench:extract:cpu -->\ntail\n")
    threads = torch.get_num_threads()
    result = run_extract_benchmark(BenchOptions(str(tiny_model_dir), "cpu", tmp_path, readme),
                                   ExtractBench(n_texts=12, peers=True, sweep=False, threads=1), repeats=1)
    assert torch.get_num_threads() == threads and result["device"].endswith(", 1 thread")
    assert set(result["methods"]) == {"baseline_loop", "engine", "bare_forward", "transformer_lens", "nnsight"}
    # every method reads the same numbers: an independent check of the engine
    assert all(err < 1e-4 for err in result["max_rel_error"].values()), result["max_rel_error"]
    saved = json.loads((tmp_path / "extract-cpu.json").read_text())
    assert saved["ratios"]["engine_vs_baseline"] == result["ratios"]["engine_vs_baseline"]
    text = readme.read_text()
    assert "| engine |" in text and "old" not in text and text.endswith("tail\n")


def test_sweep_points_run_in_fresh_processes(tiny_model_dir):
    seconds, peak = sweep_point_in_subprocess("extract", str(tiny_model_dir), "cpu", 4, 8, "blocks.1.hook_resid_post")
    assert seconds > 0 and peak > 50 * 2**20
    seconds, peak = sweep_point_in_subprocess("traits", str(tiny_model_dir), "cpu", 4, 6, 3, 0, 1)
    assert seconds > 0 and peak > 50 * 2**20


def test_bench_traits_on_tiny_model(tmp_path, tiny_model_dir):
    from benchmarks.traits import TraitsBench, run_traits_benchmark

    result = run_traits_benchmark(BenchOptions(str(tiny_model_dir), "cpu", tmp_path),
                                  TraitsBench(n_prompts=6, max_new_tokens=5, batch_size=4, sweep=False))
    assert set(result["pipelines"]) == {"two_stage_serial", "combined_serial", "batched"}
    assert all(result["same_answers_as_two_stage"].values())
    assert all(err < 1e-4 for err in result["max_rel_error_vs_two_stage"].values())
    assert json.loads((tmp_path / "traits-cpu.json").read_text())["n_prompts"] == 6


def test_bench_features_on_tiny_model(tmp_path, tiny_model_dir):
    from benchmarks.features import FeaturesBench, run_features_benchmark

    readme = tmp_path / "README.md"
    readme.write_text("x\n")
    result = run_features_benchmark(BenchOptions(str(tiny_model_dir), "cpu", tmp_path, readme),
                                    FeaturesBench(n_texts=12, d_sae=256, k=8), repeats=1)
    assert result["layers"] == [1, 2] and result["seconds"]["all_saes"] > 0
    assert 0 < result["sparse_fraction_of_dense"] < 1
    assert "<!-- bench:features:cpu -->" in readme.read_text()


def test_trait_quality_targets_and_table():
    from benchmarks.trait_quality import markdown_table, targets_met

    best = {"layer": 20, "auroc": 0.95, "n_test_pos": 6, "n_test_neg": 9}
    trait = {"n_answers": 120, "kept_pos": 30, "kept_neg": 50, "best_mean_diff": best, "steering_layers": [14],
             "seconds_total": 90.0, "steering_questions": 10,
             "steering": [{"coeff": c, "mean_score": s, "n_scored": n}
                          for c, s, n in zip((-2, -1, 0, 1, 2), (0, 0, 5, 60, None), (10, 9, 10, 8, 0))]}
    assert targets_met(trait) == {"held_out_auroc_0.9": True, "steering_expected_way": False}  # no score at +2
    trait["steering"][-1]["mean_score"] = 40
    assert targets_met(trait)["steering_expected_way"]
    trait["steering"][0]["mean_score"] = trait["steering"][1]["mean_score"] = 10  # negatives above 0: wrong way
    assert not targets_met(trait)["steering_expected_way"]
    trait["steering"][2]["mean_score"] = 100  # at the ceiling by default: negative coefficients lower it
    trait["steering"][3]["mean_score"] = trait["steering"][4]["mean_score"] = 100
    assert targets_met(trait)["steering_expected_way"]
    trait["steering"][0]["mean_score"] = trait["steering"][1]["mean_score"] = 100  # nothing moves
    assert not targets_met(trait)["steering_expected_way"]
    trait["steering"][0]["mean_score"], trait["steering"][1]["mean_score"] = 10, 0
    trait["steering"][2]["mean_score"], trait["steering"][3]["mean_score"] = 5, 60
    trait["steering"][4]["mean_score"] = 40
    table = markdown_table({"device": "cpu: x", "model": "m", "generation": "greedy", "date": "2026-11-23T00:00:00Z",
                            "traits": {"t": trait}})
    assert "| t | 120 | 30 / 50 | 20: 0.95 (6/9) | 14 | 10 / 0 / 5 / 60 / 40 | 0-10 of 10 | 1.5 |" in table


def test_bench_contrast_on_tiny_model(tmp_path, tiny_model_dir):
    """The seed's baselines (separate programs, one pass per text, dense
    eigendecompositions) agree with the batched run on every metric."""
    from benchmarks.contrast import ContrastBench, run_contrast_benchmark

    saes = {"early": random_sae("blocks.0.hook_resid_post", arch="topk", seed=1),
            "mid": random_sae("blocks.1.hook_resid_post", arch="jumprelu", seed=2)}
    result = run_contrast_benchmark(BenchOptions(str(tiny_model_dir), "cpu", tmp_path),
                                    ContrastBench(n_pairs=8, sweep=False), saes=saes)
    assert set(result["methods"]) == {"separate", "sequential", "batched", "features"}
    assert all(err <= 1e-4 for err in result["max_rel_difference_separate_vs_batched"].values()), \
        result["max_rel_difference_separate_vs_batched"]
    assert json.loads((tmp_path / "contrast-cpu.json").read_text())["n_texts"] == 24


def test_bench_capacity_store_and_plan(tmp_path):
    """The store figures against the files themselves; the plan's arithmetic against a
    hand computation from a GPU result."""
    import pyarrow.parquet as pq

    from benchmarks.capacity import SAES, SCALING, CapacityBench, measure_store, run_capacity_benchmark

    (tmp_path / "extract-cuda.json").write_text(json.dumps({
        "device": "cuda: test", "dtype": "float32", "methods": {"engine": {"tokens_per_s": 100000.0}}}))
    readme = tmp_path / "ray.md"
    readme.write_text("# plan\n")
    result = run_capacity_benchmark(BenchOptions(results_dir=tmp_path, readme=readme), CapacityBench(n_texts=8))
    per_token = result["store"]["all"]
    assert 0 < per_token["nonzeros_per_row_per_sae"] <= 32  # the default SAEs are top-32
    plan = {row["gpus"]: row for row in result["plan"]}
    hours = 1e9 / 100000.0 / 3600 / SCALING
    assert plan[1]["gpu_hours"] == round(hours, 1) and plan[8]["wall_hours"] == round(hours / 8, 2)
    expected_tb = 1e9 * SAES * per_token["nonzeros_per_row_per_sae"] * per_token["feature_bytes_per_nonzero"] / 1e12
    assert plan[64]["feature_store_tb"] == round(expected_tb, 2)
    assert "bytes per nonzero" in readme.read_text() and "<!-- bench:capacity:cpu -->" in readme.read_text()
    store = measure_store("smollm2-135m-instruct", 8, tmp_path / "again")
    shards = sorted((tmp_path / "again" / "all").glob("shard-*.parquet"))
    nonzeros = sum(pq.read_metadata(p).num_rows for p in shards)
    assert store["all"]["nonzeros"] == nonzeros
    assert store["all"]["feature_bytes_per_nonzero"] == round(sum(p.stat().st_size for p in shards) / nonzeros, 2)


def test_bench_generate_on_tiny_model(tmp_path, tiny_model_dir):
    from benchmarks.generate import GenerateBench, run_generate_benchmark

    result = run_generate_benchmark(BenchOptions(str(tiny_model_dir), "cpu", tmp_path),
                                    GenerateBench(n_prompts=5, max_new_tokens=4, repeats=1, vllm=False,
                                                  slot_counts=[1, 2]))
    assert set(result["engines"]) == {"hf_single", "hf_batched", "static_loop", "actlab_capture", "actlab",
                                      "actlab_whole_prompts"}
    for name, row in result["engines"].items():  # random weights: no near-ties in 4 greedy tokens
        assert row["answers_identical_to_hf_single"] == row["answers_compared"] == 5, name
    assert {r["slots"] for r in result["decode_step_by_slots"]} == {1, 2}
    assert set(result["matrix_gflops"]) == {f"{shape}_{path}_gflops" for shape in ("mlp", "lm_head")
                                            for path in ("torch", "onednn")}
    assert result["matrix_samples"] == 2  # before the round of engines, and at the end
    assert json.loads((tmp_path / "generate-cpu.json").read_text())["n_prompts"] == 5


def test_bench_generate_bfloat16_reaches_every_engine(tmp_path, tiny_model_dir):
    """--dtype bfloat16: the prompts file carries it to each engine's process,
    which loads the model in it and says so; the result has its own file and
    README block; another dtype is refused in one line."""
    import subprocess
    import sys

    from benchmarks.extract import save_result
    from benchmarks.generate import GenerateBench

    spec = tmp_path / "prompts.json"
    spec.write_text(json.dumps({"prompts": ["Hello there", "Name a colour"], "ids": [[1, 2], [3, 4]], "eos": [0],
                                "dtype": "bfloat16"}))
    for engine in ("actlab", "hf_batched"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.generate_worker", engine, str(tiny_model_dir),
                               str(spec), "3", "1"], capture_output=True, text=True, check=True, env=worker_env())
        line = json.loads(done.stdout.strip().splitlines()[-1])
        assert line["dtype"] == "bfloat16" and len(line["answers"]) == 2, engine
    readme = tmp_path / "README.md"
    readme.write_text("text\n")
    save_result({"benchmark": "generate", "device": "cpu: x86_64", "variant": "bfloat16"}, torch.device("cpu"),
                tmp_path, readme, "the bf16 table")
    assert (tmp_path / "generate-cpu-bfloat16.json").exists() and not (tmp_path / "generate-cpu.json").exists()
    assert "<!-- bench:generate:cpu-bfloat16 -->\nthe bf16 table\n" in readme.read_text()
    with pytest.raises(ActlabError, match="float32 or bfloat16, not 'float16'"):
        GenerateBench(dtype="float16")


def test_describe_device_names_the_cpu_and_threads():
    from benchmarks.extract import describe_device
    from actlab.engine.machine import describe_cpu

    assert describe_device(torch.device("cpu")).startswith(f"cpu: {describe_cpu()}, ")


def test_best_matrix_keeps_each_figures_best_and_lowest():
    from benchmarks.generate import best_matrix

    samples = [{"gflops": {"mlp_torch_gflops": 45.0, "lm_head_onednn_gflops": 60.0}, "bf16_gflops": {"b": 7.0},
                "chosen": {"576x576": "torch"}},
               {"gflops": {"mlp_torch_gflops": 71.0, "lm_head_onednn_gflops": 52.0}, "bf16_gflops": {"b": 9.0},
                "chosen": {"576x576": "onednn"}}]
    best = best_matrix(samples)
    assert best["gflops"] == {"mlp_torch_gflops": 71.0, "lm_head_onednn_gflops": 60.0}
    assert best["gflops_range"] == {"mlp_torch_gflops": [45.0, 71.0], "lm_head_onednn_gflops": [52.0, 60.0]}
    assert best["bf16_gflops"] == {"b": 9.0}
    assert best["chosen"] == {"576x576": "onednn"} and len(best["chosen_per_load"]) == 2


def test_capture_agreement_compares_rows_vllm_fed_whole():
    from benchmarks.generate import capture_agreement

    ours = {"answers": [[1, 2], [3], [4, 5]], "pooled": {"7": [[1.0, 2.0], [1.0, 1.0], [2.0, 2.0]]}}
    lens = {"answers": [[1, 2], [3], [4, 6]], "pooled_tokens": [2, 0, 2],
            "pooled": {"7": [[1.0, 2.2], [9.0, 9.0], [0.0, 0.0]]}}
    # row 1: vLLM fed none of its answer; row 2: another answer
    assert capture_agreement(lens, ours) == {"capture_rows_compared": 1, "capture_max_rel_error_vs_actlab": 0.1}


def test_bench_latents_on_tiny_model(tmp_path, tiny_model_dir):
    from benchmarks.latents import LatentsBench, run_latents_benchmark

    readme = tmp_path / "README.md"
    readme.write_text("x\n")
    result = run_latents_benchmark(BenchOptions(str(tiny_model_dir), "cpu", tmp_path, readme),
                                   LatentsBench(n_texts=8, d_sae=256, k=8, context=16, repeats=1, memory=False,
                                                explain_latents=2))
    assert result["cost_vs_features_pass"] > 0 and result["dashboard"]["seconds_per_1k_latents"] > 0
    explain = result["explain"]
    assert explain["latents"] == 2 and explain["latents_per_hour"] > 0 and explain["calls"] <= 2 * 61
    assert explain["explainer"] == f"local: {tiny_model_dir}"
    assert json.loads((tmp_path / "latents-cpu.json").read_text())["explain"]["calls"] == explain["calls"]
    assert "latents per hour" in readme.read_text()


def test_bench_patch_on_tiny_model(tmp_path, tiny_model_dir):
    """Every method patches the same grid to the same numbers (TransformerLens's
    helpers, the nnsight loop), and the JSON and README table are written."""
    from benchmarks.patch import PatchBench, run_patch_benchmark

    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    result = run_patch_benchmark(BenchOptions(str(tiny_model_dir), "cpu", tmp_path, readme),
                                 PatchBench(n_pairs=2, components=["resid_pre", "head_all_pos"], memory=False),
                                 repeats=1)
    for row in result["components"].values():
        assert row["max_abs_difference"] <= 1e-4 * row["metric_scale"], row
    assert result["nnsight_resid_pre"]["seconds"] > 0
    assert set(result["attribution"]["ig"]["correlation"]) == {"resid_pre", "head_all_pos"}
    assert json.loads((tmp_path / "patch-cpu.json").read_text())["n_pairs"] == 2
    assert "get_act_patch_resid_pre" in readme.read_text()
