"""SAE quality on a set of texts: sparsity, dead and dense latents,
reconstruction error, explained variance, and what splicing the
reconstruction into the model costs in next-token loss."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import EngineModel, auto_token_budget, padded_batch, plan_batches
from ..hooks import replace
from ..pooling import parse_pooling
from ..tokens import offsets, tokenize
from .sae import SAE

DENSE_FREQUENCY = 0.1  # a latent active on more than 10% of tokens counts as dense


def _token_losses(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy at every position whose next token is real."""
    target_mask = (mask[:, :-1] * mask[:, 1:]).bool()
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="none")
    return losses.view_as(target_mask)[target_mask]


def sae_quality(model: EngineModel, sae: SAE, texts: Sequence[str], max_batch_tokens: int | None = None,
                max_length: int | None = None) -> dict:
    """Metrics over the real tokens of `texts` (BOS left out of the SAE metrics):
    l0 (mean active latents per token), dead_fraction (never active),
    dense_fraction (active on > 10% of tokens), mse (mean squared error per
    element), explained_variance (1 - SSE / total sum of squares about the mean),
    and the next-token loss clean, with the reconstruction spliced in, and with
    the activation zero-ablated; ce_loss_score = (zero - spliced) / (zero - clean)."""
    max_length = max_length or getattr(model.config, "max_position_embeddings", None)
    tok = tokenize(model.tokenizer, texts, sae.cfg.prepend_bos, max_length)
    lengths = np.array(tok.lengths)
    every_token, token_rows = parse_pooling("all"), offsets(lengths)
    budget = max_batch_tokens or auto_token_budget(model.device, model.d_model)
    sums = dict(n=0, l0=0.0, sse=0.0, x_sum=None, x_sq=0.0, clean=[], spliced=[], zero=[])
    active = torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=model.device)
    with torch.inference_mode():
        for rows in plan_batches(lengths, None, budget):
            batch = padded_batch(model, tok, rows, every_token, "right", token_rows)
            plan, keep = batch.plan, _non_bos(batch, tok.has_bos)

            def splice(hidden, zero=False):
                flat = hidden.reshape(-1, hidden.shape[-1]).clone()
                x = flat[plan.tokens].float()
                f, x_hat = sae.reconstruct(x)
                if not zero:
                    x_k, f_k, x_hat_k = x[keep], f[keep], x_hat[keep]
                    sums["n"] += len(x_k)
                    sums["l0"] += float((f_k > 0).sum())
                    active.add_((f_k > 0).sum(dim=0))
                    sums["sse"] += float(((x_k - x_hat_k) ** 2).sum())
                    sums["x_sum"] = x_k.sum(0) if sums["x_sum"] is None else sums["x_sum"] + x_k.sum(0)
                    sums["x_sq"] += float((x_k ** 2).sum())
                flat[plan.tokens] = (torch.zeros_like(x) if zero else x_hat).to(flat.dtype)
                return flat.view_as(hidden)

            inputs = batch.padded.inputs()
            for key, rewrite in (("clean", None), ("spliced", splice),
                                 ("zero", lambda h: splice(h, zero=True))):
                if rewrite is None:
                    logits = model.hf_model(**inputs, use_cache=False).logits
                else:
                    with replace(model.hf_model, {sae.cfg.hook_name: rewrite}):
                        logits = model.hf_model(**inputs, use_cache=False).logits
                sums[key].append(_token_losses(logits, inputs["input_ids"], inputs["attention_mask"]).cpu())
    n, d = sums["n"], sae.cfg.d_in
    total_ss = sums["x_sq"] - float((sums["x_sum"] ** 2).sum()) / n
    clean, spliced, zero = (float(torch.cat(sums[k]).mean()) for k in ("clean", "spliced", "zero"))
    frequency = (active.float() / n).cpu()
    return {"n_tokens": n, "l0": sums["l0"] / n, "dead_fraction": float((frequency == 0).float().mean()),
            "dense_fraction": float((frequency > DENSE_FREQUENCY).float().mean()),
            "mse": sums["sse"] / (n * d), "explained_variance": 1 - sums["sse"] / total_ss,
            "ce_clean": clean, "ce_spliced": spliced, "ce_zero_ablation": zero,
            "ce_increase": spliced - clean,
            "ce_loss_score": (zero - spliced) / (zero - clean) if zero != clean else float("nan")}


def _non_bos(batch, has_bos: bool) -> torch.Tensor:
    """Mask over the batch's real tokens (in plan order: row by row) that
    leaves out each text's BOS."""
    keep = torch.ones(len(batch.plan.tokens), dtype=torch.bool, device=batch.plan.tokens.device)
    if has_bos:
        keep[offsets(batch.padded.lengths)[:-1].to(keep.device)] = False
    return keep
