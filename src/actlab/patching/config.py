"""What a patching sweep patches (components, layers, positions) and how
(PatchConfig), and the components it knows (a registry).

A component names a hook per layer and how it is cut: the whole
activation at one position (resid_pre, resid_post, attn_out, mlp_out;
resid_mid is read at a norm's input, where a rewrite would not reach the
residual stream), one head's output at one position (head: blocks.L.attn.hook_z, TransformerLens's
get_act_patch_attn_head_out_by_pos), or one head at every position
(head_all_pos, get_act_patch_attn_head_out_all_pos).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..engine import auto_token_budget
from ..errors import ActlabError
from ..hooks import HOOK_Z, block_hook
from ..registry import Registry


@dataclass(frozen=True)
class Component:
    """A patchable part of every block: its hook kind, whether it is cut by
    head, and whether one patch covers every position."""

    kind: str  # the block hook's kind, e.g. "hook_resid_pre"
    per_head: bool = False
    all_positions: bool = False

    def hook(self, layer: int) -> str:
        return block_hook(layer, self.kind)


COMPONENTS: Registry[Component] = Registry("patching component", order=lambda name, c: list(COMPONENTS).index(name))
COMPONENTS.register("resid_pre", Component("hook_resid_pre"))
COMPONENTS.register("resid_post", Component("hook_resid_post"))
COMPONENTS.register("attn_out", Component("hook_attn_out"))
COMPONENTS.register("mlp_out", Component("hook_mlp_out"))
COMPONENTS.register("head", Component(HOOK_Z, per_head=True))
COMPONENTS.register("head_all_pos", Component(HOOK_Z, per_head=True, all_positions=True))
DEFAULT_COMPONENTS = ["resid_pre", "attn_out", "mlp_out"]  # TransformerLens's get_act_patch_block_every
# method name -> effects(model, pairs, cfg, first_pair, base) -> the effects table (exact.py, attribution.py)
PATCH_METHODS: Registry[Callable] = Registry("patching method", order=lambda name, f: list(PATCH_METHODS).index(name))


@dataclass
class PatchConfig:
    """A patching sweep: which components at which layers and positions,
    by which method. Every (component, layer, position[, head]) is one
    patched variant of each pair's corrupted prompt."""

    components: list[str] = field(default_factory=lambda: list(DEFAULT_COMPONENTS), metadata={
        "comma": True, "flag": "--components",
        "help": "resid_pre, resid_post, attn_out, mlp_out, head (per position), head_all_pos; comma-separated."})
    layers: list[int] = field(default_factory=list, metadata={
        "comma": True, "help": "Blocks to patch, comma-separated (default: every block)."})
    positions: list[int] = field(default_factory=list, metadata={
        "comma": True, "help": "Token positions to patch, comma-separated; negative ones count from the end "
                               "(default: every position)."})
    heads: list[int] = field(default_factory=list, metadata={
        "comma": True, "help": "Heads of the head components, comma-separated (default: every head)."})
    method: list[str] = field(default_factory=lambda: ["exact"], metadata={
        "comma": True, "help": "exact (each variant's own forward), atp (attribution patching: one forward and "
                               "backward), ig (integrated gradients, EAP-IG's); comma-separated to compare them."})
    ig_steps: int = field(default=10, metadata={"help": "Integration steps of ig (EAP-IG's alpha = k / steps)."})
    max_batch_tokens: int | None = field(default=None, metadata={
        "help": "Padded tokens per forward (variants are its rows; default: the device's token budget)."})

    def __post_init__(self):
        self.components = list(dict.fromkeys(self.components))
        self.layers, self.positions = [int(x) for x in self.layers], [int(x) for x in self.positions]
        self.heads = [int(x) for x in self.heads]
        if not self.components:
            raise ActlabError("give at least one component", param="components")
        for name in self.components:
            COMPONENTS.pick(name, param="components")
        self.method = list(dict.fromkeys([self.method] if isinstance(self.method, str) else self.method))
        for method in self.method:
            PATCH_METHODS.pick(method, param="method")
        if not self.method:
            raise ActlabError("give at least one method", param="method")
        if self.ig_steps < 1:
            raise ActlabError(f"ig_steps must be at least 1, not {self.ig_steps}", param="ig_steps")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ActlabError(f"max_batch_tokens must be at least 1, not {self.max_batch_tokens}",
                              param="max_batch_tokens")

    def check(self, n_layers: int, n_heads: int) -> None:
        """One line for a layer or a head the model lacks."""
        for layer in self.layers:
            if not 0 <= layer < n_layers:
                raise ActlabError(f"layer {layer} is outside 0..{n_layers - 1} for this model", param="layers")
        for head in self.heads:
            if not 0 <= head < n_heads:
                raise ActlabError(f"head {head} is outside 0..{n_heads - 1} for this model", param="heads")

    def batch_tokens(self, model) -> int:
        """Padded tokens per forward: max_batch_tokens, else the device's budget."""
        return self.max_batch_tokens or auto_token_budget(model.device, model.d_model)

    def chosen_layers(self, n_layers: int) -> list[int]:
        return self.layers or list(range(n_layers))

    def chosen_heads(self, n_heads: int) -> list[int]:
        return self.heads or list(range(n_heads))

    def chosen_positions(self, length: int, pair_id: str) -> list[int]:
        """The positions (0..length-1) of a pair of `length` tokens."""
        if not self.positions:
            return list(range(length))
        picked = [p if p >= 0 else length + p for p in self.positions]
        bad = [p for p, q in zip(self.positions, picked) if not 0 <= q < length]
        if bad:
            raise ActlabError(f"position {bad[0]} is outside pair '{pair_id}''s {length} tokens", param="positions")
        return list(dict.fromkeys(picked))

    def settings(self) -> dict:
        """What the effects depend on (a run resumes only with these equal)."""
        return {"components": self.components, "layers": self.layers, "positions": self.positions,
                "heads": self.heads, "method": self.method,
                **({"ig_steps": self.ig_steps} if "ig" in self.method else {})}
