"""`actlab generate`: answers to every prompt of a file, with pooled
activations captured and optional steering, as a resumable run; a thin
shell over actlab.generate_run."""

import dataclasses

from ..generation import GenerationConfig
from ..generation.run import GenerationRun, GenerationRunConfig, generate_run
from ..inputs import FieldNames
from ..runs.ray import RayConfig
from .common import Bar, GenerationModelOptions, RunOptions, out, print_session, with_options


@with_options(run=RunOptions, fields=FieldNames, model=GenerationModelOptions, cfg=GenerationRunConfig,
              gen=GenerationConfig, ray=RayConfig, exclude=("cfg.generation",))
def generate_command(run: RunOptions, fields: FieldNames, model: GenerationModelOptions, cfg: GenerationRunConfig,
                     gen: GenerationConfig, ray: RayConfig) -> None:
    """Answer every prompt of a file (continuous batching), with pooled activations at --layers and optional
    --steer, to a resumable Parquet run directory (--ray: on a Ray cluster)."""
    records = run.read(fields, by_row_range=ray.runner == "ray")
    with Bar("generate") as bar:
        path = generate_run(model.for_runner(ray), records, run.out, dataclasses.replace(cfg, generation=gen),
                            control=run.control(bar, ray))
    result = GenerationRun.open(path)
    print_session(result.manifest)
    finished = sum(result.answers().column("finished").to_pylist())
    out.print(f"wrote {result.manifest['n_rows']} answers ({finished} ended at EOS) to {path}")
