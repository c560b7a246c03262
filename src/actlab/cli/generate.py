"""`actlab generate`: answers to every prompt of a file, with pooled
activations captured and optional steering, as a resumable run; a thin
shell over actlab.generate_run."""

import dataclasses
from pathlib import Path

from ..errors import ActlabError
from ..generation import GenerationConfig
from ..generation.run import FileVector, GenerationRun, GenerationRunConfig, generate_run
from ..inputs import FieldNames
from ..runs.ray import RayConfig
from .common import Bar, EditOptions, GenerationModelOptions, RunOptions, out, print_session, with_options


@dataclasses.dataclass
class VectorOptions:
    """--steer and --project as typed: strings parsed here into GenerationRunConfig's FileVectors."""

    steer: str | None = dataclasses.field(default=None, metadata={
        "help": "VECTORS.safetensors:LAYER:COEFF: add COEFF x the file's layer_LAYER vector (or its only tensor) "
                "at block LAYER's output."})
    project: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "VECTORS.safetensors:LAYER: every answer token's projection onto the file's layer_LAYER vector, in "
                "column projection_<file stem>_<LAYER>; repeatable."})

    def steering(self) -> FileVector | None:
        if self.steer is None:
            return None
        path, _, coeff = self.steer.rpartition(":")
        path, _, layer = path.rpartition(":")
        try:
            return FileVector(Path(path), int(layer), float(coeff))
        except ValueError:
            raise ActlabError(f"--steer '{self.steer}' is not VECTORS.safetensors:LAYER:COEFF "
                              "(e.g. runs/t/vectors/mean_diff.safetensors:15:4.0)", param="steer") from None

    def projections(self) -> list[FileVector]:
        vectors = []
        for spec in self.project:
            path, _, layer = spec.rpartition(":")
            if not path or not layer.lstrip("-").isdigit():
                raise ActlabError(f"--project '{spec}' is not VECTORS.safetensors:LAYER "
                                  "(e.g. runs/t/vectors/mean_diff.safetensors:15)", param="project")
            vectors.append(FileVector(Path(path), int(layer)))
        return vectors


@with_options(run=RunOptions, fields=FieldNames, model=GenerationModelOptions, cfg=GenerationRunConfig,
              vectors=VectorOptions, edits=EditOptions, gen=GenerationConfig, ray=RayConfig,
              exclude=("cfg.generation", "cfg.steer", "cfg.project", "cfg.edits"))
def generate_command(run: RunOptions, fields: FieldNames, model: GenerationModelOptions, cfg: GenerationRunConfig,
                     vectors: VectorOptions, edits: EditOptions, gen: GenerationConfig, ray: RayConfig) -> None:
    """Answer every prompt of a file (continuous batching), with pooled activations at --layers and optional
    --steer, --ablate, --cap and --clamp, to a resumable Parquet run directory (--ray: on a Ray cluster)."""
    records = run.read(fields, by_row_range=ray.runner == "ray")
    cfg = dataclasses.replace(cfg, generation=gen, steer=vectors.steering(), project=vectors.projections(),
                              edits=edits.config())
    with Bar("generate") as bar:
        path = generate_run(model.for_runner(ray), records, run.out, cfg, control=run.control(bar, ray))
    result = GenerationRun.open(path)
    print_session(result.manifest)
    finished = sum(result.answers().column("finished").to_pylist())
    out.print(f"wrote {result.manifest['n_rows']} answers ({finished} ended at EOS) to {path}")
