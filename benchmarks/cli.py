"""`actlab bench ...`: the benchmarks (results go to benchmarks/results/).
Every option is a field of BenchOptions or of the benchmark's own config."""

import typer

from actlab.cli.common import with_options

from .capacity import CapacityBench
from .contrast import ContrastBench
from .extract import ExtractBench
from .features import FeaturesBench
from .generate import GenerateBench
from .latents import LatentsBench
from .options import BenchOptions
from .patch import PatchBench
from .ray import RayBench
from .trait_quality import TraitQualityBench
from .traits import TraitsBench

app = typer.Typer(no_args_is_help=True, help="Benchmarks (results go to benchmarks/results/).")


@app.command("extract")
@with_options(bench=BenchOptions, cfg=ExtractBench)
def bench_extract(bench: BenchOptions, cfg: ExtractBench) -> None:
    """Baseline loop vs engine vs bare stopped forward vs peers."""
    from .extract import run_extract_benchmark

    run_extract_benchmark(bench, cfg)


@app.command("features")
@with_options(bench=BenchOptions, cfg=FeaturesBench)
def bench_features(bench: BenchOptions, cfg: FeaturesBench) -> None:
    """Four SAEs at four depths in one pass vs one SAE at the deepest; sparse store size."""
    from .features import run_features_benchmark

    run_features_benchmark(bench, cfg)


@app.command("traits")
@with_options(bench=BenchOptions, cfg=TraitsBench)
def bench_traits(bench: BenchOptions, cfg: TraitsBench) -> None:
    """Trait generation: two-stage serial vs combined serial vs batched generation with capture."""
    from .traits import run_traits_benchmark

    run_traits_benchmark(bench, cfg)


@app.command("generate")
@with_options(bench=BenchOptions, cfg=GenerateBench, exclude=("bench.device",))
def bench_generate(bench: BenchOptions, cfg: GenerateBench) -> None:
    """Generation: HF generate one at a time and batched, the old static loop, actlab.generate with and without
    capture, vLLM's CPU build; each in its own process, one thread by default (CPU)."""
    from .generate import run_generate_benchmark

    run_generate_benchmark(bench, cfg)


@app.command("latents")
@with_options(bench=BenchOptions, cfg=LatentsBench)
def bench_latents(bench: BenchOptions, cfg: LatentsBench) -> None:
    """The latents pass against the features pass over the same windows, dashboard time per 1k latents,
    peak memory at 1x / 4x / 16x the corpus."""
    from .latents import run_latents_benchmark

    run_latents_benchmark(bench, cfg)


@app.command("contrast")
@with_options(bench=BenchOptions, cfg=ContrastBench)
def bench_contrast(bench: BenchOptions, cfg: ContrastBench) -> None:
    """The paired-contrast analysis: separate programs vs one pass per text vs batched vs the features pass."""
    from .contrast import run_contrast_benchmark

    run_contrast_benchmark(bench, cfg)


@app.command("ray")
@with_options(bench=BenchOptions, cfg=RayBench, exclude=("bench.device",))
def bench_ray(bench: BenchOptions, cfg: RayBench) -> None:
    """One extraction in this process vs on a local Ray instance with 1 and 2 actors (Ray's overhead;
    on a GPU, an actor's tokens/s vs the engine's alone)."""
    from .ray import run_ray_benchmark

    run_ray_benchmark(bench, cfg)


@app.command("capacity")
@with_options(bench=BenchOptions, cfg=CapacityBench, exclude=("bench.device",))
def bench_capacity(bench: BenchOptions, cfg: CapacityBench) -> None:
    """The capacity plan: the sparse store's bytes per token (measured here) and a 1B-token feature run's
    GPU-hours and storage on 1, 8 and 64 GPUs (from the GPU benchmark results)."""
    from .capacity import run_capacity_benchmark

    run_capacity_benchmark(bench, cfg)


@app.command("trait-quality")
@with_options(bench=BenchOptions, cfg=TraitQualityBench)
def bench_trait_quality(bench: BenchOptions, cfg: TraitQualityBench) -> None:
    """Every built-in trait end to end: kept answers, held-out AUROC per layer, steering sweep."""
    from .trait_quality import run_trait_quality

    run_trait_quality(bench, cfg)


@app.command("patch")
@with_options(bench=BenchOptions, cfg=PatchBench)
def bench_patch(bench: BenchOptions, cfg: PatchBench) -> None:
    """Exact patching vs TransformerLens's helpers and an nnsight loop; attribution's cost and correlation; memory."""
    from .patch import run_patch_benchmark

    run_patch_benchmark(bench, cfg)
