#include "cast/cast.h"

#include <cassert>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

// On x86-64 the loops are compiled twice, for AVX2 and for the baseline,
// and the first cast picks one for the CPU it runs on. The same C++ either
// way, so the same bits; AVX2 doubles the vector width: F16 -> F32 3.9 ->
// 7.2 GB/s, F64 -> F16 0.29 -> 1.6 GB/s on one core of the 2-core VM
// (build/hoist_bench --benchmark_filter=Cast). A plain branch, not an ifunc
// (target_clones), whose resolver would run before a sanitizer's runtime.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HOIST_CAST_AVX2 1
#define HOIST_CAST_INLINE __attribute__((always_inline)) inline
#else
#define HOIST_CAST_AVX2 0
#define HOIST_CAST_INLINE inline
#endif

namespace hoist {
namespace {

// F32 <-> F64 goes through the FPU's own conversion, which honours the
// thread's flush-to-zero and denormals-are-zero modes: with them on, F32
// subnormals would become 0 in F64 and F64 values in F32's subnormal range
// would flush. A library built with -ffast-math, or
// torch.set_flush_denormal(True), turns them on for a thread and the threads
// it starts, so a cast sets IEEE behaviour for its own duration and puts the
// caller's modes back after.
class IeeeSubnormals {
 public:
#if defined(__x86_64__) || defined(__i386__)
  IeeeSubnormals() : saved_(_mm_getcsr()) {
    constexpr unsigned kFlushToZero = 1u << 15, kDenormalsAreZero = 1u << 6;
    if ((saved_ & (kFlushToZero | kDenormalsAreZero)) != 0) _mm_setcsr(saved_ & ~(kFlushToZero | kDenormalsAreZero));
  }
  ~IeeeSubnormals() {
    if (_mm_getcsr() != saved_) _mm_setcsr(saved_);
  }

 private:
  unsigned saved_;
#elif defined(__aarch64__)
  IeeeSubnormals() : saved_(Get()) {
    constexpr uint64_t kFlushToZero = uint64_t{1} << 24;
    if ((saved_ & kFlushToZero) != 0) Set(saved_ & ~kFlushToZero);
  }
  ~IeeeSubnormals() {
    if (Get() != saved_) Set(saved_);
  }

 private:
  static uint64_t Get() {
    uint64_t v;
    asm volatile("mrs %0, fpcr" : "=r"(v));
    return v;
  }
  static void Set(uint64_t v) { asm volatile("msr fpcr, %0" : : "r"(v)); }
  uint64_t saved_;
#endif
  IeeeSubnormals(const IeeeSubnormals&) = delete;
  IeeeSubnormals& operator=(const IeeeSubnormals&) = delete;
};

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

// One loop per (source, destination) pair, each element converted through
// float: small bodies without a per-element switch or call, which the
// compiler vectorizes (this file is built with -O3).
template <typename In, typename Out, typename Op>
HOIST_CAST_INLINE void CastLoop(const unsigned char* in, unsigned char* out, size_t count, Op op) {
  for (size_t i = 0; i < count; ++i) Store<Out>(out, i, op(Load<In>(in, i)));
}

template <typename In, typename ToF32>
HOIST_CAST_INLINE void CastFrom(DType dst, const unsigned char* in, unsigned char* out, size_t count, ToF32 to_f32) {
  switch (dst) {
    case DType::kF64:
      CastLoop<In, double>(in, out, count, [&](In v) { return convert::F32ToF64(to_f32(v)); });
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

HOIST_CAST_INLINE void CastFloatsImpl(DType src, const void* src_bytes, DType dst, void* dst_bytes, size_t count) {
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
    case DType::kF64: return CastFrom<double>(dst, in, out, count, [](double v) { return convert::F64ToF32(v); });
    default: assert(false);
  }
}

#if HOIST_CAST_AVX2
__attribute__((target("avx2"))) void CastFloatsAvx2(DType src, const void* src_bytes, DType dst, void* dst_bytes,
                                                      size_t count) {
  CastFloatsImpl(src, src_bytes, dst, dst_bytes, count);
}
#endif

}  // namespace

void CastFloatsBaseline(DType src, const void* src_bytes, DType dst, void* dst_bytes, size_t count) {
  assert(IsCastableFloat(src) && IsCastableFloat(dst));
  IeeeSubnormals ieee;
  CastFloatsImpl(src, src_bytes, dst, dst_bytes, count);
}

void CastFloats(DType src, const void* src_bytes, DType dst, void* dst_bytes, size_t count) {
  assert(IsCastableFloat(src) && IsCastableFloat(dst));
#if HOIST_CAST_AVX2
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) {
    IeeeSubnormals ieee;
    return CastFloatsAvx2(src, src_bytes, dst, dst_bytes, count);
  }
#endif
  CastFloatsBaseline(src, src_bytes, dst, dst_bytes, count);
}

}  // namespace hoist
