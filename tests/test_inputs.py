"""Reading texts from every supported format, and the errors for bad files."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actlab import ActlabError
from actlab.inputs import FieldNames, read_records

ROWS = [{"text": "alpha", "id": "a1", "label": 1, "category": "x"},
        {"text": "beta gamma", "id": "b2", "label": 0, "category": "y"}]


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.fixture
def files(tmp_path):
    import csv

    csv_path = tmp_path / "in.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "in.parquet")
    return {
        "txt": write(tmp_path, "in.txt", "alpha\nbeta gamma\n"),
        "jsonl": write(tmp_path, "in.jsonl", "\n".join(json.dumps(r) for r in ROWS) + "\n"),
        "json": write(tmp_path, "in.json", json.dumps(ROWS)),
        "csv": csv_path,
        "parquet": tmp_path / "in.parquet",
    }


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "json", "csv", "parquet"])
def test_formats(files, fmt):
    records = read_records(files[fmt])
    assert records.texts == ["alpha", "beta gamma"]
    if fmt != "txt":
        assert records.fields["id"] == ["a1", "b2"]
        assert records.fields["category"] == ["x", "y"]


def test_custom_field_names(tmp_path):
    path = write(tmp_path, "c.jsonl", '{"prompt": "p1", "kind": "k"}\n{"prompt": "p2", "kind": "j"}\n')
    records = read_records(path, FieldNames(text="prompt", category="kind"))
    assert records.texts == ["p1", "p2"] and records.fields["category"] == ["k", "j"]


def test_empty_texts_named_or_skipped(tmp_path):
    path = write(tmp_path, "e.txt", "one\n\ntwo\n   \nthree\n")
    with pytest.raises(ActlabError, match=r"2 empty text\(s\) at line/row 2, 4; .*--skip-empty"):
        read_records(path)
    records = read_records(path, skip_empty=True)
    assert records.texts == ["one", "two", "three"] and records.n_skipped == 2


@pytest.mark.parametrize("name, content, message", [
    ("bad.txt", b"fine\n\xff\xfe broken\n", "line 2 is not valid UTF-8"),
    ("bad.jsonl", '{"text": "a"}\n{"text": \n', "line 2 is not valid JSON"),
    ("nofield.jsonl", '{"text": "a"}\n{"body": "b"}\n', "line 2 has no field 'text'"),
    ("notstr.jsonl", '{"text": 5}\n', "field 'text' is not a string"),
    ("bad.json", '{"a": 1, "b": 2}', "expected a list"),
    ("data.xml", "<x/>", "use one of"),
])
def test_bad_files(tmp_path, name, content, message):
    with pytest.raises(ActlabError, match=message):
        read_records(write(tmp_path, name, content))


def test_missing_named_field_and_file(tmp_path, files):
    with pytest.raises(ActlabError, match="no field 'group'"):
        read_records(files["jsonl"], FieldNames(category="group"))
    with pytest.raises(ActlabError, match="input file not found"):
        read_records(tmp_path / "nope.txt")


def test_parquet_by_row_range_equals_reading_it_whole(tmp_path):
    """ParquetRecords reads only the row groups a range needs; any range equals
    the same rows of the whole file read at once."""
    from actlab.inputs import ParquetRecords

    rows = [{"body": f"text number {i}", "id": f"r{i}", "category": i % 4} for i in range(30)]
    path = tmp_path / "many.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    names = FieldNames(text="body")
    whole = read_records(path, names)
    lazy = read_records(path, names, by_row_range=True)
    assert isinstance(lazy, ParquetRecords) and len(lazy) == 30 and lazy.field_names == whole.field_names
    for lo, hi in [(0, 7), (5, 16), (14, 15), (20, 30), (0, 30)]:
        part, expected = lazy.slice(lo, hi), whole.slice(lo, hi)
        assert (part.texts, part.fields, part.lines) == (expected.texts, expected.fields, expected.lines)
    assert isinstance(read_records(path, names, skip_empty=True, by_row_range=True), type(whole))
    assert isinstance(read_records(write(tmp_path, "t.jsonl", '{"text": "a"}\n'), by_row_range=True), type(whole))


def test_parquet_by_row_range_errors(tmp_path):
    path = tmp_path / "gaps.parquet"
    pq.write_table(pa.table({"text": ["fine", None, "", "ok"]}), path, row_group_size=2)
    lazy = read_records(path, by_row_range=True)
    assert lazy.slice(3, 4).texts == ["ok"]
    with pytest.raises(ActlabError, match="row 2: field 'text' is not a string"):
        lazy.slice(0, 2)
    with pytest.raises(ActlabError, match=r"1 empty text\(s\) at line/row 3"):
        lazy.slice(2, 4)
    with pytest.raises(ActlabError, match="no field 'body'.*--text-field"):
        read_records(path, FieldNames(text="body"), by_row_range=True)
    with pytest.raises(ActlabError, match="no field 'group'"):
        read_records(path, FieldNames(category="group"), by_row_range=True)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(ActlabError, match="field 'text' is not a string"):
        read_records(tmp_path / "ints.parquet", by_row_range=True)


USER_ROWS = [{"id": "a", "text": "The cat sat.", "label": 1, "category": "x"},
        {"id": "b", "text": "Dogs bark loudly.", "label": 0, "category": "y"}]


def test_what_a_user_passes_equals_the_file_read(tmp_path):
    """Texts, dicts, pandas, polars, pyarrow and a HF Dataset give the records read_records gives for
    the same rows in a file; anything else is one line naming what it got."""
    import datasets
    import pandas as pd
    import polars as pl

    from actlab.inputs import Records, as_records

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in USER_ROWS))
    expected = read_records(path)
    for given in (USER_ROWS, pd.DataFrame(USER_ROWS), pl.DataFrame(USER_ROWS), pa.Table.from_pylist(USER_ROWS),
                  datasets.Dataset.from_list(USER_ROWS), iter(USER_ROWS)):
        records = as_records(given)
        assert (records.texts, records.fields, records.lines) == (expected.texts, expected.fields, expected.lines), \
            type(given)
    texts = as_records(["one", "two"])
    assert texts.texts == ["one", "two"] and texts.fields == {} and texts.lines == [1, 2]
    assert as_records(pd.DataFrame({"body": ["t"]}), FieldNames(text="body")).texts == ["t"]
    mixed = as_records(["one", {"text": "two", "id": "b"}])  # texts among dicts; an id only where every row has one
    assert mixed.texts == ["one", "two"] and mixed.fields == {}
    same = Records.of(["x"])
    assert as_records(same) is same
    for given, message in (("one text", "not a str; wrap one text as \\[text\\]"),
                           (tmp_path / "rows.jsonl", "not a PosixPath; .* actlab.read_records\\(path\\)"),
                           (42, "not an int"), ({"text": "t"}, "not a dict"),
                           ([{"body": "t"}], "records: row 1 has no field 'text' \\(fields: body\\); pick one with "
                                             "FieldNames\\(text=...\\)"),
                           (["fine", 3], "records: row 2 \\(an int\\) is not an object with a 'text' field nor a text"),
                           ([{"text": "t"}, 7], "records: row 2 \\(an int\\) is not an object"),
                           ([{"text": 5}], "records: row 1: field 'text' is not a string"),
                           (pd.DataFrame({"texts": ["t"]}), "row 1 has no field 'text' \\(fields: texts\\)")):
        with pytest.raises(ActlabError, match=message) as caught:
            as_records(given)
        assert "\n" not in str(caught.value) and caught.value.param == "records"
    with pytest.raises(ActlabError, match="row 2 has no field 'tag' \\(named by FieldNames\\(label=...\\)\\)"):
        as_records([{"text": "a", "tag": 1}, {"text": "b"}], FieldNames(label="tag"))
