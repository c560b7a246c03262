"""The patching report (pipelines/patch_report.py gathers, report/patching.py
draws): its heatmaps hold the run's mean effects, its correlations are
numpy's over pandas's join of the methods' rows, and `actlab patch` writes it."""

import numpy as np

import actlab
from actlab.patching import PatchConfig, ioi_pairs, patch_run
from actlab.pipelines import build_patch_report
from actlab.pipelines.patch_report import collect_patch_report


def test_report_shows_the_runs_effects(tiny_models, tmp_path):
    model = tiny_models["llama"]
    cfg = PatchConfig(components=["resid_pre", "head"], layers=[0, 2], method=["exact", "atp"])
    path = patch_run(model, ioi_pairs(3), tmp_path / "p", cfg)
    run = actlab.open_run(path)
    data = collect_patch_report(run)
    means = run.mean_effects().to_pandas()
    resid = next(m for m in data.maps if (m.method, m.component) == ("exact", "resid_pre"))
    expected = means[(means.method == "exact") & (means.component == "resid_pre")].pivot(
        index="layer", columns="position", values="normalized").to_numpy()
    assert np.allclose(resid.values, expected, equal_nan=True)
    assert resid.columns[9].startswith("9 ") and resid.rows == ["block 0", "block 2"]
    heads = next(m for m in data.maps if (m.method, m.component) == ("atp", "head"))
    assert heads.values.shape == (2, 4) and heads.what.startswith("heads at 13 ")
    effects = run.to_pandas().fillna({"position": -1, "head": -1})
    effects["change"] = effects.metric_patched - effects.metric_corrupted
    keys = ["pair", "component", "layer", "position", "head"]
    joined = effects[effects.method == "exact"].merge(effects[effects.method == "atp"], on=keys)
    for comparison in data.comparisons:
        component = comparison["label"].split(": ")[1]
        part = joined[joined.component == component]
        assert np.isclose(comparison["r"], np.corrcoef(part.change_x, part.change_y)[0, 1])
    page = build_patch_report(path)
    html = page.read_text()
    assert "Attribution against exact patching" in html and html.count("<img") == 4 + 1
    assert (path / "figures" / "exact-resid_pre.png").read_bytes()[:4] == b"\x89PNG"
