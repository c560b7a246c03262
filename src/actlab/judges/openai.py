"""An OpenAI-compatible HTTP server (OpenAI, vLLM, llama.cpp, `transformers
serve`, ...) as judge and as explainer: /chat/completions with bounded
concurrency, timeouts and retries with backoff; the key from
OPENAI_API_KEY unless given.

The judge scores by persona-vectors' logprob rule on the first reply
token's top-20 logprobs, or, for a server that gives no logprobs
(`transformers serve` ignores the field), by the first whole number 0..100
in a short reply's text (`logprobs=False`).

The logprob rule is right only where every number 0..100 is one token
(OpenAI's and Llama-3's tokenizers). SmolLM2, Llama-2, Gemma and Qwen write
"85" as "8", "5", and one token's logprobs then read 8; the other first
digits' continuations are not in the reply, so no reading of one reply
recovers the number's probability. The judge therefore asks for
REPLY_TOKENS tokens with their logprobs and refuses, in one line naming
`--no-judge-logprobs` (`--no-explainer-logprobs` for a latent scorer),
when the reply shows its number going on in a second token: the next token
is a digit, or has probability SPLIT_NUMBER_MASS or more of being one
(after a whole-number token of a single-token tokenizer it has next to
none). The local judge (actlab.judges.local) reads numbers across tokens
exactly, through its own forward passes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence, TypeVar

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
REPLY_TOKENS = 3  # reply tokens the logprob rule asks for: the number and the token after it (a blank first)
SPLIT_NUMBER_MASS = 0.05  # a digit this likely after the reply's number token: numbers span tokens
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
    logprobs_param: str = field(default="judge_logprobs", metadata=NOT_FINGERPRINTED)  # the config field
    # that turns `logprobs` off, named by the refusal (explainer_logprobs for a latent scorer)
    FINGERPRINT_VERSION: ClassVar[int] = 3  # 3: refuses numbers split across tokens, which 2 read as
    # their first digit, so judgements saved under 2 are asked again

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
        body |= {"max_tokens": REPLY_TOKENS, "logprobs": True, "top_logprobs": 20} if self.logprobs else \
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
            content = reply["choices"][0]["logprobs"]["content"]
            top = {entry["token"]: float(entry["logprob"]) for entry in content[0]["top_logprobs"]}
            split = number_across_tokens(content)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return Judgement(None, "malformed reply: no choices[0].logprobs.content[0].top_logprobs (a server "
                                   f"without logprobs, such as transformers serve, needs {self._text_option()})",
                             failed=True)
        if split:
            raise ActlabError(f"{self.model} at {self.base_url} writes numbers across tokens ({split}), and one "
                              "token's logprobs read only the first digit; pass "
                              f"{self._text_option()} to score by the number in the reply's text",
                              param=self.logprobs_param)
        return logprob_score(top, self.min_mass)

    def _text_option(self) -> str:
        return "--no-" + self.logprobs_param.replace("_", "-")

    @staticmethod
    def _text_rule(reply: dict) -> Judgement:
        try:
            text = _message_text(reply)
        except (KeyError, IndexError, TypeError):
            return Judgement(None, "malformed reply: no choices[0].message.content", failed=True)
        number = _NUMBER.search(text)
        return Judgement(float(number.group(1))) if number else Judgement(None, f"no number 0-100 in {text!r}")


def number_across_tokens(content: Sequence[dict]) -> str | None:
    """What shows, in a reply's per-token logprobs (`choices[0].logprobs.content`),
    that its number goes on past its first token, or None: the first token
    that is not blank is all digits and the next one is a digit too, or has
    probability SPLIT_NUMBER_MASS or more of being one."""
    tokens = [entry["token"] for entry in content]
    first = next((i for i, token in enumerate(tokens) if token.strip()), None)
    if first is None or not tokens[first].strip().isdigit() or first + 1 == len(tokens):
        return None
    number, after = tokens[first].strip(), content[first + 1]
    if after["token"][:1].isdigit():
        return f"{number!r} then {after['token']!r}"
    digit = sum(math.exp(float(entry["logprob"])) for entry in after.get("top_logprobs") or []
                if entry["token"][:1].isdigit())
    return f"{number!r} then a digit with probability {digit:.2f}" if digit >= SPLIT_NUMBER_MASS else None


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
    a value is out of range or `kind` asks no server. Where `given` has
    logprobs and `kind` takes them, the judge learns the option's name for
    its refusal of numbers split across tokens (FLAG_logprobs)."""
    defaults = {f.name: f.default for f in dataclasses.fields(OpenAIJudge)}
    chosen = {name: value for name, value in given.items() if value != defaults[name]}
    takes = {f.name for f in dataclasses.fields(JUDGE_KINDS[kind].factory)} \
        if dataclasses.is_dataclass(JUDGE_KINDS[kind].factory) else set()
    named = {"logprobs_param": f"{flag}_logprobs"} if "logprobs" in given and "logprobs_param" in takes \
        and f"{flag}_logprobs" != defaults["logprobs_param"] else {}
    for name, value in chosen.items():
        option = f"--no-{flag}-logprobs" if name == "logprobs" else f"--{flag}-{name}"
        if name not in takes:
            raise ActlabError(f"{option} is for --{flag} openai, not --{flag} {kind}", param=f"{flag}_{name}")
        if name == "timeout" and not value > 0 or name == "concurrency" and value < 1:
            least = "more than 0 seconds" if name == "timeout" else "at least 1"
            raise ActlabError(f"{option} must be {least}, not {value}", param=f"{flag}_{name}")
    return chosen | named


register_judge_kind(JudgeKind("openai", OpenAIJudge, model_judge=True))
register_explainer_kind(ExplainerKind("openai", OpenAIExplainer))
