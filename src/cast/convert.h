// The scalar float conversions behind every cast hoist makes, written once
// for the host (src/cast/cast.cc) and the GPU (the CUDA backend's cast
// kernel), so a tensor cast on a device is bit-identical to the same tensor
// cast on the CPU: round to nearest even; NaN stays NaN (BF16 NaN becomes
// 0x7FC0 and F16 NaN sign|0x7E00, as c10 writes them); infinities stay;
// overflow becomes infinity.
//
// Every case is computed and one is selected at the end, with no branches,
// so that host loops calling these vectorize and GPU threads do not diverge.
// Plain C++ with no dependencies; in a CUDA translation unit the functions
// are __host__ __device__.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HOIST_HD __host__ __device__ __forceinline__
#else
#define HOIST_HD inline
#endif

namespace hoist::convert {

// The bits of a value as another type of the same size (std::bit_cast,
// which device code cannot call). memcpy of a register-sized value compiles
// to a move on both sides.
template <typename To, typename From>
HOIST_HD To BitCast(From from) {
  static_assert(sizeof(To) == sizeof(From), "BitCast needs types of one size");
  To to;
  __builtin_memcpy(&to, &from, sizeof(To));
  return to;
}
HOIST_HD uint32_t BitsOf(float f) { return BitCast<uint32_t>(f); }
HOIST_HD float FloatOf(uint32_t u) { return BitCast<float>(u); }
HOIST_HD uint64_t BitsOf(double d) { return BitCast<uint64_t>(d); }
HOIST_HD double DoubleOf(uint64_t u) { return BitCast<double>(u); }

// a + b rounded to nearest even, never contracted or flushed.
HOIST_HD float AddRn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

HOIST_HD float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  // A NaN keeps its sign and payload and becomes quiet, as x86's F16C
  // conversion (and the F64/F32 rules below) do.
  const uint32_t inf_nan = sign | 0x7F800000 | (mant << 13) | (static_cast<uint32_t>(mant != 0) << 22);
  const uint32_t normal = sign | ((exp + 112) << 23) | (mant << 13);
  // Subnormal (and zero): mant * 2^-24, exact in float.
  const uint32_t subnormal = sign | BitsOf(static_cast<float>(mant) * 5.9604644775390625e-8f);
  return FloatOf(exp == 0x1F ? inf_nan : exp != 0 ? normal : subnormal);
}

HOIST_HD uint16_t F32ToF16(float value) {
  const uint32_t bits = BitsOf(value);
  const uint32_t sign = (bits >> 16) & 0x8000;
  const uint32_t x = bits & 0x7FFFFFFF;
  // Normal halves: rebias the exponent and round the mantissa to nearest even.
  const uint32_t normal = (x + (static_cast<uint32_t>(15 - 127) << 23) + 0xFFF + ((x >> 13) & 1)) >> 13;
  // Below 2^-14: half subnormal. Adding 0.5f lines the float's ulp up with
  // the half subnormal ulp (2^-24), so the FPU's own round-to-nearest-even
  // leaves the result in the low mantissa bits.
  const uint32_t subnormal = BitsOf(AddRn(FloatOf(x), 0.5f)) - 0x3F000000;
  const uint32_t magnitude = x > 0x7F800000    ? 0x7E00u  // NaN
                             : x >= 0x477FF000 ? 0x7C00u  // >= 65520 rounds to infinity (and inf itself)
                             : x < 0x38800000  ? subnormal
                                               : normal;
  return static_cast<uint16_t>(sign | magnitude);
}

HOIST_HD float Bf16ToF32(uint16_t bits) { return FloatOf(static_cast<uint32_t>(bits) << 16); }

HOIST_HD uint16_t F32ToBf16(float value) {
  const uint32_t x = BitsOf(value);
  const uint32_t rounded = (x + 0x7FFF + ((x >> 16) & 1)) >> 16;
  // NaN becomes 0x7FC0, as c10::BFloat16 writes it.
  return static_cast<uint16_t>((x & 0x7FFFFFFF) > 0x7F800000 ? 0x7FC0u : rounded);
}

// F64 -> F32 rounds to nearest even. A NaN keeps its sign and the top of its
// payload and becomes quiet, which is what x86's conversion (and so PyTorch's
// CPU cast) writes; the GPU's own conversion would write one canonical NaN.
// F64 -> F16/BF16 goes through F32, as c10::Half and c10::BFloat16 are
// constructed from float.
HOIST_HD float F64ToF32(double v) {
  const uint64_t bits = BitsOf(v);
  const bool nan = (bits & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull;
  const uint32_t nan_bits = static_cast<uint32_t>(bits >> 32 & 0x80000000u) | 0x7FC00000u |
                            static_cast<uint32_t>(bits >> 29 & 0x7FFFFFu);
#ifdef __CUDA_ARCH__
  const float converted = __double2float_rn(v);
#else
  const float converted = static_cast<float>(v);
#endif
  return nan ? FloatOf(nan_bits) : converted;
}

// F32 -> F64 is exact; a NaN keeps its sign and payload and becomes quiet,
// as on x86.
HOIST_HD double F32ToF64(float v) {
  const uint32_t bits = BitsOf(v);
  const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  const uint64_t nan_bits = static_cast<uint64_t>(bits & 0x80000000u) << 32 | 0x7FF8000000000000ull |
                            static_cast<uint64_t>(bits & 0x7FFFFFu) << 29;
  return nan ? DoubleOf(nan_bits) : static_cast<double>(v);
}

}  // namespace hoist::convert
