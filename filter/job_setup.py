"""What a job settles before its first frame: the synthesis backend it runs on (`resolve_synth_backend`) and
the sentence that says which processing size it chose and why (`processing_note`)."""

from __future__ import annotations

from dataclasses import replace

from .errors import UsageError
from .geometry import ProcessingGeometry
from .graph import FilterOptions
from .run_options import DEFAULT_SIZE


def resolve_synth_backend(f: FilterOptions) -> FilterOptions:
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
