"""Command-line flags of the diffusion keyframe renderer (defaults: docs/decisions.md, decision 7).

`rerender run` adds these flags with `add_arguments(parser)`; `from_args(args)` converts them into a frozen
`DiffusionOptions` (diffusion_settings.py), which checks every value once and raises UsageError sentences
that name the flag. `--help` shows every default and unit.
Importing this module must stay cheap (no torch import): the parser is built for every `rerender run`.
"""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..run_flags import VALUE, Use
from .diffusion_settings import (
    ADDED_PROMPT,
    CONTROLNET_SCALE,
    CONTROLNET_SCALE_RANGE,
    DIRECT_IMAGES,
    FREEU_BACKBONE_RANGE,
    FREEU_SKIP_RANGE,
    LORA_SCALE,
    LORA_SCALE_RANGE,
    MAX_CFG_SCALE,
    MAX_FIDELITY_THRESHOLD,
    MAX_SEED,
    MAX_STEPS,
    NEGATIVE_PROMPT,
    DiffusionOptions,
    Window,
)

__all__ = ["DiffusionOptions", "Window", "USES", "add_arguments", "from_args"]

_WEIGHTS = Use("read_path", sidecar=True, paths="whole", checkpoint=True)
# What each flag's value is and who besides the command line may set it (`run_flags.Use`, by parsed name;
# `add_arguments` also serves plain argparse parsers). Every flag not named is a plain value a watch
# sidecar and the preview page may set.
USES: dict[str, Use] = {
    "model": _WEIGHTS,
    "model_config": _WEIGHTS,
    "vae": _WEIGHTS,
    "engines": _WEIGHTS,
    "lora": Use("read_path", sidecar=True, paths="path_scale", checkpoint=True),
    "controlnet": Use("read_path", sidecar=True, paths="path_scale", checkpoint=True),
    # The page may choose the hints that read no file (canny).
    "control": Use("read_path", sidecar=True, page=True, paths="control", checkpoint=True),
    "device": Use(page=True),  # the machine's devices are the watch daemon owner's to assign
    "allow_pickle": VALUE,  # the command line's (or a watch preset's) alone: loading a pickle runs code
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("diffusion renderer (used when --model is given)")
    g.add_argument(
        "--model", help="SD1.5 diffusers folder, single-file checkpoint (.safetensors), or hub id (required)"
    )
    g.add_argument("--prompt", default="", help="text that describes the target style (default: empty)")
    g.add_argument(
        "--negative-prompt", default=NEGATIVE_PROMPT, help="what to steer away from (default: '%(default)s')"
    )
    g.add_argument(
        "--added-prompt",
        default=ADDED_PROMPT,
        help="appended to the prompt after ', ' (default: '%(default)s'; '' for none)",
    )
    g.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help=f"LoRA merged into the model, repeatable; SCALE in [{LORA_SCALE_RANGE[0]:g}, "
        f"{LORA_SCALE_RANGE[1]:g}] (default scale: {LORA_SCALE:g})",
    )
    g.add_argument(
        "--controlnet",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="SD1.5 ControlNet (folder or single file), repeatable; conditioning SCALE in "
        f"[{CONTROLNET_SCALE_RANGE[0]:g}, {CONTROLNET_SCALE_RANGE[1]:g}] (default scale: {CONTROLNET_SCALE:g}). "
        "Without one, keyframes follow the text only",
    )
    g.add_argument(
        "--control",
        action="append",
        default=None,
        metavar="SPEC",
        help="hint of a ControlNet: canny | canny:LOW,HIGH | hed:WEIGHTS | depth:FOLDER | video:PATH; once for "
        "all ControlNets or once per --controlnet in the same order; needs --controlnet (default: canny, "
        "thresholds 50,100)",
    )
    g.add_argument(
        "--vae",
        default=None,
        metavar="PATH",
        help="VAE used instead of the model's own: a diffusers VAE folder or a single file, e.g. the ft-MSE "
        "VAE (default: the model's VAE)",
    )
    g.add_argument(
        "--strength",
        type=float,
        default=0.75,
        help="SDEdit denoising strength in (0, 1]: the share of the steps that run (default: %(default)s)",
    )
    g.add_argument(
        "--steps",
        type=int,
        default=20,
        help=f"DDIM steps of the full schedule, 1-{MAX_STEPS} (default: %(default)s)",
    )
    g.add_argument(
        "--cfg-scale",
        type=float,
        default=7.5,
        help=f"classifier-free guidance scale in [0, {MAX_CFG_SCALE:g}] (default: %(default)s)",
    )
    g.add_argument("--seed", type=int, default=0, help=f"noise seed, 0-{MAX_SEED} (default: %(default)s)")
    g.add_argument(
        "--vary-noise", action="store_true", help="new noise for every keyframe (default: the same noise)"
    )
    g.add_argument(
        "--cross-frame",
        choices=["full", "loose", "off"],
        default="loose",
        help="cross-frame attention layers: loose skips the widest ones (default: %(default)s)",
    )
    g.add_argument(
        "--shape-fusion",
        default="0,0.1",
        metavar="START,END",
        help="shape-aware fusion window, fractions of the schedule in [0, 1] (default: %(default)s)",
    )
    g.add_argument(
        "--pixel-fusion",
        default="0.5,0.8",
        metavar="START,END",
        help="pixel-aware fusion window, fractions of the schedule in [0, 1] (default: %(default)s)",
    )
    g.add_argument(
        "--adain",
        default="0.8,1",
        metavar="START,END",
        help="colour-aware AdaIN window, fractions of the schedule in [0, 1] (default: %(default)s)",
    )
    g.add_argument(
        "--mask-strength",
        type=float,
        default=0.5,
        help="pixel-aware fusion strength in [0, 1] (default: %(default)s)",
    )
    g.add_argument(
        "--inner-strength",
        type=float,
        default=0.9,
        help="pixel-aware fusion detail level in [0, 1] (default: %(default)s)",
    )
    g.add_argument(
        "--fidelity-threshold",
        type=float,
        default=0.25,
        help="fidelity-oriented encoding: pixels whose RGB-mean reconstruction error (images in [-1, 1]) "
        f"exceeds it are not compensated; in [0, {MAX_FIDELITY_THRESHOLD:g}] "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--color-correct",
        action="store_true",
        help="histogram-match SDEdit sources to the anchor (default: off)",
    )
    g.add_argument(
        "--freeu",
        default=None,
        metavar="B1,B2,S1,S2",
        help=f"FreeU backbone factors B in [{FREEU_BACKBONE_RANGE[0]:g}, {FREEU_BACKBONE_RANGE[1]:g}] and skip "
        f"factors S in [{FREEU_SKIP_RANGE[0]:g}, {FREEU_SKIP_RANGE[1]:g}], e.g. 1.1,1.2,1.0,0.2 (default: off)",
    )
    g.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | cuda:N: the GPU of the UNet and of the CUDA synthesizer (default: %(default)s: CUDA if present)",
    )
    g.add_argument(
        "--dtype",
        choices=["auto", "fp32", "fp16", "bf16"],
        default="auto",
        help="weights' precision (default: %(default)s: fp16 on CUDA, fp32 on the CPU)",
    )
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow single weights files that need code to load (a pickle torch's tensor-only loader "
        "refuses; loading it runs that code) (default: refused)",
    )
    g.add_argument(
        "--model-config",
        default=None,
        metavar="DIR",
        help="diffusers-layout component configs for a single-file checkpoint (default: shipped SD1.5)",
    )
    g.add_argument(
        "--direct-image",
        choices=DIRECT_IMAGES,
        default="pass1",
        help="the direct image of pixel-aware fusion: pass1 finishes pass 1 from the step where it branches "
        "off pass 2 (the paper's result); branch-x0 uses the x0 predicted at that step instead (fewer UNet "
        "evaluations) (default: %(default)s)",
    )
    g.add_argument(
        "--no-smooth-boundary",
        action="store_true",
        help="pixel fusion without boundary smoothing (default: smoothed)",
    )
    g.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        default="auto",
        help="auto: TensorRT, else onnxruntime-CUDA, else torch (each rejection is explained) "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--engines",
        default=None,
        metavar="DIR",
        help="export directory of `rerender export` (default: none, torch runs the model)",
    )


def _window(flag: str, text: str) -> Window:
    try:
        start, end = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"{flag} expects START,END as two numbers in [0, 1], e.g. 0.5,0.8; got {text!r}"
        ) from None
    return Window(start, end)


def _path_scale(text: str, default: float) -> tuple[str, float]:
    path, sep, scale = text.rpartition(":")
    if not sep or not path:
        return text, default
    try:
        return path, float(scale)
    except ValueError:
        return text, default  # a ':' inside the path itself, no scale given


def _freeu(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise UsageError(f"--freeu expects four numbers B1,B2,S1,S2, e.g. 1.1,1.2,1.0,0.2; got {text!r}")
    return values  # type: ignore[return-value]


def from_args(args: argparse.Namespace) -> DiffusionOptions:
    """The parsed flags mapped onto `DiffusionOptions`, which checks them (this only converts text)."""
    if not args.model:
        raise UsageError(
            "the diffusion renderer needs --model PATH (a diffusers folder or .safetensors file)"
        )
    control = args.control or ()
    return DiffusionOptions(
        model=args.model,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        added_prompt=args.added_prompt,
        loras=tuple(_path_scale(v, LORA_SCALE) for v in args.lora),
        controlnets=tuple(_path_scale(v, CONTROLNET_SCALE) for v in args.controlnet),
        control=(control,) if isinstance(control, str) else tuple(control),
        strength=args.strength,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        vary_noise=args.vary_noise,
        cross_frame=args.cross_frame,
        shape_fusion=_window("--shape-fusion", args.shape_fusion),
        pixel_fusion=_window("--pixel-fusion", args.pixel_fusion),
        adain=_window("--adain", args.adain),
        mask_strength=args.mask_strength,
        inner_strength=args.inner_strength,
        fidelity_threshold=args.fidelity_threshold,
        color_correct=args.color_correct,
        freeu=_freeu(args.freeu),
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        model_config=args.model_config,
        flow=getattr(args, "flow", "dis"),
        direct_image=args.direct_image,
        smooth_boundary=not args.no_smooth_boundary,
        backend=getattr(args, "backend", "auto"),
        engines=getattr(args, "engines", None),
        vae=getattr(args, "vae", None),
    )
