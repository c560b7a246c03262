"""Causal analysis: activation patching over prompt pairs."""

from .config import COMPONENTS, PatchConfig
from .exact import exact_effects
from .pairs import IOI, TokenPair, ioi_pairs, load_prompt_pairs, tokenize_pairs
from .run import PATCH_SHARD_SIZE, PatchJob, PatchRun, patch_run

__all__ = ["COMPONENTS", "IOI", "PATCH_SHARD_SIZE", "PatchConfig", "PatchJob", "PatchRun", "TokenPair",
           "exact_effects", "ioi_pairs", "load_prompt_pairs", "patch_run", "tokenize_pairs"]
