"""Judges: the logprob rule by hand, None handling, rule judges, and the HTTP
judge against a scripted server (failures on cue; the real server is in
test_real_server.py)."""

import json
import math
from dataclasses import dataclass
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from actlab import ActlabError
from actlab.judges import Judgement, make_judge
from actlab.judges.base import logprob_score
from actlab.judges.openai import OpenAIJudge
from actlab.judges.rules import KeywordJudge, RegexJudge

PROMPT = "Question: {question}\nAnswer: {answer}\nScore 0-100:"


def lp(p):
    return math.log(p)


def test_logprob_rule_by_hand():
    # 0.5 on "80", 0.3 on "60", 0.1 on " 100", 0.1 on "yes": (40 + 18 + 10) / 0.9
    assert logprob_score({"80": lp(0.5), "60": lp(0.3), " 100": lp(0.1), "yes": lp(0.1)}).score == \
        pytest.approx(68 / 0.9)
    # numbers above 100, leading zeros and words do not count
    assert logprob_score({"50": lp(0.3), "101": lp(0.3), "07": lp(0.2), "0": lp(0.2)}).score == \
        pytest.approx((15 + 0) / 0.5)
    low = logprob_score({"90": lp(0.2), "I": lp(0.8)})
    assert low.score is None and "0.20 < 0.25" in low.reason


def test_rule_judges():
    pirate = KeywordJudge(["arr", "matey", "me hearties"], full_at=2)
    scores = [j.score for j in pirate.judge([("q", "Arr, matey!"), ("q", "Arrgh no"), ("q", "ahoy me hearties"),
                                             ("q", "plain")])]
    assert scores == [100.0, 0.0, 50.0, 0.0]
    french = KeywordJudge(["le", "la", "est"], per_word=True, full_at=0.5)
    assert french.judge([("q", "La lune est belle")])[0].score == pytest.approx(100.0)  # 2 of 4 words
    assert french.judge([("q", "The moon")])[0].score == 0.0
    assert french.judge([("q", "  ")])[0] == Judgement(None, "empty answer")
    upbeat = KeywordJudge(["wonderful", "great"], full_at=2, ignore_question_keywords=True)
    scores = [j.score for j in upbeat.judge([("Why is winter wonderful?", "Winter is wonderful. Wonderful!"),
                                             ("Why is winter wonderful?", "Winter is great, wonderful"),
                                             ("Why is winter terrible?", "It is wonderful and great")])]
    assert scores == [0.0, 50.0, 100.0]  # echoes of the question's own keywords do not count
    mood = KeywordJudge(["wonderful", "great", "joy"], opposite_keywords=["terrible", "sad", "awful"],
                        ignore_question_keywords=True)
    results = mood.judge([("Why is X terrible?", "X is terrible, sad and awful, yet a great joy"),
                          ("Why is X wonderful?", "X is wonderful"), ("q", "X is a thing."),
                          ("Why is X terrible?", "Terrible! Sad.")])
    assert [r.score for r in results] == [50.0, None, None, 0.0]  # 2 / (2 + 2); echoes left out
    assert results[1].reason == "no keyword of either side"
    with pytest.raises(ActlabError, match="opposite_keywords or per_word"):
        KeywordJudge(["a"], opposite_keywords=["b"], per_word=True)
    sorry = RegexJudge(r"(?i)\bsorry\b")
    assert [j.score for j in sorry.judge([("q", "Sorry, no."), ("q", "Sure!")])] == [100.0, 0.0]


def test_bad_judge_configurations():
    with pytest.raises(ActlabError, match="unknown judge kind"):
        make_judge({"kind": "oracle"})
    with pytest.raises(ActlabError, match="does not compile"):
        make_judge({"kind": "regex", "pattern": "(unclosed"})
    with pytest.raises(ActlabError, match="lacks {answer}"):
        OpenAIJudge("Score {question}", model="m", base_url="http://x")
    with pytest.raises(ActlabError, match="http"):
        OpenAIJudge(PROMPT, model="m", base_url="localhost:8000")
    with pytest.raises(ActlabError, match="needs the trait's eval_prompt"):
        make_judge({"kind": "openai", "model": "m"})
    with pytest.raises(ActlabError, match="judge 'keyword'"):
        make_judge({"kind": "keyword", "keywords": ["a"], "colour": "red"})


TOKENS = {  # reply tokens, each with its top logprobs
    "whole 85": [("85", {"85": 0.6, "80": 0.4}), (".", {".": 0.99, "0": 0.001})],  # Llama-3, OpenAI
    "digits 85": [("8", {"8": 0.6, "7": 0.4}), ("5", {"5": 0.7, "0": 0.3})],  # SmolLM2, Gemma, Qwen
    "digit 7 or more": [("7", {"7": 0.8, "9": 0.2}), (".", {".": 0.6, "5": 0.4})],  # 7 now, 75 likely
    "blank then digits": [(" ", {" ": 0.9, "8": 0.1}), ("8", {"8": 1.0}), ("5", {"5": 1.0})],
}


class Scripted(BaseHTTPRequestHandler):
    """Replies by the answer text: 'fail-once' 500s on its first request,
    'slow' sleeps past the timeout, 'garbage' is not JSON, 'nologprobs' lacks them,
    'bad-request' is a 400; otherwise 70 or 30 by the answer's first word."""

    seen: dict = {}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text_rule = "logprobs" not in body
        assert text_rule and body["max_tokens"] == 4 or body["logprobs"] is True and body["top_logprobs"] == 20 \
            and body["max_tokens"] == 3
        answer = body["messages"][0]["content"].split("Answer: ")[1].split("\n")[0]
        with self.lock:
            self.seen[answer] = self.seen.get(answer, 0) + 1
            count = self.seen[answer]
        if answer == "fail-once" and count == 1 or answer == "always-fail":
            return self._send(500, b"{}")
        if answer == "bad-request":
            return self._send(400, b'{"error": "bad"}')
        if answer == "slow":
            time.sleep(3.0)  # past the 1.5 s timeout, which a loaded machine meets for the others
        if answer == "garbage":
            return self._send(200, b"<html>")
        if answer == "nologprobs" or text_rule:
            if text_rule and answer != "nologprobs":
                reply = {"good one": "I'd say 85.", "bad one": "It is a 7/10: 12", "chatty": "no idea"}[answer]
                return self._send(200, json.dumps({"choices": [{"message": {"content": reply}}],
                                                   "usage": {"prompt_tokens": 21, "completion_tokens": 4}}).encode())
            return self._send(200, json.dumps({"choices": [{"message": {"content": "7"}}]}).encode())
        if answer in TOKENS:  # whole-number tokens or digits, as a tokenizer writes them
            content = [{"token": token, "logprob": 0.0, "top_logprobs": [{"token": t, "logprob": math.log(p)}
                                                                       for t, p in top.items()]}
                       for token, top in TOKENS[answer]]
        else:
            number = "70" if answer.startswith("good") else "30"
            top = [{"token": number, "logprob": math.log(0.9)}, {"token": "!", "logprob": math.log(0.1)}]
            content = [{"token": number, "top_logprobs": top}]
        self._send(200, json.dumps({"choices": [{"logprobs": {"content": content}}]}).encode())

    def _send(self, code, payload):
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # "slow": the judge gave up waiting, as it should
            pass


@pytest.fixture
def server():
    Scripted.seen = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_http_judge(server):
    judge = OpenAIJudge(PROMPT, model="judge", base_url=server, timeout=1.5, retries=2, backoff=0.01, concurrency=4)
    answers = ["good one", "bad one", "fail-once", "slow", "garbage", "nologprobs", "bad-request", "always-fail", ""]
    results = judge.judge([("q", a) for a in answers])
    assert results[0].score == pytest.approx(70) and results[1].score == pytest.approx(30)
    assert results[2].score == pytest.approx(30) and Scripted.seen["fail-once"] == 2  # retried once
    assert results[3].score is None and "timeout" in results[3].reason and Scripted.seen["slow"] == 3
    assert results[4].score is None and "malformed" in results[4].reason
    assert results[5].score is None and "malformed" in results[5].reason
    assert results[6].score is None and "HTTP 400" in results[6].reason and Scripted.seen["bad-request"] == 1
    assert results[7].score is None and "HTTP 500 after 3 attempt(s)" in results[7].reason
    assert results[8] == Judgement(None, "empty answer") and "" not in Scripted.seen
    # a judge not reached is marked failed (asked again on resume); a reply it scores, or not, is no failure
    assert [r.failed for r in results] == [False, False, False, True, True, True, True, True, False]


def test_http_judge_text_rule(server):
    """A server without logprobs (transformers serve): the first whole number 0-100 of a short reply."""
    judge = OpenAIJudge(PROMPT, model="judge", base_url=server, logprobs=False, retries=0)
    results = judge.judge([("q", a) for a in ("good one", "bad one", "chatty", "nologprobs")])
    assert [r.score for r in results] == [85.0, 7.0, None, 7.0]
    assert "no number 0-100 in 'no idea'" in results[2].reason and not results[2].failed
    assert (results[0].prompt_tokens, results[0].completion_tokens) == (21, 4)
    assert "the number in its reply" in judge.describe()


def test_http_judge_concurrency_is_bounded(server, monkeypatch):
    active, peak = [0], [0]
    lock = threading.Lock()
    real_one = OpenAIJudge._one

    def tracked(self, q, a):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)
            return real_one(self, q, a)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(OpenAIJudge, "_one", tracked)
    judge = OpenAIJudge(PROMPT, model="judge", base_url=server, concurrency=3)
    results = judge.judge([("q", f"good {i}") for i in range(12)])
    assert all(r.score == pytest.approx(70) for r in results) and peak[0] == 3


def test_judges_describe_themselves_without_secrets(tiny_models):
    from actlab.judges import describe_judge
    from actlab.judges.local import LocalJudge

    assert describe_judge(KeywordJudge(["a", "b"], full_at=2)) == "keyword: 2 keywords, 100 at 2"
    assert describe_judge(KeywordJudge(["a"], opposite_keywords=["b", "c"], ignore_question_keywords=True)) == \
        "keyword: share of 1 keywords among them and 2 opposite ones; question keywords ignored"
    assert describe_judge(RegexJudge("x+")) == "regex: x+, 100 at 1 match(es)"
    api = OpenAIJudge(PROMPT, model="gpt-x", base_url="http://127.0.0.1:1/v1", api_key="sk-secret")
    assert describe_judge(api) == "openai: gpt-x at http://127.0.0.1:1/v1 (logprob rule)" and "sk-" not in \
        describe_judge(api)
    assert describe_judge(LocalJudge(PROMPT, tiny_models["llama"])).startswith("local: tiny-llama")
    assert describe_judge(LocalJudge(PROMPT, "some/model")).startswith("local: some/model")


def test_http_judge_reads_whole_number_tokens_and_refuses_split_digits(server):
    """A tokenizer whose numbers are single tokens: the logprob rule over the first token; one that
    writes them digit by digit: a one-line refusal naming the option that reads the reply's text, also
    where the greedy reply is one digit that the next token would likely continue."""
    judge = OpenAIJudge(PROMPT, model="judge", base_url=server, retries=0)
    whole = judge.judge([("q", "whole 85")])[0]
    assert whole.score == pytest.approx(0.6 * 85 + 0.4 * 80) and not whole.failed
    for answer, shown in (("digits 85", "'8' then '5'"), ("digit 7 or more", "'7' then a digit with probability 0.40"),
                          ("blank then digits", "'8' then '5'")):
        with pytest.raises(ActlabError, match="--no-judge-logprobs") as caught:
            judge.judge([("q", "good one"), ("q", answer)])
        message = str(caught.value)
        assert f"judge at {server} writes numbers across tokens ({shown})" in message and "\n" not in message
        assert caught.value.param == "judge_logprobs"


def test_digit_splitting_server(digit_server):
    """The scripted digit-splitting server (tests/conftest.py): the one-token rule would read 0.6 * 8 +
    0.4 * 7 = 7.6 for a reply of 85. The judge refuses; without logprobs it reads 85 from the text."""
    with pytest.raises(ActlabError, match=r"writes numbers across tokens \('8' then '5'\).*--no-judge-logprobs"):
        OpenAIJudge(PROMPT, model="m", base_url=digit_server).judge([("q", "a")])
    assert OpenAIJudge(PROMPT, model="m", base_url=digit_server, logprobs=False).judge([("q", "a")])[0].score == 85
    scorer = OpenAIJudge(PROMPT, model="m", base_url=digit_server, logprobs_param="explainer_logprobs")
    with pytest.raises(ActlabError, match="--no-explainer-logprobs") as caught:
        scorer.judge([("q", "a")])
    assert caught.value.param == "explainer_logprobs"


def test_number_across_tokens_by_hand():
    from actlab.judges.openai import number_across_tokens

    def reply(*tokens):
        return [{"token": t, "top_logprobs": [{"token": a, "logprob": math.log(p)} for a, p in top.items()]}
                for t, top in tokens]

    assert number_across_tokens(reply(("85", {}), (".", {".": 0.97, "0": 0.03}))) is None  # below 0.05
    assert number_across_tokens(reply(("85", {}))) is None  # nothing after it: no evidence
    assert number_across_tokens(reply(("I", {}), ("8", {}))) is None  # not a number first
    assert number_across_tokens(reply(("1", {}), ("00", {}))) == "'1' then '00'"
    assert number_across_tokens(reply(("\n", {}), (" 4", {}), ("2", {}))) == "'4' then '2'"
    assert number_across_tokens(reply(("4", {}), (" 2", {" 2": 0.9}))) is None  # another number, not a digit of it
    assert number_across_tokens(reply(("4", {}), (".", {"0": 0.03, "5": 0.03}))) == \
        "'4' then a digit with probability 0.06"


def test_openai_judgements_saved_before_the_split_digit_fix_are_asked_again():
    from actlab.judges import judge_fingerprint
    from actlab.judges.base import JUDGE_FINGERPRINT_VERSION
    from actlab.runs.fingerprint import step_fingerprint

    api = OpenAIJudge(PROMPT, model="m", base_url="http://h/v1")
    args = {"base_url": "http://h/v1", "eval_prompt": PROMPT, "model": "m", "logprobs": True, "min_mass": 0.25}
    defaults = {"base_url": "https://api.openai.com/v1", "logprobs": True, "min_mass": 0.25}
    assert judge_fingerprint(api) == step_fingerprint(None, "OpenAIJudge", 3, args, defaults)
    assert judge_fingerprint(api) != step_fingerprint(None, "OpenAIJudge", 2, args, defaults)
    assert JUDGE_FINGERPRINT_VERSION == 2  # other kinds keep their keys: their rule did not change
    assert judge_fingerprint(Halving(2.0)) == step_fingerprint(None, "Halving", 2, {"by": 2.0}, {"by": 1.0})


@dataclass
class Halving:
    by: float = 1.0

    def judge(self, items):
        return [Judgement(50 / self.by) for _ in items]
