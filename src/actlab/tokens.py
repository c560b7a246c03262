"""Tokenisation with explicit control of BOS and truncation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
