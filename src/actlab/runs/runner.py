"""Where a run's shards run: in this process, or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..engine import ExtractConfig, Progress
from ..errors import ActlabError
from ..inputs import ParquetRecords, Records
from ..models import load_model
from ..storage import RunPath, StorePath, run_path
from .activations import DEFAULT_SHARD_SIZE, ExtractionJob
from .job import ShardJob, local_run
from .ray import RayConfig, ray_run

if TYPE_CHECKING:
    from ..models import Model

RUNNERS = ("local", "ray")


def extract_run(model: "Model", records: Records | ParquetRecords, out_dir: str | Path | StorePath, cfg: ExtractConfig,
                shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
                progress: Progress | None = None, runner: str = "local", ray=None) -> RunPath:
    """Extract cfg.hooks for every record into a resumable run directory
    (open it with actlab.open_run). runner="ray" runs the shards on a Ray
    cluster (`ray`: a RayConfig; the model is reloaded there by its name)."""
    job = ExtractionJob(records, run_path(out_dir), cfg, shard_size)
    run_job(model, job, overwrite, progress, runner, ray)
    return job.out


def run_job(model: "Model | dict | str", job: ShardJob, overwrite: bool, progress: Progress | None, runner: str,
            ray=None) -> dict:
    """The job in this process, or on Ray."""
    if runner == "local":
        if not hasattr(model, "hf_model"):
            spec = model_spec(model)
            model = load_model(spec["id"], dtype=spec["dtype"])
        return local_run(model, job, overwrite, progress)
    if runner == "ray":
        return ray_run(model_spec(model), job, overwrite, progress, ray or RayConfig())
    raise ActlabError(f"runner must be local or ray, not '{runner}'", param="runner")


def model_spec(model: "Model | str | dict") -> dict:
    """How a worker loads the same model: its name or folder (a folder made
    absolute, since a worker's working directory is not the driver's, with
    the name as given kept for the manifest), its dtype and (when known here)
    its weights hash; a name is never loaded here."""
    if isinstance(model, str):
        model = {"id": model, "dtype": "float32"}
    elif not isinstance(model, dict):
        model = {"id": model.name, "dtype": model.dtype, "weights_sha256": model.weight_hash}
    local = Path(model["id"]).expanduser()
    if not local.exists() or local.is_absolute():
        return model
    return dict(model, id=str(local.absolute()), name=model.get("name", model["id"]))


