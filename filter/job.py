"""One re-rendering job: options, parsing, and `run_job`, the loop that drives one `Filter`.

`rerender run` is a thin shell over this module; the watch-folder daemon and the preview server call
`parse_run_options` and `run_job` directly (with `cancel`, the frame/keyframe callbacks and the preview
ladder's `stage`), so every program behaves the same for the same options.

Events (`on_event`, and what `--progress json` prints one per line): `start`, `keyframe`, `frame`,
`warning`, `done` and `error`; see `run_job`.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import importlib.util
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ..engines.flow import ESTIMATOR_MODULES, make_flow_estimator
from ..native.params import SynthParams
from . import option_ranges as ranges
from .errors import InputError, RerenderError, UsageError
from .frames import Frame
from .geometry import ProcessingGeometry
from .graph import PROGRESS_TICK, Filter, FilterOptions
from .io import SinkOptions, add_io_arguments, open_sink, open_source, sink_options_from_args
from .io.paths import lavfi_folder_prefix, sweep_lavfi_folders
from .progress import EtaEstimator, WorkState
from .propagation import PropagationOptions
from .renderers import diffusion_options
from .renderers.base import KeyframeRenderer
from .renderers.classic import CLASSIC_STYLES, ClassicOptions, ClassicRenderer
from .renderers.diffusion_options import DiffusionOptions
from .renderers.frames import FramesRenderer, scan_keyframe_files
from .schedule import FixedSchedule, KeyframeSchedule, ScheduleOptions, make_schedule

Stage = Literal["first-keyframe", "keyframes", "full"]
RendererName = Literal["classic", "frames", "diffusion"]
ProgressMode = Literal["bar", "json", "none"]
LAVFI_PREFIX = "lavfi:"
DEFAULT_SIZE = 512  # the processing short side when --size is not given (and the input is at least this)


class Cancelled(RerenderError):
    """The job was cancelled through its `cancel` event; no output file was left behind."""

    exit_status = 130


@dataclass(frozen=True)
class RunOptions:
    input: str  # path, '-' (standard input) or 'lavfi:GRAPH' (an FFmpeg test source)
    output: str  # path or '-'
    input_format: str | None = None
    sink: SinkOptions = field(default_factory=SinkOptions)
    strict: bool = False  # fail when corrupt packets made frames drop
    filter: FilterOptions = field(default_factory=FilterOptions)
    renderer: RendererName = "classic"
    classic: ClassicOptions = field(default_factory=ClassicOptions)
    keyframes_dir: Path | None = None
    keyframes_first_index: int = 0
    diffusion: DiffusionOptions | None = None
    progress: ProgressMode = "bar"


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


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}; see `rerender run --help`")


def build_run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="rerender run",
        description="Re-render a video: keyframes are stylized, the frames between them propagated and blended. "
        "Every input frame comes out once, in order, with its timestamp.",
    )
    p.add_argument(
        "-i",
        "--input",
        required=True,
        metavar="PATH",
        help="input video, '-' for standard input, or lavfi:GRAPH for an FFmpeg test source "
        "(e.g. lavfi:testsrc2=size=640x360:rate=25:duration=2)",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="PATH", help="output video, or '-' for standard output"
    )
    add_io_arguments(p)
    g = p.add_argument_group("keyframes and propagation")
    g.add_argument(
        "-K",
        "--keyframe-interval",
        type=ranges.int_range(1, ranges.MAX_KEYFRAME_INTERVAL),
        default=10,
        metavar="K",
        help=f"frames between keyframes, 1 to {ranges.MAX_KEYFRAME_INTERVAL} (default: %(default)s)",
    )
    g.add_argument(
        "--keyframes",
        choices=["uniform", "adaptive"],
        default="uniform",
        help="uniform: every K frames; adaptive: more where motion/occlusion is large, about one per K on "
        "average (default: %(default)s)",
    )
    g.add_argument(
        "--no-scene-cuts",
        action="store_true",
        help="do not detect scene cuts (a cut starts a new anchor; default: detect them)",
    )
    g.add_argument(
        "--renderer",
        choices=["classic", "frames", "diffusion"],
        default=None,
        help="keyframe renderer (default: diffusion when --model is given, else classic)",
    )
    g.add_argument(
        "--keyframes-dir",
        type=Path,
        metavar="DIR",
        help="frames renderer: folder of stylized keyframes (no default; needed by --renderer frames)",
    )
    g.add_argument(
        "--keyframes-first-index",
        type=ranges.int_range(0, ranges.MAX_FRAME_INDEX),
        default=0,
        metavar="N",
        help="frames renderer: the number in the first frame's file name, 0 or more (default: %(default)s; "
        "1 for ffmpeg's %%04d)",
    )
    g.add_argument(
        "--classic-style",
        choices=CLASSIC_STYLES,
        default="stylization",
        help="classic renderer look (default: %(default)s)",
    )
    g.add_argument(
        "--classic-sigma-s",
        type=ranges.float_range(0, 200, low_open=True),
        default=60.0,
        metavar="PIXELS",
        help="classic: spatial extent in pixels, (0, 200] (default: %(default)s)",
    )
    g.add_argument(
        "--classic-sigma-r",
        type=ranges.float_range(0, 1, low_open=True),
        default=0.45,
        metavar="R",
        help="classic: colour extent as a fraction of the colour range, (0, 1] (default: %(default)s)",
    )
    g.add_argument(
        "--size",
        type=ranges.int_range(ranges.MIN_SHORT_SIDE, ranges.MAX_SHORT_SIDE, multiple=64),
        default=None,
        metavar="PIXELS",
        help=f"processing size: the short side in pixels, a multiple of 64 from 64 to {ranges.MAX_SHORT_SIDE} "
        f"(default: the input's own short side, at most {DEFAULT_SIZE}; an input is scaled up only when "
        "--size is given)",
    )
    g.add_argument(
        "--fit",
        choices=["pad", "crop"],
        default="pad",
        help="keep the aspect ratio by padding or cropping to multiples of 64 (default: %(default)s)",
    )
    g.add_argument(
        "--propagate-at",
        choices=["processing", "output"],
        default="processing",
        help="propagate at the processing size and resize, or at the output size (default: %(default)s)",
    )
    g.add_argument(
        "--flow",
        default="dis",
        help="optical flow: dis, dis:fast, dis:ultrafast, raft:WEIGHTS (default: %(default)s)",
    )
    g.add_argument(
        "--threads",
        type=ranges.int_range(1, ranges.max_threads()),
        default=None,
        metavar="N",
        help=f"threads per synthesis chain, 1 to {ranges.max_threads()} (default: the cores split between "
        "the two chains)",
    )
    g.add_argument(
        "--synth-backend",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="patch synthesizer: auto takes cuda when a GPU and the CUDA build are there, else cpu "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--patch-size",
        type=ranges.int_range(3, ranges.MAX_PATCH_SIZE, odd=True),
        default=5,
        metavar="PIXELS",
        help=f"synthesis patch side in pixels, odd, 3 to {ranges.MAX_PATCH_SIZE} (default: %(default)s)",
    )
    g.add_argument(
        "--search-vote-iters",
        type=ranges.int_range(1, ranges.MAX_SEARCH_VOTE_ITERS),
        default=12,
        metavar="N",
        help=f"search-and-vote iterations per pyramid level, 1 to {ranges.MAX_SEARCH_VOTE_ITERS} "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--patchmatch-iters",
        type=ranges.int_range(1, ranges.MAX_PATCHMATCH_ITERS),
        default=6,
        metavar="N",
        help=f"PatchMatch iterations per search, 1 to {ranges.MAX_PATCHMATCH_ITERS} (default: %(default)s)",
    )
    g.add_argument(
        "--pyramid-levels",
        type=ranges.int_range(1, ranges.MAX_PYRAMID_LEVELS),
        default=None,
        metavar="N",
        help=f"synthesis pyramid levels, 1 to {ranges.MAX_PYRAMID_LEVELS} (default: as many as the "
        "processing size allows)",
    )
    g.add_argument(
        "--poisson",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="gradient-domain (Poisson) fusion in the blend, as the authors' -ps (default: off: it measured "
        "lower fidelity and more flicker, see README)",
    )
    g.add_argument(
        "--blend-weights",
        choices=["frames", "motion"],
        default=PropagationOptions.blend_weights,
        help="how near a frame is to each keyframe when the two propagations are blended: by frame "
        "position (the paper) or by the motion between them (default: %(default)s)",
    )
    diffusion_options.add_arguments(p)
    out = p.add_argument_group("progress")
    out.add_argument(
        "--progress",
        choices=["bar", "json", "none"],
        default="bar",
        help="stderr progress format; warnings are printed with every format (default: %(default)s)",
    )
    out.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress output (same as --progress none); warnings still go to stderr",
    )
    return p


def _check_flow(spec: str) -> str:
    name = spec.partition(":")[0]
    if name == "dis":
        make_flow_estimator(spec)  # cheap; validates the preset
    elif name not in ESTIMATOR_MODULES:
        raise UsageError(
            f"--flow expects dis, dis:fast, dis:ultrafast or {', '.join(ESTIMATOR_MODULES)}:ARG; got {spec!r}"
        )
    return spec


def parse_run_options(argv: list[str]) -> RunOptions:
    args = build_run_parser().parse_args(argv)
    renderer = args.renderer or ("diffusion" if args.model else "classic")
    if renderer != "diffusion" and args.model:
        raise UsageError(
            "--model is used by the diffusion renderer only; drop it or use --renderer diffusion"
        )
    if renderer == "frames" and args.keyframes_dir is None:
        raise UsageError("--renderer frames needs --keyframes-dir DIR, a folder of stylized keyframes")
    if renderer != "frames" and args.keyframes_dir is not None:
        raise UsageError("--keyframes-dir is used by the frames renderer only; add --renderer frames")
    # The numeric flags' ranges are their argparse types (option_ranges.py), checked while parsing.
    if args.input != "-" and args.input == args.output:
        raise UsageError("-o must differ from -i: the input would be overwritten while it is read")
    if args.input.startswith(LAVFI_PREFIX):
        _lavfi_graph(args.input)
    try:
        classic = ClassicOptions(args.classic_style, args.classic_sigma_s, args.classic_sigma_r)
        synth = SynthParams(
            patch_size=args.patch_size,
            pyramid_levels=args.pyramid_levels,
            search_vote_iters=args.search_vote_iters,
            patchmatch_iters=args.patchmatch_iters,
            threads=args.threads,
        )
        propagation = PropagationOptions(
            synth=synth,
            backend=args.synth_backend,
            # --device cuda:N (diffusion renderer) puts the CUDA synthesizer on the same GPU as the UNet.
            device=args.device if args.device.startswith("cuda") else None,
            poisson=args.poisson,
            blend_weights=args.blend_weights,
        )
        schedule = ScheduleOptions(args.keyframe_interval, args.keyframes, scene_cuts=not args.no_scene_cuts)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    filter_options = FilterOptions(
        schedule=schedule,
        size=DEFAULT_SIZE if args.size is None else args.size,
        fit=args.fit,
        propagate_at=args.propagate_at,
        flow=_check_flow(args.flow),
        propagation=propagation,
        upscale=args.size is not None,  # an explicit --size is honoured even above the input's size
    )
    return RunOptions(
        input=args.input,
        output=args.output,
        input_format=args.input_format,
        sink=sink_options_from_args(args),
        strict=args.strict,
        filter=filter_options,
        renderer=renderer,
        classic=classic,
        keyframes_dir=args.keyframes_dir,
        keyframes_first_index=args.keyframes_first_index,
        diffusion=diffusion_options.from_args(args) if renderer == "diffusion" else None,
        progress="none" if args.quiet else args.progress,
    )


class RendererCache:
    """The diffusion model the last `run_job` loaded, kept for the next run of the same caller.

    The preview server runs job after job on one clip (first keyframe, all keyframes, full, render to file);
    reloading Stable Diffusion for each click costs tens of seconds. One entry (an LRU of 1): a run whose
    options give the same `diffusion.model_key` (model, model config, LoRAs and ControlNets with their
    scales, control preprocessor, FreeU, device, dtype, backend, engines, allow_pickle) reuses the loaded
    networks; a run with another key frees the old ones first, then loads. Only the networks are shared:
    every run builds its own renderer (text embeddings, per-anchor sampler state, flow estimator), so a run's
    output equals that of a fresh process. `loads` counts the loads this cache did.

    Not for concurrent jobs: one set of networks must not serve two jobs at once (the torch UNet passes
    cross-frame states through its attention processors during a call). `run_job` holds the cache for the
    whole job, so a second job given the same cache waits for the first (or for its own `cancel`); callers
    that run jobs in parallel (the watch daemon's workers) must not share one.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._model: object | None = None
        self._busy = threading.Lock()
        self.loads = 0

    @property
    def model(self) -> object | None:
        """The loaded model (`diffusion.LoadedModel`), or None."""
        return self._model

    def get(self, key: tuple, load: Callable[[], object]) -> object:
        """The model for `key`: the cached one, or (after freeing the cached one) `load()`."""
        if self._model is None or self._key != key:
            self.clear()  # free the old weights before the new ones take the same memory
            self._model = load()
            self._key = key
            self.loads += 1
        return self._model

    def clear(self) -> None:
        """Free the cached model; call it when no job uses the cache (e.g. when the server closes)."""
        model, self._model, self._key = self._model, None, None
        if model is not None:
            close = getattr(model, "close", None)
            if close is not None:
                close()
            del model
            gc.collect()  # the modules' reference cycles, so the memory is back before the next load

    @contextmanager
    def hold(self, check_cancel: Callable[[], None]) -> Iterator[None]:
        """Use the cache for one job; waits (checking `check_cancel`) while another job holds it."""
        while not self._busy.acquire(timeout=0.05):
            check_cancel()
        try:
            yield
        finally:
            self._busy.release()


def make_renderer(
    options: RunOptions,
    processing_size: tuple[int, int],
    renderers: RendererCache | None = None,
    short_side: int | None = None,
    on_note: Callable[[str], None] | None = None,
) -> KeyframeRenderer:
    """The keyframe renderer the options name; `processing_size` is (height, width) and `short_side` the
    input's short side scaled to it (`ProcessingGeometry.short_side`; default: the --size option). With
    `renderers`, the diffusion renderer's networks come from (and stay in) that cache."""
    f = options.filter
    if options.renderer == "classic":
        return ClassicRenderer(options.classic)
    if options.renderer == "frames":
        size = f.size if short_side is None else short_side
        return FramesRenderer(options.keyframes_dir, options.keyframes_first_index, size, f.fit)
    if options.diffusion is None:
        raise UsageError(
            "the diffusion renderer needs --model PATH (a diffusers folder or .safetensors file)"
        )
    if importlib.util.find_spec("rerender.filter.renderers.diffusion") is None:
        raise UsageError(
            "the diffusion renderer is not available in this build; use --renderer classic or --renderer frames"
        )
    module = importlib.import_module("rerender.filter.renderers.diffusion")
    model = None
    if renderers is not None:
        key = module.model_key(options.diffusion, processing_size)
        model = renderers.get(key, lambda: module.load_model(options.diffusion, processing_size, on_note))
    return module.DiffusionRenderer.from_options(options.diffusion, processing_size, model, on_note)


def keyframe_schedule(options: RunOptions) -> KeyframeSchedule:
    """A fresh keyframe schedule for one run: the user's keyframe files (frames renderer) or -K/--keyframes."""
    if options.renderer == "frames":
        files = scan_keyframe_files(options.keyframes_dir, options.keyframes_first_index)
        return FixedSchedule(frozenset(files))
    return make_schedule(options.filter.schedule)


def _resolve_synth_backend(f: FilterOptions) -> FilterOptions:
    """--synth-backend auto or cuda resolved once, before the first frame: a cuda request that cannot run
    fails before any work, and the probe's one-time cost (it imports torch) is not paid inside the first
    gap, where it would also skew the progress estimate."""
    backend = f.propagation.backend
    if backend == "cpu" or not f.propagate:
        return f
    from ..native.backends import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if backend == "cuda" and reason is not None:
        raise UsageError(f"--synth-backend cuda cannot run here: {reason} Use --synth-backend cpu or auto.")
    resolved = "cuda" if reason is None else "cpu"
    return replace(f, propagation=replace(f.propagation, backend=resolved))


def processing_note(width: int, height: int, geometry: ProcessingGeometry, f: FilterOptions) -> str:
    """One sentence: the processing size chosen for a width x height input, and why."""
    canvas = f"{geometry.canvas[1]}x{geometry.canvas[0]}"
    short = min(width, height)
    rounding = "cropped" if f.fit == "crop" else "padded"
    if geometry.short_side == short:
        why = f"the input's own size {width}x{height}"
        if geometry.canvas != (height, width):
            why += f", {rounding} to multiples of 64"
        if not f.upscale and short < f.size:
            why += f"; below the default {f.size}, it is not scaled up (--size {f.size} would)"
    elif geometry.short_side < short:
        source = "--size" if f.upscale else f"the default size ({DEFAULT_SIZE}; --size changes it)"
        why = f"the {width}x{height} input scaled down to a short side of {geometry.short_side} by {source}"
    else:
        why = f"the {width}x{height} input scaled up to a short side of {geometry.short_side} as --size asks"
    where = "; propagation runs at the output size" if f.propagate_at == "output" else ""
    return f"processing at {canvas}: {why}{where}"


# -- lavfi test sources -------------------------------------------------------------------------------------


def _lavfi_graph(spec: str) -> str:
    graph = spec[len(LAVFI_PREFIX) :]
    keys = {part.partition("=")[0].strip() for part in graph.replace(",", ":").split(":")}
    if not graph or not ({"duration", "d"} & keys):
        raise UsageError(
            f"-i {spec!r}: a lavfi source needs a duration, e.g. lavfi:testsrc2=size=640x360:rate=25:duration=2"
        )
    return graph


def _materialize_lavfi(spec: str, folder: Path) -> tuple[Path, int]:
    """Decode an FFmpeg lavfi source (PyAV's `lavfi` demuxer) into a lossless NUT file the Source reads.

    The I/O layer opens files and pipes only; a test source written once keeps one code path for every
    input (and gives the Source a real container with a frame count)."""
    import av

    graph = _lavfi_graph(spec)
    path = folder / "lavfi.nut"
    try:
        with av.open(graph, format="lavfi") as src, av.open(str(path), "w", format="nut") as dst:
            video = src.streams.video[0]
            rate = video.average_rate or 25
            out = dst.add_stream("ffv1", rate=rate)
            out.width, out.height, out.pix_fmt = (
                video.codec_context.width,
                video.codec_context.height,
                "yuv420p",
            )
            out.time_base = video.time_base
            count = 0
            for frame in src.decode(video):
                count += 1
                frame = frame.reformat(format="yuv420p")
                for packet in out.encode(frame):
                    dst.mux(packet)
            for packet in out.encode(None):
                dst.mux(packet)
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise InputError(
            f"-i {spec!r}: FFmpeg could not run this lavfi source ({exc}); check the filter graph"
        ) from None
    return path, count


# -- the job ----------------------------------------------------------------------------------------------


def run_job(
    options: RunOptions,
    *,
    on_event: Callable[[dict], None] | None = None,
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
        emit({"event": "warning", "message": message})

    def note(message: str) -> None:  # information a user should see once (e.g. which backend runs)
        emit({"event": "note", "message": message})

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
                sweep_lavfi_folders()  # what killed runs left behind (their process is gone)
                temp = tempfile.TemporaryDirectory(prefix=lavfi_folder_prefix())
                folder = Path(stack.enter_context(temp))
                lavfi_path, known_count = _materialize_lavfi(source_path, folder)
                source_path = str(lavfi_path)
            # The I/O layer's warnings (interlacing, dropped streams) become the job's warning events, so
            # every reporter prints them (quiet included) and JSON readers get them as events.
            src = stack.enter_context(open_source(source_path, format=options.input_format, on_warning=warn))
            info = src.info
            f = options.filter
            geometry = ProcessingGeometry.for_input(info.height, info.width, f.size, f.fit, upscale=f.upscale)
            canvas = geometry.canvas
            if options.renderer == "diffusion" and options.diffusion is not None:
                for sentence in options.diffusion.notes():
                    warn(sentence)
            renderer = make_renderer(options, canvas, renderers, geometry.short_side, note)
            if stage == "keyframes":
                f = replace(f, propagate=False)
            f = _resolve_synth_backend(f)
            total = (info.frame_count or known_count) if stage != "first-keyframe" else 1
            # Progress only: without a frame count (Matroska, pipes) the duration and rate give an estimate.
            rate = info.average_rate
            estimated = None
            if total is None and info.duration and rate and info.duration * rate < 10**9:
                estimated = max(1, round(info.duration * rate))
            emit(
                {
                    "event": "start",
                    "total": total,
                    "input": options.input,
                    "output": options.output if stage == "full" else None,
                    "width": info.width,
                    "height": info.height,
                    "processing_size": [canvas[1], canvas[0]],
                    "processing_note": processing_note(info.width, info.height, geometry, f),
                    "renderer": renderer.name,
                    "keyframe_interval": f.schedule.interval,
                    "keyframes": f.schedule.mode,
                    "stage": stage,
                }
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

            def report(event: dict, force: bool = True) -> None:
                """Send `event` with the units of work, what runs now and the ETA (progress.py)."""
                now = clock()
                if not force and now - work.reported < PROGRESS_TICK:
                    return
                work.reported = now
                state = work_state()
                eta = estimator.update(state)
                event["eta"] = None if eta is None else round(max(0.0, eta), 1)
                event["activity"] = state.activity()
                event["work"] = state.to_json()
                if total is None and state.total is not None:
                    event["work"]["total_estimated"] = not work.read_all
                emit(event)

            def keyframe_done(index: int, source: np.ndarray, stylized: np.ndarray) -> None:
                work.last_key = index
                report({"event": "keyframe", "index": index, "count": filt.keyframe_count})
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
                on_progress=lambda: report({"event": "progress"}, force=filt.work().rendering is not None),
                schedule=schedule,
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
                        report({"event": "progress"}, force=False)
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
                        {
                            "event": "frame",
                            "index": out.index,
                            "done": done,
                            "total": total,
                            "fps": round(fps, 3),
                        }
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
                report({"event": "progress"}, force=False)
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
            {
                "event": "done",
                "frames": done,
                "keyframes": keyframes,
                "seconds": round(seconds, 3),
                "fps": round(done / seconds, 3) if seconds > 0 else None,
                "dropped": dropped,
                "output": None if output is None else str(output),
            }
        )
        return result
    except BaseException as exc:
        message = str(exc) if isinstance(exc, RerenderError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        emit({"event": "error", "message": message})
        raise
