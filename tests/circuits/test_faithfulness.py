"""Mean ablation (circuits/faithfulness.py) against hand-written PyTorch hooks
on a tiny Llama: each pair alone, every site's nodes outside the kept set
replaced by their means over the pairs' clean runs, x rebuilt as
decode(f') + err'. Keeping every node returns the model's metric (to float
rounding), keeping none gives faithfulness 0, everything 1; ablating every
node to the corrupted run gives the corrupted run's metric (measured by a
plain forward)."""

import numpy as np
import pytest
import torch

from actlab.circuits import CircuitConfig, PairRuns, circuit_sites
from actlab.circuits.faithfulness import ablated_metric, ablated_metrics, ablation_values, curve
from actlab.patching import ioi_pairs, tokenize_pairs

from conftest import random_sae
from test_node_and_edge_effects import forward, module_of, parts

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"]


@pytest.fixture(scope="module")
def setup(tiny_models):
    model = tiny_models["llama"]
    sites = circuit_sites(model, {f"s{k}": random_sae(hook, seed=k) for k, hook in enumerate(HOOKS)})
    pairs = tokenize_pairs(model.tokenizer, ioi_pairs(5))
    return model, sites, pairs, PairRuns.of(model, pairs, sites, CircuitConfig(method="atp"))


def keep_masks(sites, length, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(length, site.width, generator=g) < 0.5 for site in sites]


def reference_metric(model, sites, pairs, keeps):
    """The mean over pairs of the logit difference with every site ablated by hand, one pair at a time."""
    means = []
    for site in sites:  # the clean runs' mean latents and errors, per position
        values = [parts(site, forward(model, p.clean, reads=[site.hook])[1][site.hook]) for p in pairs]
        means.append([torch.stack([v[i] for v in values]).mean(0) if values[0][i] is not None else None
                      for i in range(2)])
    metrics = []
    for pair in pairs:
        handles = []
        for site, mean, keep in zip(sites, means, keeps):
            def edit(module, args, output, site=site, mean=mean, keep=keep):
                x = output[0] if isinstance(output, tuple) else output  # (1, T, d)
                if site.sae is None:
                    new = torch.where(keep, x[0], mean[0])
                else:
                    f, err = parts(site, x[0])
                    f = torch.where(keep[:, :-1], f, mean[0])
                    err = torch.where(keep[:, -1:], err, mean[1])
                    new = site.sae.decode(f) + err
                return (new[None],) + tuple(output[1:]) if isinstance(output, tuple) else new[None]
            handles.append(module_of(model, site.hook).register_forward_hook(edit))
        try:
            with torch.no_grad():
                logits = model.hf_model(input_ids=torch.tensor([pair.clean])).logits[0, -1]
        finally:
            for h in handles:
                h.remove()
        metrics.append(float(logits[pair.answer] - logits[pair.wrong]))
    return float(np.mean(metrics))


def test_mean_ablation_equals_hand_written_hooks(setup):
    model, sites, pairs, runs = setup
    means = ablation_values(runs, sites, "mean")
    for seed in range(2):
        keeps = keep_masks(sites, 14, seed)
        found = ablated_metric(model, pairs, sites, means, keeps, budget=28)
        expected = reference_metric(model, sites, pairs, keeps)
        assert found == pytest.approx(expected, rel=1e-4, abs=1e-5)
    everything = [torch.ones(14, site.width, dtype=torch.bool) for site in sites]
    assert ablated_metric(model, pairs, sites, means, everything, 64) == pytest.approx(
        float(runs.base.clean.mean()), rel=1e-5, abs=1e-6)  # nothing ablated: the model


def test_curve_runs_from_empty_to_the_model(setup):
    model, sites, pairs, runs = setup
    nothing = [torch.zeros(14, site.width, dtype=torch.bool) for site in sites]
    everything = [torch.ones(14, site.width, dtype=torch.bool) for site in sites]
    some = keep_masks(sites, 14, 3)
    metrics = ablated_metrics(model, pairs, sites, ablation_values(runs, sites, "mean"),
                              {0: nothing, 1: some, 2: everything}, budget=64)
    rows = curve("mean", metrics, float(runs.base.clean.mean()))
    assert [(r["ablation"], r["nodes"]) for r in rows] == [("mean", 0), ("mean", 1), ("mean", 2)]
    assert rows[0]["faithfulness"] == 0 and rows[2]["faithfulness"] == pytest.approx(1, abs=1e-4)
    assert rows[1]["metric"] == pytest.approx(reference_metric(model, sites, pairs, some), rel=1e-4, abs=1e-5)
    assert rows[0]["metric_empty"] == pytest.approx(reference_metric(model, sites, pairs, nothing), rel=1e-4, abs=1e-5)


def test_corrupted_ablation_of_everything_is_the_corrupted_run(setup):
    model, sites, pairs, runs = setup
    nothing = [torch.zeros(14, site.width, dtype=torch.bool) for site in sites]
    found = ablated_metric(model, pairs, sites, ablation_values(runs, sites, "corrupted"), nothing, budget=28)
    assert found == pytest.approx(float(runs.base.corrupted.mean()), rel=1e-4, abs=1e-5)
    assert abs(found - float(runs.base.clean.mean())) > 0.1
