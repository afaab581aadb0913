// Python binding of the CPU backend (rerender.native._synth). Validation with readable messages lives in
// native/synthesize.py; this layer only checks what would otherwise corrupt memory, and releases the GIL
// while synthesising so forward and backward propagations can run in two Python threads at once.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <stdexcept>

#include "synth_cpu.h"

namespace py = pybind11;

using U8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

static py::tuple synthesize(U8 style, U8 source_guide, U8 target_guide, F32 style_weights, F32 guide_weights,
                            int patch_size, int levels, int search_vote_iters, int patchmatch_iters,
                            float uniformity, int stop_threshold, bool extra_pass_3x3, bool weighted_vote,
                            uint32_t seed, int threads, std::optional<I32> init_nnf) {
    if (style.ndim() != 3 || source_guide.ndim() != 3 || target_guide.ndim() != 3)
        throw std::invalid_argument("style and guides must be 3-dimensional (height, width, channels) arrays.");
    rr::SynthInputs in{};
    in.sh = (int)style.shape(0);
    in.sw = (int)style.shape(1);
    in.ns = (int)style.shape(2);
    in.th = (int)target_guide.shape(0);
    in.tw = (int)target_guide.shape(1);
    in.ng = (int)target_guide.shape(2);
    if (source_guide.shape(0) != in.sh || source_guide.shape(1) != in.sw || source_guide.shape(2) != in.ng)
        throw std::invalid_argument("source guide must have the style's size and the target guide's channels.");
    if (in.ns < 1 || in.ns > 8) throw std::invalid_argument("style must have 1 to 8 channels.");
    if (style_weights.size() != in.ns || guide_weights.size() != in.ng)
        throw std::invalid_argument("one weight per style and guide channel is required.");
    if (patch_size < 3 || patch_size % 2 == 0 || patch_size > in.sw || patch_size > in.sh)
        throw std::invalid_argument("patch size must be odd, at least 3 and fit inside the style.");
    if (levels < 1) throw std::invalid_argument("at least one pyramid level is required.");
    in.style = style.data();
    in.source_guide = source_guide.data();
    in.target_guide = target_guide.data();
    in.style_weights = style_weights.data();
    in.guide_weights = guide_weights.data();
    in.init_nnf = nullptr;
    if (init_nnf) {
        if (init_nnf->ndim() != 3 || init_nnf->shape(0) != in.th || init_nnf->shape(1) != in.tw ||
            init_nnf->shape(2) != 2)
            throw std::invalid_argument("init_nnf must have shape (target height, target width, 2).");
        const int32_t* d = init_nnf->data();
        for (py::ssize_t i = 0; i < (py::ssize_t)in.th * in.tw; ++i)
            if (d[2 * i] < 0 || d[2 * i] >= in.sw || d[2 * i + 1] < 0 || d[2 * i + 1] >= in.sh)
                throw std::invalid_argument("init_nnf holds coordinates outside the style image.");
        in.init_nnf = d;
    }
    rr::SynthConfig cfg;
    cfg.patch_size = patch_size;
    cfg.levels = levels;
    cfg.search_vote_iters = search_vote_iters;
    cfg.patchmatch_iters = patchmatch_iters;
    cfg.uniformity = uniformity;
    cfg.stop_threshold = stop_threshold;
    cfg.extra_pass_3x3 = extra_pass_3x3;
    cfg.weighted_vote = weighted_vote;
    cfg.seed = seed;
    cfg.threads = threads;

    rr::SynthOutputs out;
    {
        py::gil_scoped_release release;
        rr::synthesize_cpu(in, cfg, out);
    }
    U8 image({in.th, in.tw, in.ns});
    F32 error({in.th, in.tw});
    I32 nnf({in.th, in.tw, 2});
    std::memcpy(image.mutable_data(), out.image.data(), out.image.size());
    std::memcpy(error.mutable_data(), out.error.data(), out.error.size() * sizeof(float));
    std::memcpy(nnf.mutable_data(), out.nnf.data(), out.nnf.size() * sizeof(int32_t));
    py::dict stats;
    stats["search_seconds"] = out.stats.search;
    stats["propagation_seconds"] = out.stats.propagation;
    stats["occupancy_seconds"] = out.stats.occupancy;
    stats["vote_seconds"] = out.stats.vote;
    stats["error_seconds"] = out.stats.error;
    stats["level_seconds"] = out.stats.level_seconds;
    stats["active_pixels"] = out.stats.active_pixels;
    stats["searched_pixels"] = out.stats.searched_pixels;
    return py::make_tuple(image, error, nnf, stats);
}

PYBIND11_MODULE(_synth, m) {
    m.doc() = "CPU backend of rerender.native (guided patch synthesis, ebsynth.md).";
    m.def("synthesize", &synthesize, py::arg("style"), py::arg("source_guide"), py::arg("target_guide"),
          py::arg("style_weights"), py::arg("guide_weights"), py::arg("patch_size"), py::arg("levels"),
          py::arg("search_vote_iters"), py::arg("patchmatch_iters"), py::arg("uniformity"),
          py::arg("stop_threshold"), py::arg("extra_pass_3x3"), py::arg("weighted_vote"), py::arg("seed"),
          py::arg("threads"), py::arg("init_nnf") = py::none());
}
