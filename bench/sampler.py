"""Cost of one constrained keyframe vs diffusers' plain ControlNet img2img, and evaluations per keyframe.

    python bench/sampler.py [--size 256] [--steps 10] [--strength 0.75] [--modes pass1,branch-x0]
                            [--threads N] [--skip-full]

1. UNet+ControlNet image-evaluations per keyframe at S = 20 (a CFG batch of 2 counts 2; the official code
   spends 80): counted by the sampler itself on the tiny test model (counts do not depend on the width of
   the network), for each direct-image mode (`SamplerSettings.direct_image`: "pass1" finishes pass 1 from
   the point where it branches off pass 2, "branch-x0" uses the x̂0 of the last shared step).
2. The full SD1.5 architecture with random weights (shipped configs, no download) at `--size`: seconds for
   diffusers' `StableDiffusionControlNetImg2ImgPipeline` + DDIM and for one constrained keyframe (flow,
   both passes, fidelity encoding, all constraints at their defaults) for the same steps and strength, as a
   ratio measured side by side in one run (plain and constrained runs interleaved `--repeat` times; the
   fastest of each is used). The output difference of each mode against "pass1" (the authors' result) is
   printed (mean |Δ| in 0..255 and PSNR).

Nothing is asserted; numbers depend on the machine and its load (the project's machine is shared).

glibc's malloc moves its mmap threshold as large blocks are freed, so without `--malloc default` the
bench fixes it first (`mallopt`: mmap threshold 32 MiB, no trimming): otherwise whichever pipeline runs
after some large free gets ~25% faster (measured: diffusers' img2img 42.2 s, then 31.5 s in the next
round), and the ratio depends on the order of the runs.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _frames(size: int) -> tuple[np.ndarray, np.ndarray]:
    """An anchor and a keyframe 6 px to the right of it (a band of pixels both warps miss)."""
    import cv2

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((size, size + 6, 3)) * 255).astype(np.uint8), (0, 0), 2.5)
    cv2.circle(base, (size // 2, size // 2), size // 5, (230, 120, 40), -1)
    return np.ascontiguousarray(base[:, 6:]), np.ascontiguousarray(base[:, :-6])


def _canny(frame: np.ndarray) -> np.ndarray:
    from rerender.engines.control import Canny

    return Canny()(frame, 0)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float()


def _guide(anchor_frame, frame, anchor_image):
    from rerender.engines.flow import DISFlow, occlusion
    from rerender.filter.sampler.keyframe import FlowGuide

    dis = DISFlow()
    backward, forward = dis.estimate(frame, anchor_frame), dis.estimate(anchor_frame, frame)
    flow = torch.from_numpy(backward).permute(2, 0, 1)[None]
    occ = torch.from_numpy(occlusion(backward, forward).astype(np.float32))[None, None]
    # The first keyframe after the anchor: the previous keyframe is the anchor (flow computed once).
    return FlowGuide(flow, occ, flow, occ, anchor_image, anchor_image)


def _pass_one_share(guide) -> float:
    """The largest weight the direct image has in the masked fusion target (bm_0·bm_pre where Mp keeps the
    target), so what a cheaper direct image can change in pass 2's target at most, pixel for pixel."""
    import torch.nn.functional as F
    from rerender.filter.sampler import fusion

    direct = fusion.soft_mask(guide.occluded_anchor) * fusion.soft_mask(guide.occluded_previous)
    mask = fusion.pixel_fusion_mask(guide.occluded_previous, guide.occluded_anchor)
    kept = F.interpolate(mask, scale_factor=fusion.LATENT_FACTOR, mode="nearest")
    return float((direct * kept).max())


def _cond(networks, frame):
    from rerender.filter.sampler.keyframe import Conditioning, encode_image, encode_text

    text = encode_text(networks, "a cat, best quality, extremely detailed", "lowres, worst quality")
    return Conditioning(
        text, (_tensor(_canny(frame)) / 255.0,), encode_image(networks, _tensor(frame) / 127.5 - 1)
    )


def evaluations_table(modes: list[str], strength: float) -> None:
    import tiny_models
    from rerender.engines.loading import ModelBundle
    from rerender.engines.runtime import ScheduleConfig
    from rerender.engines.tokenizer import clip_tokenizer
    from rerender.engines.torch_backend import torch_networks
    from rerender.filter.sampler.keyframe import AnchorState, SamplerSettings, render_anchor, render_keyframe

    c = tiny_models.build_components()
    bundle = ModelBundle(
        clip_tokenizer(), c.text_encoder, c.unet, c.vae, ScheduleConfig(), ((c.controlnet, 0.7),), "t"
    )
    networks = torch_networks(bundle, "cpu", torch.float32)
    anchor_frame, frame = _frames(64)
    print(
        f"\n1. evaluations per keyframe, S = 20, strength {strength} (official code: 80 per keyframe, 40 anchor)"
    )
    print("| direct image | anchor | keyframe (shared prefix + pass 1 + pass 2) |\n|---|---|---|")
    for mode in modes:
        settings = SamplerSettings(steps=20, strength=strength, direct_image=mode)
        state = AnchorState()
        anchor = render_anchor(networks, settings, _cond(networks, anchor_frame), state, 0)
        guide = _guide(anchor_frame, frame, anchor.image)
        key = render_keyframe(networks, settings, _cond(networks, frame), state, guide, 0)
        print(f"| {mode} | {anchor.evaluations} | {key.evaluations} |")


def _full_bundle():
    """SD1.5 UNet, VAE, CLIP text encoder and ControlNet from the shipped configs, random weights."""
    import json

    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from rerender.engines.loading import CONTROLNET_CONFIGS, SD15_CONFIGS, ModelBundle
    from rerender.engines.runtime import ScheduleConfig
    from rerender.engines.tokenizer import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    def config(path: Path) -> dict:
        return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config(SD15_CONFIGS / "unet" / "config.json")).eval()
    vae = AutoencoderKL(**config(SD15_CONFIGS / "vae" / "config.json")).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(SD15_CONFIGS / "text_encoder"))).eval()
    controlnet = ControlNetModel(**config(CONTROLNET_CONFIGS / "config.json")).eval()
    with torch.no_grad():  # random init leaves the zero convolutions at zero; let the hint matter
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(0.0, 0.02)
    return ModelBundle(
        clip_tokenizer(), text_encoder, unet, vae, ScheduleConfig(), ((controlnet, 0.7),), "random"
    )


def full_size(size: int, steps: int, strength: float, modes: list[str], repeat: int) -> None:
    from diffusers import DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0
    from PIL import Image
    from rerender.engines.torch_backend import torch_networks
    from rerender.filter.sampler.keyframe import AnchorState, SamplerSettings, render_anchor, render_keyframe

    t0 = time.perf_counter()
    bundle = _full_bundle()
    print(f"\n2. full SD1.5 architecture, random weights, {size}x{size}, {steps} steps, strength {strength}")
    print(f"   (built in {time.perf_counter() - t0:.0f} s)")
    anchor_frame, frame = _frames(size)
    controlnet, scale = bundle.controlnets[0]
    scheduler_config = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=bundle.vae,
        text_encoder=bundle.text_encoder,
        tokenizer=bundle.tokenizer,
        unet=bundle.unet,
        controlnet=controlnet,
        scheduler=DDIMScheduler(**scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    plain_evaluations = [0]  # UNet image-evaluations of diffusers' pipeline, counted by a forward pre-hook

    def count(_module, args, kwargs) -> None:
        plain_evaluations[0] += (args[0] if args else kwargs["sample"]).shape[0]

    def plain() -> float:
        plain_evaluations[0] = 0
        hook = bundle.unet.register_forward_pre_hook(count, with_kwargs=True)
        start = time.perf_counter()
        pipe(
            prompt="a cat, best quality, extremely detailed",
            negative_prompt="lowres, worst quality",
            image=Image.fromarray(frame),
            control_image=Image.fromarray(_canny(frame)),
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=7.5,
            controlnet_conditioning_scale=scale,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        seconds = time.perf_counter() - start
        hook.remove()
        return seconds

    networks = torch_networks(bundle, "cpu", torch.float32)  # installs the cross-frame processors
    cross_frame = dict(bundle.unet.attn_processors)
    state = AnchorState()
    start = time.perf_counter()
    anchor_cond = _cond(networks, anchor_frame)
    anchor = render_anchor(networks, SamplerSettings(steps=steps, strength=strength), anchor_cond, state, 0)
    anchor_time = time.perf_counter() - start
    plain_times: list[float] = []
    results: dict[str, tuple[float, object]] = {}
    runs: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeat):  # interleaved, so a change of machine load hits both sides
        bundle.unet.set_attn_processor(AttnProcessor2_0())  # the stock processors for diffusers' pipeline
        plain_times.append(plain())
        bundle.unet.set_attn_processor(dict(cross_frame))  # diffusers consumes the dict it is given
        for mode in modes:
            settings = SamplerSettings(steps=steps, strength=strength, direct_image=mode)
            start = time.perf_counter()
            guide = _guide(anchor_frame, frame, anchor.image)
            key = render_keyframe(networks, settings, _cond(networks, frame), copy.deepcopy(state), guide, 0)
            seconds = time.perf_counter() - start
            runs[mode].append(seconds)
            if mode not in results or seconds < results[mode][0]:
                results[mode] = (seconds, key)
    base = min(plain_times)
    print(f"   the direct image's largest weight in the fused target x_trg·Mp: {_pass_one_share(guide):.3f}")
    print(
        f"   plain ControlNet img2img: {base:.1f} s, {plain_evaluations[0]} evaluations "
        f"(runs: {', '.join(f'{t:.1f}' for t in plain_times)})"
    )
    for mode in modes:
        print(f"   keyframe, direct image {mode}: runs {', '.join(f'{t:.1f}' for t in runs[mode])} s")
    print(f"   anchor (one pass, records states): {anchor_time:.1f} s = {anchor_time / base:.2f}x plain")
    print("| direct image | evaluations | seconds | ratio to plain | mean abs diff vs pass1 | PSNR dB |")
    print("|---|---|---|---|---|---|")
    reference = results[modes[0]][1].image
    for mode in modes:
        seconds, key = results[mode]
        diff = ((key.image - reference).abs() * 127.5).mean().item()
        mse = (((key.image - reference) * 127.5) ** 2).mean().item()
        psnr = "inf" if mse == 0 else f"{10 * math.log10(255**2 / mse):.1f}"
        print(f"| {mode} | {key.evaluations} | {seconds:.1f} | {seconds / base:.2f} | {diff:.2f} | {psnr} |")


def fix_malloc_thresholds() -> str:
    """Stop glibc from moving its mmap/trim thresholds during the run (see the module doc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return "left as they are (not glibc)"
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 1 << 30)
    ok = ok and mallopt(m_top_pad, 256 << 20)
    return "mmap 32 MiB, trim 1 GiB, top pad 256 MiB" if ok else "mallopt refused; left as they are"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument(
        "--modes",
        default="pass1,branch-x0",
        help="direct-image modes; the first is the reference for the diffs",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--repeat", type=int, default=2, help="interleaved plain/constrained rounds (best kept)"
    )
    parser.add_argument("--skip-full", action="store_true", help="only the evaluation counts (tiny model)")
    parser.add_argument(
        "--malloc",
        choices=["fixed", "default"],
        default="fixed",
        help="fix glibc's malloc thresholds first (fixed) or leave them adaptive (default)",
    )
    args = parser.parse_args()
    if args.malloc == "fixed":
        print(f"malloc thresholds: {fix_malloc_thresholds()}")
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = list(dict.fromkeys(m.strip() for m in args.modes.split(",")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    evaluations_table(modes, args.strength)
    if not args.skip_full:
        full_size(args.size, args.steps, args.strength, modes, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
