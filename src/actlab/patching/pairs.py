"""Prompt pairs for patching: a clean prompt, a corrupted one of the same
token length (positions aligned), and the answer and wrong answer whose
first tokens the metric compares.

A pairs file is JSONL (or JSON, CSV, Parquet) of rows
{"id", "clean", "corrupted", "answer", "wrong_answer"} ("id" optional: the
row number). "ioi" names the built-in set: indirect-object sentences of one template
("When Mary and John went to the store, John gave a drink to" -> " Mary"),
whose corrupted prompt names the other person as the giver, so that the
answer and the wrong answer trade places; every name, place and thing is
one token with its leading space, so clean and corrupted (and all pairs)
align token for token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import ActlabError
from ..inputs import Records, read_rows

IOI = "ioi"  # load_prompt_pairs("ioi"): the built-in set
FIELDS = ("clean", "corrupted", "answer", "wrong_answer")
IOI_TEMPLATE = "When {first} and {second} went to the {place}, {giver} gave a {thing} to"
IOI_NAMES = ("Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "David", "Emma", "Mark", "Lisa", "Peter",
             "Kate", "Alice", "Bob", "Jack", "Laura", "Michael", "Daniel", "Rachel", "Sam", "Ben", "Lucy", "George",
             "Amy", "Chris", "Emily", "Jane", "Kevin", "Ryan")
IOI_PLACES = ("store", "park", "office", "school", "house", "beach", "market", "station", "garden", "library",
              "restaurant", "hospital", "church")
IOI_THINGS = ("drink", "ball", "book", "pencil", "bag", "ring", "letter", "key", "gift", "cake", "phone", "hat",
              "flower", "coin")
IOI_PAIRS = 48  # the default model answers all 48 clean prompts (logit difference > 0) and all corrupted ones


def ioi_pairs(n: int = IOI_PAIRS, seed: int = 0) -> Records:
    """n indirect-object pairs of one template, so that every pair's
    positions hold the same roles (a mean over pairs by position means
    something): names, place and thing drawn with `seed` (each one token
    with its leading space), the two names in both orders (ABBA, BABA).
    Clean "When A and B went to the P, B gave a T to" -> " A"; corrupted
    "..., A gave a T to" -> " B"."""
    draw = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = draw.sample(IOI_NAMES, 2)
        place, thing = draw.choice(IOI_PLACES), draw.choice(IOI_THINGS)
        first, second = (a, b) if i % 2 == 0 else (b, a)
        def text(giver: str) -> str:
            return IOI_TEMPLATE.format(first=first, second=second, place=place, giver=giver, thing=thing)

        rows.append({"id": f"ioi-{i}", "clean": text(b), "corrupted": text(a), "answer": f" {a}",
                     "wrong_answer": f" {b}"})
    return _records(rows, list(range(1, n + 1)), f"builtin:{IOI}")


def load_prompt_pairs(source: str | Path) -> Records:
    """The pairs of a file (see the module docstring), or the built-in "ioi"
    set: Records whose texts are the clean prompts and whose fields are id,
    corrupted, answer and wrong_answer."""
    if str(source) == IOI:
        return ioi_pairs()
    rows, lines = read_rows(source)
    if not rows:
        raise ActlabError(f"{source} holds no pairs; give rows of {{\"clean\", \"corrupted\", \"answer\", "
                          "\"wrong_answer\"}", param="pairs")
    for row, line in zip(rows, lines):
        missing = [name for name in FIELDS if not isinstance(row, dict) or not isinstance(row.get(name), str)]
        if missing:
            raise ActlabError(f"{Path(str(source)).name}:{line} has no text field '{missing[0]}'; each pair needs "
                              f"{', '.join(FIELDS)}", param="pairs")
    return _records(rows, lines, str(source))


def _records(rows: list[dict], lines: list[int], source: str) -> Records:
    ids = [str(row.get("id", line)) for row, line in zip(rows, lines)]
    fields = {"id": ids, **{name: [row[name] for row in rows] for name in FIELDS[1:]}}
    return Records([row["clean"] for row in rows], fields, lines, source=source, text_field="clean")


@dataclass(frozen=True)
class TokenPair:
    """A pair as token ids: clean and corrupted (equal length), and the
    answer's and the wrong answer's first tokens."""

    id: str
    clean: tuple[int, ...]
    corrupted: tuple[int, ...]
    answer: int
    wrong: int


def tokenize_pairs(tokenizer, records: Records) -> list[TokenPair]:
    """Each pair's tokens; one line naming the pair where clean and corrupted
    differ in length, a prompt is empty, or both answers begin with one token.
    An answer of several tokens is compared by its first (documented: the
    metric is a next-token logit difference)."""
    pairs = []
    for i, clean in enumerate(records.texts):
        pair_id = records.fields["id"][i]
        clean_ids = tokenizer(clean)["input_ids"]
        corrupted_ids = tokenizer(records.fields["corrupted"][i])["input_ids"]
        if len(clean_ids) != len(corrupted_ids):
            raise ActlabError(f"pair '{pair_id}': clean has {len(clean_ids)} tokens, corrupted {len(corrupted_ids)}; "
                              "patching needs them aligned position for position (same token length)", param="pairs")
        if not clean_ids:
            raise ActlabError(f"pair '{pair_id}' has an empty prompt", param="pairs")
        answer, wrong = (_first_token(tokenizer, records.fields[name][i], pair_id, name)
                         for name in ("answer", "wrong_answer"))
        if answer == wrong:
            raise ActlabError(f"pair '{pair_id}': answer and wrong_answer begin with the same token "
                              f"({tokenizer.decode([answer])!r}); the logit difference would be 0", param="pairs")
        pairs.append(TokenPair(pair_id, tuple(clean_ids), tuple(corrupted_ids), answer, wrong))
    return pairs


def _first_token(tokenizer, text: str, pair_id: str, name: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ActlabError(f"pair '{pair_id}': {name} is empty; give the answer's text (e.g. ' Mary')", param="pairs")
    return ids[0]
