"""The options of one re-rendering job (`RunOptions`) and `rerender run`'s parser that builds them from argv.

`RunOptions` is a tree of frozen dataclasses, the job's API: input and output (`sink`), the filter
(`FilterOptions`: geometry, `--flow`, the schedule and the propagation) and the keyframe renderer, one
dataclass per renderer (`ClassicOptions`, `FramesOptions` with its keyframes folder, `DiffusionOptions` with
its model), so a keyframes folder without the frames renderer or a model without the diffusion renderer
cannot be built. Each dataclass checks its own values when it is made, in sentences that name the CLI flag.
`run_args` maps flags onto it: `parse_run_options(argv)` for the CLI, `options_from_values` for values keyed
by flag (a watch folder's settings).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import option_ranges as ranges
from .cli_parser import OneLineParser
from .cluster.options import RayOptions, declare_ray_flags
from .errors import UsageError
from .graph import FilterOptions
from .io import SinkOptions, add_io_arguments
from .lavfi import LAVFI_PREFIX, lavfi_graph
from .propagation import PropagationOptions
from .renderers import diffusion_options
from .renderers.classic import CLASSIC_STYLES, ClassicOptions
from .renderers.diffusion_options import DiffusionOptions
from .renderers.frames import FramesOptions, scan_keyframe_files
from .run_flags import EVERYWHERE, VALUE, FlagSchema, RunFlag, Use, build_parser, record
from .schedule import SCENE_CUT_THRESHOLD, FixedSchedule, KeyframeSchedule, make_schedule

Stage = Literal["first-keyframe", "keyframes", "full"]
RendererName = Literal["classic", "frames", "diffusion"]
RendererOptions = ClassicOptions | FramesOptions | DiffusionOptions
ProgressMode = Literal["bar", "json", "none"]
# The `Use` of the video I/O flags (declared in io/args.py, which other commands share): the encode's
# quality is the clip's business; the container is an output location (a sidecar picks one the watch
# daemon knows); raw encoder options can name files to write; the input demuxer decides how the input is
# read (a playlist could pull in other files).
IO_USES = {
    "format": Use("output", sidecar=True),
    "input_format": VALUE,
    "codec": EVERYWHERE,
    "crf": EVERYWHERE,
    "pix_fmt": EVERYWHERE,
    "encoder_option": Use("encoder_option"),
    "no_audio": EVERYWHERE,
    "strict": EVERYWHERE,
}
DEFAULT_SIZE = 512  # the processing short side when --size is not given (and the input is at least this)


@dataclass(frozen=True)
class RunOptions:
    input: str  # path, '-' (standard input) or 'lavfi:GRAPH' (an FFmpeg test source)
    output: str  # path or '-'
    input_format: str | None = None
    sink: SinkOptions = field(default_factory=SinkOptions)
    strict: bool = False  # fail when corrupt packets made frames drop
    filter: FilterOptions = field(default_factory=FilterOptions)
    renderer: RendererOptions = field(default_factory=ClassicOptions)
    progress: ProgressMode = "bar"

    def __post_init__(self) -> None:
        if not isinstance(self.renderer, RendererOptions):
            raise TypeError(
                f"renderer must be ClassicOptions, FramesOptions or DiffusionOptions; got {self.renderer!r}"
            )
        if self.input != "-" and self.input == self.output:
            raise UsageError("-o must differ from -i: the input would be overwritten while it is read")
        if self.input.startswith(LAVFI_PREFIX):
            lavfi_graph(self.input)
        if self.progress not in ("bar", "json", "none"):
            raise UsageError(f"--progress expects bar, json or none; got {self.progress!r}")

    @property
    def diffusion(self) -> DiffusionOptions | None:
        """The diffusion renderer's options, when that is the renderer."""
        return self.renderer if isinstance(self.renderer, DiffusionOptions) else None

    ray: RayOptions | None = None  # --ray: keyframes and gaps on a Ray cluster (cluster/)


class RunParser(OneLineParser):
    """The run parser (one-line errors, exit 2); `schema` holds the typed flags it was built from
    (`run_flags`)."""

    schema: tuple[RunFlag, ...] = ()


def build_run_parser() -> RunParser:
    """`rerender run`'s parser, built from `run_flags()`; its `schema` holds those flags."""
    p = RunParser(
        prog="rerender run",
        description="Re-render a video: keyframes are stylized, the frames between them propagated and blended. "
        "Every input frame comes out once, in order, with its timestamp.",
    )
    p.schema = run_flags()
    build_parser(p, p.schema)
    return p


def run_flags() -> tuple[RunFlag, ...]:
    """Every flag of `rerender run`, in --help order."""
    return record(_declare_run_flags)


def _declare_run_flags(p: FlagSchema) -> None:
    p.add_argument(
        "-i",
        "--input",
        required=True,
        metavar="PATH",
        help="input video, '-' for standard input, or lavfi:GRAPH for an FFmpeg test source "
        "(e.g. lavfi:testsrc2=size=640x360:rate=25:duration=2)",
        use=Use("input"),
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="output video, or '-' for standard output",
        use=Use("output"),
    )
    add_io_arguments(p.using(IO_USES))
    g = p.add_argument_group("keyframes and propagation")
    g.add_argument(
        "-K",
        "--keyframe-interval",
        type=ranges.int_range(1, ranges.MAX_KEYFRAME_INTERVAL),
        default=10,
        metavar="K",
        help=f"frames between keyframes, 1 to {ranges.MAX_KEYFRAME_INTERVAL} (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--keyframes",
        choices=["uniform", "adaptive"],
        default="uniform",
        help="uniform: every K frames; adaptive: more where motion/occlusion is large, about one per K on "
        "average (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--no-scene-cuts",
        action="store_true",
        help="do not detect scene cuts (a cut starts a new anchor; default: detect them)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--scene-cut-threshold",
        type=ranges.float_range(0, 1, low_open=True),
        default=SCENE_CUT_THRESHOLD,
        metavar="X",
        help="a frame is a scene cut where the mean of its colour-histogram distance and its unmatched "
        "(occluded) share, both 0..1, exceeds X; (0, 1], lower finds more cuts (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--renderer",
        choices=["classic", "frames", "diffusion"],
        default=None,
        help="keyframe renderer (default: diffusion when --model is given, else classic)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--keyframes-dir",
        type=Path,
        metavar="DIR",
        help="frames renderer: folder of stylized keyframes (no default; needed by --renderer frames)",
        use=Use("read_path", sidecar=True, paths="whole"),
    )
    g.add_argument(
        "--keyframes-first-index",
        type=ranges.whole_number,  # its range: FramesOptions
        default=0,
        metavar="N",
        help="frames renderer: the number in the first frame's file name, 0 or more (default: %(default)s; "
        "1 for ffmpeg's %%04d)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--classic-style",
        choices=CLASSIC_STYLES,
        default="stylization",
        help="classic renderer look (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--classic-sigma-s",
        type=ranges.number,  # its range: ClassicOptions
        default=60.0,
        metavar="PIXELS",
        help="classic: spatial extent in pixels, (0, 200] (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--classic-sigma-r",
        type=ranges.number,  # its range: ClassicOptions
        default=0.45,
        metavar="R",
        help="classic: colour extent as a fraction of the colour range, (0, 1] (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--size",
        type=ranges.int_range(ranges.MIN_SHORT_SIDE, ranges.MAX_SHORT_SIDE, multiple=64),
        default=None,
        metavar="PIXELS",
        help=f"processing size: the short side in pixels, a multiple of 64 from 64 to {ranges.MAX_SHORT_SIDE} "
        f"(default: the input's own short side, at most {DEFAULT_SIZE}; an input is scaled up only when "
        "--size is given)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--fit",
        choices=["pad", "crop"],
        default="pad",
        help="keep the aspect ratio by padding or cropping to multiples of 64 (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--propagate-at",
        choices=["processing", "output"],
        default="processing",
        help="propagate at the processing size and resize, or at the output size (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--flow",
        default="dis",
        help="optical flow: dis, dis:fast, dis:ultrafast, raft:WEIGHTS (default: %(default)s)",
        use=Use("read_path", sidecar=True, page=True, paths="flow", checkpoint=True),
    )
    g.add_argument(
        "--threads",
        type=ranges.int_range(1, ranges.max_threads()),
        default=None,
        metavar="N",
        help=f"threads per synthesis chain, 1 to {ranges.max_threads()} (default: the cores split between "
        "the two chains)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--synth-backend",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="patch synthesizer: auto takes cuda when a GPU and the CUDA build are there, else cpu "
        "(default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--patch-size",
        type=ranges.int_range(3, ranges.MAX_PATCH_SIZE, odd=True),
        default=5,
        metavar="PIXELS",
        help=f"synthesis patch side in pixels, odd, 3 to {ranges.MAX_PATCH_SIZE} (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--search-vote-iters",
        type=ranges.int_range(1, ranges.MAX_SEARCH_VOTE_ITERS),
        default=12,
        metavar="N",
        help=f"search-and-vote iterations per pyramid level, 1 to {ranges.MAX_SEARCH_VOTE_ITERS} "
        "(default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--patchmatch-iters",
        type=ranges.int_range(1, ranges.MAX_PATCHMATCH_ITERS),
        default=6,
        metavar="N",
        help=f"PatchMatch iterations per search, 1 to {ranges.MAX_PATCHMATCH_ITERS} (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--pyramid-levels",
        type=ranges.int_range(1, ranges.MAX_PYRAMID_LEVELS),
        default=None,
        metavar="N",
        help=f"synthesis pyramid levels, 1 to {ranges.MAX_PYRAMID_LEVELS} (default: as many as the "
        "processing size allows)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--poisson",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="gradient-domain (Poisson) fusion in the blend, as the authors' -ps (default: off: it measured "
        "lower fidelity and more flicker, see README)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--blend-weights",
        choices=["frames", "motion"],
        default=PropagationOptions.blend_weights,
        help="how near a frame is to each keyframe when the two propagations are blended: by frame "
        "position (the paper) or by the motion between them (default: %(default)s)",
        use=EVERYWHERE,
    )
    g.add_argument(
        "--keyframe-pull",
        type=ranges.number,
        default=PropagationOptions.keyframe_pull,
        metavar="SHARE",
        help="pull the frames next to each keyframe towards it where nothing was occluded on the way, by "
        "up to this share, 0 to 1; 0 turns it off; softens the step into a keyframe (default: %(default)s)",
        use=EVERYWHERE,
    )
    diffusion_options.add_arguments(p.using(diffusion_options.USES, default=EVERYWHERE))
    out = p.add_argument_group("progress")
    out.add_argument(
        "--progress",
        choices=["bar", "json", "none"],
        default="bar",
        help="stderr progress format; warnings are printed with every format (default: %(default)s)",
        use=VALUE,
    )
    out.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress output (same as --progress none); warnings still go to stderr",
        use=VALUE,
    )
    declare_ray_flags(p)


def keyframe_schedule(options: RunOptions) -> KeyframeSchedule:
    """A fresh keyframe schedule for one run: the user's keyframe files (frames renderer) or -K/--keyframes."""
    if isinstance(options.renderer, FramesOptions):
        files = scan_keyframe_files(options.renderer.keyframes_dir, options.renderer.first_index)
        return FixedSchedule(frozenset(files))
    return make_schedule(options.filter.schedule)
