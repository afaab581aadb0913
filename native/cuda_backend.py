"""CUDA backend of `synthesize`: the kernels of native/cuda/synth_kernels.cu (per-pixel logic shared with the CPU
backend through native/csrc/synth_core.h), compiled at run time with pycuda's SourceModule in the primary CUDA
context that torch also uses, and driven with the same pass schedule as native/csrc/synth_cpu.cpp.

Only imported when a CUDA device, pycuda and nvcc are present (see backends.py)."""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rerender.native.params import SynthParams

HERE = Path(__file__).resolve().parent
BLOCK = (16, 16, 1)
_LOCK = threading.Lock()  # pycuda's context stack is per thread; kernels of two propagations may interleave


@contextmanager
def _primary_context():
    """Push the device's primary context (the one torch uses), so buffers can be shared without copies."""
    import pycuda.driver as drv
    import torch

    drv.init()
    torch.cuda.init()
    ctx = drv.Device(torch.cuda.current_device()).retain_primary_context()
    ctx.push()
    try:
        yield ctx
    finally:
        drv.Context.pop()


@functools.lru_cache(maxsize=4)
def _kernels(device: int):
    """Compile synth_kernels.cu once per device (pycuda also caches the binary on disk)."""
    from pycuda.compiler import SourceModule

    del device  # the cache key: a module belongs to the context it was loaded in
    source = (HERE / "cuda" / "synth_kernels.cu").read_text()
    return SourceModule(
        source, no_extern_c=True, include_dirs=[str(HERE / "csrc")], options=["-std=c++17", "-O3"]
    )


def halve(a: np.ndarray) -> np.ndarray:
    """2x2 box average with rounding, exactly as pyramid.h's halve()."""
    h, w = a.shape[0] // 2, a.shape[1] // 2
    b = a[: 2 * h, : 2 * w].astype(np.int32)
    s = b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [image]
    for _ in range(levels - 1):
        out.insert(0, halve(out[0]))
    return out


def _grid(w: int, h: int) -> tuple[int, int, int]:
    return ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1], 1)


class _CudaSynth:
    def __init__(self, mod, style, source, target, style_w, guide_w, levels, params: SynthParams, init_nnf):
        import pycuda.gpuarray as ga

        self.ga = ga
        self.k = {name: mod.get_function(name) for name in _KERNELS}
        self.params = params
        self.levels = levels
        self.ns = style.shape[2]
        self.ng = source.shape[2]
        self.np_ = (self.ns + self.ng + 3) // 4 * 4
        self.style_scale = np.sqrt(style_w.astype(np.float32))
        self.guide_scale = np.sqrt(guide_w.astype(np.float32))
        self.style_scale_gpu = ga.to_gpu(np.ascontiguousarray(self.style_scale))
        self.styles = pyramid(style, levels)
        self.sguides = pyramid(source, levels)
        self.tguides = pyramid(target, levels)
        self.full = (style.shape[1], style.shape[0], target.shape[1], target.shape[0])
        self.init_nnf = init_nnf
        self.nnf = None

    def launch(self, name, w, h, *args):
        self.k[name](*args, block=BLOCK, grid=_grid(w, h))

    def pack(self, style, guide):
        h, w = guide.shape[:2]
        out = np.zeros((h, w, self.np_), np.float32)
        if style is not None:
            out[:, :, : self.ns] = self.style_scale * style.astype(np.float32)
        out[:, :, self.ns : self.ns + self.ng] = self.guide_scale * guide.astype(np.float32)
        return out

    def mapped_init(self, r: int) -> np.ndarray:
        """The caller's finest NNF mapped to this level's sizes (synth_cpu.cpp init_candidate)."""
        sw_full, sh_full, tw_full, th_full = self.full
        ys, xs = np.mgrid[0 : self.th, 0 : self.tw]
        fx = np.minimum(tw_full - 1, ((xs + 0.5) * tw_full / self.tw).astype(np.int64))
        fy = np.minimum(th_full - 1, ((ys + 0.5) * th_full / self.th).astype(np.int64))
        m = self.init_nnf[fy, fx]
        sx = np.clip(((m[..., 0] + 0.5) * self.sw / sw_full).astype(np.int64), r, self.sw - r - 1)
        sy = np.clip(((m[..., 1] + 0.5) * self.sh / sh_full).astype(np.int64), r, self.sh - r - 1)
        return np.ascontiguousarray(np.dstack([sx, sy]).astype(np.int32))

    def run(self):
        ga = self.ga
        p = self.params
        for level in range(self.levels):
            style, sguide, tguide = self.styles[level], self.sguides[level], self.tguides[level]
            self.sh, self.sw = style.shape[:2]
            self.th, self.tw = tguide.shape[:2]
            r = p.patch_size // 2
            self.style_gpu = ga.to_gpu(np.ascontiguousarray(style))
            self.src = ga.to_gpu(self.pack(style, sguide))
            self.tgt = ga.to_gpu(self.pack(None, tguide))
            n = self.tw * self.th
            nnf = ga.empty(2 * n, np.int32)
            if level == 0:
                if self.init_nnf is not None:
                    nnf.set(self.mapped_init(r).ravel())
                else:
                    self.launch(
                        "random_nnf",
                        self.tw,
                        self.th,
                        nnf.gpudata,
                        *self._i(self.tw, self.th, self.sw, self.sh, r),
                        np.uint32(p.seed),
                    )
            else:
                pw, ph = self.prev_size
                self.launch(
                    "upsample_nnf",
                    self.tw,
                    self.th,
                    self.nnf.gpudata,
                    *self._i(pw, ph),
                    nnf.gpudata,
                    *self._i(self.tw, self.th, self.sw, self.sh, r),
                )
            self.nnf = nnf
            self.nnf2 = ga.empty(2 * n, np.int32)
            self.err = ga.zeros(n, np.float32)
            self.err2 = ga.zeros(n, np.float32)
            self.est = ga.zeros(n * self.ns, np.uint8)
            self.prev_est = ga.zeros(n * self.ns, np.uint8)
            self.active = ga.zeros(n, np.uint8)
            self.changed = ga.zeros(n, np.uint8)
            self.solve_level(level, p.patch_size, float(p.uniformity))
            if level == self.levels - 1 and p.extra_pass_3x3:
                self.solve_level(self.levels, 3, 0.0)
            self.prev_size = (self.tw, self.th)
        image = self.est.get().reshape(self.th, self.tw, self.ns)
        error = self.err.get().reshape(self.th, self.tw)
        nnf = self.nnf.get().reshape(self.th, self.tw, 2)
        return image, error, nnf

    @staticmethod
    def _i(*values):
        return [np.int32(v) for v in values]

    def view_args(self, p, occ, occ_scale):
        occ_ptr = occ.gpudata if occ is not None else np.intp(0)
        return [
            self.src.gpudata,
            self.tgt.gpudata,
            occ_ptr,
            *self._i(self.sw, self.sh, self.tw, self.th, self.np_, p),
            np.float32(occ_scale),
        ]

    def rebuild_occupancy(self, p):
        ga = self.ga
        hist = ga.zeros(self.sw * self.sh, np.int32)
        tmp = ga.empty_like(hist)
        self.launch(
            "match_histogram",
            self.tw,
            self.th,
            self.nnf.gpudata,
            *self._i(self.tw, self.th, self.sw),
            hist.gpudata,
        )
        r = p // 2
        for along_x in (1, 1, 0, 0):
            self.launch(
                "box_sum", self.sw, self.sh, hist.gpudata, tmp.gpudata, *self._i(self.sw, self.sh, r, along_x)
            )
            hist, tmp = tmp, hist
        self.launch("to_float", self.sw, self.sh, hist.gpudata, self.occ.gpudata, *self._i(self.sw, self.sh))

    def patch_errors(self, p):
        """Recompute the error map of the current NNF from scratch (§A8: after all PatchMatch iterations)."""
        self.launch(
            "patch_errors",
            self.tw,
            self.th,
            self.src.gpudata,
            self.tgt.gpudata,
            *self._i(self.sw, self.sh, self.tw, self.th, self.np_, p),
            self.nnf.gpudata,
            self.err.gpudata,
        )

    def vote(self, p, weighted):
        self.est, self.prev_est = self.prev_est, self.est
        self.launch(
            "vote",
            self.tw,
            self.th,
            self.style_gpu.gpudata,
            *self._i(self.sw, self.ns),
            self.nnf.gpudata,
            self.err.gpudata,
            *self._i(self.tw, self.th, p // 2, int(weighted)),
            self.style_scale_gpu.gpudata,
            self.est.gpudata,
            self.tgt.gpudata,
            np.int32(self.np_),
        )

    def update_mask(self, r):
        t = self.params.stop_threshold
        self.launch(
            "changed_mask",
            self.tw,
            self.th,
            self.est.gpudata,
            self.prev_est.gpudata,
            *self._i(self.tw, self.th, self.ns, t),
            self.changed.gpudata,
        )
        rows = self.ga.empty_like(self.changed)
        self.launch(
            "dilate", self.tw, self.th, self.changed.gpudata, rows.gpudata, *self._i(self.tw, self.th, r, 1)
        )
        self.launch(
            "dilate", self.tw, self.th, rows.gpudata, self.active.gpudata, *self._i(self.tw, self.th, r, 0)
        )

    def swap(self, occ, p):
        self.nnf, self.nnf2 = self.nnf2, self.nnf
        self.err, self.err2 = self.err2, self.err
        if occ is not None:
            self.rebuild_occupancy(p)

    def solve_level(self, level, p, uniformity):
        ga = self.ga
        r = p // 2
        n = self.tw * self.th
        self.launch(
            "clamp_nnf", self.tw, self.th, self.nnf.gpudata, *self._i(self.tw, self.th, self.sw, self.sh, r)
        )
        self.active.fill(np.uint8(1))
        omega = np.float32(n) / (np.float32(self.sw) * np.float32(self.sh)) * np.float32(p) * np.float32(p)
        occ_scale = np.float32(uniformity) / (np.float32(p * p) * omega)
        self.occ = ga.zeros(self.sw * self.sh, np.float32) if uniformity > 0 else None
        occ = self.occ
        self.vote(p, False)
        sv_iters, pm_iters = self.params.search_vote_iters, self.params.patchmatch_iters
        state = lambda: [self.nnf.gpudata, self.err.gpudata, self.nnf2.gpudata, self.err2.gpudata]  # noqa: E731
        tw, th = self.tw, self.th
        for sv in range(sv_iters):
            if occ is not None:
                self.rebuild_occupancy(p)
            view = self.view_args(p, occ, occ_scale)
            self.patch_errors(p)
            if sv == 0 and self.init_nnf is not None and 0 < level < self.levels:
                init = ga.to_gpu(self.mapped_init(r).ravel())
                self.launch(
                    "try_init",
                    self.tw,
                    self.th,
                    *view,
                    self.nnf.gpudata,
                    self.err.gpudata,
                    init.gpudata,
                    self.nnf2.gpudata,
                    self.err2.gpudata,
                )
                self.swap(occ, p)
            search = self.active.copy()
            nnf_at_pm, err_at_pm = self.nnf, self.err  # replaced by copies before they are read
            for pm in range(pm_iters):
                if pm > 0:
                    # Converged neighbourhoods are not searched again (synth_core.h improved_significantly).
                    self.launch("improved_mask", tw, th, self.nnf.gpudata, nnf_at_pm.gpudata, self.err.gpudata,
                                err_at_pm.gpudata, *self._i(tw, th), self.changed.gpudata)  # fmt: skip
                    rows = ga.empty_like(self.changed)
                    self.launch("dilate", tw, th, self.changed.gpudata, rows.gpudata, *self._i(tw, th, 2, 1))
                    self.launch("dilate", tw, th, rows.gpudata, search.gpudata, *self._i(tw, th, 2, 0))
                    self.launch("and_mask", tw, th, search.gpudata, self.active.gpudata, *self._i(tw, th))
                    if int(ga.sum(search, dtype=np.int64).get()) == 0:
                        break
                nnf_at_pm, err_at_pm = self.nnf.copy(), self.err.copy()
                for k in (4, 2, 1):
                    self.launch("propagate", tw, th, *view, *state(), search.gpudata, np.int32(k))
                    self.swap(occ, p)
                pass_id = ((level * 64 + sv) * 64 + pm) * 8 + 3
                seed = np.uint32(self.params.seed)
                self.launch(
                    "random_search", tw, th, *view, *state(), search.gpudata, seed, np.uint32(pass_id)
                )
                self.swap(occ, p)
            self.vote(p, self.params.vote == "weighted")
            if sv + 1 < sv_iters:
                self.update_mask(r)
        if sv_iters == 0:
            self.patch_errors(p)


_KERNELS = (
    "random_nnf", "upsample_nnf", "clamp_nnf", "patch_errors", "try_init", "propagate", "random_search", "vote",
    "changed_mask", "dilate", "match_histogram", "box_sum", "to_float", "improved_mask", "and_mask",
)  # fmt: skip


def synthesize_cuda(style, source, target, style_w, guide_w, levels, params: SynthParams, init_nnf):
    """Same contract as the CPU binding: returns (image uint8, error float32, nnf int32)."""
    import pycuda.driver as drv
    import torch

    with _LOCK, _primary_context():
        mod = _kernels(torch.cuda.current_device())
        out = _CudaSynth(mod, style, source, target, style_w, guide_w, levels, params, init_nnf).run()
        drv.Context.synchronize()
    return out
