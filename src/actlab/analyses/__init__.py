"""Analyses: pure functions on arrays (texts x latents feature matrices,
activation matrices). The CLI prints and stores what they return."""

from .features import (
                       category_specialists,
                       coactivation,
                       comparison_table,
                       concept_features,
                       explore,
                       explore_tokens,
                       most_frequent,
                       most_selective,
                       strongest,
)
from .probes import nearest_centroid_accuracy

__all__ = ["category_specialists", "coactivation", "comparison_table", "concept_features", "explore",
           "explore_tokens", "most_frequent", "most_selective", "nearest_centroid_accuracy",
           "strongest"]
