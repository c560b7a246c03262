"""The run layer: every kind of run on disk shares one manifest format, one
resumable shard loop, one atomic writer and one fingerprint helper.

    actlab.runs.open_run(path)      any complete run, typed by its kind
    extract_run / ActivationRun     activations         (format actlab.activations)
    features_run / FeatureRun       SAE features        (format actlab.features)
    (actlab.traits.runs registers trait runs, actlab.contrasts.run contrast runs; later kinds register the
    same way)
"""

from .activations import ActivationRun
from .features import FeatureRun, features_run
from .manifest import RUN_KINDS, Run, RunKind, open_run, read_manifest, register_run_kind
from .runner import RunControl, extract_run
from .shards import ShardPlan, run_shards, shard_name

__all__ = ["ActivationRun", "FeatureRun", "RUN_KINDS", "Run", "RunControl", "RunKind", "ShardPlan", "extract_run",
           "features_run", "open_run", "read_manifest", "register_run_kind", "run_shards", "shard_name"]
