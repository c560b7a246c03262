"""Circuit runs: `circuit_run` writes one, `CircuitRun` reads it.

    manifest.json              settings (model, SAEs, method, the input), shards, timings
    pairs-NNNNN.parquet        the shard's pairs with their clean and corrupted metrics (as actlab patch's)
    nodes-NNNNN.parquet        site, position, index, effect_sum: every node's effect summed over the
                               shard's pairs (index: a latent, d_sae the error term, 0 an embedding)
    circuit/nodes.parquet      node, site, hook, layer, kind, position, latent, effect, rank, in_circuit
    circuit/edges.parquet      upstream, downstream, effect (edges between circuit nodes and into "metric")
    circuit/faithfulness.parquet  ablation (mean, corrupted), nodes, metric, metric_model, metric_empty,
                               faithfulness
    circuit/graph.json         the circuit as a graph (nodes, edges, tokens, curve, the settings)

The node effects are the sharded, resumable stage (a shard is done when its
nodes file exists; --ray runs them on a cluster). The circuit is then
found in the calling process from the merged effects (sums over shards
are exact): thresholds, edges, the faithfulness curve. A rerun with other
thresholds or aggregation keeps the node effects and redoes only that.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..engine import OnBatch
from ..errors import ActlabError
from ..inputs import Records
from ..models import Model, ModelSpec
from ..patching.pairs import TokenPair, load_prompt_pairs, tokenize_pairs
from ..patching.run import pairs_table
from ..results import ExtractStats, summary_html
from ..runs.atomic import write_json_atomic, write_parquet_atomic
from ..runs.job import RecordsJob, ShardWriter
from ..runs.manifest import Run, RunKind, finish_run, input_settings, model_settings, register_run_kind
from ..runs.runner import RunControl, run_job
from ..runs.shards import read_shards, shard_name
from ..saes import default_saes
from ..saes.features import name_saes
from ..storage import RunPath, StorePath, run_path
from .config import CircuitConfig
from .graph import Circuit, find_circuit
from .nodes import PairRuns, Site, check_aligned, circuit_sites, node_effects

FORMAT = "actlab.circuit"
CIRCUIT = "circuit"  # the folder the circuit is written into
CIRCUIT_SHARD_SIZE = 16  # pairs per shard


@dataclass
class CircuitJob(RecordsJob):
    """A circuit run's node stage as a job (actlab.runs.job): shards of
    pairs, each one's node effects summed."""

    cfg: CircuitConfig
    shard_size: int = CIRCUIT_SHARD_SIZE
    saes: object = None  # SAE objects, paths / release ids, a mapping, or None: the model's default SAEs
    FORMAT: ClassVar[str] = FORMAT
    MARKER: ClassVar[str] = "nodes"

    def worker(self, model: Model) -> tuple[Model, list[Site], list[TokenPair]]:
        """The model, its sites and every pair's tokens (refused before any shard when one is bad)."""
        named = name_saes(self.saes if self.saes is not None else default_saes(model.name), model.device)
        sites = circuit_sites(model, named)
        pairs = tokenize_pairs(model.tokenizer, self.records)
        check_aligned(pairs)
        return model, sites, pairs

    def settings(self, model: Model, worker) -> dict:
        _, sites, _ = worker
        return {"model": model_settings(model), "circuit": self.cfg.settings(),
                "saes": {s.name: s.sae.cfg.settings() for s in sites if s.sae is not None},
                "shard_size": self.shard_size, "input": input_settings(self.records)}

    def shard_writer(self, worker, on_batch: OnBatch | None = None) -> ShardWriter:
        model, sites, pairs = worker

        def process(index: int, lo: int, hi: int) -> ExtractStats:
            started = time.perf_counter()
            runs = PairRuns.of(model, pairs[lo:hi], sites, self.cfg)
            metrics = list(zip(runs.base.clean.tolist(), runs.base.corrupted.tolist()))
            write_parquet_atomic(self.out / shard_name(index, "pairs"),
                                 pairs_table(model, self.records, pairs, lo, hi, metrics))
            write_parquet_atomic(self.out / shard_name(index, "nodes"), _sums_table(sites, node_effects(runs, sites)))
            n_tokens = sum(len(p.clean) for p in pairs[lo:hi])
            if on_batch:
                on_batch(hi - lo, n_tokens)
            return ExtractStats(hi - lo, n_tokens, 0, time.perf_counter() - started)
        return process

    def complete(self, manifest: dict, totals: ExtractStats, session: dict, **extras) -> dict:
        return finish_run(self.out, manifest, self.plan.names(), self.plan.n_rows, session)

    def find(self, worker, cfg: CircuitConfig) -> Circuit:
        """The circuit from the complete run's node effects, thresholds etc. from cfg."""
        model, sites, pairs = worker
        run = CircuitRun.open(self.out)
        length = len(pairs[0].clean)
        means = [torch.zeros(length, site.width, device=model.device) for site in sites]
        effects = run.node_effects()
        where = {site.name: k for k, site in enumerate(sites)}
        for name, position, index, effect in zip(*(effects.column(c).to_pylist()
                                                   for c in ("site", "position", "index", "effect"))):
            means[where[name]][position, index] = effect
        return find_circuit(model, pairs, sites, means, cfg, self.shard_size)


def _sums_table(sites: list[Site], sums: list[torch.Tensor]) -> pa.Table:
    names, positions, indices, values = [], [], [], []
    for site, total in zip(sites, sums):
        nonzero = total.nonzero()  # (n, 2): position, index
        names += [site.name] * len(nonzero)
        positions += nonzero[:, 0].tolist()
        indices += nonzero[:, 1].tolist()
        values += total[nonzero[:, 0], nonzero[:, 1]].double().tolist()
    return pa.table({"site": pa.array(names, pa.string()), "position": pa.array(positions, pa.int32()),
                     "index": pa.array(indices, pa.int32()), "effect_sum": pa.array(values, pa.float64())})


class CircuitRun(Run):
    """A circuit run read back: every node's mean effect, the circuit's
    nodes and edges, its faithfulness curve, the pairs."""

    FORMAT: ClassVar[str] = FORMAT

    def pairs(self) -> pa.Table:
        """pair, id, the texts, their tokens, answer_token, wrong_token, metric_clean, metric_corrupted."""
        return read_shards(self.path, self.manifest["shards"], "pairs")

    def node_effects(self) -> pa.Table:
        """site, position, index, effect: every node's effect per position, averaged over the pairs (nonzero only)."""
        sums = read_shards(self.path, self.manifest["shards"])
        total = sums.group_by(["site", "position", "index"], use_threads=False).aggregate([("effect_sum", "sum")])
        mean = pc.divide(total.column("effect_sum_sum"), float(self.manifest["n_rows"]))
        return total.drop(["effect_sum_sum"]).append_column("effect", mean)

    def _derived(self, name: str) -> Path:
        path = self.path / CIRCUIT / name
        if not path.exists():
            raise ActlabError(f"{self.path} has no {CIRCUIT}/{name}: run `actlab circuit` on it again to find the "
                              "circuit")
        return path

    def nodes(self) -> pa.Table:
        """node, site, hook, layer, kind, position, latent, effect, rank, in_circuit (every node with an effect)."""
        return pq.read_table(self._derived("nodes.parquet"))

    def edges(self) -> pa.Table:
        """upstream, downstream, effect: edges between the circuit's nodes, and into "metric"."""
        return pq.read_table(self._derived("edges.parquet"))

    def faithfulness(self) -> pa.Table:
        """ablation, nodes, metric, metric_model, metric_empty, faithfulness: the curves against circuit size."""
        return pq.read_table(self._derived("faithfulness.parquet"))

    def graph(self) -> dict:
        return json.loads(self._derived("graph.json").read_text())

    def to_arrow(self) -> pa.Table:
        return self.nodes()

    def _repr_html_(self) -> str:
        graph = self.graph() if (self.path / CIRCUIT / "graph.json").exists() else {}
        return summary_html("CircuitRun", self.summary_rows() + [
            ("pairs", str(self.manifest["n_rows"])), ("SAEs", ", ".join(self.settings["saes"])),
            ("method", self.settings["circuit"]["method"]),
            ("circuit", f"{len(graph.get('nodes', []))} nodes, {len(graph.get('edges', []))} edges" if graph else
             "not found yet")])


register_run_kind(RunKind(FORMAT, "a circuit run", "circuit", CircuitRun, derived=(CIRCUIT,)))


def circuit_run(model: "Model | ModelSpec | str", pairs: Records | str | Path, out_dir: str | Path | StorePath,
                saes=None, cfg: CircuitConfig | None = None, control: RunControl | None = None) -> RunPath:
    """Sparse feature circuit of the pairs (a pairs file, "ioi", or Records
    from actlab.patching.load_prompt_pairs) over `saes` (None: the model's
    default SAEs): node effects shard by shard (resumable; on Ray with
    control.runner="ray"), then the circuit in this process: nodes and
    edges above cfg's thresholds and the faithfulness curve, in RUN/circuit."""
    cfg = cfg or CircuitConfig()
    records = pairs if isinstance(pairs, Records) else load_prompt_pairs(pairs)
    run = control or RunControl()
    job = CircuitJob(records, run_path(out_dir), cfg, run.shards(CIRCUIT_SHARD_SIZE), saes)
    if run.runner != "ray" and not isinstance(model, Model):
        model = ModelSpec.of(model).load()
    run_job(model, job, run)
    loaded = model if isinstance(model, Model) else ModelSpec.of(model).load()
    write_circuit(job, job.worker(loaded), cfg)
    return job.out


def write_circuit(job: CircuitJob, worker, cfg: CircuitConfig) -> None:
    """RUN/circuit: found from the node effects unless already there with these thresholds."""
    folder = job.out / CIRCUIT
    graph_file = folder / "graph.json"
    if graph_file.exists() and json.loads(graph_file.read_text()).get("selection") == cfg.selection():
        return
    if graph_file.exists():
        graph_file.unlink()  # the circuit is redone: no graph until its tables are written
    model, sites, pairs = worker
    circuit = job.find(worker, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    first = job.records.slice(0, 1)
    tokens = model.token_strings([pairs[0].clean])
    nodes = circuit.nodes.filter(circuit.nodes.column("in_circuit")).drop(["in_circuit"]).to_pylist()
    graph = {"selection": cfg.selection(), "method": cfg.settings(), "tokens": tokens,
             "example": {"clean": first.texts[0], "corrupted": first.fields["corrupted"][0]},
             "sites": [{"name": s.name, "hook": s.hook, "d_sae": s.sae.cfg.d_sae if s.sae is not None else None}
                       for s in sites],
             "nodes": nodes, "edges": circuit.edges.to_pylist(), "faithfulness": circuit.faithfulness.to_pylist()}
    for name, table in (("nodes", circuit.nodes), ("edges", circuit.edges), ("faithfulness", circuit.faithfulness)):
        write_parquet_atomic(folder / f"{name}.parquet", table)
    write_json_atomic(graph_file, graph)  # last: its presence says the circuit is complete
