"""The streaming filter graph: frames in, the same frames out, stylized, strictly in input order.

`push(frame)` feeds a frame, `push(None)` flushes,
`pull()` returns the next output frame and raises `BlockingIOError` while none is ready and `EOFError`
after the last one (PyAV's filter-graph semantics). The CLI, the preview server and the watch-folder
daemon all drive this one object.

Per pushed frame: convert to 8 bit and to the propagation space; estimate the flow pair with the previous
frame (both directions: it serves the scene-cut detector, the adaptive schedule, both propagation chains
and the blend); ask the keyframe schedule (schedule.py) which frames become keyframes. A keyframe is
rendered at the processing size (docs/decisions.md, decision 10) and closes the gap behind it: the frames
since the previous keyframe are propagated from both sides (`propagation.propagate_gap`) and become ready,
then the keyframe itself. An anchor (the first keyframe of a scene) takes nothing from the keyframe before
it: with scene cuts the schedule closes the gap at the frame before the cut (which becomes a keyframe) and
makes the cut frame an anchor, so no propagation crosses it (decision 2). At the flush the schedule closes
the frames left (uniform and adaptive: the last frame is a keyframe); frames after its last keyframe are
propagated forward from it.

How a gap propagates is the `GapRunner`'s business (gaps.py): a background thread by default, a cluster
with `rerender.filter.cluster`. The options and the work report live in filter_options.py.

Memory: the frames since the last keyframe (at most about K, or K * max_factor adaptive) with their flow
pairs, plus the runner's window of unfinished gaps (one propagating in a background thread while the next
is collected, `overlap`, so that the next keyframe renders meanwhile) and the frames that wait for
`pull()`; never proportional to the video's length.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..engines.flow import FlowEstimator, FlowPair, estimate_pair, make_flow_estimator
from ..native.synthesize import make_synthesizer
from .errors import InputError
from .filter_options import PROGRESS_TICK, FilterOptions, WorkDone
from .frames import Frame
from .gaps import (
    GapCounters,
    GapHooks,
    GapProgress,
    GapRunner,
    GapTask,
    InlineGapRunner,
    ThreadGapRunner,
    then,
)
from .geometry import ProcessingGeometry, to_depth, to_uint8
from .keyframe_cache import KeyframeCache
from .propagation import KeySide, Timings
from .renderers.base import KeyframeContext, KeyframeRenderer, RenderedKeyframe
from .schedule import (
    KeyframeSchedule,
    Motion,
    Plan,
    colour_histogram,
    histogram_distance,
    make_schedule,
)

if TYPE_CHECKING:
    from .schedule import SceneCut

__all__ = ["PROGRESS_TICK", "Filter", "FilterOptions", "GapProgress", "GapRunner", "WorkDone"]


@dataclass
class _Pending:
    """A frame waiting for the keyframe on its right."""

    frame: Frame
    image: np.ndarray  # RGB uint8 in propagation space
    pair: FlowPair | None  # relates the previous frame to this one (None at the start of a scene)


@dataclass(frozen=True)
class _Key:
    frame: Frame
    side: KeySide  # input and stylized images in propagation space
    rendered: RenderedKeyframe  # at processing size (what renderers see as anchor / previous)


class Filter:
    """Push/pull streaming filter (module doc). Not thread-safe: one thread pushes and pulls."""

    def __init__(
        self,
        renderer: KeyframeRenderer,
        options: FilterOptions = FilterOptions(),
        *,
        flow: FlowEstimator | None = None,
        on_keyframe: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
        keyframe_cache: Path | None = None,
        check_cancel: Callable[[], None] | None = None,
        on_progress: Callable[[], None] | None = None,
        schedule: KeyframeSchedule | None = None,
        on_scene_cut: Callable[[SceneCut], None] | None = None,
        gaps: GapRunner | None = None,
    ):
        """`on_progress()` is called on the pushing thread when a keyframe starts rendering and every
        PROGRESS_TICK seconds while that thread waits for a gap, so a caller can report `work()` then.
        `schedule` decides where the keyframes go (a fresh one per stream; default: the uniform or
        adaptive schedule of `options.schedule`). `on_scene_cut(cut)` is called on the pushing thread for
        each scene cut the schedule reports (`Plan.cuts`), before that plan's keyframes render. `gaps`
        propagates the gaps (gaps.py; default: a background thread, or the pushing thread without
        `options.overlap`, running this Filter's synthesizer); the Filter closes it in `close()`."""
        self.renderer = renderer
        self.options = options
        self.schedule = schedule if schedule is not None else make_schedule(options.schedule)
        self._flow = flow if flow is not None else make_flow_estimator(options.flow)
        # The synthesis backend is resolved once per filter (on the thread that builds it, which also fixes
        # the CUDA device when none is named); every gap's chains run this object, with no per-gap probe.
        if gaps is None:
            synthesizer = (
                make_synthesizer(options.propagation.backend, options.propagation.device)
                if options.propagate
                else None
            )
            gaps = ThreadGapRunner(synthesizer) if options.overlap else InlineGapRunner(synthesizer)
        self._gap_runner = gaps
        self._on_keyframe = on_keyframe
        self._on_warning = on_warning
        self._on_scene_cut = on_scene_cut
        self._cache = KeyframeCache(keyframe_cache) if keyframe_cache is not None else None
        self._check_cancel = check_cancel or (lambda: None)
        self.timings = Timings()
        self.keyframe_count = 0
        self.frames_in = 0
        self._processing: ProcessingGeometry | None = None
        self._space: ProcessingGeometry | None = None  # propagation space
        self._dtype: np.dtype | None = None
        self._pending: list[_Pending] = []
        self._last_key: _Key | None = None
        self._anchor: RenderedKeyframe | None = None
        self._previous_image: np.ndarray | None = None
        self._previous_hist: np.ndarray | None = None
        self._last_index = -1
        # Outputs in input order: lists of ready (input, output) pairs, or a gap still propagating.
        self._outbox: deque[list[tuple[Frame, Frame]] | Future] = deque()
        self._current: deque[tuple[Frame, Frame]] = deque()
        self._abort = threading.Event()
        self._flushed = False
        self._on_progress = on_progress or (lambda: None)
        self._counters = GapCounters()
        self._work_lock = self._counters.lock
        self._rendering: int | None = None
        self._wait_seconds = 0.0

    # -- public API ---------------------------------------------------------------------------------

    def push(self, frame: Frame | None) -> None:
        if self._flushed:
            raise ValueError("push() after push(None): the filter is flushed; make a new Filter per stream")
        self._check_cancel()
        if frame is None:
            self._flush()
            return
        if frame.index <= self._last_index:
            raise ValueError(
                f"frames must be pushed in order; got index {frame.index} after {self._last_index}"
            )
        self._last_index = frame.index
        self.frames_in += 1
        if self._processing is None:
            self._setup(frame)
        elif frame.image.shape[:2] != self._processing.input_size:
            h, w = self._processing.input_size
            raise InputError(
                f"frame {frame.index} is {frame.image.shape[1]}x{frame.image.shape[0]} but the video started at "
                f"{w}x{h}; split the video where its size changes"
            )
        started = time.perf_counter()
        image = self._space.to_processing(to_uint8(frame.image))
        self.timings.add("resize", time.perf_counter() - started)
        pair, motion = self._motion(image)
        self._pending.append(_Pending(frame, image, pair))
        self._apply(self.schedule.decide(frame.index, motion))
        lookback = self.schedule.lookback
        if not self.options.propagate and lookback is not None:
            # Keyframes only: keep just the frames the schedule may still make keyframes.
            del self._pending[: max(0, len(self._pending) - lookback)]

    def pull(self) -> Frame:
        return self.pull_pair()[1]

    def pull_pair(self, timeout: float | None = None) -> tuple[Frame, Frame]:
        """(input frame, output frame); the output has the input's index, pts, size and bit depth.

        After the flush, `pull` waits for a gap still propagating instead of raising BlockingIOError, so
        that draining until EOFError is enough; with `timeout` it waits at most that long, then raises
        BlockingIOError (a caller that reports progress meanwhile). An error raised while propagating is
        raised here."""
        while not self._current:
            if not self._outbox:
                if self._flushed:
                    raise EOFError("the filter is flushed and every frame has been pulled")
                raise BlockingIOError("no output frame is ready yet; push more frames")
            head = self._outbox[0]
            if isinstance(head, Future):
                if not head.done() and not self._flushed:
                    raise BlockingIOError("the frames before the last keyframe are still propagating")
                if timeout is not None and not wait([head], timeout).done:
                    raise BlockingIOError("the last gap is still propagating")
                items = head.result()
            else:
                items = head
            self._outbox.popleft()
            self._current.extend(items)
        return self._current.popleft()

    def close(self) -> None:
        """Stop a gap still propagating in the background (at its next frame) and release the thread."""
        self._abort.set()
        self._gap_runner.close()

    def work(self) -> WorkDone:
        """A snapshot of the work done so far (any thread may call it)."""
        now = time.perf_counter()
        c = self._counters
        with self._work_lock:
            running, gap = c.running(now)
            return WorkDone(
                frames_in=self.frames_in,
                keyframes=self.keyframe_count,
                render_seconds=self.timings.seconds.get("render", 0.0),
                rendering=self._rendering,
                synthesized=c.synthesized + running,
                propagated=c.propagated,
                propagated_steps=c.propagated_steps,
                propagation_seconds=c.propagation_seconds,
                gaps=c.gaps,
                gap=gap,
                wait_seconds=self._wait_seconds,
            )

    @property
    def processing_size(self) -> tuple[int, int] | None:
        """(height, width) keyframes are rendered at, known after the first frame."""
        return None if self._processing is None else self._processing.canvas

    # -- scheduling -----------------------------------------------------------------------------------

    def _setup(self, frame: Frame) -> None:
        h, w = frame.image.shape[:2]
        o = self.options
        self._processing = ProcessingGeometry.for_input(h, w, o.size, o.fit, upscale=o.upscale)
        self._space = (
            self._processing if o.propagate_at == "processing" else ProcessingGeometry.identity(h, w)
        )
        self._dtype = frame.image.dtype

    def _motion(self, image: np.ndarray) -> tuple[FlowPair | None, Motion | None]:
        """The flow pair and the motion relating the previous frame to this one, when propagation or the
        schedule needs them (None for the first frame)."""
        previous, self._previous_image = self._previous_image, image
        needs_motion = self.schedule.needs_motion
        hist = colour_histogram(image) if needs_motion else None
        previous_hist, self._previous_hist = self._previous_hist, hist
        if previous is None or not (self.options.propagate or needs_motion):
            return None, None
        pair = self._estimate(previous, image)
        distance = histogram_distance(previous_hist, hist) if hist is not None else 0.0
        return pair, Motion(distance, pair.occluded_fraction, pair.mean_motion, min(image.shape[:2]))

    def _estimate(self, earlier: np.ndarray, later: np.ndarray) -> FlowPair:
        started = time.perf_counter()
        pair = estimate_pair(self._flow, earlier, later, self.options.occlusion)
        self.timings.add("flow", time.perf_counter() - started)
        return pair

    # -- keyframes and gaps -----------------------------------------------------------------------------

    def _apply(self, plan: Plan) -> None:
        """Render the plan's keyframes, each closing the gap of pending frames before it."""
        if self._on_scene_cut is not None:
            for cut in plan.cuts:
                self._on_scene_cut(cut)
        for index in plan.keyframes:
            position = next((i for i, e in enumerate(self._pending) if e.frame.index == index), None)
            if position is None:
                raise RuntimeError(
                    f"the keyframe schedule chose frame {index}, which is not among the frames since the "
                    "last keyframe"
                )
            entry, gap = self._pending[position], self._pending[:position]
            self._pending = self._pending[position + 1 :]
            if index == plan.anchor:  # a new scene: nothing propagates into it from the last one
                self._last_key = None
                self._anchor = None
            key = self._render(entry.frame, entry.image, anchor=index == plan.anchor)
            if gap or self._last_key is not None:
                self._propagate(self._last_key, gap, key, entry.pair)
            self._outbox.append([self._output(key.frame, key.side.stylized)])
            self._last_key = key

    def _flush(self) -> None:
        self._flushed = True
        plan = self.schedule.finish()
        self._apply(plan)
        if self._pending:
            if self._last_key is None:
                raise RuntimeError(
                    f"the keyframe schedule chose no keyframe among the {self.frames_in} frames of the stream"
                )
            # Frames after the schedule's last keyframe: forward propagation only.
            gap, self._pending = self._pending, []
            self._propagate(self._last_key, gap, None, None)
        if self._on_warning is not None:
            for message in plan.warnings:
                self._on_warning(message)

    def _render(self, frame: Frame, image: np.ndarray, anchor: bool) -> _Key:
        self._check_cancel()
        processing = self._processing
        source = image if self._space is processing else processing.to_processing(to_uint8(frame.image))
        context = KeyframeContext(
            index=frame.index,
            is_anchor=anchor or self._anchor is None,
            anchor=None if anchor else self._anchor,
            previous=None if anchor or self._last_key is None else self._last_key.rendered,
        )
        self._rendering = frame.index
        self._on_progress()
        started = time.perf_counter()
        stylized = None if self._cache is None else self._cache.load(frame.index, processing.canvas)
        if stylized is None:
            stylized = self.renderer.render(source, context)
            if stylized.shape != source.shape or stylized.dtype != np.uint8:
                raise RuntimeError(
                    f"the {self.renderer.name} renderer returned {stylized.dtype} {stylized.shape} for a "
                    f"{source.shape} uint8 keyframe; renderers must keep the shape and return uint8"
                )
            if self._cache is not None:
                self._cache.store(frame.index, stylized)
        self.timings.add("render", time.perf_counter() - started)
        rendered = RenderedKeyframe(frame.index, source, stylized)
        if context.is_anchor:
            self._anchor = rendered
        with self._work_lock:
            self.keyframe_count += 1
            self._rendering = None
        if self._on_keyframe is not None:
            self._on_keyframe(frame.index, source, stylized)
        side = KeySide(image, processing.resize_canvas_to(stylized, self._space))
        return _Key(frame, side, rendered)

    def _propagate(self, left: _Key | None, gap: list[_Pending], right: _Key | None, right_pair) -> None:
        if not self.options.propagate:
            return
        pairs = [entry.pair for entry in gap] + ([right_pair] if right is not None else [])
        if left is None:
            pairs = [None, *pairs[1:]]  # no left keyframe: the first pair is never used
        if right is None:
            pairs.append(None)
        task = GapTask(
            left=left.side if left is not None else None,
            right=right.side if right is not None else None,
            targets=tuple(entry.image for entry in gap),
            pairs=tuple(pairs),
            options=self.options.propagation,
            first=gap[0].frame.index if gap else -1,
            last=gap[-1].frame.index if gap else -1,
        )
        counters = self._counters
        hooks = GapHooks(
            timings=self.timings,
            started=lambda: counters.started(task),
            step=lambda: (self._check_stop(), counters.stepped(task)),
            check=self._check_stop,
        )
        frames = [entry.frame for entry in gap]

        def finish(images: list[np.ndarray]) -> list[tuple[Frame, Frame]]:
            # Wall time of the gap (the chains run in two threads: "synthesis" and "guides" are per-thread sums).
            seconds = counters.ended(task)
            self.timings.add("propagation_wall", seconds)
            counters.finished(task, seconds)
            return [self._output(frame, image) for frame, image in zip(frames, images, strict=True)]

        try:
            submitted = self._gap_runner.submit(task, hooks)
        except BaseException:
            counters.ended(task)
            raise
        self._outbox.append(then(submitted, finish, lambda _: counters.ended(task)))
        # Back-pressure: at most `window` gaps unfinished (one running while the next one is collected, for
        # the local thread); beyond that the pushing thread waits for the oldest (bounded memory).
        running = [item for item in self._outbox if isinstance(item, Future) and not item.done()]
        if len(running) >= self._gap_runner.window:
            started = time.perf_counter()
            while not wait(running[:1], PROGRESS_TICK).done:
                self._on_progress()
            with self._work_lock:
                self._wait_seconds += time.perf_counter() - started

    def _check_stop(self) -> None:
        if self._abort.is_set():
            raise RuntimeError("the filter was closed while a gap was propagating")
        self._check_cancel()

    def _output(self, frame: Frame, image: np.ndarray) -> tuple[Frame, Frame]:
        started = time.perf_counter()
        out = to_depth(self._space.to_output(image), self._dtype)
        self.timings.add("resize", time.perf_counter() - started)
        return frame, Frame(frame.index, frame.pts, frame.time_base, out)
