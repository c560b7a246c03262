"""What a contrast run measures: the position pooled, the noise of the
stability metric, the shard size and whether continuations are scored."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ActlabError

POSITIONS = ("last", "continuation")

@dataclass
class ContrastConfig:
    """What the contrast pass measures (batching is the ExtractConfig's)."""

    position: str = field(default="last", metadata={
        "help": "last (the last real token) or continuation (the mean over the continuation's own tokens; the "
                "prompt alone over its own)."})
    noise: float = field(default=0.1, metadata={"help": "Noise scale for stability: relative to |x| (0.1: a noise "
                                                        "of 10% of the residual's norm), or absolute sigma."})
    absolute_noise: bool = field(default=False, metadata={"help": "Read --noise as an absolute per-dimension sigma."})
    draws: int = field(default=8, metadata={"help": "Noisy copies per text for stability."})
    seed: int = field(default=0, metadata={"help": "Seed of the noise (row by row: batching changes no draw)."})
    shard_size: int = field(default=256, metadata={"help": "Pairs per shard."})
    score: bool = field(default=False, metadata={
        "help": "Also the model's log-probability of each continuation given its prompt (the same pass, the LM "
                "head at the continuation's positions only), to split results by what the model prefers."})

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ActlabError(f"position must be last or continuation, not '{self.position}'", param="position")
        if self.draws < 1 or self.noise < 0 or self.shard_size < 1:
            raise ActlabError("draws >= 1, noise >= 0 and shard_size >= 1, please", param="draws")
