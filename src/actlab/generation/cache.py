"""A static KV cache of slots, and the attention that reads it, supplied to
the Hugging Face modules through transformers' own extension points: a
`Cache` subclass (`SlotCache`) and a registered attention function
("actlab_slots"). Every architecture keeps its own modules, rotary or
absolute positions, soft-capping and sliding windows.

The cache holds keys and values for `slots` rows x `length` positions per
layer, allocated once (at the first forward, which gives heads, head width
and dtype). Position p of a row is that row's token p: each row has its own
positions (`position_ids`), so rows admitted at different times decode in
one batch. Two kinds of forward use it:

    prefill  new prompts, right-padded, into the slots `rows`: keys are
             written at positions 0..T-1 of those slots, and attention is
             causal over the prompts alone (a pad never precedes a real token);
             or, where the slots already hold a shared beginning
             (prefixes.py), the rest of each prompt at positions
             offset..offset+T-1, attention reading the slot from position 0
    decode   one token per slot at that slot's `positions`; attention reads
             positions 0..position of its own slot, within the window of a
             sliding-window layer

Positions past a row's last written token hold stale values (pads, an older
row's tokens); no query reads them before they are written.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

ATTENTION = "actlab_slots"
# SDPA's kernels on CUDA, without cuDNN's attention (torch's first choice on
# Hopper): cuDNN builds an execution plan for each new shape, about 7 ms of
# host time per layer whenever a prefill's padded length is new (measured on
# an H200; benchmarks/check_generation_cuda.py times the backends).
CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_ACTIVE: ContextVar["SlotCache | None"] = ContextVar("actlab_slot_cache", default=None)


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values: (slots, kv_heads, length, head_dim) each."""

    is_sliding = False

    def __init__(self, slots: int, length: int):
        super().__init__()
        self.slots, self.length = slots, length

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        heads, device = key_states.shape[1], key_states.device
        self.keys = torch.zeros(self.slots, heads, self.length, key_states.shape[-1], dtype=key_states.dtype,
                                device=device)
        self.values = torch.zeros(self.slots, heads, self.length, value_states.shape[-1],
                                  dtype=value_states.dtype, device=device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, plan: "SlotCache", *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's keys and values where `plan` (the SlotCache's
        prefill or decode plan) says; return what attention reads."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if plan.rows is not None and plan.offsets is None:  # prefill: (n, H, T, D) into positions 0..T-1
            t = key_states.shape[2]
            self.keys[plan.rows, :, :t] = key_states
            self.values[plan.rows, :, :t] = value_states
            return key_states, value_states
        if plan.rows is not None:  # (n, H, T, D) at offset..offset+T-1 (pads clamped to the last position)
            where = plan.prefill_positions(key_states.shape[2])  # (n, T)
            rows = plan.rows.unsqueeze(-1)  # (n, 1)
            self.keys[rows, :, where] = key_states.transpose(1, 2)  # indexed as (n, T, H, D)
            self.values[rows, :, where] = value_states.transpose(1, 2)
            return self.keys[plan.rows, :, :plan.kv_length], self.values[plan.rows, :, :plan.kv_length]
        # decode: (S, H, 1, D), each slot's token at its own position (indexing: 2.5x scatter_ on CPU)
        self.keys[plan.slot_index, :, plan.positions] = key_states[:, :, 0]
        self.values[plan.slot_index, :, plan.positions] = value_states[:, :, 0]
        return self.keys[:, :, :plan.kv_length], self.values[:, :, :plan.kv_length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length, 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return self.length


class SlotCache(Cache):
    """Static keys and values for `slots` rows of up to `length` tokens, at
    each row's own positions. The engine plans each forward (`plan_prefill`
    or `plan_decode`) before running it."""

    def __init__(self, n_layers: int, slots: int, length: int, device: torch.device):
        super().__init__(layers=[SlotLayer(slots, length) for _ in range(n_layers)])
        self.slots, self.length, self.device = slots, length, device
        self.rows: torch.Tensor | None = None  # prefill: (n,) the slots being filled
        self.offsets: torch.Tensor | None = None  # prefill on a shared beginning: (n,) its length per row
        self.positions: torch.Tensor | None = None  # decode: (S,) the position each slot's token is written at
        self.slot_index: torch.Tensor | None = None  # decode: (S,) 0..S-1
        self.kv_length = 0  # positions 0..kv_length-1 are read
        self._masks: dict = {}  # window (or ("additive", window)) -> mask

    def plan_prefill(self, rows: torch.Tensor, offsets: torch.Tensor | None, tokens: int) -> None:
        """Fill the slots `rows` with `tokens` positions each from position
        0, or from `offsets` (n,) on, reading positions 0..kv_length-1."""
        self.rows, self.offsets, self.positions, self._masks = rows, offsets, None, {}
        self.kv_length = tokens if offsets is None else min(self.length, int(offsets.max()) + tokens)

    def plan_decode(self, positions: torch.Tensor, kv_length: int) -> None:
        self.rows, self.offsets, self.positions, self.kv_length, self._masks = None, None, positions, kv_length, {}
        self.slot_index = torch.arange(len(positions), device=positions.device)  # (S,)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write this forward's keys and values into layer `layer_idx` as planned; return what attention reads."""
        return self.layers[layer_idx].update(key_states, value_states, self)

    def prefill_positions(self, tokens: int) -> torch.Tensor:
        """Where a prefill on shared beginnings writes its tokens: (n, T), a
        pad past the slot's end at its last position (never read before a
        decode step writes it)."""
        steps = torch.arange(tokens, device=self.device)
        return (self.offsets.unsqueeze(-1) + steps).clamp(max=self.length - 1)

    def mask(self, window: int | None, query_length: int, explicit: bool = False) -> torch.Tensor | None:
        """What each query may read, (S or 1, 1, queries, keys) bool; None for
        a plain causal prefill unless `explicit`."""
        if window is None and self.rows is not None and self.offsets is None and not explicit:
            return None
        if window not in self._masks:
            if self.offsets is not None:  # prefill on shared beginnings: each row's own positions
                q = self.prefill_positions(query_length).view(len(self.rows), 1, -1, 1)
                k = torch.arange(self.kv_length, device=self.device).view(1, 1, 1, -1)
            elif self.rows is not None:  # prefill: causal within the window
                q = torch.arange(query_length, device=self.device).view(1, 1, -1, 1)
                k = torch.arange(query_length, device=self.device).view(1, 1, 1, -1)
            else:
                q = self.positions.view(-1, 1, 1, 1)
                k = torch.arange(self.kv_length, device=self.device).view(1, 1, 1, -1)
            allowed = k <= q
            self._masks[window] = allowed if window is None else allowed & (k > q - window)
        return self._masks[window]

    def additive_mask(self, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """A decode step's mask as 0 / -inf, (S, 1, 1, keys) in the queries' dtype."""
        if ("additive", window) not in self._masks:
            allowed = self.mask(window, 1, explicit=True)
            bias = torch.zeros(allowed.shape, device=self.device, dtype=dtype).masked_fill_(~allowed, float("-inf"))
            self._masks["additive", window] = bias
        return self._masks["additive", window]

    def copy_prefix(self, source: int, targets: torch.Tensor, length: int) -> None:
        """Slot `source`'s first `length` positions into the slots `targets`."""
        for layer in self.layers:
            layer.keys[targets, :, :length] = layer.keys[source, :, :length].clone()
            layer.values[targets, :, :length] = layer.values[source, :, :length].clone()

    def keep(self, order: np.ndarray) -> None:
        """Keep the slots `order` (see keep_rows), in that order."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys, layer.values = keep_rows(layer.keys, order), keep_rows(layer.values, order)
            layer.slots = len(order)
        self.slots = len(order)


def keep_rows(rows: torch.Tensor, order: np.ndarray) -> torch.Tensor:
    """rows[order] for an order whose every entry is its own index or past
    len(order) (engine.compaction's): the moved rows are copied into place
    and the rest is a view of the first len(order) rows, so packing costs
    the rows that move, not the whole cache."""
    moved = np.flatnonzero(order != np.arange(len(order)))
    if len(moved):
        into, source = (torch.as_tensor(i, device=rows.device) for i in (moved, order[moved]))
        rows[into] = rows[source]
    return rows[:len(order)]


def cache_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Keys and values of one position in every layer: 2 x layers x KV heads x head width."""
    config = config.get_text_config()
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    width = getattr(config, "head_dim", None) or (getattr(config, "hidden_size", None) or config.n_embd) // heads
    return 2 * config.num_hidden_layers * kv_heads * width * torch.finfo(dtype).bits // 8


def slot_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, **kwargs):
    """transformers' attention-function signature, reading the active
    SlotCache's mask: query (B, H, q, D), key and value (B, H_kv, k, D) ->
    ((B, q, H, D), None). kwargs carry the module's `scaling`,
    `sliding_window` and `softcap` (dropout is never on: inference only).
    Soft-capped attention (Gemma-2) runs eagerly, as transformers' own
    eager function does; the rest through SDPA."""
    scaling, sliding_window, softcap = kwargs.get("scaling"), kwargs.get("sliding_window"), kwargs.get("softcap")
    cache = _ACTIVE.get()
    groups = query.shape[1] // key.shape[1]
    if softcap is None and cache.rows is None:
        return decode_attention(query, key, value, cache.additive_mask(sliding_window, query.dtype), scaling), None
    mask = cache.mask(sliding_window, query.shape[2])
    if softcap is None:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=mask is None,
                                             scale=scaling, enable_gqa=groups > 1)
        return out.transpose(1, 2).contiguous(), None
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    mask = cache.mask(sliding_window, query.shape[2], explicit=True)
    scores = query @ key.transpose(2, 3) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap  # (B, H, q, k)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return (weights @ value).transpose(1, 2).contiguous(), None


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                     scaling: float | None) -> torch.Tensor:
    """One query per slot: query (S, H, 1, D) read as (S, H_kv, groups, D),
    so each KV head's keys and values (S, H_kv, k, D) are read once for
    the query heads that share them (no repeat for grouped-query
    attention); bias (S, 1, 1, k) -> (S, 1, H, D)."""
    s, heads, _, width = query.shape
    grouped = query.view(s, key.shape[1], heads // key.shape[1], width)  # (S, H_kv, groups, D)
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=bias, scale=scaling)  # (S, H_kv, groups, D)
    return out.reshape(s, 1, heads, width)


AttentionInterface.register(ATTENTION, slot_attention_forward)


@contextmanager
def attending_through(hf_model: torch.nn.Module, cache: SlotCache) -> Iterator[None]:
    """Within it, the model's attention is the slot attention over `cache`
    (on CUDA through CUDA_SDPA_BACKENDS); the model's own attention
    implementation is restored on leaving."""
    config = hf_model.config
    previous = config._attn_implementation
    token = _ACTIVE.set(cache)
    config._attn_implementation = ATTENTION
    try:
        with ExitStack() as backends:
            if cache.device.type == "cuda":
                backends.enter_context(sdpa_kernel(CUDA_SDPA_BACKENDS))
            yield
    finally:
        config._attn_implementation = previous
        _ACTIVE.reset(token)
