"""Paired inputs: one prompt and two continuations of it (by default a `fact`
and a `hallucination`), read from JSON arrays, JSONL, CSV or Parquet.

The seed's data files (JSON arrays of {id, domain, complexity, prompt, fact,
hallucination}, one file per domain) load unchanged: by default a record's
domain is its file's name, and an inner `domain` field is kept as
`subdomain`. A prompt that occurs more than once (across files too) is kept
once, the first time, and reported by name: its text and every file and id
it occurs at. A file with no pairs is refused, even next to good ones. Texts are prompt + separator +
continuation; the prompt alone is the third condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

from ..errors import ActlabError
from ..inputs import read_rows

BUILTIN = "builtin"  # load_pairs("builtin"): the set written for actlab, data/contrast/*.json
PROMPT = "prompt"


@dataclass(frozen=True)
class PairFields:
    """Which fields hold what, and how a continuation joins its prompt."""

    prompt: str = field(default="prompt", metadata={"help": "Field of the prompt.", "flag": "--prompt-field"})
    first: str = field(default="fact", metadata={"help": "Field of the first continuation (condition A).",
                                                 "flag": "--first-field"})
    second: str = field(default="hallucination", metadata={
        "help": "Field of the second continuation (condition B).", "flag": "--second-field"})
    id: str = field(default="id", metadata={"help": "Field of the pair id (default: file:row).", "flag": "--id-field"})
    domain: str | None = field(default=None, metadata={
        "help": "Field of the domain (default: each file's name, as in the seed's data).", "flag": "--domain-field"})
    separator: str = field(default=" ", metadata={"help": "Between the prompt and a continuation."})

    def __post_init__(self):
        if self.first == self.second:
            raise ActlabError(f"the two continuations must be different fields, not '{self.first}' twice",
                              param="second")
        for role in ("prompt", "first", "second", "id"):
            if not getattr(self, role).strip():
                raise ActlabError(f"the {role} field needs a name", param=role)


@dataclass(frozen=True)
class Duplicate:
    """A prompt that occurs more than once: kept at its first occurrence."""

    prompt: str
    occurrences: tuple[str, ...]  # "file#id" of each, the kept one first

    def describe(self, width: int = 60) -> str:
        text = self.prompt if len(self.prompt) <= width else self.prompt[:width - 3] + "..."
        return f"'{text}' ({', '.join(self.occurrences)})"

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "occurrences": list(self.occurrences)}


@dataclass
class Pairs:
    ids: list[str]
    domains: list[str]
    prompts: list[str]
    continuations: dict[str, list[str]]  # condition -> one continuation per pair
    separator: str = " "
    subdomains: list[str | None] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)  # prompts seen more than once, kept once
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def conditions(self) -> list[str]:
        return [PROMPT, *self.continuations]

    def text(self, condition: str, i: int) -> str:
        if condition == PROMPT:
            return self.prompts[i]
        return self.prompts[i] + self.separator + self.continuations[condition][i]

    def select(self, keep: Sequence[int]) -> "Pairs":
        return Pairs([self.ids[i] for i in keep], [self.domains[i] for i in keep], [self.prompts[i] for i in keep],
                     {c: [v[i] for i in keep] for c, v in self.continuations.items()}, self.separator,
                     [self.subdomains[i] for i in keep] if self.subdomains else [], [], self.sources)


def builtin_files() -> list[Path]:
    folder = resources.files("actlab").joinpath("data/contrast")
    return sorted(Path(str(folder)).glob("*.json"))


def load_pairs(paths: str | Path | Sequence[str | Path], fields: PairFields = PairFields()) -> Pairs:
    """Pairs from one or more files ("builtin": the set that ships with actlab)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = [f for p in paths for f in (builtin_files() if str(p) == BUILTIN else [Path(p)])]
    if not files:
        raise ActlabError("no pairs files given; pass --pairs FILE (or 'builtin')", param="pairs")
    out = Pairs([], [], [], {fields.first: [], fields.second: []}, fields.separator, [], [], [str(f) for f in files])
    seen: dict[str, list[str]] = {}  # prompt -> where it occurs
    for path in files:
        rows, lines = read_rows(path)
        if not rows:
            raise ActlabError(f"{path.name}: no pairs; remove it from --pairs or fill it", param="pairs")
        for row, line in zip(rows, lines):
            record = _record(row, line, path, fields)
            where = f"{path.name}#{record['id']}"
            if record["prompt"] in seen:
                seen[record["prompt"]].append(where)
                continue
            seen[record["prompt"]] = [where]
            out.ids.append(record["id"])
            out.domains.append(record["domain"])
            out.subdomains.append(record["subdomain"])
            out.prompts.append(record["prompt"])
            for condition in (fields.first, fields.second):
                out.continuations[condition].append(record[condition])
    out.duplicates = [Duplicate(prompt, tuple(where)) for prompt, where in seen.items() if len(where) > 1]
    return out


def _record(row, line: int, path: Path, fields: PairFields) -> dict:
    where = f"{path.name}: {'row' if path.suffix in ('.json', '.parquet') else 'line'} {line}"
    if not isinstance(row, dict):
        raise ActlabError(f"{where} is not an object with '{fields.prompt}', '{fields.first}' and "
                          f"'{fields.second}'")
    out = {}
    for name in (fields.prompt, fields.first, fields.second):
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            have = ", ".join(map(str, row))
            raise ActlabError(f"{where}: '{name}' is {'missing' if name not in row else 'empty or not text'} "
                              f"(fields: {have}); name the fields with --prompt-field / --first-field / "
                              "--second-field")
        out[name] = value.strip()
    out["prompt"] = out.pop(fields.prompt) if fields.prompt != "prompt" else out["prompt"]
    out["id"] = str(row.get(fields.id, f"{path.stem}:{line}"))
    if fields.domain is None:
        inner = row.get("domain")
        out["domain"], out["subdomain"] = path.stem, None if inner is None else str(inner)
    elif fields.domain not in row:
        raise ActlabError(f"{where} has no field '{fields.domain}' (named as the domain field)")
    else:
        out["domain"], out["subdomain"] = str(row[fields.domain]), None
    return out

