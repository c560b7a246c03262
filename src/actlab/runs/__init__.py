"""The run layer: what every kind of run on disk shares - one manifest
format, one resumable shard loop, one atomic writer, one fingerprint helper,
one job contract and its two runners (this process, Ray).

    actlab.runs.open_run(path)      any complete run, typed by its kind
    actlab.runs.RunControl          how a run executes (shards, overwrite, progress, runner)

Each run kind lives in its own package, at <kind>/run.py, and registers
itself (register_run_kind): activations/run.py (extract_run,
ActivationRun), features/run.py, generation/run.py, traits/run.py,
contrasts/run.py, latents/run.py. docs/architecture.md has the recipe.
"""

from .manifest import RUN_KINDS, Run, RunKind, open_run, read_manifest, register_run_kind
from .runner import RunControl
from .shards import ShardPlan, run_shards, shard_name

__all__ = ["RUN_KINDS", "Run", "RunControl", "RunKind", "ShardPlan", "open_run", "read_manifest",
           "register_run_kind", "run_shards", "shard_name"]
