"""The result of an extraction: pooled or per-token activations by hook name."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ExtractStats:
    n_texts: int
    n_tokens: int  # real tokens
    n_padded_tokens: int  # token slots the forward passes computed, padding included
    seconds: float
    n_truncated: int = 0
    oom_splits: int = 0
    peak_memory_bytes: int | None = None

    @property
    def padding_waste(self) -> float:
        return 1 - self.n_tokens / self.n_padded_tokens if self.n_padded_tokens else 0.0

    @property
    def texts_per_s(self) -> float:
        return self.n_texts / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        parts = [f"{self.n_texts} texts, {self.n_tokens} tokens in {self.seconds:.1f}s",
                 f"{self.texts_per_s:.1f} texts/s, {self.tokens_per_s:.0f} tokens/s",
                 f"padding {self.padding_waste:.1%}"]
        if self.peak_memory_bytes:
            parts.append(f"peak memory {self.peak_memory_bytes / 2**20:.0f} MiB")
        if self.n_truncated:
            parts.append(f"{self.n_truncated} texts truncated")
        if self.oom_splits:
            parts.append(f"{self.oom_splits} batches split after out-of-memory")
        return "; ".join(parts)


@dataclass
class Activations:
    """Activations by hook name, rows in input order.

    Pooled modes: `acts[hook]` has shape (n_texts, d). Per-token mode ('all'):
    shape (n_tokens, d); text i owns rows offsets[i]:offsets[i+1], whose token
    strings are tokens[offsets[i]:offsets[i+1]].
    """

    values: dict[str, torch.Tensor]
    pooling: str
    n_tokens: torch.Tensor  # (n_texts,) tokens per text, BOS included
    offsets: torch.Tensor | None = None
    tokens: list[str] | None = None
    token_ids: torch.Tensor | None = None
    stats: ExtractStats | None = None
    has_bos: bool = False
    metadata: dict = field(default_factory=dict)

    def __getitem__(self, hook: str) -> torch.Tensor:
        if hook not in self.values:
            raise KeyError(f"no hook '{hook}' here; have {list(self.values)}")
        return self.values[hook]

    def __contains__(self, hook: str) -> bool:
        return hook in self.values

    def __len__(self) -> int:
        return len(self.n_tokens)

    @property
    def hooks(self) -> list[str]:
        return list(self.values)

    def text(self, hook: str, i: int) -> torch.Tensor:
        """Per-token mode: the (n_tokens_i, d) block of text i."""
        if self.offsets is None:
            raise ValueError("text() needs per-token activations (pooling='all')")
        return self.values[hook][int(self.offsets[i]):int(self.offsets[i + 1])]
