"""Per-text SAE metrics, batched on the device.

For one text at one layer: x is the residual (at the last token, or averaged
over the continuation), f = SAE(x) its code, x_hat the reconstruction. The
geometry treats the active latents as points (their decoder rows r_i) with
masses w_i = f_i / sum(f): centroid c = sum w_i r_i, and the weighted
covariance ("inertia tensor") T = sum w_i (r_i - c)(r_i - c)^T, whose rank is
at most L0 - 1. T = Y^T Y with Y = diag(sqrt(w)) (R - c), so its nonzero
eigenvalues are those of the L0 x L0 Gram matrix G = Y Y^T, and the top
eigenvector of T is Y^T u1 / |Y^T u1| for G's top eigenvector u1: nothing of
size d_model x d_model is ever formed.

Degenerate cases: L0 = 0 leaves every code metric but l0 / energy / l2 /
reconstruction undefined (NaN); L0 = 1 has a centroid but no spread, so the
eigenvalue metrics are NaN; L0 = 2 has one direction (l2 = l3 = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SHAPES = ("Spherical", "Oblate", "Prolate", "Triaxial", "undefined")
TOP_JACCARD = 10  # latents compared between the clean and the noisy code
TOP_ENTROPY = 50  # magnitudes in the top-k entropy
EIGEN_RANK_TOL = 1e-9  # an eigenvalue below tol * l1 counts as zero


@dataclass
class ActiveSet:
    """Each row's active latents, largest first, padded to the batch's largest L0."""

    values: torch.Tensor  # (B, L) activations, 0 where padded
    index: torch.Tensor  # (B, L) latent ids (arbitrary where padded)
    mask: torch.Tensor  # (B, L) True on active latents

    @property
    def l0(self) -> torch.Tensor:
        return self.mask.sum(-1)


def active_set(f: torch.Tensor) -> ActiveSet:
    """f (B, d_sae) >= 0 -> its active latents (value > 0), largest first."""
    width = max(int((f > 0).sum(-1).max()) if len(f) else 0, 1)
    values, index = f.topk(width, dim=-1)  # (B, L)
    mask = values > 0
    return ActiveSet(values * mask, index, mask)


def gini(active: ActiveSet) -> torch.Tensor:
    """Gini of the active magnitudes sorted ascending, x_(1) <= ... <= x_(n):
    2 sum_i i x_(i) / (n sum x) - (n + 1) / n; NaN when L0 = 0."""
    ascending = active.values.flip(-1)  # padding zeros come first
    width = ascending.shape[-1]
    n = active.l0.to(ascending.dtype)
    rank = torch.arange(1, width + 1, device=ascending.device, dtype=ascending.dtype) - (width - n)[:, None]
    total = ascending.sum(-1)
    value = 2 * (rank * ascending).sum(-1) / (n * total) - (n + 1) / n
    return torch.where(n > 0, value, torch.nan)


def shannon(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of rows of non-negative weights summing to 1 (zeros skipped)."""
    return -(p * torch.where(p > 0, p.log(), 0.0)).sum(-1)


def top_entropy(active: ActiveSet, k: int = TOP_ENTROPY) -> torch.Tensor:
    """Entropy of the normalised top-k magnitudes; NaN when L0 = 0."""
    top = active.values[:, :k]
    total = top.sum(-1, keepdim=True)
    return torch.where(total[:, 0] > 0, shannon(top / total.clamp_min(1e-30)), torch.nan)


@dataclass
class Geometry:
    eigenvalues: torch.Tensor  # (B, L) of the inertia tensor, descending, >= 0
    centroid: torch.Tensor  # (B, d)
    axis: torch.Tensor  # (B, d) unit top eigenvector (sign arbitrary); NaN when there is no spread


def geometry(active: ActiveSet, w_dec: torch.Tensor) -> Geometry:
    """Centroid, inertia-tensor spectrum and principal axis, from the L0 x L0 Gram matrix."""
    total = active.values.sum(-1, keepdim=True)
    w = (active.values / total.clamp_min(1e-30)).double()  # (B, L) masses, 0 where padded
    points = w_dec[active.index].double()  # (B, L, d)
    centroid = torch.einsum("bl,bld->bd", w, points)  # (B, d)
    y = w.sqrt()[..., None] * (points - centroid[:, None])  # (B, L, d); padded rows are 0
    gram = y @ y.transpose(1, 2)  # (B, L, L)
    values, vectors = torch.linalg.eigh(gram)  # ascending
    values, vectors = values.flip(-1).clamp_min(0), vectors.flip(-1)
    axis = torch.einsum("bld,bl->bd", y, vectors[..., 0])  # (B, d)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    spread = values[:, 0] > 0
    axis = torch.where(spread[:, None], axis, torch.nan)
    centroid = torch.where(active.l0[:, None] > 0, centroid, torch.nan)
    return Geometry(values, centroid, axis)


def spectrum_metrics(values: torch.Tensor) -> dict[str, torch.Tensor]:
    """From descending eigenvalues (B, L): sphericity sqrt(l3/l1), elongation
    sqrt(l2/l1), eigenvalue entropy (raw, and over log of the rank),
    participation ratio; NaN where l1 = 0."""
    padded = torch.nn.functional.pad(values, (0, max(0, 3 - values.shape[-1])))
    l1, l2, l3 = padded[:, 0], padded[:, 1], padded[:, 2]
    spread = l1 > 0
    safe = torch.where(spread, l1, 1.0)
    total = values.sum(-1)
    entropy = shannon(values / torch.where(spread, total, 1.0)[:, None])
    rank = (values > EIGEN_RANK_TOL * l1[:, None]).sum(-1)
    log_rank = torch.where(rank > 1, rank.double().log(), torch.nan)
    nan = torch.tensor(torch.nan, dtype=values.dtype, device=values.device)
    return {"sphericity": torch.where(spread, (l3 / safe).sqrt(), nan),
            "elongation": torch.where(spread, (l2 / safe).sqrt(), nan),
            "eigen_entropy": torch.where(spread, entropy, nan),
            "eigen_entropy_norm": torch.where(spread, entropy / log_rank, nan),
            "participation_ratio": torch.where(spread, total ** 2 / (values ** 2).sum(-1).clamp_min(1e-300), nan)}


def shape_class(sphericity: float, elongation: float) -> str:
    """The seed's classes (b/a = elongation, c/a = sphericity)."""
    if math.isnan(sphericity) or math.isnan(elongation):
        return "undefined"
    if elongation > 0.9 and sphericity > 0.9:
        return "Spherical"
    if elongation > 0.8 and sphericity < 0.6:
        return "Oblate"
    if elongation < 0.6 and sphericity < 0.6:
        return "Prolate"
    return "Triaxial"


def angle_deg(a: torch.Tensor, b: torch.Tensor, unsigned: bool = False) -> torch.Tensor:
    """Row-wise angle between vectors in degrees (unsigned: between lines, 0-90)."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    cos = cos.abs() if unsigned else cos
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def top_indices(f: torch.Tensor, k: int = TOP_JACCARD) -> torch.Tensor:
    """(..., k) ids of the k largest active latents; -1 where fewer are active."""
    values, index = f.topk(min(k, f.shape[-1]), dim=-1)
    return torch.where(values > 0, index, -1)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jaccard overlap of id sets given as (..., k) tensors padded with -1;
    NaN when both are empty."""
    valid_a, valid_b = a >= 0, b >= 0
    both = ((a[..., :, None] == b[..., None, :]) & valid_a[..., :, None] & valid_b[..., None, :]).sum((-1, -2))
    union = valid_a.sum(-1) + valid_b.sum(-1) - both
    return torch.where(union > 0, both / union.clamp_min(1), torch.nan)


def text_metrics(x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor, w_dec: torch.Tensor,
                 noisy_f: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], Geometry]:
    """Every per-text metric for rows x (B, d), codes f (B, d_sae),
    reconstructions x_hat (B, d); noisy_f (B, K, d_sae): codes of K noisy
    copies of each x, for the stability metric. Returns float64 columns and
    the geometry (centroid, axis) that pair metrics compare."""
    active = active_set(f)
    geo = geometry(active, w_dec)
    error = (x - x_hat).double().norm(dim=-1)
    out = {"l0": active.l0.double(), "recon_error": error, "recon_rel_error": error / x.double().norm(dim=-1),
           "gini": gini(active).double(), "energy": f.double().sum(-1), "l2": f.double().norm(dim=-1),
           **spectrum_metrics(geo.eigenvalues),
           "misalignment_deg": angle_deg(geo.centroid, geo.axis, unsigned=True),
           "top50_entropy": top_entropy(active).double()}
    if noisy_f is not None:
        out["stability_jaccard"] = jaccard(top_indices(f)[:, None], top_indices(noisy_f)).double().mean(-1)
    return out, geo


def noise(x: torch.Tensor, generators: list[torch.Generator], draws: int, scale: float,
          relative: bool = True) -> torch.Tensor:
    """(B, K, d) Gaussian noise, row i from its own generator (so batching never
    changes a draw): per dimension sigma = scale * |x| / sqrt(d) when relative
    (the noise's norm is about scale * |x|), else sigma = scale."""
    d = x.shape[-1]
    z = torch.stack([torch.randn(draws, d, generator=g) for g in generators]).to(x.device, x.dtype)
    sigma = scale * x.norm(dim=-1) / math.sqrt(d) if relative else torch.full((len(x),), scale, device=x.device)
    return z * sigma.to(x.dtype)[:, None, None]
