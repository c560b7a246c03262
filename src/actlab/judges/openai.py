"""An OpenAI-compatible HTTP server (OpenAI, vLLM, llama.cpp, `transformers
serve`, ...) as judge and as explainer: /chat/completions with bounded
concurrency, timeouts and retries with backoff; the key from
OPENAI_API_KEY unless given.

The judge scores by persona-vectors' logprob rule on one completion token's
top-20 logprobs, or, for a server that gives no logprobs (`transformers
serve` ignores the field), by the first whole number 0..100 in a short
reply's text (`logprobs=False`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

from ..errors import ActlabError
from .base import (
    JUDGE_KINDS,
    MIN_NUMBER_MASS,
    NOT_FINGERPRINTED,
    OPENAI_URL,
    JudgeKind,
    Judgement,
    check_eval_prompt,
    fill_prompt,
    logprob_score,
    register_judge_kind,
    unscored_if_empty,
)
from .explainers import ExplainerKind, Reply, register_explainer_kind

T = TypeVar("T")
TEXT_RULE_TOKENS = 4  # reply tokens a judge without logprobs reads its number from
_NUMBER = re.compile(r"(?<![\d.])(100|[1-9]?\d)(?!\d|\.\d)")


class Unreachable(Exception):
    """The server could not be asked: connection, timeout or 429 / 5xx after every retry, or a 4xx."""


@dataclass(kw_only=True)
class OpenAIServer:
    """Where and how patiently to ask (how patiently is never in a judge's
    fingerprint: saved judgements stay valid whatever the timeout)."""

    base_url: str = OPENAI_URL
    api_key: str | None = field(default=None, metadata=NOT_FINGERPRINTED)
    concurrency: int = field(default=8, metadata=NOT_FINGERPRINTED)  # requests in flight
    timeout: float = field(default=30.0, metadata=NOT_FINGERPRINTED)  # seconds to wait for one reply
    retries: int = field(default=3, metadata=NOT_FINGERPRINTED)
    backoff: float = field(default=1.0, metadata=NOT_FINGERPRINTED)  # seconds before the first retry, then doubled

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ActlabError(f"server base_url '{self.base_url}' must start with http:// or https://")
        if self.concurrency < 1 or self.timeout <= 0 or self.retries < 0:
            raise ActlabError("server concurrency >= 1, timeout > 0 and retries >= 0, please")
        self.api_key = self.api_key or os.environ.get("OPENAI_API_KEY")

    def _map(self, ask: Callable[[T], object], items: Sequence[T]) -> list:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(ask, items))

    def _post(self, body: dict) -> dict:
        """The server's JSON reply to one chat completion request."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data, last = json.dumps(body).encode(), "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", data, headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    payload = reply.read()
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code == 429 or exc.code >= 500:
                    continue
                raise Unreachable(f"{last} from {self.base_url} (not retried)") from None
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = f"timeout or connection error ({getattr(exc, 'reason', exc)})"
                continue
            try:
                return json.loads(payload)
            except ValueError:
                raise Unreachable(f"malformed reply from {self.base_url}: not JSON ({payload[:60]!r})") from None
        raise Unreachable(f"{last} after {self.retries + 1} attempt(s)")


def _usage(reply: dict) -> tuple[int, int]:
    usage = reply.get("usage") if isinstance(reply, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _message_text(reply: dict) -> str:
    """choices[0].message.content, or KeyError / IndexError / TypeError."""
    text = reply["choices"][0]["message"]["content"]
    if not isinstance(text, str):
        raise TypeError("content is not text")
    return text


@dataclass
class OpenAIJudge(OpenAIServer):
    """Scores (question, answer) pairs with `eval_prompt` as the user turn."""

    eval_prompt: str
    model: str
    logprobs: bool = True  # the logprob rule; False: the number in the reply's text
    min_mass: float = MIN_NUMBER_MASS  # the logprob rule's least probability on numbers 0..100

    def __post_init__(self):
        check_eval_prompt(self.eval_prompt)
        super().__post_init__()

    def describe(self) -> str:
        rule = "logprob rule" if self.logprobs else "the number in its reply"
        return f"openai: {self.model} at {self.base_url} ({rule})"

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgement]:
        return self._map(lambda item: self._one(*item), items)

    def _one(self, question: str, answer: str) -> Judgement:
        empty = unscored_if_empty(answer)
        if empty:
            return empty
        message = {"role": "user", "content": fill_prompt(self.eval_prompt, question, answer)}
        body = {"model": self.model, "temperature": 0, "messages": [message]}
        body |= {"max_tokens": 1, "logprobs": True, "top_logprobs": 20} if self.logprobs else \
            {"max_tokens": TEXT_RULE_TOKENS}
        try:
            reply = self._post(body)
        except Unreachable as exc:
            return Judgement(None, str(exc), failed=True)
        judgement = self._logprob_rule(reply) if self.logprobs else self._text_rule(reply)
        judgement.prompt_tokens, judgement.completion_tokens = _usage(reply)
        return judgement

    def _logprob_rule(self, reply: dict) -> Judgement:
        try:
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return logprob_score({entry["token"]: float(entry["logprob"]) for entry in top}, self.min_mass)
        except (ValueError, KeyError, IndexError, TypeError):
            return Judgement(None, "malformed reply: no choices[0].logprobs.content[0].top_logprobs (a server "
                                   "without logprobs, such as transformers serve, needs --no-judge-logprobs)",
                             failed=True)

    @staticmethod
    def _text_rule(reply: dict) -> Judgement:
        try:
            text = _message_text(reply)
        except (KeyError, IndexError, TypeError):
            return Judgement(None, "malformed reply: no choices[0].message.content", failed=True)
        number = _NUMBER.search(text)
        return Judgement(float(number.group(1))) if number else Judgement(None, f"no number 0-100 in {text!r}")


@dataclass
class OpenAIExplainer(OpenAIServer):
    """Free-text replies (temperature 0) to user turns."""

    model: str
    max_tokens: int = 200

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ActlabError(f"explainer max_tokens must be at least 1, not {self.max_tokens}")
        super().__post_init__()

    def describe(self) -> str:
        return f"openai: {self.model} at {self.base_url}"

    def ask(self, prompts: Sequence[str]) -> list[Reply]:
        return self._map(self._one, prompts)

    def _one(self, prompt: str) -> Reply:
        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": prompt}]}
        try:
            reply = self._post(body)
            text = _message_text(reply)
        except Unreachable as exc:
            return Reply(None, str(exc), failed=True)
        except (KeyError, IndexError, TypeError):
            return Reply(None, f"malformed reply from {self.base_url}: no choices[0].message.content", failed=True)
        return Reply(text, "ok", *_usage(reply))


def server_options(kind: str, flag: str, **given) -> dict:
    """The settings among `given` (logprobs, timeout, concurrency: a judge
    or explainer option's values) that differ from a server's defaults, for
    a judge of `kind`; an error naming the option (--FLAG-timeout, ...) when
    a value is out of range or `kind` asks no server."""
    defaults = {f.name: f.default for f in dataclasses.fields(OpenAIJudge)}
    chosen = {name: value for name, value in given.items() if value != defaults[name]}
    takes = {f.name for f in dataclasses.fields(JUDGE_KINDS[kind].factory)} \
        if dataclasses.is_dataclass(JUDGE_KINDS[kind].factory) else set()
    for name, value in chosen.items():
        option = f"--no-{flag}-logprobs" if name == "logprobs" else f"--{flag}-{name}"
        if name not in takes:
            raise ActlabError(f"{option} is for --{flag} openai, not --{flag} {kind}", param=f"{flag}_{name}")
        if name == "timeout" and not value > 0 or name == "concurrency" and value < 1:
            least = "more than 0 seconds" if name == "timeout" else "at least 1"
            raise ActlabError(f"{option} must be {least}, not {value}", param=f"{flag}_{name}")
    return chosen


register_judge_kind(JudgeKind("openai", OpenAIJudge, model_judge=True))
register_explainer_kind(ExplainerKind("openai", OpenAIExplainer))
