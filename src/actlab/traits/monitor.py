"""Per-token monitoring: the projection h . v / |v| of every token's block
output onto trait vectors, for any text (a prompt + answer, a document)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from ..errors import ActlabError
from ..hooks import block_hook

if TYPE_CHECKING:
    from ..models import Model


@dataclass
class TokenProjections:
    tokens: list[list[str]]  # per text
    values: dict[int, list[np.ndarray]]  # layer -> per text (n_tokens,)


def monitor(model: "Model", texts: Sequence[str], vectors: Mapping[int, torch.Tensor | np.ndarray],
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
