"""Latent dashboards at corpus scale: one pass over a corpus cut into
windows, every SAE fused, each latent summarised on the device in bounded
memory (top windows, seeded interval samples, histograms, frequencies,
co-firing), plus its logit effect and decoder neighbours.

    latents_run(model, records, saes, out_dir, cfg) -> the run folder
    open_run(path) -> LatentsRun (.latents, .top, .intervals, .histogram, .logit_effects, ...)
"""

from .config import LatentsConfig
from .run import LatentsRun, latents_run

__all__ = ["LatentsConfig", "LatentsRun", "latents_run"]
