"""The one resumable shard loop.

A run's input rows are cut into fixed ranges, shard i covering rows
[i * shard_size, (i + 1) * shard_size). Each shard is computed and written on
its own, its marker file last and atomically, so the marker's existence means
the shard is done: after Ctrl-C or SIGKILL a rerun computes exactly the
missing shards and ends with the rows of an uninterrupted run. A distributed
runner hands the same shards to its workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import pyarrow as pa

from ..errors import ActlabError
from ..storage import RunPath, read_parquet

T = TypeVar("T")


def shard_name(index: int, prefix: str = "shard") -> str:
    return f"{prefix}-{index:05d}.parquet"


@dataclass(frozen=True)
class ShardPlan:
    n_rows: int
    shard_size: int
    marker: str = "shard"  # shard i is done when f"{marker}-{i:05d}.parquet" exists

    def __post_init__(self):
        if self.shard_size < 1:
            raise ActlabError(f"shard_size must be at least 1, not {self.shard_size}", param="shard_size")

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_rows // self.shard_size))

    def bounds(self, index: int) -> tuple[int, int]:
        return index * self.shard_size, min((index + 1) * self.shard_size, self.n_rows)

    def names(self, prefix: str | None = None) -> list[str]:
        return [shard_name(i, prefix or self.marker) for i in range(self.n_shards)]

    def todo(self, out: RunPath) -> list[int]:
        """The unfinished shards (one listing of the folder, which on an object store is one request)."""
        done = {child.name for child in out.iterdir()} if out.exists() else set()
        return [i for i in range(self.n_shards) if shard_name(i, self.marker) not in done]

    def rows_left(self, out: RunPath) -> int:
        return sum(hi - lo for lo, hi in map(self.bounds, self.todo(out)))


def read_shards(out: RunPath, names: list[str], prefix: str | None = None, **read_options) -> pa.Table:
    """A run's shards as one table, or with `prefix` the files written beside
    each (texts-NNNNN.parquet beside shard-NNNNN.parquet); read_options go to
    pyarrow.parquet.read_table (filters=..., columns=...)."""
    if prefix is not None:
        names = [f"{prefix}-{name.split('-', 1)[1]}" for name in names]
    return pa.concat_tables([read_parquet(out / name, **read_options) for name in names])


def run_shards(out: RunPath, plan: ShardPlan, process: Callable[[int, int, int], T]) -> list[T]:
    """process(index, lo, hi) computes and writes every unfinished shard,
    its marker last; returns what each call returned, in shard order."""
    return [process(index, *plan.bounds(index)) for index in plan.todo(out)]
