"""The texts of auto-interpretation (delphi's method): windows with the
tokens a latent is active on marked <<like this>>, the explainer's prompt
and how its explanation is read from the reply, the two scoring prompts
(detection: is the latent active in this text; fuzzing: are the marked
tokens the right ones), and the token-frequency baseline explanation."""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

OPEN, CLOSE = "<<", ">>"
EXPLANATION_TAG = "[EXPLANATION]:"
MAX_EXPLANATION_CHARS = 300
BASELINE_TOKENS = 5  # tokens named by the token-frequency baseline

EXPLAINER_PROMPT = """We study one latent (a feature) of a language model. Below are texts where it is active; the \
tokens it is active on are marked {open}like this{close}.

{examples}

What does the latent respond to? Say in one short sentence which tokens, in which context. End your reply with \
one line of the form
{tag} <your explanation>"""

DETECTION_PROMPT = """A latent of a language model responds to: {question}

Text: {answer}

How likely is it, from 0 to 100, that this latent is active somewhere in the text? Reply with a number only."""

FUZZING_PROMPT = """A latent of a language model responds to: {question}

In the text below some tokens are marked <<like this>>.

Text: {answer}

How likely is it, from 0 to 100, that the marked tokens are exactly the ones this latent responds to? Reply \
with a number only."""


def marked_text(tokens: Sequence[str], marked: set[int], first: int = 0) -> str:
    """The window's text from token `first` on (1 skips a BOS), each run of
    consecutive marked positions between << and >>."""
    parts, inside = [], False
    for position in range(first, len(tokens)):
        hit = position in marked
        if hit != inside:
            parts.append(OPEN if hit else CLOSE)
            inside = hit
        parts.append(tokens[position])
    if inside:
        parts.append(CLOSE)
    return "".join(parts)


def explainer_prompt(examples: Sequence[str]) -> str:
    listed = "\n".join(f"Example {i + 1}: {text.strip()}" for i, text in enumerate(examples))
    return EXPLAINER_PROMPT.format(open=OPEN, close=CLOSE, examples=listed, tag=EXPLANATION_TAG)


def parse_explanation(reply: str) -> str:
    """The text after the last "[EXPLANATION]:" of a reply, or else its
    first non-empty line; marks, quotes and surrounding space removed."""
    text = reply.rsplit(EXPLANATION_TAG, 1)[1] if EXPLANATION_TAG in reply else \
        next((line for line in reply.splitlines() if line.strip()), "")
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = re.sub(r"\s+", " ", text.replace(OPEN, "").replace(CLOSE, "")).strip(" \"'`*")
    return text[:MAX_EXPLANATION_CHARS]


def baseline_explanation(tokens: Sequence[Sequence[str]], marked: Sequence[set[int]]) -> str:
    """The token-frequency baseline: the tokens the latent is most often
    active on in the explainer's examples, named as such."""
    counts = Counter(tokens[i][p].strip() or tokens[i][p] for i, positions in enumerate(marked) for p in positions)
    common = [token for token, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:BASELINE_TOKENS]]
    return "the tokens " + ", ".join(f'"{t}"' for t in common) if common else ""
