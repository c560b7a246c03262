"""The latents pass: windows through the engine with every SAE fused, each
SAE's codes reduced on the device into a LatentSummary as its hook fires."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..activations import ExtractStats
from ..engine import EngineModel, ExtractConfig, Sink
from ..saes.features import FeatureExtractor
from ..saes.sae import SAE
from ..tokens import Tokenized
from .config import LatentsConfig
from .summary import Codes, LatentSummary, merge, summarize
from .windows import Windows


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

    def __init__(self, name: str, sae: SAE, keys: torch.Tensor, has_bos: bool, cfg: LatentsConfig, centre: bool):
        self.name, self.sae, self.keys, self.has_bos, self.cfg, self.centre = name, sae, keys, has_bos, cfg, centre
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


class LatentsExtractor(FeatureExtractor):
    """A FeatureExtractor over token windows whose sinks summarise latents."""

    def __init__(self, model: EngineModel, saes: Sequence | Mapping | None, cfg: LatentsConfig):
        engine = ExtractConfig(pooling="last", padding_side="right", batch_size=cfg.batch_size,
                               max_batch_tokens=cfg.max_batch_tokens)
        super().__init__(model, saes, engine)
        self.latents_cfg = cfg
        self.windows: Windows | None = None

    @property
    def prepend_bos(self) -> bool:
        return bool(self.cfg.prepend_bos)

    def summarize(self, windows: Windows, on_batch=None) -> LatentsPass:
        self.windows = windows
        return self.run_tokenized(Tokenized(windows.ids, windows.has_bos, 0), on_batch)

    def make_sinks(self, n_rows: int) -> dict[str, list[Sink]]:
        keys = torch.from_numpy(self.windows.keys)
        sinks: dict[str, list[Sink]] = {hook: [] for hook in self.hook_names}
        for name, sae in self.saes.items():
            sinks[sae.cfg.hook_name].append(LatentSink(name, sae, keys, self.windows.has_bos, self.latents_cfg,
                                                       self.centres(sae)))
        return sinks

    def make_result(self, sinks: dict[str, list[Sink]], **fields) -> LatentsPass:
        by_name = {sink.name: sink for group in sinks.values() for sink in group}
        return LatentsPass({name: by_name[name].state for name in self.saes},
                           {name: by_name[name].codes() for name in self.saes} if self.latents_cfg.keep_tokens
                           else {}, fields["stats"])
