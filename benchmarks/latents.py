"""`actlab bench latents`: the latents pass against the features pass alone
over the same windows (its floor), the dashboard tables' time per 1,000
latents, and peak memory against corpus size.

    features_pass   FeatureExtractor, mean pooling: every token encoded, pooled stats kept
    latents_pass    latents_extractor: the same encodes, each latent summarised on the device

Both in this process over the same windows and batches, alternating, best
of repeats, CPU time beside wall time. Memory: a fresh process per corpus
size (1x, 4x, 16x texts) runs latents_run end to end, logit effects and
neighbours apart (they read only the weights); its sampled peak RSS includes
the model. Explanation: `explain_latents` latents of a latents run over the
1x corpus explained and scored by the local explainer (the bench model; on
the default model its SAE at block 15, else the random SAE): latents per
hour, calls, tokens, and the mean scores beside the baseline's.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actlab.datasets import length_mix
from actlab.default_model import DEFAULT_MODEL
from actlab.engine import ExtractConfig
from actlab.hooks import block_hook
from actlab.inputs import Records
from actlab.latents import ExplainConfig, LatentsConfig, explain_latents, latents_run
from actlab.latents.effects import logit_effects, neighbours
from actlab.latents.run import LatentsJob
from actlab.latents.sink import latents_extractor
from actlab.latents.tables import cofiring_table, histograms_table, intervals_table, latents_table, top_table
from actlab.latents.windows import Windows, cut_windows
from actlab.models import load_model
from actlab.runs.job import local_run
from actlab.saes.defaults import default_saes
from actlab.saes.features import FeatureExtractor
from actlab.tokens import Tokenized
from actlab.version import VERSION

from .extract import console, describe_device, save_result, sweep_point
from .features import random_topk_sae
from .options import BenchOptions
from .peer_envs import PEERS_DIR, model_dir, peer_python

SIZES = (1, 4, 16)
DASHBOARD_PEER = ["sae-dashboard==0.8.0", "pyarrow<21"]  # its numpy 1.x needs a pyarrow of before 21


@dataclass
class LatentsBench:
    n_texts: int = field(default=128, metadata={"help": "Texts of the 1x corpus (length mix, 20-150 tokens)."})
    d_sae: int = field(default=16384, metadata={"help": "Latents of the SAE (random TopK weights)."})
    k: int = field(default=64, metadata={"help": "Active latents per token."})
    context: int = field(default=64, metadata={"help": "Tokens per window."})
    repeats: int = field(default=2, metadata={"help": "Alternating repeats of the two passes (best kept)."})
    memory: bool = field(default=True, metadata={"help": "Measure peak memory at 1x, 4x and 16x the corpus."})
    memory_texts: int = field(default=32, metadata={"help": "Texts of the memory measurement's 1x corpus."})
    explain_latents: int = field(default=8, metadata={
        "help": "Latents explained and scored with the local explainer, for latents per hour (0: skip)."})
    sae_dashboard: bool = field(default=True, metadata={
        "help": "Time SAEDashboard's pipeline (its own environment under --peers-dir) against actlab's on the "
                "default model's SAE at block 15 over the same full windows."})
    sae_dashboard_features: int = field(default=256, metadata={"help": "Latents SAEDashboard computes."})
    peers_dir: Path = field(default=PEERS_DIR, metadata={"help": "Where the peers' environments are made."})


def _timed(fn) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run_latents_benchmark(bench: BenchOptions | None = None, cfg: LatentsBench | None = None) -> dict:
    bench, cfg = bench or BenchOptions(), cfg or LatentsBench()
    model = load_model(bench.model, device=bench.device)
    layer = model.n_layers // 2
    sae = random_topk_sae(block_hook(layer), model.d_model, cfg.d_sae, cfg.k, seed=layer).to(model.device)
    saes = {f"L{layer}": sae}
    texts = length_mix(model.tokenizer, cfg.n_texts)
    latents_cfg = LatentsConfig(context=cfg.context)
    latents = latents_extractor(model, saes, latents_cfg)
    features = FeatureExtractor(model, saes, ExtractConfig(pooling="mean", prepend_bos=latents.prepend_bos))
    windows = cut_windows(model.tokenizer, texts, 0, cfg.context, latents.prepend_bos)
    tokens = sum(len(ids) for ids in windows.ids)
    console.print(f"[bold]bench latents[/bold]: {bench.model} on {model.device}, {cfg.n_texts} texts -> "
                  f"{len(windows)} windows of <= {cfg.context} tokens ({tokens} tokens); one TopK SAE "
                  f"({cfg.d_sae} latents, k={cfg.k}) at block {layer}")
    passes = {"features_pass": lambda: features.run_tokenized(Tokenized(windows.ids, windows.has_bos, 0)),
              "latents_pass": lambda: latents.run_windows(windows)}
    for run in passes.values():  # warm-up
        run()
    best = {name: (float("inf"), float("inf")) for name in passes}
    for _ in range(cfg.repeats):
        for name, run in passes.items():
            _, wall, cpu = _timed(run)
            best[name] = min(best[name], (wall, cpu))
    methods = {name: {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), "tokens_per_s": round(tokens / wall, 1)}
               for name, (wall, cpu) in best.items()}
    dashboard = _dashboard_seconds(model, texts, saes, latents_cfg)
    result = {
        "benchmark": "latents", "actlab_version": VERSION, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": describe_device(model.device), "model": bench.model, "n_texts": cfg.n_texts,
        "n_windows": len(windows), "n_tokens": tokens, "context": cfg.context, "d_sae": cfg.d_sae, "k": cfg.k,
        "layer": layer, "methods": methods,
        "cost_vs_features_pass": round(best["latents_pass"][0] / best["features_pass"][0], 3),
        "cpu_cost_vs_features_pass": round(best["latents_pass"][1] / best["features_pass"][1], 3),
        "dashboard": dashboard,
        "memory": _memory(bench, cfg) if cfg.memory else None,
        "explain": _explained_per_hour(model, texts, saes, cfg) if cfg.explain_latents else None,
        "sae_dashboard": _sae_dashboard(model, texts, cfg) if cfg.sae_dashboard else None,
    }
    console.print(f"  features pass {methods['features_pass']['tokens_per_s']:.0f} tokens/s, latents pass "
                  f"{methods['latents_pass']['tokens_per_s']:.0f} tokens/s: {result['cost_vs_features_pass']:.2f}x "
                  f"the floor ({result['cpu_cost_vs_features_pass']:.2f}x in CPU time)")
    console.print(f"  dashboard tables {dashboard['finish_s']:.1f}s + logit effects and neighbours "
                  f"{dashboard['effects_s']:.1f}s = {dashboard['seconds_per_1k_latents']:.2f}s per 1k latents")
    if result["explain"]:
        e = result["explain"]
        console.print(f"  explain: {e['latents']} latents in {e['seconds']:.0f}s = {e['latents_per_hour']:.0f} "
                      f"latents/hour ({e['calls']} calls); detection AUROC {e['detection_auroc']:.3f} (baseline "
                      f"{e['baseline_detection_auroc']:.3f}), fuzzing {e['fuzzing_auroc']:.3f} (baseline "
                      f"{e['baseline_fuzzing_auroc']:.3f})")
    if result["sae_dashboard"] and "peer" in result["sae_dashboard"]:
        d = result["sae_dashboard"]
        console.print(f"  dashboards per 1k latents: actlab {d['actlab']['seconds_per_1k_latents']:.1f}s, "
                      f"SAEDashboard {d['peer']['seconds_per_1k_latents']:.1f}s ({d['speedup']:.1f}x)")
    save_result(result, model.device, bench.results_dir, bench.readme, markdown_table(result))
    return result


def _sae_dashboard(model, texts, cfg: LatentsBench) -> dict:
    """Dashboards per 1,000 latents from the same full windows of the corpus
    (SAEDashboard takes equal-length token rows, no mask) of the default
    model's SAE at block 15: actlab's pass, tables and effects for all its
    latents, against SAEDashboard's SaeVisRunner for `sae_dashboard_features`
    of them, in its own environment; and how far their maxima agree."""
    if model.name != DEFAULT_MODEL:
        return {"note": "SAEDashboard is compared on the default model's SAE only"}
    name, sae = next((n, s) for n, s in default_saes(model.name, model.device).items() if n.endswith("-15"))
    cut = cut_windows(model.tokenizer, texts, 0, cfg.context, True)
    full = [i for i, ids in enumerate(cut.ids) if len(ids) == cfg.context]
    windows = Windows([cut.ids[i] for i in full], cut.text_id[full], cut.start[full], True, cut.content)
    latents_cfg = LatentsConfig(context=cfg.context)
    extractor = latents_extractor(model, {name: sae}, latents_cfg)

    def ours():
        summary = extractor.run_windows(windows).summaries[name]
        n_tokens = len(windows) * windows.content
        tables = [latents_table(summary, name, n_tokens), top_table(summary, name, windows.content),
                  intervals_table(summary, name, latents_cfg.intervals, windows.content),
                  histograms_table(summary, name), cofiring_table(summary, name, latents_cfg.cofiring)]
        logit_effects(sae, model.hf_model, latents_cfg.logit_tokens, lambda t: model.token_strings([[t]])[0], name)
        neighbours(sae, latents_cfg.neighbours, name)
        return tables[0]

    ours()  # warm-up
    table, wall, cpu = _timed(ours)
    d_sae = sae.cfg.d_sae
    result = {"sae": name, "d_sae": d_sae, "windows": len(windows), "tokens": len(windows) * cfg.context,
              "actlab": {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "latents": d_sae,
                         "seconds_per_1k_latents": round(wall / d_sae * 1000, 3)}}
    notes: list[str] = []
    python = peer_python(cfg.peers_dir / "sae-dashboard", DASHBOARD_PEER, "SAEDashboard skipped", notes)
    if python is None:
        return {**result, "note": notes[0]}
    features = list(range(min(cfg.sae_dashboard_features, d_sae)))
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "spec.json"
        spec.write_text(json.dumps({"model_dir": model_dir(model), "sae_dir": sae.cfg.source,
                                    "tokens": windows.ids, "features": features,
                                    "minibatch_size_features": 256, "minibatch_size_tokens": 64,
                                    "ignore_tokens": [model.tokenizer.bos_token_id]}))
        done = subprocess.run([str(python), str(Path(__file__).with_name("sae_dashboard_worker.py")), str(spec)],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        return {**result, "note": "SAEDashboard failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]}
    peer = json.loads(done.stdout.strip().splitlines()[-1])
    mine, theirs = table.column("max").to_numpy()[features], np.array(peer["max"])
    both = (mine > 0) & (theirs > 0)
    result["peer"] = {"seconds": round(peer["seconds"], 2), "cpu_seconds": round(peer["cpu_seconds"], 2),
                      "latents": len(features), "seconds_per_1k_latents": round(peer["seconds"] / len(features) * 1000,
                                                                                3)}
    result["speedup"] = round(result["peer"]["seconds_per_1k_latents"] / result["actlab"]["seconds_per_1k_latents"],
                              2)
    result["cpu_speedup"] = round((peer["cpu_seconds"] / len(features)) / (cpu / d_sae), 2)
    result["max_agreement"] = {"active_in_both": int(both.sum()), "active_in_one": int((mine > 0).sum() + (
        theirs > 0).sum() - 2 * both.sum()), "median_relative_difference": round(float(np.median(
            np.abs(mine[both] - theirs[both]) / mine[both])), 4) if both.any() else None}
    return result


def _explained_per_hour(model, texts, saes, cfg: LatentsBench) -> dict:
    """A latents run over the corpus (the default SAE at block 15 on the
    default model), then `explain_latents` of its active latents (seeded)
    explained and scored by the local explainer, timed end to end (examples
    and pool included)."""
    if model.name == DEFAULT_MODEL:
        saes = {name: sae for name, sae in default_saes(model.name, model.device).items() if name.endswith("-15")}
    with tempfile.TemporaryDirectory() as folder:
        run = latents_run(model, texts, saes, Path(folder) / "run", LatentsConfig(context=cfg.context))
        explain = ExplainConfig(max_latents=cfg.explain_latents, explainer_model=model.name)
        result, wall, cpu = _timed(lambda: explain_latents(run, model, explain, saes))
    table = result.table.to_pandas()
    examples = 2 * (2 * table.n_activating + table.n_non_activating)  # scored per latent: both explanations
    means = {name: round(float(table[name].mean()), 4) for name in (
        "detection_auroc", "baseline_detection_auroc", "fuzzing_auroc", "baseline_fuzzing_auroc",
        "detection_accuracy", "baseline_detection_accuracy", "fuzzing_accuracy", "baseline_fuzzing_accuracy")}
    return {"sae": next(iter(saes)), "explainer": table.explainer.iloc[0], "latents": result.done,
            "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "latents_per_hour": round(result.done / wall * 3600, 1), "calls": result.calls,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "unscored_fraction": round(float(table.n_unscored.sum() / examples.sum()), 3), **means}


def _dashboard_seconds(model, texts, saes, cfg: LatentsConfig) -> dict:
    """An end-to-end run with the time of its two closing steps: merging the
    shards into the tables, and the weights-only effects."""
    timings = {}
    with tempfile.TemporaryDirectory() as folder:
        job = LatentsJob(Records.of(texts), Path(folder) / "run", cfg, 1024, saes)
        for step in ("extras", "complete"):
            original = getattr(job, step)

            def timed_step(*args, _original=original, _step=step, **kwargs):
                result, wall, _ = _timed(lambda: _original(*args, **kwargs))
                timings[_step] = wall
                return result
            setattr(job, step, timed_step)
        _, total, _ = _timed(lambda: local_run(model, job))
    d_sae = sum(sae.cfg.d_sae for sae in saes.values())
    return {"run_s": round(total, 2), "finish_s": round(timings["complete"], 2),
            "effects_s": round(timings["extras"], 2),
            "seconds_per_1k_latents": round((timings["complete"] + timings["extras"]) / d_sae * 1000, 3)}


def _memory(bench: BenchOptions, cfg: LatentsBench) -> list[dict]:
    """Per corpus size, a fresh process (torch's matmul, so every process
    holds the same weights; no logit effects or neighbours, which read only
    the weights; shards of 32 texts, the 1x corpus, since a shard's windows
    are held while it runs): its peak resident set (model included), and the
    peak above what it held after a 4-text warm-up run: the pass's own memory."""
    rows = []
    for size in SIZES:
        n_texts = cfg.memory_texts * size
        point = sweep_point("latents", bench.model, bench.device, None, n_texts, cfg.d_sae, cfg.k, cfg.context)
        rows.append({"corpus": f"{size}x", "n_texts": n_texts, "seconds": round(point["seconds"], 2),
                     "peak_rss_mb": round(point["peak_memory_bytes"] / 2 ** 20),
                     "above_warm_mb": round(point["above_warm_bytes"] / 2 ** 20)})
        console.print(f"  {size:>2}x corpus ({n_texts} texts): {point['seconds']:.1f}s, peak RSS "
                      f"{rows[-1]['peak_rss_mb']} MiB, {rows[-1]['above_warm_mb']} MiB above the warm process")
    return rows


def markdown_table(result: dict) -> str:
    lines = [f"Device: {result['device']}; {result['model']}; {result['n_texts']} texts, {result['n_windows']} "
             f"windows of <= {result['context']} tokens ({result['n_tokens']} tokens); one TopK SAE, "
             f"{result['d_sae']} latents, k={result['k']}; {result['date'][:10]}.", "",
             "| pass | seconds | CPU seconds | tokens/s |", "|---|---:|---:|---:|"]
    for name, row in result["methods"].items():
        lines.append(f"| {name} | {row['seconds']:.2f} | {row['cpu_seconds']:.2f} | {row['tokens_per_s']:.0f} |")
    lines += ["", f"Latents pass / features pass: {result['cost_vs_features_pass']:.2f}x wall, "
              f"{result['cpu_cost_vs_features_pass']:.2f}x CPU. Dashboard tables and effects: "
              f"{result['dashboard']['seconds_per_1k_latents']:.2f} s per 1,000 latents."]
    if result.get("memory"):
        lines += ["", "| corpus | texts | seconds | peak RSS (MiB) | above the warm process (MiB) |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {m['corpus']} | {m['n_texts']} | {m['seconds']:.1f} | {m['peak_rss_mb']} | {m['above_warm_mb']} |"
                  for m in result["memory"]]
    if result.get("explain"):
        e = result["explain"]
        lines += ["", f"Explanation ({e['explainer']}, SAE {e['sae']}, {e['latents']} latents, {e['calls']} calls): "
                  f"{e['latents_per_hour']:.0f} latents per hour ({e['seconds']:.0f} s, {e['cpu_seconds']:.0f} s CPU).",
                  "", "| score | explanation | token-frequency baseline |", "|---|---:|---:|"]
        lines += [f"| {task} {measure} | {e[f'{task}_{measure}']:.3f} | {e[f'baseline_{task}_{measure}']:.3f} |"
                  for task in ("detection", "fuzzing") for measure in ("auroc", "accuracy")]
    d = result.get("sae_dashboard")
    if d and "peer" in d:
        agree = d["max_agreement"]
        lines += ["", f"Dashboards of SAE {d['sae']} ({d['d_sae']} latents) over the same {d['windows']} full windows "
                  f"({d['tokens']} tokens):", "", "| pipeline | latents | seconds | CPU seconds | s per 1k latents |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {label} | {d[key]['latents']} | {d[key]['seconds']:.1f} | {d[key]['cpu_seconds']:.1f} | "
                  f"{d[key]['seconds_per_1k_latents']:.2f} |" for key, label in (("actlab", "actlab latents"),
                                                                                ("peer", "SAEDashboard"))]
        lines += ["", f"actlab {d['speedup']:.1f}x faster per latent ({d['cpu_speedup']:.1f}x in CPU time); latent "
                  f"maxima: {agree['active_in_both']} "
                  f"active in both, {agree['active_in_one']} in one only, median relative difference "
                  f"{agree['median_relative_difference']}."]
    elif d:
        lines += ["", f"SAEDashboard: {d.get('note')}"]
    return "\n".join(lines)
