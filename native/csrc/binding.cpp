// Python binding of guided patch synthesis (rerender.native._synth): the CPU executor, the kernel executor on
// the host (CI's run of the CUDA schedule) and CudaSynth (one CUDA chain). Readable validation lives in
// native/synthesize.py; this layer checks every bound again (a ValueError, never a crash) and releases the GIL
// while synthesising so forward and backward propagations can run in two Python threads at once.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <optional>
#include <stdexcept>

#include "synth_cpu.h"
#include "synth_kernels_exec.h"

namespace py = pybind11;

using U8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// Bounds checked here as well as in Python (params.py), so no caller of the module can crash the process with
// a value that would exhaust threads or memory or overflow the random-stream ids (synth_driver.h).
constexpr int kMaxPatchSize = 15;
constexpr int kMaxThreads = 256;
constexpr int64_t kMaxSide = 8192;
constexpr int64_t kMaxPixels = int64_t(1) << 25;
constexpr int kMaxGuideChannels = 24;

static void check_size(const char* what, int64_t h, int64_t w) {
    if (h < 1 || w < 1 || h > kMaxSide || w > kMaxSide || h * w > kMaxPixels)
        throw std::invalid_argument(std::string(what) + " must be 1 to " + std::to_string(kMaxSide) +
                                    " pixels per side and at most " + std::to_string(kMaxPixels) +
                                    " pixels in all, got " + std::to_string(h) + "x" + std::to_string(w) + ".");
}

static void check_weights(const F32& w, const char* what) {
    for (py::ssize_t i = 0; i < w.size(); ++i)
        if (!std::isfinite(w.data()[i]) || w.data()[i] < 0.0f)
            throw std::invalid_argument(std::string(what) + " weights must be finite numbers >= 0.");
}

// The arrays of one call, checked; `in` points into them, so they must outlive the synthesis.
struct Call {
    U8 style, source_guide, target_guide;
    F32 style_weights, guide_weights;
    std::optional<I32> init_nnf;
    std::optional<U8> keep;
    rr::SynthInputs in{};
    rr::SynthConfig cfg;
};

static void parse(Call& c, int patch_size, int levels, int search_vote_iters, int patchmatch_iters,
                  float uniformity, int stop_threshold, bool extra_pass_3x3, bool weighted_vote, uint32_t seed,
                  int threads) {
    if (c.style.ndim() != 3 || c.source_guide.ndim() != 3 || c.target_guide.ndim() != 3)
        throw std::invalid_argument("style and guides must be 3-dimensional (height, width, channels) arrays.");
    rr::SynthInputs& in = c.in;
    check_size("the style", c.style.shape(0), c.style.shape(1));
    check_size("the target guide", c.target_guide.shape(0), c.target_guide.shape(1));
    in.sh = (int)c.style.shape(0);
    in.sw = (int)c.style.shape(1);
    in.ns = (int)c.style.shape(2);
    in.th = (int)c.target_guide.shape(0);
    in.tw = (int)c.target_guide.shape(1);
    in.ng = (int)c.target_guide.shape(2);
    if (c.source_guide.shape(0) != in.sh || c.source_guide.shape(1) != in.sw || c.source_guide.shape(2) != in.ng)
        throw std::invalid_argument("source guide must have the style's size and the target guide's channels.");
    if (in.ns < 1 || in.ns > 8) throw std::invalid_argument("style must have 1 to 8 channels.");
    if (in.ng < 1 || in.ng > kMaxGuideChannels)
        throw std::invalid_argument("guides must have 1 to " + std::to_string(kMaxGuideChannels) +
                                    " channels in all.");
    if (c.style_weights.size() != in.ns || c.guide_weights.size() != in.ng)
        throw std::invalid_argument("one weight per style and guide channel is required.");
    check_weights(c.style_weights, "style");
    check_weights(c.guide_weights, "guide");
    if (patch_size < 3 || patch_size > kMaxPatchSize || patch_size % 2 == 0)
        throw std::invalid_argument("patch size must be an odd number from 3 to " + std::to_string(kMaxPatchSize) +
                                    ", got " + std::to_string(patch_size) + ".");
    if (patch_size > std::min({in.sw, in.sh, in.tw, in.th}))
        throw std::invalid_argument("patch size must fit inside the style and the target.");
    if (levels < 1 || levels > rr::kMaxLevels)
        throw std::invalid_argument("pyramid levels must be 1 to " + std::to_string(rr::kMaxLevels) + ", got " +
                                    std::to_string(levels) + ".");
    // Every level must still hold a patch: the coarsest one is the full size halved levels - 1 times (synthesis.md §2).
    if ((std::min(in.sw, in.sh) >> (levels - 1)) < patch_size || (std::min(in.tw, in.th) >> (levels - 1)) < 1)
        throw std::invalid_argument("too many pyramid levels for these sizes: the coarsest level would be smaller "
                                    "than one patch.");
    for (auto [name, v] : {std::pair<const char*, int>{"search-vote iterations", search_vote_iters},
                           {"PatchMatch iterations", patchmatch_iters}})
        if (v < 0 || v > rr::kMaxIterations)
            throw std::invalid_argument(std::string(name) + " must be 0 to " + std::to_string(rr::kMaxIterations) +
                                        ", got " + std::to_string(v) + ".");
    if (!std::isfinite(uniformity) || uniformity < 0.0f)
        throw std::invalid_argument("uniformity must be a finite number >= 0.");
    if (stop_threshold < 0 || stop_threshold > 255)
        throw std::invalid_argument("stop threshold must be 0 to 255, got " + std::to_string(stop_threshold) + ".");
    if (threads < 0 || threads > kMaxThreads)
        throw std::invalid_argument("threads must be 1 to " + std::to_string(kMaxThreads) + " (or 0: every core), got " +
                                    std::to_string(threads) + ".");
    in.style = c.style.data();
    in.source_guide = c.source_guide.data();
    in.target_guide = c.target_guide.data();
    in.style_weights = c.style_weights.data();
    in.guide_weights = c.guide_weights.data();
    in.init_nnf = nullptr;
    if (c.init_nnf) {
        const I32& init = *c.init_nnf;
        if (init.ndim() != 3 || init.shape(0) != in.th || init.shape(1) != in.tw || init.shape(2) != 2)
            throw std::invalid_argument("init_nnf must have shape (target height, target width, 2).");
        const int32_t* d = init.data();
        for (py::ssize_t i = 0; i < (py::ssize_t)in.th * in.tw; ++i)
            if (d[2 * i] < 0 || d[2 * i] >= in.sw || d[2 * i + 1] < 0 || d[2 * i + 1] >= in.sh)
                throw std::invalid_argument("init_nnf holds coordinates outside the style image.");
        in.init_nnf = d;
    }
    in.keep = nullptr;
    if (c.keep) {
        const U8& keep = *c.keep;
        if (!c.init_nnf) throw std::invalid_argument("keep needs init_nnf: kept pixels keep its matches.");
        if (keep.ndim() != 2 || keep.shape(0) != in.th || keep.shape(1) != in.tw)
            throw std::invalid_argument("keep must have shape (target height, target width).");
        for (py::ssize_t i = 0; i < keep.size(); ++i)
            if (keep.data()[i] > 1) throw std::invalid_argument("keep must hold 0 and 1 only.");
        in.keep = keep.data();
    }
    rr::SynthConfig& cfg = c.cfg;
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
}

static py::tuple result(const rr::SynthInputs& in, const rr::SynthOutputs& out) {
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
    stats["patch_evaluations"] = out.stats.patch_evaluations;
    stats["threads"] = out.stats.threads;
    return py::make_tuple(image, error, nnf, stats);
}

static py::tuple synthesize(U8 style, U8 source_guide, U8 target_guide, F32 style_weights, F32 guide_weights,
                            int patch_size, int levels, int search_vote_iters, int patchmatch_iters,
                            float uniformity, int stop_threshold, bool extra_pass_3x3, bool weighted_vote,
                            uint32_t seed, int threads, std::optional<I32> init_nnf, const std::string& executor,
                            std::optional<U8> keep) {
    if (executor != "cpu" && executor != "kernels-host")
        throw std::invalid_argument("executor must be 'cpu' or 'kernels-host', got '" + executor + "'.");
    Call c{style, source_guide, target_guide, style_weights, guide_weights, init_nnf, keep};
    parse(c, patch_size, levels, search_vote_iters, patchmatch_iters, uniformity, stop_threshold, extra_pass_3x3,
          weighted_vote, seed, threads);
    rr::SynthOutputs out;
    {
        py::gil_scoped_release release;
        if (executor == "cpu")
            rr::synthesize_cpu(c.in, c.cfg, out);
        else
            rr::synthesize_kernels_host(c.in, c.cfg, out);
    }
    return result(c.in, out);
}

static py::tuple cuda_run(rr::CudaSynth& self, U8 style, U8 source_guide, U8 target_guide, F32 style_weights,
                          F32 guide_weights, int patch_size, int levels, int search_vote_iters, int patchmatch_iters,
                          float uniformity, int stop_threshold, bool extra_pass_3x3, bool weighted_vote,
                          uint32_t seed, std::optional<I32> init_nnf, std::optional<U8> keep) {
    Call c{style, source_guide, target_guide, style_weights, guide_weights, init_nnf, keep};
    parse(c, patch_size, levels, search_vote_iters, patchmatch_iters, uniformity, stop_threshold, extra_pass_3x3,
          weighted_vote, seed, 0);
    rr::SynthOutputs out;
    {
        py::gil_scoped_release release;
        self.run(c.in, c.cfg, out);
    }
    return result(c.in, out);
}

PYBIND11_MODULE(_synth, m) {
    m.doc() = "Guided patch synthesis (EbSynth): the CPU executor, the kernels on the host, and CUDA.";
    m.def("synthesize", &synthesize, py::arg("style"), py::arg("source_guide"), py::arg("target_guide"),
          py::arg("style_weights"), py::arg("guide_weights"), py::arg("patch_size"), py::arg("levels"),
          py::arg("search_vote_iters"), py::arg("patchmatch_iters"), py::arg("uniformity"),
          py::arg("stop_threshold"), py::arg("extra_pass_3x3"), py::arg("weighted_vote"), py::arg("seed"),
          py::arg("threads"), py::arg("init_nnf") = py::none(), py::arg("executor") = "cpu",
          py::arg("keep") = py::none());
    m.def("cuda_devices", []() {
        py::list out;
        for (const auto& d : rr::cuda_devices()) out.append(py::make_tuple(d.name, d.major, d.minor));
        return out;
    });
    py::class_<rr::CudaSynth>(m, "CudaSynth")
        .def(py::init([](int device, py::bytes image) {
                 return std::make_unique<rr::CudaSynth>(device, std::string(image));
             }),
             py::arg("device"), py::arg("module_image"))
        .def("run", &cuda_run, py::arg("style"), py::arg("source_guide"), py::arg("target_guide"),
             py::arg("style_weights"), py::arg("guide_weights"), py::arg("patch_size"), py::arg("levels"),
             py::arg("search_vote_iters"), py::arg("patchmatch_iters"), py::arg("uniformity"),
             py::arg("stop_threshold"), py::arg("extra_pass_3x3"), py::arg("weighted_vote"), py::arg("seed"),
             py::arg("init_nnf") = py::none(), py::arg("keep") = py::none())
        .def_property_readonly("device", &rr::CudaSynth::device)
        .def_property_readonly("stream", &rr::CudaSynth::stream_handle)
        .def_property_readonly("pooled_bytes", &rr::CudaSynth::pooled_bytes)
        .def_property_readonly("frames", &rr::CudaSynth::frames);
    py::dict limits;
    limits["patch_size"] = kMaxPatchSize;
    limits["iterations"] = rr::kMaxIterations;
    limits["levels"] = rr::kMaxLevels;
    limits["threads"] = kMaxThreads;
    limits["side"] = kMaxSide;
    limits["pixels"] = kMaxPixels;
    limits["guide_channels"] = kMaxGuideChannels;
    m.attr("LIMITS") = limits;
}
