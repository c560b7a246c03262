"""The `actlab` command line: a thin shell over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .default_model import DEFAULT_MODEL
from .errors import ActlabError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fast, correct activation extraction for interpretability experiments.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results go to benchmarks/results/).")
app.add_typer(bench_app, name="bench")
sae_app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders.")
app.add_typer(sae_app, name="sae")
out = Console()
err = Console(stderr=True)

ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Hub id, local folder, .gguf file or alias.")
DeviceOpt = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
DtypeOpt = typer.Option("float32", help="float32, bfloat16, float16; 8bit/4bit on CUDA.")
InputOpt = typer.Option(..., "--input", "-i", help=".txt, .jsonl, .json, .csv or .parquet")
OutOpt = typer.Option(..., "--out", "-o", help="Run directory (resumable).")
PoolingOpt = typer.Option("last", help="last, mean, all, first:K, last:K, pos:I")
BatchSizeOpt = typer.Option(None, help="Texts per batch (default: token budget).")
BatchTokensOpt = typer.Option(None, help="Padded tokens per batch.")
MaxLengthOpt = typer.Option(None, help="Truncate texts to this many tokens.")
TextFieldOpt = typer.Option("text", help="Text field (jsonl, json, csv, parquet).")
LabelFieldOpt = typer.Option(None, help="Label field (default 'label' if present).")
CategoryFieldOpt = typer.Option(None, help="Category field (default 'category').")
SkipEmptyOpt = typer.Option(False, help="Skip empty texts instead of failing.")
ShardSizeOpt = typer.Option(2048, help="Texts per Parquet shard.")
OverwriteOpt = typer.Option(False, help="Replace an existing run in --out.")


@app.command()
def models(name: str = typer.Argument(DEFAULT_MODEL, help="Model to describe."),
           device: str = DeviceOpt) -> None:
    """Print a model's architecture, layer count, width and hook names."""
    from .models import load_model

    model = load_model(name, device=device)
    out.print(f"[bold]{name}[/bold]: {model.architecture}, {model.n_layers} layers, "
              f"d_model {model.d_model}, vocab {model.config.vocab_size}, device {model.device}")
    names = model.hook_names()
    per_block = [n.split(".", 2)[2] for n in names if n.startswith("blocks.0.")]
    out.print(f"hook names: hook_embed, and blocks.L.{{{','.join(per_block)}}} "
              f"for L in 0..{model.n_layers - 1}:")
    out.print("\n".join(names), highlight=False)


@app.command()
def extract(
    input: Path = InputOpt,
    out_dir: Path = OutOpt,
    hook: List[str] = typer.Option(..., "--hook", help="Hook name or module path; repeatable."),
    model: str = ModelOpt,
    pooling: str = PoolingOpt,
    batch_size: Optional[int] = BatchSizeOpt,
    max_batch_tokens: Optional[int] = BatchTokensOpt,
    padding_side: Optional[str] = typer.Option(None, help="right (default) or left."),
    max_length: Optional[int] = MaxLengthOpt,
    prepend_bos: Optional[bool] = typer.Option(None, "--prepend-bos/--no-prepend-bos",
                                               help="Override the tokenizer's BOS behaviour."),
    include_bos: bool = typer.Option(False, help="Let mean/first:K/last:K pool the BOS token."),
    text_field: str = TextFieldOpt,
    id_field: Optional[str] = typer.Option(None, help="Id field (default 'id' if present)."),
    label_field: Optional[str] = LabelFieldOpt,
    category_field: Optional[str] = CategoryFieldOpt,
    skip_empty: bool = SkipEmptyOpt,
    shard_size: int = ShardSizeOpt,
    overwrite: bool = OverwriteOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """Extract activations to a resumable Parquet run directory."""
    from .inputs import FieldNames
    from .store import extract_run

    names = FieldNames(text_field, id_field, label_field, category_field)
    records, lm, info = open_inputs(input, names, skip_empty, model, device, dtype)
    run = extract_run(lm, records, hook, out_dir, pooling, shard_size=shard_size, overwrite=overwrite,
                      input_info=info, progress=True, batch_size=batch_size,
                      max_batch_tokens=max_batch_tokens, padding_side=padding_side,
                      max_length=max_length, prepend_bos=prepend_bos, include_bos=include_bos)
    from .store import read_manifest

    manifest = read_manifest(run)
    if manifest.get("n_truncated"):
        err.print(f"[yellow]{manifest['n_truncated']} text(s) truncated to {manifest['settings']['max_length']} tokens")
    out.print(f"wrote {manifest['n_rows']} rows to {run}")


@app.command()
def features(
    input: Path = InputOpt,
    out_dir: Path = OutOpt,
    sae: Optional[List[str]] = typer.Option(None, "--sae", help="SAE folder (SAELens or sparsify) or release/sae_id; "
                                            "repeatable. Default: the SAEs actlab ships for the default model."),
    model: str = ModelOpt,
    pooling: str = PoolingOpt,
    batch_size: Optional[int] = BatchSizeOpt,
    max_batch_tokens: Optional[int] = BatchTokensOpt,
    max_length: Optional[int] = MaxLengthOpt,
    text_field: str = TextFieldOpt,
    category_field: Optional[str] = CategoryFieldOpt,
    label_field: Optional[str] = LabelFieldOpt,
    skip_empty: bool = SkipEmptyOpt,
    shard_size: int = ShardSizeOpt,
    overwrite: bool = OverwriteOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """SAE features of every text, one forward pass for all SAEs, stored sparse."""
    from .inputs import FieldNames
    from .saes import default_saes, load_sae
    from .saes.runs import features_run, open_features

    names = FieldNames(text_field, None, label_field, category_field)
    records, lm, info = open_inputs(input, names, skip_empty, model, device, dtype)
    saes = {name: load_sae(name) for name in sae} if sae else default_saes(lm.name)
    run = features_run(lm, records, saes, out_dir, pooling, shard_size=shard_size, overwrite=overwrite,
                       input_info=info, progress=True, batch_size=batch_size,
                       max_batch_tokens=max_batch_tokens, max_length=max_length)
    feats = open_features(run)
    print_table(f"features of {len(feats)} texts ({feats.pooling} pooling) in {run}",
                ["sae", "hook", "d_sae", "mean L0", "latents active"],
                [[name, cfg.hook_name, cfg.d_sae, f"{len(feats.sparse[name].values) / max(feats.sparse[name].n_rows, 1):.1f}",
                  int((feats.latent_stats[name].count > 0).sum())] for name, cfg in feats.configs.items()])


@app.command()
def analyze(
    run: Path = typer.Argument(..., help="A features run directory (actlab features)."),
    threshold: float = typer.Option(5.0, help="A latent is clearly on for a text when its value exceeds this."),
    top: int = typer.Option(5, help="Rows per table and SAE."),
) -> None:
    """Seed 000's analyses of a features run: tables printed and written to RUN/analysis/."""
    from .analyses.run import analyze_features, write_tables
    from .saes.runs import open_features

    tables = analyze_features(open_features(run), threshold, top)
    for name, rows in tables.items():
        if rows:
            print_table(name, list(rows[0]), [list(row.values()) for row in rows])
    written = write_tables(tables, run / "analysis")
    out.print(f"wrote {len(written)} tables to {run / 'analysis'}")


@app.command()
def report(
    run: Path = typer.Argument(..., help="A features run directory (actlab features)."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default RUN/report.html)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The run's model (default: as recorded)."),
    use_model: bool = typer.Option(True, "--model-passes/--no-model",
                                   help="Run the model for token highlighting and SAE quality."),
    threshold: float = typer.Option(5.0, help="A latent is clearly on for a text when its value exceeds this."),
    top: int = typer.Option(5, help="Rows per analysis table and SAE."),
    latents: int = typer.Option(8, help="Latents shown with their top texts, per SAE."),
    texts: int = typer.Option(5, help="Top texts per latent."),
    quality_texts: int = typer.Option(64, help="Texts of the run scored for SAE quality (0: skip)."),
    device: str = DeviceOpt,
) -> None:
    """One self-contained HTML report of a features run, with its plots as PNG files."""
    from .report import ReportConfig, build_report

    cfg = ReportConfig(threshold=threshold, top=top, latents_per_sae=latents, texts_per_latent=texts,
                       quality_texts=quality_texts)
    path = build_report(run, out_file, model, cfg, use_model, device)
    out.print(f"wrote {path} (plots in {path.parent / 'figures'})")


@app.command()
def explore(
    run: Path = typer.Argument(..., help="A per-token features run (actlab features --pooling all)."),
    latent: int = typer.Option(..., help="Latent to explore."),
    sae: Optional[str] = typer.Option(None, help="SAE name in the run (default: its only SAE)."),
    top: int = typer.Option(5, help="Texts to show."),
) -> None:
    """The texts on which a latent is strongest, tokens highlighted by its value."""
    from rich.text import Text

    from .analyses import explore_tokens, neuronpedia_link
    from .saes.runs import open_features

    feats = open_features(run)
    if feats.offsets is None:
        raise ActlabError(f"{run} is a pooled run; explore needs per-token features: "
                          "actlab features ... --pooling all")
    name = sae or feats.names[0]
    if name not in feats.configs or (sae is None and len(feats.names) > 1):
        raise ActlabError(f"pick an SAE with --sae; the run has {', '.join(feats.names)}")
    if not 0 <= latent < feats.configs[name].d_sae:
        raise ActlabError(f"latent {latent} is outside 0..{feats.configs[name].d_sae - 1}")
    values = feats.sparse[name].column(latent)
    link = neuronpedia_link(feats.configs[name].neuronpedia_id, latent)
    out.print(f"[bold]{name}[/bold] latent {latent}" + (f" ({link})" if link else ""))
    rows = explore_tokens(values, feats.offsets.tolist(), top)
    if not rows:
        out.print("never active in this run")
    for row in rows:
        start = int(feats.offsets[row["text"]])
        line = Text(f"text {row['text']} (max {row['max']:.2f}): ")
        for i, value in enumerate(row["token_values"]):
            shade = int(255 * (1 - min(value / row["max"], 1.0)))
            line.append(feats.tokens[start + i], style=f"on rgb(255,{shade},{shade})" if value > 0 else "")
        out.print(line)


@sae_app.command("quality")
def sae_quality_command(
    sae: Optional[List[str]] = typer.Option(None, "--sae", help="SAE folder or release/sae_id; repeatable. "
                                            "Default: the SAEs actlab ships for the default model."),
    input: Path = InputOpt,
    model: str = ModelOpt,
    text_field: str = TextFieldOpt,
    max_length: Optional[int] = MaxLengthOpt,
    device: str = DeviceOpt,
) -> None:
    """L0, dead / dense latents, MSE, explained variance and next-token loss with the reconstruction spliced in."""
    from .inputs import FieldNames
    from .models import load_model
    from .saes import default_saes, load_sae
    from .saes.quality import sae_quality

    records = read_input(input, FieldNames(text_field), skip_empty=False)
    lm = load_model(model, device=device)
    saes = {name: load_sae(name, device=lm.device) for name in sae} if sae else default_saes(lm.name, lm.device)
    rows = []
    for name, loaded in saes.items():
        q = sae_quality(lm, loaded, records.texts, max_length=max_length)
        rows.append([name, f"{q['l0']:.1f}", f"{q['dead_fraction']:.1%}", f"{q['dense_fraction']:.1%}",
                     f"{q['mse']:.4g}", f"{q['explained_variance']:.3f}", f"{q['ce_clean']:.3f}",
                     f"{q['ce_spliced']:.3f}", f"{q['ce_loss_score']:.3f}"])
    print_table(f"SAE quality on {len(records)} texts", ["sae", "L0", "dead", "dense", "MSE", "expl. var.",
                                                          "CE clean", "CE spliced", "CE score"], rows)


@sae_app.command("train")
def sae_train(
    corpus: List[Path] = typer.Option(..., "--corpus", help="Plain-text file(s): paragraphs or %-separated fortunes."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for one SAELens SAE folder per layer."),
    layers: str = typer.Option(..., help="Comma-separated block indices, e.g. 7,15,22."),
    model: str = ModelOpt,
    d_sae: int = typer.Option(2048, help="Latents per SAE."),
    k: int = typer.Option(32, help="Active latents per token (TopK)."),
    steps: int = typer.Option(600, help="Training steps."),
    batch_size: int = typer.Option(4096, help="Activations per step."),
    max_length: int = typer.Option(128, help="Tokens per text."),
    seed: int = typer.Option(0),
    device: str = DeviceOpt,
) -> None:
    """Train TopK SAEs with SAELens's trainer on activations the engine caches; report held-out quality."""
    from .models import load_model
    from .saes.training import TrainConfig, read_corpus, train_saes

    try:
        layer_list = [int(x) for x in layers.split(",")]
    except ValueError:
        raise ActlabError(f"--layers '{layers}': give comma-separated block indices such as 7,15,22") from None
    texts = read_corpus(corpus)
    lm = load_model(model, device=device)
    cfg = TrainConfig(layers=layer_list, d_sae=d_sae, k=k, steps=steps, batch_size=batch_size,
                      max_length=max_length, seed=seed)
    report = train_saes(lm, texts, out_dir, cfg)
    print_table(f"held-out quality ({out_dir})", ["sae", "L0", "dead", "expl. var.", "CE clean", "CE spliced"],
                [[name, f"{q['l0']:.1f}", f"{q['dead_fraction']:.1%}", f"{q['explained_variance']:.3f}",
                  f"{q['ce_clean']:.3f}", f"{q['ce_spliced']:.3f}"] for name, q in report.items()])


@app.command()
def demo(model: str = ModelOpt, out_dir: Path = typer.Option(Path("runs/demo"), "--out"),
         device: str = DeviceOpt) -> None:
    """Extract activations of the built-in categorized texts, then benchmark."""
    from .demo import run_demo

    run_demo(model, out_dir, device)


@bench_app.command("extract")
def bench_extract(
    model: str = ModelOpt,
    n_texts: int = typer.Option(256, help="Texts in the length mix (20-150 tokens)."),
    device: str = DeviceOpt,
    peers: bool = typer.Option(True, help="Include TransformerLens and nnsight if installed."),
    sweep: bool = typer.Option(True, help="Run the batch-size sweep."),
    results_dir: Path = typer.Option(Path("benchmarks/results"), help="Where the JSON goes."),
    readme: Optional[Path] = typer.Option(None, help="Update the benchmark table in this README."),
) -> None:
    """Baseline loop vs engine vs bare stopped forward vs peers."""
    from .bench.extract import run_extract_benchmark

    run_extract_benchmark(model, n_texts, device, peers, sweep, results_dir, readme)


@bench_app.command("features")
def bench_features(
    model: str = ModelOpt,
    n_texts: int = typer.Option(256, help="Texts in the length mix (20-150 tokens)."),
    d_sae: int = typer.Option(16384, help="Latents per SAE."),
    k: int = typer.Option(64, help="Active latents per token."),
    device: str = DeviceOpt,
    results_dir: Path = typer.Option(Path("benchmarks/results"), help="Where the JSON goes."),
    readme: Optional[Path] = typer.Option(None, help="Update the benchmark table in this README."),
) -> None:
    """Four SAEs at four depths in one pass vs one SAE at the deepest; sparse store size."""
    from .bench.features import run_features_benchmark

    run_features_benchmark(model, n_texts, device, d_sae, k, results_dir, readme)


@bench_app.command("traits")
def bench_traits(
    model: str = ModelOpt,
    n_prompts: int = typer.Option(64, help="Prompts of the built-in French trait."),
    max_new_tokens: int = typer.Option(32),
    batch_size: int = typer.Option(16, help="Batch size of the batched pipeline."),
    device: str = DeviceOpt,
    sweep: bool = typer.Option(True, help="Run the batch-size sweep (1, 4, 8, 16, 32)."),
    results_dir: Path = typer.Option(Path("benchmarks/results"), help="Where the JSON goes."),
    readme: Optional[Path] = typer.Option(None, help="Update the benchmark table in this README."),
) -> None:
    """Seed 001's pipelines: two-stage serial vs combined serial vs batched generation with capture."""
    from .bench.traits import run_traits_benchmark

    run_traits_benchmark(model, n_prompts, max_new_tokens, batch_size, device, sweep, results_dir, readme)


@bench_app.command("trait-quality")
def bench_trait_quality(
    model: str = ModelOpt,
    out_dir: Path = typer.Option(Path("runs/trait-quality"), "--out", "-o", help="Trait runs go here, one per trait."),
    device: str = DeviceOpt,
    results_dir: Path = typer.Option(Path("benchmarks/results"), help="Where the JSON goes."),
    readme: Optional[Path] = typer.Option(None, help="Update the results table in this README."),
) -> None:
    """Every built-in trait end to end: kept answers, held-out AUROC per layer, steering sweep."""
    from .bench.trait_quality import run_trait_quality

    run_trait_quality(model, out_dir, device, results_dir, readme)


def read_input(path: Path, names, skip_empty: bool):
    from .inputs import read_records

    records = read_records(path, names, skip_empty)
    if records.n_skipped:
        err.print(f"skipped {records.n_skipped} empty text(s)")
    return records


def open_inputs(path: Path, names, skip_empty: bool, model: str, device: str, dtype: str):
    """(records, model, input info for the manifest): the start of every run command."""
    from .inputs import file_sha256
    from .models import load_model

    records = read_input(path, names, skip_empty)
    lm = load_model(model, device=device, dtype=dtype)
    return records, lm, {"path": str(path), "sha256": file_sha256(path), "text_field": names.text}


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for i, column in enumerate(header):
        # the row's name stays whole on narrow terminals, unless it is a long path
        table.add_column(column, no_wrap=i == 0, max_width=36 if i == 0 else None)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    out.print(table)


from .cli_traits import traits_app  # noqa: E402  (it uses the shared options above)

app.add_typer(traits_app, name="traits")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        app()  # standalone: typer reports usage errors itself (exit 2)
    except ActlabError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; finished shards are kept, rerun the same command to resume")
        sys.exit(130)
