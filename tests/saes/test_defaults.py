"""The SAEs that ship for the default model: SAELens format that sae_lens
itself loads, the size budget, quality on text they were not trained on, and
their use wherever an SAE is optional."""

import json

import pytest
import torch

from actlab import ActlabError
from actlab.datasets import categories
from actlab.saes import default_sae_dirs, default_saes, load_sae
from actlab.saes.quality import sae_quality

from conftest import run_cli, rel_error

sae_lens = pytest.importorskip("sae_lens")


def test_three_depths_within_the_size_budget():
    dirs = default_sae_dirs()
    layers = [int(name.rsplit("-", 1)[1]) for name in dirs]
    assert len(dirs) >= 3 and layers == sorted(layers) and layers[0] <= 10 and layers[-1] >= 20
    total = sum(f.stat().st_size for d in dirs.values() for f in d.iterdir())
    assert total <= 25 * 2**20
    report = json.loads((next(iter(dirs.values())).parent / "quality.json").read_text())
    for name in dirs:  # the training report's held-out figures meet the targets
        q = report["quality"][name]
        assert q["explained_variance"] >= 0.75 and 16 <= q["l0"] <= 128 and q["dead_fraction"] <= 0.10


def test_sae_lens_loads_them_and_agrees(default_model):
    texts = categories().texts[::10]
    for name, folder in default_sae_dirs().items():
        ours = load_sae(folder)
        assert ours.cfg.hook_name == f"blocks.{name.rsplit('-', 1)[1]}.hook_resid_post"
        theirs = sae_lens.SAE.load_from_disk(str(folder), dtype="float32")
        x = default_model.extract(texts, ours.cfg.hook_name, pooling="all", prepend_bos=True, progress=False)
        x = x[ours.cfg.hook_name]
        with torch.no_grad():
            assert rel_error(ours.encode(x), theirs.encode(x)) <= 1e-5


def test_quality_on_the_built_in_texts(default_model):
    """Text the SAEs never saw (the built-in set; they were trained on fortunes)."""
    texts = categories().texts[::3]
    for name, sae in default_saes().items():
        q = sae_quality(default_model, sae, texts)
        assert q["explained_variance"] >= 0.75, name
        assert q["l0"] == pytest.approx(sae.cfg.k)
        assert q["ce_loss_score"] >= 0.6, name


def test_default_wherever_an_sae_is_optional(default_model):
    feats = default_model.features(["Hello there.", "def f(x): return x"], progress=False)
    assert feats.names == list(default_sae_dirs())


def test_no_default_saes_for_other_models(tiny_models):
    with pytest.raises(ActlabError, match="ships default SAEs only for smollm2-135m-instruct"):
        tiny_models["llama"].features(["hi"], progress=False)


def test_cli_features_and_quality_default_to_them(monkeypatch, capsys, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("The court finds for the plaintiff.\nlol that was wild\n")
    code, out, err = run_cli(monkeypatch, capsys, "features", "--input", texts, "--out", tmp_path / "run")
    assert code == 0, err
    assert all(name in out for name in default_sae_dirs())
    code, out, err = run_cli(monkeypatch, capsys, "sae", "quality", "--input", texts)
    assert code == 0, err
    assert all(name in out for name in default_sae_dirs())


def test_report_of_the_default_saes_shows_texts_without_bos(default_model, tmp_path):
    """The default SAEs prepend BOS; the highlighted tokens are the text's own."""
    from actlab.pipelines.feature_report import collect
    from actlab.pipelines import ReportConfig
    from actlab import ExtractConfig
    from actlab.features import FeatureRun, features_run

    records = categories().select(list(range(0, 210, 10)))
    run = features_run(default_model, records, default_saes(), tmp_path / "run", ExtractConfig(pooling="mean"))
    data = collect(run, FeatureRun.open(run), default_model, ReportConfig(threshold=2.0, quality_texts=0,
                                                                        latents_per_sae=2, texts_per_latent=2))
    for card in data.cards:
        for ex in card.examples:
            assert "".join(ex.tokens) == ex.text
            # the pooled value is the mean of the shown tokens' values
            assert ex.value == pytest.approx(sum(ex.token_values) / len(ex.token_values), rel=1e-4)
