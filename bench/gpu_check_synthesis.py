"""Steps 3 and 4 of bench/gpu_check.py: CUDA synthesis against the CPU's (alone and beside another stream's
work) and propagation seconds per frame with the paper and fast presets."""

from __future__ import annotations

import threading
import time

import numpy as np
from gpu_check_context import Context, log

PARITY_SIZE = (512, 960)
PROPAGATION_SIZE = 512


# --- 3. synthesis parity -----------------------------------------------------------------------------------
def parity_frames(size: tuple[int, int] = PARITY_SIZE):
    """Keyframe, its stylisation and the next frame at 512x960 with the paper's four guides."""
    import cv2
    from propagation import GUIDE_WEIGHTS, FlowStep, edge, generated_clip, positional, stylize
    from rerender.native import Guide

    h, w = size
    frames = [cv2.resize(f, (w, h)) for f in generated_clip(2, max(h, w), seed=7)]
    key, cur = frames
    style = stylize(key)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    step = FlowStep(dis, key, cur)
    pos = positional(h, w)
    guides = [
        Guide(key, cur, GUIDE_WEIGHTS["colour"]),
        Guide(edge(key), edge(cur), GUIDE_WEIGHTS["edge"]),
        Guide(style, step.warp(style), GUIDE_WEIGHTS["temporal"]),
        Guide(pos, step.warp(pos), GUIDE_WEIGHTS["positional"]),
    ]
    return style, guides, stylize(cur)


def matmul_loop(device: str, stop: threading.Event, counts: list[int]) -> None:
    """Busy work for the GPU on its own torch stream (a stand-in for the UNet), counting finished matmuls."""
    import torch

    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        a = torch.randn(4096, 4096, device=device, dtype=torch.float16)
        while not stop.is_set():
            for _ in range(8):
                a = (a @ a).clamp_(-1, 1)
            stream.synchronize()
            counts[0] += 8


def matmul_rate(device: str, seconds: float) -> float:
    stop, counts = threading.Event(), [0]
    thread = threading.Thread(target=matmul_loop, args=(device, stop, counts))
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join()
    return counts[0] / seconds


def synthesis_parity(ctx: Context) -> dict:
    from propagation import psnr
    from rerender.native import PRESETS, synthesize

    style, guides, truth = parity_frames()
    params = PRESETS["paper"]
    t0 = time.perf_counter()
    cpu = synthesize(style, guides, params, backend="cpu")
    cpu_s = time.perf_counter() - t0
    synthesize(style, guides, params, backend="cuda", device=ctx.device)  # compile + warm the pool
    t0 = time.perf_counter()
    gpu = synthesize(style, guides, params, backend="cuda", device=ctx.device)
    gpu_s = time.perf_counter() - t0
    rate_alone = matmul_rate(ctx.device, 3.0)
    stop, counts = threading.Event(), [0]
    thread = threading.Thread(target=matmul_loop, args=(ctx.device, stop, counts))
    thread.start()
    time.sleep(0.5)
    c0, t0 = counts[0], time.perf_counter()
    loaded = synthesize(style, guides, params, backend="cuda", device=ctx.device)
    loaded_s = time.perf_counter() - t0
    c1 = counts[0]
    stop.set()
    thread.join()
    out = {
        "size": list(PARITY_SIZE),
        "cpu_seconds": cpu_s,
        "cuda_seconds": gpu_s,
        "nnf_equal_fraction": float((gpu.nnf == cpu.nnf).all(-1).mean()),
        "image_mean_abs_diff": float(np.abs(gpu.image.astype(int) - cpu.image.astype(int)).mean()),
        "error_mean_ratio": float(gpu.error.mean() / max(cpu.error.mean(), 1e-9)),
        "psnr_cpu_vs_truth": psnr(cpu.image, truth),
        "psnr_cuda_vs_truth": psnr(gpu.image, truth),
        "beside_matmul": {
            "cuda_seconds": loaded_s,
            "identical_to_alone": bool((loaded.nnf == gpu.nnf).all() and (loaded.image == gpu.image).all()),
            "matmuls_per_s_alone": rate_alone,
            "matmuls_per_s_beside_synthesis": (c1 - c0) / max(loaded_s, 1e-9),
        },
    }
    # Same kernels and schedule; only nvcc's float contraction may move a patch error's last bits, which can
    # flip near-ties: the result must be as good, not bit-equal.
    problems = []
    if abs(out["psnr_cuda_vs_truth"] - out["psnr_cpu_vs_truth"]) > 0.3:
        problems.append("CUDA and CPU fidelity differ by more than 0.3 dB")
    if not 0.95 < out["error_mean_ratio"] < 1.05:
        problems.append("CUDA's mean patch error is not within 5% of the CPU's")
    if not out["beside_matmul"]["identical_to_alone"]:
        problems.append("CUDA synthesis beside another stream's work differs from synthesis alone")
    if problems:
        raise RuntimeError("; ".join(problems) + f": {out}")
    return out


def synthesis_parity_plan(ctx: Context) -> dict:
    # The same preparation at a quarter of the size (the full size only costs time on a CPU-only machine).
    style, guides, _ = parity_frames((PARITY_SIZE[0] // 4, PARITY_SIZE[1] // 4))
    return {
        "size": list(PARITY_SIZE),
        "prepared_at_quarter_size": [list(style.shape), [list(g.target.shape) for g in guides]],
        "preset": "paper",
    }


# --- 4. propagation timing ---------------------------------------------------------------------------------
def propagation_inputs(frames: int):
    import cv2
    from propagation import FlowStep, generated_clip, stylize

    clip = generated_clip(frames + 1, PROPAGATION_SIZE, seed=3)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    steps = [FlowStep(dis, clip[i - 1], clip[i]) for i in range(1, len(clip))]
    return clip, stylize(clip[0]), steps


def propagation(ctx: Context) -> dict:
    from propagation import CONFIGS, propagate

    out = {"size": PROPAGATION_SIZE}
    for name in ("paper", "fast"):
        config = CONFIGS[name]
        clip, key_style, steps = propagation_inputs(6)
        _, cuda_s, _ = propagate(clip, key_style, steps, config, None, backend="cuda")
        _, cpu_s, _ = propagate(clip[:3], key_style, steps[:2], config, None, backend="cpu")
        out[name] = {
            "cuda_s_per_frame": float(np.mean(cuda_s[1:])),  # the first frame compiles and fills the pool
            "cpu_s_per_frame": float(np.mean(cpu_s)),
            "cuda_frames": len(cuda_s) - 1,
            "cpu_frames": len(cpu_s),
        }
        log(
            f"  {name}: CUDA {out[name]['cuda_s_per_frame']:.3f} s/frame, CPU {out[name]['cpu_s_per_frame']:.2f}"
        )
    return out


def propagation_plan(ctx: Context) -> dict:
    clip, _, steps = propagation_inputs(2)
    return {"frames": len(clip), "presets": ["paper", "fast"], "flow_steps": len(steps)}
