"""SAEs that ship with actlab for the default model, used wherever an SAE is
optional. They were trained with `actlab sae train` (settings and held-out
quality in data/saes/<model>/quality.json; how to reproduce in the README)."""

from __future__ import annotations

from pathlib import Path

from ..default_model import DEFAULT_MODEL
from ..errors import ActlabError
from .loading import load_sae
from .sae import SAE

DEFAULT_SAE_ROOT = Path(__file__).resolve().parent.parent / "data" / "saes"


def default_sae_dirs(model_name: str = DEFAULT_MODEL) -> dict[str, Path]:
    """SAE folders by name ('resid_post-7', ...), shallowest layer first."""
    root = DEFAULT_SAE_ROOT / model_name
    if not root.is_dir():
        shipped = sorted(p.name for p in DEFAULT_SAE_ROOT.iterdir() if p.is_dir()) if DEFAULT_SAE_ROOT.is_dir() else []
        raise ActlabError(f"actlab ships default SAEs only for {', '.join(shipped) or 'no model'}; "
                          f"give SAEs for '{model_name}' (--sae FOLDER or release/sae_id)")
    folders = [p for p in root.iterdir() if (p / "cfg.json").is_file()]
    return {p.name: p for p in sorted(folders, key=lambda p: int(p.name.rsplit("-", 1)[-1]))}


def default_saes(model_name: str = DEFAULT_MODEL, device="cpu") -> dict[str, SAE]:
    return {name: load_sae(path, device=device) for name, path in default_sae_dirs(model_name).items()}
