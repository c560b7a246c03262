"""`actlab latents`: every latent of every SAE summarised from one pass over
a corpus (a thin shell over actlab.latents_run); its subcommands work on
such a run."""

from pathlib import Path

import typer

from ..errors import ActlabError
from ..inputs import FieldNames
from ..latents import LatentsConfig, LatentsRun, latents_run
from ..latents.analysis import SearchConfig, concept_latents
from ..latents.explain import ExplainConfig
from ..pipelines import BrowserConfig
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
        path = latents_run(model.for_runner(ray), records, saes.load(), run.out, cfg, control=run.control(bar, ray))
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
def latents_report_command(page: PageOptions, lm: RunModelOptions, cfg: BrowserConfig,
           run: Path = typer.Argument(..., help="A latents run (actlab latents).")) -> None:
    """A self-contained latent browser (open index.html from disk): every latent, searchable and sortable,
    and per latent its histogram, highlighted examples, logit effects, neighbours and co-firing."""
    from ..pipelines import build_latent_browser

    path = build_latent_browser(run, page.out, lm.model, cfg, page.use_model, device=lm.device)
    out.print(f"wrote {path}")


@app.command("explain")
@with_options(lm=RunModelOptions, cfg=ExplainConfig)
def explain(lm: RunModelOptions, cfg: ExplainConfig,
            run: Path = typer.Argument(..., help="A latents run (actlab latents).")) -> None:
    """Explain latents with a model (delphi's method: top windows with the active tokens marked) and score
    each explanation and a token-frequency baseline on held-out windows by detection and fuzzing (balanced
    accuracy, AUROC). Resumable: rerun to continue; RUN/explanations.parquet, read by the browser."""
    from ..pipelines import explain_run

    result = explain_run(run, lm.model, cfg, device=lm.device, progress=Bar("explain"))
    table = result.table.to_pandas() if result.table is not None else None
    if table is not None and len(table):
        best = table.sort_values("score", ascending=False, na_position="last").head(10)
        print_table(f"explanations in {run / 'explanations.parquet'} (best 10 by detection AUROC)",
                    ["sae", "latent", "explanation", "detection AUROC", "fuzzing AUROC", "baseline AUROC"],
                    [[r.sae, r.latent, r.explanation, f"{r.score:.2f}", f"{r.fuzzing_auroc:.2f}",
                      f"{r.baseline_score:.2f}"] for r in best.itertuples()])
        out.print(f"mean over {len(table)} latents: detection AUROC {table['score'].mean():.3f} "
                  f"(baseline {table['baseline_score'].mean():.3f}), fuzzing AUROC "
                  f"{table['fuzzing_auroc'].mean():.3f} (baseline {table['baseline_fuzzing_auroc'].mean():.3f}), "
                  f"detection balanced accuracy {table['detection_accuracy'].mean():.3f} "
                  f"(baseline {table['baseline_detection_accuracy'].mean():.3f})")
    out.print(f"explained {result.explained} latents now, {result.done} of {result.wanted} in all "
              f"(settings {result.key}): {result.calls} calls, {result.prompt_tokens} prompt + "
              f"{result.completion_tokens} reply tokens, {result.seconds:.1f} s, cost ${result.cost:.4f}")
    if result.stopped:
        out.print(f"stopped: {result.stopped}; rerun with a larger --max-calls to continue")


@app.command("search")
@with_options(where=SearchConfig)
def search(where: SearchConfig, run: Path = typer.Argument(..., help="A latents run (actlab latents)."),
           concept: str = typer.Argument(..., help="Words of the concept, e.g. 'Paris France'.")) -> None:
    """Latents about a concept: those whose top windows peak on its words (the share of them), or whose
    explanation names one."""
    table = concept_latents(LatentsRun.open(run), concept, where).to_pandas()
    if table.empty:
        out.print(f"no latent of {run} peaks on or is explained by: {concept}")
        return
    rows = [[r.sae, r.latent, f"{r.hits}/{r.top_windows}", f"{r.max:.2f}",
             r.explanation if isinstance(r.explanation, str) else ""] for r in table.itertuples()]
    print_table(f"latents about '{concept}'", ["sae", "latent", "top windows peaking on it", "max", "explanation"],
                rows)
