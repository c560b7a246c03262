"""One driver per run folder: `run.lock` names its holder (host, pid, a
token) and a heartbeat, refreshed while the run goes on. A second driver
refuses in one line, naming the holder. A lock is stale, and taken over,
when its holder is a dead process on this host, or its heartbeat is older
than STALE_AFTER_S (a holder on another host that died).

Locally the lock file is created exclusively (O_EXCL). An object store has
no exclusive create here: the lock is written, then read back, and the
driver whose token is there holds it (two drivers starting within the same
moment could both write; the later one wins and the earlier one refuses)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import ActlabError
from ..storage import RunPath
from .atomic import write_json_atomic

LOCK = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # a heartbeat this old means its holder is gone


@contextmanager
def run_lock(out: RunPath) -> Iterator[None]:
    """Hold `out`'s lock for the block (the folder is created if need be)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "heartbeat": time.time()}
    _take(path, holder)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, holder, stop), daemon=True, name="actlab-run-lock")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        if _read(path).get("token") == holder["token"]:
            path.unlink()


def _take(path: RunPath, holder: dict) -> None:
    existing = _read(path)
    if existing and not _stale(existing):
        raise ActlabError(f"{path.parent} is being written by another run (pid {existing.get('pid')} on "
                          f"{existing.get('host')}, since {existing.get('started')}); wait for it to finish, or "
                          f"delete {path} if that process is gone", param="out")
    if existing:
        path.unlink()  # stale: its holder is gone
    if isinstance(path, Path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another driver took it in between
            return _take(path, holder)
        with os.fdopen(fd, "w") as fh:
            json.dump(holder, fh)
        return None
    write_json_atomic(path, holder)
    if _read(path).get("token") != holder["token"]:
        return _take(path, holder)
    return None


def _read(path: RunPath) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (json.JSONDecodeError, FileNotFoundError):
        return {}  # half written or just released: treat as free


def _stale(lock: dict) -> bool:
    if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
        return not _alive(lock["pid"])
    return time.time() - float(lock.get("heartbeat", 0)) > STALE_AFTER_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _heartbeat(path: RunPath, holder: dict, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        if _read(path).get("token") != holder["token"]:
            return  # taken over (deleted by hand): nothing to refresh
        holder["heartbeat"] = time.time()
        write_json_atomic(path, holder)
