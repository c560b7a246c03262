"""Continuous batching over a static slot cache.

A fixed number of slots decode together, one token per slot per step. Every
`sync_every` steps the host looks once: rows that have ended (their EOS, or
max_new_tokens) hand back their answer and pooled activations, and the next
waiting prompts are prefilled into the freed slots (several in one forward;
a beginning that several share once, prefixes.py).
Between looks nothing waits on the host: the answer tokens, their count, the
alive mask, EOS and the capture sums live on the device, and a row that has
ended keeps stepping without effect (its tokens past the end are never read),
so neither `sync_every` nor the slot count changes an answer. When no prompt
is waiting, the live rows are packed into fewer slots at each look (only the
rows past the new end move, into the holes below it): a step computes live
rows only. On CUDA each step is a CUDA graph's replay (graphs.py): the live
rows are then packed into a slot bucket, and attention reads the whole cache.

Per slot: the token fed next (`last`) sits at `positions`; `count` answer
tokens are in `tokens[:count]`; `live` says that `last` is an answer token
still to be fed (to capture its state or to choose the next one). A row's
j-th choice samples with the counter (seed, row, j).
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..engine import OnBatch, auto_token_budget
from ..hooks import lm_logits
from ..interventions import Intervention
from .cache import SlotCache, attending_through, cache_bytes_per_token, keep_rows
from .config import GenerationConfig
from .edits import Prefill, SlotEdits, prompt_key
from .graphs import DecodeGraphs, slot_bucket
from .prefixes import prefix_groups
from .sampling import choose_tokens
from .taps import Capture, Phase, Taps

if TYPE_CHECKING:
    from ..models import Model


@dataclass
class Request:
    """One prompt to answer: its token ids, its sampling row, its
    interventions (actlab.interventions; a Steering is one)."""

    ids: list[int]
    row: int
    interventions: tuple[Intervention, ...] = ()


@dataclass
class Answer:
    ids: list[int]  # the answer's token ids, EOS left out
    finished: bool  # ended at its EOS (else at max_new_tokens)
    pooled: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # pooling -> layer -> (d,)
    projections: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> (len(ids), k)


class SlotDecoder:
    """Answers requests by continuous batching; see the module docstring."""

    def __init__(self, model: "Model", requests: Sequence[Request], capture: Capture, cfg: GenerationConfig):
        self.model, self.requests, self.cfg = model, list(requests), cfg
        longest = max(len(r.ids) for r in self.requests)
        self.length = longest + cfg.max_new_tokens  # positions per slot
        token_bytes = cache_bytes_per_token(model.hf_model.config, model.hf_model.dtype)
        self.slots = cfg.slot_count(longest, len(self.requests), model.device, token_bytes)
        device, s = model.device, self.slots
        self.capturing = bool(capture.layers or capture.directions)  # the last answer token's state is wanted
        self.cache = SlotCache(model.n_layers, s, self.length, device)
        self.edits = SlotEdits(model, [r.interventions for r in self.requests],
                               [len(r.ids) for r in self.requests], s)
        self.taps = Taps(model, capture, s, cfg.max_new_tokens + 1)
        self.eos = torch.tensor(sorted(eos_ids(model)) or [-1], device=device)
        self.occupant = np.full(s, -1)  # host: the request in each slot, -1 when free
        self.position_host = np.zeros(s, dtype=np.int64)  # host copy of positions (no sync needed)
        self.steps_left = np.zeros(s, dtype=np.int64)  # host: decode steps after which a slot's row has surely ended
        self.positions = torch.zeros(s, dtype=torch.long, device=device)  # (S,)
        self.last = torch.zeros(s, dtype=torch.long, device=device)  # (S,)
        self.live = torch.zeros(s, dtype=torch.bool, device=device)  # (S,)
        self.count = torch.zeros(s, dtype=torch.long, device=device)  # (S,)
        self.ended_at_eos = torch.zeros(s, dtype=torch.bool, device=device)  # (S,)
        self.sample_rows = torch.zeros(s, dtype=torch.long, device=device)  # (S,)
        self.tokens = torch.zeros(s, cfg.max_new_tokens + 1, dtype=torch.long, device=device)  # (S, new + 1)
        self.answers: list[Answer | None] = [None] * len(self.requests)
        self.graphs = decode_graphs(device, cfg)
        self.stats = {"slots": s, "decode_steps": 0, "prefill_forwards": 0, "shared_prefix_tokens": 0}
        self._cache_keyword = cache_keyword(model.base_model)

    def run(self, on_batch: OnBatch | None = None) -> list[Answer]:
        waiting = deque(sorted(range(len(self.requests)), key=lambda i: -len(self.requests[i].ids)))
        with torch.inference_mode(), attending_through(self.model.hf_model, self.cache), \
                self.edits.hooked(), self.taps.hooked(self.model):
            self._admit(waiting, np.arange(self.slots))
            while (self.occupant >= 0).any():
                for _ in range(min(self.cfg.sync_every, int(self.steps_left[self.occupant >= 0].max()))):
                    self._step()
                free = self._collect(on_batch)
                if waiting:
                    self._admit(waiting, free)
                else:
                    self._pack()
        if self.graphs is not None:
            self.stats["cuda_graphs"] = len(self.graphs.graphs)
        return self.answers

    # -- the forward passes ------------------------------------------------------

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The final norm's output: ids and positions (B, T) -> (B, T, d)."""
        out = self.model.base_model(input_ids=ids, position_ids=positions, use_cache=True,
                                    **{self._cache_keyword: self.cache})
        return out.last_hidden_state

    def _admit(self, waiting: deque, free: np.ndarray) -> None:
        """Prefill the next waiting prompts into the free slots: a beginning
        that several share once (prefixes.py), then the rest of each."""
        taken = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
        if not taken:
            return
        slots, requests = free[:len(taken)], [self.requests[i] for i in taken]
        self._start(taken, slots)
        offsets = np.zeros(len(taken), dtype=np.int64)
        groups = prefix_groups([r.ids for r in requests], [prompt_key(r.interventions, len(r.ids)) for r in requests]) \
            if self.cfg.share_prefixes else []
        if groups:
            leaders = [g.members[0] for g in groups]
            self._fill([requests[k].ids[:g.length] for k, g in zip(leaders, groups)], slots[leaders],
                       np.zeros(len(groups), dtype=np.int64), record=False)
            for g in groups:
                targets = torch.as_tensor(slots[g.members[1:]], device=self.model.device)
                self.cache.copy_prefix(int(slots[g.members[0]]), targets, g.length)
                self.taps.copy_prompt(int(slots[g.members[0]]), targets)
                offsets[g.members] = g.length
            self.stats["shared_prefix_tokens"] += sum(g.length * (len(g.members) - 1) for g in groups)
        self._fill([r.ids[o:] for r, o in zip(requests, offsets)], slots, offsets, record=True)

    def _start(self, indices: list[int], slots: np.ndarray) -> None:
        """Requests `indices` take `slots`: positions, counters, interventions, zeroed sums."""
        device, requests = self.model.device, [self.requests[i] for i in indices]
        rows, lengths = torch.as_tensor(slots, device=device), [len(r.ids) for r in requests]
        self.occupant[slots], self.position_host[slots] = indices, lengths
        self.steps_left[slots] = self.cfg.max_new_tokens - 1 + self.capturing  # + 1: the last token's state
        self.edits.admit(rows, [r.interventions for r in requests], lengths)
        self.taps.admit(rows)
        self.positions[rows] = torch.tensor(lengths, device=device)
        self.count[rows] = 0
        self.ended_at_eos[rows] = False
        self.sample_rows[rows] = torch.tensor([r.row for r in requests], device=device)

    def _fill(self, parts: list[list[int]], slots: np.ndarray, offsets: np.ndarray, record: bool) -> None:
        """Prefill token lists `parts` into `slots` from `offsets` on, as many
        per forward as the extraction engine's token budget holds, widest
        first; with `record`, each part ends its prompt and its last logits
        choose the row's first answer token."""
        budget = auto_token_budget(self.model.device, self.model.d_model)
        order = sorted(range(len(parts)), key=lambda k: -len(parts[k]))
        start = 0
        while start < len(order):
            n = max(1, min(len(order) - start, budget // len(parts[order[start]])))
            chunk = order[start:start + n]
            self._prefill([parts[k] for k in chunk], slots[chunk], offsets[chunk], record)
            start += n

    def _prefill(self, parts: list[list[int]], slots: np.ndarray, offsets: np.ndarray, record: bool) -> None:
        device = self.model.device
        lengths = [len(p) for p in parts]
        ids = torch.full((len(parts), max(lengths)), self.model.pad_id, dtype=torch.long)
        for k, part in enumerate(parts):
            ids[k, :len(part)] = torch.tensor(part)
        ids = ids.to(device)  # (n, T), right-padded
        rows, lengths_t = torch.as_tensor(slots, device=device), torch.tensor(lengths, device=device)
        shifted = torch.as_tensor(offsets, device=device) if offsets.any() else None
        self.stats["prefill_forwards"] += 1
        self.cache.plan_prefill(rows, shifted, ids.shape[1])
        self.taps.phase = Phase(rows=rows, lengths=lengths_t)
        self.edits.prefill = Prefill(rows, offsets, np.array(lengths))
        positions = torch.arange(ids.shape[1], device=device).expand_as(ids)  # (n, T)
        if shifted is not None:
            positions = self.cache.prefill_positions(ids.shape[1])
        hidden = self._forward(ids, positions)  # (n, T, d)
        if record:
            logits = lm_logits(self.model.hf_model, hidden[torch.arange(len(parts)), lengths_t - 1])  # (n, V)
            self._record(rows, logits, torch.ones(len(parts), dtype=torch.bool, device=device))

    def _step(self) -> None:
        """One decode step of every slot (a graph's replay where one is kept)."""
        if self.graphs is None:
            self._decode(int(self.position_host.max()) + 1)
        else:
            self.graphs.step(len(self.occupant), lambda: self._decode(self.length))
        self.position_host = np.minimum(self.position_host + 1, self.length - 1)
        self.steps_left -= 1
        self.stats["decode_steps"] += 1

    def _decode(self, kv_length: int) -> None:
        """Feed `last`, choose the next token, reading cache positions
        0..kv_length-1: device work only, on buffers updated in place."""
        self.cache.plan_decode(self.positions, kv_length)
        self.taps.phase = Phase(answering=self.live, index=self.count - 1)
        self.edits.prefill = None
        hidden = self._forward(self.last.unsqueeze(-1), self.positions.unsqueeze(-1))  # (S, 1, d)
        logits = lm_logits(self.model.hf_model, hidden[:, 0])  # (S, V)
        choosing = self.live & (self.count < self.cfg.max_new_tokens)
        self._record(torch.arange(len(self.occupant), device=self.positions.device), logits, choosing)
        self.positions.add_(1).clamp_(max=self.length - 1)

    def _record(self, slots: torch.Tensor, logits: torch.Tensor, choosing: torch.Tensor) -> None:
        """The next token of `slots` (where `choosing`): logits (m, V), choosing (m,) bool."""
        count = self.count[slots]  # (m,)
        token = choose_tokens(logits, self.cfg, self.sample_rows[slots], count)  # (m,)
        is_eos = torch.isin(token, self.eos)
        accepted = choosing & ~is_eos
        self.tokens[slots, count] = token  # past the answer's end unless accepted: never read
        self.ended_at_eos[slots] = self.ended_at_eos[slots] | (choosing & is_eos)
        count = count + accepted
        self.count[slots], self.last[slots] = count, token
        self.live[slots] = accepted & ((count < self.cfg.max_new_tokens) | self.capturing)

    # -- the host's look ---------------------------------------------------------

    def _collect(self, on_batch: OnBatch | None) -> np.ndarray:
        """Hand back the rows that have ended; return the slots now free."""
        live, count, at_eos = (t.cpu().numpy() for t in (self.live, self.count, self.ended_at_eos))
        ended = np.flatnonzero(~live & (self.occupant >= 0))
        if len(ended):
            index = torch.as_tensor(ended, device=self.positions.device)
            tokens = self.tokens[index].cpu().numpy()
            pooled = self.taps.pooled(index) if self.capturing else {}
            projected = self.taps.projected(index)
            for k, slot in enumerate(ended):
                per_row = {spec: {layer: v[k] for layer, v in by_layer.items()} for spec, by_layer in pooled.items()}
                values = {layer: v[k, :count[slot]].numpy() for layer, v in projected.items()}
                self.answers[self.occupant[slot]] = Answer(tokens[k, :count[slot]].tolist(), bool(at_eos[slot]),
                                                           per_row, values)
            if on_batch:
                on_batch(len(ended), int(count[ended].sum()))
            self.occupant[ended] = -1
        return np.flatnonzero(self.occupant < 0)

    def _pack(self) -> None:
        """Pack the live rows into as few slots as they fill (a slot bucket for graphs)."""
        live = self.occupant >= 0
        size = int(live.sum()) if self.graphs is None else slot_bucket(int(live.sum()))
        if 0 < live.sum() and size < len(live):
            self._keep(compaction(live, size))

    def _keep(self, order: np.ndarray) -> None:
        """Pack the live rows into the first len(order) slots: slot i takes old slot order[i]."""
        self.cache.keep(order)
        self.edits.keep(order)
        self.taps.keep(order)
        for name in ("positions", "last", "live", "count", "ended_at_eos", "sample_rows", "tokens"):
            setattr(self, name, keep_rows(getattr(self, name), order))
        self.occupant, self.position_host = self.occupant[order], self.position_host[order]
        self.steps_left = self.steps_left[order]


def compaction(live: np.ndarray, size: int) -> np.ndarray:
    """The old slot of each of `size` packed slots (at least the live count),
    for the live mask (S,) bool: the live rows at or past `size` fill the
    first holes below it, in order, and every other slot stays where it is
    (see cache.keep_rows)."""
    slots = np.flatnonzero(live)
    order = np.arange(size)
    movers = slots[slots >= size]
    order[np.flatnonzero(~live[:size])[:len(movers)]] = movers
    return order


def decode_graphs(device: torch.device, cfg: GenerationConfig) -> DecodeGraphs | None:
    """CUDA graphs of the decode step on CUDA unless cfg.cuda_graphs is off."""
    return DecodeGraphs(capture=True) if device.type == "cuda" and cfg.cuda_graphs else None


def eos_ids(model: "Model") -> set[int]:
    """The generation config's EOS ids and the tokenizer's."""
    ids = model.hf_model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    return ids


def cache_keyword(base_model: torch.nn.Module) -> str:
    """The name the model's forward takes its cache under, and its output
    holds it under ("cache" in transformers >= 5.2x, "past_key_values" before)."""
    parameters = inspect.signature(base_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
