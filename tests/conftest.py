"""Shared fixtures: tiny models of every supported architecture, built
in-process from a config, and the default model."""

from __future__ import annotations

import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the model hub

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import actlab
from actlab.cli import main
from actlab.saes import SAE, SAEConfig
from actlab.default_model import default_model_dir

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def pytest_configure(config):
    """Under pytest-xdist (`make test`), the workers share the cores: each
    computes with its share of torch's threads, not all of them each, and
    so do the processes it starts (the tour notebook's kernel, CLI runs in
    subprocesses, a local Ray instance's workers)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, torch.get_num_threads() // workers)
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)


ONE_WORKER = {"test_ray.py": "ray", "test_ray_cluster.py": "ray"}  # Ray instances of their own: never two at once


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(items):
    """Each test module runs on one worker, as a whole; the Ray modules
    together on one."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(ONE_WORKER.get(item.path.name, item.path.stem)))

VOCAB = 49152  # the default model's tokenizer serves every tiny model
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
             num_attention_heads=4, max_position_embeddings=512)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2),
    "mistral": lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL, num_key_value_heads=2),
    "gemma": lambda: transformers.GemmaConfig(**SMALL, num_key_value_heads=2, head_dim=16),
    "gemma2": lambda: transformers.Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=16),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4,
                                            n_positions=512, n_ctx=512),  # as in real configs
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**SMALL, use_parallel_residual=True),
    "gpt_neox_serial": lambda: transformers.GPTNeoXConfig(**SMALL, use_parallel_residual=False),
}
ARCHITECTURES = list(CONFIGS)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "def add(a, b):\n    return a + b",
    "Bonjour, comment allez-vous aujourd'hui ? Très bien, merci beaucoup.",
    "lol 😂",
    "In this paper, we propose a novel framework for causal inference in observational "
    "studies with many confounders, and evaluate it on three benchmarks.",
    "x",
    "E = mc^2",
]


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_dir())


def build_tiny(arch: str, tokenizer) -> actlab.Model:
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(CONFIGS[arch](), dtype=torch.float32)
    # Random init at std 0.02 makes every block nearly the identity; larger
    # weights make a wrong position or a leaked pad change the numbers.
    with torch.no_grad():
        for p in hf_model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return actlab.Model(hf_model, tokenizer, f"tiny-{arch}")


@pytest.fixture(scope="session")
def tiny_models(tokenizer):
    return {arch: build_tiny(arch, tokenizer) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def default_model():
    return actlab.load_model(actlab.DEFAULT_MODEL, device="cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_models):
    """The tiny Llama saved as a local folder, for CLI tests."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_models["llama"]
    model.hf_model.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


FLOAT_RTOL = 1e-5  # float32 results of other runners, thread counts or batch shapes


def assert_tables_close(a, b, rtol: float = FLOAT_RTOL, label: str = "") -> None:
    """Two Arrow tables hold the same rows: the same schema; ids, tokens, text
    and every other non-float column exactly equal; float columns (at any depth
    of lists or structs) equal within rtol of each value plus rtol of the
    column's largest magnitude, with NaN and nulls in the same places. For
    results of different runners, thread counts or batch shapes, whose float
    sums may round differently (never compare those bitwise)."""
    assert a.schema.equals(b.schema, check_metadata=False), f"{label}: schemas differ\n{a.schema}\n{b.schema}"
    assert a.num_rows == b.num_rows, f"{label}: {a.num_rows} rows vs {b.num_rows}"
    for name in a.column_names:
        _assert_arrays_close(a.column(name).combine_chunks(), b.column(name).combine_chunks(), rtol,
                             f"{label}:{name}")


def _assert_arrays_close(a, b, rtol: float, label: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    assert a.is_null().equals(b.is_null()), f"{label}: nulls differ"
    kind = a.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        assert pc.list_value_length(a).equals(pc.list_value_length(b)), f"{label}: list lengths differ"
        _assert_arrays_close(a.flatten(), b.flatten(), rtol, label)
    elif pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            _assert_arrays_close(a.field(i), b.field(i), rtol, f"{label}.{kind.field(i).name}")
    elif pa.types.is_floating(kind):
        x, y = (np.asarray(v.to_numpy(zero_copy_only=False), np.float64) for v in (a, b))
        finite = np.isfinite(y)
        scale = float(np.abs(y[finite]).max()) if finite.any() else 0.0
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=label)
    else:
        assert a.equals(b), f"{label}: values differ"


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over rows of |a - b|_inf / |b|_inf."""
    a, b = a.reshape(-1, a.shape[-1]).double(), b.reshape(-1, b.shape[-1]).double()
    return float(((a - b).abs().amax(-1) / b.abs().amax(-1).clamp_min(1e-30)).max())


D_SAE = 128


def random_sae(hook, d_in=64, arch="standard", seed=0, **cfg):
    """An SAE with random weights whose biases leave a minority of latents on."""
    g = torch.Generator().manual_seed(seed)
    weights = {"W_enc": torch.randn(d_in, D_SAE, generator=g) * 0.1,
               "b_enc": torch.randn(D_SAE, generator=g) * 0.1 - 0.2,
               "W_dec": torch.randn(D_SAE, d_in, generator=g) * 0.1,
               "b_dec": torch.randn(d_in, generator=g) * 0.1,
               "threshold": torch.rand(D_SAE, generator=g) * 0.3}
    config = SAEConfig(d_in=d_in, d_sae=D_SAE, architecture=arch, hook_name=hook,
                       k=16 if arch == "topk" else None, **{"prepend_bos": False, **cfg})
    return SAE(config, weights)


def save_sae_lens_folder(sae: SAE, path) -> str:
    """Save a standard actlab SAE through SAELens's own code (a folder that
    `load_sae` and `sae_lens.SAE.load_from_disk` both read); returns the path."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    cfg = sae.cfg
    lens = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(
        d_in=cfg.d_in, d_sae=cfg.d_sae, apply_b_dec_to_input=cfg.apply_b_dec_to_input,
        metadata=SAEMetadata(hook_name=cfg.hook_name, model_name=cfg.model_name, prepend_bos=cfg.prepend_bos,
                             neuronpedia_id=cfg.neuronpedia_id)))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(lens, name).copy_(getattr(sae, name))
    lens.save_model(path)
    return str(path)


def dies_on_the_second_call(real):
    """`real`, raising KeyboardInterrupt on its second call: a run killed
    after its first shard."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    return wrapped


class Recorder:
    """A Progress (actlab.engine.Progress) that keeps what a run reports."""

    def __init__(self):
        self.started, self.texts, self.shards = None, 0, 0

    def start(self, total, shards):
        self.started = (total, shards)

    def advance(self, n_texts, n_tokens):
        self.texts += n_texts

    def shard_done(self):
        self.shards += 1


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["actlab", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def chromium_driver():
    """Debian's chromium and chromium-driver through Selenium, with no network."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not (browser and driver_path):
        if os.environ.get("ACTLAB_SKIP_BROWSER") == "1":
            pytest.skip("ACTLAB_SKIP_BROWSER=1")
        pytest.fail("headless Chromium is needed: apt-get install chromium chromium-driver (make test does this)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture(scope="session")
def s3_bucket():
    """An S3-compatible server on 127.0.0.1 (moto) with one bucket: s3://actlab-test.
    Its endpoint and dummy credentials are in the environment, where pyarrow
    (and processes started later, Ray's workers included) find them."""
    server_module = pytest.importorskip("moto.server")
    import logging

    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="actlab-test")
    yield "s3://actlab-test"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def transformers_serve(model: str, log):
    """`transformers serve` (transformers' own OpenAI-compatible server, the
    test extra transformers[serving]) on 127.0.0.1 serving `model` (a folder):
    yields (base URL, model name) once it answers."""
    import socket
    import subprocess
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "transformers"), "serve", model, "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu"]
    with open(log, "wb") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                      "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            if server.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"transformers serve did not answer in 120 s: {log.read_text()[-2000:]}")
        yield url, model
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory):
    """`transformers serve` serving the default model: (base URL, model name)."""
    yield from transformers_serve(str(default_model_dir()), tmp_path_factory.mktemp("serve") / "serve.log")


@pytest.fixture(scope="session")
def tiny_openai_server(tmp_path_factory, tiny_model_dir):
    """`transformers serve` serving the tiny Llama (random weights, the default
    model's tokenizer): for tests of the server path, not of what is said."""
    yield from transformers_serve(str(tiny_model_dir), tmp_path_factory.mktemp("serve-tiny") / "serve.log")


class DigitSplitting:
    """An OpenAI-compatible /chat/completions handler whose tokenizer writes
    numbers digit by digit (SmolLM2, Llama-2, Gemma, Qwen): every reply is
    "85", tokens "8", "5" (with logprobs: the first token's top logprobs put
    0.6 on "8" and 0.4 on "7", the second token's 0.7 on "5" and 0.3 on "0");
    a reply of more than REPLY_TOKENS tokens (an explainer's) reads
    "Explanation: numbers". `asked` counts the requests."""

    asked = 0

    @classmethod
    def handler(cls):
        from http.server import BaseHTTPRequestHandler

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                import json
                import math

                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                cls.asked += 1
                text = "85" if body["max_tokens"] <= 4 else "Explanation: numbers"
                reply = {"choices": [{"message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": 20, "completion_tokens": 2}}
                if body.get("logprobs"):
                    top = [[("8", 0.6), ("7", 0.4)], [("5", 0.7), ("0", 0.3)]]
                    reply["choices"][0]["logprobs"] = {"content": [
                        {"token": token, "logprob": math.log(dict(options)[token]),
                         "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in options]}
                        for token, options in zip("85", top)]}
                payload = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


@pytest.fixture
def digit_server():
    """A scripted OpenAI-compatible server on 127.0.0.1 that splits numbers into digits (DigitSplitting): its URL."""
    import threading
    from http.server import ThreadingHTTPServer

    DigitSplitting.asked = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), DigitSplitting.handler())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
