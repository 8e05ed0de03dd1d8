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

float LoadAsF32(DType src, const unsigned char* p, size_t i) {
  switch (src) {
    case DType::kF16: return F16ToF32(Load<uint16_t>(p, i));
    case DType::kBF16: return Bf16ToF32(Load<uint16_t>(p, i));
    case DType::kF32: return Load<float>(p, i);
    case DType::kF64: return static_cast<float>(Load<double>(p, i));
    default: assert(false); return 0.0f;
  }
}

}  // namespace

float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  if (exp == 0x1F) return FloatOf(sign | 0x7F800000 | (mant << 13));  // inf / NaN (payload kept)
  if (exp != 0) return FloatOf(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return FloatOf(sign);
  // Subnormal half: mant * 2^-24, exact in float.
  float magnitude = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

uint16_t F32ToF16(float value) {
  uint32_t x = BitsOf(value);
  auto sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  x &= 0x7FFFFFFF;
  if (x > 0x7F800000) return sign | 0x7E00;  // NaN
  if (x >= 0x477FF000) return sign | 0x7C00;  // >= 65520 rounds to infinity (and inf itself)
  if (x < 0x38800000) {
    // Below 2^-14: half subnormal. Adding 0.5f lines the float's ulp up with
    // the half subnormal ulp (2^-24), so the FPU's own round-to-nearest-even
    // produces the result in the low mantissa bits.
    float shifted = FloatOf(x) + 0.5f;
    return sign | static_cast<uint16_t>(BitsOf(shifted) - 0x3F000000);
  }
  uint32_t odd = (x >> 13) & 1;
  x += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFF + odd;
  return sign | static_cast<uint16_t>(x >> 13);
}

float Bf16ToF32(uint16_t bits) { return FloatOf(static_cast<uint32_t>(bits) << 16); }

uint16_t F32ToBf16(float value) {
  uint32_t x = BitsOf(value);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return 0x7FC0;  // NaN, as c10::BFloat16 writes it
  uint32_t rounding_bias = 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>((x + rounding_bias) >> 16);
}

void CastFloats(DType src, const void* src_bytes, DType dst, void* dst_bytes, size_t count) {
  assert(IsCastableFloat(src) && IsCastableFloat(dst));
  const auto* in = static_cast<const unsigned char*>(src_bytes);
  auto* out = static_cast<unsigned char*>(dst_bytes);
  if (src == dst) {
    std::memcpy(out, in, count * static_cast<size_t>(DTypeBits(src) / 8));
    return;
  }
  switch (dst) {
    case DType::kF64:
      for (size_t i = 0; i < count; ++i) Store<double>(out, i, static_cast<double>(LoadAsF32(src, in, i)));
      return;
    case DType::kF32:
      for (size_t i = 0; i < count; ++i) Store<float>(out, i, LoadAsF32(src, in, i));
      return;
    case DType::kBF16:
      if (src == DType::kF32) {  // the common case, kept free of the switch
        for (size_t i = 0; i < count; ++i) Store<uint16_t>(out, i, F32ToBf16(Load<float>(in, i)));
        return;
      }
      for (size_t i = 0; i < count; ++i) Store<uint16_t>(out, i, F32ToBf16(LoadAsF32(src, in, i)));
      return;
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) Store<uint16_t>(out, i, F32ToF16(LoadAsF32(src, in, i)));
      return;
    default:
      assert(false);
  }
}

}  // namespace hoist
