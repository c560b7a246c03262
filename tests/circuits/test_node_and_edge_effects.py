"""Node and edge effects of sparse feature circuits (circuits/nodes.py,
circuits/edges.py) against a hand-written reference on a tiny Llama: PyTorch
hooks on the HF modules splice each SAE as Marks et al. do, x = decode(f) +
err with f and err explicit leaves, one pair and one site at a time, and
autograd gives dm/df and dm/derr (IG: averaged over the interpolated
leaves); an edge is the gradient of a downstream node's weighted value
with respect to the upstream leaves, times their change. Compared within
1e-4 relative to the largest value (float32 sums in other orders). And a
site's nodes add up to actlab patch's AtP estimate of the whole activation."""

import numpy as np
import pytest
import torch

from actlab.circuits import CircuitConfig, PairRuns, circuit_sites, node_effects
from actlab.circuits.edges import edge_effects
from actlab.errors import ActlabError
from actlab.patching import PatchConfig, attribution_effects, ioi_pairs, tokenize_pairs

from conftest import random_sae

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
RTOL = 1e-4


@pytest.fixture(scope="module")
def setup(tiny_models):
    model = tiny_models["llama"]
    saes = {f"r{k}": random_sae(hook, seed=k) for k, hook in enumerate(HOOKS)}
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(4))
    return model, circuit_sites(model, saes), pairs


def module_of(model, hook):
    """The HF module whose output a hook is: the embeddings, a block (resid_post) or its MLP (mlp_out)."""
    if hook == "hook_embed":
        return model.hf_model.model.embed_tokens
    block = model.hf_model.model.layers[int(hook.split(".")[1])]
    return {"hook_resid_post": block, "hook_mlp_out": block.mlp}[hook.split(".")[-1]]


def forward(model, ids, edits=None, reads=()):
    """The last position's logits of one sequence; edits[hook](x) -> new x
    (x (T, d)) at module outputs, reads: hooks whose output is kept."""
    seen = {}
    handles = []
    for hook in set(reads) | set(edits or {}):
        def fn(module, args, output, hook=hook):
            x = output[0] if isinstance(output, tuple) else output
            if edits and hook in edits:
                x = edits[hook](x[0]).unsqueeze(0)
            seen[hook] = x[0]
            if edits and hook in edits:
                return (x,) + tuple(output[1:]) if isinstance(output, tuple) else x
        handles.append(module_of(model, hook).register_forward_hook(fn))
    try:
        logits = model.hf_model(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    return logits, seen


def parts(site, x):
    if site.sae is None:
        return x, None
    f = site.sae.encode(x)
    return f, x - site.sae.decode(f)


def reference_grads(model, site, pair, clean, corrupted, alpha=0.0):
    """dm/d(latents), dm/d(error) (or dm/de) at the corrupted run, the site's
    nodes set alpha of the way to clean, as explicit leaves."""
    f_clean, e_clean = parts(site, clean)
    f_corr, e_corr = parts(site, corrupted)
    f = (f_corr + alpha * (f_clean - f_corr)).detach().requires_grad_()
    leaves = [f]
    if site.sae is None:
        edit = lambda x: f  # noqa: E731
    else:
        e = (e_corr + alpha * (e_clean - e_corr)).detach().requires_grad_()
        leaves.append(e)
        edit = lambda x: site.sae.decode(f) + e  # noqa: E731
    with torch.enable_grad():
        logits, _ = forward(model, pair.corrupted, {site.hook: edit})
        grads = torch.autograd.grad(logits[pair.answer] - logits[pair.wrong], leaves)
    return grads, (f_clean - f_corr, None if site.sae is None else e_clean - e_corr)


def reference_effects(model, sites, pairs, steps=None):
    """Per site (T, width): the nodes' effects summed over the pairs."""
    out = [0.0] * len(sites)
    for pair in pairs:
        _, clean = forward(model, pair.clean, reads=[s.hook for s in sites])
        _, corrupted = forward(model, pair.corrupted, reads=[s.hook for s in sites])
        for k, site in enumerate(sites):
            alphas = [0.0] if steps is None else [j / steps for j in range(steps)]
            found = [reference_grads(model, site, pair, clean[site.hook], corrupted[site.hook], a) for a in alphas]
            grads = [sum(g[0][i] for g in found) / len(alphas) for i in range(len(found[0][0]))]
            delta = found[0][1]
            if site.sae is None:
                term = (delta[0] * grads[0]).sum(-1, keepdim=True)
            else:
                term = torch.cat([delta[0] * grads[0], (delta[1] * grads[1]).sum(-1, keepdim=True)], -1)
            out[k] = out[k] + term
    return out


def close(found, expected, label):
    scale = float(expected.abs().max())
    assert scale > 0, label
    np.testing.assert_allclose(found.numpy(), expected.numpy(), rtol=RTOL, atol=RTOL * scale, err_msg=label)


@pytest.mark.parametrize("method", ["atp", "ig"])
def test_node_effects_equal_explicit_leaves(setup, method):
    model, sites, pairs = setup
    with torch.no_grad():
        runs = PairRuns.of(model, pairs, sites, CircuitConfig(method=method, ig_steps=3))
    found = node_effects(runs, sites)
    expected = reference_effects(model, sites, pairs, steps=3 if method == "ig" else None)
    assert [s.name for s in sites] == ["embed", "r0", "r1"]
    for k, site in enumerate(sites):
        close(found[k], expected[k].detach(), f"{method} {site.name}")
    assert (found[1][:, :-1] != 0).sum() > 10  # latents that moved, not just error terms


def test_site_nodes_add_up_to_the_activations_attribution(setup):
    """Latents + error at a site = actlab patch's AtP of the whole
    activation (x_hat is affine in f), per position, summed over pairs."""
    model, sites, pairs = setup
    runs = PairRuns.of(model, pairs, sites, CircuitConfig(method="atp"))
    per_site = node_effects(runs, sites)
    table = attribution_effects(model, pairs, PatchConfig(components=["resid_post"], layers=[0, 1], method=["atp"]),
                                "atp").to_pandas()
    table["change"] = table.metric_patched - table.metric_corrupted
    for k, layer in ((1, 0), (2, 1)):
        expected = table[table.layer == layer].groupby("position").change.sum().to_numpy()
        np.testing.assert_allclose(per_site[k].sum(-1).numpy(), expected, rtol=RTOL,
                                   atol=RTOL * np.abs(expected).max())


def reference_edges(model, sites, pairs, k, downstream, method_grads):
    """Edges from every node of sites[k-1] into each (position, index) of
    sites[k], summed over pairs, through explicit upstream leaves."""
    up, down = sites[k - 1], sites[k]
    total = torch.zeros(len(downstream), len(pairs[0].clean), up.width)
    for p, pair in enumerate(pairs):
        _, clean = forward(model, pair.clean, reads=[up.hook])
        _, corrupted = forward(model, pair.corrupted, reads=[up.hook, down.hook])
        f_clean, e_clean = parts(up, clean[up.hook])
        f_corr, e_corr = parts(up, corrupted[up.hook])
        g_down = method_grads[p]  # dm/dy (T, d) at the downstream site
        for n, (position, index) in enumerate(downstream):
            f = f_corr.detach().requires_grad_()
            leaves = [f]
            if up.sae is None:
                edit = lambda x: f  # noqa: E731
            else:
                e = e_corr.detach().requires_grad_()
                leaves.append(e)
                edit = lambda x: up.sae.decode(f) + e  # noqa: E731
            with torch.enable_grad():
                _, seen = forward(model, pair.corrupted, {up.hook: edit}, reads=[down.hook])
                y = seen[down.hook]
                g = down.sae.encode(y)
                err = y - down.sae.decode(g)
                d_sae = down.sae.cfg.d_sae
                if index < d_sae:
                    value = (down.sae.W_dec[index] @ g_down[position]) * g[position, index]  # dm/df_j * f_j
                else:
                    value = (g_down[position] * err[position]).sum()
                grads = torch.autograd.grad(value, leaves, allow_unused=True)
            grads = [torch.zeros_like(leaf) if gr is None else gr for leaf, gr in zip(leaves, grads)]
            if up.sae is None:
                term = ((f_clean - f_corr) * grads[0]).sum(-1, keepdim=True)
            else:
                term = torch.cat([(f_clean - f_corr) * grads[0], ((e_clean - e_corr) * grads[1]).sum(-1, keepdim=True)],
                                 -1)
            total[n] += term.detach()
    return total


@pytest.mark.parametrize("k", [1, 2])
def test_edges_equal_explicit_leaves(setup, k):
    model, sites, pairs = setup
    runs = PairRuns.of(model, pairs, sites, CircuitConfig(method="atp"))
    d_sae = sites[k].sae.cfg.d_sae
    f = sites[k].sae.encode(runs.corrupted[k][0])  # (T, d_sae): latents on at the corrupted run
    on = f[13].nonzero().flatten()[:2].tolist() + f[9].nonzero().flatten()[:1].tolist()
    downstream = [(13, on[0]), (13, on[1]), (9, on[2]), (13, d_sae), (9, d_sae)]
    found = edge_effects(model, pairs, runs, sites, k, downstream, budget=28)  # two pairs per batch
    expected = reference_edges(model, sites, pairs, k, downstream, list(runs.grads[k]))
    assert found.shape == expected.shape
    for n, node in enumerate(downstream):
        close(found[n], expected[n], f"edge into {node}")
    assert float(found.abs().max()) > 0 and float(found[2, 10:].abs().max()) == 0  # causal: no later position


def test_bad_sites_are_one_line(tiny_models):
    model = tiny_models["llama"]
    with pytest.raises(ActlabError, match="blocks.7.hook_resid_post, a hook a circuit cannot rewrite"):
        circuit_sites(model, {"far": random_sae("blocks.7.hook_resid_post")})
    with pytest.raises(ActlabError, match="takes 32 inputs but blocks.0.hook_resid_post has 64"):
        circuit_sites(model, {"narrow": random_sae("blocks.0.hook_resid_post", d_in=32)})
    with pytest.raises(ActlabError, match="both read blocks.0.hook_resid_post"):
        circuit_sites(model, {"a": random_sae("blocks.0.hook_resid_post"), "b": random_sae("blocks.0.hook_resid_post")})
    with pytest.raises(ActlabError, match="cannot rewrite"):
        circuit_sites(model, {"mid": random_sae("blocks.0.hook_resid_mid")})
