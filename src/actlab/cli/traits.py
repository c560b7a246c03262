"""`actlab traits ...`: the trait-vector pipeline, a thin shell over actlab.traits."""


from pathlib import Path
from typing import Optional

import typer

from ..runs.ray import RayConfig
from ..traits.generation import GenerationConfig
from ..traits.runs import TRAIT_SAMPLING
from .common import Bar, ModelOptions, comma_list, err, out, print_session, print_table, with_options

app = typer.Typer(no_args_is_help=True, help="Trait vectors: generate, judge + fit, steer, monitor.")

TraitOpt = typer.Option(..., "--trait", "-t", help="Built-in trait name or a .json / .yaml trait file.")
RunArg = typer.Argument(..., help="A trait run directory (actlab traits generate).")
RunModelOpt = typer.Option(None, "--model", "-m", help="Default: the run's model.")
DeviceOpt = typer.Option("auto", help="auto, cpu, cuda, cuda:N, mps.")


class JudgeOptions:
    """--judge / --judge-model / --judge-url, turned into a judge by actlab.traits.judges.judge_for."""

    def __init__(self, judge: Optional[str] = typer.Option(None, help="The trait's own judge (default), keyword / "
                                                           "regex (its rule judge), local (a local HF model) or "
                                                           "openai (an OpenAI-compatible server)."),
                 judge_model: Optional[str] = typer.Option(None, help="Judge model: for --judge local a hub id, "
                                                           "folder or the default model's alias (default); for "
                                                           "--judge openai the server's model name."),
                 judge_url: str = typer.Option("https://api.openai.com/v1", help="OpenAI-compatible base URL for "
                                               "--judge openai.")):
        self.kind, self.model, self.url = judge, judge_model, judge_url

    def make(self, run: Path, loaded=None):
        from ..traits.judges import judge_for
        from ..traits.runs import TraitRun

        return judge_for(TraitRun(run).trait, self.kind, self.model, self.url, loaded)


def judge_options(command):
    """The three judge options as one JudgeOptions argument `judging`."""
    import functools
    import inspect

    signature = inspect.signature(command)
    extra = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
             for p in inspect.signature(JudgeOptions).parameters.values()]

    @functools.wraps(command)
    def wrapper(**values):
        judging = JudgeOptions(**{p.name: values.pop(p.name) for p in extra})
        return command(judging=judging, **values)

    kept = [p for p in signature.parameters.values() if p.name != "judging"] + extra
    wrapper.__signature__ = signature.replace(parameters=kept)
    wrapper.__annotations__ = {p.name: p.annotation for p in kept}  # typer reads these
    return wrapper


@app.command("generate")
@with_options(model=ModelOptions, gen=TRAIT_SAMPLING, ray=RayConfig)
def generate_command(model: ModelOptions, gen: GenerationConfig, ray: RayConfig, trait: str = TraitOpt,
                     out_dir: Path = typer.Option(..., "--out", "-o", help="Run directory (resumable)."),
                     layers: Optional[str] = typer.Option(None, help="Blocks to capture, e.g. 8,12,16 (default: all)."),
                     shard_size: int = typer.Option(64, help="Prompts per shard (the unit of resume and of work "
                                                    "on Ray)."),
                     overwrite: bool = typer.Option(False)) -> None:
    """Answers under the pos and neg instructions, with pooled activations captured while generating
    (--ray: on a Ray cluster)."""
    from ..traits import load_trait
    from ..traits.runs import TraitRun, generate_run

    with Bar("generate") as bar:
        path = generate_run(model.for_runner(ray), load_trait(trait), out_dir, comma_list(layers), cfg=gen,
                            shard_size=shard_size, overwrite=overwrite, progress=bar, runner=ray.runner, ray=ray)
    run = TraitRun(path)
    print_session(run.manifest)
    out.print(f"wrote {run.answers().num_rows} answers with activations to {run.path}")


@app.command("vectors")
@judge_options
def vectors_command(judging: JudgeOptions, run: Path = RunArg,
                    pos_min: float = typer.Option(50.0, help="Keep pos answers scoring at least this."),
                    neg_max: float = typer.Option(50.0, help="Keep neg answers scoring below this."),
                    pooling: str = typer.Option("response_mean", help="response_mean, response_first:5, prompt_last, "
                                                "prompt_mean."),
                    held_out: float = typer.Option(0.2, help="Fraction of pairs held out for evaluation."),
                    seed: int = typer.Option(0)) -> None:
    """Judge the answers, then fit mean_diff / probe / pca_diff per layer and evaluate on held-out pairs."""
    from collections import Counter

    from ..traits import judge_run, vectors_run
    from ..traits.vectors import best_layers

    scores = judge_run(run, judging.make(run), pos_min, neg_max)
    decisions = Counter(scores.column("decision").to_pylist())
    print_table("judged answers", ["decision", "answers"], [[d, n] for d, n in decisions.most_common()])
    best = best_layers(vectors_run(run, pooling, held_out=held_out, seed=seed).to_pylist())
    print_table(f"best layer per method (held-out {held_out:.0%} of pairs)",
                ["method", "layer", "AUROC", "accuracy", "Cohen's d", "test pos/neg"],
                [[m, r["layer"], f"{r['auroc']:.3f}", f"{r['accuracy']:.3f}", f"{r['cohens_d']:.2f}",
                  f"{r['n_test_pos']}/{r['n_test_neg']}"] for m, r in best.items()])
    few = min(min(r["n_test_pos"], r["n_test_neg"]) for r in best.values())
    if few < 5:
        err.print(f"[yellow]warning: the held-out split has only {few} kept answer(s) of one polarity; its AUROC "
                  "means little. Generate more (more questions or instructions) or check the judge.")
    out.print(f"vectors in {run / 'vectors'}, every layer's evaluation in {run / 'evaluation.parquet'}")


@app.command("steer")
@judge_options
def steer_command(judging: JudgeOptions, run: Path = RunArg,
                  layer: Optional[int] = typer.Option(None, help="Block to steer (default: of the layers with "
                                                      "held-out AUROC >= 0.9, the one nearest the middle)."),
                  coeffs: str = typer.Option("-2,-1,0,1,2", help="Multiples of the pos-neg mean distance at the "
                                             "layer."),
                  method: str = typer.Option("mean_diff"),
                  where: str = typer.Option("all", help="all positions, or answer tokens only."),
                  questions: Optional[int] = typer.Option(None, help="Use the first N questions."),
                  max_new_tokens: int = typer.Option(48),
                  model: Optional[str] = RunModelOpt, device: str = DeviceOpt) -> None:
    """Generate with coeff * v added at a layer (v: the pos-neg mean distance), judge, plot score vs coeff."""
    from ..traits import TraitRun, steer_sweep, steering_layer, sweep_summary

    lm = TraitRun(run).model(model, device)
    layer = steering_layer(run, method) if layer is None else layer
    table = steer_sweep(lm, run, layer, comma_list(coeffs, float, "--coeffs", "-8,0,8"), judging.make(run, lm),
                        method, where, questions, GenerationConfig(max_new_tokens=max_new_tokens))
    print_table(f"steering at layer {layer} ({method}, {where})", ["coeff", "mean score", "scored"],
                [[r["coeff"], "—" if r["mean_score"] is None else f"{r['mean_score']:.1f}", r["n_scored"]]
                 for r in sweep_summary(table)])
    out.print(f"answers in {run / 'steering.parquet'}, plot {run / 'steering.png'}")


@app.command("monitor")
def monitor_command(run: Path = RunArg, text: Optional[str] = typer.Option(None, help="Any text to monitor."),
                    row: Optional[int] = typer.Option(None, help="A row of the run: its prompt + answer."),
                    layer: Optional[int] = typer.Option(None, help="Default: the best mean_diff layer."),
                    method: str = typer.Option("mean_diff"),
                    model: Optional[str] = RunModelOpt, device: str = DeviceOpt) -> None:
    """Per-token projection of a text onto the trait vector, printed and plotted."""
    from ..plots import token_shades
    from ..traits import TraitRun, monitor_run, monitored_text
    from .extract import highlighted

    text = monitored_text(run, text, row)  # before loading the model
    tokens, values, png = monitor_run(TraitRun(run).model(model, device), run, text, layer=layer, method=method)
    out.print(highlighted("", tokens, token_shades(values)))
    out.print(f"red: towards the trait, blue: away; plot {png}")


@app.command("report")
def report_command(run: Path = RunArg,
                   out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default "
                                                           "RUN/report.html)."),
                   method: str = typer.Option("mean_diff"),
                   examples: int = typer.Option(3, help="Kept answers per polarity monitored token by token."),
                   model: Optional[str] = RunModelOpt, device: str = DeviceOpt) -> None:
    """One self-contained HTML page: judge decisions, separation per layer, steering, per-token monitoring."""
    from ..report.traits import build_trait_report

    path = build_trait_report(run, out_file, model, device, method, examples)
    out.print(f"wrote {path} (plots in {path.parent / 'figures'})")


@app.command("run")
@with_options(model=ModelOptions, gen=TRAIT_SAMPLING, ray=RayConfig)
@judge_options
def run_command(judging: JudgeOptions, model: ModelOptions, gen: GenerationConfig, ray: RayConfig,
                trait: str = TraitOpt,
                out_dir: Path = typer.Option(..., "--out", "-o", help="Run directory (resumable)."),
                layers: Optional[str] = typer.Option(None, help="Blocks to capture (default: all)."),
                coeffs: str = typer.Option("-2,-1,0,1,2", help="Steering coefficients (see steer)."),
                overwrite: bool = typer.Option(False)) -> None:
    """All stages: generate (resumable; --ray: on a Ray cluster), judge + vectors, steering sweep at the
    steering layer."""
    from ..pipelines import run_trait
    from ..traits import load_trait
    from ..traits.judges import judge_for

    definition, lm = load_trait(trait), model.load()
    judge = judge_for(definition, judging.kind, judging.model, judging.url, lm)
    with Bar("generate") as bar:
        result = run_trait(lm, definition, out_dir, judge, comma_list(coeffs, float, "--coeffs", "-2,0,2"),
                           comma_list(layers), gen, overwrite=overwrite, progress=bar, runner=ray.runner, ray=ray)
    best = result["best_mean_diff"]
    out.print(f"{result['kept_pos']} pos / {result['kept_neg']} neg answers kept; mean_diff best at block "
              f"{best['layer']} (held-out AUROC {best['auroc']:.2f})")
    print_table(f"steering at block {result['steering_layer']}", ["coeff", "mean score", "scored"],
                [[r["coeff"], "—" if r["mean_score"] is None else f"{r['mean_score']:.1f}", r["n_scored"]]
                 for r in result["steering"]])
    out.print(f"trait run in {result['run']}")


