// Floating-point casts between F16, BF16, F32 and F64, bit-compatible with
// PyTorch's CPU casts: round to nearest even; NaN stays NaN (BF16 NaN becomes
// 0x7FC0 and F16 NaN becomes sign|0x7E00, as c10 writes them); infinities
// stay; overflow becomes infinity. F64 -> F16/BF16 goes through F32, as
// c10::Half and c10::BFloat16 do (they are constructed from float).
#pragma once

#include <cstddef>
#include <cstdint>

#include "hoist/dtype.h"

namespace hoist {

float F16ToF32(uint16_t bits);
uint16_t F32ToF16(float value);
float Bf16ToF32(uint16_t bits);
uint16_t F32ToBf16(float value);

// Converts `count` elements. Source and destination must not overlap; neither
// needs any alignment. REQUIRES: IsCastableFloat(src) && IsCastableFloat(dst).
void CastFloats(DType src, const void* src_bytes, DType dst, void* dst_bytes, size_t count);

}  // namespace hoist
