"""Tokenisation with explicit control of BOS and truncation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import ActlabError


@dataclass
class Tokenized:
    ids: list[list[int]]
    has_bos: bool  # every sequence starts with the tokenizer's BOS token
    n_truncated: int

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def tokenizer_adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(probe) and probe[0] == bos and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]


def tokenize(tokenizer, texts: Sequence[str], prepend_bos: bool | None = None,
             max_length: int | None = None) -> Tokenized:
    """Token ids per text. prepend_bos=None keeps what the tokenizer does."""
    adds_bos = tokenizer_adds_bos(tokenizer)
    want_bos = adds_bos if prepend_bos is None else prepend_bos
    if want_bos and tokenizer.bos_token_id is None:
        raise ActlabError("prepend_bos=True but this tokenizer has no BOS token; drop the option")
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if len(texts) else []
    if want_bos and not adds_bos:
        ids = [[tokenizer.bos_token_id] + x for x in ids]
    elif adds_bos and not want_bos:
        ids = [x[1:] for x in ids]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise ActlabError(f"text {empty[0]} has no tokens; drop empty texts or keep BOS")
    n_truncated = 0
    if max_length is not None:
        n_truncated = sum(len(x) > max_length for x in ids)
        ids = [x[:max_length] for x in ids]
    return Tokenized(ids, want_bos, n_truncated)


def offsets(lengths: Sequence[int] | torch.Tensor | np.ndarray) -> torch.Tensor:
    """(n + 1,) int64 row offsets: item i owns rows offsets[i]:offsets[i + 1]."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    out[1:] = torch.as_tensor(np.asarray(lengths, dtype=np.int64)).cumsum(0)
    return out


@dataclass
class Padded:
    """Token sequences padded into one batch. Positions count real tokens only,
    so left padding shifts nothing (absolute-position models such as GPT-2
    depend on this); pooling reads each row's own span, never the pad ids."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens
    position_ids: torch.Tensor  # (B, T)
    starts: torch.Tensor  # (B,) column of each row's first real token (CPU)
    lengths: torch.Tensor  # (B,) real tokens per row (CPU)

    def inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of a Hugging Face forward pass."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}


def pad(ids: Sequence[Sequence[int]], side: str, pad_id: int = 0, device: torch.device | str = "cpu") -> Padded:
    """Pad `ids` to the longest sequence on `side` ('left' or 'right'). Any
    pad id works: padded positions are masked and never read."""
    if side not in ("left", "right"):
        raise ActlabError(f"padding_side must be 'left' or 'right', not '{side}'", param="padding_side")
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
    width = int(lengths.max())
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # (B, T)
    starts = width - lengths if side == "left" else torch.zeros_like(lengths)
    for row, seq in enumerate(ids):
        start = int(starts[row])
        input_ids[row, start:start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, start:start + len(seq)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return Padded(input_ids.to(device), mask.to(device), positions.to(device), starts, lengths)
