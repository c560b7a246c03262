"""The generation loop actlab ran before actlab.generation, kept as the
generate benchmark's baseline (c): static batches (prompts sorted by length,
left-padded under a token budget of prompt + new tokens), the Hugging Face
forward with its dynamic cache (grown by concatenation every step), and three
host syncs per step (`tolist`, `nonzero`, `any`). Greedy, no capture: the
loop as a plain generation runs it."""

from __future__ import annotations

import numpy as np
import torch

from actlab.engine import plan_batches
from actlab.generation import cache_keyword, eos_ids, prompt_token_ids
from actlab.models import Model
from actlab.tokens import pad

STATIC_BUDGET = 4096  # its CPU default: (prompt + new tokens) x rows per batch


def static_loop_generate(model: Model, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy answers (token ids, EOS left out) in input order."""
    ids = prompt_token_ids(model.tokenizer, prompts)
    answers: list[list[int]] = [[] for _ in prompts]
    lengths = np.array([len(x) + max_new_tokens for x in ids])
    for rows in plan_batches(lengths, None, STATIC_BUDGET):
        for row, answer in zip(rows, _batch(model, [ids[r] for r in rows], max_new_tokens)):
            answers[row] = answer
    return answers


def _batch(model: Model, ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    eos, device = eos_ids(model), model.device
    padded = pad(ids, "left", model.pad_id, device)
    mask = padded.attention_mask  # (B, T), one column more per step
    answers: list[list[int]] = [[] for _ in ids]
    alive = torch.ones(len(ids), dtype=torch.bool, device=device)
    keyword = cache_keyword(model.hf_model)
    with torch.inference_mode():
        out = model.hf_model(**padded.inputs(), use_cache=True, logits_to_keep=1)
        cache, logits = getattr(out, keyword), out.logits[:, -1]
        position = padded.position_ids[:, -1]
        for step in range(max_new_tokens):
            token = logits.argmax(dim=-1)
            is_eos = torch.tensor([int(t) in eos for t in token.tolist()], device=device)
            answer = alive & ~is_eos
            for i in torch.nonzero(answer).flatten().tolist():
                answers[i].append(int(token[i]))
            alive = answer
            if not bool(alive.any()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, alive.long().unsqueeze(-1)], dim=1)
            position = position + 1
            out = model.hf_model(input_ids=token.unsqueeze(-1), attention_mask=mask,
                                 position_ids=position.unsqueeze(-1), use_cache=True, **{keyword: cache})
            cache, logits = getattr(out, keyword), out.logits[:, -1]
    return answers
