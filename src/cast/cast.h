// Floating-point casts between F16, BF16, F32 and F64 on the host,
// bit-compatible with PyTorch's CPU casts and with hoist's GPU cast kernel:
// both use the conversions in convert.h (rounding and NaN rules there).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cast/convert.h"
#include "hoist/dtype.h"

namespace hoist {

// The scalar conversions, shared with the CUDA cast kernel (convert.h).
using convert::Bf16ToF32;
using convert::F16ToF32;
using convert::F32ToBf16;
using convert::F32ToF16;

// Converts `count` elements. Source and destination must not overlap; neither
// needs any alignment. REQUIRES: IsCastableFloat(src) && IsCastableFloat(dst).
void CastFloats(DType src, const void* src_bytes, DType dst, void* dst_bytes, size_t count);

// The same cast through the loops built for baseline x86-64, whatever the
// CPU (CastFloats takes the AVX2 build where the CPU has it): for tests
// that hold the two builds to the same bits.
void CastFloatsBaseline(DType src, const void* src_bytes, DType dst, void* dst_bytes, size_t count);

}  // namespace hoist
