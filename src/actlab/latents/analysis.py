"""What a latents run answers without the model: the feature analyses of
SAE-comparison notebooks (strongest, frequent, selective, the comparison
table across SAEs; `actlab analyze RUN`) from its per-latent summaries, and
concept search (`actlab latents search RUN CONCEPT`) over its top windows
and explanations. Units are windows:

    strongest   the largest maximum, and its window
    frequent    the most windows where the latent is active
    selective   the fewest windows whose maximum exceeds the threshold (at
                least one), counted in the latent's top windows: exact below
                `--top` such windows, which is where the selective ones are
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..analyses.features import (
    RankingStats,
    comparison_table,
    most_frequent,
    most_selective,
    strongest,
)
from ..errors import ActlabError
from ..links import neuronpedia_link
from .run import LatentsRun


def latent_stats(run: LatentsRun, sae: str, threshold: float) -> RankingStats:
    latents = run.latents(sae)
    d_sae = latents.num_rows
    top = run.table("top", sae)
    latent, value = top.column("latent").to_numpy(), top.column("value").to_numpy()
    where = np.full(d_sae, -1, np.int64)
    first = top.column("rank").to_numpy() == 0
    where[latent[first]] = top.column("window").to_numpy()[first]
    return RankingStats(latents.column("max").to_numpy(), where, latents.column("windows").to_numpy(),
                       np.bincount(latent[value > threshold], minlength=d_sae), int(run.manifest["n_windows"]),
                       unit="window")


def analyze_latents(run: LatentsRun, threshold: float = 5.0, k: int = 5) -> dict[str, list[dict]]:
    """Tables by name, as analyze_features gives them for a features run:
    strongest / frequent / selective rows (sae, latent, ..., explanation
    where the run has one, Neuronpedia link) and the comparison table."""
    stats = {sae: latent_stats(run, sae, threshold) for sae in run.saes}
    tables: dict[str, list[dict]] = {"strongest": [], "frequent": [], "selective": []}
    for sae, s in stats.items():
        latents = run.latents(sae)
        notes = latents.column("explanation").to_pylist() if "explanation" in latents.column_names else None
        npid = run.sae_config(sae).neuronpedia_id
        found = {"strongest": strongest(s, k), "frequent": most_frequent(s, k),
                 "selective": most_selective(s, threshold, k)}
        for table, rows in found.items():
            for row in rows:
                note = {"explanation": notes[row["latent"]]} if notes else {}
                tables[table].append({"sae": sae, **row, **note,
                                      "neuronpedia": neuronpedia_link(npid, row["latent"])})
    comparison = comparison_table(stats, None, threshold, k)
    tables["comparison"] = [{"row": row, **{sae: " ".join(map(str, ids)) for sae, ids in cells.items()}}
                            for row, cells in comparison.items()]
    return tables


@dataclass
class SearchConfig:
    """Where concept_latents looks for a concept, and how many latents it lists."""

    sae: str | None = field(default=None, metadata={"help": "The run's SAE (default: each)."})
    top: int = field(default=10, metadata={"help": "Latents listed."})

    def __post_init__(self):
        if self.top < 1:
            raise ActlabError(f"top must be at least 1, not {self.top}", param="top")


def concept_latents(run: LatentsRun, concept: str, cfg: SearchConfig | None = None) -> pa.Table:
    """The latents about a concept (its words, case-insensitive): ranked by
    the share of their top windows that peak on one of those words, then by
    whether their explanation names one, then by their maximum; the first
    cfg.top of them. One row per latent with hits or a naming explanation:
    sae, latent, hits, top_windows, share, max, frequency, explanation,
    explained."""
    cfg = cfg or SearchConfig()
    words = {w.lower() for w in re.findall(r"\w+", concept)}
    parts = [_concept_rows(run, name, words) for name in ([run.sae_name(cfg.sae)] if cfg.sae else run.saes)]
    table = pa.concat_tables(parts)
    named = table.column("explained").to_numpy(zero_copy_only=False)
    order = np.lexsort((-table.column("max").to_numpy(), ~named, -table.column("share").to_numpy()))
    return table.take(pa.array(order[:cfg.top], pa.int64()))


def _concept_rows(run: LatentsRun, sae: str, words: set[str]) -> pa.Table:
    latents = run.latents(sae)
    d_sae = latents.num_rows
    top = run.with_tokens(run.table("top", sae))
    tokens = top.column("tokens").combine_chunks()
    peak = pc.list_flatten(tokens).take(pa.array(tokens.offsets.to_numpy()[:-1] + top.column("position").to_numpy()))
    hit = np.array([t.strip().lower() in words for t in peak.to_pylist()], bool)
    latent = top.column("latent").to_numpy()
    hits, windows = np.bincount(latent[hit], minlength=d_sae), np.bincount(latent, minlength=d_sae)
    notes = latents.column("explanation").to_pylist() if "explanation" in latents.column_names else [None] * d_sae
    explained = np.array([bool(n) and bool(words & {w.lower() for w in re.findall(r"\w+", n)}) for n in notes])
    keep = np.flatnonzero((hits > 0) | explained)
    return pa.table({"sae": pa.array([sae] * len(keep), pa.string()), "latent": pa.array(keep, pa.int32()),
                     "hits": hits[keep], "top_windows": windows[keep],
                     "share": hits[keep] / np.maximum(windows[keep], 1),
                     "max": latents.column("max").to_numpy()[keep],
                     "frequency": latents.column("frequency").to_numpy()[keep],
                     "explanation": pa.array([notes[j] for j in keep], pa.string()),
                     "explained": pa.array(explained[keep], pa.bool_())})
