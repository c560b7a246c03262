"""A real cluster shape: a Ray head and a worker node started as separate
processes on this machine (`ray start`, each node held to one CPU and a set
memory, Ray's token authentication on), and `actlab ... --ray ADDRESS` as
the driver. The runs equal single-process runs, and both nodes do shards."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import actlab
from conftest import TEXTS, assert_tables_close, random_sae, run_cli, save_sae_lens_folder

pytest.importorskip("ray")
BIN = Path(sys.executable).parent
NODE = ["--num-cpus", "1", "--memory", str(2 * 2**30), "--object-store-memory", str(100 * 2**20),
        "--disable-usage-stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_cluster(temp_dir: Path) -> None:
    """Kill this cluster's processes (those naming its temp dir, and theirs), not
    every Ray process on the machine as `ray stop` would."""
    import psutil

    ours = [p for p in psutil.process_iter(["cmdline"]) if str(temp_dir) in " ".join(p.info["cmdline"] or [])]
    family = {p.pid: p for p in ours}
    for p in ours:
        try:
            family.update({child.pid: child for child in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in family.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(family.values()), timeout=10)


@pytest.fixture(scope="module")
def two_nodes():
    """(address, environment with the cluster's token) of a head plus one worker node."""
    import ray

    if ray.is_initialized():  # another module's in-process instance
        ray.shutdown()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    # A short folder: the nodes' Unix sockets live under it, and a path of over 107 characters (pytest's
    # folders under pytest-xdist, Ray's session name, the second node's socket names) fails the worker node.
    address, temp_dir = f"127.0.0.1:{free_port()}", Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        subprocess.run([BIN / "ray", "start", "--head", "--port", address.split(":")[1], "--temp-dir", temp_dir,
                        "--include-dashboard", "false", *NODE], env=env, check=True, capture_output=True)
        subprocess.run([BIN / "ray", "start", "--address", address, *NODE], env=env, check=True,
                       capture_output=True)
        yield address, env
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def cli(env, *args):
    done = subprocess.run([BIN / "actlab", *map(str, args)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_runs_on_two_nodes_equal_one_process(monkeypatch, capsys, tmp_path, tiny_model_dir, two_nodes):
    address, env = two_nodes
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"{TEXTS[i % len(TEXTS)]} #{i}"}) + "\n" for i in range(40)))
    sae = save_sae_lens_folder(random_sae("blocks.1.hook_resid_post", seed=4), tmp_path / "sae")
    commands = {"extract": ["--hook", "blocks.0.hook_resid_post", "--hook", "blocks.2.hook_resid_post"],
                "features": ["--sae", sae, "--pooling", "all"]}
    for command, options in commands.items():
        common = [command, "--model", tiny_model_dir, "--input", texts, "--shard-size", 4, *options]
        code, _, err = run_cli(monkeypatch, capsys, *common, "--out", tmp_path / f"{command}-one")
        assert code == 0, err
        done = cli(env, *common, "--out", tmp_path / f"{command}-cluster", "--ray", address, "--ray-actors", 2)
        assert done.stderr.count("  actor ") == 2
        one, cluster = tmp_path / f"{command}-one", tmp_path / f"{command}-cluster"
        names = [f"shard-{i:05d}.parquet" for i in range(10)]
        if command == "features":
            names += ["latent_stats.parquet"] + [f"texts-{i:05d}.parquet" for i in range(10)]
        for name in names:
            assert_tables_close(pq.read_table(one / name), pq.read_table(cluster / name), label=f"{command} {name}")
        manifest = json.loads((cluster / "manifest.json").read_text())
        assert manifest["settings"] == json.loads((one / "manifest.json").read_text())["settings"]
        actors = manifest["timings"]["session_0"]["actors"].values()
        assert len({actor["node"] for actor in actors}) == 2 and sum(a["shards"] for a in actors) == 10
        assert actlab.open_run(cluster).manifest["n_rows"] == manifest["n_rows"]
