"""What a latent writes: its logit effect and its decoder neighbours.

The logit effect is SAEDashboard's: the latent's unit decoder row through
TransformerLens's unembedding, i.e. with the final norm's scale folded in
(fold_ln) and each row's mean over the vocabulary removed (center_unembed):

    effect[j] = (W_dec[j] / |W_dec[j]|) * gamma @ W_U.T - its mean over the vocabulary   (vocab,)

Neighbours are the other latents of largest cosine between decoder rows.
Both run over latents in chunks, so memory stays O(chunk x vocab); their
cost is d_sae x d_model x (vocab, resp. d_sae) multiply-adds, minutes on a
CPU for 65k-latent SAEs of a large model (0 tokens or neighbours skips them).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from ..hooks import final_norm_site
from ..saes.sae import SAE

CHUNK = 256  # latents per product


def unit_rows(W_dec: torch.Tensor) -> torch.Tensor:
    return W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def final_norm_scale(hf_model: nn.Module) -> torch.Tensor:
    """(d_model,) the elementwise scale of the final norm (LayerNorm or
    RMSNorm, Gemma's 1 + w included), read off the module itself: on x = +-1
    (mean 0, mean square 1) norm(x) - norm(-x) = 2 x gamma / sqrt(1 + eps)."""
    module = final_norm_site(hf_model).module
    weight = hf_model.get_output_embeddings().weight
    d = weight.shape[1]
    x = torch.ones(1, 2 if d % 2 == 0 else 1, d, dtype=weight.dtype, device=weight.device)
    x[..., 1::2] = -1
    if d % 2:  # odd width: +-1 has mean 1/d; fall back to the module's weight
        return getattr(module, "weight", torch.ones(d)).float()
    return ((module(x) - module(-x)) / (2 * x))[0, 0].float()


@torch.no_grad()
def logit_effects(sae: SAE, hf_model: nn.Module, k: int, decode: Callable[[int], str], sae_name: str) -> pa.Table:
    """The k most promoted ("top") and most suppressed ("bottom") tokens of
    every latent: sae, latent, side, rank, token_id, token, effect. The
    product runs through the model's own LM head (its fastest matrix path),
    on directions with the final norm's scale folded in."""
    if k == 0:
        return _entries([], decode, sae_name)
    head = hf_model.get_output_embeddings()
    weight = head.weight  # (vocab, d)
    scale = final_norm_scale(hf_model).to(weight.device)  # (d,)
    mean_row = weight.float().mean(dim=0)  # (d,): effect's mean over the vocabulary is direction . mean_row
    bias = getattr(head, "bias", None)
    directions = unit_rows(sae.W_dec.float().to(weight.device)) * scale  # (d_sae, d)
    parts = []
    for lo in range(0, len(directions), CHUNK):
        chunk = directions[lo:lo + CHUNK]  # (c, d)
        effect = head(chunk.to(weight.dtype)).float()  # (c, vocab)
        if bias is not None:
            effect = effect - bias.float()
        centre = chunk @ mean_row  # (c,)
        for side, largest in (("top", True), ("bottom", False)):
            values, ids = effect.topk(min(k, effect.shape[1]), dim=1, largest=largest)  # (c, k)
            parts.append((lo, side, (values - centre[:, None]).cpu().numpy(), ids.cpu().numpy()))
    return _entries(parts, decode, sae_name)


def _entries(parts, decode: Callable[[int], str], sae_name: str) -> pa.Table:
    tables, strings = [pa.table({"sae": pa.array([], pa.string()), "latent": pa.array([], pa.int32()),
                                 "side": pa.array([], pa.string()), "rank": pa.array([], pa.int16()),
                                 "token_id": pa.array([], pa.int32()), "token": pa.array([], pa.string()),
                                 "effect": pa.array([], pa.float32())})], {}
    for lo, side, values, ids in parts:
        c, k = values.shape
        latent = np.repeat(np.arange(lo, lo + c), k)
        tables.append(pa.table({
            "sae": pa.array([sae_name] * len(latent), pa.string()), "latent": pa.array(latent, pa.int32()),
            "side": pa.array([side] * len(latent), pa.string()), "rank": pa.array(np.tile(np.arange(k), c), pa.int16()),
            "token_id": pa.array(ids.reshape(-1), pa.int32()),
            "token": pa.array([strings[i] if i in strings else strings.setdefault(i, decode(i))
                               for i in ids.reshape(-1).tolist()], pa.string()),
            "effect": pa.array(values.reshape(-1), pa.float32())}))
    return pa.concat_tables(tables)


@torch.no_grad()
def neighbours(sae: SAE, k: int, sae_name: str) -> pa.Table:
    """Each latent's k others of largest decoder cosine: sae, latent, rank, other, cosine."""
    directions = unit_rows(sae.W_dec.float())  # (d_sae, d)
    d_sae = len(directions)
    k = min(k, d_sae - 1)
    if k <= 0:
        directions = directions[:0]
    latents, others, cosines = [], [], []
    for lo in range(0, d_sae, CHUNK):
        cosine = directions[lo:lo + CHUNK] @ directions.T  # (c, d_sae)
        rows = torch.arange(len(cosine), device=cosine.device)
        cosine[rows, rows + lo] = -float("inf")  # not its own neighbour
        values, ids = cosine.topk(k, dim=1)  # (c, k)
        latents.append(np.repeat(np.arange(lo, lo + len(cosine)), k))
        others.append(ids.cpu().numpy().reshape(-1))
        cosines.append(values.cpu().numpy().reshape(-1))
    latent = np.concatenate(latents) if latents else np.zeros(0, np.int64)
    return pa.table({"sae": pa.array([sae_name] * len(latent), pa.string()), "latent": pa.array(latent, pa.int32()),
                     "rank": pa.array(np.tile(np.arange(max(k, 0)), len(directions)), pa.int16()),
                     "other": pa.array(np.concatenate(others) if others else [], pa.int32()),
                     "cosine": pa.array(np.concatenate(cosines) if cosines else [], pa.float32())})
