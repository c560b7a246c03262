"""Trait definitions (JSON or YAML), validated with one-line errors.

Instruction traits (the persona-vectors format):

    name: pirate
    instruction:            # system prompts, one pair or more
      - {pos: "You are a pirate...", neg: "You are a plain assistant..."}
    questions: ["What is your favorite food?", ...]   # asked under both polarities
    eval_prompt: "... {question} ... {answer} ... 0 to 100 ..."   # for model judges
    judge: {kind: keyword, keywords: [arr, matey, ...]}          # optional default judge:
                            # keyword | regex | local {model, ...} | openai {model, base_url, ...}

Natural-scenario traits give paired prompts and no instruction (questions,
optional, are neutral prompts for steering):

    name: ...
    natural: {pos: [prompt, ...] or "pos.txt", neg: [...] or "neg.txt"}   # same length, paired
    questions: [...]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ActlabError
from ..judges import JUDGE_KINDS

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data" / "traits"
KNOWN_KEYS = {"name", "description", "instruction", "questions", "eval_prompt", "judge", "natural"}


@dataclass
class Prompt:
    """One generation request: the polarity, the pair it belongs to (the pos
    and neg prompts of one instruction x question, or one natural pair), and
    the chat messages."""

    polarity: str  # "pos" or "neg"
    pair: int
    system: str | None
    user: str
    question: str  # what the judge sees as {question}


@dataclass
class Trait:
    name: str
    description: str = ""
    instructions: list[dict[str, str]] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    eval_prompt: str | None = None
    judge: dict | None = None
    natural: dict[str, list[str]] | None = None

    def prompts(self) -> list[Prompt]:
        """Every pos and neg prompt; pair ids group a pos with its neg."""
        if self.natural:
            pairs = enumerate(zip(self.natural["pos"], self.natural["neg"]))
            return [Prompt(pol, i, None, text, text) for i, pair in pairs for pol, text in zip(("pos", "neg"), pair)]
        out = []
        for i, instruction in enumerate(self.instructions):
            for j, question in enumerate(self.questions):
                pair = i * len(self.questions) + j
                out += [Prompt(pol, pair, instruction[pol], question, question) for pol in ("pos", "neg")]
        return out


def builtin_traits() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def load_trait(name_or_path: str | Path) -> Trait:
    """A built-in trait by name, or a .json / .yaml / .yml file."""
    path = Path(name_or_path)
    if not path.is_file():
        builtin = BUILTIN_DIR / f"{name_or_path}.json"
        if not builtin.is_file():
            raise ActlabError(f"no trait file '{name_or_path}' and no built-in trait of that name; "
                              f"built-in: {', '.join(builtin_traits())}")
        path = builtin
    raw = _read(path)
    return parse_trait(raw, path)


def _read(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # the parsers' own messages name line and column
        first, kind = str(exc).splitlines()[0], "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        raise ActlabError(f"{path}: not valid {kind} ({first})") from None
    if not isinstance(raw, dict):
        raise ActlabError(f"{path}: a trait file holds one mapping (name, instruction, questions, ...)")
    return raw


def parse_trait(raw: dict, source: Path | str = "trait") -> Trait:
    def fail(message: str):
        raise ActlabError(f"{source}: {message}")

    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        fail(f"unknown key(s) {', '.join(sorted(unknown))}; a trait has {', '.join(sorted(KNOWN_KEYS))}")
    name = raw.get("name") or Path(str(source)).stem
    trait = Trait(name=str(name), description=str(raw.get("description", "")), eval_prompt=raw.get("eval_prompt"),
                  judge=raw.get("judge"))
    if "natural" in raw:
        if "instruction" in raw:
            fail("give either 'instruction' + 'questions' or 'natural', not both")
        trait.natural = {pol: _prompt_list(raw["natural"], pol, source, fail) for pol in ("pos", "neg")}
        if len(trait.natural["pos"]) != len(trait.natural["neg"]):
            fail(f"natural: {len(trait.natural['pos'])} pos and {len(trait.natural['neg'])} neg prompts; "
                 "they are pairs, give the same number")
        questions = raw.get("questions", [])  # optional here: neutral prompts for steering
        if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
            fail("'questions' must be a list of non-empty texts")
        trait.questions = list(questions)
    else:
        instructions = raw.get("instruction")
        if not isinstance(instructions, list) or not instructions:
            fail("'instruction' must be a non-empty list of {pos, neg} pairs (or use 'natural')")
        for i, pair in enumerate(instructions):
            if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) and pair[k].strip()
                                                     for k in ("pos", "neg")):
                fail(f"instruction {i} must have non-empty 'pos' and 'neg' texts")
        questions = raw.get("questions")
        if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q.strip()
                                                                        for q in questions):
            fail("'questions' must be a non-empty list of non-empty texts")
        trait.instructions = [{"pos": p["pos"], "neg": p["neg"]} for p in instructions]
        trait.questions = list(questions)
    if trait.eval_prompt is not None:
        missing = [slot for slot in ("{question}", "{answer}") if slot not in str(trait.eval_prompt)]
        if missing:
            fail(f"eval_prompt lacks {' and '.join(missing)}; the judge fills both")
    if trait.judge is not None and not (isinstance(trait.judge, dict) and trait.judge.get("kind") in JUDGE_KINDS):
        fail(f"'judge' must be a mapping with a 'kind' ({', '.join(JUDGE_KINDS.names())})")
    if trait.judge and JUDGE_KINDS[trait.judge["kind"]].model_judge and not (trait.eval_prompt or
                                                                            trait.judge.get("eval_prompt")):
        fail(f"a {trait.judge['kind']} judge needs an 'eval_prompt' with {{question}} and {{answer}}")
    return trait


def _prompt_list(natural, polarity: str, source, fail) -> list[str]:
    if not isinstance(natural, dict) or polarity not in natural:
        fail(f"natural needs '{polarity}': a list of prompts or a text file with one prompt per line")
    value = natural[polarity]
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else Path(str(source)).parent / value
        if not path.is_file():
            fail(f"natural {polarity} prompt file not found: {path}")
        value = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        fail(f"natural {polarity} prompts must be a non-empty list of non-empty texts")
    return value
