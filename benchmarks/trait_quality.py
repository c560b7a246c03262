"""`actlab bench trait-quality`: every built-in trait end to end on a model
(sampled generation with capture, the trait's judge, vectors per layer with a
held-out split, a steering sweep), against the issue's targets: the best
layer's mean-difference vector separates held-out answers (AUROC >= 0.9) and
steering moves the judge score the expected way."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from actlab.models import load_model
from actlab.pipelines import TraitPipelineConfig, run_trait
from actlab.runs import RunControl
from actlab.traits.definitions import builtin_traits, load_trait
from actlab.traits.steering import SteerConfig
from actlab.version import VERSION

from .extract import console, describe_device, save_result
from .options import BenchOptions

COEFFS = (-2, -1, 0, 1, 2)


@dataclass
class TraitQualityBench:
    out: Path = field(default=Path("runs/trait-quality"), metadata={
        "short": "-o", "help": "Trait runs go here, one per trait."})


def run_trait_quality(bench: BenchOptions | None = None, cfg: TraitQualityBench | None = None) -> dict:
    """Every built-in trait end to end: kept answers, held-out AUROC per layer, steering sweep."""
    bench, cfg = bench or BenchOptions(), cfg or TraitQualityBench()
    model_name, device, results_dir, readme, out_dir = (bench.model, bench.device, bench.results_dir, bench.readme,
                                                       cfg.out)
    model = load_model(model_name, device=device)
    traits = {}
    for name in builtin_traits():
        console.print(f"[bold]{name}[/bold]")
        pipeline = TraitPipelineConfig(steer=SteerConfig(coeffs=list(COEFFS)))
        traits[name] = run_trait(model, load_trait(name), out_dir / name, cfg=pipeline,
                                 control=RunControl(overwrite=True))
        traits[name]["targets_met"] = targets_met(traits[name])
        console.print(f"  {traits[name]}")
    result = {"benchmark": "trait-quality", "actlab_version": VERSION,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": describe_device(model.device),
              "model": model_name, "generation": "T = 0.7, top_p 0.9, 48 new tokens, seed 0", "traits": traits}
    save_result(result, model.device, results_dir, readme, markdown_table(result))
    return result


def targets_met(trait: dict) -> dict:
    """Held-out AUROC >= 0.9 at the best layer; steering the expected way:
    the best positive coefficient scores at least coeff 0, which scores at
    least the worst negative one, and they differ (a default already at the
    judge's ceiling or floor can move one way only)."""
    scores = {r["coeff"]: r["mean_score"] for r in trait["steering"]}
    if None in scores.values() or 0 not in scores:
        return {"held_out_auroc_0.9": trait["best_mean_diff"]["auroc"] >= 0.9, "steering_expected_way": False}
    up = max(s for c, s in scores.items() if c > 0)
    down = min(s for c, s in scores.items() if c < 0)
    return {"held_out_auroc_0.9": trait["best_mean_diff"]["auroc"] >= 0.9,
            "steering_expected_way": up >= scores[0] >= down and up > down}


def markdown_table(result: dict) -> str:
    lines = [f"Device: {result['device']}; {result['model']}; {result['generation']}; rule judges; "
             f"{result['date'][:10]}.", "",
             "| trait | answers | kept pos / neg | best mean_diff block: held-out AUROC (test pos/neg) | "
             "steering block | judge score at coeff " + " / ".join(f"{c:+g}" for c in COEFFS) +
             " | steering answers scored | minutes |", "|---|---:|---|---|---:|---|---:|---:|"]
    for name, t in result["traits"].items():
        best = t["best_mean_diff"]
        sweep = " / ".join("—" if r["mean_score"] is None else f"{r['mean_score']:.0f}" for r in t["steering"])
        scored = [r["n_scored"] for r in t["steering"]]
        scored = f"{min(scored)}" if min(scored) == max(scored) else f"{min(scored)}-{max(scored)}"
        steered = ", ".join(map(str, t["steering_layers"]))
        lines.append(f"| {name} | {t['n_answers']} | {t['kept_pos']} / {t['kept_neg']} | {best['layer']}: "
                     f"{best['auroc']:.2f} ({best['n_test_pos']}/{best['n_test_neg']}) | {steered} | "
                     f"{sweep} | {scored} of {t['steering_questions']} | {t['seconds_total'] / 60:.1f} |")
    return "\n".join(lines)
