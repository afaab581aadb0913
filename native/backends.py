"""Which synthesis backends can run here, and why not (also shown by `rerender info`)."""

from __future__ import annotations

import ctypes
import shutil


def cpu_unavailable_reason() -> str | None:
    try:
        from rerender.native import _synth  # noqa: F401
    except ImportError as exc:
        return f"the compiled module rerender.native._synth cannot be imported ({exc}); reinstall with pip."
    return None


def cuda_unavailable_reason() -> str | None:
    # torch.cuda.is_available() asks NVML and does not initialise CUDA, so this check is fork-safe; the
    # backend itself drives the CUDA driver API from the compiled module (no pycuda).
    if cpu_unavailable_reason() is not None:
        return (
            "the compiled module rerender.native._synth, which holds the CUDA executor, cannot be imported."
        )
    # The driver library first: without it there is no GPU, and this answer costs no torch import (seconds
    # on a CPU-only machine, paid before the first frame of every run with --synth-backend auto).
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "the CUDA driver library libcuda.so.1 cannot be loaded (no NVIDIA driver here)."
    try:
        import torch
    except ImportError:
        return "torch is not installed, and the CUDA backend shares torch's CUDA context."
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)."
    if shutil.which("nvcc") is None:
        return "nvcc is not on PATH, and the CUDA kernels are compiled at run time."
    return None


def available_backends() -> dict[str, str | None]:
    """Backend name -> None if usable here, else a one-sentence reason why not."""
    return {"cpu": cpu_unavailable_reason(), "cuda": cuda_unavailable_reason()}
