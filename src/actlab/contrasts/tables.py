"""The tables of a contrast run: a shard's rows (one per text x SAE, metrics
and vectors), every row's subdomain, and the per-pair table (drift, twist,
cross-layer cosine, each metric's difference)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from ..results import column_matrix, vector_column
from .metrics import angle_deg, shape_class
from .pairs import PROMPT, Pairs
from .passes import METRICS, VECTORS, ContrastResult


def layer_of(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else -1


def shard_table(result: ContrastResult, pairs: Pairs, owners: list[int], conditions: list[str]) -> pa.Table:
    parts = []
    for sink in result.sinks:
        n = len(owners)
        columns = {"pair_id": pa.array([pairs.ids[i] for i in owners]), "pair_index": pa.array(owners, pa.int64()),
                   "domain": pa.array([pairs.domains[i] for i in owners]),
                   "condition": pa.array(conditions),
                   "layer": pa.array(np.full(n, layer_of(sink.sae.cfg.hook_name)), pa.int32()),
                   "hook": pa.array([sink.sae.cfg.hook_name] * n), "sae": pa.array([sink.name] * n),
                   "n_tokens": pa.array(result.n_tokens.numpy(), pa.int32())}
        columns.update({metric: pa.array(values, pa.float64()) for metric, values in sink.metrics.items()})
        if result.logprob is not None:
            columns["logprob"] = pa.array(result.logprob, pa.float64())
        columns["shape"] = pa.array([shape_class(s, e) for s, e in zip(sink.metrics["sphericity"],
                                                                       sink.metrics["elongation"])])
        columns.update({vector: vector_column(values) for vector, values in sink.vectors.items()})
        parts.append(pa.table(columns))
    return pa.concat_tables(parts)


def with_subdomains(table: pa.Table, pairs: Pairs) -> pa.Table:
    """The table with each row's pair's subdomain (the seed's inner `domain`;
    null where a record has none) after its domain."""
    subdomains = pairs.subdomains or [None] * len(pairs)
    column = pa.array([subdomains[i] for i in table.column("pair_index").to_pylist()], pa.string())
    if "subdomain" in table.column_names:
        table = table.drop_columns(["subdomain"])
    return table.add_column(table.column_names.index("domain") + 1, "subdomain", column)


def pair_table(table: pa.Table, conditions: list[str]) -> pa.Table:
    """Per pair and layer: centroid drift and axis twist (degrees) from the
    prompt to each continuation and between the continuations; the cosine
    between this layer's reconstruction and the previous layer's (the shared
    residual space) per condition; each metric's difference, second - first."""
    _, first, second = conditions
    condition, layer = np.asarray(table.column("condition").to_pylist()), table.column("layer").to_numpy()
    pair_index = table.column("pair_index").to_numpy()
    layers = sorted(set(layer.tolist()))

    def rows(c: str, at: int) -> np.ndarray:  # this condition's rows at this layer, in pair order
        chosen = np.flatnonzero((condition == c) & (layer == at))
        return chosen[np.argsort(pair_index[chosen], kind="stable")]

    vectors = {v: torch.from_numpy(column_matrix(table.column(v)).astype(np.float64)) for v in VECTORS}
    parts = []
    for k, at in enumerate(layers):
        index = {c: rows(c, at) for c in conditions}
        part = table.take(index[PROMPT]).select(["pair_id", "pair_index", "domain", "subdomain", "layer", "hook",
                                                 "sae"])
        columns: dict[str, np.ndarray] = {}
        for name, (u, v) in {f"drift_{first}": (PROMPT, first), f"drift_{second}": (PROMPT, second),
                             "drift_between": (first, second)}.items():
            columns[name] = angle_deg(vectors["centroid"][index[u]], vectors["centroid"][index[v]]).numpy()
            columns[name.replace("drift", "twist")] = angle_deg(vectors["axis"][index[u]], vectors["axis"][index[v]],
                                                                unsigned=True).numpy()
        for c in conditions:
            current = vectors["reconstruction"][index[c]]
            previous = vectors["reconstruction"][rows(c, layers[k - 1])] if k else None
            columns[f"cross_layer_cos_{c}"] = (torch.cosine_similarity(current, previous, dim=-1).numpy()
                                               if previous is not None else np.full(len(current), np.nan))
        columns["cross_layer_cos_diff"] = columns[f"cross_layer_cos_{second}"] - columns[f"cross_layer_cos_{first}"]
        if "logprob" in table.column_names:
            logprob = table.column("logprob").to_numpy()
            columns[f"logprob_{first}"], columns[f"logprob_{second}"] = logprob[index[first]], logprob[index[second]]
        for metric in METRICS:
            values = table.column(metric).to_numpy()
            columns[f"{metric}_diff"] = values[index[second]] - values[index[first]]
        for name, values in columns.items():
            part = part.append_column(name, pa.array(values, pa.float64()))
        if "logprob" in table.column_names:  # which continuation the model itself finds likelier
            prefers = np.where(columns[f"logprob_{first}"] >= columns[f"logprob_{second}"], first, second)
            part = part.append_column("prefers", pa.array(prefers.tolist()))
        parts.append(part)
    return pa.concat_tables(parts)
