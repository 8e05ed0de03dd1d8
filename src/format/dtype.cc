#include "hoist/dtype.h"

#include <array>
#include <string>

namespace hoist {
namespace {

struct DTypeRow {
  DType dtype;
  std::string_view name;
  int bits;
};

constexpr std::array<DTypeRow, kNumDTypes> kRows = {{
    {DType::kBool, "BOOL", 8},
    {DType::kU8, "U8", 8},
    {DType::kI8, "I8", 8},
    {DType::kI16, "I16", 16},
    {DType::kU16, "U16", 16},
    {DType::kI32, "I32", 32},
    {DType::kU32, "U32", 32},
    {DType::kI64, "I64", 64},
    {DType::kU64, "U64", 64},
    {DType::kF16, "F16", 16},
    {DType::kBF16, "BF16", 16},
    {DType::kF32, "F32", 32},
    {DType::kF64, "F64", 64},
    {DType::kC64, "C64", 64},
    {DType::kF8_E4M3, "F8_E4M3", 8},
    {DType::kF8_E5M2, "F8_E5M2", 8},
    {DType::kF8_E8M0, "F8_E8M0", 8},
    {DType::kF8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {DType::kF8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
    {DType::kF6_E2M3, "F6_E2M3", 6},
    {DType::kF6_E3M2, "F6_E3M2", 6},
    {DType::kF4, "F4", 4},
}};

const DTypeRow& Row(DType dtype) { return kRows[static_cast<size_t>(dtype)]; }

}  // namespace

std::string_view DTypeName(DType dtype) { return Row(dtype).name; }
int DTypeBits(DType dtype) { return Row(dtype).bits; }

std::optional<DType> ParseDTypeName(std::string_view name) {
  for (const DTypeRow& row : kRows) {
    if (row.name == name) return row.dtype;
  }
  return std::nullopt;
}

std::optional<DType> ParseCastTarget(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  if (lower == "bf16" || lower == "bfloat16") return DType::kBF16;
  if (lower == "f16" || lower == "fp16" || lower == "float16" || lower == "half") return DType::kF16;
  if (lower == "f32" || lower == "fp32" || lower == "float32" || lower == "float") return DType::kF32;
  return std::nullopt;
}

bool IsCastableFloat(DType dtype) {
  return dtype == DType::kF16 || dtype == DType::kBF16 || dtype == DType::kF32 ||
         dtype == DType::kF64;
}

bool IsNarrowFloat(DType dtype) {
  switch (dtype) {
    case DType::kF8_E4M3: case DType::kF8_E5M2: case DType::kF8_E8M0: case DType::kF8_E4M3FNUZ:
    case DType::kF8_E5M2FNUZ: case DType::kF6_E2M3: case DType::kF6_E3M2: case DType::kF4:
      return true;
    default:
      return false;
  }
}

std::optional<uint64_t> ElementCount(std::span<const uint64_t> shape) {
  uint64_t numel = 1;
  for (uint64_t dim : shape) {
    if (__builtin_mul_overflow(numel, dim, &numel)) return std::nullopt;
  }
  return numel;
}

Result<uint64_t> TensorBytes(DType dtype, std::span<const uint64_t> shape) {
  const std::optional<uint64_t> elements = ElementCount(shape);
  if (!elements) return Corruption("shape has more elements than fit in 64 bits");
  const uint64_t numel = *elements;
  uint64_t bits = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeBits(dtype)), &bits)) {
    return Corruption("byte size overflows 64 bits");
  }
  if (bits % 8 != 0) {
    return Corruption(std::to_string(numel) + " elements of " + std::string(DTypeName(dtype)) +
                      " do not fill whole bytes");
  }
  return bits / 8;
}

}  // namespace hoist
