"""A run's merged summary as the tables a user reads (pure functions):

    latents      sae, latent, count, frequency, mean, max, windows
    top          sae, latent, rank, value, window, text_id, start, position
    intervals    sae, latent, decile, rank, value, window, text_id, start, position
    histograms   sae, latent, bin, lower, upper, count
    cofiring     sae, latent, rank, other, jaccard

`frequency` is active tokens over the run's tokens (BOS left out), `mean`
the mean over active tokens, `windows` the windows where the latent is
active. Interval deciles split a latent's seeded sample of active windows
into tenths by value (lowest first) and keep the entries of smallest
priority in each; co-firing is the Jaccard index of two latents' active
tokens, estimated from their MinHash slots (the share of equal slots).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .config import DECILES, HASHES
from .summary import EMPTY, HIST_EDGES, LatentSummary, to_tables
from .windows import WINDOW_BITS

COFIRING_CELLS = 1 << 22  # pairs held at once while counting co-firing: chunk x active latents


def _names(sae: str, n: int) -> pa.Array:
    return pa.array([sae] * n, pa.string())


def window_columns(keys: np.ndarray, content: int) -> dict[str, pa.Array]:
    """window, text_id, start of window keys."""
    return {"window": pa.array(keys, pa.int64()), "text_id": pa.array(keys >> WINDOW_BITS, pa.int64()),
            "start": pa.array((keys & ((1 << WINDOW_BITS) - 1)) * content, pa.int64())}


def latents_table(summary: LatentSummary, sae: str, n_tokens: int) -> pa.Table:
    count, total = summary.count.numpy(), summary.sum.numpy()
    return pa.table({"sae": _names(sae, len(count)), "latent": pa.array(np.arange(len(count)), pa.int32()),
                     "count": count, "frequency": count / max(n_tokens, 1),
                     "mean": np.where(count > 0, total / np.maximum(count, 1), 0.0),
                     "max": summary.max.numpy(), "windows": summary.windows.numpy()})


def top_table(summary: LatentSummary, sae: str, content: int) -> pa.Table:
    top = to_tables(summary, sae)["top"]
    keys = top.column("window").to_numpy()
    return pa.table({"sae": top.column("sae"), "latent": top.column("latent"), "rank": top.column("rank"),
                     "value": top.column("value"), **window_columns(keys, content),
                     "position": pa.array(top.column("position").to_numpy(), pa.int32())})


def intervals_table(summary: LatentSummary, sae: str, per_decile: int, content: int) -> pa.Table:
    sample = to_tables(summary, sae)["sample"]
    latent = sample.column("latent").to_numpy().astype(np.int64)
    value, key = sample.column("value").to_numpy(), sample.column("window").to_numpy()
    priority, position = sample.column("priority").to_numpy(), sample.column("position").to_numpy()
    order = np.lexsort((key, value, latent))  # by latent, then value, then key
    latent, value, key, priority, position = (a[order] for a in (latent, value, key, priority, position))
    n = np.bincount(latent, minlength=summary.d_sae)
    first = np.concatenate([[0], np.cumsum(n)])[latent]
    decile = (np.arange(len(latent)) - first) * DECILES // np.maximum(n[latent], 1)
    order = np.lexsort((key, priority, decile, latent))  # within a decile, smallest priority first
    latent, decile, value, key, position = (a[order] for a in (latent, decile, value, key, position))
    group = latent * DECILES + decile
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    keep = rank < per_decile
    return pa.table({"sae": _names(sae, int(keep.sum())), "latent": pa.array(latent[keep], pa.int32()),
                     "decile": pa.array(decile[keep], pa.int16()), "rank": pa.array(rank[keep], pa.int16()),
                     "value": pa.array(value[keep], pa.float32()), **window_columns(key[keep], content),
                     "position": pa.array(position[keep], pa.int32())})


def histograms_table(summary: LatentSummary, sae: str) -> pa.Table:
    hist = to_tables(summary, sae)["hist"]
    bins = hist.column("bin").to_numpy().astype(np.int64)
    lower, upper = HIST_EDGES[bins].astype(np.float64), HIST_EDGES[bins + 1].astype(np.float64)
    lower[bins == 0], upper[bins == len(HIST_EDGES) - 2] = 0.0, np.inf
    return pa.table({"sae": hist.column("sae"), "latent": hist.column("latent"), "bin": hist.column("bin"),
                     "lower": lower, "upper": upper, "count": hist.column("count")})


def cofiring_table(summary: LatentSummary, sae: str, k: int) -> pa.Table:
    """Each latent's k others with the most equal MinHash slots (ties: lower
    latent first). Pairs are counted by a sparse product in chunks of latents,
    so work follows the pairs that share a slot and memory stays O(chunk x d_sae)."""
    minhash = summary.minhash.numpy()
    active = np.flatnonzero(minhash[:, 0] != EMPTY)
    columns: dict[str, list[np.ndarray]] = {"latent": [], "rank": [], "other": [], "equal": []}
    if len(active) >= 2 and k > 0:
        slots = minhash[active]  # (n, M)
        # one column per distinct (slot, hash): latents sharing a column agree on that slot
        column = np.empty(slots.shape, dtype=np.int64)  # (n, M): the column of each latent's slot value
        offset = 0
        for m in range(HASHES):
            values, column[:, m] = np.unique(slots[:, m], return_inverse=True)
            column[:, m] += offset
            offset += len(values)
        rows = np.repeat(np.arange(len(active)), HASHES)
        incidence = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, column.reshape(-1))),
                                  shape=(len(active), offset))
        transposed = incidence.T.tocsr()
        chunk = max(16, COFIRING_CELLS // len(active))
        for lo in range(0, len(active), chunk):
            shared = (incidence[lo:lo + chunk] @ transposed).tocoo()  # equal slots of each pair sharing one
            row, col, equal = shared.row + lo, shared.col, shared.data
            off = row != col
            row, col, equal = row[off], col[off], equal[off]
            order = np.lexsort((active[col], -equal, row))
            row, col, equal = row[order], col[order], equal[order]
            starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]) if len(row) else np.zeros(0, np.int64)
            rank = np.arange(len(row)) - np.repeat(starts, np.diff(np.r_[starts, len(row)]))
            keep = rank < k
            for name, values in (("latent", active[row[keep]]), ("rank", rank[keep]), ("other", active[col[keep]]),
                                 ("equal", equal[keep])):
                columns[name].append(values)
    joined = {name: np.concatenate(parts) if parts else np.zeros(0, np.int64) for name, parts in columns.items()}
    return pa.table({"sae": _names(sae, len(joined["latent"])), "latent": pa.array(joined["latent"], pa.int32()),
                     "rank": pa.array(joined["rank"], pa.int16()), "other": pa.array(joined["other"], pa.int32()),
                     "jaccard": pa.array(joined["equal"] / HASHES, pa.float32())})
