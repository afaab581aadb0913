"""Export every network of a `ModelBundle` to ONNX, and optionally build TensorRT engines from them.

The layout of the export directory (manifest, tokenizer, graphs, engines/, engines.json) is
engines/export_format.py's; the graphs are text_encoder, vae_encoder, vae_decoder, unet and controlnet_<i>.

LoRA: merged into the weights at export (engines/loading.py merges them when the bundle is loaded), so the
ONNX graphs are plain SD1.5 graphs any runtime can serve. On TensorRT the engines of the networks LoRA
touches (UNet, text encoder) are built refittable: a different LoRA set or scale re-exports the ONNX (fast)
and refits the existing engine from it instead of rebuilding (export/cache.py `refit_donor`). A runtime
LoRA-scale input (StreamDiffusion's fix) would cost an extra matmul per layer per step
and a graph that depends on which layers the LoRA touches; a refit costs seconds once per change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..engines.export_format import MANIFEST, TOKENIZER_DIR, ExportManifest, source_identity
from ..engines.runtime import up_self_attention_layers
from ..engines.specs import (
    NetworkSpec,
    Precision,
    SizeRange,
    controlnet_spec,
    network_precision,
    text_encoder_spec,
    unet_spec,
    vae_decoder_spec,
    vae_encoder_spec,
)
from .graphs import ControlNetGraph, TextEncoderGraph, VaeDecoderGraph, VaeEncoderGraph
from .onnx_export import ExportedGraph, export_network

UNET_CONFIG_KEYS = (
    "block_out_channels",
    "layers_per_block",
    "up_block_types",
    "down_block_types",
    "transformer_layers_per_block",
    "in_channels",
    "out_channels",
    "cross_attention_dim",
)
# The trace runs the model once at this size (fp16 convolutions on a CPU are slow, so the smallest size that
# is a multiple of 64). Height and width are dynamic axes, so the graph serves every size of the range; the
# size-dependent Python branches of diffusers' UNet/VAE take the same way for every multiple of 64, which
# the parity tests check at sizes other than the traced one.
TRACE_SIZE = (64, 64)
# Networks whose weights a LoRA changes (engines/lora.py apply_lora): their engines are refittable.
LORA_NETWORKS = ("unet", "text_encoder")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportPlan:
    sizes: SizeRange
    precision: Precision = "fp32"


def network_modules(bundle) -> dict[str, tuple[torch.nn.Module, NetworkSpec]]:
    """The flat-signature module and the I/O spec of every network of a bundle, in export order."""
    from ..engines.torch_backend import CrossFrameUNet

    unet_config = dict(bundle.unet.config)
    hidden = int(bundle.text_encoder.config.hidden_size)
    latent = int(unet_config.get("in_channels", 4))
    layers = up_self_attention_layers(unet_config)
    modules: dict[str, tuple[torch.nn.Module, NetworkSpec]] = {
        "text_encoder": (TextEncoderGraph(bundle.text_encoder), text_encoder_spec(hidden)),
        "vae_encoder": (VaeEncoderGraph(bundle.vae), vae_encoder_spec(latent)),
        "vae_decoder": (VaeDecoderGraph(bundle.vae), vae_decoder_spec(latent)),
        "unet": (CrossFrameUNet(bundle.unet, layers), unet_spec(unet_config, layers, hidden)),
    }
    for i, (controlnet, _scale) in enumerate(bundle.controlnets):
        name = f"controlnet_{i}"
        modules[name] = (ControlNetGraph(controlnet), controlnet_spec(name, unet_config, hidden))
    return modules


def export_bundle(
    bundle,
    out: Path,
    plan: ExportPlan,
    *,
    model: str,
    loras: tuple[tuple[str, float], ...] = (),
    controlnets: tuple[str, ...] = (),
    progress: Progress = print,
) -> tuple[ExportManifest, list[ExportedGraph]]:
    """Write the ONNX graph of every network, the tokenizer and the manifest into `out`."""
    if len(controlnets) != len(bundle.controlnets):
        raise ValueError(
            f"{len(controlnets)} ControlNet names given for {len(bundle.controlnets)} ControlNets"
        )
    out.mkdir(parents=True, exist_ok=True)
    # A previous manifest goes first: an export that fails half-way leaves no manifest, so a mix of new
    # and old graphs is never served; the new manifest is written last.
    (out / MANIFEST).unlink(missing_ok=True)
    modules = network_modules(bundle)
    exported = []
    for index, (name, (module, spec)) in enumerate(modules.items(), 1):
        precision = network_precision(name, plan.precision)
        progress(f"[{index}/{len(modules)}] exporting {name} to ONNX ({precision}) ...")
        module = module.to(torch.float16 if precision == "fp16" else torch.float32).eval()
        graph = export_network(module, spec, out / f"{name}.onnx", TRACE_SIZE, precision)
        progress(f"[{index}/{len(modules)}] {name}: {graph.seconds:.1f} s, {graph.bytes / 1e6:.1f} MB")
        exported.append(graph)
    bundle.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    unet_config = {k: _jsonable(v) for k, v in dict(bundle.unet.config).items() if k in UNET_CONFIG_KEYS}
    manifest = ExportManifest(
        model=source_identity(model),
        loras=tuple((source_identity(p), float(s)) for p, s in loras),
        controlnets=tuple(source_identity(c) for c in controlnets),
        precision=plan.precision,
        min_size=plan.sizes.min,
        opt_size=plan.sizes.opt,
        max_size=plan.sizes.max,
        unet_config=unet_config,
        hidden_size=int(bundle.text_encoder.config.hidden_size),
        scaling_factor=float(bundle.vae.config.scaling_factor),
        schedule=asdict(bundle.schedule),
        graphs={g.name: g.path.name for g in exported},
    )
    manifest.save(out)
    return manifest, exported


def _jsonable(value):
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def build_engines(
    out: Path,
    manifest: ExportManifest,
    *,
    device: torch.device,
    progress: Progress = print,
) -> dict[str, Path]:
    """Build (or load from the cache, or refit) one TensorRT engine per exported graph; update engines.json."""
    import tensorrt as trt

    from ..engines.export_format import ENGINE_DIR, EngineKey, EngineTarget, profile_tuple, record_engines
    from ..engines.tensorrt_backend import gpu_identity
    from .cache import EngineCache
    from .onnx_export import onnx_checksums
    from .tensorrt_build import BuildOptions, build_engine, refit_from_onnx, timing_cache_path

    gpu_name, capability = gpu_identity(device)
    sizes = SizeRange(manifest.min_size, manifest.opt_size, manifest.max_size)
    engine_dir = out / ENGINE_DIR
    cache = EngineCache(engine_dir)
    timing = timing_cache_path(engine_dir, gpu_name)
    paths: dict[str, Path] = {}
    specs = manifest.specs()
    for index, (name, spec) in enumerate(specs.items(), 1):
        onnx_path = out / manifest.graphs[name]
        structure, weights = onnx_checksums(onnx_path)
        refittable = name in LORA_NETWORKS
        key = EngineKey(
            network=name,
            profile=profile_tuple(spec.profile(sizes)),
            precision=network_precision(name, manifest.precision),
            trt_version=trt.__version__,
            gpu_name=gpu_name,
            compute_capability=capability,
            onnx_structure_sha256=structure,
            onnx_weights_sha256=weights,
            loras=manifest.loras if refittable else (),
            refittable=refittable,
        )
        log_path = engine_dir / f"{name}.build.log"
        start = time.perf_counter()
        progress(f"[{index}/{len(specs)}] TensorRT {name}: looking up {cache.path_for(key).name} ...")

        def build(onnx_path=onnx_path, spec=spec, refittable=refittable, log_path=log_path) -> bytes:
            options = BuildOptions(
                precision=network_precision(spec.name, manifest.precision), refittable=refittable
            )
            return build_engine(onnx_path, spec, sizes, options, log_path, timing).engine

        def refit(donor: Path, onnx_path=onnx_path, log_path=log_path) -> bytes:
            return refit_from_onnx(donor.read_bytes(), onnx_path, log_path)

        result = cache.get_or_build(key, build, refit=refit)
        how = "refitted" if result.refitted_from else ("built" if result.built else "cached")
        progress(f"[{index}/{len(specs)}] TensorRT {name}: {how} in {time.perf_counter() - start:.1f} s")
        paths[name] = result.path
    record_engines(out, EngineTarget(trt.__version__, gpu_name, capability), paths)
    return paths
