"""How much of the model's behaviour a circuit carries (Marks et al. 2024,
section 3.3; saprmarks/feature-circuits ablation.py).

Every node outside the circuit is mean-ablated: at each site, its latents
and error term outside the circuit are set to their mean over the pairs'
clean runs (per position), every site at once in one forward of the clean
prompts, so that a site reads what the ablated sites below it left. With m
the metric (logit difference answer - wrong answer) averaged over the
pairs,

    faithfulness(C) = (m(C) - m(empty)) / (m(model) - m(empty))

m(empty): every node ablated; m(model): none (the unedited clean runs). An
ablated SAE site computes x + (x_hat(f') - x_hat(f)) + (err' - err) through
SAE.latent_change, so a site with nothing ablated returns x exactly.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..hooks import replace
from ..patching.exact import last_logits
from ..patching.pairs import TokenPair
from .nodes import PairRuns, Site


def site_means(runs: PairRuns, sites: Sequence[Site]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per site, the mean over the pairs' clean runs of its latents (T, d_sae)
    and error term (T, d), or of the embeddings (T, d) twice."""
    out = []
    for clean, site in zip(runs.clean, sites):
        if site.sae is None:
            out.append((clean.mean(0), clean.mean(0)))
        else:
            f, err = site.split(clean)
            out.append((f.mean(0), err.mean(0)))
    return out


def _ablation(site: Site, means: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor) -> Callable:
    """The site's rewrite: nodes where keep (T, width) is False set to their means."""
    def ablate(x: torch.Tensor) -> torch.Tensor:  # (b, T, d)
        if site.sae is None:
            return torch.where(keep, x, means[0])
        f, err = site.split(x)
        f_new = torch.where(keep[:, :-1], f, means[0])  # (b, T, d_sae)
        err_new = torch.where(keep[:, -1:], err, means[1])  # (b, T, d)
        latents = torch.arange(site.sae.cfg.d_sae, device=x.device)
        return x + site.sae.latent_change(x, latents, f_new - f) + (err_new - err)
    return ablate


def ablated_metric(model, pairs: Sequence[TokenPair], sites: Sequence[Site], means, keeps: Sequence[torch.Tensor],
                   budget: int) -> float:
    """The metric averaged over the pairs' clean prompts with each site's
    nodes outside keeps[k] (T, width) mean-ablated."""
    metric = np.zeros(len(pairs))
    answers = torch.tensor([p.answer for p in pairs], device=model.device)
    wrongs = torch.tensor([p.wrong for p in pairs], device=model.device)

    def measure(rows: np.ndarray, logits: torch.Tensor) -> None:
        index = torch.as_tensor(rows, device=logits.device)
        metric[rows] = (logits[torch.arange(len(rows)), answers[index]]
                        - logits[torch.arange(len(rows)), wrongs[index]]).float().cpu().numpy()

    with replace(model.hf_model, {site.hook: _ablation(site, m, keep) for site, m, keep in zip(sites, means, keeps)}):
        last_logits(model, [p.clean for p in pairs], None, budget, measure)
    return float(metric.mean())


def curve_sizes(n_ranked: int, circuit_size: int, n_all: int) -> list[int]:
    """Circuit sizes the curve measures: 0, powers of two up to every node
    with an effect, the circuit's own, and every node (the model itself)."""
    sizes = {0, n_ranked, circuit_size, n_all} | {2 ** k for k in range(max(1, n_ranked).bit_length())
                                                  if 2 ** k < n_ranked}
    return sorted(sizes)


def faithfulness_curve(model, pairs: Sequence[TokenPair], runs: PairRuns, sites: Sequence[Site],
                       keeps_of: Callable[[int], list[torch.Tensor]], sizes: Sequence[int], budget: int) -> list[dict]:
    """Per circuit size n (keeps_of(n): the keep masks of the n strongest
    nodes; past the nodes with an effect, every node): nodes, metric,
    faithfulness, with m(model) and m(empty) in every row."""
    means = site_means(runs, sites)
    full = float(runs.base.clean.mean())
    empty = ablated_metric(model, pairs, sites, means, keeps_of(0), budget)
    rows = []
    for n in sizes:
        metric = empty if n == 0 else ablated_metric(model, pairs, sites, means, keeps_of(n), budget)
        rows.append({"nodes": n, "metric": metric, "metric_model": full, "metric_empty": empty,
                     "faithfulness": (metric - empty) / (full - empty) if full != empty else float("nan")})
    return rows
