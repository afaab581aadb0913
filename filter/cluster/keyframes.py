"""Keyframes rendered on Ray actors that keep the renderer loaded (`KeyframeWorker`), and the renderer the
Filter sees on the driver (`RayKeyframeRenderer`).

A job's keyframes go to one actor, whose model loads on its first keyframe and stays loaded for the next
ones. By default the actor is the job's own and ends with it. With `--ray-keep-models` (what `rerender
watch --ray` sets) there is one actor per keyframe slot (a GPU share, or a node without GPUs), named and
detached in the `rerender` namespace, so that the next jobs on the cluster find the model loaded; a job
takes the slot with the fewest jobs open.
An actor that dies is restarted by Ray and the keyframe is sent again (`max_restarts`, `max_task_retries`);
the new actor rebuilds the scene's anchor state first (workers.py). The keyframes of one job stay a chain
on one actor: each needs the scene's anchor and the previous keyframe (docs/scale-out.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from ..renderers.base import KeyframeContext
from ..run_options import RunOptions
from .gap_runner import WorkerBook
from .session import NAMESPACE, ClusterPlan, plain_error
from .workers import KeyframeWorker

ACTOR_RESTARTS = 3
ACTOR_PREFIX = "rerender-keyframes-"
WAIT_TICK = 0.25  # seconds between two cancel checks while a keyframe renders remotely
INFO_TIMEOUT = 30.0


def keyframe_actor(ray: ModuleType, plan: ClusterPlan, keep: bool) -> tuple[str, Any]:
    """(name, handle) of the keyframe actor for a new job. Without `keep`, an actor of the job's own that
    ends with it. With `keep`, a named, detached one: a slot with no actor yet gets one; otherwise the
    actor with the fewest open jobs."""
    cls = ray.remote(KeyframeWorker)
    resources: dict[str, Any] = {
        "num_cpus": 0,  # the slot is its GPU share; on CPUs the gap tasks hold the cores
        "num_gpus": plan.gpus_per_keyframe,
        "max_restarts": ACTOR_RESTARTS,
        "max_task_retries": ACTOR_RESTARTS,
    }
    if not keep:
        return f"{ACTOR_PREFIX}job", cls.options(**resources).remote()
    existing: list[tuple[str, Any]] = []
    for slot in range(plan.keyframe_actors):
        name = f"{ACTOR_PREFIX}{slot}"
        try:
            existing.append((name, ray.get_actor(name, namespace=NAMESPACE)))
            continue
        except ValueError:
            pass
        named = {"name": name, "namespace": NAMESPACE, "get_if_exists": True, "lifetime": "detached"}
        return name, cls.options(**resources, **named).remote()
    infos = ray.get([handle.info.remote() for _, handle in existing], timeout=INFO_TIMEOUT)
    best = min(range(len(existing)), key=lambda i: infos[i].get("jobs", 0))
    return existing[best]


class RayKeyframeRenderer:
    """A `KeyframeRenderer` whose keyframes render on a keyframe actor (module doc)."""

    def __init__(
        self,
        ray: ModuleType,
        plan: ClusterPlan,
        options: RunOptions,
        canvas: tuple[int, int],
        short_side: int,
        *,
        check: Callable[[], None],
        on_note: Callable[[str], None],
        book: WorkerBook,
    ):
        self.name = options.renderer.name
        self._ray = ray
        self._options = options
        self._canvas = canvas
        self._short_side = short_side
        self._check = check
        self._on_note = on_note
        self._book = book
        self._job = uuid.uuid4().hex
        self._keep = options_keep(options)
        self.actor_name, self._actor = keyframe_actor(ray, plan, self._keep)

    def render(self, frame: np.ndarray, context: KeyframeContext) -> np.ndarray:
        ref = self._actor.render.remote(
            self._job, self._options, self._canvas, self._short_side, frame, context
        )
        while not self._ray.wait([ref], timeout=WAIT_TICK)[0]:
            try:
                self._check()
            except BaseException:
                self._ray.cancel(ref)
                raise
        try:
            stylized, notes = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            raise plain_error(self._ray, exc) from None
        for note in notes:
            self._on_note(note)
        return stylized

    def info(self) -> dict[str, Any]:
        """The actor's report (model loads, keyframes rendered, where it runs)."""
        info = self._ray.get(self._actor.info.remote(), timeout=INFO_TIMEOUT)
        self._book.actor(self.actor_name, info)
        return info

    def close(self) -> None:
        """Record the actor's report; then drop this job's renderer on a kept actor (the model stays
        loaded), or end the job's own actor."""
        try:
            self.info()
            if self._keep:
                self._ray.get(self._actor.close.remote(self._job), timeout=INFO_TIMEOUT)
        except Exception:  # noqa: BLE001 - a dead actor has nothing of the job left to drop
            pass
        if not self._keep:
            self._ray.kill(self._actor)


def options_keep(options: RunOptions) -> bool:
    ray_options = getattr(options, "ray", None)
    return bool(ray_options is not None and ray_options.keep_models)
