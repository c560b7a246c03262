"""Pipelines: the end-to-end functions over the run kinds (a run, its
analyses, its report), between the run kinds and the command line. Each is a
thin sequence of calls into the layers below; the CLI calls one of these or
one run kind's function."""

from .circuit_report import build_circuit_report
from .contrast import build_contrast_report, contrast
from .feature_report import ReportConfig, analyze_run, build_report
from .latents_report import BrowserConfig, build_latent_browser, collect_latent_browser, explain_run
from .patch_report import build_patch_report
from .trait_report import TraitReportConfig, build_trait_report
from .traits import TraitPipelineConfig, draw_monitor, draw_steering, run_trait

__all__ = ["BrowserConfig", "ReportConfig", "TraitPipelineConfig", "TraitReportConfig", "analyze_run",
           "build_circuit_report", "build_contrast_report", "build_latent_browser", "build_patch_report",
           "build_report", "build_trait_report", "collect_latent_browser", "contrast", "draw_monitor",
           "draw_steering", "explain_run", "run_trait"]
