// The CUDA backend: one hoist::Device per visible GPU, and a probe that
// measures what a load on each GPU can expect (host-to-device bandwidth,
// cudaMalloc cost, host pinning cost).
//
// Lives in its own library (hoist_cuda), built only when the CUDA toolkit is
// found; this header names no CUDA type, so code that includes it compiles
// without the toolkit's headers. The runtime is linked statically: a binary
// runs on machines with a driver and no toolkit, and on machines with neither,
// where it simply finds zero GPUs.
//
// Devices: each CUDA device makes its GPU current (cudaSetDevice) at the start
// of every call, so it may be used from any thread, and makes the calling
// thread's previous context current again at its end: a caller with a
// current context (PyTorch after its first CUDA call) keeps it, so its
// current device is as it was. A thread with none is left with none, but the
// runtime may remember the device last set on it (cudaGetDevice), which
// hoist cannot undo without creating a context. Copies go to one
// non-blocking copy stream per device, created on first use, in the order the
// calls are made; casts to a second stream that waits for the copies issued
// before each cast, so the copy engine goes on while a kernel runs; events
// mark a point after both. Every CUDA failure becomes a one-line Status that
// names the device ("cuda:N"), the call and the CUDA error: kOutOfMemory for
// cudaErrorMemoryAllocation, kDevice otherwise. Free and FreePinned cannot
// return a Status; a failure there is reported on stderr.
//
// REQUIRES: every Event and DeviceMemory of a CUDA device
// dies before the device (that is, before its DeviceRegistry).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hoist/device.h"
#include "hoist/status.h"

namespace hoist {

// Adds one Device per visible GPU (cuda:0, cuda:1, ...) to `registry` and sets
// `*count_out` to how many. No GPU, no driver, or a driver too old for this
// runtime is not an error: the count is 0 and CudaUnavailableReason() says
// why. Creates no CUDA context (that happens on a device's first use), so it
// is cheap. Fails (kDevice) only when a GPU is visible but cannot be queried.
// REQUIRES: registry != nullptr, count_out != nullptr.
Status RegisterCudaDevices(DeviceRegistry* registry, int* count_out);

// Why no GPU is usable, as one line (for example "cudaGetDeviceCount returned
// cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA
// runtime version"); empty when at least one GPU is visible.
std::string CudaUnavailableReason();

// What `hoist probe` measures on one GPU. Rates are decimal GB/s (1e9 bytes per
// second); times are microseconds per call, the median of several calls. A
// figure that could not be measured (a 1 GiB cudaMalloc on a GPU with less
// free memory than that) is 0.
struct CudaProbe {
  int index = 0;     // N of cuda:N
  std::string name;  // as cudaGetDeviceProperties reports it, e.g. "NVIDIA H200"
  uint64_t free_bytes = 0, total_bytes = 0;  // before the probe allocates anything
  double h2d_pinned_gbps = 0;    // cudaMemcpyAsync from cudaHostAlloc'd memory, 256 MiB
  double h2d_pageable_gbps = 0;  // the same from ordinary malloc'd memory
  double pin_gbps = 0;           // cudaHostRegister of 256 MiB of touched malloc'd memory; 0: refused
  double pinned_alloc_gbps = 0;  // cudaHostAlloc of 256 MiB (portable), as the staging ring allocates
  double malloc_us_1mib = 0, malloc_us_64mib = 0, malloc_us_1gib = 0;  // one cudaMalloc
};

// Probes every visible GPU in turn, a few seconds each. Zero GPUs (see
// RegisterCudaDevices) gives an empty list, not an error. Allocates up to
// about 1.3 GiB on each GPU and 512 MiB of host memory, and returns all of it.
Result<std::vector<CudaProbe>> ProbeCudaDevices();

}  // namespace hoist
