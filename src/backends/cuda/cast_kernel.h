// The GPU cast: converts floats already in device memory, on a stream, with
// the conversions of src/cast/convert.h, so the result is bit-identical to
// the host's CastFloats of the same bytes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace hoist::cuda {

// The castable types. (The kernel is C++17 and sees none of the core's
// headers, so not hoist::DType.)
enum class FloatType : uint8_t { kF16, kBF16, kF32, kF64 };

// Queues a cast of `count` elements from `src` (type `from`) to `dst` (type
// `to`) on `stream` and returns the launch's error. REQUIRES: the types
// differ; src and dst are device pointers aligned to their element sizes and
// do not overlap.
cudaError_t LaunchCast(FloatType from, const void* src, FloatType to, void* dst, uint64_t count,
                       cudaStream_t stream);

// cudaSuccess when the current device can run the kernels (the build holds
// code its architecture can use), else the error that says why not.
cudaError_t CastKernelUsable();

}  // namespace hoist::cuda
