"""The batched extraction engine.

Texts are sorted by length and grouped under a token budget; each batch gets one
forward pass through the base model (no LM head) that stops by exception right
after the last requested hook fires. Hooks pool on the device as they fire, so
only pooled rows ever leave the model, and they are copied to preallocated host
tensors without stalling the next batch.

`Extractor` is a plain callable over lists of texts, so a distributed runner
can call it unchanged. Its extension points are typed: a hook feeds `Sink`s
(subclass and override `consume`, and what else it needs), an extractor
subclass chooses its sinks and its result type (`Extractor[Features]`), and
the model is any `EngineModel` (actlab.models.Model is one).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

import numpy as np
import torch

from . import hooks as hook_points
from .activations import Activations, ExtractStats
from .errors import ActlabError
from .pooling import Pooling, PoolPlan, parse_pooling, plan_pooling
from .tokens import Tokenized, offsets, pad, tokenize

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


class HostCopies:
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


class Sink(ABC):
    """What a hook feeds as it fires: `consume` takes the hook's activations
    for the batch in flight. A forward that runs out of memory may have fed
    some sinks already: they roll back to their `mark()` before the batch is
    split and rerun (the defaults suit a sink that rewrites the same rows on a
    rerun). `end_batch` follows every batch, `finish` the last."""

    @abstractmethod
    def consume(self, hidden: torch.Tensor, batch: Batch) -> None:
        """hidden: (B, T, width) at the hook, for batch.rows."""

    def mark(self) -> Any:
        return None

    def rollback(self, mark: Any) -> None:
        return None

    def end_batch(self) -> None:
        return None

    def finish(self) -> None:
        return None


class ActivationSink(Sink):
    """Pools a hook's activations and fills preallocated host rows."""

    def __init__(self, n_rows: int, width: int, pin: bool):
        self.out = torch.empty(n_rows, width, dtype=torch.float32, pin_memory=pin)  # (n_rows, width)
        self.copies = HostCopies()

    def consume(self, hidden: torch.Tensor, batch: Batch) -> None:
        self.copies.put(self.out, batch.dest, batch.plan.apply(hidden))

    def mark(self) -> int:
        return self.copies.mark()

    def rollback(self, mark: int) -> None:
        self.copies.rollback(mark)

    def end_batch(self) -> None:
        self.copies.end_batch()

    def finish(self) -> None:
        self.copies.flush()


class Pass:
    """The state of one Extractor call: its sinks, the batch in flight, how
    many hook sites fired in the current forward, and out-of-memory splits."""

    def __init__(self, sinks: dict[str, list[Sink]], n_sites: int):
        self.sinks = sinks
        self.all_sinks = [sink for group in sinks.values() for sink in group]
        self.n_sites = n_sites
        self.fired = 0
        self.batch: Batch | None = None
        self.oom_splits = 0

    def feed(self, names: list[str], hidden: torch.Tensor) -> None:
        """A hook site fired: its names' sinks consume; the last site stops the pass."""
        if hidden.dim() != 3:
            raise ActlabError(f"hook '{names[0]}' produced shape {tuple(hidden.shape)}, "
                              "not (batch, tokens, width); pick a residual-stream module")
        for name in names:
            for sink in self.sinks[name]:
                sink.consume(hidden, self.batch)
        self.fired += 1
        if self.fired == self.n_sites:
            raise StopForward


R = TypeVar("R")  # what an extractor returns


class Extractor(Generic[R]):
    """Runs hooks over texts; call it with a list of texts, get its result
    (Activations here).

    Each hook feeds one or more `Sink`s as it fires; a subclass chooses the
    sinks (`make_sinks`) and builds its result from them (`make_result`), e.g.
    actlab.saes.features.FeatureExtractor, an `Extractor[Features]`."""

    def __init__(self, model: EngineModel, cfg: ExtractConfig):
        if not cfg.hooks:
            raise ActlabError("no hooks requested; pass at least one hook name (see `actlab models`)",
                              param="hooks")
        self.model = model
        self.cfg = cfg
        self.hook_names = cfg.hooks
        self.sites = [hook_points.resolve(model.hf_model, h) for h in self.hook_names]
        self.pooling: Pooling = cfg.pool
        self.max_batch_tokens = cfg.max_batch_tokens
        if cfg.batch_size is None and cfg.max_batch_tokens is None:
            self.max_batch_tokens = auto_token_budget(model.device, model.d_model)
        self.max_length = cfg.max_length or getattr(model.config, "max_position_embeddings", None)
        self.widths = model.hook_widths(self.hook_names)

    def __call__(self, texts: Sequence[str], on_batch: OnBatch | None = None) -> R:
        if isinstance(texts, str):
            raise ActlabError("texts must be a list of strings, not one string; wrap it: [text]", param="texts")
        if len(self.pooling.positions) > 1 and len(self.pooling.positions) != len(texts):
            raise ActlabError(f"{len(self.pooling.positions)} positions given for {len(texts)} texts; "
                              "give one position per text", param="pooling")
        started = time.perf_counter()
        tok = tokenize(self.model.tokenizer, texts, self.cfg.prepend_bos, self.max_length)
        lengths = np.array(tok.lengths)
        text_offsets = offsets(lengths) if self.pooling.per_token else None
        n_rows = int(text_offsets[-1]) if text_offsets is not None else len(lengths)
        sinks = self.make_sinks(n_rows)
        sites = self._site_groups()
        run = Pass(sinks, len(sites))
        n_padded = 0
        feeds = {site: (lambda hidden, names=names: run.feed(names, hidden)) for site, names in sites.items()}
        with hook_points.capture(self.model.hf_model, feeds), torch.inference_mode():
            for rows in plan_batches(lengths, self.cfg.batch_size, self.max_batch_tokens):
                n_padded += self._run_rows(run, rows, tok, text_offsets)
                for sink in run.all_sinks:
                    sink.end_batch()
                if on_batch:
                    on_batch(len(rows), int(lengths[rows].sum()))
            for sink in run.all_sinks:
                sink.finish()
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        stats = ExtractStats(
            n_texts=len(texts), n_tokens=int(lengths.sum()), n_padded_tokens=n_padded,
            seconds=time.perf_counter() - started, n_truncated=tok.n_truncated, oom_splits=run.oom_splits)
        tokens = token_ids = None
        if self.pooling.per_token:
            token_ids = torch.tensor([t for ids in tok.ids for t in ids], dtype=torch.int64)
            tokens = self.model.token_strings(tok.ids)
        return self.make_result(sinks, pooling=self.pooling.spec, n_tokens=torch.from_numpy(lengths),
                                offsets=text_offsets, tokens=tokens, token_ids=token_ids, stats=stats,
                                has_bos=tok.has_bos)

    # -- what the hooks feed, and what comes back ------------------------------

    def make_sinks(self, n_rows: int) -> dict[str, list[Sink]]:
        """hook name -> the sinks it feeds (n_rows: pooled rows of the call)."""
        pin = self.model.device.type == "cuda"
        return {name: [ActivationSink(n_rows, self.widths[name], pin)] for name in self.hook_names}

    def make_result(self, sinks: dict[str, list[Sink]], **fields) -> R:
        """The call's result from its finished sinks; `fields` are Result's
        (pooling, n_tokens, offsets, tokens, token_ids, stats, has_bos)."""
        return Activations({name: group[0].out for name, group in sinks.items()}, **fields)

    def _site_groups(self) -> dict[hook_points.HookSite, list[str]]:
        """One hook per (module, input/output) site, feeding every name there."""
        groups: dict[tuple[int, bool], list[str]] = {}
        first: dict[tuple[int, bool], hook_points.HookSite] = {}
        for site in self.sites:
            key = (id(site.module), site.capture_input)
            groups.setdefault(key, []).append(site.name)
            first.setdefault(key, site)
        return {first[key]: names for key, names in groups.items()}

    # -- one batch -----------------------------------------------------------

    def _run_rows(self, run: Pass, rows: np.ndarray, tok: Tokenized, text_offsets: torch.Tensor | None) -> int:
        """Forward one batch; on CUDA out-of-memory split it in two and go on."""
        run.batch = padded_batch(self.model, tok, rows, self.pooling, self.cfg.padding_side, text_offsets)
        marks = [sink.mark() for sink in run.all_sinks]
        try:
            self._forward(run)
            return int(run.batch.padded.input_ids.numel())
        except torch.cuda.OutOfMemoryError:
            pass
        # Split outside the except block: the exception's traceback holds the
        # failed forward's frames, and with them its activations on the device.
        for sink, mark in zip(run.all_sinks, marks):
            sink.rollback(mark)
        if len(rows) == 1:
            raise ActlabError("out of memory on a single text; lower max_length or the batch budget",
                              param="max_length")
        run.batch = None
        torch.cuda.empty_cache()
        run.oom_splits += 1
        half = len(rows) // 2
        return self._run_rows(run, rows[:half], tok, text_offsets) + \
            self._run_rows(run, rows[half:], tok, text_offsets)

    def _forward(self, run: Pass) -> None:
        run.fired = 0
        try:
            self.model.base_model(**run.batch.padded.inputs(), use_cache=False)
        except StopForward:
            return
        raise ActlabError(f"hooks {self.hook_names} did not all fire during the forward pass; "
                          "use modules that the model runs on every token", param="hooks")
