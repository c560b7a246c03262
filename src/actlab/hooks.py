"""TransformerLens-style hook names resolved to sites in Hugging Face modules.

A hook site is a module plus whether its input or its output is captured:
`blocks.L.hook_resid_pre` is the input of block L, `hook_resid_post` its
output, `hook_resid_mid` the input of the norm in front of the MLP, and so on.
Raw module paths (`model.layers.3`) capture that module's output.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
import torch.nn as nn

from .errors import ActlabError


@dataclass(frozen=True)
class HookSite:
    name: str
    module: nn.Module
    capture_input: bool  # True: the module's first input; False: its output


@dataclass(frozen=True)
class Layout:
    """Where one architecture family keeps its parts, relative to the base model."""

    embed: str
    layers: str
    # Each block-relative entry is (submodule, capture_input).
    attn_out: tuple[str, bool]
    mlp_out: tuple[str, bool]
    resid_mid: tuple[str, bool] | None
    final_norm: str = "norm"  # the norm in front of the LM head
    attn_z: tuple[str, bool] = ("self_attn.o_proj", True)  # the heads' outputs, before W_O (hook_z)


_LLAMA = Layout("embed_tokens", "layers", ("self_attn", False), ("mlp", False),
                ("post_attention_layernorm", True))
# Gemma-2/3 normalise after attention and after the MLP (TransformerLens's
# ln1_post/ln2_post sit before hook_attn_out/hook_mlp_out).
_GEMMA2 = Layout("embed_tokens", "layers", ("post_attention_layernorm", False),
                 ("post_feedforward_layernorm", False), ("pre_feedforward_layernorm", True))
_GPT2 = Layout("wte", "h", ("attn", False), ("mlp", False), ("ln_2", True), "ln_f", ("attn.c_proj", True))
_NEOX = Layout("embed_in", "layers", ("attention", False), ("mlp", False),
               ("post_attention_layernorm", True), "final_layer_norm", ("attention.dense", True))

LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    "gemma": _LLAMA, "gemma2": _GEMMA2, "gemma3_text": _GEMMA2,
    "gpt2": _GPT2, "gpt_neox": _NEOX,
}

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post"
                         r"|hook_attn_out|hook_mlp_out|attn\.hook_z)$")

HOOK_Z = "attn.hook_z"  # blocks.L.attn.hook_z: every head's output before W_O, (batch, tokens, heads x d_head)


FINAL_NORM = "ln_final.hook_normalized"  # the final norm's output, what the LM head reads


def block_hook(layer: int, kind: str = "hook_resid_post") -> str:
    """The TransformerLens name of a block's hook: block_hook(7) is
    'blocks.7.hook_resid_post', block L's output (HF hidden_states[L + 1])."""
    return f"blocks.{layer}.{kind}"


BLOCK_ORDER = ("hook_resid_pre", HOOK_Z, "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


def forward_order(name: str) -> tuple[int, int]:
    """Where a hook fires in a forward pass, as a sort key: hook_embed
    first, then each block's hooks in the order its computation reaches
    them (a parallel-residual block's attention before its MLP), the final
    norm last."""
    if name == "hook_embed":
        return (-1, 0)
    if name == FINAL_NORM:
        return (1 << 30, 0)
    match = _BLOCK_HOOK.match(name)
    if not match:
        raise ActlabError(f"'{name}' is not a hook actlab names (e.g. blocks.7.hook_resid_post)")
    return (int(match.group(1)), BLOCK_ORDER.index(match.group(2)))


def layout_for(config) -> Layout:
    model_type = config.model_type
    if model_type not in LAYOUTS:
        raise ActlabError(
            f"architecture '{model_type}' has no hook-name map; supported: "
            f"{', '.join(sorted(LAYOUTS))}; or pass raw module paths such as 'model.layers.3'")
    layout = LAYOUTS[model_type]
    if model_type == "gpt_neox" and config.use_parallel_residual:
        # Parallel attention and MLP both read resid_pre: there is no resid_mid.
        layout = Layout(layout.embed, layout.layers, layout.attn_out, layout.mlp_out, None, layout.final_norm,
                        layout.attn_z)
    return layout


def hook_names(hf_model: nn.Module) -> list[str]:
    """Every TransformerLens-style hook name valid for this model."""
    config = hf_model.config.get_text_config()
    layout = layout_for(config)
    kinds = ["hook_resid_pre"] + (["hook_resid_mid"] if layout.resid_mid else [])
    kinds += ["hook_resid_post", "hook_attn_out", "hook_mlp_out", HOOK_Z]
    names = ["hook_embed"]
    for layer in range(config.num_hidden_layers):
        names += [f"blocks.{layer}.{kind}" for kind in kinds]
    return names + [FINAL_NORM]


def resolve(hf_model: nn.Module, name: str) -> HookSite:
    """Map a hook name or raw module path to the module that produces it."""
    if name == FINAL_NORM:
        return final_norm_site(hf_model)
    base = hf_model.base_model
    match = _BLOCK_HOOK.match(name)
    if name == "hook_embed" or match:
        layout = layout_for(hf_model.config.get_text_config())
        if name == "hook_embed":
            return HookSite(name, base.get_submodule(layout.embed), False)
        layer, kind = int(match.group(1)), match.group(2)
        blocks = base.get_submodule(layout.layers)
        if layer >= len(blocks):
            raise ActlabError(f"hook '{name}': the model has {len(blocks)} blocks (0-{len(blocks) - 1})")
        block = blocks[layer]
        if kind in ("hook_resid_pre", "hook_resid_post"):
            return HookSite(name, block, kind == "hook_resid_pre")
        part = {"hook_attn_out": layout.attn_out, "hook_mlp_out": layout.mlp_out,
                "hook_resid_mid": layout.resid_mid, HOOK_Z: layout.attn_z}[kind]
        if part is None:
            raise ActlabError(f"hook '{name}' does not exist in this architecture "
                              "(parallel attention and MLP); use hook_resid_pre or hook_resid_post")
        return HookSite(name, block.get_submodule(part[0]), part[1])
    try:
        return HookSite(name, hf_model.get_submodule(name), False)
    except AttributeError:
        pass
    try:
        valid = hook_names(hf_model)
    except ActlabError:
        raise ActlabError(f"'{name}' is not a module of this model; pass a module path "
                          "such as 'model.layers.3' (see `actlab models MODEL`)") from None
    shown = valid[:7] + ["..."] + valid[-5:] if len(valid) > 14 else valid
    raise ActlabError(f"unknown hook '{name}'; valid names: {', '.join(shown)} "
                      "(all of them: `actlab models MODEL`), or a module path such as "
                      f"'{hf_model.base_model_prefix}.{layout_for(hf_model.config.get_text_config()).layers}.0'")


def head_dim(config) -> int:
    """The width of one attention head (hook_z is heads x this wide)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def hook_width(config, name: str) -> int | None:
    """The width of a TransformerLens-style hook's activation (None: a module path)."""
    if name.endswith(HOOK_Z) and _BLOCK_HOOK.match(name):
        return config.num_attention_heads * head_dim(config)
    if name in ("hook_embed", FINAL_NORM) or _BLOCK_HOOK.match(name):
        return config.hidden_size
    return None


def final_norm_site(hf_model: nn.Module) -> HookSite:
    """The output of the final norm: what the LM head reads."""
    layout = layout_for(hf_model.config.get_text_config())
    return HookSite(FINAL_NORM, hf_model.base_model.get_submodule(layout.final_norm), False)


def lm_logits(hf_model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on final-norm outputs (N, d) -> (N, vocab), with the final
    logit soft-capping of Gemma-2/3 where the config has it."""
    logits = hf_model.get_output_embeddings()(hidden)
    cap = getattr(hf_model.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


# -- running code at hook sites -------------------------------------------------

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _register(site: HookSite, fn: HookFn, rewrite: bool):
    """The one place a PyTorch hook is registered. fn sees the site's hidden
    state (batch, tokens, width); with rewrite, what it returns replaces it."""
    if site.capture_input:
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = fn(hidden)
            if not rewrite:
                return None
            if args:
                return (new,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}
        return site.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden)
        if not rewrite:
            return None
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
    return site.module.register_forward_hook(post_hook)


@contextmanager
def _hooked(hf_model: nn.Module, fns: Mapping[str | HookSite, HookFn], rewrite: bool) -> Iterator[None]:
    handles = []
    try:
        for where, fn in fns.items():
            site = where if isinstance(where, HookSite) else resolve(hf_model, where)
            handles.append(_register(site, fn, rewrite))
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture(hf_model: nn.Module, fns: Mapping[str | HookSite, Callable[[torch.Tensor], None]]):
    """Context manager: within it, fns[name](hidden) runs whenever that hook
    fires (a name, a module path, or a resolved HookSite); it may raise to stop
    the forward pass (see actlab.engine.StopForward)."""
    return _hooked(hf_model, fns, rewrite=False)


def replace(hf_model: nn.Module, fns: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]):
    """Context manager: within it, the activation at each hook is replaced by
    fns[name](hidden), so the rest of the forward pass sees the new value."""
    for name in fns:
        if isinstance(name, str) and name.endswith("hook_resid_mid"):
            # captured at the MLP norm's input: rewriting it would not change the residual
            raise ActlabError("replacing hook_resid_mid is not supported; use hook_resid_pre / "
                              "hook_resid_post / hook_attn_out / hook_mlp_out")
    return _hooked(hf_model, fns, rewrite=True)
