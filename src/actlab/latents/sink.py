"""Passes over token windows: the windows through the engine with every SAE
fused (WindowExtractor), each SAE's codes given to a sink a WindowSinks
factory makes. The latents pass (latents_extractor) reduces them on the
device into a LatentSummary as its hook fires."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, TypeVar

import numpy as np
import torch

from ..engine import EngineModel, ExtractConfig, Sink
from ..results import ExtractStats
from ..saes.features import SAEExtractor
from ..saes.sae import SAE
from ..tokens import Tokenized
from .config import LatentsConfig
from .summary import Codes, LatentSummary, merge, summarize
from .windows import Windows

R = TypeVar("R")  # what a pass over windows returns


@dataclass
class LatentsPass:
    """One call's result: each SAE's summary, and with keep_tokens its nonzero
    codes (window key, position, latent, value) in window order."""

    summaries: dict[str, LatentSummary]
    codes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    stats: ExtractStats


def window_codes(sae: SAE, hidden: torch.Tensor, batch, has_bos: bool, centre: bool) -> Codes:
    """The nonzero codes of a batch of windows' hook activations (B, T, d),
    padding and BOS dropped; `centre`: the SAE reads activations centred over
    d_model (TransformerLens's centred writing weights)."""
    x = hidden.float()  # (B, T, d)
    if centre:
        x = x - x.mean(dim=-1, keepdim=True)
    real = batch.padded.attention_mask.bool()  # (B, T), right padding: column = position in the window
    if has_bos:
        real[:, 0] = False
    codes = Codes.of(sae.encode(x))  # nonzeros of (B, T, d_sae)
    kept = real[codes.window, codes.position]
    return Codes(codes.window[kept], codes.position[kept], codes.latent[kept], codes.value[kept])


class LatentSink(Sink):
    """Encodes one SAE's hook activations of whole windows (padding and BOS
    zeroed) and folds them into the running summary."""

    def __init__(self, sae: SAE, keys: torch.Tensor, has_bos: bool, cfg: LatentsConfig, centre: bool):
        self.sae, self.keys, self.has_bos, self.cfg, self.centre = sae, keys, has_bos, cfg, centre
        self.state = LatentSummary.empty(sae.cfg.d_sae, sae.device)
        self.pending: list[tuple[LatentSummary, tuple | None]] = []
        self.parts: list[tuple] = []

    def consume(self, hidden: torch.Tensor, batch) -> None:
        codes = window_codes(self.sae, hidden, batch, self.has_bos, self.centre)
        keys = self.keys[torch.from_numpy(batch.rows)].to(hidden.device)  # (B,)
        nonzero = None
        if self.cfg.keep_tokens:
            nonzero = tuple(t.cpu() for t in (keys[codes.window], codes.position, codes.latent, codes.value))
        self.pending.append((summarize(codes, keys, self.sae.cfg.d_sae, self.cfg.seed), nonzero))

    def mark(self) -> int:
        return len(self.pending)

    def rollback(self, mark: int) -> None:
        del self.pending[mark:]

    def end_batch(self) -> None:
        for summary, nonzero in self.pending:
            self.state = merge(self.state, summary, self.cfg)
            if nonzero is not None:
                self.parts.append(nonzero)
        self.pending = []

    def codes(self) -> tuple[np.ndarray, ...]:
        """(window key, position, latent, value) of every nonzero code, by window key then position, latent."""
        if not self.parts:
            return tuple(np.zeros(0, dtype) for dtype in (np.int64, np.int64, np.int64, np.float32))
        key, position, latent, value = (torch.cat(column).numpy() for column in zip(*self.parts))
        order = np.lexsort((latent, position, key))
        return key[order], position[order], latent[order], value[order]


class WindowSinks(Protocol[R]):
    """What a pass over token windows keeps: the sink of each SAE, and the
    pass's result from those sinks (SummarySinks: the latents summary;
    examples.ExampleSinks, examples.PoolSinks: example values, active latents)."""

    def sink(self, name: str, sae: SAE, windows: Windows, centre: bool) -> Sink:
        """The sink SAE `name` feeds over `windows` (`centre`: see window_codes)."""

    def result(self, sinks: dict[str, Sink], stats: ExtractStats) -> R:
        """The pass's result from its finished sinks, by SAE name."""


class WindowExtractor(SAEExtractor[R]):
    """SAE codes over token windows (right padded, each window's own BOS):
    one forward pass for every SAE, each SAE's codes given to the sink
    `factory` makes for it, the result `factory` builds from them."""

    def __init__(self, model: EngineModel, saes: Sequence | Mapping | None, factory: WindowSinks[R],
                 cfg: LatentsConfig | None = None):
        cfg = cfg or LatentsConfig()
        super().__init__(model, saes, ExtractConfig(pooling="last", padding_side="right", batch_size=cfg.batch_size,
                                                    max_batch_tokens=cfg.max_batch_tokens))
        self.factory = factory
        self.windows: Windows | None = None

    def run_windows(self, windows: Windows, on_batch=None) -> R:
        self.windows = windows
        return self.run_tokenized(Tokenized(windows.ids, windows.has_bos, 0), on_batch)

    def make_sink(self, name: str, sae: SAE, n_rows: int) -> Sink:
        return self.factory.sink(name, sae, self.windows, self.centres(sae))

    def make_result(self, sinks: dict[str, list[Sink]], **fields) -> R:
        return self.factory.result(self.sinks_by_sae(sinks), fields["stats"])


@dataclass
class SummarySinks:
    """WindowSinks of the latents pass: each SAE's LatentSummary (and with keep_tokens its nonzero codes)."""

    cfg: LatentsConfig

    def sink(self, name: str, sae: SAE, windows: Windows, centre: bool) -> LatentSink:
        return LatentSink(sae, torch.from_numpy(windows.keys), windows.has_bos, self.cfg, centre)

    def result(self, sinks: dict[str, LatentSink], stats: ExtractStats) -> LatentsPass:
        return LatentsPass({name: sink.state for name, sink in sinks.items()},
                           {name: sink.codes() for name, sink in sinks.items()} if self.cfg.keep_tokens else {},
                           stats)


def latents_extractor(model: EngineModel, saes: Sequence | Mapping | None,
                      cfg: LatentsConfig) -> WindowExtractor[LatentsPass]:
    """The latents pass: windows in, every SAE's summary out."""
    return WindowExtractor(model, saes, SummarySinks(cfg), cfg)
