"""`actlab latents`: every latent of every SAE summarised from one pass over
a corpus (a thin shell over actlab.latents_run); its subcommands work on
such a run."""

from pathlib import Path

import typer

from ..errors import ActlabError
from ..inputs import FieldNames
from ..latents import LatentsConfig, LatentsRun, latents_run
from ..report.latents import BrowserConfig
from ..runs.ray import RayConfig
from .common import (
    Bar,
    ModelOptions,
    PageOptions,
    RunModelOptions,
    RunOptions,
    SAEOptions,
    out,
    print_session,
    print_table,
    with_options,
)

app = typer.Typer(no_args_is_help=False, help="Latent dashboards: one pass over a corpus, then explain and browse.")

PASS_INPUT = RunOptions(input=None, out=None)  # required unless a subcommand runs (checked below)


@app.callback(invoke_without_command=True)
@with_options(run=PASS_INPUT, fields=FieldNames, model=ModelOptions, saes=SAEOptions, cfg=LatentsConfig, ray=RayConfig,
              exclude=("fields.id", "fields.label", "fields.category"))
def latents_command(ctx: typer.Context, run: RunOptions, fields: FieldNames, model: ModelOptions, saes: SAEOptions,
                    cfg: LatentsConfig, ray: RayConfig) -> None:
    """Summarise every latent of every --sae over a corpus cut into --context-token windows, in one pass:
    top windows, interval samples, histograms, frequencies, co-firing, logit effects, decoder neighbours
    (resumable, 1024 texts per shard by default; --ray: on a Ray cluster)."""
    if ctx.invoked_subcommand is not None:
        return
    if run.input is None or run.out is None:
        raise ActlabError("actlab latents needs --input CORPUS and --out RUN (or a subcommand: see --help)",
                          param="input")
    records = run.read(fields, by_row_range=ray.runner == "ray")
    with Bar("latents") as bar:
        path = latents_run(model.for_runner(ray), records, saes.load(), run.out, cfg, **run.control(bar, ray))
    result = LatentsRun.open(path)
    print_session(result.manifest)
    rows = []
    for name in result.saes:
        table = result.latents(name).to_pandas()
        rows.append([name, len(table), int((table["count"] > 0).sum()), int((table["frequency"] > 0.1).sum()),
                     f"{table['frequency'].mean():.2%}"])
    print_table(f"latents of {result.manifest['n_rows']} texts ({result.manifest['n_tokens']} tokens, "
                f"{result.manifest['n_windows']} windows) in {path}",
                ["sae", "latents", "active", "dense (>10%)", "mean frequency"], rows)
    out.print(f"read it with actlab.open_run('{path}'): .latents(), .top(sae, latent), .intervals(...)")



@app.command("report")
@with_options(page=PageOptions, lm=RunModelOptions, cfg=BrowserConfig)
def report(page: PageOptions, lm: RunModelOptions, cfg: BrowserConfig,
           run: Path = typer.Argument(..., help="A latents run (actlab latents).")) -> None:
    """A self-contained latent browser (open index.html from disk): every latent, searchable and sortable,
    and per latent its histogram, highlighted examples, logit effects, neighbours and co-firing."""
    from ..pipelines import build_latent_browser

    path = build_latent_browser(run, page.out, lm.model, cfg, page.use_model, device=lm.device)
    out.print(f"wrote {path}")
