"""Judges score a text 0-100, or give None with the reason. None is never a
negative: an unscored answer is dropped, with its reason recorded. Trait
runs judge answers with them (actlab.traits), latents runs score
explanations with them (actlab.latents.explain).

    logprob_score   persona-vectors' rule over the probabilities of the numbers
                    0..100: sum p(n) n / sum p(n), None when their mass is below
                    0.25 (one token's top logprobs give them only where every
                    number is one token: .openai refuses a server where not)
    KeywordJudge    keyword occurrences (or the fraction of words in a list)   .rules
    RegexJudge      regex matches                                              .rules
    LocalJudge      a local Hugging Face model with the logprob rule over      .local
                    whole numbers
    OpenAIJudge     an OpenAI-compatible /chat/completions endpoint (top       .openai
                    logprobs of a tokenizer whose numbers are single tokens,
                    or the reply's number where a server gives none),
                    bounded concurrency, timeouts, retries with backoff

Judge kinds are a registry (`register_judge_kind`): a trait file's or the
CLI's `kind` names one, and each judge module registers its own. The model
kinds (local, openai) also register an explainer of the same name
(actlab.judges.explainers): free text from the same model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

from ..default_model import DEFAULT_MODEL
from ..errors import ActlabError
from ..registry import Registry
from ..runs.fingerprint import step_fingerprint

NOT_FINGERPRINTED = {"fingerprint": False}  # a judge field's metadata: how it asks, not what (a key, a timeout)
MIN_NUMBER_MASS = 0.25
JUDGE_FINGERPRINT_VERSION = 2


@dataclass(frozen=True)
class JudgeKind:
    name: str
    factory: Callable[..., "Judge"]  # the judge class: factory(**settings)
    model_judge: bool = False  # takes the trait's eval_prompt as its first argument


JUDGE_KINDS: Registry[JudgeKind] = Registry("judge kind", order=lambda name, kind: (kind.model_judge, name))
# rule judges, then model judges, each alphabetical


def register_judge_kind(kind: JudgeKind) -> JudgeKind:
    return JUDGE_KINDS.register(kind.name, kind)


@dataclass
class Judgement:
    score: float | None
    reason: str = "ok"
    failed: bool = False  # the judge could not be asked (connection, server error, a reply of no known shape):
    # nothing was judged, so a resumable caller asks again rather than keeping it
    prompt_tokens: int = 0  # what asking cost, where the judge counts it
    completion_tokens: int = 0


class Judge(Protocol):
    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgement]:
        """Scores for (question, answer) pairs, in order."""


def logprob_score(top_logprobs: Mapping[str, float], min_mass: float = MIN_NUMBER_MASS) -> Judgement:
    weighted = mass = 0.0
    for token, logprob in top_logprobs.items():
        text = token.strip()
        if text.isdigit() and int(text) <= 100 and (text == "0" or not text.startswith("0")):
            p = math.exp(logprob)
            weighted += p * int(text)
            mass += p
    if mass < min_mass:
        return Judgement(None, f"probability on numbers 0-100 is {mass:.2f} < {min_mass}")
    return Judgement(weighted / mass)


def unscored_if_empty(answer: str) -> Judgement | None:
    return Judgement(None, "empty answer") if not answer.strip() else None


def check_eval_prompt(eval_prompt: str) -> None:
    for slot in ("{question}", "{answer}"):
        if slot not in eval_prompt:
            raise ActlabError(f"the judge's eval_prompt lacks {slot}")


def fill_prompt(eval_prompt: str, question: str, answer: str) -> str:
    """The judge prompt for one answer (plain replacement: other braces in the
    prompt, JSON examples say, stay as they are)."""
    return eval_prompt.replace("{question}", question).replace("{answer}", answer)


def make_judge(spec: Mapping, eval_prompt: str | None = None) -> Judge:
    """A judge from a trait's `judge` block or the CLI: {kind: one of
    JUDGE_KINDS, ...}; model judges take the trait's eval_prompt unless the
    block gives one."""
    spec = dict(spec)
    name = spec.pop("kind", None)
    kind = JUDGE_KINDS.pick(name, param="judge")
    try:
        if not kind.model_judge:
            return kind.factory(**spec)
        prompt = spec.pop("eval_prompt", eval_prompt)
        if not prompt:
            raise ActlabError(f"a {name} judge needs the trait's eval_prompt", param="eval_prompt")
        return kind.factory(prompt, **spec)
    except TypeError as exc:
        raise ActlabError(f"judge '{name}': {exc}", param="judge") from None


OPENAI_URL = "https://api.openai.com/v1"


def asked_model(kind: str, model: str | None = None, base_url: str = OPENAI_URL, loaded=None,
                   flag: str = "judge_model") -> dict:
    """The model a model kind asks: for local, `model` (default: the default
    model), or the `loaded` Model when it has that name, rather than loading
    it again; for a server kind, `model` at `base_url` (`flag`: the option
    that names the model, for the error when it is missing)."""
    if kind == "local":
        name = model or DEFAULT_MODEL
        return {"model": loaded if loaded is not None and loaded.name == name else name}
    if not model:
        raise ActlabError(f"--{flag.split('_')[0]} {kind} needs --{flag.replace('_', '-')}", param=flag)
    return {"model": model, "base_url": base_url}



def describe_judge(judge: Judge) -> str:
    """What scored a run, for its records (never a key or a secret)."""
    describe = getattr(judge, "describe", None)
    return describe() if describe else type(judge).__name__


def judge_fingerprint(judge: Judge) -> str | None:
    """A short id of a judge's settings, to reuse its saved judgements: its
    kind and dataclass fields (never those marked NOT_FINGERPRINTED: the API
    key, a server's timeout; a loaded model by its name and weights hash).
    None for a judge that is no dataclass: not reused."""
    if not dataclasses.is_dataclass(judge):
        return None

    def plain(value):
        if hasattr(value, "weight_hash"):
            return {"model": value.name, "weights_sha256": value.weight_hash}
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

    settings = [f for f in dataclasses.fields(judge)
                if f.metadata.get("fingerprint", True) and not f.name.startswith("_")]
    args = {f.name: plain(getattr(judge, f.name)) for f in settings}
    defaults = {f.name: plain(f.default) for f in settings if f.default is not dataclasses.MISSING}
    version = getattr(judge, "FINGERPRINT_VERSION", JUDGE_FINGERPRINT_VERSION)  # a kind's own, when its rule changed
    return step_fingerprint(None, type(judge).__name__, version, args, defaults)
