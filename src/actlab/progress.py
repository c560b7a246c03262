"""A rich progress bar for extraction: texts/s, tokens/s and ETA."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from .activations import ExtractStats

console = Console(stderr=True)


class ExtractProgress:
    """Context manager; `advance(n_texts, n_tokens)` after each batch."""

    def __init__(self, total_texts: int, enabled: bool | None = None, label: str = "extract"):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total = total_texts
        self.label = label
        self._progress: Progress | None = None
        self._tokens = 0

    def __enter__(self) -> "ExtractProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, rate="")
        return self

    def advance(self, n_texts: int, n_tokens: int) -> None:
        if self._progress is None:
            return
        self._tokens += n_tokens
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 1e-9
        rate = f"{(task.completed + n_texts) / elapsed:.1f} texts/s {self._tokens / elapsed:.0f} tok/s"
        self._progress.update(self._task, advance=n_texts, rate=rate)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def print_summary(self, stats: ExtractStats) -> None:
        if self.enabled:
            console.print(f"[green]done[/green]: {stats.summary()}")
