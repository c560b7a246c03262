"""Sparse feature circuits (Marks et al. 2024): SAE latents, error terms
and embeddings as nodes, their effects on a prompt pair's metric by
attribution patching, edges between consecutive SAE sites, and the
circuit's faithfulness with the rest ablated (to the mean, as Marks et al.,
and to the corrupted run)."""

from .config import CircuitConfig
from .graph import METRIC, Circuit, find_circuit, node_id
from .nodes import EMBED_SITE, PairRuns, Site, circuit_sites, node_effects
from .run import CIRCUIT, CIRCUIT_SHARD_SIZE, CircuitJob, CircuitRun, circuit_run, write_circuit

__all__ = ["CIRCUIT", "CIRCUIT_SHARD_SIZE", "EMBED_SITE", "METRIC", "Circuit", "CircuitConfig", "CircuitJob",
           "CircuitRun", "PairRuns", "Site", "circuit_run", "circuit_sites", "find_circuit", "node_effects",
           "node_id", "write_circuit"]
