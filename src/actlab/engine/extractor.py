"""The Extractor: hooks over texts in batches, one forward pass each that
stops right after the last hook, sinks fed as hooks fire, out-of-memory
batches split and rerun."""

from __future__ import annotations

import time
from typing import Generic, Sequence, TypeVar

import numpy as np
import torch

from .. import hooks as hook_points
from ..errors import ActlabError
from ..interventions import BatchEdits, per_row
from ..pooling import Pooling
from ..results import Activations, ExtractStats
from ..tokens import Tokenized, offsets, tokenize
from .batches import Batch, EngineModel, OnBatch, StopForward, auto_token_budget, padded_batch, plan_batches
from .config import ExtractConfig
from .sinks import ActivationSink, Sink


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

    def __call__(self, texts: Sequence[str], on_batch: OnBatch | None = None, interventions=None) -> R:
        """interventions: None, Interventions for every text, or one list (or
        None) per text (actlab.interventions.per_row), applied in the forward."""
        if isinstance(texts, str):
            raise ActlabError("texts must be a list of strings, not one string; wrap it: [text]", param="texts")
        if len(self.pooling.positions) > 1 and len(self.pooling.positions) != len(texts):
            raise ActlabError(f"{len(self.pooling.positions)} positions given for {len(texts)} texts; "
                              "give one position per text", param="pooling")
        started = time.perf_counter()
        edits = BatchEdits(self.model, per_row(interventions, len(texts)))
        tok = tokenize(self.model.tokenizer, texts, self.cfg.prepend_bos, self.max_length)
        return self.run_tokenized(tok, on_batch, started, edits)

    def run_tokenized(self, tok: Tokenized, on_batch: OnBatch | None = None, started: float | None = None,
                      edits: BatchEdits | None = None) -> R:
        """The same over sequences already tokenized (token windows of a
        corpus, say); `started`: when the call began, for its timing;
        `edits`: the call's interventions per row."""
        started = time.perf_counter() if started is None else started
        lengths = np.array(tok.lengths)
        edits = edits or BatchEdits(self.model, [()] * len(lengths))
        edits.check_lengths(lengths)
        text_offsets = offsets(lengths) if self.pooling.per_token else None
        n_rows = int(text_offsets[-1]) if text_offsets is not None else len(lengths)
        sinks = self.make_sinks(n_rows)
        sites = self._site_groups()
        run = Pass(sinks, len(sites))
        n_padded = 0
        feeds = {site: (lambda hidden, names=names: run.feed(names, hidden)) for site, names in sites.items()}
        with edits.hooked(), hook_points.capture(self.model.hf_model, feeds), torch.inference_mode():
            for rows in plan_batches(lengths, self.cfg.batch_size, self.max_batch_tokens):
                n_padded += self._run_rows(run, rows, tok, text_offsets, edits)
                for sink in run.all_sinks:
                    sink.end_batch()
                if on_batch:
                    on_batch(len(rows), int(lengths[rows].sum()))
            for sink in run.all_sinks:
                sink.finish()
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        stats = ExtractStats(
            n_texts=len(tok.ids), n_tokens=int(lengths.sum()), n_padded_tokens=n_padded,
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

    def _run_rows(self, run: Pass, rows: np.ndarray, tok: Tokenized, text_offsets: torch.Tensor | None,
                  edits: BatchEdits) -> int:
        """Forward one batch; on CUDA out-of-memory split it in two and go on."""
        run.batch = padded_batch(self.model, tok, rows, self.pooling, self.cfg.padding_side, text_offsets)
        if edits:
            edits.plan(rows, run.batch.padded)
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
        return self._run_rows(run, rows[:half], tok, text_offsets, edits) + \
            self._run_rows(run, rows[half:], tok, text_offsets, edits)

    def _forward(self, run: Pass) -> None:
        run.fired = 0
        try:
            self.model.base_model(**run.batch.padded.inputs(), use_cache=False)
        except StopForward:
            return
        raise ActlabError(f"hooks {self.hook_names} did not all fire during the forward pass; "
                          "use modules that the model runs on every token", param="hooks")
