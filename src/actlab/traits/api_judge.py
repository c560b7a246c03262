"""An OpenAI-compatible HTTP server as judge (OpenAI, vLLM, llama.cpp, ...),
with persona-vectors' logprob rule on one completion token's top logprobs."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from ..errors import ActlabError
from .judges import (
    OPENAI_URL,
    JudgeKind,
    Judgement,
    check_eval_prompt,
    fill_prompt,
    logprob_score,
    register_judge_kind,
    unscored_if_empty,
)


@dataclass
class OpenAIJudge:
    """One-token completions with top-20 logprobs from an OpenAI-compatible
    server (OpenAI, vLLM, llama.cpp, ...), scored by `logprob_score`."""

    eval_prompt: str
    model: str
    base_url: str = OPENAI_URL
    api_key: str | None = None
    concurrency: int = 8
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0

    def __post_init__(self):
        check_eval_prompt(self.eval_prompt)
        if not self.base_url.startswith(("http://", "https://")):
            raise ActlabError(f"judge base_url '{self.base_url}' must start with http:// or https://")
        if self.concurrency < 1 or self.timeout <= 0 or self.retries < 0:
            raise ActlabError("judge concurrency >= 1, timeout > 0 and retries >= 0, please")
        self.api_key = self.api_key or os.environ.get("OPENAI_API_KEY")

    def describe(self) -> str:
        return f"openai: {self.model} at {self.base_url} (logprob rule)"

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgement]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda item: self._one(*item), items))

    def _one(self, question: str, answer: str) -> Judgement:
        empty = unscored_if_empty(answer)
        if empty:
            return empty
        message = {"role": "user", "content": fill_prompt(self.eval_prompt, question, answer)}
        body = json.dumps({"model": self.model, "max_tokens": 1, "temperature": 0, "logprobs": True,
                           "top_logprobs": 20, "messages": [message]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", body, headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    payload = reply.read()
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code == 429 or exc.code >= 500:
                    continue
                return Judgement(None, f"{last} from the judge (not retried)")
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last = f"timeout or connection error ({getattr(exc, 'reason', exc)})"
                continue
            return self._parse(payload)
        return Judgement(None, f"{last} after {self.retries + 1} attempt(s)")

    @staticmethod
    def _parse(payload: bytes) -> Judgement:
        try:
            top = json.loads(payload)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return logprob_score({entry["token"]: float(entry["logprob"]) for entry in top})
        except (ValueError, KeyError, IndexError, TypeError):
            return Judgement(None, "malformed reply: no choices[0].logprobs.content[0].top_logprobs")



register_judge_kind(JudgeKind("openai", OpenAIJudge, model_judge=True))
