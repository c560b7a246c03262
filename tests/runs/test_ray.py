"""The same runs on a local Ray instance: rows equal the single-process run's
for every run kind (trait generation token for token), a run started on Ray
is finished by one process and vice versa, a killed actor or driver loses
nothing, feature statistics merge exactly, runs go to object storage too, and
a bad input fails with its own message."""

import json

import numpy as np

import pyarrow.parquet as pq
import pytest

import actlab
from actlab import ActlabError, ExtractConfig
from actlab.features import features_run
from actlab.runs import RunControl, shard_name
from actlab.runs.ray import RayConfig
from conftest import TEXTS, assert_tables_close, random_sae

ray = pytest.importorskip("ray")

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
TWO_ACTORS = RayConfig(actors=2, cpus_per_actor=1)


@pytest.fixture(scope="module")
def local_ray(s3_bucket):
    """One local Ray instance (2 CPUs) for the module: each start costs 10-25 s
    here. Started after the S3 server, so its workers see its endpoint. Runs
    take one actor (each costs a process and a model load, ~10 s here); the
    tests of shards spread over actors ask for TWO_ACTORS."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield RayConfig(actors=1, cpus_per_actor=1)
    ray.shutdown()


def records(n=40):
    return actlab.Records.of([f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(n)], category=[i % 3 for i in range(n)])


def same_shards(a, b, names):
    """Rows of two runs' shards: other runners and thread counts round float sums
    differently, so floats within 1e-5 relative, everything else exact."""
    for name in names:
        assert_tables_close(pq.read_table(a / name), pq.read_table(b / name), label=name)


def test_extraction_on_ray_equals_one_process(tmp_path, tiny_model_dir, local_ray):
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    cfg = ExtractConfig(HOOKS, "mean")
    local = actlab.extract_run(model, records(), tmp_path / "local", cfg, control=RunControl(shard_size=8))
    on_ray = actlab.extract_run(model, records(), tmp_path / "ray", cfg, control=RunControl(shard_size=8, runner="ray", ray=TWO_ACTORS))
    same_shards(local, on_ray, [shard_name(i) for i in range(5)])
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (local, on_ray))
    assert a["settings"] == b["settings"] and a["n_rows"] == b["n_rows"]
    session = b["timings"]["session_0"]
    assert session["runner"] == "ray" and sum(actor["shards"] for actor in session["actors"].values()) == 5
    # a run started on Ray is finished by one process, and vice versa
    for first, second, name in (("ray", "local", "mixed1"), ("local", "ray", "mixed2")):
        path = tmp_path / name
        actlab.extract_run(model, records(), path, cfg, control=RunControl(shard_size=8, runner=first, ray=local_ray))
        for i in (1, 3):
            (path / shard_name(i)).unlink()
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["complete"] = False
        (path / "manifest.json").write_text(json.dumps(manifest))
        actlab.extract_run(model, records(), path, cfg, control=RunControl(shard_size=8, runner=second, ray=local_ray))
        same_shards(local, path, [shard_name(i) for i in range(5)])
        assert len(json.loads((path / "manifest.json").read_text())["timings"]) == 2


def test_features_on_ray_merge_statistics_exactly(tmp_path, tiny_model_dir, local_ray):
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    saes = {"early": random_sae("blocks.0.hook_resid_post", seed=1),
            "late": random_sae("blocks.2.hook_resid_post", arch="topk", seed=2)}
    local = features_run(model, records(), saes, tmp_path / "local", control=RunControl(shard_size=8))
    on_ray = features_run(model, records(), saes, tmp_path / "ray", control=RunControl(shard_size=8, runner="ray", ray=local_ray))
    same_shards(local, on_ray, ["latent_stats.parquet"] + [f"{p}-{i:05d}.parquet" for p in ("shard", "texts", "stats")
                                                           for i in range(5)])


def test_bad_input_fails_with_its_own_message(tmp_path, tiny_model_dir, local_ray):
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    with pytest.raises(ActlabError, match="outside text"):
        actlab.extract_run(model, records(8), tmp_path / "bad", ExtractConfig(HOOKS, "pos:400"), control=RunControl(shard_size=4, runner="ray", ray=local_ray))


def test_cli_with_ray(monkeypatch, capsys, tmp_path, tiny_model_dir, local_ray):
    """`actlab extract --ray` (no address: the Ray instance this process holds) equals the single-process CLI;
    its Parquet input travels to the actors as row ranges, read there."""
    import pyarrow as pa

    from conftest import run_cli

    texts = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": records(12).texts, "category": [i % 3 for i in range(12)]}), texts,
                   row_group_size=5)
    common = ["extract", "--model", tiny_model_dir, "--input", texts, "--hook", HOOKS[1], "--shard-size", 4]
    code, _, err = run_cli(monkeypatch, capsys, *common, "--out", tmp_path / "one")
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, *common, "--out", tmp_path / "ray", "--ray", "--ray-actors", 2)
    assert code == 0, err
    assert "wrote 12 rows" in out and err.count("  actor ") >= 1  # a line per actor that did shards
    same_shards(tmp_path / "one", tmp_path / "ray", [shard_name(i) for i in range(3)])
    one, on_ray = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("one", "ray"))
    assert on_ray["settings"] == one["settings"] and on_ray["settings"]["input"]["fields"] == ["category"]
    assert on_ray["timings"]["session_0"]["runner"] == "ray"


def test_without_ray_installed_is_one_line(monkeypatch, tmp_path, tiny_model_dir):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from actlab.runs.ray import ray_module

    with pytest.raises(ActlabError, match=r"pip install 'actlab\[ray\]'"):
        ray_module()


def test_killed_actor_is_retried_with_nothing_lost(tmp_path, tiny_model_dir, local_ray):
    """SIGKILL an actor's process mid-run: Ray restarts it and retries its shard,
    and the run ends with exactly the rows of an uninterrupted run."""
    import os
    import signal
    import threading
    import time

    import psutil

    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    cfg = ExtractConfig(HOOKS, "mean")
    many = records(160)
    clean = actlab.extract_run(model, many, tmp_path / "clean", cfg, control=RunControl(shard_size=4))
    killed = []

    def kill_an_actor():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            done = list((tmp_path / "ray").glob("shard-*.parquet"))
            actors = [p.pid for p in psutil.process_iter(["cmdline"])
                      if "MapWorker" in " ".join(p.info["cmdline"] or [])]  # Ray titles actor processes
            if len(done) >= 2 and actors:
                os.kill(actors[0], signal.SIGKILL)
                killed.append(actors[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_an_actor)
    killer.start()
    on_ray = actlab.extract_run(model, many, tmp_path / "ray", cfg, control=RunControl(shard_size=4, runner="ray", ray=local_ray))
    killer.join()
    assert killed, "no actor was killed"
    same_shards(clean, on_ray, [shard_name(i) for i in range(40)])
    assert json.loads((on_ray / "manifest.json").read_text())["n_rows"] == 160


def test_contrast_on_ray_equals_one_process(tmp_path, tiny_model_dir, local_ray):
    from actlab.contrasts.pairs import Pairs
    from actlab.contrasts.config import ContrastConfig
    from actlab.contrasts.run import contrast_run

    pairs = Pairs([f"p{i}" for i in range(6)], ["x"] * 6, [f"Statement {i}: the sky is" for i in range(6)],
                  {"fact": ["blue."] * 6, "hallucination": ["green.", "red.", "a deep shade of green."] * 2})
    saes = {"early": random_sae("blocks.0.hook_resid_post", arch="topk", seed=1),
            "late": random_sae("blocks.1.hook_resid_post", arch="jumprelu", seed=2)}
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    cfg = ContrastConfig(position="continuation", draws=2, shard_size=2)
    local = contrast_run(model, pairs, saes, tmp_path / "local", cfg)
    on_ray = contrast_run(model, pairs, saes, tmp_path / "ray", cfg, control=RunControl(runner="ray", ray=local_ray))
    same_shards(local, on_ray, [shard_name(i) for i in range(3)] + ["texts.parquet"])
    same_shards(local, on_ray, ["pairs.parquet"])  # NaN where no layer before, in the same places
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (local, on_ray))
    assert a["settings"] == b["settings"] and a["unequal_token_lengths"] == b["unequal_token_lengths"] > 0


def test_patching_and_circuits_on_ray_equal_one_process(tmp_path, tiny_model_dir, local_ray):
    from actlab.circuits import CircuitConfig, circuit_run
    from actlab.patching import PatchConfig, ioi_pairs, patch_run

    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    cfg = PatchConfig(components=["resid_pre", "head"], layers=[1], positions=[-1])
    local = patch_run(model, ioi_pairs(4), tmp_path / "local", cfg, control=RunControl(shard_size=2))
    on_ray = patch_run(model, ioi_pairs(4), tmp_path / "ray", cfg,
                       control=RunControl(shard_size=2, runner="ray", ray=local_ray))
    same_shards(local, on_ray, [shard_name(i, prefix) for i in range(2) for prefix in ("effects", "pairs")])
    saes, circuit = {"r1": random_sae("blocks.1.hook_resid_post")}, CircuitConfig(method="atp", node_threshold=0.05)
    local = circuit_run(model, ioi_pairs(4), tmp_path / "c-local", saes, circuit, RunControl(shard_size=2))
    on_ray = circuit_run(model, ioi_pairs(4), tmp_path / "c-ray", saes, circuit,
                         RunControl(shard_size=2, runner="ray", ray=local_ray))
    same_shards(local, on_ray, [shard_name(i, prefix) for i in range(2) for prefix in ("nodes", "pairs")]
                + ["circuit/nodes.parquet", "circuit/edges.parquet", "circuit/faithfulness.parquet"])


def test_trait_generation_on_ray_is_token_identical(monkeypatch, capsys, tmp_path, tiny_model_dir, local_ray):
    from actlab.traits import GenerationConfig
    from actlab.traits.definitions import parse_trait
    from actlab.traits import TraitRun, generate_trait_run
    from conftest import run_cli

    spec = {"name": "toy", "instruction": [{"pos": "Be happy.", "neg": "Be sad."}],
            "questions": [f"Question number {i}?" for i in range(5)]}
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    greedy = GenerationConfig(max_new_tokens=6)
    local = TraitRun.open(generate_trait_run(model, parse_trait(spec), tmp_path / "local", [0, 2], cfg=greedy, control=RunControl(shard_size=3)))
    (tmp_path / "toy.json").write_text(json.dumps(spec))
    code, out, err = run_cli(monkeypatch, capsys, "traits", "generate", "--model", tiny_model_dir, "--trait",
                             tmp_path / "toy.json", "--out", tmp_path / "ray", "--layers", "0,2",
                             "--max-new-tokens", 6, "--temperature", 0, "--top-p", 1, "--shard-size", 3,
                             "--ray", "--ray-actors", 2)
    assert code == 0, err
    assert "wrote 10 answers" in out and "actor" in err
    on_ray = TraitRun.open(tmp_path / "ray")
    assert on_ray.settings == local.settings
    assert on_ray.answers().equals(local.answers())  # the same tokens, the same text
    for pooling in local.settings["poolings"]:
        for layer, values in local.activations(pooling).items():
            got = on_ray.activations(pooling)[layer]
            assert np.abs(got - values).max() <= 1e-5 * np.abs(values).max(), (pooling, layer)


def test_generation_run_on_ray_samples_as_one_process(tmp_path, tiny_model_dir, local_ray):
    """Sampled answers with a steering file: each row samples by its own
    counter, so two actors with their own shards answer as one process."""
    from safetensors.torch import save_file

    import torch

    from actlab.generation import FileVector

    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    save_file({"layer_1": torch.ones(64)}, tmp_path / "v.safetensors")
    cfg = actlab.GenerationRunConfig(layers=[0, 2], steer=FileVector(tmp_path / "v.safetensors", 1, 2.0),
                                     generation=actlab.GenerationConfig(max_new_tokens=6, temperature=0.9, seed=4))
    texts = [f"Question number {i}?" for i in range(9)]
    local = actlab.open_run(actlab.generate_run(model, texts, tmp_path / "local", cfg, control=RunControl(shard_size=4)))
    on_ray = actlab.open_run(actlab.generate_run(model, texts, tmp_path / "ray", cfg, control=RunControl(shard_size=2, runner="ray", ray=TWO_ACTORS)))
    assert on_ray.answers().column("answer").equals(local.answers().column("answer"))
    for layer, values in local.activations().items():
        assert np.abs(on_ray.activations()[layer] - values).max() <= 1e-5 * np.abs(values).max()


def test_ray_run_in_object_storage(tmp_path, tiny_model_dir, local_ray, s3_bucket):
    """Actors write their shards straight to s3:// (a local S3-compatible server)."""
    from actlab.storage import read_parquet, run_path

    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    cfg = ExtractConfig(HOOKS, "mean")
    local = actlab.extract_run(model, records(), tmp_path / "local", cfg, control=RunControl(shard_size=8))
    remote = actlab.extract_run(model, records(), f"{s3_bucket}/ray-run", cfg, control=RunControl(shard_size=8, runner="ray", ray=local_ray))
    assert remote == run_path(f"{s3_bucket}/ray-run")
    for i in range(5):
        assert_tables_close(read_parquet(remote / shard_name(i)), pq.read_table(local / shard_name(i)))
    assert actlab.open_run(str(remote)).manifest["timings"]["session_0"]["runner"] == "ray"


KILLED_DRIVER = """
import os, signal, sys
import actlab
from actlab import ExtractConfig
from actlab.runs.ray import RayConfig
from actlab.runs import RunControl

class KillAfter:
    "A progress sink that SIGKILLs its own process once 8 texts are done (on Ray: two shards)."
    def __init__(self):
        self.done = 0
    def start(self, total, shards):
        pass
    def shard_done(self):
        pass
    def advance(self, n_texts, n_tokens):
        self.done += n_texts
        if self.done >= 8:
            os.kill(os.getpid(), signal.SIGKILL)

texts = [line.rstrip("\\n") for line in open(sys.argv[3])]
runner, address = sys.argv[2], sys.argv[4]
model = sys.argv[1] if runner == "ray" else actlab.load_model(sys.argv[1], device="cpu")
actlab.extract_run(model, actlab.Records.of(texts), sys.argv[5], ExtractConfig(["blocks.2.hook_resid_post"], "mean"),
                   control=RunControl(shard_size=4, progress=KillAfter(), runner=runner,
                                      ray=RayConfig(address=address, actors=1)))
"""


@pytest.mark.parametrize("first,second", [("ray", "ray"), ("ray", "local"), ("local", "ray")])
def test_killed_driver_resumes_from_finished_shards(tmp_path, tiny_model_dir, local_ray, first, second):
    """SIGKILL the driver mid-run; the rerun, with either runner, computes only
    the unfinished shards and ends with the rows of an uninterrupted run."""
    import subprocess
    import sys

    texts = [t.replace("\n", " ") for t in records(48).texts]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    cfg = ExtractConfig(["blocks.2.hook_resid_post"], "mean")
    clean = actlab.extract_run(model, actlab.Records.of(texts), tmp_path / "clean", cfg, control=RunControl(shard_size=4))
    out = tmp_path / "run"
    address = ray.get_runtime_context().gcs_address
    killed = subprocess.run([sys.executable, "-c", KILLED_DRIVER, str(tiny_model_dir), first,
                             str(tmp_path / "texts.txt"), address, str(out)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert 1 <= len(done) < 12 and not json.loads((out / "manifest.json").read_text())["complete"]
    before = {name: (out / name).stat().st_mtime_ns for name in done}
    actlab.extract_run(model, actlab.Records.of(texts), out, cfg, control=RunControl(shard_size=4, runner=second, ray=local_ray))
    same_shards(clean, out, [shard_name(i) for i in range(12)])
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in before.items())  # not redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_rows"] == 48 and manifest["timings"]["session_0"]["runner"] == second


def test_actors_read_their_rows_from_s3(tmp_path, tiny_model_dir, local_ray, s3_bucket):
    """A Parquet input in s3:// travels to the actors as (URI, row range)."""
    import pyarrow as pa

    from actlab.inputs import read_records
    from actlab.runs.atomic import write_parquet_atomic
    from actlab.storage import StorePath

    write_parquet_atomic(StorePath(f"{s3_bucket}/inputs/ray.parquet"), pa.table({"text": records(20).texts}))
    by_range = read_records(f"{s3_bucket}/inputs/ray.parquet", by_row_range=True)
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    cfg = ExtractConfig(HOOKS, "mean")
    on_ray = actlab.extract_run(model, by_range, tmp_path / "ray", cfg, control=RunControl(shard_size=8, runner="ray", ray=local_ray))
    local = actlab.extract_run(model, actlab.Records.of(records(20).texts), tmp_path / "local", cfg, control=RunControl(shard_size=8))
    same_shards(local, on_ray, [shard_name(i) for i in range(3)])


def test_relative_paths_mean_the_drivers(monkeypatch, tmp_path, tiny_model_dir, local_ray):
    """A relative run folder and model folder are the driver's, wherever a worker
    runs; the run equals (and may be resumed by) a single-process run given the same paths."""
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    cfg = ExtractConfig(HOOKS, "mean")
    on_ray = actlab.extract_run("model", records(16), "rel/ray", cfg, control=RunControl(shard_size=8, runner="ray", ray=local_ray))
    local = actlab.extract_run(actlab.load_model("model", device="cpu"), records(16), "rel/local", cfg, control=RunControl(shard_size=8))
    assert (tmp_path / "rel" / "ray" / shard_name(1)).exists()
    same_shards(local, tmp_path / on_ray, [shard_name(i) for i in range(2)])
    a, b = (json.loads((tmp_path / "rel" / p / "manifest.json").read_text()) for p in ("local", "ray"))
    assert a["settings"] == b["settings"] and b["settings"]["model"]["id"] == "model"


def test_an_actor_that_cannot_see_the_run_folder_says_so(tmp_path, tiny_model_dir):
    from actlab.activations.run import ExtractionJob
    from actlab.runs.ray import ShardActor

    job = ExtractionJob(records(4), tmp_path / "elsewhere", ExtractConfig(HOOKS, "mean"))
    with pytest.raises(ActlabError, match="cannot see the run folder .*shared filesystem path or an object-store"):
        ShardActor({"id": str(tiny_model_dir)}, job, 1, {})


def test_actors_take_the_matrix_paths_the_run_recorded(tmp_path, tiny_model_dir, local_ray):
    """The driver records the paths its settings task's model took; an actor
    whose own load would take others (here all-torch against a run started
    all-oneDNN) computes with the run's."""
    from actlab.models import ModelSpec
    from actlab.activations.run import ExtractionJob
    from actlab.runs.ray import ShardActor

    cfg = ExtractConfig(HOOKS, "mean")
    run = actlab.extract_run(ModelSpec(str(tiny_model_dir), matmul="onednn"), records(8), tmp_path / "run", cfg, control=RunControl(shard_size=4, runner="ray", ray=local_ray))
    recorded = json.loads((run / "manifest.json").read_text())["matrix_paths"]
    assert recorded and set(recorded.values()) == {"onednn"}
    actor = ShardActor(ModelSpec(str(tiny_model_dir), matmul="torch"), ExtractionJob(records(8), run, cfg), 1,
                       recorded)
    assert actor.model.matrix_paths == recorded


def test_trait_pipeline_generates_on_ray(tmp_path, tiny_model_dir, local_ray):
    """run_trait with runner="ray": the answers as a single-process run's, then judged,
    fitted and steered here."""
    from actlab.traits import GenerationConfig
    from actlab.traits.definitions import parse_trait
    from actlab.judges import Judgement
    from actlab import TraitPipelineConfig, run_trait
    from actlab.traits import SteerConfig, TraitRun, VectorsConfig

    class Alternating:
        """Answers come pos, neg, pos, ...: pos 80, neg 20 (steered answers: whatever)."""

        def judge(self, items):
            return [Judgement(80.0 if i % 2 == 0 else 20.0) for i in range(len(items))]

    trait = parse_trait({"name": "toy", "instruction": [{"pos": "Be happy.", "neg": "Be sad."}],
                         "questions": [f"Question number {i}?" for i in range(6)]})
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    greedy = GenerationConfig(max_new_tokens=5)
    cfg = TraitPipelineConfig(greedy, [0, 2], VectorsConfig(held_out=0.34), SteerConfig(coeffs=[0, 1], max_new_tokens=5))
    results = {runner: run_trait(model, trait, tmp_path / runner, Alternating(), cfg, control=RunControl(runner=runner, ray=local_ray))
               for runner in ("local", "ray")}
    assert results["ray"]["kept_pos"] == results["local"]["kept_pos"] == 6
    local, on_ray = TraitRun.open(tmp_path / "local"), TraitRun.open(tmp_path / "ray")
    assert on_ray.answers().equals(local.answers())
    assert on_ray.manifest["timings"]["session_0"]["runner"] == "ray"


def test_ray_run_reports_texts_and_shards(tmp_path, tiny_model_dir, local_ray):
    from conftest import Recorder

    progress = Recorder()
    actlab.extract_run(str(tiny_model_dir), records(20), tmp_path / "run", ExtractConfig(HOOKS, "mean"), control=RunControl(shard_size=8, progress=progress, runner="ray", ray=local_ray))
    assert progress.started == (20, 3) and progress.texts == 20 and progress.shards == 3


def test_a_cluster_without_room_is_one_line(tmp_path, tiny_model_dir, local_ray):
    """Three one-CPU actors on a two-CPU instance never all start: a clear error, not a hang."""
    with pytest.raises(ActlabError, match="did not start 3 actor.*lower --ray-actors"):
        actlab.extract_run(str(tiny_model_dir), records(8), tmp_path / "crowded", ExtractConfig(HOOKS, "mean"), control=RunControl(shard_size=4, runner="ray", ray=RayConfig(actors=3, cpus_per_actor=1, start_timeout=5)))


def test_an_address_that_does_not_answer_is_one_line(monkeypatch, capsys, tmp_path, tiny_model_dir):
    """A cluster address where nothing listens (connection refused) fails in
    seconds in one line, whatever --ray-start-timeout (600 s by default); so
    does `auto` resolving to it through RAY_ADDRESS, and an address that is
    not one."""
    import time

    from conftest import run_cli

    (tmp_path / "t.txt").write_text("one\ntwo\n")
    common = ["extract", "--model", tiny_model_dir, "--input", tmp_path / "t.txt", "--hook", HOOKS[0],
              "--out", tmp_path / "run"]
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    for address in ("127.0.0.1:1", "auto", "ray://127.0.0.1:1"):
        started = time.monotonic()
        code, _, err = run_cli(monkeypatch, capsys, *common, "--ray", address)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"nothing listens at {address.replace('auto', '127.0.0.1:1')} (" in err and "fix --ray" in err
        assert time.monotonic() - started < 60  # the grace is 2 s; 600 s is what a refusal used to cost
    code, _, err = run_cli(monkeypatch, capsys, *common, "--ray", "somewhere")
    assert code == 2 and "'somewhere' is not an address; give HOST:PORT" in err


def test_an_address_that_may_yet_answer_is_waited_for(monkeypatch):
    """A connection that times out (a host coming up) is asked again until
    start_timeout, then fails naming --ray-start-timeout; a refusal fails
    after REFUSED_GRACE; an address that answers on the third try is taken."""
    import socket

    from actlab.runs import ray as ray_module

    clock = [0.0]
    monkeypatch.setattr(ray_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(ray_module.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    tries = []

    def connect(error):
        def create_connection(address, timeout):
            tries.append(clock[0])
            if error is None and len(tries) >= 3:
                return socket.socket()
            raise (error or TimeoutError)("timed out")
        return create_connection

    monkeypatch.setattr(ray_module.socket, "create_connection", connect(TimeoutError))
    with pytest.raises(ActlabError, match="no Ray cluster answers at h:6379 .* within 30 s.*--ray-start-timeout"):
        ray_module.wait_for_cluster("h:6379", 30)
    assert 30 <= tries[-1] <= 30.25 and len(tries) > 100
    tries.clear()
    clock[0] = 0.0
    monkeypatch.setattr(ray_module.socket, "create_connection", connect(ConnectionRefusedError))
    with pytest.raises(ActlabError, match="nothing listens at h:6379"):
        ray_module.wait_for_cluster("h:6379", 600)
    assert tries[-1] == pytest.approx(ray_module.REFUSED_GRACE, abs=0.3)
    tries.clear()
    monkeypatch.setattr(ray_module.socket, "create_connection", connect(None))
    ray_module.wait_for_cluster("h:6379", 600)
    assert len(tries) == 3


def test_local_starts_its_own_instance_whatever_ray_address_says(tmp_path, tiny_model_dir):
    """`--ray local` with RAY_ADDRESS naming a dead cluster: a new local instance
    runs the shards (ray.init(address=None) would try to join RAY_ADDRESS)."""
    import os
    import subprocess
    import sys

    (tmp_path / "t.txt").write_text("\n".join(records(8).texts).replace("\n\n", "\n") + "\n")
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", "actlab", "extract", "--model", str(tiny_model_dir), "--input",
                           str(tmp_path / "t.txt"), "--hook", HOOKS[0], "--out", str(tmp_path / "run"), "--ray",
                           "local", "--ray-start-timeout", "480", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=600)  # a busy machine starts actors slowly
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["timings"]["session_0"]["runner"] == "ray"


def test_latents_on_ray_equal_one_process(tmp_path, tiny_model_dir, local_ray):
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    saes = {"early": random_sae("blocks.0.hook_resid_post", seed=1, prepend_bos=True),
            "late": random_sae("blocks.2.hook_resid_post", arch="topk", seed=2, prepend_bos=True)}
    cfg = actlab.LatentsConfig(context=6, batch_size=4)
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(24)]
    local = actlab.latents_run(model, texts, saes, tmp_path / "local", cfg, control=RunControl(shard_size=5))
    on_ray = actlab.latents_run(model, texts, saes, tmp_path / "ray", cfg, control=RunControl(shard_size=5, runner="ray", ray=local_ray))
    same_shards(local, on_ray, [f"{name}.parquet" for name in ("latents", "top", "intervals", "histograms",
                                                               "cofiring", "logit_effects", "neighbours")])
