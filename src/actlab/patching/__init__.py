"""Causal analysis: activation patching over prompt pairs."""

from .attribution import attribution_effects
from .config import COMPONENTS, PATCH_METHODS, PatchConfig
from .exact import exact_effects
from .methods import patch_effects
from .pairs import IOI, TokenPair, ioi_pairs, load_prompt_pairs, tokenize_pairs
from .run import PATCH_SHARD_SIZE, PatchJob, PatchRun, patch_run

__all__ = ["COMPONENTS", "IOI", "PATCH_METHODS", "PATCH_SHARD_SIZE", "PatchConfig", "PatchJob", "PatchRun",
           "TokenPair", "attribution_effects", "exact_effects", "ioi_pairs", "load_prompt_pairs", "patch_effects",
           "patch_run", "tokenize_pairs"]
