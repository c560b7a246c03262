"""Fingerprints: short stable keys for cached steps, in the style of HF
`datasets`: a step is keyed by the key of what it starts from, its name and
version, and the arguments that differ from their defaults, so adding an
argument with a default keeps every existing key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from ..storage import StorePath, run_path

FINGERPRINT_CHARS = 16


def fingerprint(*parts: Any) -> str:
    """A 16-hex-digit key of JSON-able parts (other values by their str)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:FINGERPRINT_CHARS]


def step_fingerprint(previous: str | None, name: str, version: int | str, args: Mapping[str, Any],
                     defaults: Mapping[str, Any] | None = None) -> str:
    """The key of a step: what it starts from (`previous`, a fingerprint or
    None), its name and version, and its arguments other than the defaults."""
    defaults = defaults or {}
    changed = {key: value for key, value in args.items() if key not in defaults or defaults[key] != value}
    return fingerprint(previous, name, version, changed)


def file_sha256(path: str | Path | StorePath) -> str:
    """The full sha256 of a file's bytes, local or in an object store (an input's identity in a manifest)."""
    digest = hashlib.sha256()
    with run_path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
