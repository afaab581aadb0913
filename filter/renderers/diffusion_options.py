"""Command-line flags of the diffusion keyframe renderer (rerender-reference.md Part 1 decision 7 defaults).

`rerender run` adds these flags with `add_arguments(parser)`; they are parsed into a frozen
`DiffusionOptions` by `from_args(args)`, which validates every value and raises UsageError sentences.
Importing this module must stay cheap (no torch import): the parser is built for every `rerender run`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

from ..errors import UsageError

ADDED_PROMPT = "best quality, extremely detailed"
NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality"
)


@dataclass(frozen=True)
class Window:
    """A step window as fractions of the full schedule (reference Part 2 §B.8)."""

    start: float
    end: float


@dataclass(frozen=True)
class DiffusionOptions:
    model: str
    prompt: str = ""
    negative_prompt: str = NEGATIVE_PROMPT
    added_prompt: str = ADDED_PROMPT
    loras: tuple[tuple[str, float], ...] = ()
    controlnets: tuple[tuple[str, float], ...] = ()
    control: str = "canny"
    strength: float = 0.75
    steps: int = 20
    cfg_scale: float = 7.5
    seed: int = 0
    vary_noise: bool = False
    cross_frame: Literal["full", "loose", "off"] = "loose"
    shape_fusion: Window = field(default_factory=lambda: Window(0.0, 0.1))
    pixel_fusion: Window = field(default_factory=lambda: Window(0.5, 0.8))
    adain: Window = field(default_factory=lambda: Window(0.8, 1.0))
    mask_strength: float = 0.5
    inner_strength: float = 0.9
    fidelity_threshold: float = 0.25
    color_correct: bool = False
    freeu: tuple[float, float, float, float] | None = None
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    allow_pickle: bool = False
    # Added by the sampler: configs for single-file checkpoints of other layouts, the flow estimator the
    # propagation's --flow names, pass-1 early stop (fraction of the schedule) and the smooth boundary.
    model_config: str | None = None
    flow: str = "dis"
    first_pass_stop: float = 0.3
    smooth_boundary: bool = True
    # Added by the export helper (issue 6): the backend, chosen once at load time (engines/select.py), and
    # the export directory the onnxruntime/TensorRT backends serve (`rerender export --out DIR`).
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    engines: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("diffusion renderer (used when --model is given)")
    g.add_argument("--model", help="SD1.5 diffusers folder, single-file .safetensors, or hub id")
    g.add_argument("--prompt", default="", help="text that describes the target style")
    g.add_argument("--negative-prompt", default=NEGATIVE_PROMPT)
    g.add_argument("--added-prompt", default=ADDED_PROMPT, help="appended to the prompt after ', '")
    g.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]", help="repeatable")
    g.add_argument("--controlnet", action="append", default=[], metavar="PATH[:SCALE]", help="repeatable")
    g.add_argument(
        "--control", default="canny", help="canny | canny:LOW,HIGH | hed:WEIGHTS | depth:WEIGHTS | video:PATH"
    )
    g.add_argument("--strength", type=float, default=0.75, help="SDEdit denoising strength in (0, 1]")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--cfg-scale", type=float, default=7.5)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--vary-noise", action="store_true", help="new noise for every keyframe")
    g.add_argument("--cross-frame", choices=["full", "loose", "off"], default="loose")
    g.add_argument("--shape-fusion", default="0,0.1", metavar="START,END")
    g.add_argument("--pixel-fusion", default="0.5,0.8", metavar="START,END")
    g.add_argument("--adain", default="0.8,1", metavar="START,END")
    g.add_argument("--mask-strength", type=float, default=0.5)
    g.add_argument("--inner-strength", type=float, default=0.9)
    g.add_argument("--fidelity-threshold", type=float, default=0.25)
    g.add_argument(
        "--color-correct", action="store_true", help="histogram-match SDEdit sources to the anchor"
    )
    g.add_argument("--freeu", default=None, metavar="B1,B2,S1,S2")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    g.add_argument(
        "--allow-pickle", action="store_true", help="allow .ckpt/.pth/.bin (loading them runs code)"
    )
    g.add_argument(
        "--model-config",
        default=None,
        metavar="DIR",
        help="diffusers-layout component configs for a single-file checkpoint (default: shipped SD1.5)",
    )
    g.add_argument(
        "--first-pass-stop",
        type=float,
        default=0.3,
        help="fraction of the schedule where pass 1 stops, at least one step after the SDEdit entry "
        "(1 = full pass; its result only fills pixels both warps miss; default 0.3: one step at 20 steps, "
        "strength 0.75)",
    )
    g.add_argument(
        "--no-smooth-boundary", action="store_true", help="pixel fusion without boundary smoothing"
    )
    g.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        default="auto",
        help="auto: TensorRT, else onnxruntime-CUDA, else torch (each rejection is explained)",
    )
    g.add_argument("--engines", default=None, metavar="DIR", help="export directory of `rerender export`")


def _window(flag: str, text: str) -> Window:
    try:
        start, end = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"{flag} expects START,END as two numbers in [0, 1], e.g. 0.5,0.8; got {text!r}"
        ) from None
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0) or end < start:
        raise UsageError(f"{flag} expects 0 <= START <= END <= 1; got {text!r}")
    return Window(start, end)


def _path_scale(flag: str, text: str) -> tuple[str, float]:
    path, sep, scale = text.rpartition(":")
    if not sep or not path:
        return text, 1.0
    try:
        return path, float(scale)
    except ValueError:
        return text, 1.0  # a ':' inside the path itself, no scale given


def _in_range(flag: str, value: float, low: float, high: float, low_open: bool = False) -> float:
    if value != value or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise UsageError(f"{flag} must be in {bracket}{low}, {high}]; got {value}")
    return value


def from_args(args: argparse.Namespace) -> DiffusionOptions:
    if not args.model:
        raise UsageError(
            "the diffusion renderer needs --model PATH (a diffusers folder or .safetensors file)"
        )
    if args.steps < 1 or args.steps > 1000:
        raise UsageError(f"--steps must be between 1 and 1000; got {args.steps}")
    kind = args.control.partition(":")[0]
    if kind not in ("canny", "hed", "depth", "video"):
        raise UsageError(
            f"--control expects canny, canny:LOW,HIGH, hed:WEIGHTS, depth:FOLDER or video:PATH; got {args.control!r}"
        )
    freeu = None
    if args.freeu is not None:
        try:
            values = tuple(float(v) for v in args.freeu.split(","))
        except ValueError:
            values = ()
        if len(values) != 4:
            raise UsageError(
                f"--freeu expects four numbers B1,B2,S1,S2, e.g. 1.1,1.2,1.0,0.2; got {args.freeu!r}"
            )
        freeu = values
    return DiffusionOptions(
        model=args.model,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        added_prompt=args.added_prompt,
        loras=tuple(_path_scale("--lora", v) for v in args.lora),
        controlnets=tuple(_path_scale("--controlnet", v) for v in args.controlnet),
        control=args.control,
        strength=_in_range("--strength", args.strength, 0.0, 1.0, low_open=True),
        steps=args.steps,
        cfg_scale=_in_range("--cfg-scale", args.cfg_scale, 0.0, 50.0),
        seed=args.seed,
        vary_noise=args.vary_noise,
        cross_frame=args.cross_frame,
        shape_fusion=_window("--shape-fusion", args.shape_fusion),
        pixel_fusion=_window("--pixel-fusion", args.pixel_fusion),
        adain=_window("--adain", args.adain),
        mask_strength=_in_range("--mask-strength", args.mask_strength, 0.0, 1.0),
        inner_strength=_in_range("--inner-strength", args.inner_strength, 0.0, 1.0),
        fidelity_threshold=_in_range("--fidelity-threshold", args.fidelity_threshold, 0.0, 2.0),
        color_correct=args.color_correct,
        freeu=freeu,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        model_config=args.model_config,
        flow=getattr(args, "flow", "dis"),
        first_pass_stop=_in_range("--first-pass-stop", args.first_pass_stop, 0.0, 1.0, low_open=True),
        smooth_boundary=not args.no_smooth_boundary,
        backend=getattr(args, "backend", "auto"),
        engines=getattr(args, "engines", None),
    )
