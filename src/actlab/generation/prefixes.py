"""Prompts that begin alike share their beginning's prefill.

Trait runs, steering sweeps and judges send many prompts that open with the
same chat template and system instruction (the built-in traits' prompts
share 19 of their 30 tokens with a neighbour on average). The engine
prefills such a shared beginning once, into one slot (the group's leader),
copies its keys and values (and its pooled prompt sums) to the other
members' slots, and prefills each member's remaining tokens on top: every
query reads the same keys as in a whole-prompt prefill, and
(members - 1) x prefix fewer tokens go through the model.

Prompts share only where their prompt-side edits are the same (a key per
prompt, generation.edits.prompt_key): a row steered at every position
("all") has other keys and values in its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Hashable, Sequence

MIN_SHARED = 8  # tokens: a shorter shared beginning does not pay for its copies and its extra forward


@dataclass
class PrefixGroup:
    """Prompts `members` (indices into the prompts given; members[0] leads)
    whose first `length` tokens are the same, fewer than any member has."""

    length: int
    members: list[int]


def prefix_groups(prompts: Sequence[Sequence[int]], keys: Sequence[Hashable]) -> list[PrefixGroup]:
    """Groups of two or more prompts with equal keys sharing at least
    MIN_SHARED leading tokens. The prompts of a key, in sorted order, join
    their neighbour's group while the prefill tokens saved,
    (members - 1) x shared length, do not shrink; each member keeps at
    least one token of its own (the one whose logits choose its first)."""
    numbers: dict[Hashable, int] = {}
    key_of = [numbers.setdefault(key, len(numbers)) for key in keys]
    order = sorted(range(len(prompts)), key=lambda i: (key_of[i], list(prompts[i])))
    groups = []
    for _, same_key in groupby(order, key=lambda i: key_of[i]):
        current: PrefixGroup | None = None
        for i in same_key:
            ids = prompts[i]
            if current is not None:
                shared = min(current.length, len(ids) - 1, common_length(prompts[current.members[-1]], ids))
                n = len(current.members)
                if shared >= MIN_SHARED and n * shared >= (n - 1) * current.length:
                    current.length = shared
                    current.members.append(i)
                    continue
                groups.append(current)
            current = PrefixGroup(len(ids) - 1, [i])
        groups.append(current)
    return [g for g in groups if len(g.members) > 1]


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share."""
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
