"""Loading SAEs: SAELens folders (v6 and pre-6.0 flat configs), EleutherAI
sparsify folders, and SAELens pretrained releases (`release/sae_id`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import ActlabError
from ..hooks import block_hook
from .sae import SAE, SAE_ARCHITECTURES, SAE_NORMALIZATIONS, SAEConfig, parameter_shapes

SAE_LENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"


def load_sae(path_or_id: str | Path, device: str | torch.device = "cpu",
             fold_decoder_norms: bool = False) -> SAE:
    """An SAE from a folder (SAELens or sparsify) or a SAELens `release/sae_id`."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        sae = _load_folder(path)
    elif str(path_or_id).count("/") >= 1 and not path.exists() and not str(path_or_id).startswith((".", "/")):
        sae = _load_release(str(path_or_id))
    else:
        raise ActlabError(f"SAE '{path_or_id}' not found: pass a SAELens or sparsify folder, "
                          "or a SAELens release as release/sae_id")
    sae = sae.to(device)
    return sae.fold_decoder_norms() if fold_decoder_norms else sae


def _load_folder(path: Path) -> SAE:
    cfg_path = path / "cfg.json"
    if not cfg_path.exists():
        raise ActlabError(f"{path} is not an SAE folder (no cfg.json)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ActlabError(f"{cfg_path}: not valid JSON ({exc.msg})") from None
    if (path / SAE_LENS_WEIGHTS).exists():
        weights = load_file(path / SAE_LENS_WEIGHTS)
        return build(sae_lens_config(raw, str(path)), weights, path)
    if (path / SPARSIFY_WEIGHTS).exists():
        cfg, weights = sparsify_config_and_weights(raw, load_file(path / SPARSIFY_WEIGHTS), path)
        return build(cfg, weights, path)
    raise ActlabError(f"{path} has cfg.json but neither {SAE_LENS_WEIGHTS} (SAELens) "
                      f"nor {SPARSIFY_WEIGHTS} (sparsify)")


def sae_lens_config(raw: dict, source: str) -> SAEConfig:
    """SAEConfig from a SAELens cfg.json: v6 (with `metadata`) or pre-6.0 flat."""
    meta = raw.get("metadata") or raw
    architecture = raw.get("architecture", "standard")
    activation = raw.get("activation_fn") or raw.get("activation_fn_str")
    k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
    if activation == "topk" and k is not None:
        architecture = "topk"
    normalize = raw.get("normalize_activations") or "none"
    if isinstance(normalize, bool):  # pre-6.0
        normalize = "expected_average_only_in" if normalize else "none"
    hook_name = meta.get("hook_name") or raw.get("hook_name") or raw.get("hook_point")
    kwargs = meta.get("model_from_pretrained_kwargs") or raw.get("model_from_pretrained_kwargs") or {}
    try:
        return check_config(SAEConfig(
            d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), architecture=architecture, hook_name=hook_name,
            apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
            normalize_activations=normalize, k=k,
            rescale_acts_by_decoder_norm=bool(raw.get("rescale_acts_by_decoder_norm", False)),
            scaling_factor=raw.get("norm_scaling_factor"),
            model_name=meta.get("model_name"), prepend_bos=bool(meta.get("prepend_bos", True)),
            center_writing_weights=bool(kwargs.get("center_writing_weights", False)),
            context_size=meta.get("context_size"), neuronpedia_id=meta.get("neuronpedia_id"),
            dtype=raw.get("dtype", "float32"), source=source, metadata=dict(meta)))
    except KeyError as exc:
        raise ActlabError(f"{source}: cfg.json lacks '{exc.args[0]}'") from None


def sparsify_config_and_weights(raw: dict, state: dict, path: Path) -> tuple[SAEConfig, dict]:
    """sparsify stores encoder.weight (d_sae, d_in), encoder.bias, W_dec (d_sae, d_in), b_dec
    and encodes topk(relu(encoder(x - b_dec)))."""
    folder = path.name
    if raw.get("transcode") or raw.get("skip_connection"):
        raise ActlabError(f"{path} is a sparsify transcoder (transcode / skip_connection in its cfg.json: it reads "
                          "a module's input and predicts its output); actlab loads SAEs, not transcoders yet: give "
                          "an SAE folder")
    match = re.search(r"layers[._](\d+)", folder)
    if folder == "embed_tokens":
        hook_name = "hook_embed"
    elif match and re.search(r"layers[._]\d+[._]mlp$", folder):  # an SAE of the MLP's output
        hook_name = block_hook(int(match.group(1)), "hook_mlp_out")
    elif match:
        hook_name = block_hook(int(match.group(1)))
    else:
        raise ActlabError(f"{path}: cannot tell the hook from the sparsify folder name "
                          "(expected layers.N, layers.N.mlp or embed_tokens)")
    try:
        d_in = int(raw["d_in"])
        d_sae = int(raw.get("num_latents") or d_in * raw["expansion_factor"])
        weights = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"],
                   "W_dec": state["W_dec"], "b_dec": state["b_dec"]}
        k = int(raw["k"])
    except KeyError as exc:
        raise ActlabError(f"{path}: not a sparsify SAE (missing '{exc.args[0]}')") from None
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", hook_name=hook_name, k=k,
                    apply_b_dec_to_input=True, model_name=raw.get("model"), source=str(path),
                    metadata=dict(raw))
    return check_config(cfg), weights


def check_config(cfg: SAEConfig) -> SAEConfig:
    if cfg.architecture not in SAE_ARCHITECTURES:
        raise ActlabError(f"{cfg.source}: architecture '{cfg.architecture}' is not supported; "
                          f"supported: {', '.join(SAE_ARCHITECTURES)}")
    if cfg.normalize_activations not in SAE_NORMALIZATIONS:
        raise ActlabError(f"{cfg.source}: normalize_activations '{cfg.normalize_activations}' "
                          f"is not supported; supported: {', '.join(SAE_NORMALIZATIONS)}")
    if cfg.architecture == "topk" and not cfg.k:
        raise ActlabError(f"{cfg.source}: a topk SAE needs k in its cfg.json")
    if not cfg.hook_name:
        raise ActlabError(f"{cfg.source}: cfg.json names no hook (hook_name)")
    return cfg


def build(cfg: SAEConfig, weights: dict[str, torch.Tensor], source) -> SAE:
    for name, shape in parameter_shapes(cfg.architecture, cfg.d_in, cfg.d_sae).items():
        if name not in weights:
            raise ActlabError(f"{source}: weights lack '{name}' needed by a {cfg.architecture} SAE")
        if tuple(weights[name].shape) != shape:
            raise ActlabError(f"{source}: '{name}' has shape {tuple(weights[name].shape)}, "
                              f"expected {shape} from d_in={cfg.d_in}, d_sae={cfg.d_sae}")
    return SAE(cfg, weights)


def _load_release(release_and_id: str) -> SAE:
    """Through sae-lens's own registry and download code."""
    try:
        from sae_lens import SAE as LensSAE
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise ActlabError("loading a release needs sae-lens: pip install sae-lens") from None
    directory = get_pretrained_saes_directory()
    release, sae_id = _split_release(release_and_id, directory)
    try:
        lens = LensSAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as exc:  # sae-lens raises ValueError, OSError, HTTP errors
        raise ActlabError(f"cannot load SAE {release}/{sae_id}: {str(exc).splitlines()[0]}") from None
    info = directory[release]
    model_kwargs = (info.config_overrides or {}).get("model_from_pretrained_kwargs")
    return from_sae_lens(lens, f"{release}/{sae_id}", (info.neuronpedia_id or {}).get(sae_id), model_kwargs)


def _split_release(text: str, directory: dict) -> tuple[str, str]:
    for release in sorted(directory, key=len, reverse=True):
        if text.startswith(release + "/"):
            sae_id = text[len(release) + 1:]
            known = directory[release].saes_map
            if sae_id not in known:
                shown = ", ".join(list(known)[:6])
                raise ActlabError(f"release '{release}' has no SAE '{sae_id}'; it has {shown}, ...")
            return release, sae_id
    raise ActlabError(f"unknown SAE release in '{text}': pass release/sae_id with a release from "
                      "sae_lens's pretrained_saes.yaml, or a local folder")


def from_sae_lens(lens, source: str, neuronpedia_id: str | None = None,
                  model_kwargs: dict | None = None) -> SAE:
    """Convert a loaded sae_lens SAE, with the weights as sae-lens prepared them;
    the registry's neuronpedia id and model kwargs override the config's."""
    raw = lens.cfg.to_dict()
    raw["metadata"] = dict(raw.get("metadata") or {})
    if neuronpedia_id:
        raw["metadata"]["neuronpedia_id"] = neuronpedia_id
    if model_kwargs:
        raw["metadata"]["model_from_pretrained_kwargs"] = model_kwargs
    weights = {name: tensor.detach().cpu() for name, tensor in lens.state_dict().items()}
    return build(sae_lens_config(raw, source), weights, source)
