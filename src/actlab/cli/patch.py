"""`actlab patch`: activation patching over prompt pairs, as a resumable
run; a thin shell over actlab.patch_run."""

import dataclasses
from pathlib import Path

from ..patching import IOI, PatchConfig
from ..patching.run import PatchRun, patch_run
from ..pipelines import build_patch_report
from ..runs import RunControl
from ..runs.ray import RayConfig
from .common import Bar, ModelOptions, out, print_session, print_table, with_options

TOP = 8  # the strongest mean effects printed


@dataclasses.dataclass
class PairsRunOptions:
    """Where a run over prompt pairs (patch, circuit) goes and which pairs it reads."""

    out: Path = dataclasses.field(metadata={"help": "Run directory (resumable): a path or an s3:// / gs:// URI.",
                                            "short": "-o"})
    pairs: str = dataclasses.field(default=IOI, metadata={
        "help": "JSONL (or JSON, CSV, Parquet) of {id, clean, corrupted, answer, wrong_answer}, or 'ioi' (the "
                "built-in indirect-object pairs)."})
    shard_size: int | None = dataclasses.field(default=None, metadata={"help": "Pairs per shard (default 16)."})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "Replace an existing run in --out."})



@with_options(where=PairsRunOptions, model=ModelOptions, cfg=PatchConfig, ray=RayConfig)
def patch_command(where: PairsRunOptions, model: ModelOptions, cfg: PatchConfig, ray: RayConfig) -> None:
    """Patch each clean activation into the corrupted run, for every component, layer and position (and head), and
    measure the logit difference answer - wrong answer; effects as Parquet (--ray: on a Ray cluster)."""
    with Bar("patch") as bar:
        control = RunControl(shard_size=where.shard_size, overwrite=where.overwrite, progress=bar, runner=ray.runner,
                             ray=ray)
        path = patch_run(model.for_runner(ray), where.pairs, where.out, cfg, control=control)
    run = PatchRun.open(path)
    print_session(run.manifest)
    means = [m for m in run.mean_effects().sort_by([("normalized", "descending")]).to_pylist()
             if m["normalized"] == m["normalized"]][:TOP]  # NaN (clean equal to corrupted) left out
    tokens = run.pairs().column("clean_tokens")[0].as_py()
    print_table(f"strongest mean effects over {run.manifest['n_rows']} pairs (normalized: 1 = clean restored)",
                ["method", "component", "block", "position", "head", "normalized", "logit diff"],
                [[m["method"], m["component"], m["layer"], "all" if m["position"] is None else
                  f"{m['position']} {tokens[m['position']]!r}" if m["position"] < len(tokens) else m["position"],
                  "" if m["head"] is None else m["head"], f"{m['normalized']:.3f}", f"{m['metric_patched']:.2f}"]
                 for m in means])
    page = build_patch_report(path)
    out.print(f"effects of {run.effects().num_rows} variants in {path} (PatchRun.effects(), .mean_effects()); "
              f"heatmaps in {page}")
