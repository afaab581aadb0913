"""Steps 5 and 6 of bench/gpu_check.py: random-weight models exported to TensorRT fp16 engines, their UNet
step compared with torch fp16 and a keyframe's network work timed with each."""

from __future__ import annotations

import time

from gpu_check_context import Context

KEYFRAME_STEPS = 20


def tiny_bundle():
    """The random-weight tiny test model (tests/tiny_models.py), as bench/backends.py builds it."""
    from backends import _bundle, _tiny_configs

    return _bundle(*_tiny_configs())


def sd15_reduced_bundle():
    """SD1.5's structure with a fifth of its channels, random weights (bench/backends.py's reduced model)."""
    from backends import _bundle, _reduced_configs

    return _bundle(*_reduced_configs())


def keyframe_seconds(networks, steps: int, inputs) -> float:
    """One keyframe's network work: `steps` ControlNet + UNet evaluations at batch 2 (CFG), then a decode."""
    import torch

    sample, timestep, embeddings, hint, refs, scale = inputs
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        control = networks.controlnets[0][0](sample, timestep, embeddings, hint, scale)
        networks.unet(sample, timestep, embeddings, control, refs)
    networks.vae_decoder(sample[:1])
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def tensorrt_check(ctx: Context, make_bundle, size: tuple[int, int], name: str) -> dict:
    import torch
    from rerender.engines.runtime import ReferenceStates, cross_frame_mask
    from rerender.engines.specs import SizeRange
    from rerender.engines.tensorrt_backend import load_tensorrt_networks
    from rerender.engines.torch_backend import torch_networks
    from rerender.export.bundle import ExportPlan, build_engines, export_bundle

    device = torch.device(ctx.device)
    root = ctx.scratch / name
    bundle = make_bundle()
    t0 = time.perf_counter()
    manifest, _ = export_bundle(
        bundle, root / "export", ExportPlan(SizeRange(size, size, size), "fp16"), model=f"random-{name}",
        controlnets=("random-controlnet",), progress=lambda _: None,
    )  # fmt: skip
    build_engines(root / "export", manifest, device=device, progress=lambda _: None)
    build_s = time.perf_counter() - t0
    trt, session = load_tensorrt_networks(root / "export", (0.7,), device)
    ref = torch_networks(make_bundle(), device, torch.float16)  # the same seed: the same weights
    try:
        g = torch.Generator().manual_seed(0)
        h, w = size[0] // 8, size[1] // 8
        width = bundle.unet.config.cross_attention_dim
        layers = ref.unet.layers
        inputs = (
            torch.randn(2, 4, h, w, generator=g).half().to(device),
            torch.tensor([501, 501], device=device),
            torch.randn(2, 77, width, generator=g).half().to(device),
            torch.rand(2, 3, *size, generator=g).half().to(device),
            ReferenceStates(
                tuple(torch.randn(2, 2 * la.tokens(h, w), la.channels, generator=g).half().to(device)
                      for la in layers),
                cross_frame_mask(layers, "loose").to(device),
            ),
            torch.tensor([0.7], device=device),
        )  # fmt: skip

        def once(networks):
            sample, timestep, embeddings, hint, refs, scale = inputs
            control = networks.controlnets[0][0](sample, timestep, embeddings, hint, scale)
            noise, _ = networks.unet(sample, timestep, embeddings, control, refs)
            return noise.float().clone()

        want, got = once(ref), once(trt)
        torch.cuda.synchronize()
        scale = float(want.abs().max().clamp_min(1e-6))
        out = {
            "size": list(size),
            "export_and_build_seconds": build_s,
            "unet_max_abs_diff": float((got - want).abs().max()),
            "unet_max_rel_diff": float((got - want).abs().max()) / scale,
        }
        keyframe_seconds(ref, 2, inputs)  # warm-up
        keyframe_seconds(trt, 2, inputs)
        out["keyframe_seconds_torch_fp16"] = keyframe_seconds(ref, KEYFRAME_STEPS, inputs)
        out["keyframe_seconds_tensorrt_fp16"] = keyframe_seconds(trt, KEYFRAME_STEPS, inputs)
    finally:
        session.unload()
    # fp16 engines against fp16 torch: kernels differ in accumulation order, not in the function computed.
    if out["unet_max_rel_diff"] > 0.02:
        raise RuntimeError(f"TensorRT and torch disagree beyond 2% of the output range: {out}")
    return out


def tensorrt_plan(ctx: Context, make_bundle, size: tuple[int, int], name: str) -> dict:
    import importlib.util

    bundle = make_bundle()  # built here too: the dry run proves the model can be made
    return {
        "size": list(size),
        "unet_parameters": sum(p.numel() for p in bundle.unet.parameters()),
        "controlnet_parameters": sum(p.numel() for m, _ in bundle.controlnets for p in m.parameters()),
        "tensorrt_installed": importlib.util.find_spec("tensorrt") is not None,
        "would": f"export fp16 ONNX, build engines, compare one ControlNet+UNet step with torch fp16, time "
        f"{KEYFRAME_STEPS} ControlNet+UNet steps and a decode with each",
    }
