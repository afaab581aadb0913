"""How the Filter's gaps are propagated: a pure description of a gap (`GapTask`), the runners that turn it
into a `concurrent.futures.Future` of its images (`GapRunner`), and the counters progress reports read.

A gap needs only its two keyframe sides, its input frames and their flow pairs (docs/scale-out.md), so a
runner may propagate it anywhere: on the pushing thread (`InlineGapRunner`), on one background thread
(`ThreadGapRunner`, the default), or on a cluster (`rerender.filter.cluster`). The Filter keeps at most
`runner.window` gaps unfinished; it pulls their frames in input order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from ..engines.flow import FlowPair
from ..native.synthesize import Synthesizer
from .propagation import KeySide, PropagationOptions, Timings, propagate_gap

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class GapProgress:
    """The gap propagating now: frames `first`..`last`, `steps` synthesis steps in all (one per frame per
    chain), `done` of them finished, `seconds` since it started."""

    first: int
    last: int
    steps: int
    done: int
    seconds: float

    @property
    def frames(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, eq=False)
class GapTask:
    """One gap, described by value: everything `propagate_gap` reads, and nothing of the Filter.

    `targets` are the n in-between frames (RGB uint8 in propagation space), `pairs` the n + 1 flow pairs
    (position 0 is the left keyframe, n + 1 the right one); a missing side is None. `first` and `last`
    are the frame indices of the gap's first and last frame (progress and per-worker reports)."""

    left: KeySide | None
    right: KeySide | None
    targets: tuple[np.ndarray, ...]
    pairs: tuple[FlowPair | None, ...]
    options: PropagationOptions
    first: int
    last: int

    @property
    def steps(self) -> int:
        """Synthesis steps: one per frame per chain."""
        return len(self.targets) * ((self.left is not None) + (self.right is not None))


@dataclass(frozen=True)
class GapHooks:
    """What a runner reports back while a gap runs. `started()` when it starts running; `step()` before
    each synthesis step, on the chain's thread (a runner that cannot call it per step calls `check()`
    instead, periodically); both raise to stop the gap. `timings` receives the stages' seconds."""

    timings: Timings
    started: Callable[[], None]
    step: Callable[[], None]
    check: Callable[[], None]


def run_gap(
    task: GapTask, timings: Timings, check: Callable[[], None], synthesizer: Synthesizer | None
) -> list[np.ndarray]:
    """Propagate one gap here; returns its n images in order."""
    return propagate_gap(
        left=task.left,
        right=task.right,
        targets=list(task.targets),
        pairs=list(task.pairs),
        options=task.options,
        timings=timings,
        check_cancel=check,
        synthesizer=synthesizer,
    )


class GapRunner(Protocol):
    """Propagates gaps. `window`: how many gaps may be unfinished at once (the Filter waits for the oldest
    beyond that: bounded memory). `close()` stops what still runs and releases the runner's resources."""

    window: int

    def submit(self, task: GapTask, hooks: GapHooks) -> Future[list[np.ndarray]]: ...

    def close(self) -> None: ...


class InlineGapRunner:
    """Each gap propagates on the caller's thread during `submit` (FilterOptions.overlap False)."""

    window = 1

    def __init__(self, synthesizer: Synthesizer | None):
        self._synthesizer = synthesizer

    def submit(self, task: GapTask, hooks: GapHooks) -> Future[list[np.ndarray]]:
        """Raises what propagating raises (cancel included), as a call on the pushing thread does."""
        future: Future[list[np.ndarray]] = Future()
        hooks.started()
        future.set_result(run_gap(task, hooks.timings, hooks.step, self._synthesizer))
        return future

    def close(self) -> None:
        pass


class ThreadGapRunner:
    """Gaps propagate one at a time on a background thread while the pushing thread decodes the next
    frames and renders the next keyframe; one gap runs while the next one is collected (`window` 2)."""

    window = 2

    def __init__(self, synthesizer: Synthesizer | None):
        self._synthesizer = synthesizer
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rerender-gap")

    def submit(self, task: GapTask, hooks: GapHooks) -> Future[list[np.ndarray]]:
        def work() -> list[np.ndarray]:
            hooks.started()
            return run_gap(task, hooks.timings, hooks.step, self._synthesizer)

        return self._executor.submit(work)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def then(
    future: Future[T], function: Callable[[T], R], on_error: Callable[[BaseException], None] | None = None
) -> Future[R]:
    """A future of `function(future.result())`, computed on the thread that completes `future` (or here
    when it is done already); an exception of either is the new future's (`on_error` sees `future`'s
    first)."""
    out: Future[R] = Future()

    def done(source: Future[T]) -> None:
        try:
            error = source.exception()
            if error is not None:
                if on_error is not None:
                    on_error(error)
                raise error
            value = function(source.result())
        except BaseException as exc:
            out.set_exception(exc)
        else:
            out.set_result(value)

    future.add_done_callback(done)
    return out


class GapCounters:
    """The gaps' share of `Filter.work()`, safe to update from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.synthesized = 0  # synthesis steps of finished gaps
        self.propagated = 0  # in-between frames of finished gaps
        self.propagated_steps = 0
        self.propagation_seconds = 0.0  # wall time of the finished gaps
        self.gaps = 0
        # Gaps running now, by first frame: last frame, steps, start time, step-hook calls per thread.
        self._running: dict[int, tuple[int, int, float, dict[int, int]]] = {}

    def started(self, task: GapTask) -> None:
        if task.targets:
            with self.lock:
                self._running[task.first] = (task.last, task.steps, time.perf_counter(), {})

    def stepped(self, task: GapTask) -> None:
        """One step hook call on this thread: a chain's calls after its first count its finished steps (the
        hook runs before each step, and each chain runs on one thread)."""
        with self.lock:
            running = self._running.get(task.first)
            if running is not None:
                calls = running[3]
                ident = threading.get_ident()
                calls[ident] = calls.get(ident, 0) + 1

    def ended(self, task: GapTask) -> float:
        """The gap stopped (finished or failed): its wall seconds since it started (0 if it never did)."""
        with self.lock:
            running = self._running.pop(task.first, None)
        return 0.0 if running is None else time.perf_counter() - running[2]

    def finished(self, task: GapTask, seconds: float) -> None:
        with self.lock:
            self.synthesized += task.steps
            self.propagated += len(task.targets)
            self.propagated_steps += task.steps
            self.propagation_seconds += seconds
            self.gaps += 1

    def running(self, now: float) -> tuple[int, GapProgress | None]:
        """(steps done by running gaps, the oldest running gap); call with `lock` held."""
        done_all = 0
        oldest = None
        for first in sorted(self._running):
            last, steps, started, calls = self._running[first]
            done = min(steps - 1, sum(max(0, c - 1) for c in calls.values()))
            done_all += done
            if oldest is None:
                oldest = GapProgress(first, last, steps, done, now - started)
        return done_all, oldest
