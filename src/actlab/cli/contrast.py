"""`actlab contrast`: the paired-contrast analysis of SAE feature geometry."""

import dataclasses
from pathlib import Path

from ..contrasts.config import ContrastConfig
from ..contrasts.pairs import PairFields
from ..engine import ExtractConfig
from ..runs import RunControl
from ..runs.ray import RayConfig
from .common import Bar, ModelOptions, SAEOptions, out, print_session, print_table, with_options


@dataclasses.dataclass
class ContrastOptions:
    """The pairs read and where the run goes."""

    pairs: list[str] = dataclasses.field(metadata={
        "help": "Pairs file(s): JSON arrays (the seed's format), JSONL, CSV or Parquet; 'builtin' for the set that "
                "ships with actlab. Repeatable."})
    out: Path = dataclasses.field(metadata={"short": "-o", "help": "Run directory (resumable)."})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "Replace an existing run in --out."})


@with_options(files=ContrastOptions, fields=PairFields, model=ModelOptions, cfg=ContrastConfig, batching=ExtractConfig,
              ray=RayConfig, saes=SAEOptions, exclude=("hooks", "pooling", "include_bos"))
def contrast_command(files: ContrastOptions, fields: PairFields, model: ModelOptions, cfg: ContrastConfig,
                     batching: ExtractConfig, ray: RayConfig, saes: SAEOptions) -> None:
    """Fact vs hallucination (any two conditions over the same prompts): SAE metrics of every text in one
    pass, paired statistics with FDR control, held-out detection against residual probes, an HTML report
    (--ray: the pass on a Ray cluster)."""
    from ..contrasts.pairs import load_pairs
    from ..pipelines import contrast
    from ..runs import read_manifest

    loaded = load_pairs(files.pairs, fields)
    if loaded.duplicates:
        out.print(f"[yellow]{len(loaded.duplicates)} prompt(s) occur more than once; each is kept at its first "
                  "occurrence (all are listed in the run's manifest):", highlight=False)
        for duplicate in loaded.duplicates[:10]:
            out.print(f"  {duplicate.describe()}", highlight=False, markup=False)
        if len(loaded.duplicates) > 10:
            out.print(f"  and {len(loaded.duplicates) - 10} more")
    with Bar("contrast") as bar:
        result = contrast(model.for_runner(ray), loaded, saes.load(), files.out, cfg, batching,
                          control=RunControl(overwrite=files.overwrite, progress=bar, runner=ray.runner, ray=ray))
    print_session(read_manifest(result["run"]))
    for line in result["summary"]:
        out.print(line)
    stats = [r for r in result["stats"].to_pylist() if r["domain"] == "all"]
    shown = sorted(stats, key=lambda r: (not r["significant"], -abs(r["d_z"]) if r["d_z"] == r["d_z"] else 0))[:12]
    print_table("paired effects, every domain pooled (largest first)",
                ["metric", "layer", "d_z [95% CI]", "pooled-SD d", "q", "significant"],
                [[r["metric"], r["layer"], f"{r['d_z']:.2f} [{r['d_z_low']:.2f}, {r['d_z_high']:.2f}]",
                  f"{r['cohens_d_pooled']:.2f}", f"{r['q']:.2g}", "yes" if r["significant"] else ""] for r in shown])
    out.print(f"run, stats.parquet, detection.parquet and report.html in {result['run']}")
