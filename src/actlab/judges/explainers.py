"""Explainers: the model judge kinds asked for free text instead of a
score (the explanation of an SAE latent, actlab.latents.explain). Kinds are
a registry of the same names as the model judges: each judge module
registers its explainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from ..registry import Registry


@dataclass
class Reply:
    text: str | None  # None: no reply, `reason` says why
    reason: str = "ok"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: bool = False  # the explainer could not be asked (connection, server error, a malformed reply)


class Explainer(Protocol):
    def ask(self, prompts: Sequence[str]) -> list[Reply]:
        """Replies to user turns, in order."""


@dataclass(frozen=True)
class ExplainerKind:
    name: str
    factory: Callable[..., Explainer]  # factory(model=..., **settings)


EXPLAINER_KINDS: Registry[ExplainerKind] = Registry("explainer kind")


def register_explainer_kind(kind: ExplainerKind) -> ExplainerKind:
    return EXPLAINER_KINDS.register(kind.name, kind)
