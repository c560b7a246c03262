"""`actlab demo`: the main job on the embedded default model."""

from __future__ import annotations

from pathlib import Path

from . import datasets
from .analyses.probes import nearest_centroid_accuracy
from .models import load_model
from .progress import console
from .store import extract_run, open_run


def run_demo(model_name: str, out_dir: Path, device: str = "auto") -> None:
    model = load_model(model_name, device=device)
    console.print(f"[bold]model[/bold] {model}")
    records = datasets.categories()
    layers = [model.n_layers // 4, model.n_layers // 2, (3 * model.n_layers) // 4]
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    console.print(f"[bold]1. extract[/bold]: {len(records)} built-in texts in "
                  f"{len(set(records.fields['category']))} categories, hooks {hooks}, mean pooling")
    run = extract_run(model, records, hooks, out_dir, pooling="mean", progress=True, overwrite=True,
                      input_info={"path": "builtin:categories"})
    acts = open_run(run)
    categories = acts.metadata["fields"]["category"]
    from .cli import print_table

    print_table("category structure (leave-one-out nearest-centroid accuracy, chance "
                f"{1 / len(set(categories)):.0%})", ["hook", "shape", "accuracy"],
                [[h, tuple(acts[h].shape), f"{nearest_centroid_accuracy(acts[h].numpy(), categories):.0%}"]
                 for h in hooks])
    console.print(f"run written to {run} (open with actlab.open_run, pandas, polars or DuckDB)")
    console.print("[bold]2. benchmark[/bold] (64 texts; `actlab bench extract` runs the full one)")
    from .bench.extract import markdown_table, run_extract_benchmark

    result = run_extract_benchmark(model_name, n_texts=64, device=device, peers=False,
                                   sweep=False, results_dir=None, repeats=2)
    console.print(markdown_table(result), highlight=False)
