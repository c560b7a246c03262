"""The HTML report: its numbers against independent computations, its files,
and the page itself rendered in headless Chromium."""

import numpy as np
import pytest
import torch

from actlab import ActlabError
from actlab.datasets import categories
from actlab.pipelines import build_report
from actlab.pipelines.feature_report import category_means, collect
from actlab.pipelines import ReportConfig
from actlab.saes import load_sae
from actlab.saes.quality import sae_quality
from actlab import ExtractConfig
from actlab.features import FeatureRun, features_run

from conftest import chromium_driver, random_sae, rel_error, run_cli, save_sae_lens_folder

SECTIONS = ["summary", "quality", "comparison", "heatmaps", "latents", "tables", "frequency"]
CFG = ReportConfig(threshold=0.5, latents_per_sae=4, texts_per_latent=3, quality_texts=12)


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    made = {}
    for name, hook, seed in (("early", "blocks.0.hook_resid_post", 1), ("late", "blocks.2.hook_resid_post", 2)):
        sae = random_sae(hook, seed=seed, neuronpedia_id=f"tiny/{name}")
        made[name] = load_sae(save_sae_lens_folder(sae, root / name))
    return made


@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory, tiny_models, saes):
    records = categories()
    return features_run(tiny_models["llama"], records, saes, tmp_path_factory.mktemp("run") / "run")


def test_category_means_against_a_loop():
    rng = np.random.default_rng(0)
    F = np.maximum(rng.normal(size=(40, 30)), 0)
    cats = [f"c{i % 4}" for i in range(40)]
    labels, latents, means = category_means(F, cats, per_category=2)
    assert labels == ["c0", "c1", "c2", "c3"] and len(latents) == len(set(latents)) <= 8
    for i, c in enumerate(labels):
        inside = [r for r in range(40) if cats[r] == c]
        for n, j in enumerate(latents):
            assert means[i, n] == pytest.approx(sum(F[r, j] for r in inside) / len(inside))
    first = latents[0]  # c0's best latent beats its mean elsewhere
    assert F[[r for r in range(40) if cats[r] == "c0"], first].mean() > F[[r for r in range(40) if cats[r] != "c0"], first].mean()


def test_report_numbers(pooled_run, tiny_models):
    model = tiny_models["llama"]
    feats = FeatureRun.open(pooled_run)
    data = collect(pooled_run, feats, model, CFG)
    assert data.highlighted and {c.sae for c in data.cards} == {"early", "late"}
    for card in data.cards:
        sae = load_sae(feats.configs[card.sae].source)
        for ex in card.examples:
            # one text alone, every token: the highlighted values, and the pooled
            # value of a last-token run is the last token's
            alone = model.features([ex.text], [sae], pooling="all")
            values = alone.dense(alone.names[0])[:, card.latent]
            assert rel_error(torch.tensor([ex.token_values]), values[None]) < 1e-5
            assert ex.value == pytest.approx(ex.token_values[-1], rel=1e-5)
            assert "".join(ex.tokens) == ex.text
    texts = feats.metadata["fields"]["text"][:CFG.quality_texts]
    for name in feats.names:
        expected = sae_quality(model, load_sae(feats.configs[name].source), texts)
        got = next(iter(data.quality[name].values()))
        assert got["explained_variance"] == pytest.approx(expected["explained_variance"])
        assert got["l0"] == pytest.approx(expected["l0"])
    from actlab.report.html import feature_figures

    assert {"heatmap-early.png", "heatmap-late.png", "firing-frequency.png"} <= set(feature_figures(data))


def test_report_files(pooled_run, tiny_models, tmp_path):
    out = build_report(pooled_run, tmp_path / "r.html", model=tiny_models["llama"], cfg=CFG)
    html = out.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert "https://neuronpedia.org/tiny/early/" in html and "<script" not in html
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert pngs == ["firing-frequency.png", "heatmap-early.png", "heatmap-late.png"]
    assert all((tmp_path / "figures" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_report_without_the_model(pooled_run, tmp_path):
    html = build_report(pooled_run, tmp_path / "r.html", use_model=False, cfg=CFG).read_text()
    assert "made without the model" in html and 'class="tok"' not in html


def test_per_token_run_highlights_without_the_model(tmp_path, tiny_models, saes):
    records = categories().select(list(range(0, 210, 15)))
    run = features_run(tiny_models["llama"], records, saes, tmp_path / "run", ExtractConfig(pooling="all"))
    feats = FeatureRun.open(run)
    data = collect(run, feats, None, CFG)
    assert data.highlighted and not data.quality
    card = data.cards[0]
    ex = card.examples[0]
    assert max(ex.token_values) == pytest.approx(ex.value)  # per-text value: the max over tokens


def test_unreachable_sae_is_a_clear_error(tmp_path, tiny_models):
    records = categories().select(list(range(0, 210, 30)))
    run = features_run(tiny_models["llama"], records, {"x": random_sae("blocks.1.hook_resid_post")},
                       tmp_path / "run")
    with pytest.raises(ActlabError, match="cannot be reloaded.*--no-model"):
        build_report(run, model=tiny_models["llama"], cfg=CFG)


def test_report_renders_in_headless_chromium(pooled_run, tiny_models, tmp_path):
    out = build_report(pooled_run, tmp_path / "report.html", model=tiny_models["llama"], cfg=CFG)
    driver = chromium_driver()
    try:
        driver.get(out.resolve().as_uri())
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        for section in SECTIONS:
            element = driver.find_element("id", section)
            assert element.is_displayed() and element.find_element("tag name", "h2").text
        images = driver.find_elements("tag name", "img")
        assert len(images) == 3
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                   for img in images)
        assert len(driver.find_elements("css selector", "span.tok")) > 0
        assert len(driver.find_elements("css selector", "#latents .card")) == 8
    finally:
        driver.quit()


def test_report_command(monkeypatch, capsys, pooled_run, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "report", pooled_run, "--no-model", "--out", tmp_path / "x.html",
                             "--threshold", "0.5")
    assert code == 0, err
    assert str(tmp_path / "x.html") in out.replace("\n", "") and (tmp_path / "figures" / "firing-frequency.png").is_file()
    code, _, err = run_cli(monkeypatch, capsys, "report", tmp_path / "nothing")
    assert code == 2 and "not an actlab run" in err and len(err.strip().splitlines()) == 1
