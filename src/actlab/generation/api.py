"""actlab.generate: answers to prompts, with pooled block outputs captured
and steering applied per row, from the continuous-batching engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from ..engine import OnBatch
from ..errors import ActlabError
from ..interventions import per_row
from .config import GenerationConfig, Steering
from .engine import Request, SlotDecoder
from .taps import Capture, parse_generation_pooling

if TYPE_CHECKING:
    from ..models import Model


@dataclass
class Generations:
    """Answers in input order, with what was captured while generating."""

    prompts: list[str]  # as given (actlab.render_prompt applies a chat template)
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]  # EOS left out
    answers: list[str]
    finished: list[bool]  # ended at EOS (else at max_new_tokens)
    pooled: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # pooling -> layer -> (n, d)
    projections: dict[int, list[np.ndarray]] = field(default_factory=dict)  # layer -> per row (answer tokens[, k])
    stats: dict[str, int] = field(default_factory=dict)  # slots, decode_steps, prefill_forwards, shared_prefix_tokens

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class RunSlice:
    """Where a call's prompts sit in a larger run: row i of the call is row
    first_row + i of the run (its sampling counter), and each time rows end
    on_batch(rows, answer tokens) is called."""

    first_row: int = 0
    on_batch: OnBatch | None = None


def render_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """The chat template when the tokenizer has one, else the plain texts."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{system}\n\n{user}\n" if system else f"{user}\n"


def prompt_token_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompts: a chat template already wrote its special
    tokens, so none are added then."""
    add = not getattr(tokenizer, "chat_template", None)
    return [tokenizer(p, add_special_tokens=add)["input_ids"] for p in prompts]


GENERATE_OPTIONS = ("interventions", "directions", "within")


def generate(model: "Model", prompts: Sequence[str], layers: Sequence[int] = (),
             poolings: Sequence[str] = ("response_mean",), cfg: GenerationConfig | None = None,
             steering: Steering | Sequence[Steering | None] | None = None, **options) -> Generations:
    """An answer to every prompt, given to the model as it is (see
    render_prompt), with pooled block outputs at `layers` (layer L: block L's
    output). `steering`: one Steering for every prompt, or one per prompt
    (None: unsteered). Rows come back in input order.

    options: `interventions=` (actlab.Add, Set, Ablate, ProjectOut, Cap,
    EditLatents at any hook): one or a list for every prompt, or one list
    (or None) per prompt, applied after the row's steering, at positions
    "all", "prompt", "answer", "last" (the prompt's last token) or prompt
    token indices; each row decodes with its own edits inside the one
    continuous batch. `directions={layer: v}` (v (d,) or (k, d)) also returns, for
    every answer token, its block output's projection h . v / |v| onto each
    direction (Generations.projections[layer][row]: (answer tokens,) or
    (answer tokens, k)); `within=RunSlice(...)` places the call in a run."""
    unknown = sorted(set(options) - set(GENERATE_OPTIONS))
    if unknown:
        raise ActlabError(f"generate() has no option '{unknown[0]}'; its options are "
                          f"{', '.join(GENERATE_OPTIONS)}", param=unknown[0])
    cfg, within = cfg or GenerationConfig(), options.get("within") or RunSlice()
    directions = _directions(options.get("directions") or {}, model)
    if isinstance(prompts, str):
        raise ActlabError("prompts must be a list of strings, not one string; wrap it: [prompt]")
    if not prompts:
        return Generations([], [], [], [], [], {}, {layer: [] for layer in directions})
    for layer in layers:
        if not 0 <= layer < model.n_layers:
            raise ActlabError(f"layer {layer} is outside 0..{model.n_layers - 1} for this model", param="layers")
    for spec in poolings:
        parse_generation_pooling(spec)
    steerings = _per_prompt(steering, len(prompts), model)
    edits = [((s,) if s is not None else ()) + row
             for s, row in zip(steerings, per_row(options.get("interventions"), len(prompts)))]
    prompt_ids = prompt_token_ids(model.tokenizer, prompts)
    empty = [i for i, ids in enumerate(prompt_ids) if not ids]
    if empty:
        raise ActlabError(f"prompt {empty[0]} has no tokens; drop empty prompts")
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    if context and len(prompt_ids[longest]) + cfg.max_new_tokens > context:
        raise ActlabError(f"prompt {longest} has {len(prompt_ids[longest])} tokens; with max_new_tokens "
                          f"{cfg.max_new_tokens} that passes the model's context of {context}; shorten it or lower "
                          "--max-new-tokens", param="max_new_tokens")
    requests = [Request(ids, within.first_row + i, row) for i, (ids, row) in enumerate(zip(prompt_ids, edits))]
    capture = Capture(tuple(layers), tuple(poolings), directions)
    decoder = SlotDecoder(model, requests, capture, cfg)
    answers = decoder.run(within.on_batch)
    pooled = {spec: {layer: torch.stack([a.pooled[spec][layer] for a in answers]) for layer in layers}
              for spec in poolings} if layers else {}
    texts = [model.tokenizer.decode(a.ids, skip_special_tokens=True) for a in answers]
    single = {layer for layer, v in (options.get("directions") or {}).items() if torch.as_tensor(v).dim() == 1}
    projections = {layer: [a.projections[layer][:, 0] if layer in single else a.projections[layer] for a in answers]
                   for layer in directions}
    return Generations(list(prompts), prompt_ids, [a.ids for a in answers], texts, [a.finished for a in answers],
                       pooled, projections, decoder.stats)


def _directions(directions: Mapping[int, torch.Tensor], model: "Model") -> dict[int, torch.Tensor]:
    """{layer: (k, d)} float32, checked against the model: one-line errors for
    a layer it lacks, a width not its own, or a zero direction."""
    out = {}
    for layer, v in directions.items():
        v = torch.atleast_2d(torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v).detach().float())
        if not 0 <= layer < model.n_layers:
            raise ActlabError(f"direction layer {layer} is outside 0..{model.n_layers - 1} for this model",
                              param="directions")
        if v.dim() != 2 or v.shape[-1] != model.d_model:
            raise ActlabError(f"the layer-{layer} directions have shape {tuple(v.shape)}; give (d_model,) or "
                              f"(k, d_model) with d_model {model.d_model}", param="directions")
        if bool((v.norm(dim=-1) == 0).any()):
            raise ActlabError(f"a layer-{layer} direction is all zeros; it has no projection", param="directions")
        out[int(layer)] = v
    return out


def _per_prompt(steering, n: int, model: "Model") -> list[Steering | None]:
    """One steering (or None) per prompt, each checked against the model."""
    if steering is None or isinstance(steering, Steering):
        steerings = [steering] * n
    else:
        steerings = list(steering)
        if len(steerings) != n:
            raise ActlabError(f"{len(steerings)} steerings for {n} prompts; give one per prompt (None: unsteered)",
                              param="steering")
    for s in {id(s): s for s in steerings if s is not None}.values():
        s.check_model(model.n_layers, model.d_model)
    return steerings
