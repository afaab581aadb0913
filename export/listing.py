"""What an export directory holds and whether it fits this machine (`rerender info --engines DIR`).

One row per item: the ONNX graphs (onnxruntime-CPU can always serve them; onnxruntime-CUDA needs its
provider and a device), and one row per TensorRT engine set recorded in `engines.json` (it fits only with
the same TensorRT version on the same GPU model and compute capability, and when every engine file is
intact). Every row that does not fit carries the sentence that says why. Never raises for a bad directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

Row = tuple[
    str, str, str | None, dict
]  # (name, status "ok"|"unavailable"|"missing"|"error", reason, details)


def _current_gpu() -> tuple[str, str] | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return props.name, f"{props.major}.{props.minor}"
    except Exception:  # a broken driver is reported by the CUDA row of `rerender info`
        return None


def _trt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt as trt

        return trt.__version__
    except Exception:
        return None


def describe_engines(directory: str | Path) -> list[Row]:
    from ..engines.errors import BackendUnavailable
    from ..engines.export_format import ExportManifest, engine_intact, indexed_engine, read_engine_index

    directory = Path(directory)
    if not directory.is_dir():
        return [(f"engines {directory}", "missing", f"{directory} is not a directory", {})]
    try:
        manifest = ExportManifest.load(directory)
    except (BackendUnavailable, ValueError, KeyError) as error:
        return [(f"engines {directory}", "error", str(error), {})]
    graphs = {name: directory / file for name, file in manifest.graphs.items()}
    missing = [name for name, path in graphs.items() if not path.is_file()]
    details = {
        "model": manifest.model,
        "loras": [f"{p}:{s}" for p, s in manifest.loras],
        "controlnets": list(manifest.controlnets),
        "precision": manifest.precision,
        "sizes": f"{manifest.min_size[0]}x{manifest.min_size[1]}..{manifest.max_size[0]}x{manifest.max_size[1]}",
        "networks": sorted(graphs),
    }
    rows: list[Row] = []
    if missing:
        rows.append(
            ("onnx graphs", "error", f"graphs {missing} are missing; re-run `rerender export`", details)
        )
    else:
        rows.append(("onnx graphs", "ok", None, details))
        gpu = _current_gpu()
        cuda_reason = None
        if gpu is None:
            cuda_reason = "no CUDA device"
        elif importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                cuda_reason = "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        if cuda_reason is None:
            rows.append(("onnxruntime-cuda", "ok", None, {}))
        else:
            rows.append(
                ("onnxruntime-cuda", "unavailable", f"onnxruntime-CUDA cannot serve them: {cuda_reason}", {})
            )
    try:
        index = read_engine_index(directory)
    except BackendUnavailable as error:
        rows.append(("tensorrt engines", "error", str(error), {}))
        return rows
    if index is None:
        rows.append(
            ("tensorrt engines", "missing", "no TensorRT engines built (run `rerender export` on a GPU)", {})
        )
        return rows
    trt_version, gpu = _trt_version(), _current_gpu()
    for target, entry in sorted(index.items(), key=lambda item: item[0].key):
        version, gpu_name = target.trt_version, target.gpu_name
        capability = "{}.{}".format(*target.compute_capability)
        reasons = []
        if trt_version is None:
            reasons.append("tensorrt is not installed")
        elif trt_version != version:
            reasons.append(f"built with TensorRT {version}, this machine has {trt_version}")
        if gpu is None:
            reasons.append("no CUDA device")
        elif gpu != (gpu_name, capability):
            reasons.append(f"built for {gpu_name} (sm {capability}), this machine has {gpu[0]} (sm {gpu[1]})")
        broken = [
            net
            for net, file in entry.items()
            if (path := indexed_engine(directory, file)) is None or not engine_intact(path)
        ]
        if broken:
            reasons.append(f"engines {broken} are missing or damaged (they will be rebuilt)")
        status = "ok" if not reasons else "unavailable"
        rows.append(
            (f"tensorrt {version} {gpu_name} sm{capability}", status, "; ".join(reasons) or None, dict(entry))
        )
    return rows
