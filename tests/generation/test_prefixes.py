"""Shared beginnings (generation/prefixes.py) against brute force: every
group's prompts really share its length, keep a token of their own and have
one key; no prompt is in two groups; and the grouping saves as many prefill
tokens as the best partition into consecutive runs of the sorted prompts."""

import random
from functools import lru_cache

import torch

import actlab

from actlab.generation import Steering
from actlab.generation.edits import prompt_key
from actlab.generation.prefixes import MIN_SHARED, common_length, prefix_groups


def check_groups(prompts, keys, groups):
    seen = set()
    for g in groups:
        assert len(g.members) >= 2 and g.length >= MIN_SHARED
        assert not seen & set(g.members)
        seen |= set(g.members)
        head = prompts[g.members[0]][:g.length]
        for i in g.members:
            assert prompts[i][:g.length] == head and len(prompts[i]) > g.length and keys[i] == keys[g.members[0]]


def saved(groups) -> int:
    return sum(g.length * (len(g.members) - 1) for g in groups)


def best_saving(prompts) -> int:
    """Brute force over partitions of the sorted prompts into consecutive runs."""
    ordered = sorted(prompts)

    @lru_cache(maxsize=None)
    def best(start: int) -> int:
        if start == len(ordered):
            return 0
        result = best(start + 1)  # alone
        shared = len(ordered[start]) - 1
        for end in range(start + 1, len(ordered)):
            shared = min(shared, len(ordered[end]) - 1, common_length(ordered[end - 1], ordered[end]))
            if shared < MIN_SHARED:
                break
            result = max(result, shared * (end - start) + best(end + 1))
        return result
    return best(0)


def test_system_prompts_group_and_keep_a_token_of_their_own():
    system_a, system_b = list(range(100, 120)), list(range(200, 230))
    prompts = [system_a + [1, 2], system_b + [3], system_a + [4], system_b + [3], system_a, [5] * 30]
    groups = prefix_groups(prompts, [None] * len(prompts))
    check_groups(prompts, [None] * len(prompts), groups)
    by_leader = {frozenset(g.members): g.length for g in groups}
    assert by_leader == {frozenset({0, 2, 4}): 19, frozenset({1, 3}): 30}  # prompt 4 keeps its last token


def test_random_prompts_against_brute_force():
    rng = random.Random(0)
    for trial in range(200):
        stems = [[rng.randrange(3) for _ in range(rng.randrange(0, 14))] for _ in range(3)]
        prompts = [tuple(rng.choice(stems) + [rng.randrange(3) for _ in range(rng.randrange(1, 6))])
                   for _ in range(rng.randrange(1, 9))]
        keys = [None] * len(prompts)
        groups = prefix_groups([list(p) for p in prompts], keys)
        check_groups([list(p) for p in prompts], keys, groups)
        assert saved(groups) >= 0.75 * best_saving(prompts), (trial, prompts)  # greedy: near the best


def test_prompts_steered_differently_do_not_share():
    v = torch.ones(4)
    steerings = [None, Steering(0, v, 1.0, where="answer"), Steering(0, v, 1.0), Steering(0, v, 1.0),
                 Steering(0, v, 2.0), Steering(1, v, 1.0)]
    keys = [prompt_key(() if s is None else (s,), 21) for s in steerings]
    assert keys[0] == keys[1] == () and keys[2] == keys[3] and len({keys[3], keys[4], keys[5]}) == 3
    prompts = [list(range(20)) + [k] for k in range(len(steerings))]
    groups = prefix_groups(prompts, keys)
    check_groups(prompts, keys, groups)
    assert sorted(sorted(g.members) for g in groups) == [[0, 1], [2, 3]]


def test_an_edit_counted_from_the_prompts_end_shares_only_between_prompts_of_one_length():
    edit = actlab.Add("blocks.0.hook_resid_post", torch.ones(4), positions=[-2])
    assert prompt_key((edit,), 21) == prompt_key((edit,), 21) != prompt_key((edit,), 22)
    ahead = actlab.Add("blocks.0.hook_resid_post", torch.ones(4), positions=[2])
    assert prompt_key((ahead,), 21) == prompt_key((ahead,), 22)
