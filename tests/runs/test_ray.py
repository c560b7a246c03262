"""The same runs on a local Ray instance: rows equal the single-process run's,
a run started on Ray is finished by one process and vice versa, feature
statistics merge exactly, and a bad input fails with its own message."""

import json

import pyarrow.parquet as pq
import pytest

import actlab
from actlab import ActlabError, ExtractConfig
from actlab.runs import features_run, shard_name
from actlab.runs.ray import RayConfig
from conftest import TEXTS, random_sae

ray = pytest.importorskip("ray")

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module: each start costs 10-25 s here."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield RayConfig(actors=2, cpus_per_actor=1)
    ray.shutdown()


def records(n=40):
    return actlab.Records.of([f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(n)], category=[i % 3 for i in range(n)])


def same_shards(a, b, names):
    for name in names:
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name


def test_extraction_on_ray_equals_one_process(tmp_path, tiny_model_dir, local_ray):
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    cfg = ExtractConfig(HOOKS, "mean")
    local = actlab.extract_run(model, records(), tmp_path / "local", cfg, shard_size=8)
    on_ray = actlab.extract_run(model, records(), tmp_path / "ray", cfg, shard_size=8, runner="ray", ray=local_ray)
    same_shards(local, on_ray, [shard_name(i) for i in range(5)])
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (local, on_ray))
    assert a["settings"] == b["settings"] and a["n_rows"] == b["n_rows"]
    session = b["timings"]["session_0"]
    assert session["runner"] == "ray" and sum(actor["shards"] for actor in session["actors"].values()) == 5
    # a run started on Ray is finished by one process, and vice versa
    for first, second, name in (("ray", "local", "mixed1"), ("local", "ray", "mixed2")):
        path = tmp_path / name
        actlab.extract_run(model, records(), path, cfg, shard_size=8, runner=first, ray=local_ray)
        for i in (1, 3):
            (path / shard_name(i)).unlink()
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["complete"] = False
        (path / "manifest.json").write_text(json.dumps(manifest))
        actlab.extract_run(model, records(), path, cfg, shard_size=8, runner=second, ray=local_ray)
        same_shards(local, path, [shard_name(i) for i in range(5)])
        assert len(json.loads((path / "manifest.json").read_text())["timings"]) == 2


def test_features_on_ray_merge_statistics_exactly(tmp_path, tiny_model_dir, local_ray):
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    saes = {"early": random_sae("blocks.0.hook_resid_post", seed=1),
            "late": random_sae("blocks.2.hook_resid_post", arch="topk", seed=2)}
    local = features_run(model, records(), saes, tmp_path / "local", shard_size=8)
    on_ray = features_run(model, records(), saes, tmp_path / "ray", shard_size=8, runner="ray", ray=local_ray)
    same_shards(local, on_ray, ["latent_stats.parquet"] + [f"{p}-{i:05d}.parquet" for p in ("shard", "texts", "stats")
                                                           for i in range(5)])


def test_bad_input_fails_with_its_own_message(tmp_path, tiny_model_dir, local_ray):
    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    with pytest.raises(ActlabError, match="outside text"):
        actlab.extract_run(model, records(8), tmp_path / "bad", ExtractConfig(HOOKS, "pos:400"), shard_size=4,
                           runner="ray", ray=local_ray)


def test_cli_with_ray(monkeypatch, capsys, tmp_path, tiny_model_dir, local_ray):
    """`actlab extract --ray` (no address: the Ray instance this process holds) equals the single-process CLI."""
    from conftest import run_cli

    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t}) for t in records(12).texts) + "\n")
    common = ["extract", "--model", tiny_model_dir, "--input", texts, "--hook", HOOKS[1], "--shard-size", 4]
    code, _, err = run_cli(monkeypatch, capsys, *common, "--out", tmp_path / "one")
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, *common, "--out", tmp_path / "ray", "--ray", "--ray-actors", 2)
    assert code == 0, err
    assert "wrote 12 rows" in out
    same_shards(tmp_path / "one", tmp_path / "ray", [shard_name(i) for i in range(3)])
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["timings"]["session_0"]["runner"] == "ray"


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
    clean = actlab.extract_run(model, many, tmp_path / "clean", cfg, shard_size=4)
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
    on_ray = actlab.extract_run(model, many, tmp_path / "ray", cfg, shard_size=4, runner="ray", ray=local_ray)
    killer.join()
    assert killed, "no actor was killed"
    same_shards(clean, on_ray, [shard_name(i) for i in range(40)])
    assert json.loads((on_ray / "manifest.json").read_text())["n_rows"] == 160
