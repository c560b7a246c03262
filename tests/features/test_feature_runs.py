"""Feature runs on disk: round trip, statistics, resume, readable by DuckDB."""

import duckdb
import pyarrow.parquet as pq
import pytest
import torch

from actlab import ActlabError
from actlab.inputs import Records
from actlab import ExtractConfig
from actlab.features import FeatureRun, features_run
from actlab.runs import shard_name
from actlab.features import run as runs

from conftest import TEXTS, random_sae, rel_error
from actlab.runs import RunControl


def records(n=30):
    texts = [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(n)]
    return Records(texts, {"category": [f"c{i % 3}" for i in range(n)]}, list(range(1, n + 1)))


def saes():
    return {"early": random_sae("blocks.0.hook_resid_post", seed=1),
            "late": random_sae("blocks.2.hook_resid_post", arch="topk", seed=2)}


@pytest.mark.parametrize("pooling", ["last", "all"])
def test_round_trip_equals_in_memory(tmp_path, tiny_models, pooling):
    model = tiny_models["llama"]
    recs = records()
    run = features_run(model, recs, saes(), tmp_path / "run", ExtractConfig(pooling=pooling), control=RunControl(shard_size=8))
    on_disk = FeatureRun.open(run)
    in_memory = model.features(recs.texts, saes(), pooling=pooling, max_batch_tokens=10**6)
    assert on_disk.names == ["early", "late"]
    assert on_disk.metadata["fields"]["category"] == recs.fields["category"]
    for name in on_disk.names:
        assert rel_error(on_disk.dense(name), in_memory.dense(name)) < 1e-5
        disk, mem = on_disk.latent_stats[name], in_memory.latent_stats[name]
        # same statistics up to features that sit at zero within rounding
        assert (disk.count - mem.count).abs().max() <= 1
        assert torch.allclose(disk.sum, mem.sum, rtol=1e-4, atol=1e-4)
        assert torch.allclose(disk.max, mem.max, rtol=1e-5, atol=1e-5)
        # texts share prefixes, so maxima tie across rows: check the argmax holds the max
        dense = on_disk.dense(name)
        active = torch.nonzero(disk.argmax >= 0).flatten()
        assert torch.allclose(dense[disk.argmax[active], active], disk.max[active])
    if pooling == "all":
        assert torch.equal(on_disk.offsets, in_memory.offsets)


def test_sparse_store_is_queryable(tmp_path, tiny_models):
    run = features_run(tiny_models["llama"], records(), saes(), tmp_path / "run", control=RunControl(shard_size=8))
    feats = FeatureRun.open(run)
    counts = duckdb.sql(f"select sae, latent, count(*) as n from '{run}/shard-*.parquet' "
                        "group by all order by sae, latent").fetchall()
    for sae, latent, n in counts:
        assert feats.latent_stats[sae].count[latent] == n
    by_category = duckdb.sql(
        f"select t.category, count(*) from '{run}/shard-*.parquet' f "
        f"join '{run}/texts-*.parquet' t using (text_id) group by 1").fetchall()
    assert sum(n for _, n in by_category) == sum(len(s.values) for s in feats.sparse.values())


def test_interrupted_features_run_resumes(tmp_path, tiny_models, monkeypatch):
    model = tiny_models["llama"]
    recs = records()
    clean = features_run(model, recs, saes(), tmp_path / "clean", control=RunControl(shard_size=8))
    real_write = runs.write_parquet_atomic
    calls = []

    def dying(path, table):
        calls.append(path)
        if len(calls) == 7:  # inside the third shard
            raise KeyboardInterrupt
        real_write(path, table)

    monkeypatch.setattr(runs, "write_parquet_atomic", dying)
    with pytest.raises(KeyboardInterrupt):
        features_run(model, recs, saes(), tmp_path / "resumed", control=RunControl(shard_size=8))
    monkeypatch.setattr(runs, "write_parquet_atomic", real_write)
    with pytest.raises(ActlabError, match="incomplete"):
        FeatureRun.open(tmp_path / "resumed")
    resumed = features_run(model, recs, saes(), tmp_path / "resumed", control=RunControl(shard_size=8))
    for name in ["latent_stats.parquet"] + [shard_name(i) for i in range(4)]:
        assert pq.read_table(resumed / name).equals(pq.read_table(clean / name)), name


def test_sparse_is_small(tmp_path, tiny_models):
    run = features_run(tiny_models["llama"], records(), saes(), tmp_path / "run", control=RunControl(shard_size=64))
    feats = FeatureRun.open(run)
    nnz = sum(len(s.values) for s in feats.sparse.values())
    assert nnz < 0.5 * 2 * 30 * 128  # far fewer coordinates than dense entries
