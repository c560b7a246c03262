"""Where runs and inputs live: a local or shared folder, or an object store.

A path is a pathlib.Path, or for a URI (s3://bucket/run, gs://bucket/run, or
any other scheme pyarrow.fs knows) a StorePath: the part of pathlib's
interface actlab uses, over pyarrow's filesystem for that URI (its
credentials and endpoint from the usual environment: AWS_* variables with
AWS_ENDPOINT_URL for an S3-compatible server, GOOGLE_APPLICATION_CREDENTIALS).
A StorePath's file is written by atomic_path like a local one: written to a
local temporary file, then uploaded in one PUT (or one completed multipart
upload), which an object store makes visible whole or not at all.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import ActlabError

URI = re.compile(r"^([a-z][a-z0-9+.-]+):/+(.*)$")  # also a URI that pathlib collapsed (s3:/bucket/run)
STORE_FIX = "check the bucket and the storage credentials (AWS_* with AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS)"


def first_sentence(exc: BaseException) -> str:
    return str(exc).splitlines()[0].split(". ")[0].rstrip(".")


def storage_errors(method):
    """A StorePath operation whose storage error (no bucket, no access, no
    endpoint) is a one-line ActlabError naming the URI and the fix."""
    @functools.wraps(method)
    def reported(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (OSError, pa.ArrowException) as exc:
            raise ActlabError(f"{self}: {first_sentence(exc)}; {STORE_FIX}") from None
    return reported


class StorePath:
    """A file or folder on a pyarrow filesystem, addressed by its URI."""

    def __init__(self, uri: str, filesystem: pafs.FileSystem | None = None):
        scheme, rest = URI.match(uri).groups()
        self.scheme, self.path = scheme, rest.rstrip("/")
        self._fs = filesystem

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            try:
                self._fs, _ = pafs.FileSystem.from_uri(str(self))
            except (OSError, pa.ArrowException) as exc:
                raise ActlabError(f"cannot open {self}: {first_sentence(exc)}; {STORE_FIX}") from None
        return self._fs

    def __truediv__(self, name: str) -> "StorePath":
        return StorePath(f"{self}/{name}", self._fs)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, StorePath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> "StorePath":
        return StorePath(f"{self.scheme}://{self.path.rsplit('/', 1)[0]}", self._fs)

    @storage_errors
    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    @storage_errors
    def iterdir(self) -> list["StorePath"]:
        found = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return [self / info.base_name for info in found]

    @storage_errors
    def rmtree(self) -> None:
        self.fs.delete_dir(self.path)

    @storage_errors
    def read_parquet(self, **options) -> pa.Table:
        return pq.read_table(self.path, filesystem=self.fs, **options)

    def glob(self, pattern: str) -> list["StorePath"]:
        """Children matching `pattern` (one level, as the run layer uses it)."""
        return [child for child in self.iterdir() if fnmatch.fnmatch(child.name, pattern)]

    @storage_errors
    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        self.fs.create_dir(self.path, recursive=parents)

    @storage_errors
    def open(self, mode: str = "rb"):
        """A binary file object to read (the only mode an object store offers here)."""
        if mode != "rb":
            raise ValueError("a StorePath opens for reading ('rb'); writes go through actlab.runs.atomic")
        return self.fs.open_input_file(self.path)

    @storage_errors
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    @storage_errors
    def unlink(self) -> None:
        self.fs.delete_file(self.path)

    @storage_errors
    def upload(self, local: Path) -> None:
        """A local file to this path, visible whole or not at all."""
        pafs.copy_files(str(local), self.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)


RunPath = Path | StorePath


def run_path(path: str | Path | StorePath) -> RunPath:
    """A folder or file: a StorePath for a URI, else a local Path."""
    if isinstance(path, StorePath):
        return path
    text = str(path)
    found = URI.match(text)
    if found is None:
        return Path(text)
    return Path("/" + found.group(2)) if found.group(1) == "file" else StorePath(text)


def remove_tree(path: RunPath) -> None:
    if isinstance(path, StorePath):
        path.rmtree()
    else:
        shutil.rmtree(path)


def read_parquet(path: RunPath, **options) -> pa.Table:
    """A Parquet file, local or in an object store (options: pyarrow.parquet.read_table's)."""
    if isinstance(path, StorePath):
        return path.read_parquet(**options)
    return pq.read_table(path, **options)


def parquet_file(path: RunPath) -> pq.ParquetFile:
    """A Parquet file opened for its metadata and row groups, local or in an object store."""
    return pq.ParquetFile(path.open() if isinstance(path, StorePath) else path)


def parquet_rows(path: RunPath) -> int:
    return parquet_file(path).metadata.num_rows
