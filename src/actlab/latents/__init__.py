"""Latent dashboards at corpus scale: one pass over a corpus cut into
windows, every SAE fused, each latent summarised on the device in bounded
memory (top windows, seeded interval samples, histograms, frequencies,
co-firing), plus its logit effect and decoder neighbours; then explanations
from a model, scored against a token-frequency baseline.

    latents_run(model, records, saes, out_dir, cfg) -> the run folder
    open_run(path) -> LatentsRun (.latents, .top, .intervals, .histogram, .logit_effects, ...)
    explain_latents(run, model, cfg) -> explanations scored by detection and fuzzing (actlab.explain_run
                                        loads the run's model)
"""

from .config import LatentsConfig
from .explain import ExplainConfig, explain_latents
from .run import LatentsRun, latents_run

__all__ = ["ExplainConfig", "LatentsConfig", "LatentsRun", "explain_latents", "latents_run"]
