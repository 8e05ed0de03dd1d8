#include "cast/cast.h"

#include <cassert>
#include <cstring>

namespace hoist {
namespace {

uint32_t BitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FloatOf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Loads element i of a possibly unaligned array as float (or double).
template <typename T>
T Load(const unsigned char* p, size_t i) {
  T v;
  std::memcpy(&v, p + i * sizeof(T), sizeof(T));
  return v;
}
template <typename T>
void Store(unsigned char* p, size_t i, T v) {
  std::memcpy(p + i * sizeof(T), &v, sizeof(T));
}

}  // namespace

// The conversions below compute every case and select one at the end, with
// no branches, so that the loops calling them vectorize.

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  const uint32_t inf_nan = sign | 0x7F800000 | (mant << 13);  // payload kept
  const uint32_t normal = sign | ((exp + 112) << 23) | (mant << 13);
  // Subnormal (and zero): mant * 2^-24, exact in float.
  const uint32_t subnormal = sign | BitsOf(static_cast<float>(mant) * 5.9604644775390625e-8f);
  return FloatOf(exp == 0x1F ? inf_nan : exp != 0 ? normal : subnormal);
}

uint16_t F32ToF16(float value) {
  const uint32_t bits = BitsOf(value);
  const uint32_t sign = (bits >> 16) & 0x8000;
  const uint32_t x = bits & 0x7FFFFFFF;
  // Normal halves: rebias the exponent and round the mantissa to nearest even.
  const uint32_t normal = (x + (static_cast<uint32_t>(15 - 127) << 23) + 0xFFF + ((x >> 13) & 1)) >> 13;
  // Below 2^-14: half subnormal. Adding 0.5f lines the float's ulp up with
  // the half subnormal ulp (2^-24), so the FPU's own round-to-nearest-even
  // leaves the result in the low mantissa bits.
  const uint32_t subnormal = BitsOf(FloatOf(x) + 0.5f) - 0x3F000000;
  const uint32_t magnitude = x > 0x7F800000    ? 0x7E00u      // NaN
                             : x >= 0x477FF000 ? 0x7C00u      // >= 65520 rounds to infinity (and inf itself)
                             : x < 0x38800000  ? subnormal
                                               : normal;
  return static_cast<uint16_t>(sign | magnitude);
}

float Bf16ToF32(uint16_t bits) { return FloatOf(static_cast<uint32_t>(bits) << 16); }

uint16_t F32ToBf16(float value) {
  const uint32_t x = BitsOf(value);
  const uint32_t rounded = (x + 0x7FFF + ((x >> 16) & 1)) >> 16;
  // NaN becomes 0x7FC0, as c10::BFloat16 writes it.
  return static_cast<uint16_t>((x & 0x7FFFFFFF) > 0x7F800000 ? 0x7FC0u : rounded);
}

namespace {

// One loop per (source, destination) pair, each element converted through
// float: small bodies without a per-element switch or call, which the
// compiler vectorizes (this file is built with -O3).
template <typename In, typename Out, typename Convert>
void CastLoop(const unsigned char* in, unsigned char* out, size_t count, Convert convert) {
  for (size_t i = 0; i < count; ++i) Store<Out>(out, i, convert(Load<In>(in, i)));
}

template <typename In, typename ToF32>
void CastFrom(DType dst, const unsigned char* in, unsigned char* out, size_t count, ToF32 to_f32) {
  switch (dst) {
    case DType::kF64:
      CastLoop<In, double>(in, out, count, [&](In v) { return static_cast<double>(to_f32(v)); });
      return;
    case DType::kF32:
      CastLoop<In, float>(in, out, count, [&](In v) { return to_f32(v); });
      return;
    case DType::kBF16:
      CastLoop<In, uint16_t>(in, out, count, [&](In v) { return F32ToBf16(to_f32(v)); });
      return;
    case DType::kF16:
      CastLoop<In, uint16_t>(in, out, count, [&](In v) { return F32ToF16(to_f32(v)); });
      return;
    default:
      assert(false);
  }
}

}  // namespace

void CastFloats(DType src, const void* src_bytes, DType dst, void* dst_bytes, size_t count) {
  assert(IsCastableFloat(src) && IsCastableFloat(dst));
  const auto* in = static_cast<const unsigned char*>(src_bytes);
  auto* out = static_cast<unsigned char*>(dst_bytes);
  if (src == dst) {
    std::memcpy(out, in, count * static_cast<size_t>(DTypeBits(src) / 8));
    return;
  }
  switch (src) {
    // Lambdas, not function pointers, so each loop inlines its conversion.
    case DType::kF16: return CastFrom<uint16_t>(dst, in, out, count, [](uint16_t v) { return F16ToF32(v); });
    case DType::kBF16: return CastFrom<uint16_t>(dst, in, out, count, [](uint16_t v) { return Bf16ToF32(v); });
    case DType::kF32: return CastFrom<float>(dst, in, out, count, [](float v) { return v; });
    case DType::kF64: return CastFrom<double>(dst, in, out, count, [](double v) { return static_cast<float>(v); });
    default: assert(false);
  }
}

}  // namespace hoist
