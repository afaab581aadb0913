// The kernel executor of the search-vote schedule (synth_driver.h): the kernels of native/cuda/synth_kernels.cu
// sequenced by the one schedule, on a CUDA device (CudaSynth) or, compiled as host code, on the CPU
// (synthesize_kernels_host, which CI compares with the CPU executor frame for frame).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "synth_cpu.h"

namespace rr {

// The kernels run as host code over the same schedule and buffers as on the device.
void synthesize_kernels_host(const SynthInputs& in, const SynthConfig& cfg, SynthOutputs& out);

struct CudaDeviceInfo {
    std::string name;
    int major = 0, minor = 0;
};

// Devices the CUDA driver sees; throws std::runtime_error with a sentence when the driver cannot be used.
std::vector<CudaDeviceInfo> cuda_devices();

// One propagation chain on one device: its own non-blocking stream (so it never waits for torch's legacy
// default stream or another chain), its module (the compiled kernels), and a pool of device buffers that
// grows to the largest frame seen and is reused by every later frame. All driver calls run with the device's
// primary context (the one torch uses) pushed, and pop it again on every path, exceptions included.
class CudaSynth {
  public:
    CudaSynth(int device, const std::string& module_image);
    ~CudaSynth();
    CudaSynth(const CudaSynth&) = delete;
    CudaSynth& operator=(const CudaSynth&) = delete;

    void run(const SynthInputs& in, const SynthConfig& cfg, SynthOutputs& out);
    int device() const { return device_; }
    uintptr_t stream_handle() const;
    size_t pooled_bytes() const;
    int64_t frames() const { return frames_; }

    struct State;

  private:
    int device_;
    int64_t frames_ = 0;
    std::unique_ptr<State> state_;
    std::mutex mutex_;  // one chain per object; the lock only guards misuse from two threads
};

}  // namespace rr
