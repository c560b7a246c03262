"""Reading texts (and optional id / label / category fields) from files."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .errors import ActlabError
from .storage import RunPath, StorePath, parquet_file, read_parquet, run_path

FORMATS = (".txt", ".jsonl", ".json", ".csv", ".parquet")
RecordsLike = Any  # what as_records takes: Records, ParquetRecords, texts, dicts, a pandas / polars / pyarrow table
OPTIONAL_FIELDS = ("id", "label", "category")


@dataclass
class Records:
    """Texts plus optional per-text fields; `lines` are 1-based source locations."""

    texts: list[str]
    fields: dict[str, list] = field(default_factory=dict)  # id / label / category
    lines: list[int] = field(default_factory=list)
    n_skipped: int = 0
    source: str | None = None  # the file read, or a name such as "builtin:categories"
    text_field: str | None = None  # the field the texts came from

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def of(cls, texts: Sequence[str], source: str | None = None, **fields: list) -> "Records":
        """Records of in-memory texts (lines count from 1)."""
        return cls(list(texts), dict(fields), list(range(1, len(texts) + 1)), source=source)

    def select(self, keep: list[int]) -> "Records":
        return replace(self, texts=[self.texts[i] for i in keep],
                       fields={k: [v[i] for i in keep] for k, v in self.fields.items()},
                       lines=[self.lines[i] for i in keep])

    def slice(self, lo: int, hi: int) -> "Records":
        """Rows [lo, hi) (a run's shard)."""
        return replace(self, texts=self.texts[lo:hi], fields={k: v[lo:hi] for k, v in self.fields.items()},
                       lines=self.lines[lo:hi])

    @property
    def field_names(self) -> list[str]:
        return sorted(self.fields)


@dataclass(frozen=True)
class FieldNames:
    """Which fields of an input file hold the text and the optional id / label / category."""

    text: str = field(default="text", metadata={"help": "Text field (jsonl, json, csv, parquet).",
                                                "flag": "--text-field"})
    id: str | None = field(default=None, metadata={"help": "Id field (default 'id' if present).",
                                                   "flag": "--id-field"})
    label: str | None = field(default=None, metadata={"help": "Label field (default 'label' if present).",
                                                      "flag": "--label-field"})
    category: str | None = field(default=None, metadata={"help": "Category field (default 'category').",
                                                         "flag": "--category-field"})

    def __post_init__(self):
        named = {role: getattr(self, role) for role in ("text", *OPTIONAL_FIELDS) if getattr(self, role) is not None}
        for role, name in named.items():
            if not isinstance(name, str) or not name.strip():
                raise ActlabError(f"the {role} field needs a name, not {name!r}", param=role)
        taken = [name for name in named.values() if list(named.values()).count(name) > 1]
        if taken:
            roles = [role for role, name in named.items() if name == taken[0]]
            raise ActlabError(f"field '{taken[0]}' is named for both {roles[0]} and {roles[1]}; give each its own",
                              param=roles[1])

    def optional(self) -> dict[str, tuple[str, bool]]:
        """role -> (column name, whether the user named it explicitly)."""
        return {role: (getattr(self, role) or role, getattr(self, role) is not None)
                for role in OPTIONAL_FIELDS}


@dataclass
class ParquetRecords:
    """A Parquet input read one row range at a time, where the rows are used:
    a run's job then carries (file, row range) to its workers instead of the
    texts, and no process holds every text. The file must be reachable at
    `location` from every worker (a shared filesystem or an object store).
    Rows are checked as they are read, with read_records's messages; empty
    texts cannot be skipped (their rows would shift), so they fail the run."""

    source: str  # the path as given, which the manifest records
    location: str  # the absolute path or URI the workers open
    text_field: str
    columns: dict[str, str]  # role -> column, for the optional fields present
    n_rows: int
    n_skipped: int = 0

    def __len__(self) -> int:
        return self.n_rows

    @property
    def field_names(self) -> list[str]:
        return sorted(self.columns)

    def slice(self, lo: int, hi: int) -> Records:
        """Rows [lo, hi), reading only the row groups that hold them."""
        file = parquet_file(run_path(self.location))
        sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
        starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        groups = [i for i in range(len(sizes)) if starts[i] < hi and starts[i + 1] > lo]
        table = file.read_row_groups(groups, columns=[self.text_field, *self.columns.values()])
        table = table.slice(lo - starts[groups[0]] if groups else 0, hi - lo)
        lines = list(range(lo + 1, hi + 1))
        name = run_path(self.source).name
        texts = table.column(self.text_field).to_pylist()
        for text, line in zip(texts, lines):
            if not isinstance(text, str):
                raise ActlabError(f"{name}: row {line}: field '{self.text_field}' is not a string")
        records = Records(texts, {role: table.column(column).to_pylist() for role, column in self.columns.items()},
                          lines, source=self.source, text_field=self.text_field)
        return _drop_empty(records, run_path(self.source), skip_empty=False)


def read_records(path: str | Path | StorePath, names: FieldNames = FieldNames(), skip_empty: bool = False,
                 by_row_range: bool = False) -> Records | ParquetRecords:
    """The texts and optional fields of an input file (a path or an
    object-store URI). by_row_range: a Parquet file (without skip_empty)
    comes back as ParquetRecords, read where its rows are used."""
    path = run_path(path)
    if by_row_range and path.suffix.lower() == ".parquet" and not skip_empty:
        return parquet_records(path, names)
    rows, lines = read_rows(path)
    records = _to_records(rows, lines, names, path.name, "row" if path.suffix in (".parquet", ".json") else "line")
    records.source, records.text_field = str(path), names.text
    return _drop_empty(records, path, skip_empty)


def parquet_records(path: RunPath, names: FieldNames) -> ParquetRecords:
    """A Parquet input checked by its schema alone (the rows are read later)."""
    import pyarrow as pa

    if not path.is_file():
        raise ActlabError(f"input file not found: {path}")
    try:
        file = parquet_file(path)
        schema, n_rows = file.schema_arrow, file.metadata.num_rows
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise ActlabError(f"{path.name}: cannot read as Parquet ({exc})") from None
    if names.text not in schema.names:
        raise ActlabError(f"{path.name}: row 1 has no field '{names.text}' (fields: {', '.join(schema.names)}); "
                          "pick one with --text-field")
    if not (pa.types.is_string(schema.field(names.text).type) or pa.types.is_large_string(
            schema.field(names.text).type)):
        raise ActlabError(f"{path.name}: row 1: field '{names.text}' is not a string")
    columns = {}
    for role, (column, explicit) in names.optional().items():
        if column in schema.names:
            columns[role] = column
        elif explicit:
            raise ActlabError(f"{path.name}: row 1 has no field '{column}' (named by --{role}-field)")
    location = str(path.resolve()) if isinstance(path, Path) else str(path)
    return ParquetRecords(str(path), location, names.text, columns, n_rows)


def read_rows(path: str | Path | StorePath) -> tuple[list, list[int]]:
    """The rows of a .txt / .jsonl / .json / .csv / .parquet file (dicts, or
    strings) and the 1-based line or row of each, for error messages."""
    path = run_path(path)
    if not path.is_file():
        raise ActlabError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ActlabError(f"cannot read '{path.name}': use one of {', '.join(FORMATS)}")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = _decode(path)
    return {".txt": _rows_txt, ".jsonl": _rows_jsonl, ".json": _rows_json, ".csv": _rows_csv}[suffix](text, path)


def _decode(path: RunPath) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ActlabError(f"{path.name}: line {line} is not valid UTF-8 (byte {exc.start}); "
                          "re-encode the file as UTF-8") from None


def _rows_txt(text: str, path: RunPath):
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [{"text": line.rstrip("\r")} for line in lines], list(range(1, len(lines) + 1))


def _rows_jsonl(text: str, path: RunPath):
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ActlabError(f"{path.name}: line {number} is not valid JSON ({exc.msg})") from None
        lines.append(number)
    return rows, lines


def _rows_json(text: str, path: RunPath):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActlabError(f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise ActlabError(f"{path.name}: expected a list of texts or of objects")
    return data, list(range(1, len(data) + 1))


def _rows_csv(text: str, path: RunPath):
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return rows, [i + 2 for i in range(len(rows))]  # line 1 is the header


def _read_parquet(path: RunPath):
    try:
        rows = read_parquet(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise ActlabError(f"{path.name}: cannot read as Parquet ({exc})") from None
    return rows, list(range(1, len(rows) + 1))


def as_records(data, names: FieldNames = FieldNames()) -> Records | ParquetRecords:
    """Records from what a user naturally passes: Records or ParquetRecords
    as they are; a list of texts; a list of dicts with the fields
    read_records reads (text, and id / label / category when every row has
    them; `names` renames them); a pandas, polars or pyarrow table (or a HF
    `datasets.Dataset`) with a text column. Anything else is a one-line
    error naming what it got. Rows count from 1 in messages."""
    if isinstance(data, (Records, ParquetRecords)):
        return data
    rows = _table_rows(data)
    if rows is None:
        if isinstance(data, (str, bytes, Path)) or not hasattr(data, "__iter__") or isinstance(data, dict):
            raise ActlabError(f"records must be a list of texts or of dicts, Records, or a pandas / polars / pyarrow "
                              f"table with a '{names.text}' column, not {_what(data)}; wrap one text as [text], "
                              "read a file with actlab.read_records(path)", param="records")
        rows = list(data)
    if all(isinstance(row, str) for row in rows):
        return Records.of(rows)
    rows = [{names.text: row} if isinstance(row, str) else row for row in rows]  # texts among dicts
    records = _to_records(rows, list(range(1, len(rows) + 1)), names, "records", "row", table=True)
    records.text_field = names.text
    return records


def _table_rows(data) -> list[dict] | None:
    """The rows of a pandas / polars / pyarrow table as dicts, or None for anything else."""
    module = type(data).__module__.split(".")[0]
    if module == "pandas" and hasattr(data, "to_dict") and hasattr(data, "columns"):
        return data.to_dict("records")
    if module == "polars" and hasattr(data, "to_dicts"):
        return data.to_dicts()
    if module == "pyarrow" and hasattr(data, "to_pylist") and hasattr(data, "schema"):
        return data.to_pylist()
    return None


def _what(value) -> str:
    """'a str', 'an int', 'a DataFrame' ..."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _to_records(rows: list, lines: list[int], names: FieldNames, name: str, what: str,
                table: bool = False) -> Records:
    """Records of rows (texts, or dicts holding names.text); messages say `name`: `what` LINE.
    table: the rows came from Python or a table, so the fix names the `names` fields, not the flags."""
    if rows and all(isinstance(r, str) for r in rows):
        rows = [{"text": r} for r in rows]
    pick = "FieldNames(text=...)" if table else "--text-field"
    texts = []
    for row, line in zip(rows, lines):
        if not isinstance(row, dict):
            shown = f" ({_what(row)})" if table else ""
            raise ActlabError(f"{name}: {what} {line}{shown} is not an object with a '{names.text}' field"
                              + (" nor a text" if table else ""), param="records" if table else None)
        if names.text not in row:
            raise ActlabError(f"{name}: {what} {line} has no field '{names.text}' "
                              f"(fields: {', '.join(map(str, row))}); pick one with {pick}",
                              param="records" if table else None)
        value = row[names.text]
        if not isinstance(value, str):
            raise ActlabError(f"{name}: {what} {line}: field '{names.text}' is not a string",
                              param="records" if table else None)
        texts.append(value)
    fields = {}
    for role, (column, explicit) in names.optional().items():
        present = [column in row for row in rows]
        if explicit and not all(present):
            line = lines[present.index(False)]
            named = f"FieldNames({role}=...)" if table else f"--{role}-field"
            raise ActlabError(f"{name}: {what} {line} has no field '{column}' (named by {named})",
                              param="records" if table else None)
        if rows and all(present):
            fields[role] = [row[column] for row in rows]
    return Records(texts, fields, lines)


def _drop_empty(records: Records, path: RunPath, skip_empty: bool) -> Records:
    empty = [i for i, t in enumerate(records.texts) if not t.strip()]
    if not empty:
        return records
    if not skip_empty:
        shown = ", ".join(str(records.lines[i]) for i in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise ActlabError(f"{path.name}: {len(empty)} empty text(s) at line/row {shown}; "
                          "remove them or pass --skip-empty")
    dropped = set(empty)
    keep = [i for i in range(len(records)) if i not in dropped]
    kept = records.select(keep)
    kept.n_skipped = len(empty)
    return kept
