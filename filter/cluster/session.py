"""Connecting to Ray, and the resources a job asks of the cluster (`ClusterPlan`).

`import ray` happens here and in the modules this package loads after `require_ray`, never elsewhere in
rerender: a machine without the extra runs every other command.
"""

from __future__ import annotations

import importlib
import math
import socket
from dataclasses import dataclass
from types import ModuleType

from ..errors import UsageError
from .options import AUTO, RayOptions

RAY_MISSING = "--ray needs the Ray extra, which is not installed here: pip install 'rerender[ray]'"
NAMESPACE = "rerender"  # named keyframe actors live here (shared by the jobs of one cluster)
MAX_KEYFRAME_ACTORS = 256
CPUS_PER_GAP = 2.0  # one per propagation chain (the forward and backward chains run at once)
GPUS_PER_GAP = 0.25  # CUDA synthesis: four gap tasks share a GPU
CONNECT_TIMEOUT = 10.0  # seconds to reach an explicit address before Ray's own (minutes-long) retries


def require_ray() -> ModuleType:
    """The `ray` module, or a one-line UsageError naming the extra to install."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise UsageError(RAY_MISSING) from None


@dataclass(frozen=True)
class ClusterPlan:
    """What a job asks of the cluster: the options' values, or defaults derived from its resources."""

    address: str  # what we connected to (or "local" for a cluster started here)
    nodes: int
    cpus: float
    gpus: float
    gpus_per_keyframe: float
    cpus_per_gap: float
    gpus_per_gap: float  # held by gap tasks of the CUDA synthesizer only
    max_gaps: int
    keyframe_actors: int  # slots: one per GPU share, or one per node without GPUs

    def note(self) -> str:
        gpu = f"{self.gpus_per_keyframe:g} GPU" if self.gpus_per_keyframe else "no GPU"
        return (
            f"ray: {self.address}, {self.nodes} node(s), {self.cpus:g} CPU(s), {self.gpus:g} GPU(s); "
            f"keyframes on up to {self.keyframe_actors} actor(s) with {gpu} each, gaps as tasks with "
            f"{self.cpus_per_gap:g} CPU(s) each (and {self.gpus_per_gap:g} GPU with --synth-backend cuda), "
            f"at most {self.max_gaps} in flight"
        )


def connect(options: RayOptions) -> tuple[ModuleType, str]:
    """Connect this process to the cluster (once; a process already connected keeps its connection)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, "connected"
    quiet = {"log_to_driver": False, "logging_level": "ERROR", "include_dashboard": False}
    if options.address != AUTO:
        host, port = options.endpoint()
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            raise UsageError(
                f"--ray {options.address}: nothing answers at {host}:{port} ({exc.strerror or exc}); start "
                "the cluster with `ray start --head` there or check the address"
            ) from None
        try:
            ray.init(address=options.address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(
                f"--ray {options.address}: cannot connect to a Ray cluster there ({exc}); start one with "
                "`ray start --head` or check the address"
            ) from None
        return ray, options.address
    try:
        ray.init(address="auto", namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
        return ray, "auto (the running cluster)"
    except ConnectionError:
        ray.init(namespace=NAMESPACE, **quiet)
        return ray, "a local cluster started for this run"


def plain_error(ray: ModuleType, exc: BaseException) -> BaseException:
    """The error a task or actor call raised, as the job should report it: the remote exception itself
    (rerender's own errors keep their one-line message and exit status), or one line for the cluster's
    own failures (a worker lost after every retry, an actor that cannot restart)."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    if isinstance(exc, ray.exceptions.RayError):
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        return RuntimeError(f"the Ray cluster failed the job: {type(exc).__name__}: {first}")
    return exc


def plan_resources(ray: ModuleType, options: RayOptions, where: str) -> ClusterPlan:
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0.0))
    gpus = float(resources.get("GPU", 0.0))
    nodes = max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
    if cpus <= 0:
        raise UsageError(
            f"the Ray cluster at {where} has no CPUs for propagation tasks; add a node with CPUs"
        )
    per_key = options.gpus_per_keyframe
    if per_key is None:
        per_key = 1.0 if gpus >= 1 else 0.0
    if per_key > gpus:
        raise UsageError(
            f"--ray-gpus-per-keyframe {per_key:g} asks for more GPUs than the cluster has ({gpus:g}); "
            "lower it or add GPU nodes"
        )
    actors = math.floor(gpus / per_key) if per_key > 0 else nodes
    per_gap = options.cpus_per_gap if options.cpus_per_gap is not None else min(CPUS_PER_GAP, cpus)
    if per_gap > cpus:
        raise UsageError(
            f"--ray-cpus-per-gap {per_gap:g} asks for more CPUs than the cluster has ({cpus:g}); lower it"
        )
    per_gap_gpu = options.gpus_per_gap
    if per_gap_gpu is None:
        per_gap_gpu = GPUS_PER_GAP if gpus > 0 else 0.0
    if per_gap_gpu > gpus:
        raise UsageError(
            f"--ray-gpus-per-gap {per_gap_gpu:g} asks for more GPUs than the cluster has ({gpus:g}); lower it"
        )
    max_gaps = options.max_gaps
    if max_gaps is None:
        # Every CPU busy, plus one gap per slot waiting so that none idles between two gaps.
        max_gaps = max(2, min(1024, 2 * math.floor(cpus / per_gap)))
    return ClusterPlan(
        address=where,
        nodes=nodes,
        cpus=cpus,
        gpus=gpus,
        gpus_per_keyframe=per_key,
        cpus_per_gap=per_gap,
        gpus_per_gap=per_gap_gpu,
        max_gaps=max_gaps,
        keyframe_actors=max(1, min(MAX_KEYFRAME_ACTORS, actors)),
    )
