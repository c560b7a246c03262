"""Token-level activations of the example windows: for every (SAE, latent,
window) of a latents run's top and interval tables, the latent's nonzero
values at each position of the window, for highlighting and for
auto-interpretation. The run keeps only each window's maximum, so the model
runs once more over the windows those tables name (their union, each window
once), and the result is kept in the run as examples.parquet:

    sae, latent, window, positions (list<int16>), values (list<float32>)

Auto-interpretation also needs windows where a latent is not active: a
seeded sample of the run's windows, each with the latents active anywhere in
it, kept as pool.parquet (sae, window, active list<int32>).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..engine import Sink
from ..errors import ActlabError
from ..models import Model
from ..runs.atomic import write_parquet_atomic
from ..saes import load_sae
from ..storage import read_parquet
from .run import EXAMPLES
from .sink import WindowExtractor, window_codes
from .windows import Windows

POOL = "pool.parquet"
POOL_WINDOWS = 256  # random windows whose active latents are recorded (non-activating examples)
POOL_SEED = 0


def example_windows(run) -> dict[str, pa.Table]:
    """Per SAE, its (latent, window) pairs of the top and interval tables."""
    return {sae: pa.concat_tables([run.table(name, sae).select(["latent", "window"]) for name in ("top", "intervals")])
            .group_by(["latent", "window"]).aggregate([]) for sae in run.saes}


class ExampleSink(Sink):
    """Keeps, for the (latent, window) pairs asked, the latent's nonzero codes in that window."""

    def __init__(self, sae, keys: np.ndarray, wanted: dict[int, list[int]], has_bos: bool, centre: bool):
        self.sae, self.keys, self.wanted = sae, keys, wanted
        self.has_bos, self.centre = has_bos, centre
        self.rows: list[tuple[int, int, np.ndarray, np.ndarray]] = []

    def consume(self, hidden: torch.Tensor, batch) -> None:
        codes = window_codes(self.sae, hidden, batch, self.has_bos, self.centre)
        window, position, latent, value = (t.cpu().numpy() for t in (codes.window, codes.position, codes.latent,
                                                                     codes.value))
        # the batch's codes sorted once by (window, latent, position): each pair asked is a slice found by
        # binary search, so the cost grows with the nonzeros (and the pairs' log), not pairs x nonzeros
        order = np.lexsort((position, latent, window))
        pair = window[order].astype(np.int64) * self.sae.cfg.d_sae + latent[order]  # (nnz,), ascending
        for b, row in enumerate(batch.rows):
            key = int(self.keys[row])
            for j in self.wanted.get(key, ()):
                lo, hi = np.searchsorted(pair, [b * self.sae.cfg.d_sae + j, b * self.sae.cfg.d_sae + j + 1])
                at = order[lo:hi]
                self.rows.append((j, key, position[at].astype(np.int16), value[at].astype(np.float32)))


@dataclass
class ExampleSinks:
    """WindowSinks keeping, per SAE, the example values of the (latent, window) pairs `wanted`."""

    wanted: dict[str, dict[int, list[int]]]  # SAE -> window key -> latents

    def sink(self, name: str, sae, windows: Windows, centre: bool) -> ExampleSink:
        return ExampleSink(sae, windows.keys, self.wanted[name], windows.has_bos, centre)

    def result(self, sinks: dict[str, ExampleSink], stats) -> pa.Table:
        parts = []
        for name, sink in sinks.items():
            latent, key, positions, values = zip(*sink.rows) if sink.rows else ((), (), (), ())
            parts.append(pa.table({"sae": pa.array([name] * len(latent), pa.string()),
                                   "latent": pa.array(latent, pa.int32()), "window": pa.array(key, pa.int64()),
                                   "positions": pa.array(list(positions), pa.list_(pa.int16())),
                                   "values": pa.array(list(values), pa.list_(pa.float32()))}))
        return pa.concat_tables(parts).sort_by([("sae", "ascending"), ("latent", "ascending"),
                                                ("window", "ascending")])


class PoolSink(Sink):
    """Keeps, for every window, the latents active at any of its tokens."""

    def __init__(self, sae, keys: np.ndarray, has_bos: bool, centre: bool):
        self.sae, self.keys, self.has_bos, self.centre = sae, keys, has_bos, centre
        self.rows: list[tuple[int, np.ndarray]] = []

    def consume(self, hidden: torch.Tensor, batch) -> None:
        codes = window_codes(self.sae, hidden, batch, self.has_bos, self.centre)
        window, latent = codes.window.cpu().numpy(), codes.latent.cpu().numpy()
        for b, row in enumerate(batch.rows):
            self.rows.append((int(self.keys[row]), np.unique(latent[window == b]).astype(np.int32)))


class PoolSinks:
    """WindowSinks keeping each window's active latents, per SAE."""

    def sink(self, name: str, sae, windows: Windows, centre: bool) -> PoolSink:
        return PoolSink(sae, windows.keys, windows.has_bos, centre)

    def result(self, sinks: dict[str, PoolSink], stats) -> pa.Table:
        parts = []
        for name, sink in sinks.items():
            keys, active = zip(*sink.rows) if sink.rows else ((), ())
            parts.append(pa.table({"sae": pa.array([name] * len(keys), pa.string()),
                                   "window": pa.array(keys, pa.int64()),
                                   "active": pa.array(list(active), pa.list_(pa.int32()))}))
        return pa.concat_tables(parts).sort_by([("sae", "ascending"), ("window", "ascending")])


def window_pool(run, model: Model, saes: dict | None = None) -> pa.Table:
    """The run's pool.parquet, computed (and written) on first use: up to
    POOL_WINDOWS of its windows drawn without replacement (seeded), with the
    latents active in each."""
    path = run.path / POOL
    if path.exists():
        return read_parquet(path)
    keys = np.concatenate([read_parquet(part, columns=["window"]).column("window").to_numpy()
                           for part in sorted(run.path.glob("windows-*.parquet"), key=lambda p: p.name)])
    rng = np.random.default_rng(POOL_SEED)
    chosen = np.sort(rng.choice(keys, size=min(POOL_WINDOWS, len(keys)), replace=False))
    saes = saes or {name: _reload(run, name) for name in run.saes}
    table = WindowExtractor(model, saes, PoolSinks()).run_windows(_read_windows(run, chosen.tolist()))
    write_parquet_atomic(path, table)
    return table


def example_activations(run, model: Model, saes: dict | None = None) -> pa.Table:
    """The run's examples.parquet, computed (and written) on first use with
    `saes` ({name: SAE}; None: each reloaded from its source), refused when
    they do not reproduce the run's top values."""
    path = run.path / EXAMPLES
    if path.exists():
        return read_parquet(path)
    pairs = example_windows(run)
    wanted: dict[str, dict[int, list[int]]] = {}
    keys: set[int] = set()
    for sae, table in pairs.items():
        by_window = defaultdict(list)
        for latent, key in zip(table.column("latent").to_pylist(), table.column("window").to_pylist()):
            by_window[key].append(latent)
        wanted[sae] = dict(by_window)
        keys.update(by_window)
    windows = _read_windows(run, sorted(keys))
    saes = saes or {name: _reload(run, name) for name in run.saes}
    table = WindowExtractor(model, saes, ExampleSinks(wanted)).run_windows(windows)
    _check(run, table)
    write_parquet_atomic(path, table)
    return table


def _reload(run, name: str):
    source = run.sae_config(name).source
    try:
        return load_sae(source)
    except ActlabError as exc:
        raise ActlabError(f"SAE '{name}' cannot be reloaded from '{source}' ({exc}); make it reachable again, "
                          "pass the SAEs, or report without the model (--no-model)") from None


def _check(run, examples: pa.Table) -> None:
    """Each top window's recomputed maximum equals the run's (else the SAE or model is not the run's)."""
    for sae in run.saes:
        top = run.table("top", sae)
        top = top.filter(pc.equal(top.column("rank"), 0))
        mine = examples.filter(pc.equal(examples.column("sae"), sae))
        peaks = {(j, k): max(v, default=0.0) for j, k, v in zip(mine.column("latent").to_pylist(),
                                                               mine.column("window").to_pylist(),
                                                               mine.column("values").to_pylist())}
        for j, k, value in zip(*(top.column(c).to_pylist() for c in ("latent", "window", "value"))):
            if abs(peaks.get((j, k), 0.0) - value) > 1e-3 * max(abs(value), 1.0):
                raise ActlabError(f"SAE '{sae}' or the model gives latent {j} a maximum of "
                                  f"{peaks.get((j, k), 0.0):.4g} in window {k}, the run recorded {value:.4g}: "
                                  "they are not the ones this run summarised; pass the run's SAEs and model",
                                  param="sae")


def _read_windows(run, keys: list[int]) -> Windows:
    table = run.windows(keys)
    if table is None or table.num_rows == 0:
        return Windows([], np.zeros(0, np.int64), np.zeros(0, np.int64), run.settings["has_bos"],
                       run.settings["content"])
    return Windows([list(ids) for ids in table.column("token_ids").to_pylist()],
                   table.column("text_id").to_numpy(), table.column("start").to_numpy(), run.settings["has_bos"],
                   run.settings["content"])

