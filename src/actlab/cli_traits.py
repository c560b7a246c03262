"""`actlab traits ...`: the trait-vector pipeline from the command line, a thin
shell over actlab.traits (imported by actlab.cli after its shared options)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import DeviceOpt, ModelOpt, err, out, print_table
from .errors import ActlabError

traits_app = typer.Typer(no_args_is_help=True, help="Trait vectors: generate, judge + fit, steer, monitor.")

TraitOpt = typer.Option(..., "--trait", "-t", help="Built-in trait name or a .json / .yaml trait file.")
RunArg = typer.Argument(..., help="A trait run directory (actlab traits generate).")
JudgeOpt = typer.Option(None, help="The trait's own judge (default), keyword / regex (its rule judge), local "
                                   "(a local HF model) or openai (an OpenAI-compatible server).")
JudgeModelOpt = typer.Option(None, help="Judge model: for --judge local a hub id, folder or the default model's "
                                        "alias (default); for --judge openai the server's model name.")
JudgeUrlOpt = typer.Option("https://api.openai.com/v1", help="OpenAI-compatible base URL for --judge openai.")


def _layers(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ActlabError(f"--layers '{text}': give comma-separated block indices such as 8,12,16") from None


def _judge(run: Path, kind: Optional[str], judge_model: Optional[str], judge_url: str, loaded=None):
    """The trait's own judge by default, else its rule judge, a local model or
    an OpenAI-compatible server. A local judge of the `loaded` model's name
    uses that model instead of loading it again."""
    from .default_model import DEFAULT_MODEL
    from .traits.judges import make_judge, unknown_judge_kind
    from .traits.runs import trait_of

    trait = trait_of(run)
    if kind is None:
        if not trait.judge:
            raise ActlabError(f"trait '{trait.name}' has no judge of its own; pass --judge local (or --judge openai "
                              "--judge-model M)")
        return make_judge(trait.judge, trait.eval_prompt)
    if kind in ("keyword", "regex"):
        if not trait.judge or trait.judge.get("kind") != kind:
            raise ActlabError(f"trait '{trait.name}' has no {kind} judge; pass --judge local or --judge openai")
        return make_judge(trait.judge)
    if kind not in ("local", "openai"):
        raise unknown_judge_kind(kind)
    if not trait.eval_prompt:
        raise ActlabError(f"trait '{trait.name}' has no eval_prompt for a model judge; add one with {{question}} "
                          "and {answer}")
    if kind == "local":
        name = judge_model or DEFAULT_MODEL
        return make_judge({"kind": "local", "model": loaded if loaded and loaded.name == name else name},
                          trait.eval_prompt)
    if not judge_model:
        raise ActlabError("--judge openai needs --judge-model")
    return make_judge({"kind": "openai", "model": judge_model, "base_url": judge_url}, trait.eval_prompt)


@traits_app.command("generate")
def generate_command(
    trait: str = TraitOpt,
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run directory (resumable)."),
    model: str = ModelOpt,
    layers: Optional[str] = typer.Option(None, help="Blocks to capture, e.g. 8,12,16 (default: all)."),
    max_new_tokens: int = typer.Option(48),
    temperature: float = typer.Option(0.7, help="0: greedy."),
    top_p: float = typer.Option(0.9),
    seed: int = typer.Option(0),
    batch_size: Optional[int] = typer.Option(None, help="Rows per batch (default: token budget)."),
    overwrite: bool = typer.Option(False),
    device: str = DeviceOpt,
) -> None:
    """Answers under the pos and neg instructions, with pooled activations captured while generating."""
    from .models import load_model
    from .traits import GenerationConfig
    from .traits.definitions import load_trait
    from .traits.runs import generate_run, read_answers

    definition = load_trait(trait)
    lm = load_model(model, device=device)
    cfg = GenerationConfig(max_new_tokens, temperature, top_p, seed, batch_size)
    run = generate_run(lm, definition, out_dir, _layers(layers), cfg=cfg, overwrite=overwrite)
    answers = read_answers(run)
    out.print(f"wrote {answers.num_rows} answers with activations to {run}")


@traits_app.command("vectors")
def vectors_command(
    run: Path = RunArg,
    judge: Optional[str] = JudgeOpt,
    judge_model: Optional[str] = JudgeModelOpt,
    judge_url: str = JudgeUrlOpt,
    pos_min: float = typer.Option(50.0, help="Keep pos answers scoring at least this."),
    neg_max: float = typer.Option(50.0, help="Keep neg answers scoring below this."),
    pooling: str = typer.Option("response_mean", help="response_mean, response_first:5, prompt_last, prompt_mean."),
    held_out: float = typer.Option(0.2, help="Fraction of pairs held out for evaluation."),
    seed: int = typer.Option(0),
) -> None:
    """Judge the answers, then fit mean_diff / probe / pca_diff per layer and evaluate on held-out pairs."""
    from collections import Counter

    from .traits.runs import judge_run, vectors_run
    from .traits.vectors import best_layers

    scores = judge_run(run, _judge(run, judge, judge_model, judge_url), pos_min, neg_max)
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


@traits_app.command("steer")
def steer_command(
    run: Path = RunArg,
    layer: Optional[int] = typer.Option(None, help="Block to steer (default: of the layers with held-out AUROC "
                                                    ">= 0.9, the one nearest the middle)."),
    coeffs: str = typer.Option("-2,-1,0,1,2", help="Multiples of the pos-neg mean distance at the layer."),
    method: str = typer.Option("mean_diff"),
    where: str = typer.Option("all", help="all positions, or answer tokens only."),
    questions: Optional[int] = typer.Option(None, help="Use the first N questions."),
    max_new_tokens: int = typer.Option(48),
    judge: Optional[str] = JudgeOpt,
    judge_model: Optional[str] = JudgeModelOpt,
    judge_url: str = JudgeUrlOpt,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: the run's model."),
    device: str = DeviceOpt,
) -> None:
    """Generate with coeff * v added at a layer (v: the pos-neg mean distance), judge, plot score vs coeff."""
    from .report import plots
    from .traits import GenerationConfig
    from .traits.runs import run_model, steer_sweep, steering_layer, sweep_summary

    try:
        coeff_list = [float(c) for c in coeffs.split(",")]
    except ValueError:
        raise ActlabError(f"--coeffs '{coeffs}': give comma-separated numbers such as -8,0,8") from None
    lm = run_model(run, model, device)
    layer = steering_layer(run, method) if layer is None else layer
    table = steer_sweep(lm, run, layer, coeff_list, _judge(run, judge, judge_model, judge_url, lm), method, where,
                        questions, GenerationConfig(max_new_tokens=max_new_tokens))
    summary = sweep_summary(table)
    print_table(f"steering at layer {layer} ({method}, {where})", ["coeff", "mean score", "scored"],
                [[r["coeff"], "—" if r["mean_score"] is None else f"{r['mean_score']:.1f}", r["n_scored"]]
                 for r in summary])
    png = run / "steering.png"
    png.write_bytes(plots.steering_sweep(summary, f"{run.name}: layer {layer}, {method}"))
    out.print(f"answers in {run / 'steering.parquet'}, plot {png}")


@traits_app.command("monitor")
def monitor_command(
    run: Path = RunArg,
    text: Optional[str] = typer.Option(None, help="Any text to monitor."),
    row: Optional[int] = typer.Option(None, help="A row of the run: its prompt + answer."),
    layer: Optional[int] = typer.Option(None, help="Default: the best mean_diff layer."),
    method: str = typer.Option("mean_diff"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: the run's model."),
    device: str = DeviceOpt,
) -> None:
    """Per-token projection of a text onto the trait vector, printed and plotted."""
    from rich.text import Text

    from .report import plots
    from .traits.monitor import monitor
    from .traits.runs import best_layer, load_vectors, read_answers, run_model

    if (text is None) == (row is None):
        raise ActlabError("give exactly one of --text or --row")
    if row is not None:
        answers = read_answers(run)
        if not 0 <= row < answers.num_rows:
            raise ActlabError(f"--row {row} is outside 0..{answers.num_rows - 1}")
        text = answers.column("prompt")[row].as_py() + answers.column("answer")[row].as_py()
    layer = best_layer(run, method) if layer is None else layer
    vectors = load_vectors(run, method)
    if layer not in vectors:
        raise ActlabError(f"no {method} vector for layer {layer}; this run has layers {sorted(vectors)}")
    lm = run_model(run, model, device)
    result = monitor(lm, [text], {layer: vectors[layer]}, prepend_bos=False)
    values, tokens = result.values[layer][0], result.tokens[0]
    scale = max(abs(values).max(), 1e-6)
    line = Text()
    for token, value in zip(tokens, values):
        shade = int(255 * (1 - min(abs(value) / scale, 1.0)))
        line.append(token, style=f"on rgb(255,{shade},{shade})" if value > 0 else f"on rgb({shade},{shade},255)")
    out.print(line)
    png = run / f"monitor-layer{layer}.png"
    png.write_bytes(plots.token_projections(tokens, values, f"projection on the layer-{layer} {method} vector"))
    out.print(f"red: towards the trait, blue: away; plot {png}")


@traits_app.command("report")
def report_command(
    run: Path = RunArg,
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default RUN/report.html)."),
    method: str = typer.Option("mean_diff"),
    examples: int = typer.Option(3, help="Kept answers per polarity monitored token by token."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: the run's model."),
    device: str = DeviceOpt,
) -> None:
    """One self-contained HTML page: judge decisions, separation per layer, steering, per-token monitoring."""
    from .report.traits import build_trait_report

    path = build_trait_report(run, out_file, model, device, method, examples)
    out.print(f"wrote {path} (plots in {path.parent / 'figures'})")


@traits_app.command("run")
def run_command(
    trait: str = TraitOpt,
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run directory (resumable)."),
    model: str = ModelOpt,
    layers: Optional[str] = typer.Option(None, help="Blocks to capture (default: all)."),
    max_new_tokens: int = typer.Option(48),
    temperature: float = typer.Option(0.7),
    seed: int = typer.Option(0),
    coeffs: str = typer.Option("-2,-1,0,1,2", help="Steering coefficients (see steer)."),
    judge: Optional[str] = JudgeOpt,
    judge_model: Optional[str] = JudgeModelOpt,
    judge_url: str = JudgeUrlOpt,
    device: str = DeviceOpt,
) -> None:
    """All stages: generate (resumable), judge + vectors, steering sweep at the best layer."""
    generate_command(trait, out_dir, model, layers, max_new_tokens, temperature, 0.9, seed, None, False, device)
    vectors_command(out_dir, judge, judge_model, judge_url, 50.0, 50.0, "response_mean", 0.2, seed)
    steer_command(out_dir, None, coeffs, "mean_diff", "all", None, max_new_tokens, judge, judge_model, judge_url,
                  model, device)
