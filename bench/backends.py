"""Backends benchmark: keyframe time on torch-CPU vs onnxruntime-CPU, and ONNX export cost of full SD1.5.

    python bench/backends.py [--skip-full | --skip-keyframes] [--full-precision fp16|fp32] [--threads N]

1. The same anchor + one constrained keyframe (both passes, cross-frame attention, fusion, AdaIN, one
   ControlNet) rendered by the unchanged sampler on the torch backend and on the onnxruntime backend, for
   the tiny test model (64x64) and a reduced SD1.5-shaped model (channels /5, 256x256). Printed as seconds
   and the ratio onnxruntime/torch, measured side by side in one run (best of `--repeat`).
2. ONNX export of the full SD1.5 architecture (text encoder, VAE encoder/decoder, UNet with its cross-frame
   state I/O, one ControlNet) with random weights built from the shipped configs (no download): export
   time and file size per network.

Nothing here is asserted; numbers depend on the machine and its load (say so when quoting them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _bundle(unet_config, vae_config, text_config, controlnet_config, seed=0):
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from rerender.engines.loading import ModelBundle
    from rerender.engines.runtime import ScheduleConfig
    from rerender.engines.tokenizer import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config).eval()
    vae = AutoencoderKL(**vae_config).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    controlnet = ControlNetModel(**controlnet_config).eval()
    with torch.no_grad():
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(0.0, 0.02)
    return ModelBundle(
        clip_tokenizer(), text_encoder, unet, vae, ScheduleConfig(), ((controlnet, 0.7),), source="random"
    )


def _sd15_configs():
    import json

    from rerender.engines.loading import CONTROLNET_CONFIGS, SD15_CONFIGS

    def load(path):
        data = json.loads(Path(path).read_text())
        return {k: v for k, v in data.items() if not k.startswith("_")}

    text = load(SD15_CONFIGS / "text_encoder" / "config.json")
    text = {
        k: v for k, v in text.items() if k not in ("architectures", "torch_dtype", "transformers_version")
    }
    return (
        load(SD15_CONFIGS / "unet" / "config.json"),
        load(SD15_CONFIGS / "vae" / "config.json"),
        text,
        load(CONTROLNET_CONFIGS / "config.json"),
    )


def _reduced_configs():
    """SD1.5's structure with a fifth of its channels (64..256) and a 4-layer, 256-wide text encoder."""
    unet, vae, text, controlnet = _sd15_configs()
    channels = [64, 128, 256, 256]
    unet = {**unet, "block_out_channels": channels, "cross_attention_dim": 256}
    controlnet = {**controlnet, "block_out_channels": channels, "cross_attention_dim": 256}
    vae = {**vae, "block_out_channels": [32, 64, 128, 128]}
    text = {
        **text,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "projection_dim": 256,
    }
    return unet, vae, text, controlnet


def _tiny_configs():
    import tiny_models

    return (
        tiny_models.UNET_CONFIG,
        tiny_models.VAE_CONFIG,
        tiny_models.TEXT_ENCODER_CONFIG,
        tiny_models.CONTROLNET_CONFIG,
    )


def _keyframe(networks, size, steps):
    from rerender.filter.sampler.keyframe import (
        AnchorState,
        Conditioning,
        FlowGuide,
        SamplerSettings,
        encode_image,
        encode_text,
        render_anchor,
        render_keyframe,
    )

    h, w = size
    g = torch.Generator().manual_seed(5)
    frames = [torch.rand(1, 3, h, w, generator=g) * 2 - 1 for _ in range(2)]
    settings = SamplerSettings(steps=steps)
    text = encode_text(networks, "a watercolor painting", "blurry")
    conds = [Conditioning(text, ((f + 1) / 2,), encode_image(networks, f)) for f in frames]
    state = AnchorState()
    anchor = render_anchor(networks, settings, conds[0], state, seed=0)
    occluded = torch.zeros(1, 1, h, w)
    occluded[..., h // 3 : h // 2, w // 3 : w // 2] = 1.0
    flow = torch.full((1, 2, h, w), 1.5)
    guide = FlowGuide(flow, occluded, flow, occluded, anchor.image, anchor.image)
    start = time.perf_counter()
    key = render_keyframe(networks, settings, conds[1], state, guide, seed=0)
    return time.perf_counter() - start, key.image


def bench_keyframes(label, configs, size, steps, repeat, threads):
    from rerender.engines.onnx_backend import load_onnx_networks
    from rerender.engines.specs import SizeRange
    from rerender.engines.torch_backend import torch_networks
    from rerender.export.bundle import ExportPlan, export_bundle

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            export_bundle(
                _bundle(*configs),
                Path(tmp),
                ExportPlan(SizeRange(size, size, size)),
                model="random",
                controlnets=("random-controlnet",),
                progress=lambda _: None,
            )
            export_seconds = time.perf_counter() - start
        reference = torch_networks(_bundle(*configs), "cpu", "fp32")
        onnx = load_onnx_networks(tmp, (0.7,), "cpu", threads=threads)
        times = {"torch": [], "onnxruntime": []}
        images = {}
        with torch.no_grad():
            for _ in range(repeat):  # interleaved, so both see the same machine load
                for name, networks in (("torch", reference), ("onnxruntime", onnx)):
                    seconds, images[name] = _keyframe(networks, size, steps)
                    times[name].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    mse = (((images["torch"].clamp(-1, 1) - images["onnxruntime"].clamp(-1, 1)) / 2) ** 2).mean().item()
    psnr = float("inf") if mse == 0 else -10 * torch.log10(torch.tensor(mse)).item()
    print(
        f"{label:<8} {size[0]}x{size[1]} {steps} steps: keyframe torch-CPU {best['torch']:.3f} s, "
        f"onnxruntime-CPU {best['onnxruntime']:.3f} s, ratio ort/torch {best['onnxruntime'] / best['torch']:.2f} "
        f"(PSNR ort vs torch {psnr:.1f} dB; export {export_seconds:.1f} s; {threads} threads, best of {repeat})",
        flush=True,
    )


def bench_full_export(precision):
    from rerender.engines.specs import SizeRange
    from rerender.export.bundle import ExportPlan, export_bundle

    bundle = _bundle(*_sd15_configs())
    params = {
        "unet": sum(p.numel() for p in bundle.unet.parameters()),
        "vae": sum(p.numel() for p in bundle.vae.parameters()),
        "text_encoder": sum(p.numel() for p in bundle.text_encoder.parameters()),
        "controlnet": sum(p.numel() for p in bundle.controlnets[0][0].parameters()),
    }
    print(
        "full SD1.5 parameters: " + ", ".join(f"{k} {v / 1e6:.0f} M" for k, v in params.items()), flush=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _, graphs = export_bundle(
            bundle,
            Path(tmp),
            ExportPlan(SizeRange((256, 256), (512, 512), (768, 768)), precision),
            model="random-sd15",
            controlnets=("random-controlnet",),
            progress=lambda m: print("  " + m, flush=True),
        )
        total = time.perf_counter() - start
        for g in graphs:
            data = g.path.with_name(g.path.name + ".data")
            layout = "graph + external data" if data.exists() else "single file"
            print(f"  {g.name:<13} {g.seconds:7.1f} s  {g.bytes / 1e6:8.1f} MB  ({layout})", flush=True)
        print(
            f"full SD1.5 ONNX export ({precision}): {total:.1f} s, {sum(g.bytes for g in graphs) / 1e9:.2f} GB"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-full", action="store_true", help="skip the full SD1.5 export")
    parser.add_argument("--skip-keyframes", action="store_true", help="only the full SD1.5 export")
    parser.add_argument("--full-precision", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not args.skip_keyframes:
        bench_keyframes("tiny", _tiny_configs(), (64, 64), 10, args.repeat, args.threads)
        bench_keyframes("reduced", _reduced_configs(), (256, 256), 10, args.repeat, args.threads)
    if not args.skip_full:
        bench_full_export(args.full_precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
