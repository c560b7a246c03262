"""What every benchmark shares: the model, the device, where results go.
Each benchmark's own knobs are a config beside its function."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from actlab.default_model import DEFAULT_MODEL


@dataclass
class BenchOptions:
    model: str = field(default=DEFAULT_MODEL, metadata={"short": "-m",
                                                        "help": "Hub id, local folder, .gguf file or alias."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N, mps."})
    results_dir: Path | None = field(default=Path("benchmarks/results"), metadata={"help": "Where the JSON goes."})
    readme: Path | None = field(default=None, metadata={"help": "Update the benchmark table in this Markdown file."})
