// CPU backend of guided patch synthesis: the search-vote schedule of synth_driver.h run by an OpenMP executor
// over the per-pixel functions of synth_core.h. Every pass is a Jacobi step over the target, so the
// result is a function of the inputs and the seed only, not of the thread count or scheduling.
#pragma once

#include <cstdint>
#include <vector>

#include "synth_driver.h"

namespace rr {

struct SynthInputs {
    const uint8_t* style;         // [sh][sw][ns]
    const uint8_t* source_guide;  // [sh][sw][ng]
    const uint8_t* target_guide;  // [th][tw][ng]
    int sw, sh, tw, th, ns, ng;
    const float* style_weights;  // [ns] per-channel weights (already split, synthesis.md §4)
    const float* guide_weights;  // [ng]
    const int32_t* init_nnf;     // [th][tw][2] or null
    const uint8_t* keep;         // [th][tw] 0/1 or null: pixels whose init_nnf match is kept (synthesis.md §11)
};

// Where the time went (wall seconds) and how much of the target the stop-threshold mask kept searching.
struct SynthStats {
    double search = 0, propagation = 0, occupancy = 0, vote = 0, error = 0;
    std::vector<double> level_seconds;    // coarsest first
    std::vector<int64_t> active_pixels;  // per search-vote iteration, all levels in order
    std::vector<int64_t> searched_pixels;  // per PatchMatch iteration, all levels in order
    int64_t patch_evaluations = 0;        // patch distances computed (searches and error recomputation)
    int threads = 1;                       // threads of the finest level (the caller's included)
};

struct SynthOutputs {
    SynthStats stats;
    std::vector<uint8_t> image;  // [th][tw][ns]
    std::vector<float> error;    // [th][tw]
    std::vector<int32_t> nnf;    // [th][tw][2]
};

void synthesize_cpu(const SynthInputs& in, const SynthConfig& cfg, SynthOutputs& out);

}  // namespace rr
