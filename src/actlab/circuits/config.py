"""What a sparse feature circuit is found from (CircuitConfig): how node
effects are estimated, and the thresholds, aggregation and curve that turn
them into a circuit."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine import auto_token_budget
from ..errors import ActlabError

CIRCUIT_METHODS = ("atp", "ig")
AGGREGATIONS = ("none", "sum")
ABLATIONS = ("mean", "corrupted")  # the faithfulness curve's two ablations (faithfulness.py)


@dataclass
class CircuitConfig:
    """Marks et al. (2024)'s sparse feature circuit over prompt pairs: node
    effects by attribution patching, nodes and edges kept above thresholds,
    the circuit's faithfulness measured by ablating the rest."""

    method: str = field(default="ig", metadata={
        "help": "Node effects: ig (integrated gradients at each SAE's hook, Marks et al.'s) or atp (one gradient "
                "on the corrupted run)."})
    ig_steps: int = field(default=10, metadata={"help": "Integration steps of ig (alpha = k / steps, k = 0..steps-1)."})
    node_threshold: float = field(default=0.1, metadata={
        "help": "Nodes whose mean |effect| (logit difference) reaches this are in the circuit."})
    edge_threshold: float = field(default=0.01, metadata={
        "help": "Edges between circuit nodes whose mean |effect| reaches this are kept."})
    aggregation: str = field(default="none", metadata={
        "help": "none: a node per token position (pairs of one template); sum: a node per latent, summed over "
                "positions."})
    max_batch_tokens: int | None = field(default=None, metadata={
        "help": "Padded tokens per forward (default: the device's token budget)."})

    def __post_init__(self):
        if self.method not in CIRCUIT_METHODS:
            raise ActlabError(f"unknown method '{self.method}'; choose one of {', '.join(CIRCUIT_METHODS)}",
                              param="method")
        if self.aggregation not in AGGREGATIONS:
            raise ActlabError(f"unknown aggregation '{self.aggregation}'; choose one of {', '.join(AGGREGATIONS)}",
                              param="aggregation")
        if self.ig_steps < 1:
            raise ActlabError(f"ig_steps must be at least 1, not {self.ig_steps}", param="ig_steps")
        for name in ("node_threshold", "edge_threshold"):
            if not getattr(self, name) >= 0:
                raise ActlabError(f"{name} must be at least 0, not {getattr(self, name)}", param=name)
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ActlabError(f"max_batch_tokens must be at least 1, not {self.max_batch_tokens}",
                              param="max_batch_tokens")

    def batch_tokens(self, model) -> int:
        return self.max_batch_tokens or auto_token_budget(model.device, model.d_model)

    def settings(self) -> dict:
        """What the node effects depend on (a run resumes only with these equal)."""
        return {"method": self.method, **({"ig_steps": self.ig_steps} if self.method == "ig" else {})}

    def selection(self) -> dict:
        """What turns node effects into the circuit (recomputed when changed)."""
        return {"node_threshold": self.node_threshold, "edge_threshold": self.edge_threshold,
                "aggregation": self.aggregation}
