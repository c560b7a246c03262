"""A local Hugging Face model as judge, with persona-vectors' logprob rule,
and as explainer, through actlab's own generation.

The rule weighs the integers 0..100 by their probability as the judge's
reply. An API judge reads them off one token's top-20 logprobs, which works
where every number is one token. Many tokenizers (SmolLM2, Gemma, Qwen,
Llama-2) write numbers digit by digit, so here a number's probability is
that of its whole token sequence followed by a token that does not continue
it:

    P(42) = P("4") P("2" | "4") (1 - P(next token starts with a digit | "42"))

A leading space token or space-prefixed piece (" 42") counts for the same
number. Every digit path whose probability stays at or above
`min_path_prob` is expanded through the KV cache (the `max_paths` likeliest
per reply and step, as an API shows the top 20 tokens), all prompts of a
batch together: a step runs every live path as a row with its own copy of
its prompt's cache, so at most batch_size x max_paths rows. Where each
number is one token and nothing follows it, this is the one-token rule.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import torch

from ..default_model import DEFAULT_MODEL
from ..engine import plan_batches
from ..errors import ActlabError
from ..generation import GenerationConfig, cache_keyword, generate, prompt_token_ids, render_prompt
from ..models import DEFAULT_DEVICE, Model, load_model
from ..tokens import pad
from .base import (
    MIN_NUMBER_MASS,
    JudgeKind,
    Judgement,
    check_eval_prompt,
    fill_prompt,
    logprob_score,
    register_judge_kind,
    unscored_if_empty,
)
from .explainers import ExplainerKind, Reply, register_explainer_kind

NUMBERS = frozenset(str(n) for n in range(101))
PREFIXES = frozenset(n[:i] for n in NUMBERS for i in range(1, len(n) + 1))
_PIECE = re.compile(r"(Ġ|▁| )?([0-9]*)")  # byte-level BPE / SentencePiece space markers


@dataclass
class LocalJudge:
    """Scores answers with a local causal LM: the eval prompt as the user turn
    (chat template when the tokenizer has one), then persona-vectors' rule,
    sum p(n) n / sum p(n), over the reply's number probabilities; None when
    their mass is below `min_mass`. `model`: a loaded actlab Model, or a name
    or path that is loaded on first use."""

    eval_prompt: str
    model: object = DEFAULT_MODEL
    device: str = DEFAULT_DEVICE
    batch_size: int = 8
    min_path_prob: float = 1e-4
    max_paths: int = 32
    min_mass: float = MIN_NUMBER_MASS
    _loaded: object = field(default=None, init=False, repr=False)  # `model` loaded, when given by name

    def __post_init__(self):
        check_eval_prompt(self.eval_prompt)
        if self.batch_size < 1 or self.max_paths < 1 or not 0 <= self.min_path_prob < 1:
            raise ActlabError("local judge: batch_size >= 1, max_paths >= 1 and 0 <= min_path_prob < 1, please")

    def _model(self) -> Model:
        return _loaded_model(self)

    def describe(self) -> str:
        return f"local: {_model_name(self.model)} (logprob rule over whole numbers)"

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgement]:
        model = self._model()
        out: list[Judgement | None] = [unscored_if_empty(answer) for _, answer in items]
        todo = [i for i, j in enumerate(out) if j is None]
        prompts = [render_prompt(model.tokenizer, fill_prompt(self.eval_prompt, *items[i])) for i in todo]
        numbers = number_probabilities(model, prompts, self.min_path_prob, self.max_paths, self.batch_size)
        lengths = map(len, prompt_token_ids(model.tokenizer, prompts))
        for i, probs, length in zip(todo, numbers, lengths):
            out[i] = logprob_score({n: math.log(p) for n, p in probs.items() if p > 0}, self.min_mass)
            out[i].prompt_tokens = length
        return out


@dataclass
class LocalExplainer:
    """Greedy replies of a local causal LM (chat template when it has one)
    through actlab.generate. `model`: a loaded actlab Model, or a name or
    path loaded on first use."""

    model: object = DEFAULT_MODEL
    device: str = DEFAULT_DEVICE
    max_new_tokens: int = 120
    _loaded: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ActlabError(f"explainer max_new_tokens must be at least 1, not {self.max_new_tokens}")

    def describe(self) -> str:
        return f"local: {_model_name(self.model)}"

    def ask(self, prompts: Sequence[str]) -> list[Reply]:
        model = _loaded_model(self)
        out = generate(model, [render_prompt(model.tokenizer, p) for p in prompts],
                       cfg=GenerationConfig(max_new_tokens=self.max_new_tokens))
        return [Reply(text, "ok", len(prompt), len(answer))
                for text, prompt, answer in zip(out.answers, out.prompt_ids, out.answer_ids)]


def _loaded_model(owner) -> Model:
    """owner.model itself, or the model it names, loaded once into owner._loaded."""
    if not isinstance(owner.model, str):
        return owner.model
    if owner._loaded is None:
        owner._loaded = load_model(owner.model, device=owner.device)
    return owner._loaded


def _model_name(model) -> str:
    return model if isinstance(model, str) else model.name


@dataclass(frozen=True)
class NumberPieces:
    """The vocabulary's tokens that can spell a number 0..100."""

    ids: torch.Tensor  # (n,) token ids
    texts: tuple[str, ...]  # their text: digits, with a leading " " for space-marked pieces
    continues: torch.Tensor  # (vocab,) bool: the token starts with a digit (it would extend a number)


@lru_cache(maxsize=8)
def number_pieces(tokenizer, vocab_size: int) -> NumberPieces:
    ids, texts = [], []
    continues = torch.zeros(vocab_size, dtype=torch.bool)
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))):
        if not piece:
            continue
        match = _PIECE.fullmatch(piece)
        if match and (match.group(1) or match.group(2)):
            ids.append(i)
            texts.append((" " if match.group(1) else "") + match.group(2))
        continues[i] = piece[0] in "0123456789"
    return NumberPieces(torch.tensor(ids, dtype=torch.long), tuple(texts), continues)


def _extends(text: str, piece: str) -> bool:
    """Whether `piece` may follow `text` on the way to a number 0..100: a
    space only first, then digits that stay a prefix of some number."""
    if piece.startswith(" ") and text:
        return False
    grown = (text + piece).lstrip()
    return grown in PREFIXES or (not grown and not text)


def number_probabilities(model: Model, prompts: Sequence[str], min_path_prob: float = 1e-4, max_paths: int = 32,
                         batch_size: int = 8) -> list[dict[str, float]]:
    """For each rendered prompt, the probability that the model's reply is
    each number 0..100 (numbers below `min_path_prob` are left out)."""
    ids = prompt_token_ids(model.tokenizer, prompts)
    results: list[dict[str, float]] = [defaultdict(float) for _ in prompts]
    for rows in plan_batches([len(x) for x in ids], batch_size):
        _search(model, [ids[r] for r in rows], [results[r] for r in rows], min_path_prob, max_paths)
    return [dict(r) for r in results]


def _search(model: Model, ids: list[list[int]], results: list[dict[str, float]], min_path_prob: float,
            max_paths: int) -> None:
    padded = pad(ids, "left", model.pad_id, model.device)
    mask, positions = padded.attention_mask, padded.position_ids
    keyword = cache_keyword(model.hf_model)
    with torch.inference_mode():
        out = model.hf_model(**padded.inputs(), use_cache=True, logits_to_keep=1)
        cache, logits = getattr(out, keyword), out.logits[:, -1]
        pieces = number_pieces(model.tokenizer, logits.shape[-1])
        position = positions[:, -1]
        paths = [(row, "", 1.0) for row in range(len(ids))]  # (prompt row, reply so far, its probability)
        while paths:
            probs = torch.softmax(logits.float().cpu().double(), dim=-1)  # MPS has no float64
            stop = 1.0 - probs[:, pieces.continues].sum(-1)
            reach = probs[:, pieces.ids] * torch.tensor([p for _, _, p in paths], dtype=torch.float64)[:, None]
            grown = []  # (parent path, row, reply, probability, token id)
            for s, (row, text, p) in enumerate(paths):
                if text.lstrip() in NUMBERS:
                    results[row][text.lstrip()] += p * float(stop[s])
                for c in torch.nonzero((reach[s] >= min_path_prob) & (reach[s] > 0)).flatten().tolist():
                    if _extends(text, pieces.texts[c]):
                        grown.append((s, row, text + pieces.texts[c], float(reach[s, c]), int(pieces.ids[c])))
            grown = _most_probable_per_row(grown, max_paths)
            if not grown:
                break
            parent = torch.tensor([g[0] for g in grown], device=model.device)
            cache.reorder_cache(parent)
            mask = torch.cat([mask[parent], torch.ones_like(mask[parent, :1])], dim=1)
            position = position[parent] + 1
            tokens = torch.tensor([[g[4]] for g in grown], device=model.device)
            out = model.hf_model(input_ids=tokens, attention_mask=mask, position_ids=position.unsqueeze(-1),
                                 use_cache=True, **{keyword: cache})
            cache, logits = getattr(out, keyword), out.logits[:, -1]
            paths = [(row, text, p) for _, row, text, p, _ in grown]


def _most_probable_per_row(grown: list[tuple], max_paths: int) -> list[tuple]:
    by_row: dict[int, list[tuple]] = defaultdict(list)
    for g in grown:
        by_row[g[1]].append(g)
    return [g for row in sorted(by_row) for g in sorted(by_row[row], key=lambda g: -g[3])[:max_paths]]


register_judge_kind(JudgeKind("local", LocalJudge, model_judge=True))
register_explainer_kind(ExplainerKind("local", LocalExplainer))
