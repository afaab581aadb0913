// Host build of native/cuda/synth_kernels.cu: the CUDA built-ins the kernels use, mapped to host code so the
// same kernel bodies run on the CPU (HostLauncher in synth_kernels_exec.cpp sets the indices per pixel).
#pragma once

#ifndef __CUDACC__
#include <algorithm>

namespace rr_kernels {
struct HostDim3 {
    unsigned int x = 0, y = 0, z = 0;
};
// One set per OpenMP thread: a host "launch" walks the grid, each thread setting the indices it runs.
inline thread_local HostDim3 threadIdx, blockIdx, blockDim;
using std::max;
using std::min;
inline int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_RELAXED); }
}  // namespace rr_kernels

#define __global__ inline
#define __device__
#define __forceinline__ inline
#endif
