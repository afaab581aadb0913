"""One re-rendering job: `run_job`, the loop that drives one `Filter`, and the events it sends.

`rerender run` is a thin shell over this module; the watch-folder daemon and the preview server call
`parse_run_options` and `run_job` directly (with `cancel`, the frame/keyframe callbacks and the preview
ladder's `stage`), so every program behaves the same for the same options. The options and their parser
live in `run_options`, the renderer and its model cache in `renderer_cache`, `lavfi:` inputs in `lavfi`;
this module re-exports their public names.

Events (`on_event`, and what `--progress json` prints one per line) are the dataclasses of `events`:
start, keyframe, frame, progress, warning, note, scene_cut, done and error; see `run_job`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import InputError, RerenderError
from .events import (
    DoneEvent,
    ErrorEvent,
    FrameEvent,
    JobEvent,
    KeyframeEvent,
    NoteEvent,
    ProgressEvent,
    SceneCutEvent,
    StartEvent,
    WarningEvent,
)
from .frames import Frame
from .geometry import ProcessingGeometry
from .graph import PROGRESS_TICK, Filter
from .io import open_sink, open_source
from .job_setup import processing_note, resolve_synth_backend
from .lavfi import LAVFI_PREFIX, open_lavfi
from .progress import EtaEstimator, WorkState
from .renderer_cache import RendererCache, make_renderer
from .renderers.diffusion_options import DiffusionOptions
from .run_args import options_from_values, parse_run_options
from .run_options import (
    DEFAULT_SIZE,
    ProgressMode,
    RendererName,
    RunOptions,
    Stage,
    build_run_parser,
    keyframe_schedule,
)

__all__ = [
    "DEFAULT_SIZE",
    "LAVFI_PREFIX",
    "Cancelled",
    "JobResult",
    "ProgressMode",
    "RendererCache",
    "RendererName",
    "RunOptions",
    "Stage",
    "build_run_parser",
    "keyframe_schedule",
    "make_renderer",
    "options_from_values",
    "parse_run_options",
    "processing_note",
    "run_job",
]


class Cancelled(RerenderError):
    """The job was cancelled through its `cancel` event; no output file was left behind."""

    exit_status = 130


@dataclass
class _WorkCounters:
    """The job's own progress counters (seconds of the pushing thread, the last keyframe's index)."""

    read_seconds: float = 0.0
    write_seconds: float = 0.0
    last_key: int | None = None
    reported: float = float("-inf")
    read_all: bool = False  # the source is exhausted: the frames read are all there are


@dataclass(frozen=True)
class JobResult:
    frames: int
    keyframes: int
    seconds: float
    dropped: int
    output: Path | None  # None for standard output and for the preview stages that write nothing
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (decode, flow, ...)
    warnings: tuple[str, ...] = ()


def run_job(
    options: RunOptions,
    *,
    on_event: Callable[[JobEvent], None] | None = None,
    cancel: threading.Event | None = None,
    on_frame: Callable[[Frame, np.ndarray], None] | None = None,
    on_keyframe: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    stage: Stage = "full",
    keyframe_cache: Path | None = None,
    renderers: RendererCache | None = None,
) -> JobResult:
    """Decode, filter and encode one video; returns what was done.

    `stage` is the preview ladder: "first-keyframe" renders frame 0 only, "keyframes" renders every
    keyframe (no propagation); neither writes an output file. `cancel.set()` stops the job at the next
    frame or propagation step with `Cancelled`, leaving no output file. On any failure an `error` event is
    sent and the exception re-raised (the Sink removes its partial output). `renderers` keeps the loaded
    diffusion model for the caller's next run (see `RendererCache`; one job at a time per cache).
    """
    if stage not in ("first-keyframe", "keyframes", "full"):
        raise ValueError(f"stage must be first-keyframe, keyframes or full; got {stage!r}")
    emit = on_event or (lambda event: None)
    warnings: list[str] = []
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("the job was cancelled; no output was written")

    def warn(message: str) -> None:
        warnings.append(message)
        emit(WarningEvent(message))

    def note(message: str) -> None:  # information a user should see once (e.g. which backend runs)
        emit(NoteEvent(message))

    def timed(stage_name: str, seconds: float) -> None:
        timings[stage_name] = timings.get(stage_name, 0.0) + seconds

    try:
        with ExitStack() as stack:
            check_cancel()
            if renderers is not None:
                stack.enter_context(renderers.hold(check_cancel))
            source_path = options.input
            known_count = None
            if source_path.startswith(LAVFI_PREFIX):
                lavfi_path, known_count = open_lavfi(source_path, stack)
                source_path = str(lavfi_path)
            # The I/O layer's warnings (interlacing, dropped streams) become the job's warning events, so
            # every reporter prints them (quiet included) and JSON readers get them as events.
            src = stack.enter_context(open_source(source_path, format=options.input_format, on_warning=warn))
            info = src.info
            f = options.filter
            geometry = ProcessingGeometry.for_input(info.height, info.width, f.size, f.fit, upscale=f.upscale)
            canvas = geometry.canvas
            if isinstance(options.renderer, DiffusionOptions):
                for sentence in options.renderer.notes():
                    warn(sentence)
            cluster = None
            if options.ray is not None:  # keyframes on a Ray actor, gaps as Ray tasks (cluster/)
                from .cluster.job import ray_job

                cluster = stack.enter_context(
                    ray_job(options, canvas, geometry.short_side, check=check_cancel, note=note, emit=emit)
                )
            renderer = (
                cluster.renderer
                if cluster is not None
                else make_renderer(options, canvas, renderers, geometry.short_side, note)
            )
            if stage == "keyframes":
                f = replace(f, propagate=False)
            f = resolve_synth_backend(f)
            total = (info.frame_count or known_count) if stage != "first-keyframe" else 1
            # Progress only: without a frame count (Matroska, pipes) the duration and rate give an estimate.
            rate = info.average_rate
            estimated = None
            if total is None and info.duration and rate and info.duration * rate < 10**9:
                estimated = max(1, round(info.duration * rate))
            emit(
                StartEvent(
                    total=total,
                    input=options.input,
                    output=options.output if stage == "full" else None,
                    width=info.width,
                    height=info.height,
                    processing_size=(canvas[1], canvas[0]),
                    processing_note=processing_note(info.width, info.height, geometry, f),
                    renderer=renderer.name,
                    keyframe_interval=f.schedule.interval,
                    keyframes=f.schedule.mode,
                    stage=stage,
                )
            )

            clock = time.perf_counter
            schedule = keyframe_schedule(options)

            @functools.lru_cache(maxsize=1)
            def one_sided_frames(planned: int) -> int:
                """Frames before the first expected keyframe or after the last: propagated from one side."""
                keys = schedule.expected_keyframes(planned) or []
                return min(keys, default=0) + planned - 1 - max(keys, default=planned - 1)

            work = _WorkCounters()
            estimator = EtaEstimator()

            def work_state() -> WorkState:
                w = filt.work()
                planned = None  # the preview's stages skip frames: no totals there
                if stage == "full":
                    planned = total
                    if planned is None and estimated is not None:
                        planned = w.frames_in if work.read_all else max(estimated, w.frames_in + 1)
                keys_total = synth_total = between = None
                if planned is not None:
                    keys_total = w.keyframes + schedule.keyframes_after(planned, work.last_key)
                    between = max(0, planned - keys_total)
                    one_sided = one_sided_frames(planned)
                    synth_total = max(w.synthesized, 2 * between - min(between, one_sided))
                return WorkState(
                    total=planned,
                    read=w.frames_in,
                    read_seconds=work.read_seconds,
                    keyframes=w.keyframes,
                    keyframes_total=keys_total,
                    render_seconds=w.render_seconds,
                    rendering=w.rendering,
                    synthesized=w.synthesized,
                    synthesis_total=synth_total,
                    propagated=w.propagated,
                    propagated_total=between,
                    propagation_seconds=w.propagation_seconds,
                    gap=w.gap,
                    written=done,
                    write_seconds=work.write_seconds,
                    overlap=f.overlap,
                    mean_gap=w.propagated / w.gaps if w.gaps else max(0, f.schedule.interval - 1),
                )

            def report(make: Callable[..., JobEvent], force: bool = True) -> None:
                """Send the event `make(eta=, activity=, work=)`: the units of work, what runs now and the
                ETA (progress.py)."""
                now = clock()
                if not force and now - work.reported < PROGRESS_TICK:
                    return
                work.reported = now
                state = work_state()
                eta = estimator.update(state)
                estimated = (not work.read_all) if total is None and state.total is not None else None
                emit(
                    make(
                        eta=None if eta is None else round(max(0.0, eta), 1),
                        activity=state.activity(),
                        work=state.counts(estimated),
                    )
                )

            def keyframe_done(index: int, source: np.ndarray, stylized: np.ndarray) -> None:
                work.last_key = index
                report(functools.partial(KeyframeEvent, index=index, count=filt.keyframe_count))
                if on_keyframe is not None:
                    on_keyframe(index, source, stylized)

            filt = Filter(
                renderer,
                f,
                on_keyframe=keyframe_done,
                on_warning=warn,
                keyframe_cache=keyframe_cache,
                check_cancel=check_cancel,
                # A keyframe starts rendering (always reported), or the pushing thread waits for a gap.
                on_progress=lambda: report(ProgressEvent, force=filt.work().rendering is not None),
                schedule=schedule,
                gaps=cluster.gaps() if cluster is not None else None,
                on_scene_cut=lambda cut: emit(SceneCutEvent.of(cut)),
            )
            stack.callback(filt.close)
            sink = (
                stack.enter_context(open_sink(options.output, src, options.sink, on_warning=warn))
                if stage == "full"
                else None
            )
            done = 0
            loop_started = clock()

            def drain(final: bool = False) -> None:
                nonlocal done
                while True:
                    try:
                        # At the flush: wait for the last gaps a tick at a time, reporting meanwhile.
                        source_frame, out = filt.pull_pair(timeout=PROGRESS_TICK if final else None)
                    except BlockingIOError:
                        if not final:
                            return
                        report(ProgressEvent, force=False)
                        continue
                    except EOFError:
                        return
                    t = clock()
                    if sink is not None:
                        sink.write(out)
                        timed("encode", clock() - t)
                    if on_frame is not None:
                        on_frame(source_frame, out.image)
                    work.write_seconds += clock() - t
                    done += 1
                    elapsed = clock() - loop_started
                    fps = done / elapsed if elapsed > 0 else 0.0
                    report(
                        functools.partial(
                            FrameEvent, index=out.index, done=done, total=total, fps=round(fps, 3)
                        )
                    )

            frames = src.frames()
            while True:
                t = clock()
                frame = next(frames, None)
                timed("decode", clock() - t)
                if frame is None:
                    break
                check_cancel()
                before = filt.work()
                filt.push(frame)
                after = filt.work()
                # The pushing thread's cost of reading a frame: decode and push, less keyframe renders and
                # waits for gaps (units of their own).
                spent = clock() - t
                spent -= after.render_seconds - before.render_seconds
                spent -= after.wait_seconds - before.wait_seconds
                work.read_seconds += max(0.0, spent)
                drain()
                report(ProgressEvent, force=False)
                if stage == "first-keyframe" and filt.keyframe_count:
                    break
            work.read_all = True
            if stage != "first-keyframe":
                filt.push(None)
                drain(final=True)
            if options.strict and src.dropped:
                raise InputError(
                    f"{src.dropped} corrupt video packet(s) produced no frame; drop --strict to accept this"
                )
            dropped = src.dropped
            keyframes = filt.keyframe_count
            for name, seconds in filt.timings.seconds.items():
                timed(name, seconds)
        seconds = time.perf_counter() - started
        output = Path(options.output) if stage == "full" and options.output != "-" else None
        result = JobResult(done, keyframes, seconds, dropped, output, timings, tuple(warnings))
        if dropped:
            warn(
                f"{dropped} corrupt video packet(s) produced no frame; the output has the frames that decoded"
            )
        emit(
            DoneEvent(
                frames=done,
                keyframes=keyframes,
                seconds=round(seconds, 3),
                fps=round(done / seconds, 3) if seconds > 0 else None,
                dropped=dropped,
                output=None if output is None else str(output),
            )
        )
        return result
    except BaseException as exc:
        message = str(exc) if isinstance(exc, RerenderError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        emit(ErrorEvent(message))
        raise
