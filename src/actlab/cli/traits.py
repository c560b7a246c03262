"""`actlab traits ...`: the trait-vector pipeline, a thin shell over actlab.traits
and actlab.run_trait. Every option is a field of a config."""

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..errors import ActlabError
from ..generation import GenerationConfig
from ..pipelines import TraitReportConfig
from ..runs import RunControl
from ..runs.ray import RayConfig
from ..traits.judges import JudgeConfig
from ..traits.monitor import MonitorConfig
from ..traits.run import TRAIT_SAMPLING, TRAIT_SHARD_SIZE
from ..traits.steering import SteerConfig
from ..traits.vectors import VectorsConfig
from .common import (
    Bar,
    EditOptions,
    GenerationModelOptions,
    RunModelOptions,
    err,
    out,
    print_session,
    print_table,
    with_options,
)

app = typer.Typer(no_args_is_help=True, help="Trait vectors: generate, judge + fit, steer, monitor.")

RunArg = typer.Argument(..., help="A trait run directory (actlab traits generate).")


@dataclasses.dataclass
class TraitOptions:
    """Which trait, where its run goes, which blocks are captured."""

    trait: str = dataclasses.field(metadata={"short": "-t",
                                             "help": "Built-in trait name or a .json / .yaml trait file."})
    out: Path = dataclasses.field(metadata={"short": "-o", "help": "Run directory (resumable)."})
    layers: Optional[list[int]] = dataclasses.field(default=None, metadata={
        "comma": True, "help": "Blocks to capture, e.g. 8,12,16 (default: all)."})
    shard_size: int = dataclasses.field(default=TRAIT_SHARD_SIZE, metadata={
        "help": "Prompts per shard (the unit of resume and of work on Ray; one generate call, so at most this many "
                "slots)."})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "Replace an existing run in --out."})


def _judge(judging: JudgeConfig, run: Path, loaded=None):
    from ..traits import TraitRun

    return judging.make(TraitRun.open(run).trait, loaded)


@app.command("generate")
@with_options(model=GenerationModelOptions, gen=TRAIT_SAMPLING, ray=RayConfig, trait=TraitOptions)
def trait_generate_command(model: GenerationModelOptions, gen: GenerationConfig, ray: RayConfig,
                           trait: TraitOptions) -> None:
    """Answers under the pos and neg instructions, with pooled activations captured while generating
    (--ray: on a Ray cluster)."""
    from ..traits import TraitRun, generate_trait_run, load_trait

    with Bar("generate") as bar:
        path = generate_trait_run(model.for_runner(ray), load_trait(trait.trait), trait.out, trait.layers, cfg=gen,
                                  control=RunControl(shard_size=trait.shard_size, overwrite=trait.overwrite,
                                                     progress=bar, runner=ray.runner, ray=ray))
    run = TraitRun.open(path)
    print_session(run.manifest)
    out.print(f"wrote {run.answers().num_rows} answers with activations to {run.path}")


@app.command("vectors")
@with_options(judging=JudgeConfig, cfg=VectorsConfig)
def vectors_command(judging: JudgeConfig, cfg: VectorsConfig, run: Path = RunArg) -> None:
    """Judge the answers, then fit mean_diff / probe / pca_diff per layer and evaluate on held-out pairs."""
    from collections import Counter

    from ..traits import judge_run, vectors_run
    from ..traits.vectors import best_layers

    scores = judge_run(run, _judge(judging, run), cfg)
    decisions = Counter(scores.column("decision").to_pylist())
    print_table("judged answers", ["decision", "answers"], [[d, n] for d, n in decisions.most_common()])
    best = best_layers(vectors_run(run, cfg).to_pylist())
    print_table(f"best layer per method (held-out {cfg.held_out:.0%} of pairs)",
                ["method", "layer", "AUROC", "accuracy", "Cohen's d", "test pos/neg"],
                [[m, r["layer"], f"{r['auroc']:.3f}", f"{r['accuracy']:.3f}", f"{r['cohens_d']:.2f}",
                  f"{r['n_test_pos']}/{r['n_test_neg']}"] for m, r in best.items()])
    few = min(min(r["n_test_pos"], r["n_test_neg"]) for r in best.values())
    if few < 5:
        err.print(f"[yellow]warning: the held-out split has only {few} kept answer(s) of one polarity; its AUROC "
                  "means little. Generate more (more questions or instructions) or check the judge.")
    out.print(f"vectors in {run / 'vectors'}, every layer's evaluation in {run / 'evaluation.parquet'}")


@app.command("steer")
@with_options(judging=JudgeConfig, cfg=SteerConfig, edits=EditOptions, lm=RunModelOptions, exclude=("cfg.edits",))
def steer_command(judging: JudgeConfig, cfg: SteerConfig, edits: EditOptions, lm: RunModelOptions,
                  run: Path = RunArg) -> None:
    """Generate with coeff * v added at a layer (v: the pos-neg mean distance), and any --ablate, --cap and
    --clamp on every row; judge, plot score vs coeff."""
    from ..pipelines import draw_steering
    from ..traits import TraitRun, steer_sweep, sweep_summary

    cfg = dataclasses.replace(cfg, edits=edits.config())
    loaded = TraitRun.open(run).model(lm.model, lm.device)
    table = steer_sweep(loaded, run, _judge(judging, run, loaded), cfg)
    print_sweep(f"steering ({cfg.method}, {cfg.where})", sweep_summary(table))
    out.print(f"answers in {run / 'steering.parquet'}, plot {draw_steering(run)}")


def print_sweep(title: str, summary: list[dict]) -> None:
    print_table(title, ["block", "coeff", "mean score", "scored"],
                [[r["layer"], r["coeff"], "—" if r["mean_score"] is None else f"{r['mean_score']:.1f}", r["n_scored"]]
                 for r in summary])


@dataclasses.dataclass
class MonitorOptions:
    """What text `traits monitor` projects: one of --text and --row."""

    text: Optional[str] = dataclasses.field(default=None, metadata={"help": "Any text to monitor."})
    row: Optional[int] = dataclasses.field(default=None, metadata={"help": "A row of the run: its prompt + answer."})

    def __post_init__(self):
        if (self.text is None) == (self.row is None):
            raise ActlabError("give exactly one of --text or --row", param="text")


@app.command("monitor")
@with_options(what=MonitorOptions, cfg=MonitorConfig, lm=RunModelOptions)
def monitor_command(what: MonitorOptions, cfg: MonitorConfig, lm: RunModelOptions, run: Path = RunArg) -> None:
    """Per-token projection of a text onto the trait vector, printed and plotted."""
    from ..pipelines import draw_monitor
    from ..plots import token_shades
    from ..traits import TraitRun, monitor_run, monitored_text
    from .extract import highlighted

    text = monitored_text(run, what.text, what.row)  # before loading the model
    monitored = monitor_run(TraitRun.open(run).model(lm.model, lm.device), run, text, cfg=cfg)
    out.print(highlighted("", monitored.tokens, token_shades(monitored.values)))
    out.print(f"red: towards the trait, blue: away; plot {draw_monitor(run, monitored)}")


@dataclasses.dataclass
class TraitReportOptions:
    """Where `traits report` writes its page."""

    out: Optional[Path] = dataclasses.field(default=None, metadata={
        "short": "-o", "help": "HTML file (default RUN/report.html)."})


@app.command("report")
@with_options(page=TraitReportOptions, cfg=TraitReportConfig, lm=RunModelOptions)
def trait_report_command(page: TraitReportOptions, cfg: TraitReportConfig, lm: RunModelOptions,
                         run: Path = RunArg) -> None:
    """One self-contained HTML page: judge decisions, separation per layer, steering, per-token monitoring."""
    from ..pipelines import build_trait_report

    path = build_trait_report(run, page.out, lm.model, lm.device, cfg)
    out.print(f"wrote {path} (plots in {path.parent / 'figures'})")


@app.command("run")
@with_options(model=GenerationModelOptions, gen=TRAIT_SAMPLING, ray=RayConfig, trait=TraitOptions, judging=JudgeConfig,
              vectors=VectorsConfig, steer=SteerConfig,
              exclude=("vectors.seed", "steer.max_new_tokens", "steer.edits"), flags={"steer.layers": "--steer-layers"})
def run_command(model: GenerationModelOptions, gen: GenerationConfig, ray: RayConfig, trait: TraitOptions,
                judging: JudgeConfig, vectors: VectorsConfig, steer: SteerConfig) -> None:
    """All stages: generate (resumable; --ray: on a Ray cluster), judge + vectors, steering sweep at the
    steering layer (as many new tokens as generation, greedy)."""
    from ..pipelines import TraitPipelineConfig, run_trait
    from ..traits import load_trait

    definition, lm = load_trait(trait.trait), model.load()
    cfg = TraitPipelineConfig(gen, trait.layers, vectors, steer, judging)
    with Bar("generate") as bar:
        result = run_trait(lm, definition, trait.out, None, cfg,
                           control=RunControl(shard_size=trait.shard_size, overwrite=trait.overwrite,
                                              progress=bar, runner=ray.runner, ray=ray))
    best = result["best_mean_diff"]
    out.print(f"{result['kept_pos']} pos / {result['kept_neg']} neg answers kept; mean_diff best at block "
              f"{best['layer']} (held-out AUROC {best['auroc']:.2f})")
    print_sweep("steering", result["steering"])
    out.print(f"trait run in {result['run']}")
