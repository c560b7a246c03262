"""The batched extraction engine.

Texts are sorted by length and grouped under a token budget; each batch gets one
forward pass through the base model (no LM head) that stops by exception right
after the last requested hook fires. Hooks pool on the device as they fire, so
only pooled rows ever leave the model, and they are copied to preallocated host
tensors without stalling the next batch.

`Extractor` is a plain callable over batches of texts, so a distributed runner
(Ray Data `map_batches`) can run it unchanged.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import hooks as hook_points
from .activations import Activations, ExtractStats
from .errors import ActlabError
from .pooling import Pooling, PoolPlan, parse_pooling, plan_pooling
from .tokens import Tokenized, tokenize

CPU_TOKEN_BUDGET = 640  # measured: larger padded batches run slower on CPU caches
CUDA_MAX_TOKEN_BUDGET = 16384
MPS_TOKEN_BUDGET = 8192


class _StopForward(Exception):
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
class _Batch:
    rows: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    plan: PoolPlan
    dest: torch.Tensor  # host rows (pooled) or host token rows ('all') to fill


class _HostCopies:
    """Device-to-host copies. On CUDA each batch's pooled rows go to pinned
    staging buffers asynchronously and are scattered into the outputs only after
    the next batch has been queued, so the copy never stalls the device."""

    def __init__(self) -> None:
        self._current: list = []
        self._pending: deque[list] = deque()

    def put(self, out: torch.Tensor, dest: torch.Tensor, values: torch.Tensor) -> None:
        values = values.float()
        if values.device.type != "cuda":
            out.index_copy_(0, dest, values.cpu())
            return
        staging = torch.empty(values.shape, dtype=out.dtype, pin_memory=True)
        staging.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._current.append((out, dest, staging, event))

    def mark(self) -> int:
        return len(self._current)

    def rollback(self, mark: int) -> None:
        """Drop the copies queued since `mark` (a forward that ran out of memory)."""
        del self._current[mark:]

    def end_batch(self) -> None:
        self._pending.append(self._current)
        self._current = []
        while len(self._pending) > 1:
            self._scatter(self._pending.popleft())

    def flush(self) -> None:
        self.end_batch()
        while self._pending:
            self._scatter(self._pending.popleft())

    @staticmethod
    def _scatter(copies: list) -> None:
        for out, dest, staging, event in copies:
            event.synchronize()
            out.index_copy_(0, dest, staging)


class ActivationSink:
    """Pools a hook's activations and fills preallocated host rows."""

    def __init__(self, n_rows: int, width: int, pin: bool):
        self.out = torch.empty(n_rows, width, dtype=torch.float32, pin_memory=pin)
        self.copies = _HostCopies()

    def consume(self, hidden: torch.Tensor, batch: "_Batch") -> None:
        self.copies.put(self.out, batch.dest, batch.plan.apply(hidden))

    def mark(self) -> int:
        return self.copies.mark()

    def rollback(self, mark: int) -> None:
        self.copies.rollback(mark)

    def end_batch(self) -> None:
        self.copies.end_batch()

    def finish(self) -> None:
        self.copies.flush()


class Extractor:
    """Runs hooks over texts; call it with a list of texts, get Activations.

    Each hook feeds one or more sinks (`consume(hidden, batch)`) as it fires;
    subclasses choose the sinks and the result (see actlab.saes.features).
    A forward that runs out of memory may have fed some sinks already: they
    roll back to their `mark()` before the batch is split and rerun."""

    def __init__(self, model, hooks: Sequence[str], pooling: str | int | Sequence[int] = "last",
                 batch_size: int | None = None, max_batch_tokens: int | None = None,
                 padding_side: str | None = None, max_length: int | None = None,
                 prepend_bos: bool | None = None, include_bos: bool = False):
        if not hooks:
            raise ActlabError("no hooks requested; pass at least one hook name (see `actlab models`)")
        if padding_side not in (None, "left", "right"):
            raise ActlabError(f"padding_side must be 'left' or 'right', not '{padding_side}'")
        if batch_size is not None and batch_size < 1:
            raise ActlabError("batch_size must be at least 1")
        self.model = model
        self.hook_names = list(dict.fromkeys(hooks))
        self.sites = [hook_points.resolve(model.hf_model, h) for h in self.hook_names]
        self.pooling: Pooling = parse_pooling(pooling, include_bos)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        if batch_size is None and max_batch_tokens is None:
            self.max_batch_tokens = auto_token_budget(model.device, model.d_model)
        self.padding_side = padding_side or "right"
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.prepend_bos = prepend_bos
        self.widths = model.hook_widths(self.hook_names)
        self.oom_splits = 0

    def __call__(self, texts: Sequence[str], on_batch: Callable[[int, int], None] | None = None) -> Activations:
        if isinstance(texts, str):
            raise ActlabError("texts must be a list of strings, not one string; wrap it: [text]")
        if len(self.pooling.positions) > 1 and len(self.pooling.positions) != len(texts):
            raise ActlabError(f"{len(self.pooling.positions)} positions given for {len(texts)} texts; "
                              "give one position per text")
        started = time.perf_counter()
        self.oom_splits = 0  # per call: runs add up the calls' statistics
        tok = tokenize(self.model.tokenizer, texts, self.prepend_bos, self.max_length)
        lengths = np.array(tok.lengths)
        offsets = None
        if self.pooling.per_token:
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
            offsets[1:] = torch.from_numpy(np.cumsum(lengths))
        sinks = self.make_sinks(int(offsets[-1]) if offsets is not None else len(lengths))
        all_sinks = self._sinks = [sink for group in sinks.values() for sink in group]
        n_padded = 0
        handles = self._register(sinks)
        try:
            with torch.inference_mode():
                for rows in plan_batches(lengths, self.batch_size, self.max_batch_tokens):
                    n_padded += self._run_rows(rows, tok, offsets)
                    for sink in all_sinks:
                        sink.end_batch()
                    if on_batch:
                        on_batch(len(rows), int(lengths[rows].sum()))
                for sink in all_sinks:
                    sink.finish()
        finally:
            for handle in handles:
                handle.remove()
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        stats = ExtractStats(
            n_texts=len(texts), n_tokens=int(lengths.sum()), n_padded_tokens=n_padded,
            seconds=time.perf_counter() - started, n_truncated=tok.n_truncated,
            oom_splits=self.oom_splits)
        tokens = None
        token_ids = None
        if self.pooling.per_token:
            token_ids = torch.tensor([t for ids in tok.ids for t in ids], dtype=torch.int64)
            tokens = self.model.token_strings(tok.ids)
        return self.make_result(sinks, pooling=self.pooling.spec, n_tokens=torch.from_numpy(lengths),
                                offsets=offsets, tokens=tokens, token_ids=token_ids, stats=stats,
                                has_bos=tok.has_bos)

    # -- what the hooks feed, and what comes back ------------------------------

    def make_sinks(self, n_rows: int) -> dict[str, list]:
        pin = self.model.device.type == "cuda"
        return {name: [ActivationSink(n_rows, self.widths[name], pin)] for name in self.hook_names}

    def make_result(self, sinks: dict[str, list], **fields) -> Activations:
        return Activations({name: group[0].out for name, group in sinks.items()}, **fields)

    def _register(self, sinks: dict[str, list]) -> list:
        """One hook per (module, input/output) site; the last one to fire stops the pass."""
        groups: dict[tuple[int, bool], list[str]] = {}
        modules = {}
        for site in self.sites:
            key = (id(site.module), site.capture_input)
            groups.setdefault(key, []).append(site.name)
            modules[key] = site.module
        self._fired = 0
        n_sites = len(groups)
        handles = []

        def capture(names: list[str], hidden) -> None:
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            if hidden.dim() != 3:
                raise ActlabError(f"hook '{names[0]}' produced shape {tuple(hidden.shape)}, "
                                  "not (batch, tokens, width); pick a residual-stream module")
            for name in names:
                for sink in sinks[name]:
                    sink.consume(hidden, self._batch)
            self._fired += 1
            if self._fired == n_sites:
                raise _StopForward

        for key, names in groups.items():
            module = modules[key]
            if key[1]:
                def pre_hook(mod, args, kwargs, names=names):
                    capture(names, args[0] if args else kwargs["hidden_states"])
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                def post_hook(mod, args, output, names=names):
                    capture(names, output)
                handles.append(module.register_forward_hook(post_hook))
        return handles

    # -- one batch -----------------------------------------------------------

    def make_batch(self, rows: np.ndarray, tok: Tokenized, offsets: torch.Tensor | None) -> _Batch:
        seqs = [tok.ids[r] for r in rows]
        lengths = torch.tensor([len(s) for s in seqs])
        width = int(lengths.max())
        pad_id = self.model.pad_id
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        starts = width - lengths if self.padding_side == "left" else torch.zeros_like(lengths)
        for i, seq in enumerate(seqs):
            s = int(starts[i])
            input_ids[i, s:s + len(seq)] = torch.tensor(seq)
            mask[i, s:s + len(seq)] = 1
        # Positions count real tokens only, so left padding shifts nothing
        # (absolute-position models such as GPT-2 depend on this).
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        plan = plan_pooling(self.pooling, starts, lengths, tok.has_bos, width, rows.tolist())
        if self.pooling.per_token:
            dest = torch.cat([torch.arange(int(offsets[r]), int(offsets[r + 1])) for r in rows])
        else:
            dest = torch.from_numpy(rows.astype(np.int64))
        device = self.model.device
        return _Batch(rows, input_ids.to(device), mask.to(device), position_ids.to(device),
                      plan.to(device), dest)

    def _run_rows(self, rows: np.ndarray, tok: Tokenized, offsets: torch.Tensor | None) -> int:
        """Forward one batch; on CUDA out-of-memory split it in two and go on."""
        self._batch = self.make_batch(rows, tok, offsets)
        marks = [sink.mark() for sink in self._sinks]
        try:
            self._forward(self._batch)
            return int(self._batch.input_ids.numel())
        except torch.cuda.OutOfMemoryError:
            pass
        # Split outside the except block: the exception's traceback holds the
        # failed forward's frames, and with them its activations on the device.
        for sink, mark in zip(self._sinks, marks):
            sink.rollback(mark)
        if len(rows) == 1:
            raise ActlabError("out of memory on a single text; lower --max-length or the batch budget")
        self._batch = None
        torch.cuda.empty_cache()
        self.oom_splits += 1
        half = len(rows) // 2
        return self._run_rows(rows[:half], tok, offsets) + self._run_rows(rows[half:], tok, offsets)

    def _forward(self, batch: _Batch) -> None:
        self._fired = 0
        try:
            self.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  position_ids=batch.position_ids, use_cache=False)
        except _StopForward:
            return
        raise ActlabError(f"hooks {self.hook_names} did not all fire during the forward pass; "
                          "use modules that the model runs on every token")
