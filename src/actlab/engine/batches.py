"""What the engine needs of a model, progress reports, and batches: texts
grouped longest first under a token budget, each padded with its pooling
plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from ..pooling import Pooling, PoolPlan, plan_pooling
from ..tokens import Tokenized, pad

CPU_TOKEN_BUDGET = 640  # measured: larger padded batches run slower on CPU caches
CUDA_MAX_TOKEN_BUDGET = 16384
MPS_TOKEN_BUDGET = 8192

OnBatch = Callable[[int, int], None]  # progress callback: (texts, tokens) just done


class EngineModel(Protocol):
    """What the engine needs of a model (actlab.models.Model is one)."""

    hf_model: torch.nn.Module  # the Hugging Face causal LM
    tokenizer: Any
    config: Any  # the text config: num_hidden_layers, hidden_size, max_position_embeddings, ...
    name: str  # hub id, folder or alias (default SAEs are looked up by it)

    @property
    def architecture(self) -> str:
        """The config's model_type (gpt2, llama, ...)."""

    @property
    def base_model(self) -> torch.nn.Module:
        """The transformer without its LM head."""

    @property
    def device(self) -> torch.device: ...

    @property
    def d_model(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def hook_widths(self, names: Sequence[str]) -> dict[str, int]:
        """Width of each hook's activation."""

    def token_strings(self, ids_per_text: Sequence[Sequence[int]]) -> list[str]:
        """Every token of every text as a string, texts concatenated."""


class Progress(Protocol):
    """What a run reports progress to (the CLI draws it as a bar)."""

    def start(self, total: int, shards: int) -> None:
        """The run has `total` texts (or prompts) left to do, in `shards` shards."""

    def advance(self, n_texts: int, n_tokens: int) -> None:
        """A batch of n_texts texts with n_tokens tokens is done."""

    def shard_done(self) -> None:
        """One more shard is written."""


class StopForward(Exception):
    """Raised by the last hook to fire: nothing after it needs computing."""


def plan_batches(lengths: Sequence[int], batch_size: int | None = None,
                 max_batch_tokens: int | None = None) -> list[np.ndarray]:
    """Group text indices, longest first, so that each batch's padded size
    (rows x longest) stays under max_batch_tokens and rows under batch_size."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        rows = end - start
        over_rows = batch_size is not None and rows > batch_size
        over_tokens = max_batch_tokens is not None and rows > 1 and \
            rows * lengths[order[start]] > max_batch_tokens
        if over_rows or over_tokens:
            batches.append(order[start:end - 1])
            start = end - 1
    if start < len(order):
        batches.append(order[start:])
    return batches


def auto_token_budget(device: torch.device, d_model: int) -> int:
    if device.type == "mps":
        return MPS_TOKEN_BUDGET
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    # Per token, the live forward state is a few dozen d_model-wide vectors.
    per_token = d_model * 4 * 48
    # An H100 is saturated by 8-16k tokens of a 135M model (measured); bigger
    # batches only add padding, since fewer batches group lengths less tightly.
    return int(min(max(free * 0.3 / per_token, 2048), CUDA_MAX_TOKEN_BUDGET))


@dataclass
class Batch:
    """One padded batch, its pooling plan, and where its pooled rows go."""

    rows: np.ndarray  # indices of the texts in this batch
    padded: object  # actlab.tokens.Padded, on the model's device
    plan: PoolPlan  # on the model's device
    dest: torch.Tensor  # host rows (pooled) or host token rows ('all') to fill


def padded_batch(model: EngineModel, tok: Tokenized, rows: np.ndarray, pooling: Pooling, padding_side: str,
                 text_offsets: torch.Tensor | None = None) -> Batch:
    """The batch of texts `rows` of `tok`; text_offsets (per-token pooling)
    places each text's token rows in the output."""
    padded = pad([tok.ids[r] for r in rows], padding_side, model.pad_id, model.device)
    width = padded.input_ids.shape[1]
    plan = plan_pooling(pooling, padded.starts, padded.lengths, tok.has_bos, width, rows.tolist())
    if pooling.per_token:
        dest = torch.cat([torch.arange(int(text_offsets[r]), int(text_offsets[r + 1])) for r in rows])
    else:
        dest = torch.from_numpy(rows.astype(np.int64))
    return Batch(rows, padded, plan.to(model.device), dest)
