"""Run kinds and their manifests.

Every run directory holds `manifest.json`: its kind ("format"), the settings
its rows depend on (a resumed run must match them), whether it is complete,
its shards, and timings. A run kind is registered once with its reader, the
command that starts it and what later stages derive from it; `open_run`
reads any complete run through its kind's reader.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from ..errors import ActlabError
from ..models import DEFAULT_DEVICE, load_run_model
from ..registry import Registry
from ..results import Tabular
from ..storage import RunPath, StorePath, remove_tree, run_path
from ..version import VERSION
from .atomic import write_json_atomic
from .fingerprint import file_sha256, fingerprint
from .lock import LOCK

if TYPE_CHECKING:
    import pyarrow as pa

    from ..inputs import ParquetRecords, Records
    from ..models import Model

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
OUTPUT_PATTERNS = ("*.parquet", "*.safetensors", "*.png", "report.html")  # what actlab writes in a run folder


def input_settings(records: Records | ParquetRecords) -> dict:
    """The input as a manifest records it: its source (and the file's sha256
    and text field), its size and its optional fields."""
    info: dict = {}
    if records.source is not None:
        info["path"] = records.source
        if run_path(records.source).is_file():
            info["sha256"] = file_sha256(records.source)
            info["text_field"] = records.text_field
    return dict(info, n_texts=len(records), fields=records.field_names)


def model_settings(model: "Model") -> dict:
    return {"id": model.name, "weights_sha256": model.weight_hash, "architecture": model.architecture,
            "n_layers": model.n_layers, "d_model": model.d_model, "dtype": model.dtype}


class Run(Tabular):
    """A complete run on disk, of one kind (a subclass: ActivationRun,
    FeatureRun, TraitRun, ...). One way to open any of them:
    `Kind.open(path)`, or `actlab.open_run(path)`, which picks the kind from
    the manifest. A kind names the manifest format it reads (FORMAT) and its
    main table (`to_arrow`); `to_pandas` and `to_polars` come with it. A
    kind that loads more than its manifest at opening overrides `open`."""

    FORMAT: ClassVar[str] = ""  # the manifest's "format" this kind reads
    path: RunPath
    manifest: dict

    def __init__(self, *args, **kwargs):
        raise TypeError(f"open a run with {type(self).__name__}.open(path) or actlab.open_run(path)")

    @classmethod
    def open(cls, path: str | Path | StorePath) -> "Run":
        """The complete run at `path` (a folder or an object-store URI), or a
        one-line error naming what is wrong and the command that resumes it."""
        run = object.__new__(cls)
        run.path, run.manifest = cls.located(path)
        return run

    @classmethod
    def located(cls, path: str | Path | StorePath) -> tuple[RunPath, dict]:
        """The folder at `path` and its manifest, checked to be a complete run
        of this kind (for a kind whose `open` loads more)."""
        folder = run_path(path)
        return folder, read_manifest(folder, cls.FORMAT or None)

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    def summary_rows(self) -> list[tuple[str, str]]:
        """What a notebook shows of the run before its kind's own rows."""
        return [("run", str(self.path)), ("model", self.settings["model"]["id"])]

    def model(self, name: str | None = None, device: str = DEFAULT_DEVICE) -> "Model":
        """The run's model (or `name`), refused when its weights differ from the run's."""
        return load_run_model(self.settings["model"], name, device)

    def to_arrow(self) -> "pa.Table":
        """The run's main table (each kind says which)."""
        raise ActlabError(f"{type(self).__name__} has no main table; read its files with pyarrow")


@dataclass(frozen=True)
class RunKind:
    format: str  # the manifest's "format"
    what: str  # "an activations run", for messages
    command: str  # the actlab command that starts or resumes one
    reader: type[Run]  # the kind's Run subclass: reader.open(path) opens a complete run
    derived: tuple[str, ...] = ()  # folders later stages write into the run
    # Settings added after a kind's first runs, with the value those runs had
    # implicitly (nested like the settings): an older run missing one resumes
    # when the new value is that default, and fingerprints leave defaults out.
    added_settings: Mapping[str, Any] = field(default_factory=dict)


RUN_KINDS: Registry[RunKind] = Registry("run kind", hint=" (import the package that defines it, e.g. `import actlab`)")


def register_run_kind(kind: RunKind) -> RunKind:
    if kind.reader.FORMAT != kind.format:
        raise ValueError(f"{kind.reader.__name__}.FORMAT is '{kind.reader.FORMAT}', not the kind's '{kind.format}'")
    return RUN_KINDS.register(kind.format, kind)


def start_run(out: RunPath, format: str, settings: dict, overwrite: bool = False) -> dict:
    """The manifest of a new run in `out`, or of the run already there when
    its settings are the same (resuming); other settings are refused unless
    overwrite, which also removes what later stages derived from the old run."""
    kind = RUN_KINDS.pick(format)
    path = out / MANIFEST
    settings = json.loads(json.dumps(settings))  # as it reads back from disk
    if path.exists() and not overwrite:
        existing = json.loads(path.read_text())
        check_format_version(existing, out)
        before = with_defaults(existing.get("settings", {}), kind.added_settings)
        differing = [key for key in settings if before.get(key) != settings[key]]
        if existing.get("format") != format:
            raise ActlabError(f"{out} holds {_kind_phrase(existing.get('format'))}, not {kind.what}; "
                              "pass --overwrite to replace it or choose another --out", param="overwrite")
        if differing:
            raise ActlabError(f"{out} holds a run with other settings ({', '.join(differing)}); "
                              "pass --overwrite to replace it or choose another --out", param="overwrite")
        if before != existing.get("settings"):  # an older run: record the defaults it had implicitly
            existing["settings"] = before
            write_json_atomic(path, existing)
        return existing
    if out.exists() and any(p.name != LOCK for p in out.iterdir()) and not path.exists() and not overwrite:
        raise ActlabError(f"{out} exists and is not an actlab run; choose another --out or pass --overwrite",
                          param="overwrite")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_outputs(out)
    manifest = {"format": format, "format_version": FORMAT_VERSION, "actlab_version": VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "settings": settings, "fingerprint": settings_fingerprint(kind, settings), "complete": False}
    write_json_atomic(path, manifest)
    return manifest


def check_format_version(manifest: dict, run: RunPath) -> None:
    """Refuse, in one line, a run written by a newer actlab than this one reads."""
    version = manifest.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ActlabError(f"{run} was written by a newer actlab ({manifest.get('actlab_version', '?')}, run format "
                          f"{version}; this actlab {VERSION} reads format {FORMAT_VERSION} and older); upgrade "
                          "actlab (pip install -U actlab) or choose another --out", param="out")


def with_defaults(settings: dict, defaults: Mapping[str, Any]) -> dict:
    """settings with each missing (nested) entry of `defaults` filled in."""
    out = dict(settings)
    for key, default in defaults.items():
        if key not in out:
            out[key] = json.loads(json.dumps(default))
        elif isinstance(default, Mapping) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], default)
    return out


def without_defaults(settings: dict, defaults: Mapping[str, Any]) -> dict:
    """settings less every (nested) entry equal to its added-setting default."""
    out = {}
    for key, value in settings.items():
        default = defaults.get(key, _NONE)
        if isinstance(default, Mapping) and isinstance(value, dict):
            out[key] = without_defaults(value, default)
        elif default is _NONE or json.loads(json.dumps(default)) != value:
            out[key] = value
    return out


_NONE = object()


def settings_fingerprint(kind: RunKind, settings: dict) -> str:
    """The run's key: its kind and settings, added settings at their defaults
    left out (so a new setting keeps every older run's key)."""
    return fingerprint(kind.format, without_defaults(settings, kind.added_settings))


def _kind_phrase(format: str | None) -> str:
    return RUN_KINDS[format].what if format in RUN_KINDS else f"a '{format}' run"


def finish_run(out: RunPath, manifest: dict, shards: list[str], n_rows: int, session: dict | None = None,
               **extra) -> dict:
    """Mark the run complete (the manifest is written last, atomically)."""
    if session is not None:
        sessions = manifest.setdefault("timings", {})
        sessions[f"session_{len(sessions)}"] = session
    manifest.update(complete=True, shards=shards, n_rows=n_rows, **extra)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def remove_outputs(out: RunPath) -> None:
    """What actlab wrote in a run folder: shards, tables, plots, the report,
    and every later stage's folder, which would otherwise outlive the run it
    came from (vectors steering a regenerated run, say). Other files stay."""
    for pattern in OUTPUT_PATTERNS:
        for stale in out.glob(pattern):
            stale.unlink()
    for folder in sorted({name for kind in RUN_KINDS.values() for name in kind.derived}):
        if (out / folder).is_dir():
            remove_tree(out / folder)


def read_manifest(path: str | Path | StorePath, format: str | None = None) -> dict:
    """A complete run's manifest (of kind `format`, when given), or a one-line
    error naming what is wrong and the command that starts or resumes it."""
    run = run_path(path)
    file = run / MANIFEST
    expected = RUN_KINDS.get(format) if format else None
    what = expected.what if expected else "an actlab run"
    if not file.exists():
        command = f"`actlab {expected.command}`" if expected else "an actlab command"
        raise ActlabError(f"{run} is not {what} (no {MANIFEST}); start one with {command}")
    manifest = json.loads(file.read_text())
    check_format_version(manifest, run)
    if format and manifest.get("format") != format:
        raise ActlabError(f"{file} is {_kind_phrase(manifest.get('format'))}, not {what}")
    if not manifest.get("complete"):
        command = RUN_KINDS[manifest["format"]].command if manifest.get("format") in RUN_KINDS else "actlab"
        raise ActlabError(f"run {run} is incomplete; rerun the same `actlab {command}` command to resume it")
    return manifest


def open_run(path: str | Path | StorePath) -> Run:
    """Any complete run (a folder or an object-store URI), as its kind's typed run object."""
    manifest = read_manifest(path)
    return RUN_KINDS.pick(manifest.get("format")).reader.open(path)
