"""The CPU matrix path chosen at load (actlab.engine.linears): oneDNN with
prepacked weights equals the plain nn.Linear forward within float32 rounding,
follows in-place weight edits, and leaves autograd to the plain path."""

import copy
import io
import json

import pytest
import torch
from conftest import VOCAB, build_tiny, random_sae, rel_error, run_cli
from transformers.pytorch_utils import Conv1D

import actlab
from actlab.engine import linears
from actlab.engine.linears import choose, is_packed, plain_linears
from actlab.engine.machine import RECORD, machine_key
from actlab.saes import sae as sae_module

RTOL = 1e-5  # float32: oneDNN and torch.mm sum in other orders


def hidden_and_logits(model, ids):
    with torch.inference_mode():
        out = model.hf_model(ids, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox"])
def test_packed_forward_equals_the_plain_one(tokenizer, arch):
    model = build_tiny(arch, tokenizer)
    ids = torch.randint(0, 200, (3, 11))
    plain_hidden, plain_logits = hidden_and_logits(model, ids)
    chosen = choose(model.hf_model, "onednn")
    linears = [m for m in model.hf_model.modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    assert all(is_packed(m) for m in linears) and sum(row["layers"] for row in chosen.values()) == len(linears)
    packed_hidden, packed_logits = hidden_and_logits(model, ids)
    assert rel_error(packed_hidden, plain_hidden) < RTOL
    assert rel_error(packed_logits, plain_logits) < RTOL
    with plain_linears(model.hf_model):
        assert not any(is_packed(m) for m in linears)
        assert rel_error(hidden_and_logits(model, ids)[1], plain_logits) < 1e-7
    assert all(is_packed(m) for m in linears)
    choose(model.hf_model, "torch")
    assert not any(is_packed(m) for m in linears)


def test_packed_layer_follows_an_in_place_weight_edit():
    layer = torch.nn.Linear(16, 24)
    x = torch.randn(5, 16)
    choose(layer, "onednn")
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(-2.0)
    with torch.inference_mode():
        after = layer(x)
    expected = torch.nn.functional.linear(x, layer.weight.detach(), layer.bias.detach())
    assert rel_error(after, expected) < RTOL and not torch.allclose(before, after)


def test_gradients_go_through_the_plain_linear():
    torch.manual_seed(0)
    packed, plain = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    plain.load_state_dict(packed.state_dict())
    choose(packed, "onednn")
    x = torch.randn(3, 8, requires_grad=True)
    packed(x).square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    plain(x).square().sum().backward()
    assert rel_error(grad, x.grad) < RTOL and rel_error(packed.weight.grad, plain.weight.grad) < RTOL


def test_auto_measures_each_shape_and_takes_one_path_for_the_blocks():
    layers = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 64), torch.nn.Linear(64, 256))
    chosen = choose(layers, "auto")
    assert set(chosen) == {"256x64", "64x256"} and chosen["256x64"]["layers"] == 2
    seconds = {path: sum(row["layers"] * 64 * 256 / row[f"{path}_gflops"] for row in chosen.values())
               for path in ("torch", "onednn")}
    faster = "onednn" if seconds["torch"] >= 1.1 * seconds["onednn"] else "torch"
    assert all(row["path"] == faster and row["torch_gflops"] > 0 for row in chosen.values())
    assert all(is_packed(m) == (faster == "onednn") for m in layers)


def test_auto_never_mixes_paths_within_the_blocks(monkeypatch, tmp_path, tokenizer):
    """Shapes that disagree: the blocks take the path that is faster over
    all their layers together; the LM head decides alone."""
    monkeypatch.setenv("ACTLAB_HOME", str(tmp_path))
    model = build_tiny("llama", tokenizer)  # blocks: 64x64 (q, o), 32x64 (k, v), 128x64 (gate, up), 64x128 (down)
    figures = {(64, 64): (100.0, 300.0), (32, 64): (100.0, 300.0), (128, 64): (200.0, 100.0),
               (64, 128): (200.0, 100.0), (VOCAB, 64): (100.0, 150.0)}  # (torch, onednn) GFLOP/s
    monkeypatch.setattr(linears, "matrix_throughput", lambda weights, rows=None: dict(
        zip(("torch", "onednn"), figures[tuple(weights[0].shape)])))
    chosen = choose(model.hf_model, "auto")
    # the three blocks' products take 737 units through torch and 860 through oneDNN, though q, k, v and o alone
    # are 3x faster through oneDNN: all torch
    assert {shape: row["path"] for shape, row in chosen.items()} == {
        "64x64": "torch", "32x64": "torch", "128x64": "torch", "64x128": "torch", f"{VOCAB}x64": "onednn"}
    assert is_packed(model.hf_model.lm_head) and not is_packed(model.hf_model.model.layers[0].mlp.up_proj)


def test_auto_takes_the_machines_recorded_path(monkeypatch, tmp_path):
    """The first load measures each shape (on the model's own weights) and
    records it; a later load, in this or any process, takes the recorded
    path even where a new timing would say otherwise."""
    monkeypatch.setenv("ACTLAB_HOME", str(tmp_path))
    probes = []

    def timing(weights, rows=None):
        probes.append((tuple(weights[0].shape), len(weights)))
        onednn = 100.0 if len(probes) <= 2 else 10.0  # the first two probes find oneDNN faster, later ones not
        return {"torch": 50.0, "onednn": onednn}

    monkeypatch.setattr(linears, "matrix_throughput", timing)

    def layers():
        return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 64), torch.nn.Linear(64, 256))

    first = choose(layers(), "auto")
    assert sorted(probes) == [((64, 256), 1), ((256, 64), 2)]  # each shape timed on its layers' weights
    linears._DECIDED.clear()  # as a new process: only the record remains
    again = layers()
    assert choose(again, "auto") == first and len(probes) == 2
    assert all(row["path"] == "onednn" for row in first.values()) and all(is_packed(m) for m in again)
    recorded = json.loads((tmp_path / RECORD).read_text())[machine_key()]["matmul"]
    assert recorded["256x64"] == {"path": "onednn", "torch": 50.0, "onednn": 100.0}


def test_default_model_packed_equals_torch(default_model):
    ids = torch.tensor([default_model.tokenizer("The capital of France is Paris, and")["input_ids"]])
    try:
        choose(default_model.hf_model, "torch")
        plain_hidden, plain_logits = hidden_and_logits(default_model, ids)
        choose(default_model.hf_model, "onednn")
        packed_hidden, packed_logits = hidden_and_logits(default_model, ids)
    finally:
        default_model.matmul = choose(default_model.hf_model, "auto")  # as loaded: either path is exact
    assert rel_error(packed_hidden, plain_hidden) < RTOL and rel_error(packed_logits, plain_logits) < RTOL
    assert set(default_model.matmul) >= {"576x576", "49152x576"}


def test_unknown_matmul_path_is_a_one_line_error(monkeypatch, capsys):
    with pytest.raises(actlab.ActlabError, match="matmul path 'fast'; use auto, torch, onednn"):
        actlab.load_model(matmul="fast")
    code, _, stderr = run_cli(monkeypatch, capsys, "models", "--matmul", "fast")
    assert code == 2 and "use auto, torch, onednn (--matmul)" in stderr and len(stderr.strip().splitlines()) == 1


def test_copies_and_saves_of_a_packed_model_work(tokenizer):
    model = build_tiny("llama", tokenizer)
    choose(model.hf_model, "onednn")
    ids = torch.randint(0, 200, (2, 7))
    _, logits = hidden_and_logits(model, ids)  # packs every layer
    twin = copy.copy(model)
    twin.hf_model = copy.deepcopy(model.hf_model)
    assert rel_error(hidden_and_logits(twin, ids)[1], logits) < RTOL
    layer = model.hf_model.lm_head
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(3, layer.in_features)
    with torch.inference_mode():
        assert is_packed(loaded) and rel_error(loaded(x), layer(x)) < RTOL


def test_sae_encoder_packed_equals_the_plain_product(monkeypatch):
    tiny_sae = random_sae("blocks.0.hook_resid_post")
    x = torch.randn(4, 9, tiny_sae.cfg.d_in)
    plain = (x - tiny_sae.b_dec) @ tiny_sae.W_enc + tiny_sae.b_enc
    monkeypatch.setattr(sae_module, "faster_path", lambda shape: ("onednn", {}))
    with torch.inference_mode():
        packed = tiny_sae.pre_activations(x)
    assert tiny_sae.packed_encoder.packed is not None
    assert rel_error(packed, plain) < RTOL
