"""`actlab circuit`: a sparse feature circuit over prompt pairs, as a
resumable run; a thin shell over actlab.circuit_run."""

import dataclasses

from ..circuits import CircuitConfig, CircuitRun, circuit_run
from ..pipelines import build_circuit_report
from ..runs import RunControl
from ..runs.ray import RayConfig
from .common import Bar, ModelOptions, SAEOptions, out, print_session, print_table, with_options
from .patch import PairsRunOptions

TOP = 10  # the strongest circuit nodes printed


@dataclasses.dataclass
class CircuitPageOptions:
    """What the circuit's page links to."""

    latents: str | None = dataclasses.field(default=None, metadata={
        "help": "A latents run of the same SAEs: the page's latent nodes link to its dashboards (RUN/browser) "
                "and show its explanations."})


@with_options(where=PairsRunOptions, model=ModelOptions, saes=SAEOptions, cfg=CircuitConfig, page=CircuitPageOptions,
              ray=RayConfig)
def circuit_command(where: PairsRunOptions, model: ModelOptions, saes: SAEOptions, cfg: CircuitConfig,
                    page: CircuitPageOptions, ray: RayConfig) -> None:
    """Find the sparse feature circuit of the pairs' behaviour (Marks et al. 2024): SAE latents, error terms and
    embeddings ranked by attribution patching, edges between consecutive SAEs, faithfulness by mean ablation;
    nodes and edges as Parquet, a JSON graph and a page (--ray: the node effects on a Ray cluster)."""
    with Bar("circuit") as bar:
        control = RunControl(shard_size=where.shard_size, overwrite=where.overwrite, progress=bar, runner=ray.runner,
                             ray=ray)
        path = circuit_run(model.for_runner(ray), where.pairs, where.out, saes.load(), cfg, control=control)
    run = CircuitRun.open(path)
    print_session(run.manifest)
    graph = run.graph()
    tokens = graph["tokens"]
    nodes = graph["nodes"]
    where = lambda p: "all" if p is None else f"{p} {tokens[p]!r}"  # noqa: E731
    print_table(f"strongest of the circuit's {len(nodes)} nodes over {run.manifest['n_rows']} pairs "
                "(effect on the logit difference)", ["node", "kind", "position", "effect"],
                [[n["node"], n["kind"], where(n["position"]), f"{n['effect']:+.3f}"] for n in nodes[:TOP]])
    chosen = [f"{r['faithfulness']:.2f} ({r['ablation']} ablation)" for r in graph["faithfulness"]
              if r["nodes"] == len(nodes)]
    faithful = f"; faithfulness {', '.join(chosen)}" if chosen else ""
    report = build_circuit_report(path, page.latents)
    out.print(f"{len(nodes)} nodes and {len(graph['edges'])} edges{faithful}; tables in {path}/circuit "
              f"(CircuitRun.nodes(), .edges(), .faithfulness()); page {report}")
