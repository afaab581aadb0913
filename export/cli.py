"""`rerender export`: ONNX graphs of every network, then (unless --onnx-only) TensorRT engines for this GPU.

    rerender export --model MODEL [--controlnet PATH]... [--lora PATH[:SCALE]]... --out DIR
                    [--min-size 256x256] [--opt-size 512x960] [--max-size 960x960]
                    [--precision auto|fp32|fp16] [--onnx-only]

Prints one line per network with its time and size (ONNX) or build time (TensorRT). Bad flags are one
sentence and exit status 2; nothing is half-written (graphs and engines are written then renamed; the
manifest is written last).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..engines.errors import UsageError
from ..engines.specs import SizeRange


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rerender export",
        description="Export the networks to ONNX and build TensorRT engines (engine cache in OUT/engines).",
    )
    p.add_argument(
        "--model", required=True, help="SD1.5 diffusers folder, single-file .safetensors, or hub id"
    )
    p.add_argument("--controlnet", action="append", default=[], metavar="PATH[:SCALE]", help="repeatable")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]", help="repeatable; merged")
    p.add_argument("--out", required=True, metavar="DIR", help="export directory (created)")
    sizes = SizeRange()  # the default covers the canvases of common video shapes at `rerender run --size 512`
    p.add_argument("--min-size", default=_hw(sizes.min), metavar="HxW", help="smallest image size served")
    p.add_argument("--opt-size", default=_hw(sizes.opt), metavar="HxW", help="size TensorRT tunes for")
    p.add_argument("--max-size", default=_hw(sizes.max), metavar="HxW", help="largest image size served")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16"],
        default="auto",
        help="graph precision; auto: fp16 when building engines, fp32 with --onnx-only (onnxruntime-CPU)",
    )
    p.add_argument("--onnx-only", action="store_true", help="write the ONNX graphs, build no engines")
    p.add_argument("--device", default="cuda", help="CUDA device for engine builds (cuda or cuda:N)")
    p.add_argument(
        "--allow-pickle", action="store_true", help="allow .ckpt/.pth/.bin (loading them runs code)"
    )
    return p


def parse_size(flag: str, text: str) -> tuple[int, int]:
    """'512x768' (height x width) or '512' (square)."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = (values[0], values[0])
    if len(values) != 2 or min(values) <= 0:
        raise UsageError(f"{flag} expects HEIGHTxWIDTH in pixels, e.g. 512x768; got {text!r}")
    return values  # type: ignore[return-value]


def _size_range(args: argparse.Namespace) -> SizeRange:
    sizes = [parse_size(f, v) for f, v in (("--min-size", args.min_size), ("--opt-size", args.opt_size),
                                           ("--max-size", args.max_size))]  # fmt: skip
    try:
        return SizeRange(*sizes)
    except ValueError as error:
        raise UsageError(f"--min-size/--opt-size/--max-size: {error}") from None


def _path_scale(text: str) -> tuple[str, float]:
    path, sep, scale = text.rpartition(":")
    if sep and path:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return text, 1.0


def _engine_device(args: argparse.Namespace):
    """The CUDA device for engine builds, or a UsageError that says why TensorRT cannot build here."""
    import torch

    from ..engines.tensorrt_backend import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise UsageError(
            f"cannot build engines here ({reason}); pass --onnx-only to write the ONNX graphs only"
        )
    device = torch.device(args.device)
    if device.type != "cuda":
        raise UsageError(f"--device {args.device}: TensorRT engines are built on a CUDA device, e.g. cuda:0")
    return device


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    sizes = _size_range(args)
    device = None if args.onnx_only else _engine_device(args)
    precision = args.precision if args.precision != "auto" else ("fp32" if args.onnx_only else "fp16")
    loras = tuple(_path_scale(v) for v in args.lora)
    controlnets = tuple(_path_scale(v)[0] for v in args.controlnet)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory; give a directory path")

    from ..engines.loading import load_bundle
    from .bundle import ExportPlan, build_engines, export_bundle

    start = time.perf_counter()
    print(f"loading {args.model} ...", flush=True)
    bundle = load_bundle(
        args.model,
        loras=loras,
        controlnets=tuple((c, 1.0) for c in controlnets),
        allow_pickle=args.allow_pickle,
    )
    manifest, graphs = export_bundle(
        bundle,
        out,
        ExportPlan(sizes, precision),
        model=args.model,
        loras=loras,
        controlnets=controlnets,
        progress=lambda m: print(m, flush=True),
    )
    del bundle  # the torch weights are not needed for the TensorRT build
    total = sum(g.bytes for g in graphs)
    print(f"ONNX: {len(graphs)} graphs, {total / 1e6:.1f} MB in {out} ({sizes.tag}, {precision})", flush=True)
    if device is not None:
        from .tensorrt_build import EngineBuildError

        try:
            build_engines(out, manifest, device=device, progress=lambda m: print(m, flush=True))
        except EngineBuildError as error:
            print(f"rerender export: error: {error}", file=sys.stderr)
            return 1
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0
