"""Batched generation that captures block outputs while it generates.

Prompts are rendered with the tokenizer's chat template, sorted by length and
left-padded under a token budget (prompt + new tokens per row). One prefill
pass, then one cached decode step per new token; forward hooks on the
requested blocks see the prefill and every decode step, and pool on the device:

    prompt_last      the last prompt token
    prompt_mean      mean over the prompt's real tokens
    response_mean    mean over the answer's tokens
    response_first:K mean over the answer's first K tokens

An answer is every generated token before the row's own EOS (EOS excluded).
The hidden state of an answer token is the block output at that token's
position, exactly what a separate forward pass over prompt + answer gives;
the final step feeds the last answer tokens for that reason. Layer L means
block L's output (`blocks.L.hook_resid_post`, HF `hidden_states[L + 1]`).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..engine import OnBatch, plan_batches
from ..errors import ActlabError
from ..hooks import block_hook, capture, replace
from ..pooling import parse_span_pooling
from ..tokens import pad

if TYPE_CHECKING:
    from ..models import Model

CPU_GENERATION_BUDGET = 4096  # (prompt + new tokens) x rows per batch
CUDA_GENERATION_BUDGET = 65536
NUCLEUS_CANDIDATES = 1024  # top-p looks among these likeliest tokens first


@dataclass
class GenerationConfig:
    """How answers are generated; sampling seeds row i by (seed, i), so
    batching never changes a sample."""

    max_new_tokens: int = field(default=64, metadata={"help": "New tokens per answer at most."})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1: the whole softmax)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    batch_size: int | None = field(default=None, metadata={"help": "Rows per batch (default: token budget)."})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "(prompt + new tokens) x rows per batch."})

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ActlabError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}", param="max_new_tokens")
        if self.temperature < 0:
            raise ActlabError(f"temperature must be >= 0 (0: greedy), not {self.temperature}", param="temperature")
        if not 0 < self.top_p <= 1:
            raise ActlabError(f"top_p must be in (0, 1], not {self.top_p}", param="top_p")
        for name in ("batch_size", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ActlabError(f"{name} must be at least 1, not {value}", param=name)


@dataclass
class Steering:
    """Add coeff * vector to block `layer`'s output: at every position
    ("all", the prompt included) or at the answer's positions only ("answer").
    Captured activations at or after that block include the addition."""

    layer: int
    vector: torch.Tensor
    coeff: float
    where: str = "all"

    def __post_init__(self):
        if self.where not in ("all", "answer"):
            raise ActlabError(f"steering where='{self.where}': use 'all' or 'answer'")

    def applied(self, model: "Model", phase: list[str]):
        """Context manager: the addition at the block's output while inside
        (phase[0] is "prefill" or "decode", for where="answer")."""
        if self.vector.shape != (model.d_model,):
            raise ActlabError(f"steering vector has shape {tuple(self.vector.shape)}, the model's width is "
                              f"{model.d_model}", param="vector")
        delta = (self.coeff * self.vector.float()).to(model.device, model.hf_model.dtype)  # (d_model,)

        def add(hidden: torch.Tensor) -> torch.Tensor:
            return hidden if self.where == "answer" and phase[0] == "prefill" else hidden + delta

        return replace(model.hf_model, {block_hook(self.layer): add})


@dataclass
class Generations:
    prompts: list[str]  # as rendered (chat template applied)
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    answers: list[str]
    finished: list[bool]  # ended at EOS (else at max_new_tokens)
    pooled: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # pooling -> layer -> (n, d)

    def __len__(self) -> int:
        return len(self.prompts)


def parse_generation_pooling(spec: str) -> tuple[str, int | None]:
    """('response_first', 5) for 'response_first:5' (actlab.pooling's grammar)."""
    span, pooling = parse_span_pooling(spec)
    return f"{span}_{pooling.kind}", pooling.k or None


def render_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """The chat template when the tokenizer has one, else the plain texts."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{system}\n\n{user}\n" if system else f"{user}\n"


def prompt_token_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts: a chat template already wrote its special
    tokens, so none are added then."""
    add = not getattr(tokenizer, "chat_template", None)
    return [tokenizer(p, add_special_tokens=add)["input_ids"] for p in prompts]


def eos_ids(model: "Model") -> set[int]:
    ids = model.hf_model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    return ids


class _Capture:
    """Pooled sums per layer for the rows of one batch, fed by block hooks."""

    def __init__(self, model: "Model", layers: Sequence[int], poolings: Sequence[str], n_rows: int):
        self.layers = list(layers)
        self.specs = [parse_generation_pooling(p) for p in poolings]
        d, device = model.d_model, model.device
        zeros = lambda: {layer: torch.zeros(n_rows, d, device=device) for layer in layers}  # noqa: E731
        self.prompt_last, self.prompt_sum, self.response_sum = zeros(), zeros(), zeros()
        self.first_sums = {k: zeros() for kind, k in self.specs if kind == "response_first"}
        self.response_count = torch.zeros(n_rows, device=device)
        self.mode = "prefill"
        self.prompt_mask: torch.Tensor | None = None
        self.answer_rows: torch.Tensor | None = None  # rows whose fed token is an answer token
        self.step = 0

    def hooked(self, model: "Model"):
        """Context manager: the blocks feed `consume` while inside."""
        return capture(model.hf_model, {block_hook(layer): (lambda hidden, layer=layer: self.consume(layer, hidden))
                                        for layer in self.layers})

    def consume(self, layer: int, hidden: torch.Tensor) -> None:
        hidden = hidden.float()
        if self.mode == "prefill":
            mask = self.prompt_mask.unsqueeze(-1).float()
            self.prompt_last[layer] = hidden[:, -1]
            self.prompt_sum[layer] = (hidden * mask).sum(dim=1)
            return
        on = self.answer_rows.float().unsqueeze(-1)
        token = hidden[:, -1] * on
        self.response_sum[layer] += token
        for k, sums in self.first_sums.items():
            if self.step < k:
                sums[layer] += token

    def pooled(self, n_prompt: torch.Tensor) -> dict[str, dict[int, torch.Tensor]]:
        count = self.response_count.clamp(min=1).unsqueeze(-1)
        out = {}
        for kind, k in self.specs:
            spec = kind if k is None else f"{kind}:{k}"
            if kind == "prompt_last":
                out[spec] = self.prompt_last
            elif kind == "prompt_mean":
                out[spec] = {layer: v / n_prompt.unsqueeze(-1) for layer, v in self.prompt_sum.items()}
            elif kind == "response_mean":
                out[spec] = {layer: v / count for layer, v in self.response_sum.items()}
            else:
                first = self.response_count.clamp(min=1, max=k).unsqueeze(-1)
                out[spec] = {layer: v / first for layer, v in self.first_sums[k].items()}
        return out


@dataclass(frozen=True)
class RunSlice:
    """Where a call's prompts sit in a larger run: row i of the call is row
    first_row + i of the run (its sampling seed), and each finished batch is
    reported to on_batch(prompts, answer tokens)."""

    first_row: int = 0
    on_batch: OnBatch | None = None


def generate(model: "Model", prompts: Sequence[str], layers: Sequence[int] = (),
             poolings: Sequence[str] = ("response_mean",), cfg: GenerationConfig | None = None,
             steering: Steering | None = None, within: RunSlice | None = None) -> Generations:
    """Generate an answer to every rendered prompt (see render_prompt), with
    pooled block outputs at `layers`, optionally steered. Rows come back in
    input order. Sampling seeds row i by (cfg.seed, within.first_row + i), so
    a run generated in chunks samples as if in one call."""
    cfg = cfg or GenerationConfig()
    within = within or RunSlice()
    first_row, on_batch = within.first_row, within.on_batch
    if isinstance(prompts, str):
        raise ActlabError("prompts must be a list of strings, not one string; wrap it: [prompt]")
    for layer in layers:
        if not 0 <= layer < model.n_layers:
            raise ActlabError(f"layer {layer} is outside 0..{model.n_layers - 1} for this model")
    tok = model.tokenizer
    prompt_ids = prompt_token_ids(tok, prompts)
    if any(not ids for ids in prompt_ids):
        raise ActlabError("a prompt has no tokens; drop empty prompts")
    budget = cfg.max_batch_tokens
    if budget is None and cfg.batch_size is None:
        budget = CUDA_GENERATION_BUDGET if model.device.type == "cuda" else CPU_GENERATION_BUDGET
    lengths = np.array([len(ids) + cfg.max_new_tokens for ids in prompt_ids])
    n = len(prompts)
    answers: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    pooled: dict[str, dict[int, torch.Tensor]] = {}
    for rows in plan_batches(lengths, cfg.batch_size, budget):
        batch = _Batch([prompt_ids[r] for r in rows], [first_row + int(r) for r in rows], tuple(layers),
                       tuple(poolings), cfg, steering)
        done = _generate_batch(model, batch)
        for k, r in enumerate(rows):
            answers[r], finished[r] = done.answers[k], done.finished[k]
        for spec, by_layer in done.pooled.items():
            for layer, values in by_layer.items():
                target = pooled.setdefault(spec, {}).setdefault(layer, torch.zeros(n, values.shape[-1]))
                target[torch.from_numpy(rows)] = values.cpu()
        if on_batch:
            on_batch(len(rows), sum(len(a) for a in done.answers))
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in answers]
    return Generations(list(prompts), prompt_ids, answers, texts, finished, pooled)


@dataclass
class _Batch:
    """One batch of prompts to answer: their token ids, their rows (which seed
    each row's sampling), what to capture, how to generate and steer."""

    ids: list[list[int]]
    rows: list[int]
    layers: tuple[int, ...]
    poolings: tuple[str, ...]
    cfg: GenerationConfig
    steering: Steering | None


@dataclass
class _Answered:
    answers: list[list[int]]  # per batch row, the answer's token ids (EOS left out)
    finished: list[bool]  # whether the row ended at its EOS
    pooled: dict[str, dict[int, torch.Tensor]]  # pooling -> layer -> (B, d_model)


def _generate_batch(model: "Model", batch: _Batch) -> _Answered:
    ids, cfg, layers, poolings, steering = batch.ids, batch.cfg, batch.layers, batch.poolings, batch.steering
    device, eos = model.device, eos_ids(model)
    padded = pad(ids, "left", model.pad_id, device)  # every prompt ends at the same column
    mask = padded.attention_mask  # (B, T), grows by one column per step
    generators = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + row) for row in batch.rows]
    answers: list[list[int]] = [[] for _ in ids]
    finished = [False] * len(ids)
    phase = ["prefill"]
    sums = _Capture(model, layers, poolings, len(ids)) if layers else None
    alive = torch.ones(len(ids), dtype=torch.bool, device=device)
    with ExitStack() as hooks, torch.inference_mode():
        if steering:  # first: captures see the steered output
            hooks.enter_context(steering.applied(model, phase))
        if sums:
            hooks.enter_context(sums.hooked(model))
            sums.prompt_mask = mask
        out = model.hf_model(**padded.inputs(), use_cache=True, logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1]  # logits: (B, vocab)
        last_position = padded.position_ids[:, -1]  # (B,)
        for step in range(cfg.max_new_tokens):
            token = _choose(logits, cfg, generators)  # (B,)
            is_eos = torch.tensor([int(t) in eos for t in token.tolist()], device=device)
            answer = alive & ~is_eos
            for i in torch.nonzero(answer).flatten().tolist():
                answers[i].append(int(token[i]))
            for i in torch.nonzero(alive & is_eos).flatten().tolist():
                finished[i] = True
            alive = answer
            if not bool(alive.any()) or (sums is None and step == cfg.max_new_tokens - 1):
                break
            # Feed the new tokens: their block outputs are answer-token states,
            # and the logits give the next step (unused after the last one).
            phase[0] = "decode"
            mask = torch.cat([mask, alive.long().unsqueeze(-1)], dim=1)
            last_position = last_position + 1
            if sums:
                sums.mode, sums.answer_rows, sums.step = "decode", alive, step
                sums.response_count += alive.float()
            out = model.hf_model(input_ids=token.unsqueeze(-1), attention_mask=mask,
                                 position_ids=last_position.unsqueeze(-1), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1]
    pooled = sums.pooled(torch.tensor([len(x) for x in ids], device=device, dtype=torch.float32)) if sums else {}
    return _Answered(answers, finished, pooled)


def _choose(logits: torch.Tensor, cfg: GenerationConfig, generators: list[torch.Generator]) -> torch.Tensor:
    """Greedy, or a sample per row from its own generator: from the whole
    softmax(logits / T), or (top_p < 1) from the smallest set of likeliest
    tokens whose mass reaches top_p. That set is looked for among the
    NUCLEUS_CANDIDATES likeliest tokens first (a top-k instead of sorting the
    whole vocabulary on every step); a row whose set reaches past them is
    sorted whole."""
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1).cpu()
    if cfg.top_p >= 1.0:
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)]).to(logits.device)
    top, order = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
    picks = []
    for p, ids, row, generator in zip(top, order, probs, generators):
        if float(p.sum()) <= cfg.top_p:
            p, ids = row.sort(descending=True)
        keep = p.cumsum(0) - p <= cfg.top_p  # every token until the mass before it passes top_p
        picks.append(ids[torch.multinomial(p * keep, 1, generator=generator)])
    return torch.cat(picks).to(logits.device)
