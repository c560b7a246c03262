"""The statistics and held-out detection of a contrast run, and what they
show in sentences (pure science: the report only renders these).

stats.parquet: one row per metric x layer x domain ("all" pools every
domain; "model prefers X" the pairs where the model finds X likelier, when
scored): n, the two conditions' means, mean_diff, d_z with its bootstrap
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

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..analyses.paired import auroc, fdr, grouped_folds, held_out_scores, paired_effects
from ..runs.atomic import write_parquet_atomic
from .passes import METRICS
from .run import ContrastRun

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
    run = ContrastRun.open(path)
    stats, detection = contrast_statistics(run, seed), contrast_detection(run, folds, seed)
    write_parquet_atomic(run.path / "stats.parquet", stats)
    write_parquet_atomic(run.path / "detection.parquet", detection)
    return stats, detection


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


def contrast_findings(run: ContrastRun, stats: pa.Table, detection: pa.Table) -> list[str]:
    """The run's findings in sentences, null results included: how often the
    model prefers each continuation (when scored), the significant effects,
    and detection per layer against the residual probes."""
    _, first, second = run.settings["pairs"]["conditions"]
    lines = findings(stats.to_pylist(), detection.to_pylist(), first, second,
                     run.manifest.get("unequal_token_lengths"), run.settings["pairs"]["n_pairs"])
    pairs = run.pairs()
    if "prefers" in pairs.column_names:
        prefers = pairs.filter(pc.equal(pairs.column("layer"), pairs.column("layer")[0])).column("prefers")
        n_first = prefers.to_pylist().count(first)
        lines.insert(1, f"The model itself finds the {first} likelier than the {second} in {n_first} of "
                        f"{len(prefers)} pairs.")
    return lines
