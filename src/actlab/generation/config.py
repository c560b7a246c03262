"""How answers are generated (GenerationConfig) and how a row is steered
(Steering): the two things a caller of actlab.generate describes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ActlabError
from ..hooks import block_hook
from ..interventions import Add

# (longest prompt + new tokens) x slots by default. On CPU a decode step streams every weight from memory,
# so more rows per step pay: the default model measured 80 / 107 / 130 / 139 new tokens/s at 32 / 64 / 128 / 256 slots,
# and 256 chat prompts x 128 new tokens 113 new tokens/s in 197 slots (a second wave of 59 rows) against 125 in 256.
CPU_GENERATION_BUDGET = 65536
CUDA_GENERATION_BUDGET = 262144
CPU_CACHE_BYTES = 2 * 2 ** 30  # and the default slots' KV cache at most this on CPU ...
CUDA_CACHE_SHARE = 0.4  # ... or this share of the free memory on a GPU
STEERING_PLACES = ("all", "answer")


@dataclass(frozen=True)
class GenerationConfig:
    """How answers are generated. Row i of a call samples from a counter of
    (seed, i, step) alone, so slots, sync_every and admission order never
    change an answer. Frozen: a default (TRAIT_SAMPLING) is shared safely."""

    max_new_tokens: int = field(default=64, metadata={"help": "New tokens per answer at most."})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1: the whole softmax)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    slots: int | None = field(default=None, metadata={
        "help": "Rows decoded together; a finished row's slot takes the next prompt (default: token budget)."})
    sync_every: int = field(default=8, metadata={
        "help": "Decode steps between looks by the host (to admit prompts into finished rows' slots)."})
    max_batch_tokens: int | None = field(default=None, metadata={
        "help": "(longest prompt + new tokens) x slots, the default slot count's budget."})
    share_prefixes: bool = field(default=True, metadata={
        "help": "Prefill a beginning that prompts admitted together share (chat template, system prompt) once."})
    cuda_graphs: bool = field(default=True, metadata={
        "help": "On CUDA, replay each decode step as a CUDA graph (one per slot count)."})

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ActlabError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}", param="max_new_tokens")
        if self.temperature < 0:
            raise ActlabError(f"temperature must be >= 0 (0: greedy), not {self.temperature}", param="temperature")
        if not 0 < self.top_p <= 1:
            raise ActlabError(f"top_p must be in (0, 1], not {self.top_p}", param="top_p")
        for name in ("slots", "sync_every", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ActlabError(f"{name} must be at least 1, not {value}", param=name)

    def slot_count(self, longest: int, n_prompts: int, device: torch.device, token_bytes: int) -> int:
        """Slots for prompts of at most `longest` tokens: cfg.slots, else as
        many rows of (longest + max_new_tokens) as the token budget holds,
        their KV cache (token_bytes per position) within the device's share."""
        if self.slots is not None:
            return max(1, min(n_prompts, self.slots))
        budget = self.max_batch_tokens
        if budget is None:
            cuda = device.type == "cuda"
            room = CUDA_CACHE_SHARE * torch.cuda.mem_get_info(device)[0] if cuda else CPU_CACHE_BYTES
            budget = min(CUDA_GENERATION_BUDGET if cuda else CPU_GENERATION_BUDGET, int(room // token_bytes))
        return max(1, min(n_prompts, budget // (longest + self.max_new_tokens)))

    def batching(self) -> dict:
        """The fields that decide speed and memory only, never an answer."""
        return {"slots": self.slots, "sync_every": self.sync_every, "max_batch_tokens": self.max_batch_tokens,
                "share_prefixes": self.share_prefixes, "cuda_graphs": self.cuda_graphs}

    def settings(self) -> dict:
        """The fields the answers depend on (a run resumes only with them equal)."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}


class Steering(Add):
    """Add coeff * vector to block `layer`'s output (blocks.L.hook_resid_post)
    at every position ("all", the prompt included) or at the answer's
    positions only ("answer"): the intervention actlab.Add at that hook.
    Captured activations at or after that block include the addition."""

    def __init__(self, layer: int, vector, coeff: float, where: str = "all"):
        if where not in STEERING_PLACES:
            raise ActlabError(f"steering where='{where}': use 'all' or 'answer'", param="where")
        vector = torch.as_tensor(vector).detach()
        if vector.dim() != 1:
            raise ActlabError(f"a steering vector is one direction (d_model,), not shape {tuple(vector.shape)}",
                              param="vector")
        super().__init__(block_hook(layer), vector, coeff, positions=where)
        object.__setattr__(self, "layer", int(layer))

    @property
    def where(self) -> str:
        return self.positions

    def check_model(self, n_layers: int, d_model: int) -> None:
        """One-line errors for a layer the model lacks or a vector of another width."""
        if not 0 <= self.layer < n_layers:
            raise ActlabError(f"steering layer {self.layer} is outside 0..{n_layers - 1} for this model",
                              param="layer")
        if self.vector.shape != (d_model,):
            raise ActlabError(f"steering vector has width {self.vector.shape[0]}, the model's width is {d_model}",
                              param="vector")

    @property
    def delta(self) -> torch.Tensor:
        """What is added: coeff * vector, (d_model,) float32."""
        return self.coeff * self.vector.float()

    def __repr__(self) -> str:
        return f"Steering(layer={self.layer}, coeff={self.coeff:g}, where={self.where!r})"
