"""Edges of a sparse feature circuit: how much of a downstream node's effect
flows through an upstream node at the previous site.

Marks et al. (2024, saprmarks/feature-circuits, jvp in attribution.py)
linearise through the frozen computation between two consecutive sites u
and d: for a downstream node n_d with value v_d and an upstream node n_u,

    edge(n_u -> n_d) = dm/dv_d * dv_d/dn_u * (n_u,clean - n_u,corr)

One backward per downstream node: from the node's value times its (node
stage) gradient, dm/dv_d * v_d, summed over the pairs (each pair's
value depends on its own row only), to the upstream site's activation x_u
(a leaf on the corrupted run), then each upstream node's term as in
nodes.Site.terms. The forward stops at d. The Jacobian is taken on the
corrupted run, the base, as Marks et al. take it on theirs. The edge into
the metric from a node at the last site is that node's effect (the sites
lie in the residual stream's order, so with residual-stream SAEs each site
carries everything the next one reads).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..engine import StopForward
from ..hooks import capture, replace
from ..patching.pairs import TokenPair
from ..tokens import pad
from .nodes import PairRuns, Site

DownstreamNode = tuple[int | None, int]  # (position, or None: every position summed; index into the site's width)


def edge_effects(model, pairs: Sequence[TokenPair], runs: PairRuns, sites: Sequence[Site], k: int,
                 downstream: Sequence[DownstreamNode], budget: int) -> torch.Tensor:
    """Edges from every node at sites[k - 1] into each downstream node at
    sites[k], summed over the pairs: (len(downstream), T, width of sites[k - 1])."""
    up, down = sites[k - 1], sites[k]
    delta_all = up.delta(runs.clean[k - 1], runs.corrupted[k - 1])
    length = len(pairs[0].corrupted)
    total = torch.zeros(len(downstream), length, up.width, device=runs.grads[k].device)
    step = max(1, budget // length)
    for lo in range(0, len(pairs), step):
        rows = slice(lo, min(lo + step, len(pairs)))
        padded = pad([p.corrupted for p in pairs[rows]], "right", model.pad_id, model.device)
        leaf: dict[str, torch.Tensor] = {}

        def start(hidden: torch.Tensor) -> torch.Tensor:
            leaf["x"] = hidden.detach().requires_grad_()
            return leaf["x"]

        def stop(hidden: torch.Tensor) -> None:
            leaf["y"] = hidden
            raise StopForward

        with torch.enable_grad(), replace(model.hf_model, {up.hook: start}), capture(model.hf_model, {down.hook: stop}):
            try:
                model.base_model(**padded.inputs(), use_cache=False)
            except StopForward:
                pass
            # dm/dv * v for every downstream node, v from y in the graph, dm/dv held constant: (b, T, width)
            values = down.terms(down.split(leaf["y"]), runs.corrupted[k][rows], runs.grads[k][rows])
            delta = (delta_all[0][rows], delta_all[1][rows])
            for n, (position, index) in enumerate(downstream):
                value = values[:, :, index].sum() if position is None else values[:, position, index].sum()
                grad = torch.autograd.grad(value, leaf["x"], retain_graph=n < len(downstream) - 1,
                                           allow_unused=True)[0]
                if grad is not None:
                    total[n] += up.terms(delta, runs.corrupted[k - 1][rows], grad.detach()).sum(0)
    return total
