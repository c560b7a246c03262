"""Peer libraries run the way their users batch: fixed-size batches in input
order (no length sorting), right padding, stopped at the deepest hook.

TransformerLens's model is built in-process from the HF weights (no hub)."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from actlab.hooks import block_hook, layout_for
from actlab.models import Model
from actlab.tokens import pad

_TL_CONVERTERS = {"llama": "convert_llama_weights", "gpt2": "convert_gpt2_weights",
                  "gpt_neox": "convert_neox_weights", "gemma2": "convert_gemma_weights",
                  "gemma": "convert_gemma_weights", "mistral": "convert_mistral_weights",
                  "qwen2": "convert_qwen2_weights"}


def padded_batches(model: Model, texts: Sequence[str], batch_size: int):
    """(input_ids, attention_mask, last_index) per batch, right padded, input order."""
    for lo in range(0, len(texts), batch_size):
        padded = pad([model.tokenizer(t)["input_ids"] for t in texts[lo:lo + batch_size]], "right", model.pad_id,
                     model.device)
        yield padded.input_ids, padded.attention_mask, (padded.lengths - 1).to(model.device)


def hooked_transformer(model: Model, processed: bool = False):
    """A TransformerLens HookedTransformer with the model's weights, built in
    process. processed=True applies TransformerLens's default weight processing
    (fold_ln, center_writing_weights, ...), as `from_pretrained` does."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with tempfile.TemporaryDirectory() as folder:
        # A folder name without "llama" in it: TransformerLens guesses the
        # architecture from such names and then reads no config.
        config = model.hf_model.config.to_dict()
        config["architectures"] = [type(model.hf_model).__name__]  # unset on in-process models
        (Path(folder) / "config.json").write_text(json.dumps(config))
        cfg = HookedTransformerConfig(**loading.convert_hf_model_config(folder),
                                      device=str(model.device), dtype=model.hf_model.dtype)
    with warnings.catch_warnings():  # deprecated in 3.x for TransformerBridge; SAELens uses it
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=True)
    state = getattr(loading, _TL_CONVERTERS[model.architecture])(model.hf_model, cfg)
    tl.load_and_process_state_dict(state, fold_ln=processed, center_writing_weights=processed,
                                   center_unembed=processed, fold_value_biases=processed,
                                   refactor_factored_attn_matrices=False)
    return tl.eval()


def transformer_lens_runner(model: Model) -> Callable:
    """A function(texts, layers, batch_size) -> {layer: (n, d)} using HookedTransformer."""
    tl = hooked_transformer(model)

    def run(texts, layers, batch_size):
        names = [block_hook(layer) for layer in layers]
        out = {layer: [] for layer in layers}
        with torch.inference_mode():
            for ids, mask, last in padded_batches(model, texts, batch_size):
                _, cache = tl.run_with_cache(ids, attention_mask=mask, names_filter=names,
                                             stop_at_layer=max(layers) + 1)
                rows = torch.arange(len(ids), device=ids.device)
                for layer, name in zip(layers, names):
                    out[layer].append(cache[name][rows, last].float().cpu())
        return {layer: torch.cat(v) for layer, v in out.items()}

    return run


def nnsight_runner(model: Model) -> Callable:
    from nnsight import LanguageModel

    padding_side = model.tokenizer.padding_side
    with warnings.catch_warnings():  # LanguageModel is deprecated, but takes a loaded model
        warnings.simplefilter("ignore")
        lm = LanguageModel(model.hf_model, tokenizer=model.tokenizer)
    model.tokenizer.padding_side = padding_side  # nnsight switches it to left

    def run(texts, layers, batch_size):
        out = {layer: [] for layer in layers}
        with torch.inference_mode():
            for ids, mask, last in padded_batches(model, texts, batch_size):
                saved = []  # an outer list: names bound inside a stopped trace are lost
                with lm.trace({"input_ids": ids, "attention_mask": mask}) as tracer:
                    for layer in layers:
                        saved.append(_nnsight_block(lm, model, layer).output.save())
                    tracer.stop()
                rows = torch.arange(len(ids), device=ids.device)
                for layer, value in zip(layers, saved):
                    hidden = value[0] if isinstance(value, tuple) else value
                    out[layer].append(hidden[rows, last].float().cpu())
        return {layer: torch.cat(v) for layer, v in out.items()}

    return run


def _nnsight_block(lm, model: Model, layer: int):
    layout = layout_for(model.config)
    base = getattr(lm, model.hf_model.base_model_prefix)
    return getattr(base, layout.layers)[layer]
