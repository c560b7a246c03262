"""Sparse autoencoders: the SAE module and its loaders."""

from .loading import load_sae
from .sae import SAE, SAEConfig

__all__ = ["SAE", "SAEConfig", "load_sae"]
