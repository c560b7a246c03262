"""`actlab demo`: the main job on the embedded default model."""

from __future__ import annotations

from pathlib import Path

from .. import datasets
from ..activations import extract_run
from ..analyses.probes import nearest_centroid_accuracy
from ..analyses.run import AnalysisConfig
from ..circuits import CircuitConfig, circuit_run
from ..contrasts.config import ContrastConfig
from ..contrasts.pairs import load_pairs
from ..engine import ExtractConfig
from ..features import features_run
from ..hooks import block_hook
from ..models import DEFAULT_DEVICE, Model, load_model
from ..patching import PatchConfig, ioi_pairs, patch_run
from ..pipelines import (
    ReportConfig,
    analyze_run,
    build_circuit_report,
    build_patch_report,
    build_report,
    contrast,
    run_trait,
)
from ..runs import RunControl, open_run
from ..saes import default_saes
from ..traits import load_trait
from .bench import GET_THE_REPOSITORY, benchmarks_module
from .common import Bar, print_table
from .common import err as console

DEMO_THRESHOLD = 2.0  # mean-pooled default-SAE values: about the top 10-15% of nonzero ones


def run_demo(model_name: str, out_dir: Path, device: str = DEFAULT_DEVICE) -> None:
    model = load_model(model_name, device=device)
    console.print(f"[bold]model[/bold] {model}")
    records = datasets.categories()
    layers = [model.n_layers // 4, model.n_layers // 2, (3 * model.n_layers) // 4]
    hooks = [block_hook(layer) for layer in layers]
    console.print(f"[bold]1. extract[/bold]: {len(records)} built-in texts in "
                  f"{len(set(records.fields['category']))} categories, hooks {hooks}, mean pooling")
    with Bar("extract") as bar:
        run = extract_run(model, records, out_dir / "activations", ExtractConfig(hooks, pooling="mean"),
                          control=RunControl(overwrite=True, progress=bar))
    acts = open_run(run)
    categories = acts.fields["category"]
    print_table("category structure (leave-one-out nearest-centroid accuracy, chance "
                f"{1 / len(set(categories)):.0%})", ["hook", "shape", "accuracy"],
                [[h, tuple(acts[h].shape), f"{nearest_centroid_accuracy(acts[h].numpy(), categories):.0%}"]
                 for h in hooks])
    console.print(f"run written to {run} (open with actlab.open_run, pandas, polars or DuckDB)")

    saes = default_saes(model.name, model.device)
    console.print(f"[bold]2. SAE features[/bold]: the default SAEs {list(saes)} in one pass, mean pooling")
    with Bar("features") as bar:
        features = features_run(model, records, saes, out_dir / "features", ExtractConfig(pooling="mean"),
                                control=RunControl(overwrite=True, progress=bar))
    tables = analyze_run(features, AnalysisConfig(threshold=DEMO_THRESHOLD))
    print_table(f"SAE comparison (latent ids; specialists: in- minus out-of-category texts above "
                f"{DEMO_THRESHOLD:g}, > 0)", ["latents that are...", *saes],
                [[row["row"], *(row[name] for name in saes)] for row in tables["comparison"]])
    report = build_report(features, model=model, cfg=ReportConfig(threshold=DEMO_THRESHOLD))
    console.print(f"[bold]report[/bold]: {report.resolve()} (plots in {report.parent / 'figures'})")

    run_trait_step(model, out_dir / "traits" / "optimism")

    run_contrast_step(model, out_dir / "contrast")

    run_patch_step(model, out_dir / "patch")

    run_circuit_step(model, out_dir / "circuit")

    console.print("[bold]7. benchmark[/bold] (64 texts; `actlab bench extract` runs the full one)")
    bench, options = benchmarks_module("extract"), benchmarks_module("options")
    if bench is None:
        console.print(f"skipped: {GET_THE_REPOSITORY}")
        return
    result = bench.run_extract_benchmark(options.BenchOptions(model_name, device, results_dir=None),
                                         bench.ExtractBench(n_texts=64, peers=False, sweep=False), repeats=2)
    console.print(bench.markdown_table(result), highlight=False)


DEMO_PAIRS = 8  # of the built-in indirect-object pairs


def run_patch_step(model: Model, out: Path) -> None:
    """Exact and attribution patching of the residual stream on the built-in
    indirect-object pairs: where the answer's information sits."""
    pairs = ioi_pairs(DEMO_PAIRS)
    layers = list(range(0, model.n_layers, max(1, model.n_layers // 8)))
    console.print(f"[bold]5. causal[/bold]: {DEMO_PAIRS} indirect-object pairs ('{pairs.texts[0]}' -> "
                  f"'{pairs.fields['answer'][0]}'), the residual stream patched clean into corrupted at blocks "
                  f"{layers}, every position; exact and attribution patching")
    with Bar("patch") as bar:
        path = patch_run(model, pairs, out, PatchConfig(components=["resid_pre"], layers=layers,
                                                        method=["exact", "atp"]),
                         control=RunControl(overwrite=True, progress=bar))
    run = open_run(path)
    tokens = run.pairs().column("clean_tokens")[0].as_py()
    strongest: dict[int, dict] = {}  # per block, its position of the largest mean effect
    for m in run.mean_effects().to_pylist():
        if m["method"] == "exact" and m["normalized"] > strongest.get(m["layer"], {"normalized": -1e9})["normalized"]:
            strongest[m["layer"]] = m
    print_table("where the effect sits, block by block (exact; normalized 1 = the clean answer restored)",
                ["block", "strongest position", "normalized"],
                [[layer, f"{m['position']} {tokens[m['position']]!r}", f"{m['normalized']:.2f}"]
                 for layer, m in sorted(strongest.items())])
    report = build_patch_report(path)
    console.print(f"[bold]report[/bold]: {report.resolve()} (heatmaps; attribution against exact patching)")


def run_circuit_step(model: Model, out: Path) -> None:
    """A sparse feature circuit of the same pairs over the default SAEs:
    which latents, error terms and embeddings carry the answer."""
    saes = default_saes(model.name, model.device)
    console.print(f"[bold]6. circuit[/bold]: the same {DEMO_PAIRS} pairs, the default SAEs {list(saes)} as nodes "
                  "(latents, error terms, embeddings), node effects by integrated gradients")
    with Bar("circuit") as bar:
        path = circuit_run(model, ioi_pairs(DEMO_PAIRS), out, saes, CircuitConfig(),
                           control=RunControl(overwrite=True, progress=bar))
    run, graph = open_run(path), open_run(path).graph()
    tokens = graph["tokens"]
    print_table(f"the circuit's strongest nodes ({len(graph['nodes'])} nodes, {len(graph['edges'])} edges)",
                ["node", "kind", "position", "effect on the logit difference"],
                [[n["node"], n["kind"], f"{n['position']} {tokens[n['position']]!r}", f"{n['effect']:+.2f}"]
                 for n in graph["nodes"][:8]])
    kept = {r["ablation"]: r["faithfulness"] for r in graph["faithfulness"] if r["nodes"] == len(graph["nodes"])}
    console.print(f"faithfulness of the circuit: {kept['corrupted']:.2f} with the rest patched to the corrupted run, "
                  f"{kept['mean']:.2f} with it mean-ablated (which also averages away the names the corruption "
                  "leaves alone: docs/causal.md)")
    report = build_circuit_report(run.path)
    console.print(f"[bold]report[/bold]: {report.resolve()} (the circuit drawn; nodes and edges as Parquet)")


def run_trait_step(model: Model, out: Path) -> None:
    """The built-in optimism trait end to end: generate with capture, judge,
    vectors per layer, a steering sweep at the default steering layer."""
    trait = load_trait("optimism")
    console.print(f"[bold]3. trait vectors[/bold]: '{trait.name}' ({len(trait.prompts())} answers, every layer "
                  "captured while generating)")
    with Bar("generate") as bar:
        result = run_trait(model, trait, out, control=RunControl(overwrite=True, progress=bar))
    best = result["best_mean_diff"]
    console.print(f"{result['kept_pos']} pos / {result['kept_neg']} neg answers kept by the judge; mean_diff vector "
                  f"best at block {best['layer']} (held-out AUROC {best['auroc']:.2f})")
    console.print(f"steering sweep at block {result['steering_layers'][0]} (coeff x the pos-neg mean distance), "
                  "judged:")
    print_table(trait.name, ["coeff", "mean judge score"],
                [[r["coeff"], "—" if r["mean_score"] is None else f"{r['mean_score']:.0f}"]
                 for r in result["steering"]])
    console.print(f"trait run in {result['run']} (answers, activations, scores, vectors, evaluation, steering)")


def run_contrast_step(model: Model, out: Path) -> None:
    """The paired-contrast analysis of the built-in fact / hallucination pairs."""
    pairs = load_pairs("builtin")
    console.print(f"[bold]4. fact vs hallucination[/bold]: {len(pairs)} built-in pairs, the default SAEs' metrics of "
                  "every prompt and continuation in one pass, the model's own log-probabilities, paired statistics, "
                  "held-out detection")
    with Bar("contrast") as bar:
        result = contrast(model, pairs, None, out, ContrastConfig(score=True),
                          control=RunControl(overwrite=True, progress=bar))
    for line in result["summary"]:
        console.print(line)
    console.print(f"report: {(out / 'report.html').resolve()}")
