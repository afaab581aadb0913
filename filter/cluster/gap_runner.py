"""`RayGapRunner`: the Filter's gaps as Ray tasks (gaps.py's `GapRunner`).

Each gap is one task holding `cpus_per_gap` CPUs; Ray runs it again on another worker when its worker dies
(`max_retries`), and the gap's frames do not depend on where it ran. The Filter keeps at most `window` gaps
unfinished and writes their frames in input order, so the driver holds a bounded number of gaps whatever
the video's length. Cancel: a watcher thread asks each running gap's `check` hook a few times a second and
cancels the task when it raises (the job's cancel, `Filter.close`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

from ..gaps import GapHooks, GapTask
from .session import plain_error
from .workers import propagate_remote

TASK_RETRIES = 3  # a gap whose worker died runs again, up to this many times
CHECK_INTERVAL = 0.2  # seconds between two cancel checks of the running gaps


class WorkerBook:
    """Per-worker detail: gaps, frames and seconds per worker process (host:pid), and the keyframe actors'
    own reports; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gaps: dict[str, dict[str, Any]] = {}
        self._actors: dict[str, dict[str, Any]] = {}
        self.changed = False

    def gap(self, info: dict[str, Any], frames: int) -> None:
        key = f"{info.get('host')}:{info.get('pid')}"
        with self._lock:
            entry = self._gaps.setdefault(
                key, {"worker": key, "node": info.get("node"), "gaps": 0, "frames": 0, "seconds": 0.0}
            )
            entry["gaps"] += 1
            entry["frames"] += frames
            entry["seconds"] = round(entry["seconds"] + float(info.get("seconds", 0.0)), 3)
            self.changed = True

    def actor(self, name: str, info: dict[str, Any]) -> None:
        with self._lock:
            self._actors[name] = {"actor": name, **info}
            self.changed = True

    def snapshot(self) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
        """(propagation workers, keyframe actors), each a tuple of plain dicts; clears `changed`."""
        with self._lock:
            self.changed = False
            return (
                tuple(dict(v) for v in self._gaps.values()),
                tuple(dict(v) for v in self._actors.values()),
            )


class RayGapRunner:
    """Gaps as Ray tasks; see the module doc."""

    def __init__(
        self,
        ray: ModuleType,
        *,
        cpus_per_gap: float,
        gpus_per_gap: float = 0.0,
        window: int,
        book: WorkerBook,
        on_submit: Callable[[], None] | None = None,
    ):
        self.window = window
        self._ray = ray
        self._cpus = cpus_per_gap
        self._book = book
        self._on_submit = on_submit or (lambda: None)
        self._remote = ray.remote(propagate_remote).options(
            num_cpus=cpus_per_gap, max_retries=TASK_RETRIES, retry_exceptions=False
        )
        # Gaps of the CUDA synthesizer hold a share of a GPU (Ray hides the GPUs from tasks that hold none).
        self._remote_cuda = self._remote.options(num_gpus=gpus_per_gap) if gpus_per_gap > 0 else self._remote
        self._lock = threading.Lock()
        self._running: dict[Any, tuple[GapHooks, Future]] = {}  # ObjectRef -> (hooks, the Filter's future)
        # Finished gaps are unpacked (and their frames converted by the Filter) here, not on Ray's own thread.
        self._results = ThreadPoolExecutor(1, thread_name_prefix="rerender-ray-results")
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="rerender-ray-gaps", daemon=True)
        self._watcher.start()

    def submit(self, task: GapTask, hooks: GapHooks) -> Future[list[np.ndarray]]:
        out: Future[list[np.ndarray]] = Future()
        hooks.started()
        remote = self._remote_cuda if task.options.backend == "cuda" else self._remote
        ref = remote.remote(task, self._cpus)
        with self._lock:
            self._running[ref] = (hooks, out)
        frames = len(task.targets)

        def arrived(done: Future) -> None:
            with self._lock:
                self._running.pop(ref, None)
            try:
                images, seconds, info = done.result()
            except BaseException as exc:  # the task's error (or its cancellation) is the gap's
                _settle(out, plain_error(self._ray, exc))
                return
            for stage, value in seconds.items():
                hooks.timings.add(stage, value)
            self._book.gap(info, frames)
            _settle(out, images)

        ref.future().add_done_callback(lambda done: self._hand_over(arrived, done))
        self._on_submit()
        return out

    def _hand_over(self, arrived: Callable[[Future], None], done: Future) -> None:
        try:
            self._results.submit(arrived, done)
        except RuntimeError:  # closed: the gap was settled by `close`
            pass

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_INTERVAL):
            with self._lock:
                running = list(self._running.items())
            for ref, (hooks, out) in running:
                try:
                    hooks.check()
                except BaseException as exc:  # noqa: BLE001 - cancel or close: stop the task, fail the gap
                    self._cancel(ref)
                    _settle(out, exc)

    def _cancel(self, ref: Any) -> None:
        try:
            self._ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - finished or gone already
            pass

    def close(self) -> None:
        """Stop watching and cancel every gap still running."""
        self._stop.set()
        with self._lock:
            running, self._running = list(self._running.items()), {}
        for ref, (_, out) in running:
            self._cancel(ref)
            _settle(out, RuntimeError("the filter was closed while a gap was propagating"))
        self._results.shutdown(wait=False)


def _settle(future: Future, value: Any) -> None:
    """Set the result (or exception) unless the future is settled already (a cancelled gap's late result)."""
    try:
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass
