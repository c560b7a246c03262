"""The contrast pass: the prompt and both continuations of every pair through
the engine, each requested SAE encoding its hook's residual (at the last
token, or averaged over the continuation's own tokens) and computing every
per-text metric on the device; optionally each continuation's
log-probability from the same pass (the LM head at its positions only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from ..engine import EngineModel, ExtractConfig, Extractor, Sink
from ..errors import ActlabError
from ..hooks import FINAL_NORM, lm_logits
from ..results import ExtractStats
from ..saes import SAE
from ..tokens import tokenize
from .config import ContrastConfig
from .metrics import noise, text_metrics
from .pairs import PROMPT, Pairs

METRICS = ("l0", "recon_error", "recon_rel_error", "gini", "energy", "l2", "sphericity", "elongation",
           "eigen_entropy", "eigen_entropy_norm", "participation_ratio", "misalignment_deg", "stability_jaccard",
           "top50_entropy")
VECTORS = ("residual", "reconstruction", "centroid", "axis")


def text_rows(pairs: Pairs, lo: int, hi: int) -> tuple[list[str], list[int], list[str]]:
    """The texts of pairs [lo, hi), pair-major (prompt, first, second, prompt, ...),
    with each text's pair index and condition."""
    texts, owners, conditions = [], [], []
    for i in range(lo, hi):
        for condition in pairs.conditions:
            texts.append(pairs.text(condition, i))
            owners.append(i)
            conditions.append(condition)
    return texts, owners, conditions


def continuation_starts(model: EngineModel, texts: list[str], prompts: list[str], conditions: list[str],
                        cfg: ExtractConfig) -> list[int]:
    """Each text's first token of its own continuation: after the prompt's tokens
    (their common prefix, should a merge cross the boundary); a prompt alone
    starts after its BOS."""
    full = tokenize(model.tokenizer, texts, cfg.prepend_bos, cfg.max_length)
    alone = tokenize(model.tokenizer, prompts, cfg.prepend_bos, cfg.max_length)
    starts = []
    for ids, prompt_ids, condition in zip(full.ids, alone.ids, conditions):
        if condition == PROMPT:
            starts.append(min(int(full.has_bos), len(ids) - 1))
            continue
        common = next((i for i, (a, b) in enumerate(zip(ids, prompt_ids)) if a != b), min(len(ids), len(prompt_ids)))
        if common >= len(ids):
            raise ActlabError(f"a continuation has no tokens of its own (truncated by max_length?): {texts[0][:60]}",
                              param="max_length")
        starts.append(common)
    return starts


class ContrastSink(Sink):
    """One SAE at its hook: pooled residual -> code, reconstruction, noisy codes
    -> every metric, written into the shard's host arrays at the batch's rows.
    Rerunning a batch (after an out-of-memory split) rewrites the same rows."""

    def __init__(self, name: str, sae: SAE, layer_index: int, n_rows: int, d: int, text_ids: np.ndarray,
                 cfg: ContrastConfig):
        self.name, self.sae, self.layer_index, self.cfg, self.text_ids = name, sae, layer_index, cfg, text_ids
        self.metrics = {metric: np.full(n_rows, np.nan) for metric in METRICS}
        self.vectors = {vector: np.zeros((n_rows, d), np.float32) for vector in VECTORS}

    def consume(self, hidden: torch.Tensor, batch) -> None:
        x = batch.plan.apply(hidden)  # (B, d) float32
        f, x_hat = self.sae.reconstruct(x)  # (B, d_sae), (B, d)
        rows = batch.dest.numpy()
        generators = [torch.Generator().manual_seed(int(self.cfg.seed * 1_000_003 + self.text_ids[r] * 97 +
                                                        self.layer_index)) for r in rows]
        eps = noise(x, generators, self.cfg.draws, self.cfg.noise, relative=not self.cfg.absolute_noise)  # (B, K, d)
        noisy = self.sae.encode((x[:, None] + eps).reshape(-1, x.shape[-1])).reshape(len(x), self.cfg.draws, -1)
        metrics, geo = text_metrics(x, f, x_hat, self.sae.W_dec, noisy)
        for metric, values in metrics.items():
            self.metrics[metric][rows] = values.cpu().numpy()
        for vector, values in zip(VECTORS, (x, x_hat, geo.centroid, geo.axis)):
            self.vectors[vector][rows] = values.float().cpu().numpy()


class ScoreSink(Sink):
    """At the final norm: each text's log-probability of its continuation given
    its prompt, sum over the continuation's tokens of log p(token | before),
    from the LM head at those positions only (NaN for a prompt alone)."""

    def __init__(self, hf_model, n_rows: int, starts: np.ndarray):
        self.hf_model, self.starts = hf_model, starts  # starts[i]: text i's first continuation token, -1: none
        self.logprob = np.full(n_rows, np.nan)

    def consume(self, hidden: torch.Tensor, batch) -> None:
        width = hidden.shape[1]
        flat, owner = [], []
        for k, (row, column, length) in enumerate(zip(batch.rows, batch.padded.starts, batch.padded.lengths)):
            start = int(self.starts[row])
            if start >= 1:  # the logits at position p score the token at p + 1
                flat.append(k * width + int(column) + torch.arange(start - 1, int(length) - 1))
                owner.append(torch.full((int(length) - start,), k))
        if not flat:
            return
        flat, owner = torch.cat(flat).to(hidden.device), torch.cat(owner).to(hidden.device)
        logp = torch.log_softmax(lm_logits(self.hf_model, hidden.reshape(-1, hidden.shape[-1])[flat]).float(), -1)
        targets = batch.padded.input_ids.reshape(-1)[flat + 1]
        token_logp = logp.gather(-1, targets[:, None])[:, 0].double()  # (N,)
        per_row = torch.zeros(len(batch.rows), dtype=torch.float64, device=hidden.device).index_add_(0, owner,
                                                                                                    token_logp)
        scored = sorted(set(owner.tolist()))
        self.logprob[batch.dest.numpy()[scored]] = per_row[scored].cpu().numpy()


@dataclass
class ContrastResult:
    """What one ContrastExtractor call returns: one ContrastSink per SAE (its
    metrics and vectors per text), each text's log-probability of its
    continuation when scored (NaN for a prompt alone), token counts and the
    pass's figures."""

    sinks: list[ContrastSink]
    logprob: np.ndarray | None  # (n_texts,)
    n_tokens: torch.Tensor  # (n_texts,)
    stats: ExtractStats


class ContrastExtractor(Extractor["ContrastResult"]):
    """An Extractor whose hooks feed ContrastSinks, one per SAE, and (scoring)
    a ScoreSink at the final norm."""

    def __init__(self, model: EngineModel, saes: Mapping[str, SAE], cfg: ExtractConfig, contrast: ContrastConfig,
                 text_ids: np.ndarray, starts: np.ndarray | None = None):
        self.saes, self.contrast, self.text_ids, self.starts = saes, contrast, text_ids, starts
        if contrast.score:
            cfg = ExtractConfig.of(cfg, hooks=[*cfg.hooks, FINAL_NORM])
        super().__init__(model, cfg)
        self.layers = {name: i for i, name in enumerate(self.saes)}

    def make_sinks(self, n_rows: int) -> dict[str, list[Sink]]:
        sinks: dict[str, list[Sink]] = {hook: [] for hook in self.hook_names}
        for name, sae in self.saes.items():
            sinks[sae.cfg.hook_name].append(ContrastSink(name, sae, self.layers[name], n_rows, self.model.d_model,
                                                         self.text_ids, self.contrast))
        if self.contrast.score:
            sinks[FINAL_NORM].append(ScoreSink(self.model.hf_model, n_rows, self.starts))
        return sinks

    def make_result(self, sinks: dict[str, list[Sink]], **fields) -> ContrastResult:
        every = [sink for group in sinks.values() for sink in group]
        scores = [sink.logprob for sink in every if isinstance(sink, ScoreSink)]
        return ContrastResult([s for s in every if isinstance(s, ContrastSink)], scores[0] if scores else None,
                              fields["n_tokens"], fields["stats"])
