"""Sparse autoencoders: the SAE module and its loaders."""

from .defaults import default_sae_dirs, default_saes
from .loading import load_sae
from .sae import SAE, SAEConfig

__all__ = ["SAE", "SAEConfig", "default_sae_dirs", "default_saes", "load_sae"]
