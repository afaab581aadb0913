"""`rerender info`: what is installed and usable on this machine, and for every missing piece, why.

Each probe returns one `Component` and never raises: a failing import or a missing driver becomes a
status and a one-sentence reason. Versions come from package metadata where a version is all we need, so
slow imports (diffusers, transformers) are not paid; torch, onnxruntime and tensorrt are imported because
only importing them tells whether they work; the CUDA driver library is loaded with ctypes.

To add a section (e.g. a listing of built engines for `--engines DIR`), add a function returning
`Component`s and call it from `collect()`; the text and JSON outputs pick it up unchanged.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.metadata
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["ok", "missing", "unavailable", "error"]
GPU_EXTRA = "pip install 'rerender[gpu]'"
BASE_INSTALL = "pip install -e ."


@dataclass(frozen=True)
class Component:
    """One row of the report. `reason` is a sentence whenever `status` is not "ok"."""

    name: str
    status: Status
    version: str | None = None
    reason: str | None = None
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        if self.ok:
            extra = "".join(f", {k}: {_short(v)}" for k, v in self.details.items() if v not in (None, [], {}))
            return f"{self.name}: {self.version or 'ok'}{extra}"
        return f"{self.name}: {self.reason}"


def _short(value) -> str:
    if isinstance(value, list):
        return "; ".join(_short(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import_error(module: str) -> tuple[object | None, str | None]:
    try:
        return importlib.import_module(module), None
    except ImportError as exc:
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a broken install must show up as a reason, not a crash
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def _not_installed(name: str, how: str) -> Component:
    return Component(name, "missing", reason=f"not installed ({how})")


# --- probes ------------------------------------------------------------------------------------------


def probe_python() -> Component:
    return Component(
        "python",
        "ok",
        platform.python_version(),
        details={"executable": sys.executable, "platform": platform.platform(terse=True)},
    )


def probe_metadata_only(name: str, dist: str, how: str) -> Callable[[], Component]:
    def probe() -> Component:
        version = _version(dist)
        return Component(name, "ok", version) if version else _not_installed(name, how)

    return probe


def probe_torch() -> tuple[Component, Component]:
    """torch itself, and CUDA as torch sees it (devices with name, compute capability and memory)."""
    if _version("torch") is None:
        missing = _not_installed("torch", "pip install torch==2.13.0, or the CUDA build, see README")
        return missing, Component("cuda", "unavailable", reason="torch is not installed")
    torch, err = _import_error("torch")
    if torch is None:
        return (
            Component("torch", "error", _version("torch"), reason=f"import failed: {err}"),
            Component("cuda", "unavailable", reason="torch cannot be imported"),
        )
    build = getattr(torch.version, "cuda", None)
    torch_row = Component(
        "torch", "ok", torch.__version__, details={"cuda_build": build or "none (CPU build)"}
    )
    if build is None:
        return torch_row, Component(
            "cuda",
            "unavailable",
            reason="torch is a CPU build (torch.version.cuda is None); install the CUDA build for a GPU",
        )
    try:
        available = torch.cuda.is_available()
    except Exception as exc:  # noqa: BLE001
        return torch_row, Component("cuda", "error", reason=f"torch.cuda.is_available() failed: {exc}")
    if not available:
        return torch_row, Component("cuda", "unavailable", reason="torch.cuda.is_available() is False")
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "index": i,
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return torch_row, Component("cuda", "ok", build, details={"devices": devices})


def probe_onnxruntime() -> Component:
    if _version("onnxruntime") is None and _version("onnxruntime-gpu") is None:
        return _not_installed("onnxruntime", BASE_INSTALL)
    ort, err = _import_error("onnxruntime")
    if ort is None:
        return Component("onnxruntime", "error", reason=f"import failed: {err}")
    return Component(
        "onnxruntime", "ok", ort.__version__, details={"providers": ort.get_available_providers()}
    )


def probe_tensorrt() -> Component:
    if not any(_version(d) for d in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12_libs")):
        if importlib.util.find_spec("tensorrt") is None:
            return _not_installed("tensorrt", GPU_EXTRA)
    trt, err = _import_error("tensorrt")
    if trt is None:
        return Component("tensorrt", "error", reason=f"installed but cannot be imported: {err}")
    return Component("tensorrt", "ok", getattr(trt, "__version__", None))


def probe_cuda_driver() -> Component:
    """The NVIDIA driver's CUDA library, which the CUDA synthesizer drives directly (loaded at run time)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return Component(
            "cuda-driver", "missing", reason="libcuda.so.1 cannot be loaded: no NVIDIA driver on this machine"
        )
    version = ctypes.c_int(0)
    status = lib.cuDriverGetVersion(ctypes.byref(version))
    if status != 0:
        return Component("cuda-driver", "error", reason=f"cuDriverGetVersion failed with CUDA error {status}")
    text = f"{version.value // 1000}.{version.value % 1000 // 10}"
    return Component("cuda-driver", "ok", text, details={"cuda_version": text})


def probe_av() -> Component:
    av, err = _import_error("av")
    if av is None:
        return Component("av", "error", _version("av"), reason=f"PyAV cannot be imported: {err}")
    ffmpeg = getattr(av, "ffmpeg_version_info", None)
    return Component("av", "ok", av.__version__, details={"ffmpeg": ffmpeg})


def probe_opencv() -> Component:
    cv2, err = _import_error("cv2")
    if cv2 is None:
        if not any(_version(d) for d in ("opencv-python-headless", "opencv-python", "opencv-contrib-python")):
            return _not_installed("opencv", BASE_INSTALL)
        return Component("opencv", "error", reason=f"cv2 cannot be imported: {err}")
    return Component("opencv", "ok", cv2.__version__)


def probe_nvcc() -> Component:
    path = shutil.which("nvcc")
    if path is None:
        return Component(
            "nvcc",
            "missing",
            reason="nvcc is not on PATH (install the CUDA toolkit to compile the CUDA synthesizer kernels)",
        )
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Component("nvcc", "error", reason=f"{path} --version failed ({exc})")
    match = re.search(r"release ([\d.]+)", out)
    return Component("nvcc", "ok", match.group(1) if match else None, details={"path": path})


def probe_native() -> list[Component]:
    """One row per synthesis backend of rerender.native (CPU, CUDA) with the reason it cannot run."""
    try:
        from rerender.native import available_backends
    except Exception as exc:  # noqa: BLE001
        reason = f"rerender.native cannot be imported ({str(exc).splitlines()[0] if str(exc) else exc!r})"
        return [Component("native", "error", reason=reason)]
    try:
        backends = available_backends()
    except Exception as exc:  # noqa: BLE001
        return [Component("native", "error", reason=f"available_backends() failed: {exc}")]
    rows = []
    for name, why in backends.items():
        label = f"native.{name}"
        rows.append(
            Component(label, "ok", "built") if why is None else Component(label, "unavailable", reason=why)
        )
    return rows


# --- report ------------------------------------------------------------------------------------------


def collect() -> list[Component]:
    torch_row, cuda_row = probe_torch()
    rows = [
        probe_python(),
        torch_row,
        cuda_row,
        probe_metadata_only("diffusers", "diffusers", BASE_INSTALL)(),
        probe_metadata_only("transformers", "transformers", BASE_INSTALL)(),
        probe_onnxruntime(),
        probe_tensorrt(),
        probe_cuda_driver(),
        probe_av(),
        probe_opencv(),
        probe_nvcc(),
    ]
    rows += probe_native()
    return rows


# --- engines in a directory (`--engines DIR`; added by the export helper) --------------------


def probe_engines(directory: str) -> list[Component]:
    """One row per item of an export directory: ONNX graphs, onnxruntime-CUDA, each TensorRT engine set."""
    from ..export.listing import describe_engines

    return [Component(name, status, reason=reason, details=details) for name, status, reason, details in
            describe_engines(directory)]  # fmt: skip


# --- end of the engines section ----------------------------------------------------------------------


def report(rows: list[Component]) -> dict:
    return {
        "components": {row.name: {k: v for k, v in asdict(row).items() if k != "name"} for row in rows},
        "missing": [f"{row.name}: {row.reason}" for row in rows if not row.ok],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="rerender info",
        description="Versions, CUDA devices and native backends, with the reason for every missing piece.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--engines", metavar="DIR", help="list the engines in DIR and whether they fit here")
    args = parser.parse_args(argv)
    rows = collect() + (probe_engines(args.engines) if args.engines else [])
    if args.json:
        print(json.dumps(report(rows), indent=2, sort_keys=False, default=str))
        return 0
    for row in rows:
        print(row.line())
    return 0
