// One grid-stride kernel per (source, destination) pair, each element
// converted through float with the shared conversions (convert.h). Casting
// is memory-bound and the chunks it sees are tens of MiB, so the simple form
// runs far above the PCIe copy that feeds it.
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

template <typename In, typename Out, typename Load, typename Store>
cudaError_t Launch(const void* src, void* dst, uint64_t count, cudaStream_t stream) {
  constexpr unsigned kThreads = 256;
  const uint64_t blocks = (count + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 8192 ? blocks : 8192);
  CastKernel<In, Out, Load, Store>
      <<<grid, kThreads, 0, stream>>>(static_cast<const In*>(src), static_cast<Out*>(dst), count);
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

}  // namespace

cudaError_t CastKernelUsable() {
  cudaFuncAttributes attributes;
  return cudaFuncGetAttributes(&attributes, CastKernel<uint16_t, float, FromBf16, ToF32>);
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
