// One grid-stride kernel per (source, destination) pair, each element
// converted through float with the shared conversions (convert.h). Casting
// is memory-bound: where both buffers are aligned for it, each thread loads
// 16 bytes of input at once and stores its outputs together (the loader's
// chunks always are); otherwise one element per thread. The kernel runs on
// a cast stream of its own, so the copy engine moves the next chunks while
// it runs.
#include "backends/cuda/cast_kernel.h"

#include "cast/convert.h"

namespace hoist::cuda {
namespace {

struct FromF16 {
  __device__ float operator()(uint16_t v) const { return convert::F16ToF32(v); }
};
struct FromBf16 {
  __device__ float operator()(uint16_t v) const { return convert::Bf16ToF32(v); }
};
struct FromF32 {
  __device__ float operator()(float v) const { return v; }
};
struct FromF64 {
  __device__ float operator()(double v) const { return convert::F64ToF32(v); }
};
struct ToF16 {
  __device__ uint16_t operator()(float v) const { return convert::F32ToF16(v); }
};
struct ToBf16 {
  __device__ uint16_t operator()(float v) const { return convert::F32ToBf16(v); }
};
struct ToF32 {
  __device__ float operator()(float v) const { return v; }
};
struct ToF64 {
  __device__ double operator()(float v) const { return convert::F32ToF64(v); }
};

template <typename In, typename Out, typename Load, typename Store>
__global__ void CastKernel(const In* __restrict__ in, Out* __restrict__ out, uint64_t count) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    out[i] = Store{}(Load{}(in[i]));
  }
}

// N elements, moved as one aligned access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// The same in groups of N = 16 / sizeof(In) elements (16-byte loads);
// REQUIRES: in and out aligned to their Vec sizes. The last count % N
// elements are left to the scalar kernel.
template <typename In, typename Out, typename Load, typename Store>
__global__ void CastKernelVec(const In* __restrict__ in, Out* __restrict__ out, uint64_t groups) {
  constexpr int N = 16 / sizeof(In);
  const auto* vin = reinterpret_cast<const Vec<In, N>*>(in);
  auto* vout = reinterpret_cast<Vec<Out, N>*>(out);
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t g = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const Vec<In, N> a = vin[g];
    Vec<Out, N> b;
#pragma unroll
    for (int k = 0; k < N; ++k) b.v[k] = Store{}(Load{}(a.v[k]));
    vout[g] = b;
  }
}

unsigned GridFor(uint64_t work, unsigned threads) {
  const uint64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 8192 ? blocks : 8192);
}

template <typename In, typename Out, typename Load, typename Store>
cudaError_t Launch(const void* src, void* dst, uint64_t count, cudaStream_t stream) {
  constexpr unsigned kThreads = 256;
  constexpr int N = 16 / sizeof(In);
  const auto* in = static_cast<const In*>(src);
  auto* out = static_cast<Out*>(dst);
  uint64_t done = 0;
  if (reinterpret_cast<uintptr_t>(src) % sizeof(Vec<In, N>) == 0 &&
      reinterpret_cast<uintptr_t>(dst) % sizeof(Vec<Out, N>) == 0 && count >= static_cast<uint64_t>(N)) {
    const uint64_t groups = count / N;
    CastKernelVec<In, Out, Load, Store><<<GridFor(groups, kThreads), kThreads, 0, stream>>>(in, out, groups);
    done = groups * N;
  }
  if (done < count) {
    CastKernel<In, Out, Load, Store>
        <<<GridFor(count - done, kThreads), kThreads, 0, stream>>>(in + done, out + done, count - done);
  }
  return cudaGetLastError();
}

template <typename In, typename Load>
cudaError_t LaunchFrom(const void* src, FloatType to, void* dst, uint64_t count, cudaStream_t stream) {
  switch (to) {
    case FloatType::kF16: return Launch<In, uint16_t, Load, ToF16>(src, dst, count, stream);
    case FloatType::kBF16: return Launch<In, uint16_t, Load, ToBf16>(src, dst, count, stream);
    case FloatType::kF32: return Launch<In, float, Load, ToF32>(src, dst, count, stream);
    case FloatType::kF64: return Launch<In, double, Load, ToF64>(src, dst, count, stream);
    default: return cudaErrorInvalidValue;
  }
}

// Loads both kernels (scalar and vector) of every cast from In.
template <typename In, typename Load>
cudaError_t LoadKernelsFrom() {
  cudaFuncAttributes attributes;
  const void* kernels[] = {
      reinterpret_cast<const void*>(CastKernel<In, uint16_t, Load, ToF16>),
      reinterpret_cast<const void*>(CastKernelVec<In, uint16_t, Load, ToF16>),
      reinterpret_cast<const void*>(CastKernel<In, uint16_t, Load, ToBf16>),
      reinterpret_cast<const void*>(CastKernelVec<In, uint16_t, Load, ToBf16>),
      reinterpret_cast<const void*>(CastKernel<In, float, Load, ToF32>),
      reinterpret_cast<const void*>(CastKernelVec<In, float, Load, ToF32>),
      reinterpret_cast<const void*>(CastKernel<In, double, Load, ToF64>),
      reinterpret_cast<const void*>(CastKernelVec<In, double, Load, ToF64>),
  };
  for (const void* kernel : kernels) {
    if (cudaError_t err = cudaFuncGetAttributes(&attributes, kernel); err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

// CUDA 12 and later load a kernel lazily, at its first launch, which may
// synchronize the context: in the middle of a load's copies. Asking for each
// kernel's attributes loads them all now, before the load streams, and
// fails here, not mid-load, where they cannot run on this GPU.
cudaError_t CastKernelUsable() {
  cudaError_t err = LoadKernelsFrom<uint16_t, FromF16>();
  if (err == cudaSuccess) err = LoadKernelsFrom<uint16_t, FromBf16>();
  if (err == cudaSuccess) err = LoadKernelsFrom<float, FromF32>();
  if (err == cudaSuccess) err = LoadKernelsFrom<double, FromF64>();
  return err;
}

cudaError_t LaunchCast(FloatType from, const void* src, FloatType to, void* dst, uint64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  switch (from) {
    case FloatType::kF16: return LaunchFrom<uint16_t, FromF16>(src, to, dst, count, stream);
    case FloatType::kBF16: return LaunchFrom<uint16_t, FromBf16>(src, to, dst, count, stream);
    case FloatType::kF32: return LaunchFrom<float, FromF32>(src, to, dst, count, stream);
    case FloatType::kF64: return LaunchFrom<double, FromF64>(src, to, dst, count, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace hoist::cuda
