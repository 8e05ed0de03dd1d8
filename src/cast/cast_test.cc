#include "cast/cast.h"
#include "testing/cast_inputs.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include <gtest/gtest.h>

namespace hoist {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Reference: the exact value of a half, computed in double from its fields.
double HalfValue(uint16_t h) {
  int exp = (h >> 10) & 0x1F;
  int mant = h & 0x3FF;
  double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  if (exp == 31) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  return sign * std::ldexp(1024 + mant, exp - 25);
}

TEST(CastTest, HalfToFloatIsExactForEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = F16ToF32(static_cast<uint16_t>(h));
    double want = HalfValue(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      // Quiet, with the half's sign and payload, as F16C writes it.
      EXPECT_EQ(Bits(f), (h & 0x8000u) << 16 | 0x7FC00000u | (h & 0x3FFu) << 13) << h;
    } else {
      EXPECT_EQ(static_cast<double>(f), want) << h;
      EXPECT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    }
  }
}

TEST(CastTest, FloatToHalfRoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    uint16_t half = static_cast<uint16_t>(h);
    float f = F16ToF32(half);
    if (std::isnan(f)) {
      EXPECT_EQ(F32ToF16(f) & 0x7E00, 0x7E00) << h;  // still a (quiet) NaN
      continue;
    }
    EXPECT_EQ(F32ToF16(f), half) << h;
  }
}

// Brute-force reference: the nearest half by exact comparison, ties to even.
uint16_t NearestHalf(float x) {
  if (std::isnan(x)) return 0x7E00;
  uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  double a = std::fabs(static_cast<double>(x));
  if (a >= 65520.0) return sign | 0x7C00;
  uint16_t best = 0;
  double best_err = INFINITY;
  // Binary search over the monotone positive halves 0..0x7BFF.
  uint16_t lo = 0, hi = 0x7BFF;
  while (hi - lo > 1) {
    uint16_t mid = static_cast<uint16_t>((lo + hi) / 2);
    if (HalfValue(mid) <= a) lo = mid; else hi = mid;
  }
  for (uint16_t c : {lo, hi}) {
    double err = std::fabs(HalfValue(c) - a);
    if (err < best_err || (err == best_err && (c & 1) == 0)) best = c, best_err = err;
  }
  return sign | best;
}

TEST(CastTest, FloatToHalfMatchesNearestEvenOnRandomFloats) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> any;
  for (int i = 0; i < 200000; ++i) {
    // Bias exponents into and around the half range so ties and subnormals occur.
    uint32_t bits = any(rng);
    uint32_t exp = 100 + (bits % 50);  // 2^-27 .. 2^22
    uint32_t u = (bits & 0x807FFFFF) | (exp << 23);
    if (i % 4 == 0) u &= 0xFFFFE000 | 0x00001000;  // exact ties at the half mantissa boundary
    float x = FromBits(u);
    ASSERT_EQ(F32ToF16(x), NearestHalf(x)) << std::hex << u;
  }
}

TEST(CastTest, FloatToHalfSpecials) {
  EXPECT_EQ(F32ToF16(INFINITY), 0x7C00);
  EXPECT_EQ(F32ToF16(-INFINITY), 0xFC00);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(F32ToF16(65519.99f), 0x7BFF);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7C00);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp -> 2 (even)
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::quiet_NaN()), 0xFE00);
}

TEST(CastTest, FloatToBf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3F80);
  EXPECT_EQ(F32ToBf16(FromBits(0x3F808000)), 0x3F80);  // tie, even stays
  EXPECT_EQ(F32ToBf16(FromBits(0x3F818000)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(F32ToBf16(FromBits(0x3F808001)), 0x3F81);  // above tie
  EXPECT_EQ(F32ToBf16(FromBits(0x7F7FFFFF)), 0x7F80);  // max float overflows to inf
  EXPECT_EQ(F32ToBf16(INFINITY), 0x7F80);
  EXPECT_EQ(F32ToBf16(-INFINITY), 0xFF80);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  EXPECT_EQ(F32ToBf16(FromBits(0x7F800001)), 0x7FC0);  // signalling NaN stays NaN
  EXPECT_EQ(F32ToBf16(FromBits(0x00010000)), 0x0001);  // subnormals are kept
}

TEST(CastTest, Bf16RoundTripsThroughFloat) {
  for (uint32_t b = 0; b < 65536; ++b) {
    float f = Bf16ToF32(static_cast<uint16_t>(b));
    EXPECT_EQ(Bits(f), b << 16);
    if (!std::isnan(f)) {
      EXPECT_EQ(F32ToBf16(f), b);
    }
  }
}

TEST(CastTest, CastFloatsHandlesUnalignedBuffersAndAllPairs) {
  const float values[] = {0.0f, -0.0f, 1.0f, -2.5f, 3.14159f, 1e-6f, 65504.0f, 1e30f, INFINITY,
                          std::numeric_limits<float>::quiet_NaN()};
  const size_t n = sizeof(values) / sizeof(values[0]);
  const DType types[] = {DType::kF16, DType::kBF16, DType::kF32, DType::kF64};
  for (DType src : types) {
    for (DType dst : types) {
      size_t src_elem = static_cast<size_t>(DTypeBits(src) / 8), dst_elem = static_cast<size_t>(DTypeBits(dst) / 8);
      // Encode the values in src at an odd offset, cast to an odd offset of dst.
      std::vector<unsigned char> in(1 + n * src_elem), out(3 + n * dst_elem);
      for (size_t i = 0; i < n; ++i) CastFloats(DType::kF32, &values[i], src, in.data() + 1 + i * src_elem, 1);
      CastFloats(src, in.data() + 1, dst, out.data() + 3, n);
      for (size_t i = 0; i < n; ++i) {
        float through_src, got;
        CastFloats(src, in.data() + 1 + i * src_elem, DType::kF32, &through_src, 1);
        CastFloats(dst, out.data() + 3 + i * dst_elem, DType::kF32, &got, 1);
        // Casting src->dst equals casting src's value to dst through f32.
        float want;
        std::vector<unsigned char> tmp(dst_elem);
        CastFloats(DType::kF32, &through_src, dst, tmp.data(), 1);
        CastFloats(dst, tmp.data(), DType::kF32, &want, 1);
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(got));
        } else {
          EXPECT_EQ(Bits(got), Bits(want)) << DTypeName(src) << "->" << DTypeName(dst) << " value " << values[i];
        }
      }
    }
  }
}

// CastFloats runs the AVX2 build of the loops where the CPU has AVX2; the
// baseline build must give the same bits for every pair (testing/cast_inputs.h).
TEST(CastTest, BaselineAndAvx2BuildsAgreeBitForBit) {
  const hoist::testing::CastInputs inputs;
  for (const auto& s : inputs.Sources()) {
    for (DType to : {DType::kF16, DType::kBF16, DType::kF32, DType::kF64}) {
      const size_t bytes = s.count * static_cast<size_t>(DTypeBits(to) / 8);
      std::vector<unsigned char> a(bytes), b(bytes);
      CastFloats(s.type, s.data, to, a.data(), s.count);
      CastFloatsBaseline(s.type, s.data, to, b.data(), s.count);
      EXPECT_EQ(a, b) << DTypeName(s.type) << " -> " << DTypeName(to);
    }
  }
}

TEST(CastTest, DoubleGoesThroughFloatLikeC10) {
  // 1 + 2^-8 + 2^-30 in double: straight to bf16 it would round up (above the
  // tie); through float the 2^-30 is lost first and the tie rounds to even.
  double d = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30);
  uint16_t out;
  CastFloats(DType::kF64, &d, DType::kBF16, &out, 1);
  EXPECT_EQ(out, F32ToBf16(static_cast<float>(d)));
  EXPECT_EQ(out, 0x3F80);
}

TEST(CastTest, DoubleFloatNaNsKeepSignAndPayloadAsX86Does) {
  // The bitwise NaN rule in convert.h (which the GPU kernel shares) must
  // write what the host's own conversion writes, payload and sign included.
  const uint64_t nans[] = {0x7FF8000000000000ull, 0xFFF8000000000000ull, 0x7FF0000000000001ull,
                           0x7FF4000000000000ull, 0xFFFFFFFFFFFFFFFFull, 0x7FF00000E0000000ull,
                           0x7FFABCDEF1234567ull};
  for (uint64_t n : nans) {
    double d;
    std::memcpy(&d, &n, 8);
    volatile double vd = d;  // keep the compiler from folding the conversion
    float want = static_cast<float>(vd);
    EXPECT_EQ(Bits(convert::F64ToF32(d)), Bits(want)) << std::hex << n;
  }
  const uint32_t fnans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0x7FA12345u, 0xFFFFFFFFu};
  for (uint32_t n : fnans) {
    float f;
    std::memcpy(&f, &n, 4);
    volatile float vf = f;
    double want = static_cast<double>(vf), got = convert::F32ToF64(f);
    uint64_t wb, gb;
    std::memcpy(&wb, &want, 8);
    std::memcpy(&gb, &got, 8);
    EXPECT_EQ(gb, wb) << std::hex << n;
  }
  // Ordinary values, subnormals and infinities convert as the hardware does.
  for (double v : {0.0, -0.0, 1.0 / 3, 1e-40, -1e-310, 3.5e38, 1e300, -static_cast<double>(INFINITY)}) {
    EXPECT_EQ(Bits(convert::F64ToF32(v)), Bits(static_cast<float>(v))) << v;
  }
}

}  // namespace
#if defined(__x86_64__)
// Subnormals cast exactly (F32 -> F64) and round into F32's subnormal range
// (F64 -> F32) even on a thread that runs with flush-to-zero and
// denormals-are-zero on, as after torch.set_flush_denormal(True) or loading
// a library built with -ffast-math; the thread's modes are left as they were.
TEST(CastTest, SubnormalsSurviveFlushToZeroModes) {
  const float f32[] = {std::numeric_limits<float>::denorm_min(), -std::ldexp(1.0f, -130),
                       std::numeric_limits<float>::min() * 0.75f};
  const double f64[] = {std::ldexp(1.0, -140), -std::ldexp(3.0, -135), std::ldexp(1.0, -149)};
  double want_f64[3];
  float want_f32[3];
  for (int i = 0; i < 3; ++i) {
    want_f64[i] = static_cast<double>(f32[i]);
    want_f32[i] = static_cast<float>(f64[i]);
    ASSERT_NE(want_f64[i], 0.0);
    ASSERT_NE(want_f32[i], 0.0f);
  }
  const unsigned saved = _mm_getcsr();
  const unsigned flushing = saved | (1u << 15) | (1u << 6);  // FTZ | DAZ
  _mm_setcsr(flushing);
  double got_f64[3], baseline_f64[3];
  float got_f32[3], baseline_f32[3];
  CastFloats(DType::kF32, f32, DType::kF64, got_f64, 3);
  CastFloats(DType::kF64, f64, DType::kF32, got_f32, 3);
  CastFloatsBaseline(DType::kF32, f32, DType::kF64, baseline_f64, 3);
  CastFloatsBaseline(DType::kF64, f64, DType::kF32, baseline_f32, 3);
  const unsigned after = _mm_getcsr();
  _mm_setcsr(saved);
  EXPECT_EQ(after, flushing);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(got_f64[i], want_f64[i]) << i;
    EXPECT_EQ(baseline_f64[i], want_f64[i]) << i;
    EXPECT_EQ(Bits(got_f32[i]), Bits(want_f32[i])) << i;
    EXPECT_EQ(Bits(baseline_f32[i]), Bits(want_f32[i])) << i;
  }
}
#endif

}  // namespace hoist
