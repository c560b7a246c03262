"""`actlab bench ...`: the benchmarks (results go to benchmarks/results/)."""

from pathlib import Path
from typing import Optional

import typer

from ..default_model import DEFAULT_MODEL

app = typer.Typer(no_args_is_help=True, help="Benchmarks (results go to benchmarks/results/).")

ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Hub id, local folder, .gguf file or alias.")
DeviceOpt = typer.Option("auto", help="auto, cpu, cuda, cuda:N, mps.")
ResultsOpt = typer.Option(Path("benchmarks/results"), help="Where the JSON goes.")
ReadmeOpt = typer.Option(None, help="Update the benchmark table in this Markdown file.")


@app.command("extract")
def bench_extract(model: str = ModelOpt, device: str = DeviceOpt,
                  n_texts: int = typer.Option(256, help="Texts in the length mix (20-150 tokens)."),
                  peers: bool = typer.Option(True, help="Include TransformerLens and nnsight if installed."),
                  sweep: bool = typer.Option(True, help="Run the batch-size sweep."),
                  results_dir: Path = ResultsOpt, readme: Optional[Path] = ReadmeOpt) -> None:
    """Baseline loop vs engine vs bare stopped forward vs peers."""
    from ..bench.extract import run_extract_benchmark

    run_extract_benchmark(model, n_texts, device, peers, sweep, results_dir, readme)


@app.command("features")
def bench_features(model: str = ModelOpt, device: str = DeviceOpt,
                   n_texts: int = typer.Option(256, help="Texts in the length mix (20-150 tokens)."),
                   d_sae: int = typer.Option(16384, help="Latents per SAE."),
                   k: int = typer.Option(64, help="Active latents per token."),
                   results_dir: Path = ResultsOpt, readme: Optional[Path] = ReadmeOpt) -> None:
    """Four SAEs at four depths in one pass vs one SAE at the deepest; sparse store size."""
    from ..bench.features import run_features_benchmark

    run_features_benchmark(model, n_texts, device, d_sae, k, results_dir, readme)


@app.command("traits")
def bench_traits(model: str = ModelOpt, device: str = DeviceOpt,
                 n_prompts: int = typer.Option(64, help="Prompts of the built-in French trait."),
                 max_new_tokens: int = typer.Option(32),
                 batch_size: int = typer.Option(16, help="Batch size of the batched pipeline."),
                 sweep: bool = typer.Option(True, help="Run the batch-size sweep (1, 4, 8, 16, 32)."),
                 results_dir: Path = ResultsOpt, readme: Optional[Path] = ReadmeOpt) -> None:
    """Trait generation: two-stage serial vs combined serial vs batched generation with capture."""
    from ..bench.traits import run_traits_benchmark

    run_traits_benchmark(model, n_prompts, max_new_tokens, batch_size, device, sweep, results_dir, readme)


@app.command("contrast")
def bench_contrast(model: str = ModelOpt, device: str = DeviceOpt,
                   n_pairs: int = typer.Option(100, help="Built-in pairs (spread over the four domains)."),
                   sweep: bool = typer.Option(True, help="Run the batch-size sweep (1, 4, 8, 16, 32, auto)."),
                   results_dir: Path = ResultsOpt, readme: Optional[Path] = ReadmeOpt) -> None:
    """The paired-contrast analysis: separate programs vs one pass per text vs batched vs the features pass."""
    from ..bench.contrast import run_contrast_benchmark

    run_contrast_benchmark(model, n_pairs, device, sweep, results_dir, readme)


@app.command("ray")
def bench_ray(model: str = ModelOpt,
              device: str = typer.Option("cpu", help="cpu, or cuda: one actor holds the GPU, two share it."),
              n_texts: int = typer.Option(2000, help="Texts to extract."),
              shard_size: int = typer.Option(250, help="Texts per shard (the unit Ray hands to an actor)."),
              results_dir: Path = ResultsOpt, readme: Optional[Path] = ReadmeOpt) -> None:
    """One extraction in this process vs on a local Ray instance with 1 and 2 actors (Ray's overhead;
    on a GPU, an actor's tokens/s vs the engine's alone)."""
    from ..bench.ray import run_ray_benchmark

    run_ray_benchmark(model, n_texts, shard_size, results_dir, readme, device)


@app.command("capacity")
def bench_capacity(model: str = ModelOpt,
                   n_texts: int = typer.Option(256, help="Built-in texts in the measured features runs."),
                   results_dir: Path = ResultsOpt, readme: Optional[Path] = ReadmeOpt) -> None:
    """The capacity plan: the sparse store's bytes per token (measured here) and a 1B-token feature run's
    GPU-hours and storage on 1, 8 and 64 GPUs (from the GPU benchmark results)."""
    from ..bench.capacity import run_capacity_benchmark

    run_capacity_benchmark(model, n_texts, results_dir, readme)


@app.command("trait-quality")
def bench_trait_quality(model: str = ModelOpt, device: str = DeviceOpt,
                        out_dir: Path = typer.Option(Path("runs/trait-quality"), "--out", "-o",
                                                     help="Trait runs go here, one per trait."),
                        results_dir: Path = ResultsOpt, readme: Optional[Path] = ReadmeOpt) -> None:
    """Every built-in trait end to end: kept answers, held-out AUROC per layer, steering sweep."""
    from ..bench.trait_quality import run_trait_quality

    run_trait_quality(model, out_dir, device, results_dir, readme)
