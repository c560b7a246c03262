"""The analyses a latents run answers from its summaries, against the same
analyses of a dense windows x latents matrix of per-window maxima built from
the run's every nonzero code (--keep-tokens); concept search against plain
loops over the top windows; both from the CLI."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import actlab
from actlab import LatentsConfig
from actlab.analyses.features import comparison_table, most_frequent, most_selective, strongest
from actlab.latents.analysis import SearchConfig, analyze_latents, concept_latents
from conftest import TEXTS, random_sae, run_cli

HOOK = "blocks.1.hook_resid_post"
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models):
    texts = [" ".join(TEXTS[(i + k) % len(TEXTS)] for k in range(2)) for i in range(12)]
    saes = {"a": random_sae(HOOK, seed=2), "b": random_sae(HOOK, arch="topk", seed=5)}
    path = actlab.latents_run(tiny_models["llama"], texts, saes, tmp_path_factory.mktemp("analysis") / "run",
                              LatentsConfig(context=8, top=60, keep_tokens=True))
    return actlab.open_run(path)


def window_maxima(run, sae) -> tuple[np.ndarray, np.ndarray]:
    """(windows x latents) per-window maxima from every nonzero code, and the window keys."""
    codes = pa.concat_tables([pq.read_table(p) for p in sorted(run.path.glob("codes-*.parquet"))]).to_pandas()
    codes = codes[codes.sae == sae]
    keys = np.sort(pa.concat_tables([pq.read_table(p) for p in run.path.glob("windows-*.parquet")])
                   .column("window").to_numpy())
    W = np.zeros((len(keys), run.settings["saes"][sae]["d_sae"]))
    np.maximum.at(W, (np.searchsorted(keys, codes.window.to_numpy()), codes.latent.to_numpy()), codes.value)
    return W, keys


def test_analyses_equal_the_dense_matrix(run):
    tables = analyze_latents(run, THRESHOLD, k=6)
    dense = {}
    for sae in run.saes:
        W, keys = window_maxima(run, sae)
        assert run.manifest["n_windows"] == len(keys)
        dense[sae] = W
        mine = [r for r in tables["strongest"] if r["sae"] == sae]
        reference = strongest(W, 6)
        assert [r["latent"] for r in mine] == [r["latent"] for r in reference]
        assert [r["max"] for r in mine] == pytest.approx([r["max"] for r in reference], rel=1e-5)
        assert [r["window"] for r in mine] == [int(keys[r["text"]]) for r in reference]
        frequent = [r for r in tables["frequent"] if r["sae"] == sae]
        assert [(r["latent"], r["count"]) for r in frequent] == [(r["latent"], r["count"])
                                                                 for r in most_frequent(W, 6)]
        selective = [r for r in tables["selective"] if r["sae"] == sae]
        assert [(r["latent"], r["count"]) for r in selective] == [(r["latent"], r["count"])
                                                                  for r in most_selective(W, THRESHOLD, 6)]
    reference = comparison_table(dense, None, THRESHOLD, 6)
    for row in tables["comparison"]:
        assert {sae: row[sae] for sae in run.saes} == {sae: " ".join(map(str, ids))
                                                     for sae, ids in reference[row["row"]].items()}


def a_word(run, sae) -> str:
    """A word some top window of the SAE peaks on."""
    for latent in range(128):
        top = run.top(sae, latent).to_pandas()
        for tokens, position in zip(top.tokens, top.position):
            if tokens[position].strip().isalpha():
                return tokens[position].strip()
    raise AssertionError("no window peaks on a word")


def test_concept_search_equals_a_loop(run):
    concept = "zzz " + a_word(run, "a")
    found = concept_latents(run, concept, SearchConfig(top=1000)).to_pandas()
    words = {w.strip().lower() for w in concept.split()}
    expected = []
    for sae in run.saes:
        for latent in range(128):
            top = run.top(sae, latent).to_pandas()
            if top.empty:
                continue
            hits = sum(tokens[p].strip().lower() in words for tokens, p in zip(top.tokens, top.position))
            if hits:
                expected.append((hits / len(top), float(top.value.max()), sae, latent, hits))
    expected.sort(key=lambda e: (-e[0], -e[1]))
    assert [(r.sae, r.latent, r.hits) for r in found.itertuples()] == [(e[2], e[3], e[4]) for e in expected]
    assert len(found) > 0


def test_analyze_and_search_from_the_cli(run, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "analyze", run.path, "--threshold", THRESHOLD)
    assert code == 0, err
    assert "comparison" in out and (run.path / "analysis" / "strongest.parquet").exists()
    strongest_table = pq.read_table(run.path / "analysis" / "strongest.parquet").to_pandas()
    assert set(strongest_table.sae) == {"a", "b"} and "window" in strongest_table
    token = a_word(run, "b")
    code, out, err = run_cli(monkeypatch, capsys, "latents", "search", run.path, token, "--sae", "b", "--top", 3)
    assert code == 0 and f"latents about '{token}'" in out, err
    code, out, err = run_cli(monkeypatch, capsys, "latents", "search", run.path, "qqqqxyz")
    assert code == 0 and "no latent of" in out
    code, _, err = run_cli(monkeypatch, capsys, "latents", "search", run.path, "x", "--top", 0)
    assert code == 2 and "top must be at least 1" in err
