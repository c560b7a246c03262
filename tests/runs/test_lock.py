"""One driver per run folder: a second driver (another process) refuses in
one line naming the holder, locally, from the CLI and on object storage; a
stale lock (a dead process on this host, or an old heartbeat from another
host) is taken over; the lock goes when the run ends, even by an error."""

import json
import socket
import subprocess
import sys
import time

import pytest

import actlab
from actlab import ActlabError, ExtractConfig
from actlab.runs.lock import LOCK, STALE_AFTER_S, run_lock
from actlab.storage import run_path
from conftest import TEXTS, run_cli

HOOK = "blocks.1.hook_resid_post"
HOLDER = """
import sys, time
from actlab.runs.lock import run_lock
from actlab.storage import run_path
with run_lock(run_path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def holding(out):
    """Another process that holds `out`'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def extract(model, out):
    return actlab.extract_run(model, actlab.Records.of(TEXTS), out, ExtractConfig([HOOK]))


def test_a_second_driver_refuses_in_one_line(monkeypatch, capsys, tmp_path, tiny_models, tiny_model_dir):
    proc = holding(tmp_path / "run")
    try:
        with pytest.raises(ActlabError, match=rf"is being written by another run \(pid {proc.pid} on "
                                              rf"{socket.gethostname()}, since .*\); wait for it"):
            extract(tiny_models["llama"], tmp_path / "run")
        (tmp_path / "t.txt").write_text("one\ntwo\n")
        code, _, err = run_cli(monkeypatch, capsys, "extract", "--model", tiny_model_dir, "--input",
                               tmp_path / "t.txt", "--hook", HOOK, "--out", tmp_path / "run")
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"pid {proc.pid}" in err
    finally:
        proc.kill()
        proc.wait()
    # its holder is gone: the lock is stale and taken over
    path = extract(tiny_models["llama"], tmp_path / "run")
    assert actlab.open_run(path).manifest["complete"] and not (path / LOCK).exists()


def test_stale_locks_are_taken_over(tmp_path, tiny_models):
    model = tiny_models["llama"]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout),
                                                   "heartbeat": time.time()}))
    assert actlab.open_run(extract(model, tmp_path / "a")).manifest["complete"]
    (tmp_path / "b").mkdir()
    elsewhere = {"host": "another-node", "pid": 1, "started": "then"}
    (tmp_path / "b" / LOCK).write_text(json.dumps({**elsewhere, "heartbeat": time.time() - STALE_AFTER_S - 1}))
    assert actlab.open_run(extract(model, tmp_path / "b")).manifest["complete"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / LOCK).write_text(json.dumps({**elsewhere, "heartbeat": time.time()}))  # alive elsewhere
    with pytest.raises(ActlabError, match="pid 1 on another-node"):
        extract(model, tmp_path / "c")


def test_the_lock_goes_with_the_run_even_on_error(tmp_path, tiny_models):
    with pytest.raises(ActlabError, match="outside text"):
        actlab.extract_run(tiny_models["llama"], actlab.Records.of(TEXTS), tmp_path / "bad",
                           ExtractConfig([HOOK], "pos:400"))
    assert not (tmp_path / "bad" / LOCK).exists()
    with run_lock(run_path(tmp_path / "x")):
        assert json.loads((tmp_path / "x" / LOCK).read_text())["host"] == socket.gethostname()
    assert not (tmp_path / "x" / LOCK).exists()


def test_a_second_driver_refuses_on_object_storage(tmp_path, tiny_models, s3_bucket):
    proc = holding(f"{s3_bucket}/locked")
    try:
        with pytest.raises(ActlabError, match=rf"pid {proc.pid} on {socket.gethostname()}"):
            extract(tiny_models["llama"], f"{s3_bucket}/locked")
    finally:
        proc.kill()
        proc.wait()
    path = extract(tiny_models["llama"], f"{s3_bucket}/locked")
    assert actlab.open_run(path).manifest["complete"] and not (path / LOCK).exists()
