import pytest

from actlab import ActlabError
from actlab.judges import JUDGE_KINDS
from actlab.registry import Registry, one_of
from actlab.runs.manifest import RUN_KINDS


def test_pick_names_the_known_ones_in_the_registrys_order():
    numbers = Registry("number", order=lambda name, value: -value, hint=" (register one first)")
    for name, value in (("one", 1), ("three", 3), ("two", 2)):
        numbers.register(name, value)
    assert numbers.pick("two") == 2 and numbers.names() == ["three", "two", "one"]
    with pytest.raises(ActlabError, match=r"^unknown number 'four'; use three, two, one \(register one first\)$"):
        numbers.pick("four")
    with pytest.raises(ValueError, match="already registered"):
        numbers.register("one", 5)


def test_every_unknown_name_has_one_message():
    assert JUDGE_KINDS.names() == ["keyword", "regex", "local", "openai"]  # rule judges, then model judges
    with pytest.raises(ActlabError, match="^unknown run kind 'x'; use .*actlab.latents.* \\(import the package") as e:
        RUN_KINDS.pick("x")
    assert e.value.param is None
    with pytest.raises(ActlabError, match="^unknown dtype 'f8'; use float32, bfloat16$") as e:
        one_of("dtype", "f8", ["float32", "bfloat16"], param="dtype")
    assert e.value.param == "dtype"
