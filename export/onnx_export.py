"""Spec-driven ONNX export of one network.

Exporter: torch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`), opset 17, with
`dynamic_axes` from the network's I/O spec. In torch 2.13 `torch.onnx.export` defaults to the dynamo
exporter; we measured both on the tiny VAE decoder: both give correct graphs at several sizes through one
dynamic graph, but the dynamo path needs `torch.export.Dim` constraints for every derived size (latent =
image/8, tokens = h·w/stride²) and took ~20x longer to export. The traced graph records shape arithmetic
(reshapes of the attention tokens) symbolically, and the only size-dependent Python branch in diffusers'
UNet (`forward_upsample_size`) is constant for sizes that are multiples of 64, which the specs enforce.

Large graphs: the protobuf limit is 2 GB, so a graph whose weights exceed `EXTERNAL_DATA_THRESHOLD` is
saved with its weights in one `<name>.onnx.data` file beside it (the SD1.5 UNet is 3.4 GB in fp32).
Every graph is checked with `onnx.checker.check_model` (by path, which handles external data).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from ..engines.specs import NetworkSpec, Precision

OPSET = 17
EXTERNAL_DATA_THRESHOLD = 1 << 30  # well under protobuf's 2 GB limit, leaving room for the graph itself

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class ExportedGraph:
    name: str
    path: Path
    precision: Precision
    seconds: float
    bytes: int  # graph + external data


def example_inputs(
    spec: NetworkSpec, batch: int, height: int, width: int, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Random inputs of the spec's shapes and dtypes (token ids in [0, 1000), timesteps in [0, 1000))."""
    feed = {}
    for t in spec.inputs:
        shape = t.concrete(batch, height, width)
        dtype = TORCH_DTYPES[t.dtype]
        if t.dtype in ("int64", "int32"):
            feed[t.name] = torch.randint(0, 1000, shape, generator=generator, dtype=dtype)
        elif t.name == "timestep":
            feed[t.name] = torch.randint(0, 1000, shape, generator=generator).to(dtype)
        elif t.name == "reference_mask":
            feed[t.name] = torch.ones(shape, dtype=dtype)
        else:
            feed[t.name] = torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)
    return feed


def export_network(
    module: torch.nn.Module,
    spec: NetworkSpec,
    path: Path,
    example_size: tuple[int, int],
    precision: Precision = "fp32",
    external_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> ExportedGraph:
    """Export `module` (forward takes the spec's inputs positionally, returns its outputs) to `path`.

    The module must already be in the requested precision (fp16 graphs are traced from fp16 modules, so
    the precision is in the graph, as TensorRT 11's strongly typed builds require). The file appears at
    `path` only when export and check succeeded (written in a temporary directory, then moved).
    """
    start = time.perf_counter()
    spec = spec.with_dtype(precision)
    device = next(module.parameters()).device
    inputs = example_inputs(spec, spec.batch.opt, *example_size, torch.Generator().manual_seed(0))
    args = tuple(inputs[name].to(device) for name in spec.input_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        raw = Path(tmp) / path.name
        with torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings flag Python branches on shapes; the ones in diffusers/transformers are constant
            # for the sizes the specs allow (multiples of 64, 77 tokens), which the parity tests check.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        _finalize(raw, path, external_threshold)
    onnx.checker.check_model(str(path))
    return ExportedGraph(spec.name, path, precision, time.perf_counter() - start, graph_bytes(path))


def _finalize(raw: Path, path: Path, external_threshold: int) -> None:
    """Move the exported graph into place, gathering its weights into one external file when large.

    The exporter may itself write one file per tensor next to a >2 GB graph; we always rewrite so a graph
    is either self-contained or has exactly one `<name>.data` file.
    """
    model = onnx.load(str(raw), load_external_data=True)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    data_name = path.name + ".data"
    for stale in (path, path.with_name(data_name)):
        stale.unlink(missing_ok=True)
    if weights > external_threshold:
        tmp_path = raw.with_name("final-" + path.name)
        onnx.save_model(
            model,
            str(tmp_path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        os.replace(tmp_path.with_name(data_name), path.with_name(data_name))
        os.replace(tmp_path, path)
    else:
        tmp_path = raw.with_name("final-" + path.name)
        onnx.save_model(model, str(tmp_path))
        os.replace(tmp_path, path)


def graph_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def onnx_checksums(path: Path) -> tuple[str, str]:
    """(structure sha256, weights sha256) of a graph.

    The structure checksum covers the graph with its weights' names, dtypes and shapes but not their values;
    the weights checksum covers the values. Two graphs that differ only by merged LoRA weights share the
    structure checksum, which is what lets a refittable engine serve both (export/cache.py).
    """
    model = onnx.load(str(path), load_external_data=False)
    base_dir = str(path.parent)
    weights = hashlib.sha256()
    for init in model.graph.initializer:
        weights.update(init.name.encode())
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            with open(os.path.join(base_dir, info["location"]), "rb") as f:
                f.seek(int(info.get("offset", 0)))
                weights.update(f.read(int(info["length"])) if "length" in info else f.read())
        else:
            weights.update(init.SerializeToString())
        init.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            init.ClearField(field)
        del init.external_data[:]
        init.data_location = onnx.TensorProto.DEFAULT
    structure = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    return structure, weights.hexdigest()


def graph_io(path: Path) -> Mapping[str, list[str]]:
    model = onnx.load(str(path), load_external_data=False)
    return {
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
    }
