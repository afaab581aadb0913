"""CUDA backend of `synthesize`: the kernels of native/cuda/synth_kernels.cu (per-pixel logic shared with the CPU
backend through native/csrc/synth_core.h), compiled by nvcc for the device's architecture (cached on disk) and
sequenced by the one search-vote schedule (native/csrc/synth_driver.h) inside the compiled module
(`rerender.native._synth.CudaSynth`, which drives the CUDA driver API in the primary context torch uses).

Built to run beside the UNet: every thread (each propagation chain runs in its own) gets its own `CudaSynth`
per device, so its own non-blocking stream and its own pool of device buffers, reused frame after frame; no
lock is shared between chains and the GIL is released while a frame synthesises. Frames arrive and leave as
host arrays, so no torch tensor crosses into these streams and no torch stream needs to wait on them.

Only imported when the CUDA backend can run (see backends.py)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
from rerender.native.params import SynthParams

HERE = Path(__file__).resolve().parent
KERNELS = HERE / "cuda" / "synth_kernels.cu"
INCLUDE = HERE / "csrc"
NVCC_TIMEOUT_S = 600


def resolve_device(device: str | int | None) -> int:
    """The CUDA device index of "cuda", "cuda:N", N or None (torch's current device)."""
    if device is None or device == "cuda":
        import torch

        return torch.cuda.current_device()
    if isinstance(device, int) and not isinstance(device, bool):
        index = device
    elif isinstance(device, str) and re.fullmatch(r"cuda:\d{1,3}", device):
        index = int(device.split(":")[1])
    else:
        text = str(getattr(device, "type", "")) + (
            f":{device.index}" if getattr(device, "index", None) else ""
        )
        if text.startswith("cuda"):
            return resolve_device(text)
        raise ValueError(f"the synthesis device must be 'cuda', 'cuda:N' or an index, got {device!r}.")
    if index < 0:
        raise ValueError(f"the CUDA device index must be >= 0, got {index}.")
    return index


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rerender" / "cuda"


def nvcc_command(nvcc: str, arch: str, output: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """The one nvcc command line for the kernels (the run-time build and the CI compile test share it)."""
    return [
        nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-O3", "-I", str(INCLUDE), *extra,
        "-o", str(output), str(KERNELS),
    ]  # fmt: skip


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([KERNELS, *INCLUDE.glob("*.h")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def compile_kernels(major: int, minor: int) -> bytes:
    """The kernels as a cubin for compute capability major.minor, built once per source and nvcc version."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc is not on PATH, and the CUDA kernels are compiled at run time.")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    arch = f"sm_{int(major)}{int(minor)}"
    key = hashlib.sha256(f"{_source_digest()}|{arch}|{version}".encode()).hexdigest()[:32]
    cached = cache_dir() / f"synth_kernels.{arch}.{key}.cubin"
    if cached.is_file():
        return cached.read_bytes()
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        out = Path(tmp) / "k.cubin"
        run = subprocess.run(
            nvcc_command(nvcc, arch, out), capture_output=True, text=True, timeout=NVCC_TIMEOUT_S
        )
        if run.returncode != 0:
            raise RuntimeError(f"nvcc could not compile {KERNELS.name} for {arch}:\n{run.stderr.strip()}")
        data = out.read_bytes()
        os.replace(out, cached)  # atomic: a concurrent build writes the same bytes
    return data


class _Chains(threading.local):
    """One CudaSynth per device for the calling thread: a propagation chain is one thread, so chains never share
    a stream, a buffer or a lock. Freed (with its context current) when the thread ends."""

    def __init__(self) -> None:
        self.synths: dict[int, object] = {}


_CHAINS = _Chains()
_MODULES: dict[tuple[int, int], bytes] = {}
_MODULES_LOCK = threading.Lock()  # guards only the first compile of an architecture, never a launch


def chain_synth(device: int):
    """The calling thread's CudaSynth on `device` (created on first use)."""
    from rerender.native import _synth

    synth = _CHAINS.synths.get(device)
    if synth is None:
        devices = _synth.cuda_devices()
        if device >= len(devices):
            raise ValueError(
                f"CUDA device {device} does not exist; this machine has {len(devices)} "
                f"(use cuda:0 .. cuda:{len(devices) - 1})."
            )
        _, major, minor = devices[device]
        with _MODULES_LOCK:
            image = _MODULES.get((major, minor))
            if image is None:
                image = _MODULES[(major, minor)] = compile_kernels(major, minor)
        synth = _CHAINS.synths[device] = _synth.CudaSynth(device, image)
    return synth


def synthesize_cuda(
    style, source, target, style_w, guide_w, levels, params: SynthParams, init_nnf, keep=None, device=None
):
    """Same contract as the CPU binding: returns (image uint8, error float32, nnf int32, stats)."""
    synth = chain_synth(resolve_device(device))
    image, error, nnf, stats = synth.run(
        style,
        source,
        target,
        style_w,
        guide_w,
        **params.schedule_kwargs(levels),
        init_nnf=init_nnf,
        keep=keep,
    )
    stats = {
        "device": synth.device,
        "stream": synth.stream,
        "pooled_bytes": synth.pooled_bytes,
        "frames": synth.frames,
    }
    return np.asarray(image), np.asarray(error), np.asarray(nnf), stats
