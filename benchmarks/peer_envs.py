"""Peers that do not fit actlab's pins (vLLM's CPU build, SAEDashboard) run
in virtual environments the benchmarks make for them under --peers-dir, never
in actlab's: each installed once, step by step, a failed step a one-line note
(the benchmark goes on without that peer)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .extract import console

if TYPE_CHECKING:
    from actlab.models import Model

PEER_TORCH = "torch==2.13.0"  # the CPU wheel; a peer's own CUDA extras would pull gigabytes
PEER_INSTALL_SECONDS = 1800
PEERS_DIR = Path("benchmarks/.peers")


def install_steps(steps: list[list[str]], skipped: str, notes: list[str]) -> bool:
    """Run the install steps in order; False, with a note, at the first that fails (an uninstall may)."""
    started = time.monotonic()
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True,
                              timeout=max(60.0, PEER_INSTALL_SECONDS - (time.monotonic() - started)))
        if done.returncode != 0 and "uninstall" not in step:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            notes.append(f"{skipped}: `{' '.join(step[2:])}` failed ({last})")
            console.print(f"  [yellow]{notes[-1]}")
            return False
    return True


def peer_python(venv: Path, packages: list[str], skipped: str, notes: list[str]) -> Path | None:
    """The Python of `venv` holding the CPU torch wheel and `packages` (installed on first use), or None
    with a note when they do not install."""
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q"]
    if not (venv / ".installed").exists():
        console.print(f"  installing {' '.join(packages)} into {venv} (once; minutes)")
        steps = [[sys.executable, "-m", "venv", str(venv)], [*pip, PEER_TORCH], [*pip, *packages, PEER_TORCH],
                 [str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"]]
        if not install_steps(steps, skipped, notes):
            return None
        (venv / ".installed").write_text("\n".join(packages) + "\n")
    return python


def model_dir(model: "Model") -> str:
    """The model's local folder, for a peer that loads it itself."""
    from actlab.default_model import DEFAULT_MODEL, default_model_dir

    if Path(model.name).is_dir():
        return model.name
    if model.name == DEFAULT_MODEL:
        return str(default_model_dir())
    from huggingface_hub import snapshot_download

    return snapshot_download(model.name, local_files_only=True)
