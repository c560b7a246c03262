"""The decode step as CUDA graphs: one graph per slot count, captured the
first time that count decodes after WARMUP_STEPS eager steps, then replayed.

A replay runs one step's kernels on the memory they were captured with, so
everything the step reads or writes lives in a buffer that keeps its storage
for the whole call and is updated in place: the slot state (engine), the
cache rows (cache.keep_rows packs within the same storage, so `rows[:n]` has
the same address whenever n slots decode), the taps' sums and deltas, the
sampling counters. Attention reads every cache position under each slot's
mask (a static shape), and nothing in the step asks the host. Packing rounds
the live rows up to a slot bucket (`slot_bucket`), so that a call captures a
handful of graphs, not one per live count.

Without capture (a CPU) `DecodeGraphs` runs every step eagerly in the same
static form: the tests check that form against the dynamic one on CPU, and
benchmarks/check_generation_cuda.py checks the replays on a GPU.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch

WARMUP_STEPS = 2  # eager steps at a slot count before its graph is captured (lazy inits, allocator)


def slot_bucket(n: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and
    1.5 x them) at least n: at most a third of a packed batch is padding."""
    size = 1
    while True:
        for candidate in (size, size * 3 // 2):
            if candidate >= n:
                return candidate
        size *= 2


class DecodeGraphs:
    """Runs decode steps, replaying a captured CUDA graph per slot count where
    `capture` (else eagerly, every step)."""

    def __init__(self, capture: bool):
        self.capture = capture
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.eager_steps: Counter[int] = Counter()
        self.pool = None

    def step(self, slots: int, run: Callable[[], None]) -> None:
        """One decode step of `slots` slots: `run` does it on the device."""
        graph = self.graphs.get(slots)
        if graph is not None:
            graph.replay()
            return
        if not self.capture or self.eager_steps[slots] < WARMUP_STEPS:
            self.eager_steps[slots] += 1
            run()
            return
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):  # records the step's kernels without running them
            run()
        graph.replay()
        self.graphs[slots] = graph
