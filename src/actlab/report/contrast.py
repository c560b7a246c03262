"""The paired-contrast analysis end to end: the contrast run (actlab.contrast),
its statistics and held-out detection (stats.parquet, detection.parquet),
and its HTML page (report.html), collected then rendered.

stats.parquet: one row per metric x layer x domain ("all" pools every
domain): n, the two conditions' means, mean_diff, d_z with its bootstrap
interval, cohens_d_pooled, wilcoxon_p, and q (Benjamini-Hochberg over every
row) with significant = q < 0.05. Pair metrics (centroid drift and axis twist
from the prompt, the cross-layer cosine) compare the two conditions the same
way.

detection.parquet: one row per layer x domain x detector: AUROC of
out-of-fold scores under stratified k-fold grouped by pair: each single SAE
metric, a logistic regression on every SAE metric, and the baselines a
reviewer asks for first, a linear probe and a difference-of-means probe on
the raw residual at that layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import plots
from ..analyses.paired import auroc, fdr, grouped_folds, held_out_scores, paired_effects
from ..contrasts.pairs import Pairs, load_pairs
from ..contrasts.run import METRICS, ContrastConfig, ContrastRun, contrast_run
from ..engine import ExtractConfig, Progress
from ..models import Model
from ..runs.atomic import write_parquet_atomic
from ..storage import read_parquet, run_path
from .build import write_page
from .html import STYLE, image, section, table

ALPHA = 0.05
ALL = "all"


def pair_measures(conditions: list[str]) -> dict[str, tuple[str, str]]:
    """Pair metrics compared between the conditions: name -> (first's column, second's)."""
    _, first, second = conditions
    return {name: (f"{name}_{first}", f"{name}_{second}") for name in ("drift", "twist", "cross_layer_cos")}


def scopes(texts, pairs) -> dict[str, set]:
    """Subsets of pairs to test: all, each domain and, when the run scored the
    continuations, the pairs where the model prefers each one."""
    out = {ALL: set(texts["pair_index"])}
    for domain in sorted(texts["domain"].unique()):
        out[domain] = set(texts[texts["domain"] == domain]["pair_index"])
    if "prefers" in pairs:
        for condition in sorted(pairs["prefers"].unique()):
            out[f"model prefers {condition}"] = set(pairs[pairs["prefers"] == condition]["pair_index"])
    return out


def contrast_statistics(run: ContrastRun, seed: int = 0) -> pa.Table:
    texts, pairs = run.texts().to_pandas(), run.pairs().to_pandas()
    _, first, second = run.settings["pairs"]["conditions"]
    subsets = scopes(texts, pairs)
    rows = []
    for layer in sorted(texts["layer"].unique()):
        here, pair_rows = texts[texts["layer"] == layer], pairs[pairs["layer"] == layer]
        for domain, members in subsets.items():
            scope = here[here["pair_index"].isin(members)]
            a = scope[scope["condition"] == first].sort_values("pair_index")
            b = scope[scope["condition"] == second].sort_values("pair_index")
            for metric in METRICS:
                rows.append({"metric": metric, "kind": "text", "layer": int(layer), "domain": domain,
                             **paired_effects(a[metric].to_numpy(), b[metric].to_numpy(), seed)})
            scoped = pair_rows[pair_rows["pair_index"].isin(members)]
            for name, (col_a, col_b) in pair_measures(run.settings["pairs"]["conditions"]).items():
                rows.append({"metric": name, "kind": "pair", "layer": int(layer), "domain": domain,
                             **paired_effects(scoped[col_a].to_numpy(), scoped[col_b].to_numpy(), seed)})
    out = pa.Table.from_pylist(rows)
    q = fdr(out.column("wilcoxon_p").to_numpy(zero_copy_only=False))
    return out.append_column("q", pa.array(q)).append_column("significant", pa.array(np.nan_to_num(q, nan=1) < ALPHA))


def contrast_detection(run: ContrastRun, folds: int = 5, seed: int = 0) -> pa.Table:
    texts = run.texts().to_pandas()
    keys, residual = run.vectors("residual")
    keys = keys.to_pandas()
    _, first, second = run.settings["pairs"]["conditions"]
    subsets = scopes(texts, run.pairs().to_pandas())
    rows = []
    for layer in sorted(texts["layer"].unique()):
        for domain, members in subsets.items():
            chosen = ((texts["layer"] == layer) & texts["condition"].isin([first, second]) &
                      texts["pair_index"].isin(members))
            part = texts[chosen].sort_values(["pair_index", "condition"])
            if part["pair_index"].nunique() < 2:
                continue
            labels = (part["condition"] == second).to_numpy().astype(int)
            splits = grouped_folds(labels, part["pair_index"].to_numpy(), folds, seed)
            order = keys.reset_index().set_index(["pair_index", "condition", "layer"]).loc[
                list(zip(part["pair_index"], part["condition"], part["layer"]))]["index"].to_numpy()
            x_res = residual[order]
            detectors = {f"metric:{m}": (part[[m]].to_numpy(), "single") for m in METRICS}
            detectors["sae_metrics_logistic"] = (part[list(METRICS)].to_numpy(), "logistic")
            detectors["residual_linear_probe"] = (x_res, "logistic")
            detectors["residual_mean_diff_probe"] = (x_res, "mean_diff")
            for name, (x, method) in detectors.items():
                rows.append({"layer": int(layer), "domain": domain, "detector": name, "n_texts": len(labels),
                             "auroc": auroc(held_out_scores(x, labels, splits, method), labels)})
    return pa.Table.from_pylist(rows)


def analyze_contrast(path: str | Path, folds: int = 5, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """stats.parquet and detection.parquet of a contrast run."""
    run = ContrastRun(path)
    stats, detection = contrast_statistics(run, seed), contrast_detection(run, folds, seed)
    write_parquet_atomic(run.path / "stats.parquet", stats)
    write_parquet_atomic(run.path / "detection.parquet", detection)
    return stats, detection


def contrast(model: Model, pairs: "Pairs | str | Path | list", saes=None, out_dir: str | Path = "runs/contrast",
             cfg: ContrastConfig | None = None, extract: ExtractConfig | None = None, overwrite: bool = False,
             progress: Progress | None = None, folds: int = 5, report: bool = True, runner: str = "local",
             ray=None) -> dict:
    """Everything: the one-pass run (resumable; runner="ray": its shards on a
    Ray cluster), statistics, detection and, with report, RUN/report.html.
    pairs: Pairs, or pairs file(s) / "builtin" read with the default field
    names. Returns the headline findings."""
    if not isinstance(pairs, Pairs):
        pairs = load_pairs(pairs)
    path = contrast_run(model, pairs, saes, out_dir, cfg, extract, overwrite, progress, runner, ray)
    seed = (cfg or ContrastConfig()).seed
    stats, detection = analyze_contrast(path, folds, seed)
    data = collect_contrast_report(ContrastRun(path), stats, detection)
    if report:
        write_page(run_path(path) / "report.html", render_contrast_report(data), data.figures)
    return {"run": str(path), "summary": data.findings, "stats": stats, "detection": detection}


@dataclass
class ContrastReportData:
    run: ContrastRun
    stats: list[dict]
    detection: list[dict]
    findings: list[str]  # what the data show, null results included
    figures: dict[str, bytes]


def findings(stats: list[dict], detection: list[dict], first: str, second: str, unequal: int | None = None,
             n_pairs: int | None = None) -> list[str]:
    pooled = [r for r in stats if r["domain"] == ALL]
    significant = [r for r in pooled if r["significant"]]
    lines = [] if unequal is None else [
        f"{unequal} of {n_pairs} pairs have continuations of unequal token length (the rest cannot differ by length)."]
    lines += [f"{len(significant)} of {len(pooled)} pooled paired tests are significant at a "
             f"Benjamini-Hochberg FDR of {ALPHA:.0%} ({sum(r['significant'] for r in stats)} of {len(stats)} "
             "including the per-domain tests)."]
    if significant:
        top = max(significant, key=lambda r: abs(r["d_z"]))
        lines.append(f"Largest significant effect: {top['metric']} at layer {top['layer']}, d_z = {top['d_z']:.2f} "
                     f"[{top['d_z_low']:.2f}, {top['d_z_high']:.2f}] ({second} minus {first}).")
    else:
        top = max(pooled, key=lambda r: abs(np.nan_to_num(r["d_z"])))
        lines.append(f"No metric differs significantly between {first} and {second}; the largest |d_z| is "
                     f"{abs(top['d_z']):.2f} ({top['metric']}, layer {top['layer']}).")
    pooled_detection = [r for r in detection if r["domain"] == ALL]
    for layer in sorted({r["layer"] for r in pooled_detection}):
        at = {r["detector"]: r["auroc"] for r in pooled_detection if r["layer"] == layer}
        single = max((v for k, v in at.items() if k.startswith("metric:")), default=float("nan"))
        lines.append(f"Layer {layer}: held-out AUROC {at['sae_metrics_logistic']:.2f} from all SAE metrics "
                     f"(best single metric {single:.2f}) vs {at['residual_linear_probe']:.2f} for a linear probe "
                     f"and {at['residual_mean_diff_probe']:.2f} for a difference-of-means probe on the residual.")
    return lines


def collect_contrast_report(run: ContrastRun, stats: pa.Table, detection: pa.Table) -> ContrastReportData:
    stats_rows, detection_rows = stats.to_pylist(), detection.to_pylist()
    _, first, second = run.settings["pairs"]["conditions"]
    pooled = [r for r in stats_rows if r["domain"] == ALL]
    forest = [{"label": f"L{r['layer']} {r['metric']}", "d_z": r["d_z"], "low": r["d_z_low"], "high": r["d_z_high"],
               "significant": r["significant"]} for r in pooled if np.isfinite(r["d_z"])]
    figures = {"forest.png": plots.forest_plot(forest, f"{second} minus {first}, every domain pooled")}
    domains = sorted({r["domain"] for r in stats_rows if r["domain"] != ALL})
    layers = sorted({r["layer"] for r in stats_rows})
    counts = np.array([[sum(r["significant"] for r in stats_rows if r["domain"] == d and r["layer"] == layer)
                        for layer in layers] for d in domains])
    figures["heatmap.png"] = plots.value_heatmap(counts, domains, [f"layer {layer}" for layer in layers],
                                                 "metrics with an FDR-significant difference", "tests with q < 0.05")
    texts = run.texts().to_pandas()
    top = sorted((r for r in pooled if r["kind"] == "text" and np.isfinite(r["d_z"])),
                 key=lambda r: -abs(r["d_z"]))[:3]
    panels = []
    for r in top:
        here = texts[(texts["layer"] == r["layer"])]
        panels.append({"label": f"{r['metric']}, layer {r['layer']} (d_z {r['d_z']:.2f})", "names": [first, second],
                       "first": here[here["condition"] == first][r["metric"]].to_numpy(),
                       "second": here[here["condition"] == second][r["metric"]].to_numpy()})
    if panels:
        figures["distributions.png"] = plots.paired_histograms(panels, "the largest effects")
    pooled_detection = [r for r in detection_rows if r["domain"] == ALL]
    series = {name: [(r["layer"], r["auroc"]) for r in pooled_detection if r["detector"] == name]
              for name in ("sae_metrics_logistic", "residual_linear_probe", "residual_mean_diff_probe")}
    series["best single SAE metric"] = [(layer, max(r["auroc"] for r in pooled_detection if r["layer"] == layer
                                                    and r["detector"].startswith("metric:"))) for layer in layers]
    figures["detection.png"] = plots.auroc_by_layer(series, f"held-out detection of {second} vs {first}")
    lines = findings(stats_rows, detection_rows, first, second, run.manifest.get("unequal_token_lengths"),
                     run.settings["pairs"]["n_pairs"])
    pairs = run.pairs()
    if "prefers" in pairs.column_names:
        prefers = pairs.filter(pc.equal(pairs.column("layer"), pairs.column("layer")[0])).column("prefers")
        n_first = prefers.to_pylist().count(first)
        lines.insert(1, f"The model itself finds the {first} likelier than the {second} in {n_first} of "
                        f"{len(prefers)} pairs.")
    return ContrastReportData(run, stats_rows, detection_rows, lines, figures)


def noise_setting(cfg: dict) -> str:
    scale = "absolute sigma" if cfg["absolute_noise"] else "relative to |x|"
    return f"{cfg['noise']:g} ({scale}), {cfg['draws']} draws per text, seed {cfg['seed']}"


def render_contrast_report(data: ContrastReportData) -> str:
    settings = data.run.settings
    facts = [("model", settings["model"]["id"]), ("pairs", str(settings["pairs"]["n_pairs"])),
             ("conditions", ", ".join(settings["pairs"]["conditions"])),
             ("SAEs", ", ".join(f"{n} ({h})" for n, h in settings["saes"].items())),
             ("position", settings["contrast"]["position"]),
             ("noise", noise_setting(settings["contrast"]))]
    pooled = [r for r in data.stats if r["domain"] == ALL]
    stat_rows = [[escape(r["metric"]), str(r["layer"]), str(r["n"]), f"{r['mean_diff']:.4g}",
                  f"{r['d_z']:.3f} [{r['d_z_low']:.3f}, {r['d_z_high']:.3f}]", f"{r['cohens_d_pooled']:.3f}",
                  f"{r['wilcoxon_p']:.2g}", f"{r['q']:.2g}", "yes" if r["significant"] else ""] for r in pooled]
    detection = [r for r in data.detection if r["domain"] == ALL and not r["detector"].startswith("metric:")]
    sections = [
        section("summary", "Run", table(["setting", "value"], [[escape(k), escape(v)] for k, v in facts]) +
                "".join(f"<p>{escape(line)}</p>" for line in data.findings)),
        section("effects", "Paired effects", image(data.figures["forest.png"], "forest plot") +
                table(["metric", "layer", "n", "mean diff", "d_z [95% CI]", "pooled-SD d", "Wilcoxon p", "q (BH)",
                       "significant"], stat_rows)),
        section("domains", "Domains x layers", image(data.figures["heatmap.png"], "heatmap")),
        section("distributions", "Distributions",
                image(data.figures["distributions.png"], "histograms") if "distributions.png" in data.figures
                else '<p class="note">No finite effects to show.</p>'),
        section("detection", "Held-out detection", image(data.figures["detection.png"], "AUROC per layer") +
                table(["layer", "detector", "AUROC", "texts"], [[str(r["layer"]), escape(r["detector"]),
                                                                 f"{r['auroc']:.3f}", str(r["n_texts"])]
                                                                for r in detection]))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>actlab contrast report</title>"
            f"<style>{STYLE}</style></head><body><h1>actlab contrast report: {escape(data.run.path.name)}</h1>"
            f"{''.join(sections)}</body></html>\n")


def build_contrast_report(path: str | Path, out: str | Path | None = None) -> Path:
    """report.html of a contrast run (statistics computed when missing)."""
    run = ContrastRun(path)
    if (run.path / "stats.parquet").exists() and (run.path / "detection.parquet").exists():
        stats, detection = read_parquet(run.path / "stats.parquet"), read_parquet(run.path / "detection.parquet")
    else:
        stats, detection = analyze_contrast(path)
    data = collect_contrast_report(run, stats, detection)
    return write_page(run_path(out) if out else run.path / "report.html", render_contrast_report(data), data.figures)

