"""The feature run kind (`actlab features`): SAE features of every text,
one forward pass for all SAEs, nonzeros and per-latent statistics in
resumable Parquet shards."""

from .run import FeatureRun, features_run

__all__ = ["FeatureRun", "features_run"]
