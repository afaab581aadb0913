// Per-pixel logic of guided patch synthesis (EbSynth: Jamriška et al. 2019, after StyLit: Fišer et al. 2016), written once and compiled twice:
// by the C++ CPU backend (synth_cpu.cpp) and by nvcc for the CUDA kernels (native/cuda/synth_kernels.cu).
// Every function here reads only frozen inputs and writes only the pixel it is called for, so a pass over
// the target is a Jacobi step: its result does not depend on the order or the number of threads.
#pragma once

#include <stddef.h>

#ifdef __CUDACC__
#define RR_HD __host__ __device__ __forceinline__
#define RR_SIMD_SUM(acc)
#else
#define RR_HD inline
// Lets the compiler split the patch-row sum over vector lanes (without it, IEEE order forces a serial chain
// of adds). The per-pixel result is still a fixed function of the inputs, so determinism is unaffected.
#define RR_PRAGMA(x) _Pragma(#x)
#define RR_SIMD_SUM(acc) RR_PRAGMA(omp simd reduction(+ : acc))
#endif

namespace rr {

// Channel data are stored interleaved per pixel as float, already multiplied by sqrt(channel weight), so the
// weighted SSD of synthesis.md §4 is a plain sum of squares over p*np contiguous floats per patch row (vectorises).
// np is the channel count padded to a multiple of 4 with zero channels.
struct SynthView {
    const float* src;  // [sh][sw][np] source: style channels then source guides
    const float* tgt;  // [th][tw][np] target: current style estimate then target guides
    const float* occ;  // [sh][sw] sum of the occupancy map over the p x p patch at each source pixel, or null
    int sw, sh, tw, th;
    int np;            // padded channels per pixel
    int p, r;          // patch size and radius (p = 2r + 1)
    float occ_scale;   // lambda / (p^2 * omega*), so the uniformity cost is occ_scale * occ[s] (synthesis.md §5)
};

struct Match {
    int x, y;
    float err;   // pure patch error E (stored in the error map)
    float cost;  // err + uniformity cost (what acceptance compares)
};

RR_HD unsigned int hash32(unsigned int x) {
    // Integer finaliser with good avalanche; the random stream of a pixel is a pure function of
    // (seed, pixel, pass), which is what makes the search independent of scheduling.
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

RR_HD unsigned int pixel_stream(unsigned int seed, unsigned int pass, int x, int y) {
    return hash32(seed ^ hash32(pass * 0x9E3779B9U ^ hash32((unsigned int)x * 0x85EBCA6BU ^ (unsigned int)y)));
}

RR_HD int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

RR_HD float occ_cost(const SynthView& v, int sx, int sy) {
    return v.occ ? v.occ_scale * v.occ[sy * v.sw + sx] : 0.0f;
}

// Weighted patch SSD between the target patch at (tx, ty) and the source patch at (sx, sy) (synthesis.md §4). The source
// patch is always inside the source (matches are kept r pixels from its border); target patches that cross
// the target border read clamped coordinates. Stops after any patch row once the partial sum reaches
// `bound` and returns that partial sum (the caller only needs to know it is not below the bound).
RR_HD float patch_error(const SynthView& v, int tx, int ty, int sx, int sy, float bound) {
    const int r = v.r, np = v.np, row = v.p * np;
    float sum = 0.0f;
    const float* s = v.src + ((size_t)(sy - r) * v.sw + (sx - r)) * np;
    if (tx >= r && ty >= r && tx + r < v.tw && ty + r < v.th) {
        const float* t = v.tgt + ((size_t)(ty - r) * v.tw + (tx - r)) * np;
        for (int dy = 0; dy < v.p; ++dy) {
            float acc = 0.0f;
            RR_SIMD_SUM(acc)
            for (int i = 0; i < row; ++i) {
                const float d = t[i] - s[i];
                acc += d * d;
            }
            sum += acc;
            if (sum >= bound) return sum;
            t += (size_t)v.tw * np;
            s += (size_t)v.sw * np;
        }
        return sum;
    }
    for (int dy = -r; dy <= r; ++dy) {
        const int yy = clampi(ty + dy, 0, v.th - 1);
        float acc = 0.0f;
        for (int dx = -r; dx <= r; ++dx) {
            const float* t = v.tgt + ((size_t)yy * v.tw + clampi(tx + dx, 0, v.tw - 1)) * np;
            const float* sp = s + (size_t)(dx + r) * np;
            RR_SIMD_SUM(acc)
            for (int c = 0; c < np; ++c) {
                const float d = t[c] - sp[c];
                acc += d * d;
            }
        }
        sum += acc;
        if (sum >= bound) return sum;
        s += (size_t)v.sw * np;
    }
    return sum;
}

RR_HD bool in_valid_source(const SynthView& v, int sx, int sy) {
    return sx >= v.r && sy >= v.r && sx < v.sw - v.r && sy < v.sh - v.r;
}

// Candidate acceptance of synthesis.md §5: the new source patch wins iff E_new + lambda*occ_new < E_cur + lambda*occ_cur.
// The uniformity cost is O(1) (a precomputed map) and is evaluated *before* the SSD, so the SSD's early exit
// uses the tightest bound; candidates whose occupancy alone loses are rejected without touching pixels.
// `evals` counts the patch distances computed (the work measure of synthesis.md §9).
RR_HD bool try_candidate(const SynthView& v, int tx, int ty, int sx, int sy, Match& best, int& evals) {
    if (sx == best.x && sy == best.y) return false;
    const float oc = occ_cost(v, sx, sy);
    const float bound = best.cost - oc;
    if (bound <= 0.0f) return false;
    ++evals;
    const float e = patch_error(v, tx, ty, sx, sy, bound);
    if (e < bound) {
        best.x = sx;
        best.y = sy;
        best.err = e;
        best.cost = e + oc;
        return true;
    }
    return false;
}

RR_HD Match current_match(const SynthView& v, const int* nnf, const float* err, int tx, int ty) {
    const size_t i = (size_t)ty * v.tw + tx;
    Match m;
    m.x = nnf[2 * i];
    m.y = nnf[2 * i + 1];
    m.err = err[i];
    m.cost = m.err + occ_cost(v, m.x, m.y);
    return m;
}

// One Jacobi propagation step with jump distance k (jump flood 4-2-1): the pixel tries the
// matches of its four neighbours at distance k, shifted back by k. Reads nnf_in/err_in, returns the best.
RR_HD Match propagate_pixel(const SynthView& v, const int* nnf_in, const float* err_in, int tx, int ty, int k,
                            int& evals) {
    Match best = current_match(v, nnf_in, err_in, tx, ty);
    const int dxs[4] = {-k, k, 0, 0};
    const int dys[4] = {0, 0, -k, k};
    int tried_x[4], tried_y[4], tried = 0;
    for (int n = 0; n < 4; ++n) {
        const int nx = tx + dxs[n], ny = ty + dys[n];
        if (nx < 0 || ny < 0 || nx >= v.tw || ny >= v.th) continue;
        const size_t j = (size_t)ny * v.tw + nx;
        const int sx = nnf_in[2 * j] - dxs[n], sy = nnf_in[2 * j + 1] - dys[n];
        if (!in_valid_source(v, sx, sy)) continue;
        // Two neighbours often offer the same match: trying it again cannot change the result (it either
        // became the best or lost against a bound that has only fallen since), so it is skipped.
        bool seen = false;
        for (int m = 0; m < tried; ++m) seen = seen || (tried_x[m] == sx && tried_y[m] == sy);
        if (seen) continue;
        tried_x[tried] = sx;
        tried_y[tried] = sy;
        ++tried;
        try_candidate(v, tx, ty, sx, sy, best, evals);
    }
    return best;
}

// Random search (synthesis.md §7): one uniform sample per radius r = 1, 2, 4, ... < max(sw, sh), each in the square
// around the current best (which earlier radii may have moved), clipped to the valid source area.
RR_HD Match random_search_pixel(const SynthView& v, Match best, int tx, int ty, unsigned int seed,
                                unsigned int pass, int& evals) {
    const int maxr = v.sw > v.sh ? v.sw : v.sh;
    unsigned int h = pixel_stream(seed, pass, tx, ty);
    for (int rad = 1; rad < maxr; rad *= 2) {
        const int x0 = clampi(best.x - rad, v.r, v.sw - v.r - 1), x1 = clampi(best.x + rad, v.r, v.sw - v.r - 1);
        const int y0 = clampi(best.y - rad, v.r, v.sh - v.r - 1), y1 = clampi(best.y + rad, v.r, v.sh - v.r - 1);
        h = hash32(h + 0x68E31DA4U);
        const int sx = x0 + (int)(h % (unsigned int)(x1 - x0 + 1));
        h = hash32(h + 0xB5297A4DU);
        const int sy = y0 + (int)(h % (unsigned int)(y1 - y0 + 1));
        try_candidate(v, tx, ty, sx, sy, best, evals);
    }
    return best;
}

// Voting (synthesis.md §6): the target pixel is the mean of the source pixels that the overlapping patches predict for it.
// Plain: unweighted; weighted: each patch counts 1 / (1 + E / (p^2 * ns)). Out-of-range patches are skipped.
// Writes the rounded uint8 estimate and its weighted float copy into the target channels.
RR_HD void vote_pixel(const unsigned char* style, int sw, int ns, const int* nnf, const float* err, int tw,
                      int th, int r, bool weighted, const float* style_scale, int tx, int ty,
                      unsigned char* out_u8, float* tgt, int np) {
    float acc[8];
    for (int c = 0; c < ns; ++c) acc[c] = 0.0f;
    float wsum = 0.0f;
    const float norm = 1.0f / (float)((2 * r + 1) * (2 * r + 1) * ns);
    for (int dy = -r; dy <= r; ++dy) {
        const int qy = ty + dy;
        if (qy < 0 || qy >= th) continue;
        for (int dx = -r; dx <= r; ++dx) {
            const int qx = tx + dx;
            if (qx < 0 || qx >= tw) continue;
            const size_t q = (size_t)qy * tw + qx;
            const int sx = nnf[2 * q] - dx, sy = nnf[2 * q + 1] - dy;
            const float w = weighted ? 1.0f / (1.0f + err[q] * norm) : 1.0f;
            const unsigned char* sp = style + ((size_t)sy * sw + sx) * ns;
            for (int c = 0; c < ns; ++c) acc[c] += w * (float)sp[c];
            wsum += w;
        }
    }
    const size_t i = (size_t)ty * tw + tx;
    for (int c = 0; c < ns; ++c) {
        float val = acc[c] / wsum + 0.5f;
        val = val < 0.0f ? 0.0f : (val > 255.0f ? 255.0f : val);
        const unsigned char u = (unsigned char)val;
        out_u8[i * ns + c] = u;
        tgt[i * np + c] = (float)u * style_scale[c];
    }
}

// Convergence test between two PatchMatch iterations of one search-vote iteration: did the pixel's match move
// and lower its patch error by more than 5%? Pixels with no such neighbour (radius 2) are not searched again
// until the next vote. Smaller gains no longer change the vote visibly (measured on the benchmark clips:
// 12 x 2 iterations already reach the fidelity of 12 x 6), so they must not keep the whole image searching.
RR_HD bool improved_significantly(const int* nnf, const int* nnf_before, const float* err, const float* err_before,
                                  size_t i) {
    const bool moved = nnf[2 * i] != nnf_before[2 * i] || nnf[2 * i + 1] != nnf_before[2 * i + 1];
    return moved && err_before[i] - err[i] > 0.05f * err_before[i];
}
constexpr int kConvergenceRadius = 2;

// Is level pixel (x, y) kept (synthesis.md §11)? It is when every full-resolution pixel it covers is: at a level
// `shift` halvings below the full size, the pixel covers [x << shift, (x + 1) << shift) per axis.
RR_HD bool kept_at_level(const unsigned char* keep, int tw_full, int th_full, int shift, int x, int y) {
    const int x0 = x << shift, y0 = y << shift;
    const int x1 = (x + 1) << shift < tw_full ? (x + 1) << shift : tw_full;
    const int y1 = (y + 1) << shift < th_full ? (y + 1) << shift : th_full;
    for (int fy = y0; fy < y1; ++fy)
        for (int fx = x0; fx < x1; ++fx)
            if (!keep[(size_t)fy * tw_full + fx]) return false;
    return true;
}

// Stop-threshold test (synthesis.md §8): did any style channel of this pixel change by >= threshold since the last vote?
RR_HD bool style_changed(const unsigned char* a, const unsigned char* b, int ns, int threshold, size_t i) {
    for (int c = 0; c < ns; ++c) {
        const int d = (int)a[i * ns + c] - (int)b[i * ns + c];
        if (d >= threshold || -d >= threshold) return true;
    }
    return false;
}

}  // namespace rr
