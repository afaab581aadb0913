"""What runs on the cluster's workers: one gap's propagation (a task), and the keyframe worker (an actor
that holds the loaded renderer). Plain Python here; `gap_runner` and `keyframes` make them Ray tasks and
actors, so this module imports no Ray."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from typing import Any

import numpy as np

from ..gaps import GapTask, run_gap
from ..propagation import Timings
from ..renderer_cache import RendererCache, make_renderer
from ..renderers.base import KeyframeContext
from ..run_options import RunOptions


def where() -> dict[str, Any]:
    """This worker process: host, pid and Ray node (per-worker detail in progress reports)."""
    node = None
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside a Ray worker (direct calls): no node id
        node = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "node": node}


def propagate_remote(task: GapTask, cpus: float) -> tuple[list[np.ndarray], dict[str, float], dict[str, Any]]:
    """One gap, on a worker: (its images, its stage seconds, where it ran). Without --threads, each chain
    takes its share of the task's CPUs (not every core of the node, which other tasks share); the frames do
    not depend on the thread count."""
    started = time.perf_counter()
    options = task.options
    if options.synth.threads is None:
        share = cpus / 2 if options.parallel_chains else cpus
        options = replace(options, synth=replace(options.synth, threads=max(1, int(share))))
        task = replace(task, options=options)
    timings = Timings()
    images = run_gap(task, timings, lambda: None, None)
    info = where()
    info["seconds"] = time.perf_counter() - started
    return images, dict(timings.seconds), info


class KeyframeWorker:
    """Renders the keyframes of the jobs sent to it. The renderer's networks are loaded once per worker
    (`RendererCache`: one model, reused by every job with the same model key); each job gets its own
    renderer (its anchor state, text embeddings), built on its first keyframe."""

    def __init__(self) -> None:
        self._cache = RendererCache()
        self._renderers: dict[str, Any] = {}
        self._rendered = 0
        self._rebuilt = 0

    def render(
        self,
        job: str,
        options: RunOptions,
        canvas: tuple[int, int],
        short_side: int,
        frame: np.ndarray,
        context: KeyframeContext,
    ) -> tuple[np.ndarray, list[str]]:
        """(the stylized keyframe, notes the renderer gave while it was built)."""
        notes: list[str] = []
        renderer = self._renderers.get(job)
        if renderer is None:
            renderer = make_renderer(options, canvas, self._cache, short_side, notes.append)
            self._renderers[job] = renderer
            if not context.is_anchor and context.anchor is not None:
                # A worker that restarted mid-scene (or a job moved here): rebuild the renderer's anchor
                # state from the anchor's source, as when the scene began; its output is discarded.
                anchor = context.anchor
                renderer.render(anchor.source, KeyframeContext(anchor.index, True, None, None))
                self._rebuilt += 1
        stylized = renderer.render(frame, context)
        self._rendered += 1
        return stylized, notes

    def close(self, job: str) -> None:
        self._renderers.pop(job, None)

    def info(self) -> dict[str, Any]:
        """Where this worker runs, its model loads, keyframes rendered, anchors rebuilt and open jobs."""
        out = where()
        out.update(
            loads=self._cache.loads,
            keyframes=self._rendered,
            rebuilt=self._rebuilt,
            jobs=len(self._renderers),
        )
        return out
