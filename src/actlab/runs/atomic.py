"""Atomic file writes: a file appears whole or not at all, so an interrupted
run never leaves a half-written shard that a rerun would take as done. On an
object store (a StorePath) the upload is the atomic step."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import StorePath, run_path


@contextmanager
def atomic_path(path: str | Path | StorePath) -> Iterator[Path]:
    """The one atomic writer: yields a temporary path beside `path` to write
    to; when the block succeeds it is renamed over `path` (os.replace is
    atomic on POSIX and Windows), otherwise removed. For a StorePath the
    temporary file is local and the block's success uploads it."""
    path = run_path(path)
    if isinstance(path, StorePath):
        with tempfile.TemporaryDirectory(prefix="actlab-upload-") as folder:
            local = Path(folder) / path.name
            yield local
            path.upload(local)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | Path | StorePath, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path | StorePath, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path | StorePath, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def write_parquet_atomic(path: str | Path | StorePath, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
