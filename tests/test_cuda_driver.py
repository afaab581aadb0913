"""CI run of the CUDA backend's logic without a GPU: the kernels of native/cuda/synth_kernels.cu, compiled as
host code, sequenced by the kernel executor exactly as on a device (same launches, buffers, ping-pong and masks),
under the one search-vote schedule (native/csrc/synth_driver.h) that the CPU executor also runs.

Compared with the CPU backend frame for frame along a propagation chain (each frame starting from the last
frame's NNF): NNF, image and error map must be equal, bit for bit. They can be: both executors evaluate the same
per-pixel functions (synth_core.h) compiled by the same compiler, every pass is a Jacobi step, the occupancy is
kept in exact integers, and the CPU's incremental votes and errors reproduce full recomputation exactly. (On a
GPU, nvcc's float contraction may change the last bits of a patch error; the gpu-marked tests allow for that.)"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rerender.native import Guide, SynthParams
from rerender.native.synthesize import _prepare, _synthesize_cpu


def textured(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.random((h, w, channels)) * 255).astype(np.float32), (0, 0), 1.5)
    img = img.reshape(h, w, channels)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.round().astype(np.uint8)


def chain(style_channels: int, h: int, w: int, frames: int):
    """A keyframe and `frames` targets that drift by one pixel a frame (a tiny propagation chain)."""
    base = textured(h + frames + 8, w + frames + 8, 3, seed=5)
    key = base[:h, :w]
    style = textured(h, w, style_channels, seed=6)
    targets = [base[i + 1 : i + 1 + h, i + 1 : i + 1 + w] for i in range(frames)]
    return style, key, targets


CASES = {
    "paper-like": SynthParams(search_vote_iters=4, patchmatch_iters=3),
    "fast": SynthParams(pyramid_levels=2, search_vote_iters=4, patchmatch_iters=2),
    "weighted+3x3": SynthParams(
        search_vote_iters=3, patchmatch_iters=2, vote="weighted", extra_pass_3x3=True
    ),
    "no-uniformity": SynthParams(search_vote_iters=3, patchmatch_iters=4, uniformity=0.0, stop_threshold=0),
    "patch7-seed": SynthParams(patch_size=7, search_vote_iters=2, patchmatch_iters=2, seed=12345),
    "no-iterations": SynthParams(search_vote_iters=0, patchmatch_iters=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("style_channels, h, w", [(3, 53, 67), (1, 40, 40)])
def test_kernel_schedule_on_the_host_equals_the_cpu_backend_frame_for_frame(case, style_channels, h, w):
    params = CASES[case]
    style, key, targets = chain(style_channels, h, w, frames=3)
    nnf = {"cpu": None, "kernels-host": None}
    for i, target in enumerate(targets):
        guides = [Guide(key, target, 2.0), Guide(style[..., :1], target[..., :1], 0.5)]
        out = {}
        for executor in ("cpu", "kernels-host"):
            args = _prepare(style, guides, params, nnf[executor])
            image, error, n, _ = _synthesize_cpu(*args, executor=executor)
            out[executor] = (image, error, n)
            nnf[executor] = n
        (ci, ce, cn), (ki, ke, kn) = out["cpu"], out["kernels-host"]
        assert (cn == kn).all(), f"{case} frame {i}: NNFs differ at {(cn != kn).any(-1).sum()} pixels"
        assert (ci == ki).all(), f"{case} frame {i}: images differ at {(ci != ki).any(-1).sum()} pixels"
        assert (ce == ke).all(), f"{case} frame {i}: error maps differ"


@pytest.mark.parametrize("case", ["paper-like", "weighted+3x3", "fast"])
def test_kept_pixels_are_the_same_on_both_executors(case):
    # synthesis.md §11: the kept region (here a block, so coarse levels keep part of it too) is decided
    # per level by the shared per-pixel rule and re-activated by the stop-threshold mask alike.
    params = CASES[case]
    style, key, targets = chain(3, 61, 72, frames=3)
    h, w = targets[0].shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    start = np.dstack([np.clip(xs + 1, 0, w - 1), np.clip(ys + 1, 0, h - 1)]).astype(np.int32)
    keep = np.zeros((h, w), bool)
    keep[5:50, 3:41] = True
    nnf = {"cpu": start, "kernels-host": start}
    for i, target in enumerate(targets):
        guides = [Guide(key, target, 2.0)]
        out = {}
        for executor in ("cpu", "kernels-host"):
            image, error, n, _ = _synthesize_cpu(
                *_prepare(style, guides, params, nnf[executor], keep), executor=executor
            )
            out[executor] = (image, error, n)
            nnf[executor] = n
        (ci, ce, cn), (ki, ke, kn) = out["cpu"], out["kernels-host"]
        assert (cn == kn).all(), f"{case} frame {i}: NNFs differ at {(cn != kn).any(-1).sum()} pixels"
        assert (ci == ki).all() and (ce == ke).all(), f"{case} frame {i}"


def test_host_kernels_follow_the_seed_and_the_init_nnf():
    # Not a tautology of the equality test: the host kernels must react to the inputs the schedule passes on.
    style, key, targets = chain(3, 48, 48, frames=1)
    guides = [Guide(key, targets[0], 2.0)]
    params = SynthParams(search_vote_iters=1, patchmatch_iters=1)
    a = _synthesize_cpu(*_prepare(style, guides, params, None), executor="kernels-host")
    b = _synthesize_cpu(*_prepare(style, guides, SynthParams(search_vote_iters=1, patchmatch_iters=1, seed=9),
                                  None), executor="kernels-host")  # fmt: skip
    assert (a[2] != b[2]).any()
    init = np.zeros((48, 48, 2), np.int32) + 20
    c = _synthesize_cpu(
        *_prepare(style, guides, SynthParams(pyramid_levels=1, search_vote_iters=0), init),
        executor="kernels-host",
    )
    assert (c[2] == 20).all()  # with no iterations the (clamped) initial NNF is the result


# --- the CUDA entry points: errors here, behaviour on a GPU -------------------------------------------------


@pytest.mark.parametrize(
    "device, index", [("cuda:0", 0), ("cuda:3", 3), (2, 2)]
)  # None/"cuda" ask torch for its current device (GPU tests)
def test_device_names_resolve_to_indices(device, index):
    from rerender.native.cuda_backend import resolve_device

    assert resolve_device(device) == index


@pytest.mark.parametrize("device", ["cpu", "cuda:-1", "cuda:x", "gpu0", -1, True, 1.5])
def test_bad_device_names_are_refused_with_a_sentence(device):
    from rerender.native.cuda_backend import resolve_device

    with pytest.raises(ValueError, match="cuda|CUDA"):
        resolve_device(device)


def test_without_a_cuda_driver_the_module_says_so():
    import ctypes.util

    from rerender.native import _synth

    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("a CUDA driver is installed here")
    except OSError:
        pass
    with pytest.raises(RuntimeError, match="libcuda.so.1 cannot be loaded"):
        _synth.cuda_devices()
    with pytest.raises(RuntimeError, match="libcuda.so.1 cannot be loaded"):
        _synth.CudaSynth(0, b"not a module")


@pytest.mark.gpu
def test_cuda_chains_have_their_own_streams_and_reuse_their_buffers():
    import threading

    from rerender.native import synthesize

    style, key, targets = chain(3, 96, 128, frames=3)
    params = SynthParams(search_vote_iters=3, patchmatch_iters=2)
    results: dict[str, list] = {}

    def run_chain(name):
        results[name] = [synthesize(style, [Guide(key, t, 2.0)], params, backend="cuda") for t in targets]

    threads = [threading.Thread(target=run_chain, args=(n,)) for n in ("forward", "backward")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fwd, bwd = results["forward"], results["backward"]
    assert fwd[0].stats["stream"] != bwd[0].stats["stream"]  # one stream per chain, no shared lock
    assert len({r.stats["stream"] for r in fwd}) == 1  # the chain keeps its stream ...
    assert len({r.stats["pooled_bytes"] for r in fwd}) == 1  # ... and its buffers, frame after frame
    for a, b in zip(fwd, bwd, strict=True):  # deterministic: same inputs, same result, whatever ran beside
        assert (a.nnf == b.nnf).all() and (a.image == b.image).all()


@pytest.mark.gpu
def test_cuda_device_out_of_range_is_a_sentence():
    from rerender.native import synthesize

    style, key, targets = chain(3, 32, 32, frames=1)
    with pytest.raises(ValueError, match="does not exist"):
        synthesize(style, [Guide(key, targets[0])], SynthParams(), backend="cuda", device="cuda:99")
