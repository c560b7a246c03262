"""Where a run's shards run: in this process, or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path

from ..engine import ExtractConfig, Progress
from ..errors import ActlabError
from ..inputs import ParquetRecords, Records
from ..models import Model, ModelSpec
from ..storage import RunPath, StorePath, run_path
from .activations import DEFAULT_SHARD_SIZE, ExtractionJob
from .job import ShardJob, local_run
from .ray import RayConfig, ray_run

RUNNERS = ("local", "ray")


def extract_run(model: "Model | ModelSpec | str", records: Records | ParquetRecords,
                out_dir: str | Path | StorePath, cfg: ExtractConfig,
                shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
                progress: Progress | None = None, runner: str = "local", ray=None) -> RunPath:
    """Extract cfg.hooks for every record into a resumable run directory
    (open it with actlab.open_run). runner="ray" runs the shards on a Ray
    cluster (`ray`: a RayConfig; the model is reloaded there by its name)."""
    job = ExtractionJob(records, run_path(out_dir), cfg, shard_size)
    run_job(model, job, overwrite, progress, runner, ray)
    return job.out


def run_job(model: "Model | ModelSpec | str", job: ShardJob, overwrite: bool, progress: Progress | None,
            runner: str, ray=None) -> dict:
    """The job in this process (a spec or name is loaded here, its weights
    checked), or on Ray (where each worker loads the spec, made absolute)."""
    if runner == "local":
        loaded = model if isinstance(model, Model) else ModelSpec.of(model).load()
        return local_run(loaded, job, overwrite, progress)
    if runner == "ray":
        return ray_run(ModelSpec.of(model).absolute(), job, overwrite, progress, ray or RayConfig())
    raise ActlabError(f"runner must be local or ray, not '{runner}'", param="runner")
