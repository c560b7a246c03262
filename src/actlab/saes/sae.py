"""Sparse autoencoders: one module for the standard, TopK, JumpReLU and gated
architectures, with SAELens's encode/decode semantics (formulas in
shared/notes/reference-facts.md, section 2). Architectures and input
normalisations are registries (SAE_ARCHITECTURES, SAE_NORMALIZATIONS):
register one to add it, see docs/architecture.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from ..engine.linears import PackedWeight, faster_path
from ..errors import ActlabError
from ..registry import Registry


@dataclass(frozen=True)
class Architecture:
    """How an SAE architecture encodes (normalised) x, and the latent-sized
    tensors it holds beyond the shared W_enc (d_in, d_sae), W_dec (d_sae,
    d_in) and b_dec (d_in,), named as SAELens names them."""

    latent_parameters: tuple[str, ...]
    encode: Callable[["SAE", torch.Tensor], torch.Tensor]  # (sae, normalised x (.., d_in)) -> f (.., d_sae)
    pre_bias: str = "b_enc"  # the bias of the encoder's pre-activation (gated: the gate's)


Undo = Callable[[torch.Tensor], torch.Tensor]  # x_hat in the normalised space -> in x's space
Normalization = Callable[["SAE", torch.Tensor], "tuple[torch.Tensor, Undo | None]"]
SAE_ARCHITECTURES: Registry[Architecture] = Registry("SAE architecture")
SAE_NORMALIZATIONS: Registry[Normalization] = Registry("SAE input normalisation")


def parameter_shapes(architecture: str, d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    """Every tensor an SAE of this architecture holds, with its shape."""
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    return shapes | {name: (d_sae,) for name in SAE_ARCHITECTURES.pick(architecture).latent_parameters}


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str
    hook_name: str
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    k: int | None = None  # topk
    rescale_acts_by_decoder_norm: bool = False  # topk: rank latents by h * |W_dec|
    scaling_factor: float | None = None  # expected_average_only_in: x -> x * factor
    model_name: str | None = None
    prepend_bos: bool = True
    center_writing_weights: bool = False  # trained on TransformerLens-centred LayerNorm weights
    context_size: int | None = None
    neuronpedia_id: str | None = None
    dtype: str = "float32"
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def settings(self) -> dict:
        """The config as a run's manifest records it: every field but metadata."""
        described = self.to_dict()
        described.pop("metadata")
        return described


class SAE(nn.Module):
    """`encode(x) -> f`, `decode(f) -> x_hat`, `reconstruct(x) -> (f, x_hat)`.

    Input normalisations that depend on x (constant_norm_rescale, layer_norm)
    are undone by `reconstruct`; `decode` alone returns the reconstruction in
    the normalised space, as SAELens does without a preceding encode.
    """

    def __init__(self, cfg: SAEConfig, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg = cfg
        for name in parameter_shapes(cfg.architecture, cfg.d_in, cfg.d_sae):
            self.register_buffer(name, weights[name].float().contiguous())
        self.packed_encoder = PackedWeight()  # W_enc.T prepacked, used where it is the faster CPU path

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    # -- encode / decode -------------------------------------------------------

    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, Undo | None]:
        return SAE_NORMALIZATIONS.pick(self.cfg.normalize_activations)(self, x)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's pre-activation of normalised x (gated: the gate)."""
        bias = getattr(self, SAE_ARCHITECTURES.pick(self.cfg.architecture).pre_bias)
        centered = x - self.b_dec * self.cfg.apply_b_dec_to_input  # (.., d_in)
        encoder = self.W_enc.T  # (d_sae, d_in)
        if self.packed_encoder.applies(centered, encoder) and faster_path(tuple(encoder.shape))[0] == "onednn":
            return self.packed_encoder.linear(centered, encoder, bias)
        return centered @ self.W_enc + bias

    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return SAE_ARCHITECTURES.pick(self.cfg.architecture).encode(self, x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        return self._encode_normalized(self._normalize(x)[0])

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            f = f / self.W_dec.norm(dim=-1)
        return f @ self.W_dec + self.b_dec

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.W_enc.dtype)
        normalized, undo = self._normalize(x)
        f = self._encode_normalized(normalized)
        x_hat = self.decode(f)
        return f, undo(x_hat) if undo is not None else x_hat

    def latent_change(self, x: torch.Tensor, latents: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """How the reconstruction of x (.., d_in) moves when its latents
        `latents` (K,) change by delta (.., K): delta @ W_dec[latents], through
        the decoder-norm rescaling and the undoing of x's normalisation.
        Latents (B, K) pick each row's own: x (B, T, d_in), delta (B, T, K)."""
        rows = self.W_dec[latents]  # (K, d_in)
        if self.cfg.rescale_acts_by_decoder_norm:
            rows = rows / self.W_dec.norm(dim=-1)[latents].unsqueeze(-1)
        change = delta.to(rows.dtype) @ rows  # (.., d_in)
        _, undo = self._normalize(x.to(self.W_enc.dtype))
        return change if undo is None else undo(change) - undo(torch.zeros_like(change))

    def latent_grad(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The gradient (.., d_sae) with respect to the latents of a function
        whose gradient with respect to x's reconstruction is `grad` (.., d_in):
        latent_change transposed (x (.., d_in) fixes the normalisation)."""
        with torch.enable_grad():
            delta = torch.zeros(*grad.shape[:-1], self.cfg.d_sae, dtype=self.W_dec.dtype, device=grad.device,
                                requires_grad=True)
            change = self.latent_change(x.detach(), torch.arange(self.cfg.d_sae, device=grad.device), delta)
            return torch.autograd.grad(change, delta, grad.to(change.dtype))[0]

    @torch.no_grad()
    def fold_decoder_norms(self) -> "SAE":
        """Scale decoder rows to unit norm and the encoder to match, so latent
        values measure their contribution to the reconstruction. TopK SAEs can
        only fold when they rank by h * |W_dec| (otherwise the top k change)."""
        if self.cfg.architecture == "topk" and not self.cfg.rescale_acts_by_decoder_norm:
            raise ActlabError("folding decoder norms would change which latents a TopK SAE keeps; "
                              "load it without fold_decoder_norms")
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-8)
        self.W_dec /= norms[:, None]
        self.W_enc *= norms[None, :]
        for name in ("b_enc", "threshold", "b_gate", "b_mag"):
            if hasattr(self, name):
                getattr(self, name).mul_(norms)
        if self.cfg.architecture == "topk":
            self.cfg.rescale_acts_by_decoder_norm = False
        return self

    def __repr__(self) -> str:
        return (f"SAE({self.cfg.architecture}, {self.cfg.hook_name}, {self.cfg.d_in} -> {self.cfg.d_sae}"
                f"{', k=' + str(self.cfg.k) if self.cfg.k else ''})")


# -- the built-in architectures and normalisations (SAELens's formulas) --------

def _standard(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(sae.pre_activations(x))


def _jumprelu(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    hidden = sae.pre_activations(x)
    return torch.relu(hidden) * (hidden > sae.threshold)


def _topk(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    hidden = sae.pre_activations(x)
    if sae.cfg.rescale_acts_by_decoder_norm:
        hidden = hidden * sae.W_dec.norm(dim=-1)
    values, indices = torch.topk(hidden, k=sae.cfg.k, dim=-1, sorted=False)
    return torch.zeros_like(hidden).scatter_(-1, indices, values.relu())


def _gated(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    sae_in = x - sae.b_dec * sae.cfg.apply_b_dec_to_input
    gate = (sae_in @ sae.W_enc + sae.b_gate) > 0
    magnitude = torch.relu(sae_in @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag)
    return gate * magnitude


SAE_ARCHITECTURES.register("standard", Architecture(("b_enc",), _standard))
SAE_ARCHITECTURES.register("topk", Architecture(("b_enc",), _topk))
SAE_ARCHITECTURES.register("jumprelu", Architecture(("b_enc", "threshold"), _jumprelu))
SAE_ARCHITECTURES.register("gated", Architecture(("b_gate", "b_mag", "r_mag"), _gated, pre_bias="b_gate"))


def _no_normalization(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, Undo | None]:
    return x, None


def _expected_average_only_in(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, Undo | None]:
    factor = sae.cfg.scaling_factor
    return (x, None) if factor is None else (x * factor, lambda x_hat: x_hat / factor)


def _constant_norm_rescale(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, Undo | None]:
    coeff = sae.cfg.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
    return x * coeff, lambda x_hat: x_hat / coeff


def _layer_norm(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, Undo | None]:
    mu = x.mean(dim=-1, keepdim=True)
    centred = x - mu
    std = centred.std(dim=-1, keepdim=True)
    return centred / (std + 1e-5), lambda x_hat: x_hat * std + mu


SAE_NORMALIZATIONS.register("none", _no_normalization)
SAE_NORMALIZATIONS.register("expected_average_only_in", _expected_average_only_in)
SAE_NORMALIZATIONS.register("constant_norm_rescale", _constant_norm_rescale)
SAE_NORMALIZATIONS.register("layer_norm", _layer_norm)
LATENT_PARAMETERS = {name: arch.latent_parameters for name, arch in SAE_ARCHITECTURES.items()}
ARCHITECTURES = tuple(SAE_ARCHITECTURES)
NORMALIZATIONS = tuple(SAE_NORMALIZATIONS)
