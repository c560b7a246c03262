"""ExtractConfig: what the engine extracts and how it batches."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import ActlabError
from ..pooling import Pooling, parse_pooling


@dataclass
class ExtractConfig:
    """What the engine extracts and how it batches. The first five fields
    decide the numbers (a run's manifest settings); the batching fields only
    decide speed and memory, since batched equals one text at a time."""

    hooks: list[str] = field(default_factory=list,
                             metadata={"help": "Hook name or module path; repeatable.", "flag": "--hook"})
    pooling: str | int | list[int] | Pooling = field(default="last", metadata={
        "help": "last, mean, all, first:K, last:K, pos:I (or, in Python, one position per text)."})
    prepend_bos: bool | None = field(default=None, metadata={
        "help": "Prepend BOS (default: whatever the tokenizer does; for features, the SAEs' own)."})
    include_bos: bool = field(default=False, metadata={"help": "Let mean/first:K/last:K pool the BOS token."})
    max_length: int | None = field(default=None, metadata={"help": "Truncate texts to this many tokens."})
    batch_size: int | None = field(default=None, metadata={"help": "Texts per batch (default: token budget)."})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "Padded tokens per batch."})
    padding_side: str = field(default="right", metadata={"help": "right or left."})

    def __post_init__(self):
        if isinstance(self.hooks, str):
            self.hooks = [self.hooks]
        self.hooks = list(dict.fromkeys(self.hooks))
        if not isinstance(self.pooling, (str, int, Pooling)):
            self.pooling = [int(p) for p in self.pooling]
        if self.padding_side is None:
            self.padding_side = "right"
        if self.padding_side not in ("left", "right"):
            raise ActlabError(f"padding_side must be 'left' or 'right', not '{self.padding_side}'",
                              param="padding_side")
        for name in ("batch_size", "max_batch_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ActlabError(f"{name} must be at least 1, not {value}", param=name)
        self.pool  # validates the pooling spec

    @property
    def pool(self) -> Pooling:
        return parse_pooling(self.pooling, self.include_bos)

    @classmethod
    def of(cls, cfg: "ExtractConfig | None" = None, **options) -> "ExtractConfig":
        """cfg with `options` replaced (None values are left as they are);
        an unknown option is an error naming the known ones."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ActlabError(f"unknown option(s) {', '.join(unknown)}; ExtractConfig takes "
                              f"{', '.join(sorted(known))}", param=unknown[0])
        values = {f.name: getattr(cfg, f.name) for f in fields(cfg)} if cfg is not None else {}
        values.update({k: v for k, v in options.items() if v is not None})
        return cls(**values)

    def settings(self) -> dict:
        """The fields a run's rows depend on (resuming requires them equal)."""
        return {"hooks": self.hooks, "pooling": self.pool.spec if len(self.pool.positions) <= 1 else self.pooling,
                "include_bos": self.include_bos, "prepend_bos": self.prepend_bos, "max_length": self.max_length}

    def batching(self) -> dict:
        return {"batch_size": self.batch_size, "max_batch_tokens": self.max_batch_tokens,
                "padding_side": self.padding_side}
