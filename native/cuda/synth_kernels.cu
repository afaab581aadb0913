// CUDA kernels of guided patch synthesis: one thread per target (or source) pixel, the per-pixel logic shared
// with the CPU backend through synth_core.h. They are sequenced by the one search-vote schedule
// (native/csrc/synth_driver.h) through the kernel executor (native/csrc/synth_kernels_exec.cpp).
//
// Compiled twice from this file: by nvcc at run time for the device (native/cuda_backend.py; include dir:
// native/csrc), and as host code inside the Python extension (kernel_host_shim.h maps the CUDA built-ins),
// so CI runs the same kernels, in the same order, without a GPU.
#include "synth_core.h"

#ifdef __CUDACC__
#define RR_KERNELS_BEGIN extern "C" {
#define RR_KERNELS_END }
#else
#define RR_KERNELS_BEGIN namespace rr_kernels {
#define RR_KERNELS_END }
#endif

using rr::Match;
using rr::SynthView;

__device__ __forceinline__ SynthView make_view(const float* src, const float* tgt, const float* occ, int sw, int sh,
                                               int tw, int th, int np, int p, float occ_scale) {
    SynthView v;
    v.src = src;
    v.tgt = tgt;
    v.occ = occ;
    v.sw = sw;
    v.sh = sh;
    v.tw = tw;
    v.th = th;
    v.np = np;
    v.p = p;
    v.r = p / 2;
    v.occ_scale = occ_scale;
    return v;
}

#define PIXEL_XY(W, H)                                   \
    const int x = blockIdx.x * blockDim.x + threadIdx.x; \
    const int y = blockIdx.y * blockDim.y + threadIdx.y; \
    if (x >= (W) || y >= (H)) return;                    \
    const size_t i = (size_t)y * (W) + x;

__device__ __forceinline__ void store(int* nnf_out, float* err_out, size_t i, const Match& m) {
    nnf_out[2 * i] = m.x;
    nnf_out[2 * i + 1] = m.y;
    err_out[i] = m.err;
}

__device__ __forceinline__ void keep(const int* nnf_in, const float* err_in, int* nnf_out, float* err_out, size_t i) {
    nnf_out[2 * i] = nnf_in[2 * i];
    nnf_out[2 * i + 1] = nnf_in[2 * i + 1];
    err_out[i] = err_in[i];
}

RR_KERNELS_BEGIN

// Random NNF of the coarsest level (synthesis.md §3 step 1), same hash stream as the CPU backend.
__global__ void random_nnf(int* nnf, int tw, int th, int sw, int sh, int r, unsigned int seed) {
    PIXEL_XY(tw, th)
    const unsigned int h = rr::pixel_stream(seed, 0xFFFFFFFFu, x, y);
    nnf[2 * i] = r + (int)(h % (unsigned int)(sw - 2 * r));
    nnf[2 * i + 1] = r + (int)(rr::hash32(h) % (unsigned int)(sh - 2 * r));
}

// NNF upsampling (synthesis.md §3 step 1): the child takes its parent's match x2 plus its own parity, clamped.
__global__ void upsample_nnf(const int* parent, int pw, int ph, int* nnf, int tw, int th, int sw, int sh, int r) {
    PIXEL_XY(tw, th)
    const int px = min(x / 2, pw - 1), py = min(y / 2, ph - 1);
    const size_t j = (size_t)py * pw + px;
    nnf[2 * i] = rr::clampi(parent[2 * j] * 2 + (x & 1), r, sw - r - 1);
    nnf[2 * i + 1] = rr::clampi(parent[2 * j + 1] * 2 + (y & 1), r, sh - r - 1);
}

__global__ void clamp_nnf(int* nnf, int tw, int th, int sw, int sh, int r) {
    PIXEL_XY(tw, th)
    nnf[2 * i] = rr::clampi(nnf[2 * i], r, sw - r - 1);
    nnf[2 * i + 1] = rr::clampi(nnf[2 * i + 1], r, sh - r - 1);
}

__global__ void patch_errors(const float* src, const float* tgt, int sw, int sh, int tw, int th, int np, int p,
                             const int* nnf, float* err) {
    PIXEL_XY(tw, th)
    const SynthView v = make_view(src, tgt, nullptr, sw, sh, tw, th, np, p, 0.0f);
    err[i] = rr::patch_error(v, x, y, nnf[2 * i], nnf[2 * i + 1], 3.0e38f);
}

// The caller's NNF, already mapped to this level, offered as one candidate (first search of a level).
__global__ void try_init(const float* src, const float* tgt, const float* occ, int sw, int sh, int tw, int th,
                         int np, int p, float occ_scale, const int* nnf_in, const float* err_in,
                         const int* init, int* nnf_out, float* err_out) {
    PIXEL_XY(tw, th)
    const SynthView v = make_view(src, tgt, occ, sw, sh, tw, th, np, p, occ_scale);
    Match best = rr::current_match(v, nnf_in, err_in, x, y);
    int evals = 0;  // counted by the CPU executor only
    rr::try_candidate(v, x, y, init[2 * i], init[2 * i + 1], best, evals);
    store(nnf_out, err_out, i, best);
}

// Jump-flood propagation step with distance k (synthesis.md §7): Jacobi, reads *_in, writes *_out.
__global__ void propagate(const float* src, const float* tgt, const float* occ, int sw, int sh, int tw, int th,
                          int np, int p, float occ_scale, const int* nnf_in, const float* err_in,
                          int* nnf_out, float* err_out, const unsigned char* active, int k) {
    PIXEL_XY(tw, th)
    if (!active[i]) {
        keep(nnf_in, err_in, nnf_out, err_out, i);
        return;
    }
    const SynthView v = make_view(src, tgt, occ, sw, sh, tw, th, np, p, occ_scale);
    int evals = 0;
    store(nnf_out, err_out, i, rr::propagate_pixel(v, nnf_in, err_in, x, y, k, evals));
}

// Random search over all radii for one pixel (the CPU backend's schedule: one pass, radii ascending).
__global__ void random_search(const float* src, const float* tgt, const float* occ, int sw, int sh, int tw,
                              int th, int np, int p, float occ_scale, const int* nnf_in, const float* err_in,
                              int* nnf_out, float* err_out, const unsigned char* active, unsigned int seed,
                              unsigned int pass) {
    PIXEL_XY(tw, th)
    if (!active[i]) {
        keep(nnf_in, err_in, nnf_out, err_out, i);
        return;
    }
    const SynthView v = make_view(src, tgt, occ, sw, sh, tw, th, np, p, occ_scale);
    const Match cur = rr::current_match(v, nnf_in, err_in, x, y);
    int evals = 0;
    store(nnf_out, err_out, i, rr::random_search_pixel(v, cur, x, y, seed, pass, evals));
}

// Kept pixels (synthesis.md §11) take the caller's match (already mapped to this level) and leave the search.
__global__ void keep_carried(const unsigned char* keep, int tw_full, int th_full, int shift, const int* init,
                             int* nnf, unsigned char* active, int tw, int th) {
    PIXEL_XY(tw, th)
    const bool kept = rr::kept_at_level(keep, tw_full, th_full, shift, x, y);
    if (kept) {
        nnf[2 * i] = init[2 * i];
        nnf[2 * i + 1] = init[2 * i + 1];
    }
    active[i] = kept ? 0 : 1;
}

__global__ void vote(const unsigned char* style, int sw, int ns, const int* nnf, const float* err, int tw, int th,
                     int r, int weighted, const float* style_scale, unsigned char* est, float* tgt, int np) {
    PIXEL_XY(tw, th)
    (void)i;
    rr::vote_pixel(style, sw, ns, nnf, err, tw, th, r, weighted != 0, style_scale, x, y, est, tgt, np);
}

__global__ void changed_mask(const unsigned char* est, const unsigned char* prev, int tw, int th, int ns,
                             int threshold, unsigned char* changed) {
    PIXEL_XY(tw, th)
    changed[i] = rr::style_changed(est, prev, ns, threshold, i) ? 1 : 0;
}

__global__ void improved_mask(const int* nnf, const int* nnf_before, const float* err, const float* err_before,
                              int tw, int th, unsigned char* out) {
    PIXEL_XY(tw, th)
    out[i] = rr::improved_significantly(nnf, nnf_before, err, err_before, i) ? 1 : 0;
}

__global__ void and_mask(unsigned char* a, const unsigned char* b, int tw, int th) {
    PIXEL_XY(tw, th)
    a[i] = a[i] && b[i];
}

// Dilation of the changed mask by the patch radius, one axis per launch (dx = 1: rows, dx = 0: columns).
__global__ void dilate(const unsigned char* in, unsigned char* out, int tw, int th, int r, int along_x) {
    PIXEL_XY(tw, th)
    unsigned char m = 0;
    for (int d = -r; d <= r && !m; ++d) {
        const int xx = along_x ? x + d : x, yy = along_x ? y : y + d;
        if (xx >= 0 && xx < tw && yy >= 0 && yy < th) m = in[(size_t)yy * tw + xx];
    }
    out[i] = m;
}

// Occupancy (synthesis.md §5): histogram of matched source positions (integer atomics: order-independent), then the
// box filter of size p applied twice, as exact integers, then converted to float for the cost lookup.
__global__ void match_histogram(const int* nnf, int tw, int th, int sw, int* hist) {
    PIXEL_XY(tw, th)
    atomicAdd(&hist[(size_t)nnf[2 * i + 1] * sw + nnf[2 * i]], 1);
}

__global__ void box_sum(const int* in, int* out, int w, int h, int r, int along_x) {
    PIXEL_XY(w, h)
    int acc = 0;
    for (int d = -r; d <= r; ++d) {
        const int xx = along_x ? x + d : x, yy = along_x ? y : y + d;
        if (xx >= 0 && xx < w && yy >= 0 && yy < h) acc += in[(size_t)yy * w + xx];
    }
    out[i] = acc;
}

__global__ void to_float(const int* in, float* out, int w, int h) {
    PIXEL_XY(w, h)
    out[i] = (float)in[i];
}

// Pyramid level: 2x2 box average with rounding of the next finer level, as pyramid.h.
__global__ void halve(const unsigned char* in, int iw, unsigned char* out, int w, int h, int c) {
    PIXEL_XY(w, h)
    for (int k = 0; k < c; ++k) {
        const size_t i00 = ((size_t)(2 * y) * iw + 2 * x) * c + k;
        const size_t i10 = i00 + c, i01 = i00 + (size_t)iw * c, i11 = i01 + c;
        const int s = in[i00] + in[i10] + in[i01] + in[i11];
        out[i * c + k] = (unsigned char)((s + 2) / 4);
    }
}

// Interleaved, weighted, padded float channels (synth_core.h SynthView): style (or zeros) then guides.
__global__ void pack(const unsigned char* style, int ns, const unsigned char* guide, int ng, int np,
                     const float* style_scale, const float* guide_scale, int w, int h, float* out) {
    PIXEL_XY(w, h)
    float* o = out + i * np;
    for (int c = 0; c < ns; ++c) o[c] = style ? style_scale[c] * (float)style[i * ns + c] : 0.0f;
    for (int g = 0; g < ng; ++g) o[ns + g] = guide_scale[g] * (float)guide[i * ng + g];
    for (int c = ns + ng; c < np; ++c) o[c] = 0.0f;
}

// The caller's finest-level NNF mapped to this level's target and source sizes.
__global__ void map_init(const int* init, int tw_full, int th_full, int sw_full, int sh_full, int* out, int tw,
                         int th, int sw, int sh, int r) {
    PIXEL_XY(tw, th)
    const int fx = min(tw_full - 1, (int)((x + 0.5) * tw_full / tw));
    const int fy = min(th_full - 1, (int)((y + 0.5) * th_full / th));
    const size_t j = (size_t)fy * tw_full + fx;
    out[2 * i] = rr::clampi((int)((init[2 * j] + 0.5) * sw / sw_full), r, sw - r - 1);
    out[2 * i + 1] = rr::clampi((int)((init[2 * j + 1] + 0.5) * sh / sh_full), r, sh - r - 1);
}

RR_KERNELS_END
