"""Attribution patching: the effect of every variant from gradients, in
one forward and one backward per batch of pairs (AtP), or one of each per
integration step (IG).

AtP (Nanda 2023; Kramar et al. 2024) linearises the metric m around the
corrupted run: patching activation a from the clean run changes m by about

    (a_clean - a_corrupted) . dm/da        (the gradient on the corrupted run)

for every hook, position and head at once (a head's term sums over its
d_head columns; head_all_pos sums over positions too). IG follows EAP-IG
(Hanna et al. 2024, hannamw/EAP-IG attribute_node.py): the embedding output
is moved from the corrupted run's towards the clean run's in `steps`
steps, alpha = k / steps for k = 1..steps, and dm/da is averaged over the
steps before the same product. The metric is the logit difference answer
- wrong answer at the last position, summed over the batch's rows (each
row's metric depends on its own row only, so one backward gives every
row's gradients). Gradients are taken with torch.autograd.grad with
respect to the activations alone (no parameter gradients); actlab's
prepacked oneDNN linear layers run their plain path when autograd records
(engine/linears.py), so the same model serves both.

Rows of the table: metric_patched = metric_corrupted + the estimate;
prob_answer and kl are not estimated (null).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from ..engine import plan_batches
from ..hooks import HOOK_Z, capture, head_dim, replace
from ..tokens import pad
from .config import COMPONENTS, PATCH_METHODS, PatchConfig
from .exact import Baseline, cached_runs, effects_table, grid, grid_hooks, last_position_logits
from .pairs import TokenPair

EMBED = "hook_embed"


@dataclass(frozen=True)
class Interpolation:
    """Integrated gradients' path: the activation at `hook` moved from each
    pair's corrupted value (T, w) towards its clean one, by each alpha."""

    hook: str
    clean: Sequence[torch.Tensor]
    corrupted: Sequence[torch.Tensor]
    alphas: tuple[float, ...]


def gradients(model, pairs: Sequence[TokenPair], hooks: Sequence[str], budget: int,
              path: Interpolation | None = None) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Per pair, dm/da (T, w) at every hook on its corrupted prompt; with
    `path`, averaged over its steps (hooks upstream of path.hook get zeros).
    And per pair the activations (T, w) the (last) forward saw at the hooks:
    without a path, the corrupted run's, so that AtP needs no other forward."""
    lengths = np.array([len(p.corrupted) for p in pairs])
    out: list[dict[str, torch.Tensor]] = [{} for _ in pairs]
    acts: list[dict[str, torch.Tensor]] = [{} for _ in pairs]
    alphas = path.alphas if path is not None else (None,)
    for rows in plan_batches(lengths, None, budget):
        padded = pad([pairs[r].corrupted for r in rows], "right", model.pad_id, model.device)
        answers = torch.tensor([pairs[r].answer for r in rows], device=model.device)
        wrongs = torch.tensor([pairs[r].wrong for r in rows], device=model.device)
        total: dict[str, torch.Tensor] = {}
        for alpha in alphas:
            seen: dict[str, torch.Tensor] = {}
            start = path.hook if path is not None else EMBED
            with torch.enable_grad(), replace(model.hf_model, {start: _leaf(path, rows, alpha)}), \
                    capture(model.hf_model, {hook: (lambda hidden, hook=hook: seen.setdefault(hook, hidden))
                                             for hook in hooks}):
                logits = last_position_logits(model, padded)  # (b, V)
                index = torch.arange(len(rows), device=logits.device)
                metric = (logits[index, answers] - logits[index, wrongs]).sum()
                grads = torch.autograd.grad(metric, [seen[hook] for hook in hooks], allow_unused=True)
            for hook, grad in zip(hooks, grads):
                grad = torch.zeros_like(seen[hook]) if grad is None else grad.detach()
                total[hook] = total[hook] + grad if hook in total else grad
        for k, r in enumerate(rows):
            out[r] = {hook: total[hook][k, :lengths[r]] / len(alphas) for hook in hooks}
            acts[r] = {hook: seen[hook][k, :lengths[r]].detach() for hook in hooks}
    return out, acts


def _leaf(path: Interpolation | None, rows: np.ndarray, alpha: float | None):
    """The rewrite where gradients start: a leaf that asks for them (so that
    they flow with frozen weights too), moved alpha of the way from
    corrupted to clean on an IG path."""
    def start(hidden: torch.Tensor) -> torch.Tensor:
        if alpha is None:
            return hidden.detach().requires_grad_()
        moved = hidden.detach().clone()
        for k, r in enumerate(rows):
            clean, corrupted = path.clean[r], path.corrupted[r]  # (T_r, w)
            moved[k, :len(clean)] = corrupted + alpha * (clean - corrupted)
        return moved.requires_grad_()
    return start


def attribution_effects(model, pairs: Sequence[TokenPair], cfg: PatchConfig, method: str, first_pair: int = 0,
                        base: Baseline | None = None) -> pa.Table:
    """exact_effects's table, estimated by `method` ("atp", or "ig" in
    cfg.ig_steps steps): metric_patched = metric_corrupted + estimate.
    `base`: the pairs' Baseline when the caller has it (for IG its cache
    must hold hook_embed)."""
    cfg.check(model.n_layers, model.config.num_attention_heads)
    budget = cfg.batch_tokens(model)
    variants = grid(model, pairs, cfg)
    hooks = grid_hooks(variants)
    wanted = hooks + ([EMBED] if method == "ig" else [])
    base = base or Baseline.of(model, pairs, wanted, budget)
    if method == "ig":
        corrupted, _ = cached_runs(model, [p.corrupted for p in pairs], wanted, budget)
        steps = cfg.ig_steps
        path = Interpolation(EMBED, [c[EMBED] for c in base.cache], [c[EMBED] for c in corrupted],
                             tuple(k / steps for k in range(1, steps + 1)))
        grads, _ = gradients(model, pairs, hooks, budget, path)
    else:
        grads, corrupted = gradients(model, pairs, hooks, budget)  # its forward is the corrupted run
    heads, width = model.config.num_attention_heads, head_dim(model.config)
    # per pair and hook: (a_clean - a_corrupted) . dm/da summed per position (T,) and per position and head (T, H)
    per_position, per_head = {}, {}
    for i in range(len(pairs)):
        for hook in hooks:
            term = (base.cache[i][hook] - corrupted[i][hook]) * grads[i][hook]  # (T, w)
            per_position[i, hook] = term.sum(-1).cpu().numpy()
            if hook.endswith(HOOK_Z):
                per_head[i, hook] = term.view(len(term), heads, width).sum(-1).cpu().numpy()
    estimate = np.empty(len(variants))
    for k, v in enumerate(variants):
        hook = COMPONENTS[v.component].hook(v.layer)
        values = per_position[v.pair, hook] if v.head is None else per_head[v.pair, hook][:, v.head]
        estimate[k] = values.sum() if v.position is None else values[v.position]
    pair_of = np.array([v.pair for v in variants], dtype=np.int64)
    return effects_table(variants, pairs, base, {"metric": base.corrupted[pair_of] + estimate}, method, first_pair)


PATCH_METHODS.register("atp", lambda model, pairs, cfg, first_pair, base: attribution_effects(
    model, pairs, cfg, "atp", first_pair, base))
PATCH_METHODS.register("ig", lambda model, pairs, cfg, first_pair, base: attribution_effects(
    model, pairs, cfg, "ig", first_pair, base))
