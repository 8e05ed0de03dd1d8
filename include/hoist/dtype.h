// Element types of the safetensors format, with their sizes in bits.
//
// Sub-byte types (F6_*, F4) are packed; a tensor's byte size is
// numel * bits / 8 and must come out in whole bytes (see TensorBytes).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "hoist/status.h"

namespace hoist {

enum class DType : uint8_t {
  kBool, kU8, kI8, kI16, kU16, kI32, kU32, kI64, kU64,
  kF16, kBF16, kF32, kF64, kC64,
  kF8_E4M3, kF8_E5M2, kF8_E8M0, kF8_E4M3FNUZ, kF8_E5M2FNUZ,
  kF6_E2M3, kF6_E3M2, kF4,
};
inline constexpr int kNumDTypes = static_cast<int>(DType::kF4) + 1;

// The name used in safetensors headers ("BF16", "F8_E4M3", ...).
std::string_view DTypeName(DType dtype);
// Parses a header name; nullopt for names the format does not define.
std::optional<DType> ParseDTypeName(std::string_view name);
// Parses a user-facing cast target: "bf16", "f16", "fp16", "f32", "float32", ...
std::optional<DType> ParseCastTarget(std::string_view name);

int DTypeBits(DType dtype);
// The floating types hoist casts between (F16, BF16, F32, F64). Everything
// else (integers, bool, 8-bit-or-smaller floats, complex) is never cast.
bool IsCastableFloat(DType dtype);
// Floats narrower than 16 bits (FP8, FP6, FP4): how quantized releases store
// their weights.
bool IsNarrowFloat(DType dtype);

// The number of elements of `shape`; nullopt when it overflows 64 bits.
std::optional<uint64_t> ElementCount(std::span<const uint64_t> shape);

// numel * bits / 8 for `shape`, with overflow checks. Fails when the product
// overflows 64 bits or when a sub-byte type does not fill whole bytes.
// `what` names the tensor for the message.
Result<uint64_t> TensorBytes(DType dtype, std::span<const uint64_t> shape);

}  // namespace hoist
