"""LatentsConfig: what a latents pass keeps per latent, and how it batches."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import ActlabError

DECILES = 10  # interval examples come from each tenth of a latent's activating windows, by their maximum
SAMPLE_PER_DECILE = 2  # the seeded sample keeps this many times `intervals` windows per decile
HASHES = 64  # MinHash slots per latent for co-firing (standard error of a Jaccard estimate <= 1/16)
MAX_CONTEXT = 1 << 16


@dataclass
class LatentsConfig:
    """What a latents pass keeps per latent. All but the batching fields
    decide the numbers (a run's manifest settings)."""

    context: int = field(default=64, metadata={
        "help": "Tokens per window of the corpus, the BOS included where the SAEs want one."})
    top: int = field(default=20, metadata={"help": "Top activating windows kept per latent."})
    intervals: int = field(default=5, metadata={
        "help": "Windows sampled per activation decile per latent (seeded; delphi-style interval examples)."})
    cofiring: int = field(default=10, metadata={"help": "Co-firing latents kept per latent (MinHash Jaccard)."})
    neighbours: int = field(default=10, metadata={"help": "Decoder-cosine neighbours kept per latent."})
    logit_tokens: int = field(default=10, metadata={
        "help": "Tokens kept at each end of a latent's logit effect (its decoder row through the unembedding)."})
    seed: int = field(default=0, metadata={"help": "Seed of the interval sampling and the co-firing hashes."})
    keep_tokens: bool = field(default=False, metadata={
        "help": "Also write every token's nonzero codes (codes-NNNNN.parquet)."})
    batch_size: int | None = field(default=None, metadata={"help": "Windows per batch (default: token budget)."})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "Padded tokens per batch."})

    def __post_init__(self):
        if not 1 <= self.context <= MAX_CONTEXT:
            raise ActlabError(f"context must be 1..{MAX_CONTEXT} tokens, not {self.context}", param="context")
        for name in ("top", "intervals", "cofiring", "neighbours", "logit_tokens"):
            if getattr(self, name) < 0:
                raise ActlabError(f"{name} must be 0 or more, not {getattr(self, name)}", param=name)
        for name in ("batch_size", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ActlabError(f"{name} must be at least 1, not {value}", param=name)

    @property
    def sample_size(self) -> int:
        """Activating windows the seeded sample keeps per latent."""
        return DECILES * SAMPLE_PER_DECILE * self.intervals

    def settings(self) -> dict:
        """The fields a run's rows depend on (resuming requires them equal)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("batch_size", "max_batch_tokens")}
