"""One job's share of the cluster (`ray_job`): the keyframe renderer on an actor, the gap runner, the note
that says what was asked of the cluster, and per-worker reports (`WorkersEvent`, in `--progress json`).

`job.run_job` enters `ray_job` when `RunOptions.ray` is set; decoding, the flow between frames, the
keyframe schedule and the encoding stay on this machine (the driver), in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..events import WorkersEvent
from ..run_options import RunOptions
from .gap_runner import RayGapRunner, WorkerBook
from .keyframes import RayKeyframeRenderer
from .session import ClusterPlan, connect, plan_resources

REPORT_INTERVAL = 1.0  # seconds between two workers events while gaps are submitted


class RayJob:
    """What `run_job` takes from the cluster: `renderer` for the Filter, and `gaps()` for its gap runner."""

    def __init__(
        self,
        ray: Any,
        plan: ClusterPlan,
        renderer: RayKeyframeRenderer,
        book: WorkerBook,
        emit: Callable[[Any], None],
    ):
        self.ray = ray
        self.plan = plan
        self.renderer = renderer
        self.book = book
        self._emit = emit
        self._reported = float("-inf")
        self._runners: list[RayGapRunner] = []

    def gaps(self) -> RayGapRunner:
        runner = RayGapRunner(
            self.ray,
            cpus_per_gap=self.plan.cpus_per_gap,
            gpus_per_gap=self.plan.gpus_per_gap,
            window=self.plan.max_gaps,
            book=self.book,
            on_submit=self.report,
        )
        self._runners.append(runner)
        return runner

    def report(self, force: bool = False) -> None:
        """Send a workers event when something changed (at most every REPORT_INTERVAL seconds)."""
        now = time.monotonic()
        if not force and (not self.book.changed or now - self._reported < REPORT_INTERVAL):
            return
        self._reported = now
        gaps, keyframes = self.book.snapshot()
        self._emit(WorkersEvent(gaps, keyframes))

    def close(self) -> None:
        for runner in self._runners:
            runner.close()
        self.renderer.close()
        self.report(force=True)


@contextmanager
def ray_job(
    options: RunOptions,
    canvas: tuple[int, int],
    short_side: int,
    *,
    check: Callable[[], None],
    note: Callable[[str], None],
    emit: Callable[[Any], None],
) -> Iterator[RayJob]:
    """Connect (once per process), plan the resources, print them as a note, and lease a keyframe actor."""
    assert options.ray is not None
    ray, where = connect(options.ray)
    plan = plan_resources(ray, options.ray, where)
    note(plan.note())
    book = WorkerBook()
    renderer = RayKeyframeRenderer(
        ray, plan, options, canvas, short_side, check=check, on_note=note, book=book
    )
    job = RayJob(ray, plan, renderer, book, emit)
    try:
        yield job
    finally:
        job.close()
