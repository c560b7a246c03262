"""From node effects to a circuit: nodes above the node threshold, the
edges between them (edges.py) above the edge threshold, and the
faithfulness curve (faithfulness.py), as the tables a circuit run writes.

A node is (site, position, index): index j < d_sae a latent, j = d_sae the
error term, the embeddings' one node index 0; with aggregation "sum" the
position is None and the node's effect sums its positions' effects (Marks
et al.'s aggregation="sum"), its edges likewise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa
import torch

from ..hooks import forward_order
from ..patching.pairs import TokenPair
from .config import ABLATIONS, CircuitConfig
from .edges import edge_effects
from .faithfulness import ablated_metrics, ablation_values, curve, curve_sizes
from .nodes import PairRuns, Site

METRIC = "metric"  # the node every last-site node's edge ends at
Node = tuple[int, "int | None", int]  # (site index, position or None, index within the site's width)


def node_id(sites: Sequence[Site], node: Node) -> str:
    """'resid_post-7@5:123' (latent 123 at position 5), '...@5:err', 'embed@3'; no '@p' when summed over positions."""
    k, position, index = node
    site = sites[k]
    where = "" if position is None else f"@{position}"
    if site.sae is None:
        return f"{site.name}{where}"
    return f"{site.name}{where}:{'err' if index == site.sae.cfg.d_sae else index}"


def aggregate(means: Sequence[torch.Tensor], cfg: CircuitConfig) -> dict[Node, float]:
    """Every node with a nonzero mean effect, from per-site (T, width) means."""
    out: dict[Node, float] = {}
    for k, effects in enumerate(means):
        if cfg.aggregation == "sum":
            summed = effects.sum(0)
            for index in summed.nonzero().flatten().tolist():
                out[k, None, index] = float(summed[index])
        else:
            for position, index in effects.nonzero().tolist():
                out[k, position, index] = float(effects[position, index])
    return out


@dataclass
class Circuit:
    """The circuit's tables: nodes (every node with an effect, in_circuit
    marking the circuit's), edges (between circuit nodes, and into the
    metric) and the faithfulness curve."""

    nodes: pa.Table
    edges: pa.Table
    faithfulness: pa.Table
    size: int  # nodes in the circuit


def find_circuit(model, pairs: Sequence[TokenPair], sites: Sequence[Site], means: Sequence[torch.Tensor],
                 cfg: CircuitConfig, chunk: int) -> Circuit:
    """The circuit of node effects `means` (per site, (T, width), averaged
    over the pairs): its edges and faithfulness curves measured on the
    pairs `chunk` at a time (each chunk's runs in memory, not all pairs')."""
    effects = aggregate(means, cfg)
    ranked = sorted(effects, key=lambda n: -abs(effects[n]))
    chosen = [n for n in ranked if abs(effects[n]) >= cfg.node_threshold]
    budget, length = cfg.batch_tokens(model), len(pairs[0].clean)
    downstream = {k: [n for n in chosen if n[0] == k] for k in range(1, len(sites))}
    downstream = {k: nodes for k, nodes in downstream.items() if nodes and any(n[0] == k - 1 for n in chosen)}
    n_all = length * sum(site.width for site in sites)

    def keeps_of(n: int) -> list[torch.Tensor]:
        keeps = [torch.full((length, site.width), n >= n_all, device=model.device) for site in sites]
        for k, position, index in ranked[:n]:
            keeps[k][slice(None) if position is None else position, index] = True
        return keeps

    circuits = {n: keeps_of(n) for n in curve_sizes(len(ranked), len(chosen), n_all)}
    found = {k: 0.0 for k in downstream}  # edges into each downstream node, summed over pairs
    metrics = {how: dict.fromkeys(circuits, 0.0) for how in ABLATIONS}  # summed over pairs
    totals: list[tuple] = [(0.0, 0.0)] * len(sites)  # the clean runs' latents and error terms, summed over pairs
    full = 0.0
    for lo in range(0, len(pairs), chunk):
        part = pairs[lo:lo + chunk]
        runs = PairRuns.of(model, part, sites, cfg)
        full += float(runs.base.clean.sum())
        for k, nodes in downstream.items():
            found[k] = found[k] + edge_effects(model, part, runs, sites, k, [(n[1], n[2]) for n in nodes], budget)
        _add(metrics["corrupted"], ablated_metrics(model, part, sites, ablation_values(runs, sites, "corrupted"),
                                                   circuits, budget), len(part))
        for k, values in enumerate(ablation_values(runs, sites, "mean")):  # the chunk's means, weighted
            totals[k] = tuple(total + value * len(part) for total, value in zip(totals[k], values))
    means_of_clean = [tuple(value / len(pairs) for value in total) for total in totals]
    for lo in range(0, len(pairs), chunk):  # mean ablation needs every pair's clean run first
        part = pairs[lo:lo + chunk]
        _add(metrics["mean"], ablated_metrics(model, part, sites, means_of_clean, circuits, budget), len(part))
    rows = [row for how in ABLATIONS for row in curve(how, {n: m / len(pairs) for n, m in metrics[how].items()},
                                                      full / len(pairs))]
    edges = [(n, METRIC, effects[n]) for n in chosen if n[0] == len(sites) - 1]
    for k, nodes in downstream.items():
        weights = found[k] / len(pairs)  # (downstream, T, width of site k - 1)
        if cfg.aggregation == "sum":
            weights = weights.sum(1, keepdim=True)
        for d, node in enumerate(nodes):
            for up in (n for n in chosen if n[0] == k - 1):
                weight = float(weights[d, 0 if up[1] is None else up[1], up[2]])
                if abs(weight) >= cfg.edge_threshold:
                    edges.append((up, node, weight))
    return Circuit(_node_table(sites, effects, ranked, set(chosen)), _edge_table(sites, edges),
                   pa.Table.from_pylist(rows), len(chosen))


def _add(total: dict[int, float], means: dict[int, float], weight: int) -> None:
    for n, value in means.items():
        total[n] += value * weight


def _node_table(sites: Sequence[Site], effects: dict[Node, float], ranked: list[Node], chosen: set[Node]) -> pa.Table:
    def kind(node: Node) -> str:
        site = sites[node[0]]
        return "embedding" if site.sae is None else "error" if node[2] == site.sae.cfg.d_sae else "latent"

    def layer(site: Site) -> int | None:
        block = forward_order(site.hook)[0]
        return block if block >= 0 else None  # the embeddings: no block

    return pa.table({
        "node": pa.array([node_id(sites, n) for n in ranked], pa.string()),
        "site": pa.array([sites[n[0]].name for n in ranked], pa.string()),
        "hook": pa.array([sites[n[0]].hook for n in ranked], pa.string()),
        "layer": pa.array([layer(sites[n[0]]) for n in ranked], pa.int32()),
        "kind": pa.array([kind(n) for n in ranked], pa.string()),
        "position": pa.array([n[1] for n in ranked], pa.int32()),
        "latent": pa.array([n[2] if kind(n) == "latent" else None for n in ranked], pa.int32()),
        "effect": pa.array([effects[n] for n in ranked], pa.float32()),
        "rank": pa.array(range(1, len(ranked) + 1), pa.int32()),
        "in_circuit": pa.array([n in chosen for n in ranked], pa.bool_()),
    })


def _edge_table(sites: Sequence[Site], edges: list[tuple[Node | str, Node | str, float]]) -> pa.Table:
    name = lambda n: n if isinstance(n, str) else node_id(sites, n)  # noqa: E731
    return pa.table({
        "upstream": pa.array([name(u) for u, _, _ in edges], pa.string()),
        "downstream": pa.array([name(d) for _, d, _ in edges], pa.string()),
        "effect": pa.array([w for _, _, w in edges], pa.float32()),
    }, schema=pa.schema([("upstream", pa.string()), ("downstream", pa.string()), ("effect", pa.float32())]))
