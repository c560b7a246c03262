"""The nodes of a sparse feature circuit and their effects on the metric.

A site is a hook where nodes sit. At an SAE's hook the activation x splits
exactly into the SAE's latents f and its error term,

    x = x_hat(f) + err,        err = x - x_hat(f)       (x_hat: SAE.reconstruct)

giving d_sae latent nodes and one error node per position; at hook_embed the
embedding of each position is one node. A node's effect on the metric m
(the logit difference answer - wrong answer at the last position) is
estimated as Marks et al. (2024) do (saprmarks/feature-circuits,
attribution.py), with actlab patch's convention: the corrupted run is the
base and the clean run's value is patched in,

    latent j at position t:  (f_clean - f_corr)[t, j] * dm/df[t, j]
    error term at t:         (err_clean - err_corr)[t] . dm/derr[t]
    embedding at t:          (e_clean - e_corr)[t] . dm/de[t]

The gradients treat f and err as separate leaves with x = x_hat(f) + err
(Marks et al. zero the error's gradient back into f), so dm/derr = dm/dx
and dm/df is the decoder's transpose of dm/dx (SAE.latent_grad). atp takes
dm/dx on the corrupted run (their "all-folded" attribution); ig averages it
over x moved from corrupted to clean at that one site, alpha = k / steps
for k = 0..steps-1, the model recomputed above it (their _pe_ig). Because
x_hat is affine in f, a site's latent and error terms add up to its whole
activation's term, (x_clean - x_corr) . dm/dx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..errors import ActlabError
from ..hooks import FINAL_NORM, forward_order, hook_names, hook_width
from ..patching.attribution import EMBED, Interpolation, gradients
from ..patching.exact import Baseline, cached_runs
from ..patching.pairs import TokenPair
from ..saes import SAE
from .config import CircuitConfig

EMBED_SITE = "embed"  # the embeddings' site name


@dataclass(frozen=True)
class Site:
    """Where nodes sit: an SAE at its hook (d_sae latents, then the error
    term, per position) or the embeddings (one node per position)."""

    name: str  # the SAE's name, or EMBED_SITE
    hook: str
    sae: SAE | None

    @property
    def width(self) -> int:
        """Nodes per position."""
        return 1 if self.sae is None else self.sae.cfg.d_sae + 1

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (.., d) -> latents (.., d_sae) and error term (.., d)."""
        f, x_hat = self.sae.reconstruct(x)
        return f, x - x_hat

    def delta(self, clean: torch.Tensor, corrupted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What patching the clean run into the corrupted one changes: (Δf, Δerr), or (Δe, Δe) at the embeddings."""
        if self.sae is None:
            return clean - corrupted, clean - corrupted
        (f_clean, err_clean), (f_corr, err_corr) = self.split(clean), self.split(corrupted)
        return f_clean - f_corr, err_clean - err_corr

    def terms(self, delta: tuple[torch.Tensor, torch.Tensor], corrupted: torch.Tensor,
              grad: torch.Tensor) -> torch.Tensor:
        """Each node's change (or value) `delta` times the gradient of a
        quantity with respect to it, from grad = d(quantity)/dx (.., T, d) at
        the corrupted run: (.., T, width)."""
        if self.sae is None:
            return (delta[0] * grad).sum(-1, keepdim=True)
        latents = delta[0] * self.sae.latent_grad(corrupted, grad)  # (.., T, d_sae)
        return torch.cat([latents, (delta[1] * grad).sum(-1, keepdim=True)], -1)


def circuit_sites(model, saes: Mapping[str, SAE]) -> list[Site]:
    """The embeddings, then each SAE's site in forward order; one line for
    an SAE at a hook the model lacks, of the wrong width, or sharing a hook."""
    if not saes:
        raise ActlabError("a circuit needs at least one SAE", param="sae")
    known = set(hook_names(model.hf_model)) - {FINAL_NORM, EMBED}
    sites, seen = [], {}
    for name, sae in saes.items():
        hook = sae.cfg.hook_name
        if hook not in known or hook.endswith("hook_resid_mid"):
            raise ActlabError(f"SAE '{name}' reads {hook}, a hook a circuit cannot rewrite on this model "
                              f"(resid_pre/post, attn_out, mlp_out or attn.hook_z of blocks 0..{model.n_layers - 1})",
                              param="sae")
        width = hook_width(model.config, hook)
        if width is not None and width != sae.cfg.d_in:
            raise ActlabError(f"SAE '{name}' takes {sae.cfg.d_in} inputs but {hook} has {width}", param="sae")
        if hook in seen:
            raise ActlabError(f"SAEs '{seen[hook]}' and '{name}' both read {hook}; give one per hook", param="sae")
        seen[hook] = name
        sites.append(Site(name, hook, sae.to(model.device)))
    return [Site(EMBED_SITE, EMBED, None)] + sorted(sites, key=lambda s: forward_order(s.hook))


def check_aligned(pairs: Sequence[TokenPair]) -> int:
    """The one token length of every pair (a circuit's nodes are per
    position, compared and averaged across pairs)."""
    length = len(pairs[0].clean)
    for pair in pairs:
        if len(pair.clean) != length:
            raise ActlabError(f"pair '{pair.id}' has {len(pair.clean)} tokens and pair '{pairs[0].id}' {length}: a "
                              "circuit needs pairs of one token length (one template), positions aligned",
                              param="pairs")
    return length


@dataclass
class PairRuns:
    """What every circuit stage starts from: per site, the pairs' clean and
    corrupted activations (n, T, d) and dm/dx (n, T, d) by the method, and
    the clean and corrupted metrics."""

    base: Baseline
    clean: list[torch.Tensor]
    corrupted: list[torch.Tensor]
    grads: list[torch.Tensor]

    @classmethod
    def of(cls, model, pairs: Sequence[TokenPair], sites: Sequence[Site], cfg: CircuitConfig) -> "PairRuns":
        check_aligned(pairs)
        budget, hooks = cfg.batch_tokens(model), [s.hook for s in sites]
        base = Baseline.of(model, pairs, hooks, budget)
        clean = [torch.stack([c[h] for c in base.cache]) for h in hooks]  # per site (n, T, d)
        # the corrupted activations from the same inference path as the clean ones, so that positions the
        # corruption leaves alone have exactly no change (the gradient forward computes on another path)
        corrupted_cache, _ = cached_runs(model, [p.corrupted for p in pairs], hooks, budget)
        corrupted = [torch.stack([c[h] for c in corrupted_cache]) for h in hooks]
        if cfg.method == "atp":
            return cls(base, clean, corrupted, [torch.stack([g[h] for g in gradients(model, pairs, hooks, budget)[0]])
                                                for h in hooks])
        alphas = tuple(k / cfg.ig_steps for k in range(cfg.ig_steps))
        grads = [torch.stack([g[h] for g in gradients(model, pairs, [h], budget, Interpolation(
            h, list(clean[i]), list(corrupted[i]), alphas))[0]]) for i, h in enumerate(hooks)]
        return cls(base, clean, corrupted, grads)


def node_effects(runs: PairRuns, sites: Sequence[Site]) -> list[torch.Tensor]:
    """Per site, every node's effect summed over the pairs: (T, width)."""
    return [site.terms(site.delta(runs.clean[i], runs.corrupted[i]), runs.corrupted[i], runs.grads[i]).sum(0)
            for i, site in enumerate(sites)]
