"""What a hook feeds: the Sink interface, the activation sink, and the
device-to-host copies that never stall the device."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Any

import torch

from .batches import Batch


class HostCopies:
    """Device-to-host copies. On CUDA each batch's pooled rows go to pinned
    staging buffers asynchronously and are scattered into the outputs only after
    the next batch has been queued, so the copy never stalls the device."""

    def __init__(self) -> None:
        self._current: list = []
        self._pending: deque[list] = deque()

    def put(self, out: torch.Tensor, dest: torch.Tensor, values: torch.Tensor) -> None:
        values = values.float()
        if values.device.type != "cuda":
            out.index_copy_(0, dest, values.cpu())
            return
        staging = torch.empty(values.shape, dtype=out.dtype, pin_memory=True)
        staging.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._current.append((out, dest, staging, event))

    def mark(self) -> int:
        return len(self._current)

    def rollback(self, mark: int) -> None:
        """Drop the copies queued since `mark` (a forward that ran out of memory)."""
        del self._current[mark:]

    def end_batch(self) -> None:
        self._pending.append(self._current)
        self._current = []
        while len(self._pending) > 1:
            self._scatter(self._pending.popleft())

    def flush(self) -> None:
        self.end_batch()
        while self._pending:
            self._scatter(self._pending.popleft())

    @staticmethod
    def _scatter(copies: list) -> None:
        for out, dest, staging, event in copies:
            event.synchronize()
            out.index_copy_(0, dest, staging)


class Sink(ABC):
    """What a hook feeds as it fires: `consume` takes the hook's activations
    for the batch in flight. A forward that runs out of memory may have fed
    some sinks already: they roll back to their `mark()` before the batch is
    split and rerun (the defaults suit a sink that rewrites the same rows on a
    rerun). `end_batch` follows every batch, `finish` the last."""

    @abstractmethod
    def consume(self, hidden: torch.Tensor, batch: Batch) -> None:
        """hidden: (B, T, width) at the hook, for batch.rows."""

    def mark(self) -> Any:
        return None

    def rollback(self, mark: Any) -> None:
        return None

    def end_batch(self) -> None:
        return None

    def finish(self) -> None:
        return None


class ActivationSink(Sink):
    """Pools a hook's activations and fills preallocated host rows."""

    def __init__(self, n_rows: int, width: int, pin: bool):
        self.out = torch.empty(n_rows, width, dtype=torch.float32, pin_memory=pin)  # (n_rows, width)
        self.copies = HostCopies()

    def consume(self, hidden: torch.Tensor, batch: Batch) -> None:
        self.copies.put(self.out, batch.dest, batch.plan.apply(hidden))

    def mark(self) -> int:
        return self.copies.mark()

    def rollback(self, mark: int) -> None:
        self.copies.rollback(mark)

    def end_batch(self) -> None:
        self.copies.end_batch()

    def finish(self) -> None:
        self.copies.flush()
