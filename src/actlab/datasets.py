"""Built-in text sets shipped with the package."""

from __future__ import annotations

import json
import random
from importlib import resources

from .inputs import Records


def categories() -> Records:
    """The categorized demo set: texts with a `category` field, in category order."""
    data = json.loads(resources.files("actlab").joinpath("data/categories.json").read_text("utf-8"))
    texts, cats = [], []
    for category, items in data["categories"].items():
        texts += items
        cats += [category] * len(items)
    return Records.of(texts, "builtin:categories", category=cats)


def length_mix(tokenizer, n: int = 256, min_tokens: int = 20, max_tokens: int = 150,
               seed: int = 0) -> list[str]:
    """n texts of min..max tokens (uniform target lengths), built by joining
    built-in texts; the benchmark's realistic length mix."""
    rng = random.Random(seed)
    pool = categories().texts
    texts = []
    for _ in range(n):
        target = rng.randint(min_tokens, max_tokens)
        parts, length = [], 0
        while length < target:
            part = rng.choice(pool)
            parts.append(part)
            length += len(tokenizer(part + "\n", add_special_tokens=False)["input_ids"])
        ids = tokenizer("\n".join(parts), add_special_tokens=False)["input_ids"][:target]
        texts.append(tokenizer.decode(ids))
    return texts
