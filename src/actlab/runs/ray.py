"""Running a run's shards on a Ray cluster (Ray Data), unchanged.

The unit of work and of resume is the run layer's own shard (a fixed input
range), never Ray's blocks: Ray may merge blocks, and its writers are not
atomic. The driver opens or checks the manifest, lists the unfinished shards
and hands them, one per call, to a pool of actors; each actor loads the model
(and SAEs) once, runs the engine over a whole shard with its own length
sorting and token budget, and writes the shard atomically through the same
job code a single process runs; the driver writes the manifest last. So a
run started on Ray may be finished by one process and vice versa, and rows
equal a single-process run's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine import Progress
from ..errors import ActlabError
from ..models import ModelSpec, peak_memory_bytes
from ..results import ExtractStats
from .job import ShardJob, run_matrix_paths, session_record, trimming
from .lock import run_lock
from .manifest import MANIFEST, start_run

LOCAL = "local"
REFUSED_GRACE = 2.0  # seconds a refusing address is asked again before the run fails


@dataclass
class RayConfig:
    """Where and how the shards run."""

    address: str | None = field(default=None, metadata={
        "flag": "--ray", "help": "Run the shards on Ray: --ray alone or --ray local for a Ray instance with this "
                                 "machine's resources, --ray ADDRESS for a cluster (auto, host:6379, ray://host:10001)."})
    actors: int = field(default=1, metadata={"flag": "--ray-actors",
                                             "help": "Actors (model copies) working on shards."})
    gpus_per_actor: float | None = field(default=None, metadata={
        "flag": "--ray-gpus", "help": "GPUs per actor (default: 1 when the cluster has GPUs, else 0)."})
    cpus_per_actor: float = field(default=1.0, metadata={"flag": "--ray-cpus", "help": "CPUs per actor."})
    threads: int | None = field(default=None, metadata={
        "flag": "--ray-threads", "help": "torch threads per actor (Ray sets one; default: CPUs per actor)."})
    start_timeout: float = field(default=600.0, metadata={
        "flag": "--ray-start-timeout", "help": "Seconds to wait for the cluster's address to answer (one that refuses "
                                               "the connection fails at once), then for it to start every actor "
                                               "(each loads its model), before failing."})

    @property
    def runner(self) -> str:
        return "local" if self.address is None else "ray"

    def __post_init__(self):
        if self.actors < 1 or self.cpus_per_actor <= 0:
            raise ActlabError("actors >= 1 and cpus_per_actor > 0, please", param="actors")
        if self.start_timeout <= 0:
            raise ActlabError(f"start_timeout must be positive, not {self.start_timeout}", param="start_timeout")


def ray_module():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ActlabError("running on Ray needs Ray Data: pip install 'actlab[ray]'", param="ray") from None
    return ray


def connect(cfg: RayConfig):
    """Ray, initialised as configured: `local` (or no address) starts a new
    local instance whatever RAY_ADDRESS says; `auto` is RAY_ADDRESS or the
    cluster last started on this machine; any other address is that cluster.
    A cluster address must answer within start_timeout, or the run fails in
    one line; at once where the connection is refused (wait_for_cluster).
    A process that already called ray.init keeps its instance."""
    ray = ray_module()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # the CLI draws its own bar (Ray Data warns of that)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = max(1, round(cfg.start_timeout))  # every actor up before the first shard
    address = cluster_address(cfg.address)
    if address != LOCAL:
        wait_for_cluster(address, cfg.start_timeout)
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    return ray


def cluster_address(address: str | None) -> str:
    """`local`, or the concrete address (host:port or ray://host:port) that `address` names."""
    if address in (None, LOCAL):
        return LOCAL
    if address == "auto":
        last = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # where `ray start` records it
        address = os.environ.get("RAY_ADDRESS") or (last.read_text().strip() if last.exists() else "")
        if not address:
            raise ActlabError("--ray auto found no cluster (RAY_ADDRESS is unset and no cluster was started on this "
                              "machine); start one with `ray start --head`, or give --ray HOST:PORT or --ray local",
                              param="address")
    return address


def wait_for_cluster(address: str, timeout: float) -> None:
    """Return once the cluster's port accepts a connection. A refused
    connection means nothing listens there: fail in one line within
    REFUSED_GRACE seconds (a head that is just starting opens its port in
    that time). Anything else (no reply yet, a host still coming up) is
    waited for up to `timeout` seconds, then fails in one line (Ray itself
    would retry for minutes)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ActlabError(f"--ray '{address}' is not an address; give HOST:PORT (e.g. 10.0.0.5:6379), "
                          "ray://HOST:PORT, auto or local", param="address")
    started = time.monotonic()
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, timeout)).close()
            return
        except ConnectionRefusedError as exc:
            if time.monotonic() - started >= min(REFUSED_GRACE, timeout):
                raise ActlabError(f"nothing listens at {address} ({exc.strerror or exc}): no Ray cluster is there; "
                                  "start one (ray start --head) or fix --ray", param="address") from None
        except OSError as exc:
            if time.monotonic() - started >= timeout:
                raise ActlabError(f"no Ray cluster answers at {address} ({exc.strerror or exc}) within {timeout:g} "
                                  "s; start it (ray start --head), fix --ray, or raise --ray-start-timeout",
                                  param="address") from None
        time.sleep(0.25)


WORKER_FIX = "give every node the same model (a shared $ACTLAB_HOME or the same folder)"


def job_settings(spec: ModelSpec, job: ShardJob) -> tuple[dict, dict, dict]:
    """The run's settings, manifest extras and the matrix paths a new run
    takes, computed where the weights are (a Ray task)."""
    model = spec.load(fix=WORKER_FIX)
    worker = job.worker(model)
    return job.settings(model, worker), job.extras(model, worker), model.matrix_paths


class ShardActor:
    """One model (and SAEs) per actor; each call extracts and writes whole shards."""

    def __init__(self, spec: ModelSpec, job: ShardJob, threads: int, matrix_paths: dict[str, str]):
        import ray

        self.name = f"{os.uname().nodename}:{os.getpid()}"
        if not (job.out / MANIFEST).exists():
            raise ActlabError(f"the actor on {self.name} cannot see the run folder {job.out}; give --out a shared "
                              "filesystem path or an object-store URI (s3://...)", param="out")
        torch.set_num_threads(threads)
        self.model = spec.load(fix=WORKER_FIX)
        self.model.take_matrix_paths(matrix_paths)  # the run's, whatever this node would choose
        self.process = trimming(job.shard_writer(job.worker(self.model)))
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {key: [] for key in ("index", "texts", "tokens", "padded", "truncated", "oom_splits",
                                                     "seconds", "peak_memory_bytes", "actor", "node")}
        for index, lo, hi in zip(batch["index"], batch["lo"], batch["hi"]):
            stats = self.process(int(index), int(lo), int(hi))
            values = (int(index), stats.n_texts, stats.n_tokens, stats.n_padded_tokens, stats.n_truncated,
                      stats.oom_splits, stats.seconds, peak_memory_bytes(self.model.device), self.name, self.node)
            for key, value in zip(out, values):
                out[key].append(value)
        return out


def ray_run(spec: ModelSpec, job: ShardJob, overwrite: bool = False, progress: Progress | None = None,
            cfg: RayConfig | None = None) -> dict:
    """The job's unfinished shards on Ray, this driver holding the run
    folder's lock (a second driver refuses); returns the complete manifest."""
    cfg = cfg or RayConfig()
    if isinstance(job.out, Path):  # a worker's working directory is not the driver's
        job = dataclasses.replace(job, out=job.out.absolute())
    with run_lock(job.out):
        return _ray_run(spec, job, overwrite, progress, cfg)


def _ray_run(spec: ModelSpec, job: ShardJob, overwrite: bool, progress: Progress | None, cfg: RayConfig) -> dict:
    ray = connect(cfg)
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1 if ray.cluster_resources().get("GPU") else 0)
    task = ray.remote(job_settings).options(num_gpus=gpus, num_cpus=cfg.cpus_per_actor)
    settings, extras, paths = _get(ray, task.remote(spec, job), cfg, gpus)
    spec = dataclasses.replace(spec, weights_sha256=settings["model"]["weights_sha256"])
    manifest = start_run(job.out, job.FORMAT, settings, overwrite)
    if manifest.get("complete"):
        return manifest
    paths = run_matrix_paths(manifest, job.out, paths)
    todo = job.plan.todo(job.out)
    if progress:
        progress.start(job.texts_left(), len(todo))
    started, totals, actors = time.perf_counter(), ExtractStats(0, 0, 0, 0.0), {}
    if todo:
        items = [{"index": i, "lo": job.plan.bounds(i)[0], "hi": job.plan.bounds(i)[1]} for i in todo]
        shards = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardActor, fn_constructor_args=(spec, job, cfg.threads or max(1, int(cfg.cpus_per_actor)), paths),
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg.actors), num_gpus=gpus,
            num_cpus=cfg.cpus_per_actor)
        for row in _rows(ray, shards, cfg, gpus):
            totals.add(ExtractStats(row["texts"], row["tokens"], row["padded"], row["seconds"], row["truncated"],
                                    row["oom_splits"]))
            tally_actor(actors, row)
            if progress:
                progress.advance(row["texts"], row["tokens"])
                progress.shard_done()
    totals.seconds = time.perf_counter() - started
    totals.peak_memory_bytes = max((a["peak_memory_bytes"] for a in actors.values()), default=None)
    session = session_record(totals, f"ray: {cfg.actors} actor(s), {gpus:g} GPU each", "ray", actors=actors,
                             address=cfg.address or LOCAL)
    return job.complete(manifest, totals, session, **extras)


def tally_actor(actors: dict[str, dict], row: dict) -> None:
    """Add one finished shard to its actor's figures (the manifest's per-actor summary)."""
    actor = actors.setdefault(row["actor"], {"node": row["node"], "shards": 0, "texts": 0, "tokens": 0,
                                             "seconds": 0.0})
    actor.update(shards=actor["shards"] + 1, texts=actor["texts"] + row["texts"],
                 tokens=actor["tokens"] + row["tokens"], seconds=actor["seconds"] + row["seconds"],
                 peak_memory_bytes=row["peak_memory_bytes"])
    actor["tokens_per_s"] = round(actor["tokens"] / actor["seconds"], 1) if actor["seconds"] else 0.0


def _get(ray, ref, cfg: RayConfig, gpus: float):
    """ray.get, with an actlab error raised as itself (a bad input fails the
    run with its own message), and a cluster without room said so."""
    try:
        return ray.get(ref, timeout=cfg.start_timeout)
    except ray.exceptions.GetTimeoutError:
        raise _no_room(ray, cfg, gpus) from None
    except ray.exceptions.RayTaskError as exc:
        raise _cause(exc) from None


def _rows(ray, dataset, cfg: RayConfig, gpus: float):
    try:
        yield from dataset.iter_rows()
    except ray.exceptions.GetTimeoutError:  # Ray Data could not start every actor in time
        raise _no_room(ray, cfg, gpus) from None
    except Exception as exc:  # Ray wraps a worker's exception in its own types
        raise _cause(exc) from None


def _no_room(ray, cfg: RayConfig, gpus: float) -> ActlabError:
    have = ray.cluster_resources()
    return ActlabError(f"the cluster did not start {cfg.actors} actor(s) with {cfg.cpus_per_actor:g} CPU and "
                       f"{gpus:g} GPU each within {cfg.start_timeout:g} s (it has {have.get('CPU', 0):g} CPU, "
                       f"{have.get('GPU', 0):g} GPU); lower --ray-actors / --ray-cpus / --ray-gpus, add nodes, or "
                       "raise --ray-start-timeout for a slow model load", param="actors")


def _cause(exc: BaseException) -> BaseException:
    """The ActlabError a worker raised, from Ray's wrapping (its own object
    where Ray keeps it, else its message, which Ray keeps in the text)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ActlabError):
            return ActlabError(str(seen).splitlines()[0], param=seen.param)
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    found = re.search(r"ActlabError: (.+)", str(exc))
    return ActlabError(found.group(1).strip()) if found else exc
