"""Trait files: built-ins, JSON / YAML / natural pairs, and one-line errors."""

import json

import pytest

from actlab import ActlabError
from actlab.traits.definitions import builtin_traits, load_trait

VALID = {"name": "t", "instruction": [{"pos": "Be happy.", "neg": "Be sad."}, {"pos": "Smile.", "neg": "Frown."}],
         "questions": ["How are you?", "What now?", "Why?"],
         "eval_prompt": "Q: {question} A: {answer} Score 0-100."}


def write(tmp_path, data, name="t.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else data)
    return path


def test_builtin_traits_load():
    assert {"french", "optimism", "pirate"} <= set(builtin_traits())
    for name in builtin_traits():
        trait = load_trait(name)
        prompts = trait.prompts()
        pairs = len(trait.natural["pos"]) if trait.natural else len(trait.instructions) * len(trait.questions)
        assert len(prompts) == 2 * pairs and len({p.pair for p in prompts}) == pairs
        assert trait.judge and "{answer}" in trait.eval_prompt and trait.questions  # questions: for steering


def test_prompts_pair_pos_with_neg(tmp_path):
    prompts = load_trait(write(tmp_path, VALID)).prompts()
    assert len(prompts) == 12
    by_pair = {}
    for p in prompts:
        by_pair.setdefault(p.pair, []).append(p)
    assert len(by_pair) == 6
    for twins in by_pair.values():
        pos, neg = sorted(twins, key=lambda p: p.polarity, reverse=True)
        assert (pos.polarity, neg.polarity) == ("pos", "neg") and pos.user == neg.user and pos.system != neg.system


def test_yaml_and_natural_files(tmp_path):
    (tmp_path / "pos.txt").write_text("I love this!\n\nWhat a day!\n")
    (tmp_path / "neg.txt").write_text("I hate this.\nWhat a mess.\n")
    trait = load_trait(write(tmp_path, "name: mood\nnatural:\n  pos: pos.txt\n  neg: neg.txt\n", "mood.yaml"))
    prompts = trait.prompts()
    assert [(p.polarity, p.pair, p.user) for p in prompts] == [
        ("pos", 0, "I love this!"), ("neg", 0, "I hate this."), ("pos", 1, "What a day!"), ("neg", 1, "What a mess.")]


@pytest.mark.parametrize("change, message", [
    ({"eval_prompt": "Score {answer}"}, "lacks {question}"),
    ({"questions": []}, "'questions' must be a non-empty list"),
    ({"instruction": [{"pos": "x"}]}, "instruction 0 must have non-empty 'pos' and 'neg'"),
    ({"instructions": []}, "unknown key"),
    ({"natural": {"pos": ["a"], "neg": ["b", "c"]}, "instruction": None}, "either 'instruction'"),
    ({"judge": {"keywords": ["x"]}}, "'kind'"),
    ({"judge": {"kind": "oracle"}}, "'kind' \\(keyword, regex, local, openai\\)"),
    ({"judge": {"kind": "local"}, "eval_prompt": None}, "local judge needs an 'eval_prompt'"),
])
def test_bad_trait_files(tmp_path, change, message):
    data = {**VALID, **change}
    with pytest.raises(ActlabError, match=message):
        load_trait(write(tmp_path, data))


def test_unreadable_and_unknown(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ActlabError, match="not valid JSON"):
        load_trait(tmp_path / "bad.json")
    with pytest.raises(ActlabError, match="no built-in trait.*french"):
        load_trait("no_such_trait")
    with pytest.raises(ActlabError, match="same number"):
        load_trait(write(tmp_path, {"name": "n", "natural": {"pos": ["a"], "neg": ["b", "c"]}}))


def test_natural_traits_may_give_steering_questions(tmp_path):
    data = {"name": "n", "natural": {"pos": ["a!", "b!"], "neg": ["a.", "b."]}, "questions": ["How are you?"]}
    trait = load_trait(write(tmp_path, data))
    assert trait.questions == ["How are you?"] and len(trait.prompts()) == 4
    with pytest.raises(ActlabError, match="'questions' must be a list"):
        load_trait(write(tmp_path, {**data, "questions": "How are you?"}))
