"""Where a run's shards run: in this process, or on a Ray cluster."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import Progress
from ..errors import ActlabError
from ..models import Model, ModelSpec
from .job import ShardJob, local_run
from .ray import RayConfig, ray_run

RUNNERS = ("local", "ray")


@dataclass
class RunControl:
    """How a run executes, never what its rows are: every run function takes
    one as `control` (`extract_run(..., control=RunControl(overwrite=True,
    runner="ray", ray=RayConfig(actors=4)))`; None: RunControl())."""

    shard_size: int | None = None  # inputs per shard, the unit of resume and of work on Ray (None: the kind's)
    overwrite: bool = False  # replace a run of other settings (and what later stages derived from it)
    progress: Progress | None = None  # told of texts, tokens and shards done (the CLI draws a bar)
    runner: str = "local"  # local (this process) or ray
    ray: RayConfig | None = None  # the cluster and actors, for runner="ray"

    def __post_init__(self):
        if self.runner not in RUNNERS:
            raise ActlabError(f"runner must be local or ray, not '{self.runner}'", param="runner")
        if self.shard_size is not None and self.shard_size < 1:
            raise ActlabError(f"shard_size must be at least 1, not {self.shard_size}", param="shard_size")

    def shards(self, default: int) -> int:
        return self.shard_size if self.shard_size is not None else default


def run_job(model: "Model | ModelSpec | str", job: ShardJob, control: RunControl) -> dict:
    """The job in this process (a spec or name is loaded here, its weights
    checked), or on Ray (where each worker loads the spec, made absolute)."""
    if control.runner == "ray":
        return ray_run(ModelSpec.of(model).absolute(), job, control.overwrite, control.progress,
                       control.ray or RayConfig())
    loaded = model if isinstance(model, Model) else ModelSpec.of(model).load()
    return local_run(loaded, job, control.overwrite, control.progress)
