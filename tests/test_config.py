"""ExtractConfig validates its own fields and names the parameter at fault."""

import pytest

from actlab import ActlabError, ExtractConfig
from actlab.traits import GenerationConfig

from conftest import TEXTS


@pytest.mark.parametrize("fields, param", [
    (dict(padding_side="middle"), "padding_side"), (dict(batch_size=0), "batch_size"),
    (dict(max_batch_tokens=-1), "max_batch_tokens"), (dict(max_length=0), "max_length"),
    (dict(pooling="median"), "pooling"),
])
def test_bad_fields(fields, param):
    with pytest.raises(ActlabError) as info:
        ExtractConfig(hooks=["blocks.0.hook_resid_post"], **fields)
    assert info.value.param == param


def test_of_replaces_and_refuses_unknown_options():
    base = ExtractConfig(hooks="blocks.0.hook_resid_post", pooling="mean")
    assert base.hooks == ["blocks.0.hook_resid_post"]
    changed = ExtractConfig.of(base, pooling="last", max_length=None)  # None leaves a field alone
    assert changed.pooling == "last" and changed.hooks == base.hooks and base.pooling == "mean"
    with pytest.raises(ActlabError, match="unknown option\\(s\\) batchsize") as info:
        ExtractConfig.of(base, batchsize=4)
    assert info.value.param == "batchsize"


def test_settings_are_the_result_fields_only():
    cfg = ExtractConfig(hooks=["h"], batch_size=4, padding_side="left")
    assert set(cfg.settings()) == {"hooks", "pooling", "include_bos", "prepend_bos", "max_length"}
    assert cfg.batching() == {"batch_size": 4, "max_batch_tokens": None, "padding_side": "left"}


def test_model_extract_takes_a_config(tiny_models):
    model = tiny_models["llama"]
    cfg = ExtractConfig(hooks=["blocks.1.hook_resid_post"], pooling="mean", batch_size=2)
    from_cfg = model.extract(TEXTS, cfg=cfg)
    from_kwargs = model.extract(TEXTS, "blocks.1.hook_resid_post", pooling="mean", batch_size=2)
    assert (from_cfg["blocks.1.hook_resid_post"] == from_kwargs["blocks.1.hook_resid_post"]).all()


@pytest.mark.parametrize("fields, param", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
    (dict(slots=0), "slots"), (dict(sync_every=0), "sync_every"),
])
def test_bad_generation_fields(fields, param):
    with pytest.raises(ActlabError) as info:
        GenerationConfig(**fields)
    assert info.value.param == param
