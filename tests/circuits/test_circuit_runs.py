"""Circuit runs (circuits/run.py): the run's node effects equal node_effects
over all pairs at once (a killed run resumes to the same), the circuit's
tables agree with its thresholds and with each other, other thresholds redo
only the circuit, the CLI end to end with a page linking a latents run's
dashboards, and bad input as one line with exit 2 and nothing written."""

import json

import numpy as np
import pytest
import torch

import actlab
from actlab import CircuitConfig, CircuitRun, circuit_run
from actlab.circuits import PairRuns, circuit_sites, node_effects
from actlab.circuits import run as circuit_runs
from actlab.patching import ioi_pairs, tokenize_pairs
from actlab.runs import RunControl

from conftest import assert_tables_close, dies_on_the_second_call, random_sae, run_cli, save_sae_lens_folder

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
CFG = CircuitConfig(method="atp", node_threshold=0.05, edge_threshold=0.005)


@pytest.fixture(scope="module")
def saes():
    return {f"r{k}": random_sae(hook, seed=k) for k, hook in enumerate(HOOKS)}


def test_run_equals_node_effects_and_resumes_after_a_kill(tiny_models, saes, tmp_path, monkeypatch):
    model = tiny_models["llama"]
    pairs = ioi_pairs(5)
    sites = circuit_sites(model, saes)
    tokens = tokenize_pairs(model.tokenizer, pairs)
    direct = [s / 5 for s in node_effects(PairRuns.of(model, tokens, sites, CFG), sites)]
    real = circuit_runs.node_effects

    monkeypatch.setattr(circuit_runs, "node_effects", dies_on_the_second_call(real))
    with pytest.raises(KeyboardInterrupt):
        circuit_run(model, pairs, tmp_path / "c", saes, CFG, RunControl(shard_size=2))
    assert sorted(p.name for p in (tmp_path / "c").glob("nodes-*")) == ["nodes-00000.parquet"]
    monkeypatch.setattr(circuit_runs, "node_effects", real)
    path = circuit_run(model, pairs, tmp_path / "c", saes, CFG, RunControl(shard_size=2))
    run = actlab.open_run(path)
    assert isinstance(run, CircuitRun) and run.manifest["n_rows"] == 5
    effects = run.node_effects().to_pylist()
    names = {s.name: k for k, s in enumerate(sites)}
    found = [torch.zeros_like(d) for d in direct]
    for row in effects:
        found[names[row["site"]]][row["position"], row["index"]] = row["effect"]
    for k in range(3):
        scale = float(direct[k].abs().max())
        np.testing.assert_allclose(found[k].numpy(), direct[k].numpy(), rtol=1e-5, atol=1e-5 * scale)

    nodes, edges, curve, graph = run.nodes().to_pandas(), run.edges().to_pandas(), run.faithfulness(), run.graph()
    assert len(nodes) == len(effects) and (nodes["rank"] == np.arange(1, len(nodes) + 1)).all()
    assert (nodes.in_circuit == (nodes.effect.abs() >= 0.05)).all() and nodes.in_circuit.sum() >= 3
    assert set(nodes.kind) == {"embedding", "latent", "error"}
    circuit = set(nodes.node[nodes.in_circuit])
    assert set(edges.upstream) <= circuit and set(edges.downstream) <= circuit | {"metric"}
    assert (edges.effect.abs() >= 0.005).all() and len(edges) > 0
    last = nodes[nodes.in_circuit & (nodes.site == "r1")]
    into_metric = edges[edges.downstream == "metric"].set_index("upstream").effect
    assert np.allclose(into_metric.loc[last.node].to_numpy(), last.effect.to_numpy())  # a last-site node's effect
    for how in ("mean", "corrupted"):
        rows = [r for r in curve.to_pylist() if r["ablation"] == how]
        sizes = [r["nodes"] for r in rows]
        assert sizes[0] == 0 and len(circuit) in sizes and sizes[-1] == 14 * (1 + 2 * 129)
        assert rows[0]["faithfulness"] == 0 and rows[-1]["faithfulness"] == pytest.approx(1, abs=1e-4)
    empty = {r["ablation"]: r["metric_empty"] for r in curve.to_pylist()}
    assert empty["corrupted"] == pytest.approx(float(run.pairs().column("metric_corrupted").to_numpy().mean()),
                                               rel=1e-4)
    assert len(graph["nodes"]) == len(circuit) and graph["tokens"][9] == " " + pairs.fields["wrong_answer"][0].strip()  # the giver
    import duckdb

    assert duckdb.sql(f"select count(*) from read_parquet('{path}/circuit/nodes.parquet')").fetchall()[0][0] == len(nodes)

    shards = {p.name: p.stat().st_mtime_ns for p in path.glob("nodes-*")}
    summed = circuit_run(model, pairs, path, saes, CircuitConfig(method="atp", aggregation="sum", node_threshold=0.1),
                         RunControl(shard_size=2))
    assert {p.name: p.stat().st_mtime_ns for p in path.glob("nodes-*")} == shards  # the node effects are kept
    again = CircuitRun.open(summed).nodes().to_pandas()
    assert again.position.isna().all() and (again.in_circuit == (again.effect.abs() >= 0.1)).all()
    per_latent = nodes.fillna({"latent": -1}).groupby(["site", "kind", "latent"]).effect.sum()
    merged = again.fillna({"latent": -1}).set_index(["site", "kind", "latent"]).effect
    assert np.allclose(merged.loc[per_latent.index].to_numpy(), per_latent.to_numpy(), rtol=1e-4, atol=1e-6)


def test_cli_end_to_end_with_a_latents_run(tiny_models, tiny_model_dir, saes, tmp_path, monkeypatch, capsys):
    folders = [save_sae_lens_folder(sae, tmp_path / name) for name, sae in saes.items()]
    latents = actlab.latents_run(tiny_models["llama"], ["The quick brown fox jumps.", "Mary gave John a book."],
                                 {str(f): actlab.load_sae(f) for f in folders}, tmp_path / "latents")
    code, stdout, stderr = run_cli(monkeypatch, capsys, "circuit", "--pairs", "ioi", "--out", tmp_path / "c",
                                   "--model", tiny_model_dir, "--device", "cpu", "--sae", folders[0], "--sae",
                                   folders[1], "--method", "atp", "--node-threshold", 0.05, "--latents", latents)
    assert code == 0, stderr
    assert "strongest of the circuit's" in stdout and "faithfulness" in stdout
    run = CircuitRun.open(tmp_path / "c")
    assert run.manifest["n_rows"] == 48 and run.settings["circuit"] == {"method": "atp"}
    page = (tmp_path / "c" / "report.html").read_text()
    latent = next(n for n in run.graph()["nodes"] if n["kind"] == "latent")
    index = 0 if latent["site"] == str(folders[0]) else 1
    assert "<svg" in page and f'href="../latents/browser/index.html#{index}/{latent["latent"]}"' in page


@pytest.mark.parametrize("args, message", [
    (["--pairs", "UNEQUAL"], "pair 'b' has 7 tokens and pair 'a' 14: a circuit needs pairs of one token length"),
    (["--pairs", "EMPTY"], "holds no pairs"),
    (["--sae", "FAR"], "reads blocks.5.hook_resid_post, a hook a circuit cannot rewrite on this model"),
    (["--method", "exact"], "unknown method 'exact'; choose one of atp, ig (--method)"),
    (["--aggregation", "mean"], "unknown aggregation 'mean'"),
])
def test_cli_bad_input_is_one_line(args, message, tiny_model_dir, tmp_path, monkeypatch, capsys):
    pairs = ioi_pairs(1)
    row = {"clean": pairs.texts[0], "corrupted": pairs.fields["corrupted"][0], "answer": pairs.fields["answer"][0],
           "wrong_answer": pairs.fields["wrong_answer"][0]}
    (tmp_path / "unequal.jsonl").write_text(json.dumps({"id": "a", **row}) + "\n" + json.dumps(
        {"id": "b", "clean": "When Mary and John went home,", "corrupted": "When Anna and John went home,",
         "answer": " Mary", "wrong_answer": " John"}) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    far = save_sae_lens_folder(random_sae("blocks.5.hook_resid_post"), tmp_path / "far")
    near = save_sae_lens_folder(random_sae(HOOKS[0]), tmp_path / "near")
    args = [a.replace("UNEQUAL", str(tmp_path / "unequal.jsonl")).replace("EMPTY", str(tmp_path / "empty.jsonl"))
            .replace("FAR", far) for a in args]
    sae = [] if "--sae" in args else ["--sae", near]
    code, _, stderr = run_cli(monkeypatch, capsys, "circuit", "--out", tmp_path / "c", "--model", tiny_model_dir,
                              "--device", "cpu", *sae, *args)
    assert code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not list((tmp_path / "c").glob("nodes-*"))


def test_the_circuit_measured_a_chunk_at_a_time_equals_all_at_once(tiny_models, saes):
    """Edges and both faithfulness curves are sums over pairs: chunks of 2
    (the run's shards) give the same circuit as all 5 pairs in one."""
    from actlab.circuits import find_circuit

    model = tiny_models["llama"]
    sites = circuit_sites(model, saes)
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(5))
    means = [s / 5 for s in node_effects(PairRuns.of(model, pairs, sites, CFG), sites)]
    whole, chunked = (find_circuit(model, pairs, sites, means, CFG, chunk) for chunk in (5, 2))
    assert whole.size == chunked.size and whole.edges.num_rows > 0
    assert_tables_close(chunked.nodes, whole.nodes, label="nodes")
    assert_tables_close(chunked.edges, whole.edges, rtol=1e-4, label="edges")
    assert_tables_close(chunked.faithfulness, whole.faithfulness, rtol=1e-4, label="faithfulness")
