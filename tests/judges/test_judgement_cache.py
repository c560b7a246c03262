"""The one judgement cache: complete saves only are read, in order, and a
save cut short (its marker never written) is overwritten by the next."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from actlab.judges.cache import JudgementCache


def rows(*values):
    return pa.table({"v": pa.array(list(values), pa.int64())})


def test_complete_saves_are_read_in_order_and_a_cut_save_is_replaced(tmp_path):
    cache = JudgementCache.of(tmp_path, "k", marker="done")
    assert cache.read("done") is None and cache.read("detail") is None
    for n in range(3):
        cache.save({"done": rows(n), "detail": rows(10 * n, 10 * n + 1)})
    assert sorted(p.name for p in cache.folder.iterdir())[:3] == [f"detail-0000{n}.parquet" for n in range(3)]
    # a save cut short: its detail written, its marker not
    pq.write_table(rows(99), cache.folder / "detail-00003.parquet")
    assert cache.read("done").column("v").to_pylist() == [0, 1, 2]
    assert cache.read("detail").column("v").to_pylist() == [0, 1, 10, 11, 20, 21]
    cache.save({"done": rows(3), "detail": rows(30)})
    assert cache.read("detail").column("v").to_pylist() == [0, 1, 10, 11, 20, 21, 30]
    # a gap (an older layout saved chunk 4 of 5 but not chunk 3): nothing is overwritten
    pq.write_table(rows(5), cache.folder / "done-00005.parquet")
    cache.save({"done": rows(6)})
    assert cache.read("done").column("v").to_pylist() == [0, 1, 2, 3, 5, 6]
    assert cache.read("done", columns=["v"]).num_rows == 6
    cache.record_settings({"a": 1})
    cache.record_settings({"a": 2})  # written once
    assert json.loads((cache.folder / "settings.json").read_text()) == {"a": 1}
