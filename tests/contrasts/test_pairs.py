"""Pairs files: the seed's format (one JSON array per domain, the file name as
the domain), several files at once, duplicates kept once, other formats and
field names, every bad input as a one-line error; the built-in set."""

import json

import pytest

from actlab import ActlabError
from actlab.contrasts.pairs import PairFields, load_pairs

SEED = [{"id": 1, "domain": "capitals", "complexity": "simple", "prompt": "The capital of France is",
         "fact": "Paris.", "hallucination": "Berlin."},
        {"id": 2, "domain": "capitals", "complexity": "simple", "prompt": "The capital of Italy is",
         "fact": "Rome.", "hallucination": "Madrid."}]


def write(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_seed_files_load_unchanged(tmp_path):
    swaps = write(tmp_path / "entity_swaps.json", SEED)
    traps = write(tmp_path / "adversarial_traps.json", [
        {"id": 7, "domain": "trick", "complexity": "hard", "prompt": "The capital of Australia is",
         "fact": "Canberra.", "hallucination": "Sydney."},
        {**SEED[0], "id": 8}])  # the seed's data repeats prompts across files
    pairs = load_pairs([swaps, traps])
    assert len(pairs) == 3 and [d.prompt for d in pairs.duplicates] == ["The capital of France is"]
    assert pairs.duplicates[0].occurrences == ("entity_swaps.json#1", "adversarial_traps.json#8")
    assert pairs.duplicates[0].describe(12) == "'The capit...' (entity_swaps.json#1, adversarial_traps.json#8)"
    assert pairs.domains == ["entity_swaps", "entity_swaps", "adversarial_traps"]
    assert pairs.subdomains == ["capitals", "capitals", "trick"] and pairs.ids == ["1", "2", "7"]
    assert pairs.conditions == ["prompt", "fact", "hallucination"]
    assert pairs.text("fact", 0) == "The capital of France is Paris." and pairs.text("prompt", 0) == pairs.prompts[0]


def test_other_formats_and_field_names(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps({"question": r["prompt"], "true": r["fact"], "false": r["hallucination"],
                                           "topic": "geo"}) for r in SEED))
    pairs = load_pairs(jsonl, PairFields(prompt="question", first="true", second="false", domain="topic",
                                         separator=": "))
    assert pairs.domains == ["geo", "geo"] and pairs.text("false", 1) == "The capital of Italy is: Madrid."
    assert pairs.ids == ["p:1", "p:2"]
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,fact,hallucination\nA is,b.,c.\n")
    assert load_pairs(csv).continuations == {"fact": ["b."], "hallucination": ["c."]}


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "x", "fact": "y"}], "row 1: 'hallucination' is missing"),
    ([{"prompt": "x", "fact": "", "hallucination": "z"}], "row 1: 'fact' is empty or not text"),
    ([{"prompt": "x", "fact": 3, "hallucination": "z"}], "row 1: 'fact' is empty or not text"),
    (["just a string"], "row 1 is not an object"),
    ([], "no pairs"),
])
def test_bad_records_are_one_line_errors(tmp_path, rows, message):
    with pytest.raises(ActlabError, match=message):
        load_pairs(write(tmp_path / "bad.json", rows))


def test_an_empty_file_next_to_a_good_one_is_refused(tmp_path):
    good, empty = write(tmp_path / "good.json", SEED), write(tmp_path / "empty.json", [])
    with pytest.raises(ActlabError, match=r"^empty.json: no pairs; remove it from --pairs"):
        load_pairs([good, empty])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ActlabError, match=r"^empty.jsonl: no pairs"):
        load_pairs([empty.with_suffix(".jsonl"), good])


def test_bad_files(tmp_path):
    with pytest.raises(ActlabError, match="input file not found"):
        load_pairs(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ActlabError, match="not valid JSON"):
        load_pairs(tmp_path / "broken.json")
    with pytest.raises(ActlabError, match="has no field 'topic'"):
        load_pairs(write(tmp_path / "p.json", SEED), PairFields(domain="topic"))


def test_builtin_set(tokenizer):
    pairs = load_pairs("builtin")
    assert len(pairs) >= 400 and not pairs.duplicates
    counts = {d: pairs.domains.count(d) for d in set(pairs.domains)}
    assert set(counts) == {"entity_swaps", "temporal_shifts", "logical_inversions", "adversarial_traps"}
    assert min(counts.values()) >= 80
    unequal = 0
    for i, prompt in enumerate(pairs.prompts):
        n = len(tokenizer(prompt)["input_ids"])
        lengths = [len(tokenizer(pairs.text(c, i))["input_ids"]) - n for c in ("fact", "hallucination")]
        unequal += lengths[0] != lengths[1]
        assert pairs.continuations["fact"][i] != pairs.continuations["hallucination"][i]
    assert unequal <= 0.1 * len(pairs)  # equal token lengths wherever the language allows (33 of 412 here)
