// The search-vote schedule of guided patch synthesis (EbSynth, Jamriška et al. 2019), written once for every
// executor: the CPU/OpenMP executor (synth_cpu.cpp) and the kernel executor (synth_kernels.h) that runs the
// kernels of native/cuda/synth_kernels.cu on a CUDA device or, compiled as host code, on the CPU in CI.
//
// The schedule decides what happens and in which order (levels, initial NNF, passes, masks, convergence,
// votes, pass ids of the random streams); an executor decides how (incremental updates, threads, streams).
// A change to the schedule is made here and nowhere else.
#pragma once

#include <cstdint>

#include "synth_core.h"

namespace rr {

struct SynthConfig {
    int patch_size = 5;
    int levels = 1;  // already resolved and clamped by the caller
    int search_vote_iters = 12;
    int patchmatch_iters = 6;
    float uniformity = 3500.0f;
    int stop_threshold = 5;
    bool extra_pass_3x3 = false;
    bool weighted_vote = false;
    uint32_t seed = 0;
    int threads = 0;  // <= 0: OpenMP default (CPU executor only)
};

// Stream ids of the per-pixel RNG: one per (level, search-vote iteration, PatchMatch iteration, pass). The
// field widths are why the iteration counts are bounded by 64 (binding.cpp checks it).
inline unsigned int pass_id(int level, int sv, int pm, int pass) {
    return (unsigned int)(((level * 64 + sv) * 64 + pm) * 8 + pass);
}
constexpr int kMaxIterations = 64;
constexpr int kMaxLevels = 16;

// What an executor provides (all operations act on the current level's target and source):
//   void begin_level(int level)            pyramid level `level` (0 = coarsest) becomes current
//   void init_random(int r)                random NNF inside the valid source area (seeded)
//   void init_from_caller(int r)           the caller's finest NNF mapped to this level
//   void upsample_nnf(int r)               the previous level's NNF x2 plus parity
//   void clamp_nnf(int r)                  matches kept r pixels inside the source
//   void reset_active()                    every pixel active (stop-threshold mask)
//   void keep_carried(int r)               the caller's kept pixels (all of the full-resolution pixels under a
//                                          level pixel kept) take the caller's match and are inactive, the
//                                          others active (synthesis.md §11)
//   void vote(int p, bool weighted, bool first)
//   void update_masks(int r, bool stop_mask)  after a vote: stop mask (if stop_mask) and dirty errors
//   void begin_iteration(int p, bool occupancy, float occ_scale)  occupancy rebuilt, view set
//   void recompute_error(bool all)         patch errors of the current NNF (all, or where the estimate moved)
//   void begin_search()                    search mask = active
//   void pass_init()                       offer the caller's mapped NNF as a candidate
//   int64_t converge(int radius)           search = dilate(improved since snapshot) & active; returns the
//                                          pixels left, or -1 when counting would need a host sync
//   void snapshot()                        remember NNF and error before a PatchMatch iteration
//   void pass_propagate(int k)             jump-flood propagation with distance k
//   void pass_random(unsigned int pass_id) random search
//   void final_error(int p)                error map without uniformity (no search-vote iteration ran)
//   void end_level()
//   int level_pixels(), source_pixels()    sizes of the current level
template <class Exec>
void solve_level(Exec& ex, const SynthConfig& cfg, bool has_init, bool has_keep, int level, int p,
                 float uniformity) {
    const int r = p / 2;
    ex.clamp_nnf(r);  // the 3x3 pass inherits matches of the larger patch
    // Cost follows the changed area (synthesis.md §11): where the caller says the guides did not change, its
    // carried match is kept and not searched; the stop-threshold mask below re-activates a kept pixel only
    // when its estimate moves (a changed neighbour's patches overlap it).
    if (has_keep)
        ex.keep_carried(r);
    else
        ex.reset_active();
    // Uniformity (synthesis.md §5): lambda * (occupancy sum / p^2) / omega*, omega* = |T| / |S| * p^2.
    const float n = (float)ex.level_pixels();
    const float omega = n / (float)ex.source_pixels() * (float)p * (float)p;
    const float occ_scale = uniformity / ((float)p * (float)p * omega);
    const bool occupancy = uniformity > 0.0f;
    ex.vote(p, false, true);  // synthesis.md §3 step 2: initial vote (errors not known yet, so plain)
    const int sv_iters = cfg.search_vote_iters, pm_iters = cfg.patchmatch_iters;
    for (int sv = 0; sv < sv_iters; ++sv) {
        ex.begin_iteration(p, occupancy, occ_scale);
        ex.recompute_error(sv == 0);
        ex.begin_search();
        // Offer the caller's NNF (mapped to this level) as a candidate next to the upsampled one.
        if (sv == 0 && has_init && level > 0 && level < cfg.levels) ex.pass_init();
        for (int pm = 0; pm < pm_iters; ++pm) {
            // Converged neighbourhoods are not searched again in this search-vote iteration (synth_core.h
            // improved_significantly). Stopping early is only a saving: with an empty mask a pass keeps
            // every match, so the next mask is empty again and the result is the same.
            if (pm > 0 && ex.converge(kConvergenceRadius) == 0) break;
            ex.snapshot();
            for (int k = 4; k >= 1; k /= 2) ex.pass_propagate(k);
            ex.pass_random(pass_id(level, sv, pm, 3));
        }
        ex.vote(p, cfg.weighted_vote, false);
        ex.update_masks(r, sv + 1 < sv_iters);
    }
    if (sv_iters == 0) ex.final_error(p);
}

// Coarse to fine over the pyramid (synthesis.md §3); the 3x3 pass of synthesis.md §3 step 5 runs at the finest level as level L.
// `has_keep` (only with `has_init`): the caller marked pixels whose carried match is kept (synthesis.md §11).
template <class Exec>
void run_schedule(Exec& ex, const SynthConfig& cfg, bool has_init, bool has_keep) {
    const int L = cfg.levels;
    const int r = cfg.patch_size / 2;
    for (int l = 0; l < L; ++l) {
        ex.begin_level(l);
        if (l > 0)
            ex.upsample_nnf(r);
        else if (has_init)
            ex.init_from_caller(r);
        else
            ex.init_random(r);
        solve_level(ex, cfg, has_init, has_keep, l, cfg.patch_size, cfg.uniformity);
        if (l == L - 1 && cfg.extra_pass_3x3) solve_level(ex, cfg, has_init, has_keep, L, 3, 0.0f);
        ex.end_level();
    }
}

}  // namespace rr
