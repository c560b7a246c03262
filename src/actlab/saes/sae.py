"""Sparse autoencoders: one module for the standard, TopK, JumpReLU and gated
architectures, with SAELens's encode/decode semantics (formulas in
shared/notes/reference-facts.md, section 2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import ActlabError

NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
# The tensors of each architecture, as SAELens names them; latent-sized ones
# beyond the shared W_enc (d_in, d_sae), W_dec (d_sae, d_in) and b_dec (d_in,).
LATENT_PARAMETERS = {"standard": ("b_enc",), "topk": ("b_enc",), "jumprelu": ("b_enc", "threshold"),
                     "gated": ("b_gate", "b_mag", "r_mag")}
ARCHITECTURES = tuple(LATENT_PARAMETERS)


def parameter_shapes(architecture: str, d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    """Every tensor an SAE of this architecture holds, with its shape."""
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    return shapes | {name: (d_sae,) for name in LATENT_PARAMETERS[architecture]}


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

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    # -- input normalisation -------------------------------------------------

    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = self.cfg.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
            return x * coeff, ("scale", coeff)
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)
            return centred / (std + 1e-5), ("affine", std, mu)
        if mode == "expected_average_only_in" and self.cfg.scaling_factor is not None:
            return x * self.cfg.scaling_factor, ("scale", torch.tensor(self.cfg.scaling_factor))
        return x, None

    @staticmethod
    def _denormalize(x_hat: torch.Tensor, state: tuple | None) -> torch.Tensor:
        if state is None:
            return x_hat
        if state[0] == "scale":
            return x_hat / state[1]
        return x_hat * state[1] + state[2]

    # -- encode / decode -------------------------------------------------------

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's pre-activation of normalised x (gated: the gate)."""
        x = x - self.b_dec * self.cfg.apply_b_dec_to_input
        if self.cfg.architecture == "gated":
            return x @ self.W_enc + self.b_gate
        return x @ self.W_enc + self.b_enc

    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.cfg.architecture
        if arch == "gated":
            sae_in = x - self.b_dec * self.cfg.apply_b_dec_to_input
            gate = (sae_in @ self.W_enc + self.b_gate) > 0
            magnitude = torch.relu(sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
            return gate * magnitude
        hidden = self.pre_activations(x)
        if arch == "standard":
            return torch.relu(hidden)
        if arch == "jumprelu":
            return torch.relu(hidden) * (hidden > self.threshold)
        if self.cfg.rescale_acts_by_decoder_norm:
            hidden = hidden * self.W_dec.norm(dim=-1)
        values, indices = torch.topk(hidden, k=self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(hidden).scatter_(-1, indices, values.relu())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        return self._encode_normalized(self._normalize(x)[0])

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            f = f / self.W_dec.norm(dim=-1)
        return f @ self.W_dec + self.b_dec

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.W_enc.dtype)
        normalized, state = self._normalize(x)
        f = self._encode_normalized(normalized)
        return f, self._denormalize(self.decode(f), state)

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
