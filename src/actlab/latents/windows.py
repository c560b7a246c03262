"""A corpus cut into token windows: each text's tokens (no special tokens)
in consecutive chunks, each chunk led by BOS when the SAEs want one, so a
window is at most `context` tokens as the model sees them.

A window is named by its key, text_id << 24 | its index within the text,
which no shard split, batch or runner changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ActlabError

WINDOW_BITS = 24  # windows per text < 2**24


@dataclass
class Windows:
    ids: list[list[int]]  # each window's token ids as the model sees them (BOS first when has_bos)
    text_id: np.ndarray  # (n,) int64 the text each window comes from
    start: np.ndarray  # (n,) int64 offset of the window's first non-BOS token within its text's tokens
    has_bos: bool
    content: int  # non-BOS tokens per full window

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def keys(self) -> np.ndarray:
        """(n,) int64 window keys."""
        index = self.start // self.content
        return (self.text_id << WINDOW_BITS) | index


def cut_windows(tokenizer, texts: Sequence[str], first_text: int, context: int, prepend_bos: bool) -> Windows:
    """The windows of texts first_text, first_text + 1, ... (a text with no
    tokens has no window)."""
    if prepend_bos and tokenizer.bos_token_id is None:
        raise ActlabError("these SAEs want a BOS token but this tokenizer has none; "
                          "use SAEs trained without one", param="sae")
    content = context - prepend_bos
    if content < 1:
        raise ActlabError(f"a context of {context} leaves no room for a token after BOS; give at least 2",
                          param="context")
    ids, text_id, start = [], [], []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []
    for i, tokens in enumerate(encoded):
        if len(tokens) >= content << WINDOW_BITS:
            raise ActlabError(f"text {first_text + i} has {len(tokens)} tokens, more than 2**24 windows; "
                              "split it or raise --context", param="context")
        for s in range(0, len(tokens), content):
            ids.append(([tokenizer.bos_token_id] if prepend_bos else []) + tokens[s:s + content])
            text_id.append(first_text + i)
            start.append(s)
    return Windows(ids, np.asarray(text_id, dtype=np.int64), np.asarray(start, dtype=np.int64), prepend_bos, content)
