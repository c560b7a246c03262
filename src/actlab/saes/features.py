"""SAE features in the extraction pass: each SAE encodes on the device right
after its hook fires, the pooling is applied in feature space (pool(encode(x))
over the same real tokens as activations), and only nonzero features and
per-latent statistics leave the device unless dense features are asked for."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Mapping, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import torch

from ..engine import EngineModel, ExtractConfig, Extractor, HostCopies, Sink
from ..errors import ActlabError
from ..results import Result
from .defaults import default_saes
from .loading import load_sae
from .sae import SAE, SAEConfig

LAYER_NORM_MODELS = ("gpt2", "gpt_neox")
R = TypeVar("R")  # what an SAE extractor returns


@dataclass
class LatentStats:
    """Per latent over the run's rows: rows active (> 0), sum, max, and the row
    holding the max (-1 if never active)."""

    count: torch.Tensor
    sum: torch.Tensor
    max: torch.Tensor
    argmax: torch.Tensor


@dataclass
class SparseFeatures:
    """Nonzero features as coordinates: rows (text, or token row for 'all'), latents, values."""

    rows: torch.Tensor
    latents: torch.Tensor
    values: torch.Tensor
    n_rows: int
    d_sae: int

    def dense(self) -> torch.Tensor:
        out = torch.zeros(self.n_rows, self.d_sae)
        out[self.rows, self.latents] = self.values
        return out

    def column(self, latent: int) -> np.ndarray:
        """(n_rows,) values of one latent, zeros where it is off."""
        values = np.zeros(self.n_rows, dtype=np.float32)
        chosen = (self.latents == latent).numpy()
        values[self.rows.numpy()[chosen]] = self.values.numpy()[chosen]
        return values


class FeatureSink(Sink):
    """Encodes one SAE's hook activations, pools them, keeps nonzeros and stats."""

    def __init__(self, sae: SAE, n_rows: int, keep_dense: bool, centre: bool, pin: bool):
        self.sae = sae
        self.n_rows = n_rows
        self.centre = centre
        d_sae, device = sae.cfg.d_sae, sae.device
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.sum_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sum = torch.zeros(d_sae, dtype=self.sum_dtype, device=device)
        self.max = torch.zeros(d_sae, device=device)
        self.argmax = torch.full((d_sae,), -1, dtype=torch.int64, device=device)
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # this batch's (rows, features)
        self.dense = torch.zeros(n_rows, d_sae, pin_memory=pin) if keep_dense else None
        self.copies = HostCopies()

    def consume(self, hidden: torch.Tensor, batch) -> None:
        x = batch.plan.gather(hidden).float()
        if self.centre:  # TransformerLens's centred writing weights remove the mean over d_model
            x = x - x.mean(dim=-1, keepdim=True)
        f = batch.plan.reduce(self.sae.encode(x))
        self.pending.append((batch.dest.to(f.device), f))
        if self.dense is not None:
            self.copies.put(self.dense, batch.dest, f)

    def mark(self) -> tuple[int, int]:
        return len(self.pending), self.copies.mark()

    def rollback(self, mark: tuple[int, int]) -> None:
        del self.pending[mark[0]:]
        self.copies.rollback(mark[1])

    def end_batch(self) -> None:
        """Fold the batch's features into the statistics and the sparse parts."""
        for dest, f in self.pending:
            self.count += (f > 0).sum(dim=0)
            self.sum += f.sum(dim=0, dtype=self.sum_dtype)
            batch_max, batch_arg = f.max(dim=0)
            better = batch_max > self.max
            self.max = torch.where(better, batch_max, self.max)
            self.argmax = torch.where(better, dest[batch_arg], self.argmax)
            row, latent = f.nonzero(as_tuple=True)
            self.parts.append((dest[row].cpu(), latent.cpu(), f[row, latent].cpu()))
        self.pending = []
        self.copies.end_batch()

    def finish(self) -> None:
        self.copies.flush()

    def sparse(self) -> SparseFeatures:
        if self.parts:
            rows, latents, values = (torch.cat(column) for column in zip(*self.parts))
            order = np.lexsort((latents.numpy(), rows.numpy()))  # by row, then latent
            rows, latents, values = rows[order], latents[order], values[order]
        else:
            rows = latents = torch.zeros(0, dtype=torch.int64)
            values = torch.zeros(0)
        return SparseFeatures(rows, latents, values, self.n_rows, self.sae.cfg.d_sae)

    def latent_stats(self) -> LatentStats:
        return LatentStats(self.count.cpu(), self.sum.cpu().double(), self.max.cpu(), self.argmax.cpu())


@dataclass
class Features(Result):
    """Features of every SAE by SAE name, rows in input order (see Result for
    `offsets` / `tokens` in per-token mode). `feats[name]` and
    `feats.dense(name)` take an SAE's name or the SAE object itself."""

    configs: dict[str, SAEConfig]
    sparse: dict[str, SparseFeatures]
    latent_stats: dict[str, LatentStats]
    dense_values: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.configs)

    def name_of(self, sae: "str | SAE") -> str:
        """The name under which `sae` (a name or an SAE object) is stored."""
        if isinstance(sae, str):
            if sae not in self.configs:
                raise KeyError(f"no SAE '{sae}' here; have {self.names}")
            return sae
        for name, cfg in self.configs.items():
            if cfg is sae.cfg:
                return name
        raise KeyError(f"this SAE ({sae}) is not among this result's SAEs {self.names}")

    def __getitem__(self, sae: "str | SAE") -> torch.Tensor:
        return self.dense(sae)

    def dense(self, sae: "str | SAE") -> torch.Tensor:
        """(n_rows, d_sae) features of one SAE."""
        name = self.name_of(sae)
        if name in self.dense_values:
            return self.dense_values[name]
        return self.sparse[name].dense()

    def per_text(self, sae: "str | SAE") -> np.ndarray:
        """(n_texts, d_sae): the pooled features, or in a per-token run each
        text's maximum over its tokens (BOS left out)."""
        name = self.name_of(sae)
        if self.offsets is None:
            return self.dense(name).numpy()
        sparse = self.sparse[name]
        rows, starts = sparse.rows.numpy(), self.offsets.numpy()
        text = np.searchsorted(starts, rows, side="right") - 1
        keep = rows != starts[text] if self.has_bos else np.ones(len(rows), dtype=bool)
        out = np.zeros((len(self), sparse.d_sae), dtype=np.float32)
        np.maximum.at(out, (text[keep], sparse.latents.numpy()[keep]), sparse.values.numpy()[keep])
        return out

    def mean_l0(self, sae: "str | SAE") -> float:
        """Active latents per row (text, or token in a per-token result)."""
        sparse = self.sparse[self.name_of(sae)]
        return len(sparse.values) / max(sparse.n_rows, 1)

    def to_arrow(self, first_text: int = 0) -> pa.Table:
        """One row per nonzero feature: text_id, [position,] sae (dictionary),
        latent, value; the features-run shard schema."""
        parts = []
        for name, sparse in self.sparse.items():
            text_id, position = self.text_and_position(sparse.rows.numpy())
            columns = {"text_id": pa.array(text_id + first_text, pa.int64())}
            if position is not None:
                columns["position"] = pa.array(position, pa.int32())
            columns["sae"] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(text_id), np.int32)),
                                                            pa.array([name]))
            columns["latent"] = pa.array(sparse.latents.numpy(), pa.int32())
            columns["value"] = pa.array(sparse.values.numpy(), pa.float32())
            parts.append(pa.table(columns))
        return pa.concat_tables(parts).unify_dictionaries().combine_chunks()

    def text_and_position(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Text index (and, per token, position in the text) of result rows."""
        if self.offsets is None:
            return rows, None
        starts = self.offsets.numpy()
        text = np.searchsorted(starts, rows, side="right") - 1
        return text, rows - starts[text]

    def summary_rows(self) -> list[tuple[str, str]]:
        saes = ", ".join(f"{name} ({cfg.hook_name}, {cfg.d_sae} latents, L0 {self.mean_l0(name):.1f})"
                         for name, cfg in self.configs.items())
        return super().summary_rows() + [("SAEs", saes)]


def name_saes(saes, device) -> dict[str, SAE]:
    """{name: SAE} from SAE objects, paths / release ids, or a mapping."""
    if isinstance(saes, (str, SAE)):
        saes = [saes]
    items = saes.items() if isinstance(saes, Mapping) else [(None, s) for s in saes]
    named: dict[str, SAE] = {}
    for name, sae in items:
        if not isinstance(sae, SAE):
            name = name or str(sae)
            sae = load_sae(sae)
        name = name or sae.cfg.source or sae.cfg.hook_name
        base, n = name, 1
        while name in named:
            n += 1
            name = f"{base}#{n}"
        named[name] = sae.to(device)
    if not named:
        raise ActlabError("no SAEs given; pass at least one SAE, folder or release/sae_id")
    return named


def features_config(saes: Mapping[str, SAE], cfg: ExtractConfig | None) -> ExtractConfig:
    """cfg with the SAEs' hooks, and prepend_bos from the SAEs unless cfg sets it."""
    cfg = cfg or ExtractConfig()
    prepend_bos = cfg.prepend_bos
    if prepend_bos is None:
        wanted = {sae.cfg.prepend_bos for sae in saes.values()}
        if len(wanted) > 1:
            raise ActlabError("these SAEs disagree on prepend_bos; run them separately or "
                              "pass prepend_bos explicitly", param="prepend_bos")
        prepend_bos = wanted.pop()
    hooks = list(dict.fromkeys(sae.cfg.hook_name for sae in saes.values()))
    return ExtractConfig.of(cfg, hooks=hooks, prepend_bos=prepend_bos)


class SAEExtractor(Extractor[R], ABC):
    """Extractor whose hooks feed SAEs: one forward pass for any number of
    SAEs, one sink per SAE (`make_sink`), the result built from the sinks by
    SAE name (`make_result`). FeatureExtractor keeps features; the latents
    pass keeps what its WindowSinks say."""

    def __init__(self, model: EngineModel, saes: Sequence | Mapping | None = None, cfg: ExtractConfig | None = None):
        """saes: SAE objects, SAE folders / release ids, or a {name: SAE}
        mapping; None: the SAEs actlab ships for this model."""
        self.saes = name_saes(default_saes(model.name) if saes is None else saes, model.device)
        super().__init__(model, features_config(self.saes, cfg))
        for name, sae in self.saes.items():
            width = self.widths[sae.cfg.hook_name]
            if sae.cfg.d_in != width:
                raise ActlabError(f"SAE '{name}' takes d_in={sae.cfg.d_in} but {sae.cfg.hook_name} "
                                  f"of this model has width {width}; use an SAE trained on this model")

    @property
    def prepend_bos(self) -> bool:
        return bool(self.cfg.prepend_bos)

    def make_sinks(self, n_rows: int) -> dict[str, list[Sink]]:
        sinks: dict[str, list[Sink]] = {hook: [] for hook in self.hook_names}
        for name, sae in self.saes.items():
            sinks[sae.cfg.hook_name].append(self.make_sink(name, sae, n_rows))
        return sinks

    @abstractmethod
    def make_sink(self, name: str, sae: SAE, n_rows: int) -> Sink:
        """The sink SAE `name` feeds (n_rows: pooled rows of the call)."""

    def centres(self, sae: SAE) -> bool:
        """Whether `sae` reads activations centred over d_model (trained on
        TransformerLens's centred LayerNorm writing weights)."""
        return self.model.architecture in LAYER_NORM_MODELS and sae.cfg.center_writing_weights

    def sinks_by_sae(self, sinks: dict[str, list[Sink]]) -> dict[str, Sink]:
        """{SAE name: its sink}, in the SAEs' order (make_sinks appends each hook's in that order)."""
        hooks = {hook: iter(group) for hook, group in sinks.items()}
        return {name: next(hooks[sae.cfg.hook_name]) for name, sae in self.saes.items()}


class FeatureExtractor(SAEExtractor[Features]):
    """Extractor whose hooks feed SAEs into features: per text (pooled) or per token."""

    def __init__(self, model: EngineModel, saes: Sequence | Mapping | None = None, cfg: ExtractConfig | None = None,
                 keep_dense: bool = False):
        super().__init__(model, saes, cfg)
        self.keep_dense = keep_dense

    def make_sink(self, name: str, sae: SAE, n_rows: int) -> Sink:
        return FeatureSink(sae, n_rows, self.keep_dense, self.centres(sae), self.model.device.type == "cuda")

    def make_result(self, sinks: dict[str, list[Sink]], **fields) -> Features:
        named = self.sinks_by_sae(sinks)
        return Features(
            configs={n: sae.cfg for n, sae in self.saes.items()}, sparse={n: s.sparse() for n, s in named.items()},
            latent_stats={n: s.latent_stats() for n, s in named.items()},
            dense_values={n: s.dense for n, s in named.items() if s.dense is not None}, **fields)
