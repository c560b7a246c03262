"""What a contrast run measures: the position pooled, the noise of the
stability metric, the shard size and whether continuations are scored; and
how its statistics are analysed (detection folds, the report)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ActlabError

POSITIONS = ("last", "continuation")
ANALYSIS_FIELDS = ("folds", "report")  # how the run is analysed, not what its rows are

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
    folds: int = field(default=5, metadata={"help": "Folds of the grouped held-out detection."})
    report: bool = field(default=True, metadata={"help": "Write RUN/report.html."})

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ActlabError(f"position must be last or continuation, not '{self.position}'", param="position")
        if self.draws < 1 or self.noise < 0 or self.shard_size < 1:
            raise ActlabError("draws >= 1, noise >= 0 and shard_size >= 1, please", param="draws")
        if self.folds < 2:
            raise ActlabError(f"folds must be at least 2, not {self.folds}", param="folds")

    def settings(self) -> dict:
        """What the run's rows depend on (the manifest's "contrast" settings)."""
        return {k: v for k, v in asdict(self).items() if k not in ANALYSIS_FIELDS}
