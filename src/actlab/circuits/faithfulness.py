"""How much of the model's behaviour a circuit carries (Marks et al. 2024,
section 3.3; saprmarks/feature-circuits ablation.py).

Every node outside the circuit is ablated, every site at once in one
forward of the clean prompts, so that a site reads what the ablated sites
below it left: "mean" (Marks et al.) sets a node to its mean over the
pairs' clean runs at that position; "corrupted" to the pair's own
corrupted-run value (the convention of patching-based circuit discovery,
ACDC and path patching), which leaves a node the corruption does not change
as it is. With m the metric (logit difference answer - wrong answer)
averaged over the pairs,

    faithfulness(C) = (m(C) - m(empty)) / (m(model) - m(empty))

m(empty): every node ablated (with "corrupted", the corrupted metric);
m(model): none (the unedited clean runs). An ablated SAE site computes
x + (x_hat(f') - x_hat(f)) + (err' - err) through SAE.latent_change, so a
site with nothing ablated returns x exactly.

Mean ablation also removes whatever differs between pairs at a position:
where the pairs' answers come from context the corruption leaves alone
(IOI's names), those nodes have no effect to rank them by, and the curve
can stay far below 1 until nearly every node is kept (docs/causal.md).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..hooks import replace
from ..patching.exact import last_position_logits
from ..patching.pairs import TokenPair
from ..tokens import pad
from .nodes import PairRuns, Site


def ablation_values(runs: PairRuns, sites: Sequence[Site], how: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per site, what an ablated node becomes: latents (m, T, d_sae) and
    error term (m, T, d), or the embeddings (m, T, d) twice; "mean": the
    mean over the pairs' clean runs (m = 1), "corrupted": each pair's
    corrupted run (m = n pairs)."""
    out = []
    for clean, corrupted, site in zip(runs.clean, runs.corrupted, sites):
        source = corrupted if how == "corrupted" else clean
        values = (source, source) if site.sae is None else site.split(source)
        out.append(tuple(v if how == "corrupted" else v.mean(0, keepdim=True) for v in values))
    return out


def _ablation(site: Site, values: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor, rows: dict) -> Callable:
    """The site's rewrite: nodes where keep (T, width) is False set to their
    ablation values (of the batch's rows, rows["now"])."""
    def ablate(x: torch.Tensor) -> torch.Tensor:  # (b, T, d)
        latents, error = (v if len(v) == 1 else v[rows["now"]] for v in values)
        if site.sae is None:
            return torch.where(keep, x, latents)
        f, err = site.split(x)
        f_new = torch.where(keep[:, :-1], f, latents)  # (b, T, d_sae)
        err_new = torch.where(keep[:, -1:], err, error)  # (b, T, d)
        every = torch.arange(site.sae.cfg.d_sae, device=x.device)
        return x + site.sae.latent_change(x, every, f_new - f) + (err_new - err)
    return ablate


def ablated_metric(model, pairs: Sequence[TokenPair], sites: Sequence[Site], values, keeps: Sequence[torch.Tensor],
                   budget: int) -> float:
    """The metric averaged over the pairs' clean prompts (of one length)
    with each site's nodes outside keeps[k] (T, width) ablated to `values`
    (ablation_values)."""
    metric = np.zeros(len(pairs))
    rows: dict = {}
    step = max(1, budget // len(pairs[0].clean))
    hooks = {site.hook: _ablation(site, v, keep, rows) for site, v, keep in zip(sites, values, keeps)}
    with replace(model.hf_model, hooks), torch.inference_mode():
        for lo in range(0, len(pairs), step):
            rows["now"] = slice(lo, min(lo + step, len(pairs)))
            batch = pairs[rows["now"]]
            logits = last_position_logits(model, pad([p.clean for p in batch], "right", model.pad_id, model.device))
            index = torch.arange(len(batch))
            metric[rows["now"]] = (logits[index, [p.answer for p in batch]]
                                   - logits[index, [p.wrong for p in batch]]).float().cpu().numpy()
    return float(metric.mean())


def curve_sizes(n_ranked: int, circuit_size: int, n_all: int) -> list[int]:
    """Circuit sizes the curve measures: 0, powers of two up to every node
    with an effect, the circuit's own, and every node (the model itself)."""
    sizes = {0, n_ranked, circuit_size, n_all} | {2 ** k for k in range(max(1, n_ranked).bit_length())
                                                  if 2 ** k < n_ranked}
    return sorted(sizes)


def ablated_metrics(model, pairs: Sequence[TokenPair], sites: Sequence[Site], values,
                    circuits: Mapping[int, list[torch.Tensor]], budget: int) -> dict[int, float]:
    """Per circuit size n (circuits[n]: the keep masks of the n strongest
    nodes), ablated_metric with the rest ablated to `values`."""
    return {n: ablated_metric(model, pairs, sites, values, keeps, budget) for n, keeps in circuits.items()}


def curve(how: str, metrics: Mapping[int, float], full: float) -> list[dict]:
    """The faithfulness curve of one ablation from the metric at each size
    (metrics[0]: everything ablated) and the model's: ablation, nodes,
    metric, metric_model, metric_empty, faithfulness."""
    empty = metrics[0]
    return [{"ablation": how, "nodes": n, "metric": metric, "metric_model": full, "metric_empty": empty,
             "faithfulness": (metric - empty) / (full - empty) if full != empty else float("nan")}
            for n, metric in metrics.items()]
