"""Guided patch synthesis (rerender.native): behaviour of the CPU backend on small synthetic images."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from rerender.native import Guide, SynthParams, SynthResult, available_backends, synthesize

NATIVE = Path(__file__).resolve().parents[1] / "native"
QUICK = SynthParams(search_vote_iters=4, patchmatch_iters=2)


def textured(h: int, w: int, channels: int = 3, seed: int = 0, blur: float = 1.5) -> np.ndarray:
    """Smooth random texture stretched to the full 0..255 range: every patch is distinctive."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.random((h, w, channels)) * 255).astype(np.float32), (0, 0), blur)
    img = img.reshape(h, w, channels)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.round().astype(np.uint8)


def shifted_pair(n: int = 64, dx: int = 5, dy: int = 3, channels: int = 3):
    """style = base[0:n, 0:n]; target(x, y) = style(x + dx, y + dy)."""
    base = textured(n + 16, n + 16, channels)
    return base[:n, :n].copy(), base[dy : dy + n, dx : dx + n].copy()


def shift_fraction(nnf: np.ndarray, dx: int, dy: int, margin: int) -> float:
    h, w = nnf.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    ok = (nnf[..., 0] - xs == dx) & (nnf[..., 1] - ys == dy)
    return float(ok[margin : h - margin - dy, margin : w - margin - dx].mean())


def test_shift_is_recovered():
    style, target = shifted_pair(dx=5, dy=3)
    res = synthesize(style, [Guide(style, target, 6.0)])
    assert isinstance(res, SynthResult)
    assert res.image.shape == target.shape and res.image.dtype == np.uint8
    assert res.error.shape == target.shape[:2] and res.error.dtype == np.float32
    assert res.nnf.shape == (*target.shape[:2], 2) and res.nnf.dtype == np.int32
    assert shift_fraction(res.nnf, 5, 3, margin=4) > 0.98
    interior = (slice(4, -8), slice(4, -10))
    diff = np.abs(res.image.astype(int) - target.astype(int))[interior]
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4
    assert np.median(res.error[interior]) < 1.0  # exact matches have (almost) zero patch error


def test_init_nnf_of_the_shift_is_kept_with_one_level_and_few_iterations():
    style, target = shifted_pair(dx=4, dy=2)
    h, w = target.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    init = np.dstack([np.clip(xs + 4, 0, w - 1), np.clip(ys + 2, 0, h - 1)]).astype(np.int32)
    params = SynthParams(pyramid_levels=1, search_vote_iters=1, patchmatch_iters=1)
    res = synthesize(style, [Guide(style, target, 6.0)], params, init_nnf=init)
    assert shift_fraction(res.nnf, 4, 2, margin=4) > 0.98
    random_start = synthesize(style, [Guide(style, target, 6.0)], params)
    assert res.error.mean() < random_start.error.mean()


def two_region_scene(n: int = 48):
    """Style: dark texture on the left half, bright on the right. Guide A (colour) says every target pixel
    looks like the left half; guide B says it looks like the right half."""
    tex = textured(n, n, 1, seed=3, blur=1.0).astype(int) // 8
    style = np.where(np.arange(n)[None, :, None] < n // 2, 40 + tex, 200 + tex).astype(np.uint8)
    left = (np.arange(n)[None, :] < n // 2).repeat(n, 0)
    src_a = np.where(left, 30, 220).astype(np.uint8)[:, :, None]
    src_b = np.where(left, 0, 255).astype(np.uint8)[:, :, None]
    tgt_a = np.full((n, n, 1), 30, np.uint8)
    tgt_b = np.full((n, n, 1), 255, np.uint8)
    return style, (src_a, tgt_a), (src_b, tgt_b)


@pytest.mark.parametrize(("weight_a", "weight_b", "expect_bright"), [(10.0, 1.0, False), (1.0, 10.0, True)])
def test_guide_weights_decide_which_region_is_copied(weight_a, weight_b, expect_bright):
    style, (sa, ta), (sb, tb) = two_region_scene()
    params = SynthParams(uniformity=0.0, search_vote_iters=4, patchmatch_iters=3)
    res = synthesize(style, [Guide(sa, ta, weight_a), Guide(sb, tb, weight_b)], params)
    mean = float(res.image.mean())
    assert (mean > 150) if expect_bright else (mean < 100)


def occupancy_spread(nnf: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    """(distinct source positions used, the largest number of target pixels sharing one position)."""
    flat = nnf[..., 1].astype(np.int64) * shape[1] + nnf[..., 0]
    counts = np.bincount(flat.ravel(), minlength=shape[0] * shape[1])
    return int((counts > 0).sum()), int(counts.max())


def test_uniformity_lowers_reuse_of_source_patches():
    style = textured(40, 40, 3, seed=5, blur=2.0)
    target = np.full((40, 40, 3), 128, np.uint8)  # one flat colour: every pixel wants the same flattest patch
    guides = [Guide(style, target, 6.0)]
    free = synthesize(style, guides, SynthParams(uniformity=0.0, search_vote_iters=4, patchmatch_iters=3))
    uniform = synthesize(
        style, guides, SynthParams(uniformity=3500.0, search_vote_iters=4, patchmatch_iters=3)
    )
    distinct_free, peak_free = occupancy_spread(free.nnf, style.shape[:2])
    distinct_uni, peak_uni = occupancy_spread(uniform.nnf, style.shape[:2])
    assert distinct_uni > 2 * distinct_free
    assert peak_uni < peak_free


def test_same_seed_gives_identical_results_and_another_seed_a_different_search():
    style, target = shifted_pair(n=40, dx=2, dy=1)
    other = textured(40, 40, 3, seed=9)
    guides = [Guide(style, other, 1.0), Guide(style, target, 1.0)]
    a = synthesize(style, guides, QUICK)
    b = synthesize(style, guides, QUICK)
    c = synthesize(style, guides, SynthParams(search_vote_iters=4, patchmatch_iters=2, seed=7))
    assert (
        np.array_equal(a.nnf, b.nnf) and np.array_equal(a.image, b.image) and np.array_equal(a.error, b.error)
    )
    assert not np.array_equal(a.nnf, c.nnf)


def test_thread_count_does_not_change_the_result():
    # Every pass is a Jacobi step (a pixel reads only the previous pass), so the result is not merely
    # within a bound of the 1-thread one: it is the same.
    # Large enough (> 16384 pixels) that the finest level really runs on several threads.
    style = textured(140, 130, 3, seed=1)
    target = textured(130, 150, 3, seed=2)
    guides = [Guide(style, target, 2.0)]
    one = synthesize(style, guides, SynthParams(search_vote_iters=3, patchmatch_iters=2, threads=1))
    two = synthesize(style, guides, SynthParams(search_vote_iters=3, patchmatch_iters=2, threads=2))
    four = synthesize(style, guides, SynthParams(search_vote_iters=3, patchmatch_iters=2, threads=4))
    for r in (two, four):
        assert np.array_equal(one.nnf, r.nnf) and np.array_equal(one.image, r.image)
        assert np.array_equal(one.error, r.error)  # bit for bit: a patch error is summed in one fixed order


def test_two_threads_synthesise_at_once():
    style, target = shifted_pair(n=48, dx=3, dy=2)
    guides = [Guide(style, target, 6.0)]
    sequential = [synthesize(style, guides, QUICK) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(lambda _: synthesize(style, guides, QUICK), range(2)))
    for s, p in zip(sequential, parallel, strict=True):
        assert np.array_equal(s.nnf, p.nnf)


@pytest.mark.parametrize(("h", "w"), [(11, 17), (405, 719)])
def test_odd_and_tiny_sizes(h, w):
    style = textured(h, w, 3, seed=4)
    target = np.ascontiguousarray(style[:, ::-1])  # mirrored: a real search, same size
    params = SynthParams(search_vote_iters=1, patchmatch_iters=1) if h > 100 else SynthParams()
    res = synthesize(style, [Guide(style, target, 6.0)], params)
    assert res.image.shape == (h, w, 3) and res.error.shape == (h, w)
    assert (res.nnf[..., 0] >= 2).all() and (res.nnf[..., 0] <= w - 3).all()
    assert (res.nnf[..., 1] >= 2).all() and (res.nnf[..., 1] <= h - 3).all()
    # A mirrored texture is built from the same colours: the output must be close to the target.
    assert np.abs(res.image.astype(int) - target.astype(int)).mean() < 25


def test_source_and_target_sizes_may_differ():
    big = textured(90, 120, 3, seed=6)
    style = big[10:70, 5:85].copy()  # 60 x 80
    target = big[20:55, 30:75].copy()  # 35 x 45, lies inside the style at (x+25, y+10)
    res = synthesize(style, [Guide(style, target, 6.0)], SynthParams(search_vote_iters=6, patchmatch_iters=3))
    assert res.image.shape == (35, 45, 3) and res.nnf.shape == (35, 45, 2)
    assert shift_fraction(res.nnf, 25, 10, margin=3) > 0.95


@pytest.mark.parametrize("channels", [1, 4])
def test_one_and_four_channel_styles(channels):
    style, target = shifted_pair(n=48, dx=2, dy=2, channels=channels)
    guide_src = style[:, :, :1] if channels == 4 else style
    guide_tgt = target[:, :, :1] if channels == 4 else target
    res = synthesize(style, [Guide(guide_src, guide_tgt, 6.0)])
    assert res.image.shape == (48, 48, channels)
    interior = (slice(4, -6), slice(4, -6))
    assert np.abs(res.image.astype(int) - target.astype(int))[interior].mean() < 2.0


def test_weighted_vote_and_extra_pass_run_and_stay_faithful():
    style, target = shifted_pair(n=40, dx=3, dy=1)
    params = SynthParams(vote="weighted", extra_pass_3x3=True, search_vote_iters=3, patchmatch_iters=2)
    res = synthesize(style, [Guide(style, target, 6.0)], params)
    interior = (slice(3, -6), slice(3, -6))
    assert np.abs(res.image.astype(int) - target.astype(int))[interior].mean() < 2.0


def test_stop_threshold_mask_searches_less_at_equal_quality():
    # Like a video frame: the style gently deformed (a few pixels of smooth displacement).
    style = textured(72, 80, 3, seed=13)
    ys, xs = np.mgrid[0:72, 0:80].astype(np.float32)
    target = cv2.remap(
        style,
        xs + 3 * np.sin(ys / 9),
        ys + 2 * np.cos(xs / 11),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    guides = [Guide(style, target, 6.0)]
    masked = synthesize(style, guides, SynthParams(search_vote_iters=6, patchmatch_iters=3, stop_threshold=5))
    full = synthesize(style, guides, SynthParams(search_vote_iters=6, patchmatch_iters=3, stop_threshold=0))

    # From the third search-vote iteration of each level (6 per level) on, only pixels whose estimate still
    # moves by >= 5 levels are searched...
    def late(result):
        return sum(a for i, a in enumerate(result.stats["active_pixels"]) if i % 6 >= 2)

    assert late(masked) < 0.5 * late(full)
    # ...and what is skipped does not matter for the result.
    assert float(masked.error.mean()) <= 1.1 * float(full.error.mean()) + 1.0
    assert np.abs(masked.image.astype(int) - full.image.astype(int)).mean() < 2.0


def test_kept_pixels_keep_the_callers_match_and_cost_only_their_error():
    # synthesis.md §11: kept pixels take init_nnf's match at every level and are not searched; with every
    # pixel kept and nothing to change, the work is one error evaluation per pixel and level.
    style, target = shifted_pair(n=64, dx=3, dy=2)
    h, w = target.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    init = np.dstack([np.clip(xs + 3, 2, w - 3), np.clip(ys + 2, 2, h - 3)]).astype(np.int32)
    guides = [Guide(style, target, 6.0)]
    params = SynthParams(search_vote_iters=4, patchmatch_iters=2)
    kept = synthesize(style, guides, params, init_nnf=init, keep=np.ones((h, w), bool))
    searched = synthesize(style, guides, params, init_nnf=init)
    assert np.array_equal(kept.nnf, init)
    levels = len(kept.stats["level_seconds"])
    assert kept.patch_evaluations <= sum((h >> k) * (w >> k) for k in range(levels))
    assert searched.patch_evaluations > 5 * kept.patch_evaluations
    # Half kept: the other half is searched and the kept half still holds its matches away from the seam (a
    # kept pixel is searched again only when a changed neighbour moves its estimate: the seam, and the
    # border rows whose clamped matches fit badly).
    half = np.zeros((h, w), bool)
    half[:, : w // 2] = True
    mixed = synthesize(style, guides, params, init_nnf=init, keep=half)
    inner = (slice(4, -4), slice(0, w // 2 - 8))
    assert np.array_equal(mixed.nnf[inner], init[inner])
    assert kept.patch_evaluations < mixed.patch_evaluations < searched.patch_evaluations


def test_available_backends_reports_cpu_and_a_reason_for_cuda():
    info = available_backends()
    assert info["cpu"] is None
    assert "cuda" in info and (info["cuda"] is None or info["cuda"].endswith("."))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda s, t: synthesize(s, [Guide(s, t, 1.0)], SynthParams(patch_size=7)), "larger than the images"),
        (lambda s, t: synthesize(s.astype(np.float32), [Guide(s, t, 1.0)]), "dtype uint8"),
        (lambda s, t: synthesize(np.zeros((6, 6, 9), np.uint8), [Guide(s, t, 1.0)]), "1 to 8 channels"),
        (lambda s, t: synthesize(s, []), "non-empty list"),
        (lambda s, t: synthesize(s, [Guide(s[:5], t, 1.0)]), "style's size"),
        (lambda s, t: synthesize(s, [Guide(s, t, 1.0), Guide(s, t[:5], 1.0)]), "same size"),
        (
            lambda s, t: synthesize(
                s, [Guide(np.zeros((6, 6, 25), np.uint8), np.zeros((6, 6, 25), np.uint8))]
            ),
            "at most 24",
        ),
        (lambda s, t: synthesize(s, [Guide(s, t, 1.0)], init_nnf=np.zeros((6, 6, 2), np.int64)), "int32"),
        (lambda s, t: synthesize(s, [Guide(s, t, 1.0)], init_nnf=np.full((6, 6, 2), 9, np.int32)), "outside"),
        (lambda s, t: synthesize(s, [Guide(s, t, 1.0)], backend="metal"), "'auto', 'cpu' or 'cuda'"),
        (lambda s, t: synthesize(s, [Guide(s, t, 1.0)], keep=np.ones((6, 6), bool)), "keep needs init_nnf"),
        (
            lambda s, t: synthesize(
                s,
                [Guide(s, t, 1.0)],
                init_nnf=np.full((6, 6, 2), 2, np.int32),
                keep=np.ones((6, 6), np.uint8),
            ),
            "bool array of shape",
        ),
        (lambda s, t: Guide(s, t[:, :, :1], 1.0), "same number of channels"),
        (lambda s, t: Guide(s, t, -1.0), "weight"),
        (lambda s, t: SynthParams(patch_size=4), "odd integer"),
        (lambda s, t: SynthParams(vote="median"), "'plain' or 'weighted'"),
        (lambda s, t: SynthParams(threads=0), "threads"),
    ],
)
def test_invalid_input_is_a_value_error_with_a_sentence(make, message):
    s = textured(6, 6, 3)
    t = textured(6, 6, 3, seed=1)
    with pytest.raises(ValueError, match=message):
        make(s, t)


def _native_call(**overrides):
    """The compiled module called directly, bypassing SynthParams (what a caller of _synth could do)."""
    from rerender.native import _synth

    s = textured(24, 24, 3)
    kw = dict(
        patch_size=5, levels=1, search_vote_iters=1, patchmatch_iters=1, uniformity=0.0, stop_threshold=5,
        extra_pass_3x3=False, weighted_vote=False, seed=0, threads=1,
    )  # fmt: skip
    kw.update(overrides)
    w = np.full(3, 1 / 3, np.float32)
    return _synth.synthesize(s, s, s, w, w, **kw)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"patch_size": 17}, "odd number from 3 to 15"),
        ({"patch_size": 99999}, "odd number from 3 to 15"),
        ({"patch_size": 4}, "odd number from 3 to 15"),
        ({"search_vote_iters": 65}, "0 to 64"),
        ({"patchmatch_iters": -1}, "0 to 64"),
        ({"levels": 17}, "1 to 16"),
        ({"levels": 4}, "too many pyramid levels"),
        ({"threads": 257}, "threads must be 1 to 256"),
        ({"stop_threshold": 300}, "0 to 255"),
        ({"uniformity": float("inf")}, "finite"),
        ({"executor": "gpu"}, "'cpu' or 'kernels-host'"),
    ],
)
def test_native_module_rejects_out_of_range_values_itself(overrides, message):
    with pytest.raises(ValueError, match=message):
        _native_call(**overrides)


def test_native_module_refuses_huge_thread_counts_without_crashing():
    # 100000 OpenMP threads (the image is large enough to use them) crashed the process with exit 139.
    code = (
        "import numpy as np\n"
        "from rerender.native import _synth\n"
        "s = np.zeros((160, 160, 3), np.uint8); w = np.ones(3, np.float32)\n"
        "try:\n"
        "    _synth.synthesize(s, s, s, w, w, 5, 1, 1, 1, 0.0, 5, False, False, 0, 100000)\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "refused: threads must be 1 to 256" in run.stdout


def test_synthesis_threads_end_with_the_call():
    # The synthesizer's own pool (native/csrc/thread_pool.h) instead of an OpenMP team: a finished synthesis
    # leaves no thread behind (libgomp keeps its team alive, spinning, after every parallel region), and
    # while one runs, its idle workers block in the kernel rather than spin.
    code = (
        "import os, threading, time\n"
        "import numpy as np\n"
        "from rerender.native import Guide, SynthParams, synthesize\n"
        "tasks = lambda: len(os.listdir('/proc/self/task'))\n"
        "rng = np.random.default_rng(0)\n"
        "s = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)\n"
        "before = tasks()\n"
        "res = synthesize(s, [Guide(s, s[::-1].copy(), 1.0)], SynthParams(search_vote_iters=2, "
        "patchmatch_iters=1, threads=4), backend='cpu')\n"
        "print('threads', res.stats['threads'], 'before', before, 'after', tasks())\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    words = run.stdout.split()
    assert words[1] == "4"  # the finest level ran on four threads...
    assert words[3] == words[5]  # ...and none of them outlived the call


def test_default_threads_are_the_filters_rule():
    from rerender.filter.propagation import chain_threads
    from rerender.native.params import default_threads

    cores = len(os.sched_getaffinity(0))
    assert default_threads() == cores and default_threads(2) == max(1, cores // 2)
    assert chain_threads(True) == default_threads(2) and chain_threads(False) == default_threads()
    style = textured(140, 130, 3, seed=1)
    res = synthesize(style, [Guide(style, style, 1.0)], SynthParams(search_vote_iters=1, patchmatch_iters=1))
    assert res.stats["threads"] == default_threads()


def test_native_module_refuses_images_beyond_the_size_limit():
    from rerender.native import _synth

    big = np.zeros((8193, 4, 1), np.uint8)  # one side too long; only 33 KB
    w = np.ones(1, np.float32)
    with pytest.raises(ValueError, match="8192 pixels per side"):
        _synth.synthesize(big, big, big, w, w, 3, 1, 1, 1, 0.0, 5, False, False, 0, 1)
    with pytest.raises(ValueError, match="8192 pixels per side"):
        synthesize(big, [Guide(big, big)], SynthParams(patch_size=3))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("patch_size", 17, "odd integer from 3 to 15"),
        ("search_vote_iters", 65, "from 0 to 64"),
        ("patchmatch_iters", 10**20, "from 0 to 64"),
        ("pyramid_levels", 17, "from 1 to 16"),
        ("threads", 100000, "from 1 to 256"),
        ("stop_threshold", 256, "from 0 to 255"),
    ],
)
def test_synth_params_bounds(field, value, message):
    with pytest.raises(ValueError, match=message):
        SynthParams(**{field: value})


@pytest.mark.gpu
def test_cuda_matches_cpu_on_a_shift():
    style, target = shifted_pair(n=64, dx=5, dy=3)
    guides = [Guide(style, target, 6.0)]
    cpu = synthesize(style, guides, QUICK, backend="cpu")
    gpu = synthesize(style, guides, QUICK, backend="cuda")
    assert gpu.backend == "cuda"
    assert shift_fraction(gpu.nnf, 5, 3, margin=4) > 0.98
    # Same per-pixel code and the same Jacobi schedule: only float summation order may differ.
    assert (gpu.nnf == cpu.nnf).all(axis=-1).mean() > 0.98
    assert np.abs(gpu.image.astype(int) - cpu.image.astype(int)).mean() < 0.5


@pytest.mark.gpu
def test_cuda_matches_cpu_quality_on_textures():
    style = textured(80, 96, 3, seed=11)
    target = textured(72, 88, 3, seed=12)
    guides = [Guide(style, target, 2.0)]
    cpu = synthesize(style, guides, QUICK, backend="cpu")
    gpu = synthesize(style, guides, QUICK, backend="cuda")
    assert abs(float(gpu.error.mean()) - float(cpu.error.mean())) < 0.05 * float(cpu.error.mean())


def test_cuda_probe_without_a_driver_does_not_import_torch():
    """Without libcuda (no NVIDIA driver) the CUDA backend is refused from the driver check alone: the probe
    runs before the first frame of every `--synth-backend auto` run and importing torch costs seconds."""
    import ctypes
    import subprocess
    import sys

    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("an NVIDIA driver is installed here: the probe goes on to ask torch")
    except OSError:
        pass
    code = (
        "import sys; from rerender.native.backends import cuda_unavailable_reason as r; "
        "print(r()); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    reason, imported = out.strip().splitlines()
    assert "libcuda.so.1" in reason and imported == "False"


# --- the backend is chosen once ----------------------------------------------------------------------------


def test_a_synthesizer_is_the_backend_chosen_once_and_matches_synthesize():
    from rerender.native import make_synthesizer
    from rerender.native.synthesize import CpuSynthesizer

    style, target = shifted_pair(32, dx=2, dy=1)
    guides = [Guide(style, target, 6.0)]
    synth = make_synthesizer("cpu")
    assert isinstance(synth, CpuSynthesizer) and synth.backend == "cpu"
    one = synth(style, guides, QUICK)
    two = synthesize(style, guides, QUICK, backend="cpu")
    assert one.backend == "cpu" and np.array_equal(one.image, two.image) and np.array_equal(one.nnf, two.nnf)
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        make_synthesizer("metal")
    if available_backends()["cuda"] is not None:
        with pytest.raises(ValueError, match="backend 'cuda' cannot run here"):
            make_synthesizer("cuda")  # refused when it is made, not at the first frame


CHAIN_PROBES = """
import json, sys

probes = []  # the backend probe opens the CUDA driver library with ctypes (native/backends.py)
sys.addaudithook(lambda event, args: probes.append(1) if event == "ctypes.dlopen" and "libcuda" in str(args[0]) else None)
import numpy as np
from rerender.engines.flow import FlowPair
from rerender.filter.propagation import KeySide, PropagationChain, PropagationOptions, Timings, edge_guide, propagate_gap
from rerender.native import SynthParams

rng = np.random.default_rng(0)
frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
still, visible = np.zeros((32, 32, 2), np.float32), np.zeros((32, 32), bool)
options = PropagationOptions(SynthParams(search_vote_iters=1, patchmatch_iters=1), backend="auto")
counts = {"imported": len(probes)}
chain = PropagationChain(KeySide(frames[0], frames[0]), options, Timings())
counts["chain"] = len(probes)
for frame in frames[1:4]:
    chain.step(frame, edge_guide(frame), still, visible)
counts["steps"] = len(probes)
pairs = [FlowPair(still, still, visible, visible)] * 4
propagate_gap(KeySide(frames[0], frames[0]), KeySide(frames[4], frames[4]), frames[1:4], pairs, options, Timings())
counts["gap"] = len(probes)
from rerender.native import make_synthesizer

synthesizer = make_synthesizer("auto")  # made once by a caller that propagates many gaps
counts["made"] = len(probes)
for _ in range(2):
    propagate_gap(KeySide(frames[0], frames[0]), None, frames[1:4], pairs, options, Timings(), synthesizer=synthesizer)
counts["given"] = len(probes)
counts["backend"] = chain.synthesizer.backend
print(json.dumps(counts))
"""


def test_a_propagation_chain_resolves_the_backend_when_built_never_per_frame():
    """`--synth-backend auto` probes for CUDA (the driver library, torch, nvcc) when a chain or a gap is
    built; the per-frame path calls the synthesizer it holds. Counted in a fresh process with an audit hook on
    ctypes.dlopen, the probe's first act: nothing of ours is replaced. CUDA is hidden from torch so the chain
    runs on the CPU on any machine."""
    import json
    import os

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", CHAIN_PROBES], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    one_probe = counts["chain"] - counts["imported"]
    assert one_probe >= 1 and counts["backend"] == "cpu"
    assert counts["steps"] == counts["chain"]  # three frames, no probe
    assert counts["gap"] - counts["steps"] == one_probe  # a whole gap, two chains: one probe
    assert counts["made"] - counts["gap"] == one_probe and counts["given"] == counts["made"]  # gaps given one
