"""The activation run kind (`actlab extract`): hooks' activations of every
text, pooled or per token, in resumable Parquet shards."""

from .run import DEFAULT_SHARD_SIZE, ActivationRun, extract_run

__all__ = ["DEFAULT_SHARD_SIZE", "ActivationRun", "extract_run"]
