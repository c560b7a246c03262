"""Per-latent summaries of SAE codes that merge exactly.

A LatentSummary is what a latents pass keeps on the device, what one shard
writes, and what the whole run ends with; memory is O(d_sae x (top + sample
+ bins + hashes)), whatever the corpus size:

    count, sum, max, windows   (d_sae,)    active tokens, their sum and max, active windows
    hist                       (d_sae, B)  active values in log-spaced bins (HIST_EDGES)
    top_*                      (d_sae, K)  the K windows with the largest maximum (value desc, key asc)
    sample_*                   (d_sae, S)  the S active windows of smallest priority mix64(seed, latent, key)
    minhash                    (d_sae, M)  per slot, the smallest hash of a token where the latent is active

Every part is a sum, a max, a min or the first entries under a strict total
order, so merge(a, b) equals the summary of a's and b's windows together,
whatever the split into batches, shards or runners. A window's maximum
(value) and its position come with its key in top_* and sample_*; an empty
entry has value 0 and key EMPTY (sample priority EMPTY). After a merge top_*
and sample_* have their full width, filled or not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch

from .config import HASHES, LatentsConfig

EMPTY = torch.iinfo(torch.int64).max
HIST_EDGES = (10.0 ** (np.arange(-32, 33) / 8)).astype(np.float32)  # 1e-4 .. 1e4, 8 bins per decade
N_BINS = len(HIST_EDGES) - 1  # below 1e-4 counts in bin 0, above 1e4 in the last
HASH_CHUNK = 16  # MinHash slots computed at once (bounds the (nonzeros, slots) buffer)
MERGE_ROWS = 2048  # latents merged at once (bounds the sorts' temporaries)


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


MIX1, MIX2, GOLDEN = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB), _signed(0x9E3779B97F4A7C15)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 (wrapping products, logical shifts), cut to 62 bits (>= 0)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * MIX2
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return x & ((1 << 62) - 1)


def window_priority(seed: int, latents: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The sampling priority of window `keys` for `latents` (broadcast): uniform, fixed by the seed."""
    return mix64(mix64(keys * GOLDEN + seed) ^ (latents + 1) * MIX1)


def token_hashes(seed: int, keys: torch.Tensor, positions: torch.Tensor, slots: range) -> torch.Tensor:
    """(..., len(slots)) MinHash slot hashes of the tokens (window key, position)."""
    token = mix64(mix64(keys * GOLDEN + seed) + positions)  # (...)
    slot = torch.tensor(list(slots), dtype=torch.int64, device=keys.device)  # (m,)
    return mix64(token[..., None] ^ (slot + 1) * MIX2)


@dataclass
class LatentSummary:
    count: torch.Tensor  # (d_sae,) int64
    sum: torch.Tensor  # (d_sae,) float64
    max: torch.Tensor  # (d_sae,) float32
    windows: torch.Tensor  # (d_sae,) int64
    hist: torch.Tensor  # (d_sae, N_BINS) int64
    top_value: torch.Tensor  # (d_sae, K) float32
    top_key: torch.Tensor  # (d_sae, K) int64
    top_position: torch.Tensor  # (d_sae, K) int64
    sample_value: torch.Tensor  # (d_sae, S) float32
    sample_key: torch.Tensor  # (d_sae, S) int64
    sample_position: torch.Tensor  # (d_sae, S) int64
    sample_priority: torch.Tensor  # (d_sae, S) int64
    minhash: torch.Tensor  # (d_sae, HASHES) int64

    @property
    def d_sae(self) -> int:
        return len(self.count)

    @classmethod
    def empty(cls, d_sae: int, device: torch.device | str = "cpu") -> "LatentSummary":
        def full(shape, value, dtype):
            return torch.full(shape, value, dtype=dtype, device=device)
        ints, floats = torch.int64, torch.float32
        return cls(full((d_sae,), 0, ints), full((d_sae,), 0, torch.float64), full((d_sae,), 0, floats),
                   full((d_sae,), 0, ints), full((d_sae, N_BINS), 0, ints),
                   full((d_sae, 0), 0, floats), full((d_sae, 0), EMPTY, ints), full((d_sae, 0), 0, ints),
                   full((d_sae, 0), 0, floats), full((d_sae, 0), EMPTY, ints), full((d_sae, 0), 0, ints),
                   full((d_sae, 0), EMPTY, ints), full((d_sae, HASHES), EMPTY, ints))

    def to(self, device: torch.device | str) -> "LatentSummary":
        return LatentSummary(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class Codes:
    """A batch's nonzero codes as coordinates, (N,) each: the window (row of
    the batch), position in it, latent and value (> 0)."""

    window: torch.Tensor
    position: torch.Tensor
    latent: torch.Tensor
    value: torch.Tensor

    @classmethod
    def of(cls, codes: torch.Tensor) -> "Codes":
        """From dense codes (B, T, d_sae), zero where nothing is kept."""
        window, position, latent = (codes > 0).nonzero(as_tuple=True)
        return cls(window, position, latent, codes[window, position, latent])


def summarize(codes: Codes, keys: torch.Tensor, d_sae: int, seed: int) -> LatentSummary:
    """The summary of one batch of windows: codes of windows keys (B,). Its
    top_* and sample_* hold every window (merge keeps the best). Work is
    O(nonzeros + d_sae x B): nothing dense over tokens x latents."""
    B, D, device = len(keys), d_sae, keys.device
    window, position, latent, values = codes.window, codes.position, codes.latent, codes.value
    edges = torch.from_numpy(HIST_EDGES[1:-1]).to(device)
    bins = torch.bucketize(values, edges, right=True)  # (N,) in 0..N_BINS-1
    hist = torch.zeros(D * N_BINS, dtype=torch.int64, device=device)
    hist.index_add_(0, latent * N_BINS + bins, torch.ones_like(bins))
    cell = window * D + latent  # (N,) the (window, latent) each code belongs to
    peak = torch.zeros(B * D, device=device).scatter_reduce_(0, cell, values, "amax")  # (B*D,)
    at_peak = values == peak[cell]
    first = torch.full((B * D,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
    first.scatter_reduce_(0, cell[at_peak], position[at_peak], "amin")  # the first position holding the peak
    peak, first = peak.view(B, D), first.view(B, D)
    active = peak > 0  # (B, D)
    window_keys = keys[:, None].expand(B, D)  # (B, D)
    latents = torch.arange(D, device=device)
    priority = torch.where(active, window_priority(seed, latents[None, :], window_keys), EMPTY)
    minhash = torch.full((D, HASHES), EMPTY, dtype=torch.int64, device=device)
    token_keys = keys[window]  # (N,)
    for lo in range(0, HASHES, HASH_CHUNK):
        slots = range(lo, min(lo + HASH_CHUNK, HASHES))
        hashed = token_hashes(seed, token_keys, position, slots)  # (N, m)
        minhash[:, lo:slots.stop].scatter_reduce_(0, latent[:, None].expand(-1, len(slots)), hashed, "amin")
    key_or_empty = torch.where(active, window_keys, EMPTY).T  # (D, B)
    position_or_zero = torch.where(active, first, 0).T  # (D, B)
    return LatentSummary(
        count=torch.bincount(latent, minlength=D),
        sum=torch.zeros(D, dtype=torch.float64, device=device).index_add_(0, latent, values.double()),
        max=peak.amax(0) if B else torch.zeros(D, device=device), windows=active.sum(0), hist=hist.view(D, N_BINS),
        top_value=peak.T.contiguous(), top_key=key_or_empty, top_position=position_or_zero,
        sample_value=peak.T.contiguous(), sample_key=key_or_empty, sample_position=position_or_zero,
        sample_priority=priority.T, minhash=minhash)


def _first(primary: torch.Tensor, keys: torch.Tensor, width: int, *carried: torch.Tensor) -> list[torch.Tensor]:
    """Per row, the `width` entries smallest by (primary, key), in that order;
    always `width` columns (empty entries - primary 0 or EMPTY, key EMPTY -
    sort last), so that the state has its full size from the first merge and
    memory does not depend on how much of it the data has filled."""
    order = torch.sort(keys, dim=1, stable=True).indices
    order = order.gather(1, torch.sort(primary.gather(1, order), dim=1, stable=True).indices)[:, :width]
    out = [t.gather(1, order) for t in (primary, keys, *carried)]
    missing = width - order.shape[1]
    if missing <= 0:
        return out
    empty_primary = EMPTY if primary.dtype == torch.int64 else 0  # sample priorities; top: minus the value
    fills = (empty_primary, EMPTY) + (0,) * len(carried)
    return [torch.cat([t, torch.full((t.shape[0], missing), fill, dtype=t.dtype, device=t.device)], dim=1)
            for t, fill in zip(out, fills)]


def merge(a: LatentSummary, b: LatentSummary, cfg: LatentsConfig) -> LatentSummary:
    """The summary of a's and b's windows together (cfg.top and cfg.sample_size kept),
    MERGE_ROWS latents at a time (the sorts' temporaries stay small whatever d_sae)."""
    blocks = [slice(lo, lo + MERGE_ROWS) for lo in range(0, len(a.count), MERGE_ROWS)] or [slice(0, 0)]

    def cat(name, rows):
        return torch.cat([getattr(a, name)[rows], getattr(b, name)[rows]], dim=1)

    def first(primary: str, keys: str, carried: tuple[str, ...], width: int, negate: bool = False):
        out = []
        for rows in blocks:
            p = cat(primary, rows)
            out.append(_first(-p if negate else p, cat(keys, rows), width, *(cat(c, rows) for c in carried)))
        return [torch.cat(columns, dim=0) for columns in zip(*out)]

    top_value, top_key, top_position = first("top_value", "top_key", ("top_position",), cfg.top, negate=True)
    priority, sample_key, sample_value, sample_position = first(
        "sample_priority", "sample_key", ("sample_value", "sample_position"), cfg.sample_size)
    return LatentSummary(
        count=a.count + b.count, sum=a.sum + b.sum, max=torch.maximum(a.max, b.max), windows=a.windows + b.windows,
        hist=a.hist + b.hist, top_value=-top_value, top_key=top_key, top_position=top_position,
        sample_value=sample_value, sample_key=sample_key, sample_position=sample_position,
        sample_priority=priority, minhash=torch.minimum(a.minhash, b.minhash))


# -- a summary as Parquet tables (only what is filled) and back -----------------

def to_tables(summary: LatentSummary, sae: str) -> dict[str, pa.Table]:
    """{"stats", "top", "sample", "hist", "minhash"}: one row per active latent,
    filled entry, nonzero bin or filled slot."""
    s = summary.to("cpu")
    active = np.flatnonzero(s.count.numpy() > 0)

    def entries(prefix: str, extra: tuple[str, ...]) -> pa.Table:
        key = getattr(s, f"{prefix}_key").numpy()
        latent, rank = np.nonzero(key != EMPTY)
        columns = {"sae": pa.array([sae] * len(latent), pa.string()), "latent": pa.array(latent, pa.int32()),
                   "rank": pa.array(rank, pa.int32()), "window": pa.array(key[latent, rank], pa.int64())}
        for name in extra:
            columns[name] = pa.array(getattr(s, f"{prefix}_{name}").numpy()[latent, rank])
        return pa.table(columns)

    hist = s.hist.numpy()
    h_latent, h_bin = np.nonzero(hist)
    minhash = s.minhash.numpy()[active]
    return {
        "stats": pa.table({"sae": pa.array([sae] * len(active), pa.string()), "latent": pa.array(active, pa.int32()),
                           "count": s.count.numpy()[active], "sum": s.sum.numpy()[active],
                           "max": s.max.numpy()[active], "windows": s.windows.numpy()[active]}),
        "top": entries("top", ("value", "position")),
        "sample": entries("sample", ("value", "position", "priority")),
        "hist": pa.table({"sae": pa.array([sae] * len(h_latent), pa.string()),
                          "latent": pa.array(h_latent, pa.int32()), "bin": pa.array(h_bin, pa.int16()),
                          "count": hist[h_latent, h_bin]}),
        "minhash": pa.table({"sae": pa.array([sae] * len(active), pa.string()), "latent": pa.array(active, pa.int32()),
                             "minhash": pa.FixedSizeListArray.from_arrays(pa.array(minhash.reshape(-1)), HASHES)}),
    }


def from_tables(tables: dict[str, pa.Table], d_sae: int) -> LatentSummary:
    """A summary from to_tables's tables (of one SAE)."""
    s = LatentSummary.empty(d_sae)

    def column(table: pa.Table, name: str) -> torch.Tensor:
        return torch.from_numpy(table.column(name).to_numpy().copy())

    stats = tables["stats"]
    latent = column(stats, "latent").long()
    for name in ("count", "sum", "max", "windows"):
        getattr(s, name)[latent] = column(stats, name).to(getattr(s, name).dtype)
    hist = tables["hist"]
    s.hist[column(hist, "latent").long(), column(hist, "bin").long()] = column(hist, "count")
    minhash = tables["minhash"]
    if minhash.num_rows:
        flat = minhash.column("minhash").combine_chunks().flatten().to_numpy()
        s.minhash[column(minhash, "latent").long()] = torch.from_numpy(flat.reshape(-1, HASHES).copy())
    for prefix, extra in (("top", ("value", "position")), ("sample", ("value", "position", "priority"))):
        table = tables[prefix]
        width = int(table.column("rank").to_numpy().max()) + 1 if table.num_rows else 0
        rows, ranks = column(table, "latent").long(), column(table, "rank").long()
        filled = {"key": EMPTY, "value": 0, "position": 0, "priority": EMPTY}
        for name in ("key", *extra):
            dtype = torch.float32 if name == "value" else torch.int64
            dense = torch.full((d_sae, width), filled[name], dtype=dtype)
            dense[rows, ranks] = column(table, "window" if name == "key" else name).to(dtype)
            setattr(s, f"{prefix}_{name}", dense)
    return s
