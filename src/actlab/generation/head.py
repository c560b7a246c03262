"""The LM head of the decoder's forwards, at the CPU's fastest matrix path.

On a CPU, in float32, torch.mm runs a wide head (vocab x d_model) at about
half the speed of oneDNN with the weight reordered ("prepacked") once into
its blocked layout (`actlab bench generate` measures both); the reorder is
done once per generate call. Elsewhere, and for other dtypes, the head
module itself runs. Gemma-2's final soft-capping applies either way
(actlab.hooks.lm_logits).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..hooks import lm_logits

PACKED_MIN_VOCAB = 8192  # narrower heads gain nothing measurable from the reorder


def logits_function(hf_model: torch.nn.Module, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden (m, d) -> logits (m, vocab); `rows` is the usual m (the packing's hint)."""
    head = hf_model.get_output_embeddings()
    weight = head.weight
    packable = (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.shape[0] >= PACKED_MIN_VOCAB
                and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    if not packable:
        return lambda hidden: lm_logits(hf_model, hidden)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
    bias = head.bias.detach() if head.bias is not None else None
    cap = getattr(hf_model.config.get_text_config(), "final_logit_softcapping", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), packed, bias, "none", [], "")
        return torch.tanh(out / cap) * cap if cap else out
    return logits
