// Kernel executor of the search-vote schedule (synth_driver.h) with two launchers: HostLauncher runs the
// kernels of native/cuda/synth_kernels.cu compiled as host code (CI, no GPU needed), DeviceLauncher launches
// the nvcc-compiled module through the CUDA driver API, loaded at run time (libcuda.so.1), so the extension
// builds and imports on machines without CUDA.
#include "synth_kernels_exec.h"

#include <dlfcn.h>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "kernel_host_shim.h"
// The kernel bodies, as host functions in namespace rr_kernels (their signatures also type-check every
// device launch below).
#include "../cuda/synth_kernels.cu"
#include "synth_driver.h"
#include "thread_pool.h"

namespace rr {
namespace {

constexpr int kBlock = 16;  // 16 x 16 threads per block, one thread per pixel

// -- buffers ---------------------------------------------------------------------------------------------
// Named slots that grow to the largest request and are reused afterwards (per level and across frames).
enum Slot : int {
    kStyleFull, kSGuideFull, kTGuideFull, kInitFull, kKeepFull, kScales,
    kSrc, kTgt, kNnf, kNnf2, kNnfPm, kInitLevel, kErr, kErr2, kErrPm,
    kEst, kPrevEst, kActive, kChanged, kSearch, kRows, kHist, kHistTmp, kOcc,
    kPyramid,  // kPyramid + 3 * level + {0: style, 1: source guide, 2: target guide}
};  // clang-format: one slot per buffer
constexpr int kSlots = kPyramid + 3 * kMaxLevels;

template <class Launcher>
class Pool {
  public:
    explicit Pool(Launcher& dev) : dev_(dev), ptr_(kSlots, nullptr), bytes_(kSlots, 0) {}
    ~Pool() { release(); }
    void* get(int slot, size_t bytes) {
        bytes = bytes ? bytes : 1;
        if (bytes > bytes_[slot]) {
            if (ptr_[slot]) dev_.free(ptr_[slot]);
            ptr_[slot] = nullptr;
            bytes_[slot] = 0;
            ptr_[slot] = dev_.alloc(bytes);
            bytes_[slot] = bytes;
        }
        return ptr_[slot];
    }
    size_t total() const {
        size_t t = 0;
        for (size_t b : bytes_) t += b;
        return t;
    }
    void release() {
        for (int s = 0; s < kSlots; ++s)
            if (ptr_[s]) dev_.free(ptr_[s]);
        std::fill(ptr_.begin(), ptr_.end(), nullptr);
        std::fill(bytes_.begin(), bytes_.end(), 0);
    }

  private:
    Launcher& dev_;
    std::vector<void*> ptr_;
    std::vector<size_t> bytes_;
};

// Every launch names its kernel: the device launcher looks it up by that name and puts it in errors, the host
// launcher calls the host build of the same function (whose signature type-checks the arguments of both).
#define RR_LAUNCH(kernel, w, h, ...) dev_.launch(&rr_kernels::kernel, #kernel, (w), (h), __VA_ARGS__)

// -- the executor ----------------------------------------------------------------------------------------
template <class Launcher>
class KernelExec {
  public:
    KernelExec(Launcher& dev, Pool<Launcher>& pool, const SynthInputs& in, const SynthConfig& cfg)
        : dev_(dev), pool_(pool), in_(in), cfg_(cfg) {
        ns_ = in.ns;
        ng_ = in.ng;
        np_ = (ns_ + ng_ + 3) / 4 * 4;
        float scales[8 + 32] = {0};
        for (int c = 0; c < ns_; ++c) scales[c] = std::sqrt(in.style_weights[c]);
        for (int g = 0; g < ng_; ++g) scales[8 + g] = std::sqrt(in.guide_weights[g]);
        const size_t S = (size_t)in.sw * in.sh, T = (size_t)in.tw * in.th;
        // Every per-level buffer is sized for the finest level up front: nothing is reallocated mid-frame.
        scales_ = buf<float>(kScales, 8 + 32);
        dev_.copy_h2d(scales_, scales, sizeof(scales));
        src_ = buf<float>(kSrc, S * np_);
        tgt_ = buf<float>(kTgt, T * np_);
        nnf_ = buf<int>(kNnf, 2 * T);
        nnf2_ = buf<int>(kNnf2, 2 * T);
        nnf_pm_ = buf<int>(kNnfPm, 2 * T);
        init_level_ = buf<int>(kInitLevel, 2 * T);
        err_ = buf<float>(kErr, T);
        err2_ = buf<float>(kErr2, T);
        err_pm_ = buf<float>(kErrPm, T);
        est_ = buf<unsigned char>(kEst, T * ns_);
        prev_est_ = buf<unsigned char>(kPrevEst, T * ns_);
        active_ = buf<unsigned char>(kActive, T);
        changed_ = buf<unsigned char>(kChanged, T);
        search_ = buf<unsigned char>(kSearch, T);
        rows_ = buf<unsigned char>(kRows, T);
        hist_ = buf<int>(kHist, S);
        hist_tmp_ = buf<int>(kHistTmp, S);
        occ_ = buf<float>(kOcc, S);
        // Pyramids on the device (synthesis.md §2): upload the full-resolution images once, halve level by level.
        const int L = cfg.levels;
        for (int l = 0; l < L; ++l) {
            const int k = L - 1 - l;
            lw_[l][0] = in.sw >> k;
            lw_[l][1] = in.sh >> k;
            lw_[l][2] = in.tw >> k;
            lw_[l][3] = in.th >> k;
        }
        style_[L - 1] = upload(kStyleFull, in.style, S * ns_);
        sguide_[L - 1] = upload(kSGuideFull, in.source_guide, S * ng_);
        tguide_[L - 1] = upload(kTGuideFull, in.target_guide, T * ng_);
        if (in.init_nnf) init_full_ = (int*)upload(kInitFull, in.init_nnf, 2 * T * sizeof(int32_t));
        if (in.keep) keep_full_ = upload(kKeepFull, in.keep, T);
        for (int l = L - 2; l >= 0; --l) {
            const int sw = lw_[l][0], sh = lw_[l][1], tw = lw_[l][2], th = lw_[l][3];
            style_[l] = buf<unsigned char>(kPyramid + 3 * l, (size_t)sw * sh * ns_);
            sguide_[l] = buf<unsigned char>(kPyramid + 3 * l + 1, (size_t)sw * sh * ng_);
            tguide_[l] = buf<unsigned char>(kPyramid + 3 * l + 2, (size_t)tw * th * ng_);
            RR_LAUNCH(halve, sw, sh, style_[l + 1], lw_[l + 1][0], style_[l], sw, sh, ns_);
            RR_LAUNCH(halve, sw, sh, sguide_[l + 1], lw_[l + 1][0], sguide_[l], sw, sh, ng_);
            RR_LAUNCH(halve, tw, th, tguide_[l + 1], lw_[l + 1][2], tguide_[l], tw, th, ng_);
        }
    }

    void finish(SynthOutputs& out) {
        const size_t n = (size_t)tw_ * th_;
        out.image.resize(n * ns_);
        out.error.resize(n);
        out.nnf.resize(2 * n);
        dev_.copy_d2h(out.image.data(), est_, out.image.size());
        dev_.copy_d2h(out.error.data(), err_, n * sizeof(float));
        dev_.copy_d2h(out.nnf.data(), nnf_, 2 * n * sizeof(int32_t));
        dev_.sync();
    }

    // -- the executor interface of synth_driver.h ------------------------------------------------------
    int64_t level_pixels() const { return (int64_t)tw_ * th_; }
    int64_t source_pixels() const { return (int64_t)sw_ * sh_; }

    void begin_level(int l) {
        level_ = l;
        sw_ = lw_[l][0];
        sh_ = lw_[l][1];
        tw_ = lw_[l][2];
        th_ = lw_[l][3];
        const size_t n = (size_t)tw_ * th_;
        RR_LAUNCH(pack, sw_, sh_, style_[l], ns_, sguide_[l], ng_, np_, scales_, scales_ + 8, sw_, sh_, src_);
        RR_LAUNCH(pack, tw_, th_, (const unsigned char*)nullptr, ns_, tguide_[l], ng_, np_, scales_, scales_ + 8,
                  tw_, th_, tgt_);
        dev_.memset(err_, 0, n * sizeof(float));
        dev_.memset(est_, 0, n * ns_);
        dev_.memset(prev_est_, 0, n * ns_);
        dev_.memset(active_, 1, n);
    }

    void end_level() {
        pw_ = tw_;
        ph_ = th_;
    }

    void init_random(int r) { RR_LAUNCH(random_nnf, tw_, th_, nnf_, tw_, th_, sw_, sh_, r, cfg_.seed); }

    void init_from_caller(int r) { map_init(nnf_, r); }

    void upsample_nnf(int r) {
        RR_LAUNCH(upsample_nnf, tw_, th_, nnf_, pw_, ph_, nnf2_, tw_, th_, sw_, sh_, r);
        std::swap(nnf_, nnf2_);
    }

    void clamp_nnf(int r) { RR_LAUNCH(clamp_nnf, tw_, th_, nnf_, tw_, th_, sw_, sh_, r); }

    void reset_active() { dev_.memset(active_, 1, (size_t)tw_ * th_); }

    void keep_carried(int r) {
        map_init(init_level_, r);
        RR_LAUNCH(keep_carried, tw_, th_, keep_full_, in_.tw, in_.th, std::max(0, cfg_.levels - 1 - level_),
                  init_level_, nnf_, active_, tw_, th_);
    }

    void vote(int p, bool weighted, bool /*first*/) {
        std::swap(est_, prev_est_);
        RR_LAUNCH(vote, tw_, th_, style_[std::min(level_, cfg_.levels - 1)], sw_, ns_, nnf_, err_, tw_, th_, p / 2,
                  (int)weighted, scales_, est_, tgt_, np_);
    }

    void update_masks(int r, bool stop_mask) {
        // Errors are recomputed in full each iteration, so only the stop-threshold mask is needed here.
        if (!stop_mask) return;
        RR_LAUNCH(changed_mask, tw_, th_, est_, prev_est_, tw_, th_, ns_, cfg_.stop_threshold, changed_);
        dilate(changed_, active_, r);
    }

    void begin_iteration(int p, bool occupancy, float occ_scale) {
        p_ = p;
        occupancy_ = occupancy;
        occ_scale_ = occ_scale;
        if (occupancy_) rebuild_occupancy();
    }

    void recompute_error(bool /*all*/) {
        RR_LAUNCH(patch_errors, tw_, th_, src_, tgt_, sw_, sh_, tw_, th_, np_, p_, nnf_, err_);
    }

    void final_error(int p) {
        p_ = p;
        recompute_error(true);
    }

    void begin_search() { dev_.copy_d2d(search_, active_, (size_t)tw_ * th_); }

    void pass_init() {
        map_init(init_level_, p_ / 2);
        RR_LAUNCH(try_init, tw_, th_, src_, tgt_, occ(), sw_, sh_, tw_, th_, np_, p_, occ_scale_, nnf_, err_,
                  init_level_, nnf2_, err2_);
        after_pass();
    }

    // The search mask stays on the device; counting it would need a host synchronisation per PatchMatch
    // iteration, so the schedule runs every iteration (an empty mask makes the passes copy-only).
    int64_t converge(int radius) {
        RR_LAUNCH(improved_mask, tw_, th_, nnf_, nnf_pm_, err_, err_pm_, tw_, th_, changed_);
        dilate(changed_, search_, radius);
        RR_LAUNCH(and_mask, tw_, th_, search_, active_, tw_, th_);
        return -1;
    }

    void snapshot() {
        const size_t n = (size_t)tw_ * th_;
        dev_.copy_d2d(nnf_pm_, nnf_, 2 * n * sizeof(int));
        dev_.copy_d2d(err_pm_, err_, n * sizeof(float));
    }

    void pass_propagate(int k) {
        RR_LAUNCH(propagate, tw_, th_, src_, tgt_, occ(), sw_, sh_, tw_, th_, np_, p_, occ_scale_, nnf_, err_,
                  nnf2_, err2_, search_, k);
        after_pass();
    }

    void pass_random(unsigned int pid) {
        RR_LAUNCH(random_search, tw_, th_, src_, tgt_, occ(), sw_, sh_, tw_, th_, np_, p_, occ_scale_, nnf_, err_,
                  nnf2_, err2_, search_, cfg_.seed, pid);
        after_pass();
    }

  private:
    template <class T>
    T* buf(int slot, size_t count) {
        return (T*)pool_.get(slot, count * sizeof(T));
    }
    unsigned char* upload(int slot, const void* data, size_t bytes) {
        auto* p = (unsigned char*)pool_.get(slot, bytes);
        dev_.copy_h2d(p, data, bytes);
        return p;
    }
    const float* occ() const { return occupancy_ ? occ_ : nullptr; }

    void map_init(int* out, int r) {
        RR_LAUNCH(map_init, tw_, th_, init_full_, in_.tw, in_.th, in_.sw, in_.sh, out, tw_, th_, sw_, sh_, r);
    }

    void dilate(unsigned char* in, unsigned char* out, int r) {
        RR_LAUNCH(dilate, tw_, th_, in, rows_, tw_, th_, r, 1);
        RR_LAUNCH(dilate, tw_, th_, rows_, out, tw_, th_, r, 0);
    }

    // Occupancy (synthesis.md §5) of the current NNF, rebuilt in exact integers after every pass.
    void rebuild_occupancy() {
        dev_.memset(hist_, 0, (size_t)sw_ * sh_ * sizeof(int));
        RR_LAUNCH(match_histogram, tw_, th_, nnf_, tw_, th_, sw_, hist_);
        int *a = hist_, *b = hist_tmp_;
        for (int along_x : {1, 1, 0, 0}) {
            RR_LAUNCH(box_sum, sw_, sh_, a, b, sw_, sh_, p_ / 2, along_x);
            std::swap(a, b);
        }
        RR_LAUNCH(to_float, sw_, sh_, a, occ_, sw_, sh_);
    }

    void after_pass() {
        std::swap(nnf_, nnf2_);
        std::swap(err_, err2_);
        if (occupancy_) rebuild_occupancy();
    }

    Launcher& dev_;
    Pool<Launcher>& pool_;
    const SynthInputs& in_;
    const SynthConfig& cfg_;
    int ns_ = 0, ng_ = 0, np_ = 0;
    int lw_[kMaxLevels][4] = {};
    unsigned char* style_[kMaxLevels] = {};
    unsigned char* sguide_[kMaxLevels] = {};
    unsigned char* tguide_[kMaxLevels] = {};
    int level_ = 0, sw_ = 0, sh_ = 0, tw_ = 0, th_ = 0, pw_ = 0, ph_ = 0, p_ = 3;
    bool occupancy_ = false;
    float occ_scale_ = 0.0f;
    float *scales_ = nullptr, *src_ = nullptr, *tgt_ = nullptr, *err_ = nullptr, *err2_ = nullptr,
          *err_pm_ = nullptr, *occ_ = nullptr;
    int *nnf_ = nullptr, *nnf2_ = nullptr, *nnf_pm_ = nullptr, *init_full_ = nullptr, *init_level_ = nullptr,
        *hist_ = nullptr, *hist_tmp_ = nullptr;
    const unsigned char* keep_full_ = nullptr;
    unsigned char *est_ = nullptr, *prev_est_ = nullptr, *active_ = nullptr, *changed_ = nullptr,
                  *search_ = nullptr, *rows_ = nullptr;
};

// -- host launcher ---------------------------------------------------------------------------------------
class HostLauncher {
  public:
    explicit HostLauncher(int threads) : pool_(threads > 0 ? threads : available_cores()) {}
    void* alloc(size_t bytes) {
        void* p = std::calloc(bytes, 1);
        if (!p) throw std::bad_alloc();
        return p;
    }
    void free(void* p) { std::free(p); }
    void memset(void* dst, int v, size_t n) { std::memset(dst, v, n); }
    void copy_h2d(void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); }
    void copy_d2h(void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); }
    void copy_d2d(void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); }
    void sync() {}

    // Walks the grid as CUDA would: every (block, thread) pair runs the kernel body once.
    template <class... P, class... A>
    void launch(void (*kernel)(P...), const char* /*name*/, int w, int h, A... args) {
        const int gx = (w + kBlock - 1) / kBlock, gy = (h + kBlock - 1) / kBlock;
        pool_.rows(gy, pool_.threads(), [&](int by) {
            rr_kernels::blockDim = {kBlock, kBlock, 1};
            for (int bx = 0; bx < gx; ++bx) {
                rr_kernels::blockIdx = {(unsigned)bx, (unsigned)by, 0};
                for (int ty = 0; ty < kBlock; ++ty)
                    for (int tx = 0; tx < kBlock; ++tx) {
                        rr_kernels::threadIdx = {(unsigned)tx, (unsigned)ty, 0};
                        kernel(static_cast<P>(args)...);
                    }
            }
        });
    }

  private:
    RowPool pool_;
};

// -- CUDA driver API, loaded at run time -----------------------------------------------------------------
// The few entry points used, declared with the driver API's stable C ABI (cuda.h), so building the
// extension needs no CUDA toolkit. Compiled with RR_CHECK_AGAINST_CUDA_H (tests/test_cuda_compile.py), the
// same declarations are checked against cuda.h itself: types, every signature and the constants.
#ifdef RR_CHECK_AGAINST_CUDA_H
}  // namespace
}  // namespace rr
#include <cuda.h>

#include <type_traits>
namespace rr {
namespace {
using CUresult = ::CUresult;
using CUdevice = ::CUdevice;
using CUdeviceptr = ::CUdeviceptr;
using CUcontext = ::CUcontext;
using CUmodule = ::CUmodule;
using CUfunction = ::CUfunction;
using CUstream = ::CUstream;
using CUattribute = ::CUdevice_attribute;
#else
using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUcontext = struct CUctx_st*;
using CUmodule = struct CUmod_st*;
using CUfunction = struct CUfunc_st*;
using CUstream = struct CUstream_st*;
using CUattribute = int;
#endif
constexpr unsigned int kStreamNonBlocking = 0x1;
constexpr int kAttrComputeMajor = 75, kAttrComputeMinor = 76;

struct DriverApi {
    void* lib = nullptr;
    std::string error;
    CUresult (*cuInit)(unsigned int);
    CUresult (*cuDeviceGetCount)(int*);
    CUresult (*cuDeviceGet)(CUdevice*, int);
    CUresult (*cuDeviceGetName)(char*, int, CUdevice);
    CUresult (*cuDeviceGetAttribute)(int*, CUattribute, CUdevice);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
    CUresult (*cuDevicePrimaryCtxRelease)(CUdevice);
    CUresult (*cuCtxPushCurrent)(CUcontext);
    CUresult (*cuCtxPopCurrent)(CUcontext*);
    CUresult (*cuModuleLoadData)(CUmodule*, const void*);
    CUresult (*cuModuleUnload)(CUmodule);
    CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
    CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                               CUstream, void**, void**);
    CUresult (*cuMemAlloc)(CUdeviceptr*, size_t);
    CUresult (*cuMemFree)(CUdeviceptr);
    CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream);
    CUresult (*cuMemcpyDtoHAsync)(void*, CUdeviceptr, size_t, CUstream);
    CUresult (*cuMemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
    CUresult (*cuMemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
    CUresult (*cuStreamCreate)(CUstream*, unsigned int);
    CUresult (*cuStreamDestroy)(CUstream);
    CUresult (*cuStreamSynchronize)(CUstream);
    CUresult (*cuGetErrorName)(CUresult, const char**);
    CUresult (*cuGetErrorString)(CUresult, const char**);

    template <class F>
    void bind(F& fn, const char* name) {
        fn = reinterpret_cast<F>(dlsym(lib, name));
        if (!fn && error.empty()) error = std::string("libcuda.so.1 lacks ") + name + " (driver too old)";
    }

    DriverApi() {
        lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            error = "the CUDA driver library libcuda.so.1 cannot be loaded (no NVIDIA driver here)";
            return;
        }
        bind(cuInit, "cuInit");
        bind(cuDeviceGetCount, "cuDeviceGetCount");
        bind(cuDeviceGet, "cuDeviceGet");
        bind(cuDeviceGetName, "cuDeviceGetName");
        bind(cuDeviceGetAttribute, "cuDeviceGetAttribute");
        bind(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
        bind(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
        bind(cuCtxPushCurrent, "cuCtxPushCurrent_v2");
        bind(cuCtxPopCurrent, "cuCtxPopCurrent_v2");
        bind(cuModuleLoadData, "cuModuleLoadData");
        bind(cuModuleUnload, "cuModuleUnload");
        bind(cuModuleGetFunction, "cuModuleGetFunction");
        bind(cuLaunchKernel, "cuLaunchKernel");
        bind(cuMemAlloc, "cuMemAlloc_v2");
        bind(cuMemFree, "cuMemFree_v2");
        bind(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2");
        bind(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2");
        bind(cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2");
        bind(cuMemsetD8Async, "cuMemsetD8Async");
        bind(cuStreamCreate, "cuStreamCreate");
        bind(cuStreamDestroy, "cuStreamDestroy_v2");
        bind(cuStreamSynchronize, "cuStreamSynchronize");
        bind(cuGetErrorName, "cuGetErrorName");
        bind(cuGetErrorString, "cuGetErrorString");
        if (error.empty() && cuInit(0) != 0) error = "cuInit failed: the CUDA driver sees no usable device";
    }

    std::string describe(CUresult rc) const {
        const char *name = nullptr, *text = nullptr;
        if (cuGetErrorName) cuGetErrorName(rc, &name);
        if (cuGetErrorString) cuGetErrorString(rc, &text);
        return std::string(name ? name : "CUDA error ") + (name ? "" : std::to_string(rc)) + ": " +
               (text ? text : "unknown");
    }
};

#ifdef RR_CHECK_AGAINST_CUDA_H
#define RR_SAME(member, symbol) \
    static_assert(std::is_same_v<decltype(DriverApi::member), decltype(&::symbol)>, #symbol " differs from cuda.h");
RR_SAME(cuInit, cuInit)
RR_SAME(cuDeviceGetCount, cuDeviceGetCount)
RR_SAME(cuDeviceGet, cuDeviceGet)
RR_SAME(cuDeviceGetName, cuDeviceGetName)
RR_SAME(cuDeviceGetAttribute, cuDeviceGetAttribute)
RR_SAME(cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRetain)
RR_SAME(cuDevicePrimaryCtxRelease, cuDevicePrimaryCtxRelease_v2)
RR_SAME(cuCtxPushCurrent, cuCtxPushCurrent_v2)
RR_SAME(cuCtxPopCurrent, cuCtxPopCurrent_v2)
RR_SAME(cuModuleLoadData, cuModuleLoadData)
RR_SAME(cuModuleUnload, cuModuleUnload)
RR_SAME(cuModuleGetFunction, cuModuleGetFunction)
RR_SAME(cuLaunchKernel, cuLaunchKernel)
RR_SAME(cuMemAlloc, cuMemAlloc_v2)
RR_SAME(cuMemFree, cuMemFree_v2)
RR_SAME(cuMemcpyHtoDAsync, cuMemcpyHtoDAsync_v2)
RR_SAME(cuMemcpyDtoHAsync, cuMemcpyDtoHAsync_v2)
RR_SAME(cuMemcpyDtoDAsync, cuMemcpyDtoDAsync_v2)
RR_SAME(cuMemsetD8Async, cuMemsetD8Async)
RR_SAME(cuStreamCreate, cuStreamCreate)
RR_SAME(cuStreamDestroy, cuStreamDestroy_v2)
RR_SAME(cuStreamSynchronize, cuStreamSynchronize)
RR_SAME(cuGetErrorName, cuGetErrorName)
RR_SAME(cuGetErrorString, cuGetErrorString)
static_assert(kStreamNonBlocking == CU_STREAM_NON_BLOCKING, "stream flag");
static_assert(kAttrComputeMajor == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "attribute id");
static_assert(kAttrComputeMinor == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "attribute id");
#undef RR_SAME
#endif

// Loaded once per process, on first use (the library handle is never closed: the driver stays mapped).
const DriverApi& driver() {
    static const DriverApi api;
    if (!api.error.empty()) throw std::runtime_error(api.error + ".");
    return api;
}

void check(CUresult rc, const std::string& what) {
    if (rc != 0) throw std::runtime_error("CUDA: " + what + " failed (" + driver().describe(rc) + ").");
}

// Makes the device's primary context current for a scope and pops it on every exit path.
class ContextScope {
  public:
    explicit ContextScope(CUcontext ctx) { check(driver().cuCtxPushCurrent(ctx), "pushing the context"); }
    ~ContextScope() {
        CUcontext popped;
        driver().cuCtxPopCurrent(&popped);
    }
};

class DeviceLauncher {
  public:
    DeviceLauncher(CUmodule module, CUstream stream) : module_(module), stream_(stream) {
        const char* env = std::getenv("RERENDER_CUDA_SYNC_LAUNCHES");
        sync_each_ = env && env[0] == '1';
    }
    void* alloc(size_t bytes) {
        CUdeviceptr p = 0;
        check(driver().cuMemAlloc(&p, bytes), "allocating " + std::to_string(bytes) + " bytes of device memory");
        return reinterpret_cast<void*>(p);
    }
    void free(void* p) { driver().cuMemFree(reinterpret_cast<CUdeviceptr>(p)); }
    void memset(void* dst, int v, size_t n) {
        check(driver().cuMemsetD8Async(ptr(dst), (unsigned char)v, n, stream_), "memset");
    }
    void copy_h2d(void* dst, const void* src, size_t n) {
        check(driver().cuMemcpyHtoDAsync(ptr(dst), src, n, stream_), "copy to the device");
    }
    void copy_d2h(void* dst, const void* src, size_t n) {
        check(driver().cuMemcpyDtoHAsync(dst, ptr(src), n, stream_), "copy to the host");
    }
    void copy_d2d(void* dst, const void* src, size_t n) {
        check(driver().cuMemcpyDtoDAsync(ptr(dst), ptr(src), n, stream_), "device copy");
    }
    void sync() {
        const CUresult rc = driver().cuStreamSynchronize(stream_);
        if (rc != 0)
            throw std::runtime_error("CUDA: a kernel failed; the last one launched before the synchronisation was '" +
                                     last_ + "' (" + driver().describe(rc) +
                                     "; set RERENDER_CUDA_SYNC_LAUNCHES=1 to name the failing kernel exactly).");
    }

    template <class... P, class... A>
    void launch(void (*)(P...), const char* name, int w, int h, A... args) {
        std::tuple<P...> values(static_cast<P>(args)...);
        launch_tuple(function(name), name, w, h, values, std::index_sequence_for<P...>{});
    }

  private:
    static CUdeviceptr ptr(const void* p) { return reinterpret_cast<CUdeviceptr>(p); }

    CUfunction function(const char* name) {
        auto it = functions_.find(name);
        if (it != functions_.end()) return it->second;
        CUfunction f = nullptr;
        check(driver().cuModuleGetFunction(&f, module_, name), std::string("looking up kernel '") + name + "'");
        functions_.emplace(name, f);
        return f;
    }

    template <class Tuple, size_t... I>
    void launch_tuple(CUfunction f, const char* name, int w, int h, Tuple& values, std::index_sequence<I...>) {
        void* params[] = {(void*)&std::get<I>(values)...};
        const unsigned gx = (unsigned)((w + kBlock - 1) / kBlock), gy = (unsigned)((h + kBlock - 1) / kBlock);
        last_ = name;
        check(driver().cuLaunchKernel(f, gx, gy, 1, kBlock, kBlock, 1, 0, stream_, params, nullptr),
              std::string("launching kernel '") + name + "'");
        if (sync_each_) sync();
    }

    CUmodule module_;
    CUstream stream_;
    bool sync_each_ = false;
    std::string last_ = "(none)";
    std::unordered_map<std::string, CUfunction> functions_;
};

#undef RR_LAUNCH

}  // namespace

// -- entry points ----------------------------------------------------------------------------------------
void synthesize_kernels_host(const SynthInputs& in, const SynthConfig& cfg, SynthOutputs& out) {
    HostLauncher dev(cfg.threads);
    Pool<HostLauncher> pool(dev);
    KernelExec<HostLauncher> ex(dev, pool, in, cfg);
    run_schedule(ex, cfg, in.init_nnf != nullptr, in.init_nnf != nullptr && in.keep != nullptr);
    ex.finish(out);
}

std::vector<CudaDeviceInfo> cuda_devices() {
    const DriverApi& api = driver();
    int count = 0;
    check(api.cuDeviceGetCount(&count), "counting devices");
    std::vector<CudaDeviceInfo> out;
    for (int i = 0; i < count; ++i) {
        CUdevice d;
        check(api.cuDeviceGet(&d, i), "opening device " + std::to_string(i));
        CudaDeviceInfo info;
        char name[256] = {0};
        api.cuDeviceGetName(name, sizeof(name) - 1, d);
        info.name = name;
        api.cuDeviceGetAttribute(&info.major, (CUattribute)kAttrComputeMajor, d);
        api.cuDeviceGetAttribute(&info.minor, (CUattribute)kAttrComputeMinor, d);
        out.push_back(info);
    }
    return out;
}

struct CudaSynth::State {
    CUdevice device = 0;
    CUcontext context = nullptr;
    CUmodule module = nullptr;
    CUstream stream = nullptr;
    std::unique_ptr<DeviceLauncher> launcher;
    std::unique_ptr<Pool<DeviceLauncher>> pool;
};

CudaSynth::CudaSynth(int device, const std::string& module_image) : device_(device), state_(new State) {
    const DriverApi& api = driver();
    int count = 0;
    check(api.cuDeviceGetCount(&count), "counting devices");
    if (device < 0 || device >= count)
        throw std::invalid_argument("CUDA device " + std::to_string(device) + " does not exist; this machine has " +
                                    std::to_string(count) + " (use cuda:0 .. cuda:" + std::to_string(count - 1) +
                                    ").");
    check(api.cuDeviceGet(&state_->device, device), "opening device " + std::to_string(device));
    check(api.cuDevicePrimaryCtxRetain(&state_->context, state_->device), "retaining the primary context");
    try {
        ContextScope scope(state_->context);
        check(api.cuModuleLoadData(&state_->module, module_image.data()), "loading the compiled kernels");
        check(api.cuStreamCreate(&state_->stream, kStreamNonBlocking), "creating a stream");
        state_->launcher = std::make_unique<DeviceLauncher>(state_->module, state_->stream);
        state_->pool = std::make_unique<Pool<DeviceLauncher>>(*state_->launcher);
    } catch (...) {
        {
            ContextScope scope(state_->context);
            if (state_->stream) api.cuStreamDestroy(state_->stream);
            if (state_->module) api.cuModuleUnload(state_->module);
        }
        api.cuDevicePrimaryCtxRelease(state_->device);
        throw;
    }
}

CudaSynth::~CudaSynth() {
    const DriverApi& api = driver();
    {
        // Device memory, stream and module belong to the context: free them with it current.
        ContextScope scope(state_->context);
        api.cuStreamSynchronize(state_->stream);
        state_->pool.reset();
        state_->launcher.reset();
        api.cuStreamDestroy(state_->stream);
        api.cuModuleUnload(state_->module);
    }
    api.cuDevicePrimaryCtxRelease(state_->device);
}

uintptr_t CudaSynth::stream_handle() const { return reinterpret_cast<uintptr_t>(state_->stream); }

size_t CudaSynth::pooled_bytes() const { return state_->pool ? state_->pool->total() : 0; }

void CudaSynth::run(const SynthInputs& in, const SynthConfig& cfg, SynthOutputs& out) {
    std::lock_guard<std::mutex> lock(mutex_);
    ContextScope scope(state_->context);
    try {
        KernelExec<DeviceLauncher> ex(*state_->launcher, *state_->pool, in, cfg);
        run_schedule(ex, cfg, in.init_nnf != nullptr, in.init_nnf != nullptr && in.keep != nullptr);
        ex.finish(out);
    } catch (...) {
        // Leave the stream idle so the pool can be reused (or freed) safely after the error.
        driver().cuStreamSynchronize(state_->stream);
        throw;
    }
    ++frames_;
}

}  // namespace rr
