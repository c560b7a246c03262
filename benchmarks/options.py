"""What every benchmark shares: the model, the device, where results go.
Each benchmark's own knobs are a config beside its function."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from actlab.default_model import DEFAULT_MODEL


@dataclass
class BenchOptions:
    model: str = field(default=DEFAULT_MODEL, metadata={"short": "-m",
                                                        "help": "Hub id, local folder, .gguf file or alias."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N, mps."})
    results_dir: Path | None = field(default=Path("benchmarks/results"), metadata={"help": "Where the JSON goes."})
    readme: Path | None = field(default=None, metadata={"help": "Update the benchmark table in this Markdown file."})


@contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """Within it, torch computes with n CPU threads; the caller's count is restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
