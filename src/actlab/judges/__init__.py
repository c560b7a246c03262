"""Judges (a text scored 0-100) and explainers (free text) over rules, a
local model or an OpenAI-compatible server; importing the package registers
every kind. Trait runs judge their answers with them, latents runs explain
and score latents with them."""

from . import local, openai, rules  # noqa: F401  (each registers its kinds)
from .base import (
    JUDGE_KINDS,
    OPENAI_URL,
    Judge,
    JudgeKind,
    Judgement,
    describe_judge,
    judge_fingerprint,
    make_judge,
    register_judge_kind,
)
from .explainers import EXPLAINER_KINDS, Explainer, ExplainerKind, Reply, register_explainer_kind

__all__ = ["EXPLAINER_KINDS", "Explainer", "ExplainerKind", "JUDGE_KINDS", "Judge", "JudgeKind", "Judgement",
           "OPENAI_URL", "Reply", "describe_judge", "judge_fingerprint", "make_judge",
           "register_explainer_kind", "register_judge_kind"]
