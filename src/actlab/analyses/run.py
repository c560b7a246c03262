"""Every feature analysis over a Features result, as tables (pure: the
pipelines write them into a run, actlab.pipelines.analyze_run)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ActlabError
from ..links import neuronpedia_link
from .features import (
    category_specialists,
    coactivation,
    comparison_table,
    most_frequent,
    most_selective,
    strongest,
)


@dataclass
class AnalysisConfig:
    """What the feature analyses count as clearly on, and how many rows they keep."""

    threshold: float = field(default=5.0, metadata={
        "help": "A latent is clearly on for a text when its value exceeds this."})
    top: int = field(default=5, metadata={"help": "Rows per table and SAE."})

    def __post_init__(self):
        if self.top < 1:
            raise ActlabError(f"top must be at least 1, not {self.top}", param="top")


def analyze_features(feats, threshold: float = AnalysisConfig.threshold,
                     k: int = AnalysisConfig.top) -> dict[str, list[dict]]:
    """Tables by name: per-SAE strongest / frequent / selective / specialists /
    coactivation rows (with an `sae` column and Neuronpedia links) and the
    comparison table. Per-token runs are analysed per text, by each text's
    maximum over its tokens."""
    categories = feats.metadata.get("fields", {}).get("category")
    matrices = {name: feats.per_text(name) for name in feats.names}
    tables: dict[str, list[dict]] = {"strongest": [], "frequent": [], "selective": [], "coactivation": []}
    if categories is not None:
        tables["specialists"] = []
    for name, F in matrices.items():
        npid = feats.configs[name].neuronpedia_id
        found = {"strongest": strongest(F, k), "frequent": most_frequent(F, k),
                 "selective": most_selective(F, threshold, k), "coactivation": coactivation(F, k=k)}
        if categories is not None:
            found["specialists"] = category_specialists(F, categories, threshold)
        for table, rows in found.items():
            for row in rows:
                link = {"neuronpedia": neuronpedia_link(npid, row["latent"])} if "latent" in row else {}
                tables[table].append({"sae": name, **row, **link})
    comparison = comparison_table(matrices, categories, threshold, k)
    tables["comparison"] = [{"row": row, **{sae: " ".join(map(str, ids)) for sae, ids in cells.items()}}
                            for row, cells in comparison.items()]
    return tables
