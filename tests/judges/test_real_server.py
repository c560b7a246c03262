"""The API judge and the API explainer against a real OpenAI-compatible
server: `transformers serve` on 127.0.0.1 serving the default model for the
judge (its numbers are read) and the tiny model for the explainer (the
openai_server and tiny_openai_server fixtures), reached through a forwarding proxy that counts the
requests and, on cue, drops connections or answers junk. A trait run's
answers judged and resumed; `actlab latents explain --explainer openai` end
to end, a server that goes away mid-run losing nothing."""

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

import actlab
from actlab.judges.openai import OpenAIJudge
from actlab.traits import GenerationConfig, TraitRun, generate_trait_run, judge_run
from actlab.traits.definitions import parse_trait
from conftest import TEXTS, random_sae, run_cli, save_sae_lens_folder
from actlab.runs import RunControl

PROMPT = ("Rate from 0 to 100 how happy this answer is.\nQuestion: {question}\nAnswer: {answer}\n"
          "Reply with a number only.")


class Proxy:
    """Forwards POSTs to the server. mode "forward": at most `budget` requests and until the
    `last_explainer`-th explainer request, then it drops connections unanswered; mode "junk": a 200 that
    is no JSON."""

    def __init__(self, target: str):
        self.mode, self.budget, self.last_explainer = "forward", None, None
        self.requests = self.forwarded = self.explainer_requests = 0
        self.bodies: set[bytes] = set()  # distinct requests: a retry after a timeout sends the same body again
        lock, proxy = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    proxy.requests += 1
                    proxy.bodies.add(body)
                    proxy.explainer_requests += b"We study one latent" in body
                    forward = proxy.mode == "forward" and (proxy.budget is None or proxy.forwarded < proxy.budget) \
                        and (proxy.last_explainer is None or proxy.explainer_requests < proxy.last_explainer)
                    proxy.forwarded += forward
                if proxy.mode == "junk":
                    return self._send(200, b"<html>busy</html>")
                if not forward:
                    return  # the connection closes unanswered
                request = urllib.request.Request(target + self.path, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=600) as reply:  # the client gives up first
                    self._send(reply.status, reply.read())

            def _send(self, code, payload):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def proxied(server):
    proxy = Proxy(server[0].removesuffix("/v1"))
    yield proxy
    proxy.httpd.shutdown()


@pytest.fixture
def proxy(openai_server):
    yield from proxied(openai_server)


@pytest.fixture
def tiny_proxy(tiny_openai_server):
    yield from proxied(tiny_openai_server)


def test_trait_answers_judged_by_the_server(openai_server, proxy, tiny_models, tmp_path):
    _, model = openai_server
    trait = parse_trait({"name": "happy", "instruction": [{"pos": "Be happy.", "neg": "Be sad."}],
                         "questions": [f"How is day {i}?" for i in range(6)]})
    run = generate_trait_run(tiny_models["llama"], trait, tmp_path / "run", layers=[1],
                       cfg=GenerationConfig(max_new_tokens=4), control=RunControl(progress=False))
    answered = (TraitRun.open(run).answers().to_pandas().answer.str.strip() != "").to_numpy()
    judge = OpenAIJudge(PROMPT, model, base_url=proxy.url, logprobs=False, retries=1, backoff=0.05, timeout=300)
    proxy.budget = int(answered[:4].sum())  # the server goes away after the first chunk's answers
    scores = judge_run(run, judge, chunk_size=4).to_pandas()
    assert not scores.reason.iloc[:4].str.contains("connection").any()
    assert scores.reason.iloc[4:][answered[4:]].str.contains("connection error").all()
    proxy.budget = None
    proxy.bodies.clear()  # distinct questions from here: a retry after a timeout under load sends one again
    scores = judge_run(run, judge, chunk_size=4).to_pandas()  # only the unsaved chunks are asked again
    assert len(proxy.bodies) == answered[4:].sum() and not scores.reason.str.contains("connection").any()
    assert (scores.score.notna() | scores.reason.str.startswith(("no number", "empty answer"))).all()
    assert scores.score.dropna().between(0, 100).all()
    again = proxy.requests
    judge_run(run, judge, chunk_size=4)
    assert proxy.requests == again  # all saved: the server is not asked
    # the logprob rule on a server that gives no logprobs: a failure that says what to change
    [judgement] = OpenAIJudge(PROMPT, model, base_url=proxy.url).judge([("How are you?", "Great!")])
    assert judgement.failed and "needs --no-judge-logprobs" in judgement.reason


def test_explain_against_the_server(tiny_openai_server, tiny_proxy, monkeypatch, capsys, tmp_path, tiny_model_dir):
    """The tiny model serves: what is tested is the path (requests, saves, a server that goes away), which
    the default model would only make slower."""
    _, model = tiny_openai_server
    proxy = tiny_proxy
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(TEXTS[i:] + TEXTS[:i])}) + "\n" for i in range(8)))
    sae = save_sae_lens_folder(random_sae("blocks.1.hook_resid_post", seed=2), tmp_path / "sae")
    run = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "latents", "--model", tiny_model_dir, "--device", "cpu",
                           "--input", corpus, "--sae", sae, "--out", run, "--context", "8", "--top", "6")
    assert code == 0, err
    explain = ["latents", "explain", run, "--model", tiny_model_dir, "--device", "cpu", "--explainer", "openai",
               "--explainer-model", model, "--explainer-url", proxy.url, "--no-explainer-logprobs",
               "--max-latents", "3", "--examples", "3", "--test-examples", "2", "--input-price", "1",
               "--output-price", "2", "--explainer-timeout", "300", "--explainer-concurrency", "2"]
    proxy.mode = "junk"
    code, _, err = run_cli(monkeypatch, capsys, *explain)
    assert code == 2 and "malformed reply" in err and "not JSON" in err and "Traceback" not in err
    assert proxy.requests == 3  # three explainer calls, no retry of a reply of no known shape
    proxy.mode, proxy.explainer_requests, proxy.last_explainer = "forward", 0, 2  # one latent, then it goes away
    monkeypatch.setattr("actlab.latents.explain.EXPLAIN_CHUNK", 1)
    code, _, err = run_cli(monkeypatch, capsys, *explain)
    assert code == 2 and "could not be asked" in err and "the 1 latents explained so far are saved" in err, \
        (err, proxy.requests, proxy.forwarded, proxy.explainer_requests)
    assert len(pq.read_table(run / "explanations.parquet")) == 1
    proxy.last_explainer, asked = None, len(proxy.bodies)
    code, out, err = run_cli(monkeypatch, capsys, *explain)
    assert code == 0, err
    assert "explained 2 latents now, 3 of 3 in all" in out and "cost $" in out and "baseline" in out
    table = actlab.open_run(run).latents().to_pandas().dropna(subset=["explanation"])
    assert len(table) == 3 and (table.explanation.str.len() > 0).all()
    settings = json.loads(next((run / "judgements").glob("*/settings.json")).read_text())
    assert settings["explainer"] == f"openai: {model} at {proxy.url}"
    assert "the number in its reply" in settings["detection"]
    # distinct questions for the 2 latents left (a retry, were a reply to take over 300 s, sends one again)
    assert 0 < len(proxy.bodies) - asked <= 2 * (1 + 2 * (2 * 2 + 2))
