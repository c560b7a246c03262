"""Per-token monitoring: the projection h . v / |v| of every token's block
output onto trait vectors, for any text (a prompt + answer, a document), and
of a trait run's text onto the run's vector (actlab.pipelines.draw_monitor
draws it into the run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import ActlabError
from ..hooks import block_hook
from ..models import Model
from .fitting import best_layer
from .run import TraitRun
from .vectors import VECTOR_METHODS


@dataclass
class MonitoredText:
    """One text's per-token projection onto a trait run's vector."""

    tokens: list[str]
    values: np.ndarray  # (n_tokens,)
    layer: int
    method: str


@dataclass
class TokenProjections:
    tokens: list[list[str]]  # per text
    values: dict[int, list[np.ndarray]]  # layer -> per text (n_tokens,)


def monitor(model: Model, texts: Sequence[str], vectors: Mapping[int, torch.Tensor | np.ndarray],
            prepend_bos: bool | None = None) -> TokenProjections:
    """Projections at each layer's block output (layer L = blocks.L.hook_resid_post)
    onto that layer's vector, one value per token, in one batched pass.
    prepend_bos=False for texts that already start with the chat template's
    special tokens (a run's prompt + answer)."""
    if not vectors:
        raise ActlabError("no trait vectors given; pass {layer: vector}")
    hooks = {layer: block_hook(layer) for layer in vectors}
    acts = model.extract(list(texts), list(hooks.values()), pooling="all", prepend_bos=prepend_bos)
    offsets = acts.offsets.tolist()
    values = {}
    for layer, hook in hooks.items():
        v = torch.as_tensor(np.asarray(vectors[layer]), dtype=torch.float32)
        if v.shape != (acts[hook].shape[1],):
            raise ActlabError(f"layer {layer} vector has shape {tuple(v.shape)}, the block output width is "
                              f"{acts[hook].shape[1]}")
        projection = (acts[hook] @ (v / v.norm())).numpy()
        values[layer] = [projection[a:b] for a, b in zip(offsets, offsets[1:])]
    tokens = [acts.tokens[a:b] for a, b in zip(offsets, offsets[1:])]
    return TokenProjections(tokens, values)


def monitored_text(run: str | Path, text: str | None = None, row: int | None = None) -> str:
    """`text`, or row `row`'s prompt + answer; exactly one of them."""
    if (text is None) == (row is None):
        raise ActlabError("give exactly one of a text and a row of the run", param="text")
    if text is not None:
        return text
    answers = TraitRun.open(run).answers()
    if not 0 <= row < answers.num_rows:
        raise ActlabError(f"row {row} is outside 0..{answers.num_rows - 1}", param="row")
    return answers.column("prompt")[row].as_py() + answers.column("answer")[row].as_py()


@dataclass
class MonitorConfig:
    """Which trait vector a text is projected on."""

    layer: int | None = field(default=None, metadata={"help": "Default: the best layer of --method."})
    method: str = field(default="mean_diff", metadata={"help": "The vector method."})

    def __post_init__(self):
        VECTOR_METHODS.pick(self.method, param="method")


def monitor_run(model: Model, run: str | Path, text: str | None = None, row: int | None = None,
                cfg: MonitorConfig | None = None) -> MonitoredText:
    """Per-token projection of a text (or of row `row`'s prompt + answer) onto
    the run's cfg.method vector at cfg.layer (default: the method's best layer)."""
    cfg = cfg or MonitorConfig()
    method = cfg.method
    trait_run = TraitRun.open(run)
    text = monitored_text(run, text, row)
    layer = best_layer(run, method) if cfg.layer is None else cfg.layer
    vectors = trait_run.vectors(method)
    if layer not in vectors:
        raise ActlabError(f"no {method} vector for layer {layer}; this run has layers {sorted(vectors)}",
                          param="layer")
    result = monitor(model, [text], {layer: vectors[layer]}, prepend_bos=False)
    return MonitoredText(result.tokens[0], result.values[layer][0], layer, method)
