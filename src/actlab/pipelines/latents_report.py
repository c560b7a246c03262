"""A latents run's browser (`actlab latents report`): token-level example
values from one more pass of the run's model and SAEs over the example
windows (kept in the run), then actlab.report writes the folder; and its
explanations (`actlab latents explain`) with the run's model loaded."""

from __future__ import annotations

from pathlib import Path

from ..engine.batches import Progress
from ..errors import ActlabError
from ..latents import LatentsRun
from ..latents.examples import example_activations
from ..latents.explain import ExplainConfig, ExplainResult, explain_latents
from ..models import Model
from ..report.latents import BrowserConfig, write_latent_browser
from ..runs import open_run
from ..storage import run_path


def build_latent_browser(run: str | Path, out: str | Path | None = None, model=None, cfg: BrowserConfig | None = None,
                         use_model: bool = True, saes: dict | None = None, device: str = "auto") -> Path:
    """Write the latent browser of a latents run into `out` (default
    RUN/browser) and return its index.html. The model (a Model, a name, or
    by default the run's own) and the SAEs (default: reloaded from their
    sources) give each example's token-level values; use_model=False marks
    only each example's maximum."""
    path = run_path(run)
    opened = latents_run_at(path, "`actlab report` reads features runs")
    examples = None
    if use_model:
        if not isinstance(model, Model):
            try:
                model = opened.model(model, device)
            except ActlabError as exc:
                raise ActlabError(f"{exc}, or report without it (--no-model)", param=exc.param) from None
        examples = example_activations(opened, model, saes)
    return write_latent_browser(opened, run_path(out) if out is not None else path / "browser", examples, cfg)


def explain_run(run: str | Path, model=None, cfg: ExplainConfig | None = None, saes: dict | None = None,
                device: str = "auto", progress: Progress | None = None) -> ExplainResult:
    """actlab.latents.explain.explain_latents on a run folder, with its model
    (a Model, a name, or by default the run's own, its weights checked)."""
    opened = latents_run_at(run_path(run), "explain reads latents runs")
    if not isinstance(model, Model):
        model = opened.model(model, device)
    return explain_latents(opened, model, cfg, saes, progress)


def latents_run_at(path, other: str) -> LatentsRun:
    opened = open_run(path)
    if not isinstance(opened, LatentsRun):
        raise ActlabError(f"{path} is not a latents run (actlab latents); {other}", param="run")
    return opened

