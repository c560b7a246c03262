"""Results convert to pandas / polars and show a summary in Jupyter; Features
take an SAE's name or the SAE itself."""

import numpy as np
import pytest

import actlab
from conftest import TEXTS, random_sae


def test_activations_convert(tiny_models):
    import polars as pl

    acts = tiny_models["llama"].extract(TEXTS, ["blocks.1.hook_resid_post"], pooling="mean")
    frame = acts.to_pandas()
    assert list(frame["text_id"]) == list(range(len(TEXTS)))
    assert np.allclose(np.stack(frame["blocks.1.hook_resid_post"]), acts["blocks.1.hook_resid_post"].numpy())
    assert acts.to_polars().schema["blocks.1.hook_resid_post"] == pl.Array(pl.Float32, 64)
    per_token = tiny_models["llama"].extract(TEXTS, ["blocks.1.hook_resid_post"], pooling="all")
    assert len(per_token.to_pandas()) == int(per_token.n_tokens.sum())
    html = acts._repr_html_()
    assert "<b>Activations</b>" in html and "blocks.1.hook_resid_post (8, 64)" in html


def test_features_by_name_or_object(tiny_models):
    sae = random_sae("blocks.1.hook_resid_post")
    feats = tiny_models["llama"].features(TEXTS, {"mid": sae})
    assert (feats[sae] == feats["mid"]).all() and (feats.dense(sae) == feats.dense("mid")).all()
    with pytest.raises(KeyError, match="not among"):
        feats.dense(random_sae("blocks.1.hook_resid_post"))
    frame = feats.to_pandas()
    assert len(frame) == len(feats.sparse["mid"].values) and set(frame["sae"]) <= {"mid"}
    assert feats.mean_l0("mid") == pytest.approx(float((feats["mid"] > 0).sum(1).float().mean()))
    assert "<b>Features</b>" in feats._repr_html_()


def test_runs_show_a_summary(tmp_path, tiny_models):
    model = tiny_models["llama"]
    records = actlab.Records.of(TEXTS, category=[i % 2 for i in range(len(TEXTS))])
    run = actlab.open_run(actlab.extract_run(model, records, tmp_path / "a",
                                             actlab.ExtractConfig(["blocks.1.hook_resid_post"])))
    assert "<b>ActivationRun</b>" in run._repr_html_() and str(tmp_path / "a") in run._repr_html_()
    assert list(run.to_pandas()["category"]) == records.fields["category"]
