"""Commands over activations and SAE features: models, extract, features,
analyze, explore, report, demo."""

import dataclasses
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from ..analyses.features import EXPLORED_TEXTS
from ..analyses.run import AnalysisConfig
from ..default_model import DEFAULT_MODEL
from ..engine import ExtractConfig
from ..errors import ActlabError
from ..inputs import FieldNames
from ..pipelines import ReportConfig
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

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fast, correct activation extraction for interpretability experiments.")


@app.command()
@with_options(model=ModelOptions, exclude=("model.model",))
def models(model: ModelOptions, name: str = typer.Argument(DEFAULT_MODEL, help="Model to describe.")) -> None:
    """Print a model's architecture, layer count, width and hook names."""
    model = dataclasses.replace(model, model=name).load()
    out.print(f"[bold]{name}[/bold]: {model.architecture}, {model.n_layers} layers, "
              f"d_model {model.d_model}, vocab {model.config.vocab_size}, device {model.device}")
    names = model.hook_names()
    per_block = [n.split(".", 2)[2] for n in names if n.startswith("blocks.0.")]
    out.print(f"hook names: hook_embed, and blocks.L.{{{','.join(per_block)}}} for L in 0..{model.n_layers - 1}:")
    out.print("\n".join(names), highlight=False)


@app.command()
@with_options(run=RunOptions, fields=FieldNames, model=ModelOptions, cfg=ExtractConfig, ray=RayConfig,
              required=("hooks",))
def extract(run: RunOptions, fields: FieldNames, model: ModelOptions, cfg: ExtractConfig, ray: RayConfig) -> None:
    """Extract activations to a resumable Parquet run directory (--ray: on a Ray cluster)."""
    from ..activations import extract_run
    from ..runs import read_manifest

    records = run.read(fields, by_row_range=ray.runner == "ray")
    with Bar("extract") as bar:
        path = extract_run(model.for_runner(ray), records, run.out, cfg, control=run.control(bar, ray))
    manifest = read_manifest(path)
    print_session(manifest)
    if manifest.get("n_truncated"):
        out.print(f"[yellow]{manifest['n_truncated']} text(s) truncated to {manifest['settings']['max_length']} tokens")
    out.print(f"wrote {manifest['n_rows']} rows to {path}")


@app.command()
@with_options(run=RunOptions, fields=FieldNames, model=ModelOptions, cfg=ExtractConfig, ray=RayConfig, saes=SAEOptions,
              exclude=("hooks",))
def features(run: RunOptions, fields: FieldNames, model: ModelOptions, cfg: ExtractConfig, ray: RayConfig,
             saes: SAEOptions) -> None:
    """SAE features of every text, one forward pass for all SAEs, stored sparse (--ray: on a Ray cluster)."""
    from ..features import FeatureRun, features_run

    records = run.read(fields, by_row_range=ray.runner == "ray")
    with Bar("features") as bar:
        path = features_run(model.for_runner(ray), records, saes.load(), run.out, cfg, control=run.control(bar, ray))
    feats = FeatureRun.open(path)
    print_session(feats.manifest)
    print_table(f"features of {len(feats)} texts ({feats.pooling} pooling) in {path}",
                ["sae", "hook", "d_sae", "mean L0", "latents active"],
                [[name, c.hook_name, c.d_sae, f"{feats.mean_l0(name):.1f}",
                  int((feats.latent_stats[name].count > 0).sum())] for name, c in feats.configs.items()])


RunArg = typer.Argument(..., help="A features run directory (actlab features).")


@app.command()
@with_options(cfg=AnalysisConfig)
def analyze(cfg: AnalysisConfig, run: Path = RunArg) -> None:
    """Feature analyses of a features run (strongest, frequent, selective, specialists, co-activation,
    the SAE comparison table): printed and written to RUN/analysis/."""
    from ..pipelines import analyze_run

    tables = analyze_run(run, cfg)
    for name, rows in tables.items():
        if rows:
            print_table(name, list(rows[0]), [list(row.values()) for row in rows])
    out.print(f"wrote {sum(bool(rows) for rows in tables.values())} tables to {run / 'analysis'}")


@app.command("report")
@with_options(page=PageOptions, lm=RunModelOptions, cfg=ReportConfig)
def report_command(page: PageOptions, lm: RunModelOptions, cfg: ReportConfig, run: Path = RunArg) -> None:
    """One self-contained HTML report of a features run, with its plots as PNG files."""
    from ..pipelines import build_report

    path = build_report(run, page.out, lm.model, cfg, page.use_model, lm.device)
    out.print(f"wrote {path} (plots in {path.parent / 'figures'})")


@dataclasses.dataclass
class ExploreOptions:
    """Which latent to explore, of which SAE, and how many texts to show."""

    latent: int = dataclasses.field(metadata={"help": "Latent to explore."})
    sae: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "SAE name in the run (default: its only SAE)."})
    top: int = dataclasses.field(default=EXPLORED_TEXTS, metadata={"help": "Texts to show."})


@app.command("explore")
@with_options(explored=ExploreOptions)
def explore_command(explored: ExploreOptions,
            run: Path = typer.Argument(..., help="A per-token features run (actlab features --pooling all) or a "
                                                 "latents run (actlab latents).")) -> None:
    """The texts (or, in a latents run, windows) on which a latent is strongest, tokens highlighted by its value."""
    from ..analyses import explore_tokens
    from ..features import FeatureRun
    from ..latents import LatentsRun
    from ..latents.run import LATENTS_FORMAT
    from ..links import neuronpedia_link
    from ..plots import token_shades
    from ..runs import read_manifest

    latent, sae, top = explored.latent, explored.sae, explored.top
    if read_manifest(run).get("format") == LATENTS_FORMAT:
        _explore_latents(LatentsRun.open(run), sae, latent, top)
        return
    feats = FeatureRun.open(run)
    if feats.offsets is None:
        raise ActlabError(f"{run} is a pooled run; explore needs per-token features: "
                          "actlab features ... --pooling all")
    name = sae or feats.names[0]
    if name not in feats.configs or (sae is None and len(feats.names) > 1):
        raise ActlabError(f"pick an SAE with --sae; the run has {', '.join(feats.names)}")
    if not 0 <= latent < feats.configs[name].d_sae:
        raise ActlabError(f"latent {latent} is outside 0..{feats.configs[name].d_sae - 1}")
    link = neuronpedia_link(feats.configs[name].neuronpedia_id, latent)
    out.print(f"[bold]{name}[/bold] latent {latent}" + (f" ({link})" if link else ""))
    rows = explore_tokens(feats.sparse[name].column(latent), feats.offsets.tolist(), top)
    if not rows:
        out.print("never active in this run")
    for row in rows:
        start = int(feats.offsets[row["text"]])
        tokens = feats.tokens[start:start + len(row["token_values"])]
        out.print(highlighted(f"text {row['text']} (max {row['max']:.2f}): ", tokens,
                              token_shades(row["token_values"], row["max"])))


def _explore_latents(run, sae: Optional[str], latent: int, top: int) -> None:
    """A latents run's top windows of one latent, highlighted."""
    from ..links import neuronpedia_link
    from ..plots import token_shades

    name = run.sae_name(sae)
    table = run.top(name, latent).slice(0, top)
    link = neuronpedia_link(run.sae_config(name).neuronpedia_id, latent)
    out.print(f"[bold]{name}[/bold] latent {latent}" + (f" ({link})" if link else ""))
    if table.num_rows == 0:
        out.print("never active in this run")
    for row, values in zip(table.to_pylist(), run.token_values(name, latent, table)):
        out.print(highlighted(f"text {row['text_id']} @{row['start']} (max {row['value']:.2f}): ", row["tokens"],
                              token_shades(values, row["value"])))


def highlighted(head: str, tokens: list[str], shades: list[float]) -> Text:
    """Tokens on a background whose strength is the shade (red above 0, blue below)."""
    line = Text(head)
    for token, shade in zip(tokens, shades):
        level = int(255 * (1 - min(abs(shade), 1.0)))
        style = (f"on rgb(255,{level},{level})" if shade > 0 else f"on rgb({level},{level},255)") if shade else ""
        line.append(token, style=style)
    return line


DEMO_OUT = Path("runs/demo")  # where `actlab demo` (make demo) writes


@dataclasses.dataclass
class DemoOptions:
    out: Path = dataclasses.field(default=DEMO_OUT, metadata={"help": "Where the demo's runs go."})


@app.command()
@with_options(model=ModelOptions, demo_options=DemoOptions, exclude=("model.dtype", "model.matmul"))
def demo(model: ModelOptions, demo_options: DemoOptions) -> None:
    """The main job on the default model: extraction, SAE features and their analyses, the report, a trait."""
    from .demo import run_demo

    run_demo(model.model, demo_options.out, model.device)
