// Tests for the dtype table, TensorBytes and ParseCastTarget.
#include "hoist/dtype.h"

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace hoist {
namespace {

struct Expected {
  DType dtype;
  const char* name;
  int bits;
};

// The dtype list of the safetensors format, spelled out independently of
// dtype.cc so that a typo in either shows up here.
const std::vector<Expected>& AllDTypes() {
  static const std::vector<Expected> kAll = {
      {DType::kBool, "BOOL", 8},         {DType::kU8, "U8", 8},
      {DType::kI8, "I8", 8},             {DType::kI16, "I16", 16},
      {DType::kU16, "U16", 16},          {DType::kI32, "I32", 32},
      {DType::kU32, "U32", 32},          {DType::kI64, "I64", 64},
      {DType::kU64, "U64", 64},          {DType::kF16, "F16", 16},
      {DType::kBF16, "BF16", 16},        {DType::kF32, "F32", 32},
      {DType::kF64, "F64", 64},          {DType::kC64, "C64", 64},
      {DType::kF8_E4M3, "F8_E4M3", 8},   {DType::kF8_E5M2, "F8_E5M2", 8},
      {DType::kF8_E8M0, "F8_E8M0", 8},   {DType::kF8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
      {DType::kF8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
      {DType::kF6_E2M3, "F6_E2M3", 6},   {DType::kF6_E3M2, "F6_E3M2", 6},
      {DType::kF4, "F4", 4},
  };
  return kAll;
}

TEST(DtypeTest, TableCoversEveryDType) {
  EXPECT_EQ(kNumDTypes, 22);
  ASSERT_EQ(AllDTypes().size(), static_cast<size_t>(kNumDTypes));
  std::set<DType> seen;
  for (const Expected& e : AllDTypes()) seen.insert(e.dtype);
  EXPECT_EQ(seen.size(), static_cast<size_t>(kNumDTypes));
}

TEST(DtypeTest, EveryNameRoundTrips) {
  std::set<std::string> names;
  for (int i = 0; i < kNumDTypes; ++i) {
    auto d = static_cast<DType>(i);
    std::string name(DTypeName(d));
    EXPECT_FALSE(name.empty()) << i;
    EXPECT_TRUE(names.insert(name).second) << "duplicate name " << name;
    auto parsed = ParseDTypeName(name);
    ASSERT_TRUE(parsed.has_value()) << name;
    EXPECT_EQ(*parsed, d) << name;
  }
}

TEST(DtypeTest, NamesMatchTheFormat) {
  for (const Expected& e : AllDTypes()) {
    EXPECT_EQ(DTypeName(e.dtype), e.name);
    auto parsed = ParseDTypeName(e.name);
    ASSERT_TRUE(parsed.has_value()) << e.name;
    EXPECT_EQ(*parsed, e.dtype) << e.name;
  }
}

TEST(DtypeTest, UnknownNamesAreRejected) {
  for (const char* name : {"", "bf16", "f32", "F8", "FP8", "F8_E4M3 ", " F32", "F32\n", "FLOAT",
                           "Q4_0", "I4", "U1", "F8_E4M3FN", "__metadata__", "BOOL8"}) {
    EXPECT_FALSE(ParseDTypeName(name).has_value()) << "'" << name << "'";
  }
  // A name with an embedded NUL must not match by its prefix.
  EXPECT_FALSE(ParseDTypeName(std::string_view("F32\0", 4)).has_value());
}

TEST(DtypeTest, BitsTable) {
  for (const Expected& e : AllDTypes()) EXPECT_EQ(DTypeBits(e.dtype), e.bits) << e.name;
}

TEST(DtypeTest, IsCastableFloat) {
  std::set<DType> castable = {DType::kF16, DType::kBF16, DType::kF32, DType::kF64};
  for (const Expected& e : AllDTypes()) {
    EXPECT_EQ(IsCastableFloat(e.dtype), castable.count(e.dtype) == 1) << e.name;
  }
}

uint64_t BytesOk(DType dtype, std::vector<uint64_t> shape) {
  Result<uint64_t> r = TensorBytes(dtype, shape);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? *r : ~uint64_t{0};
}

TEST(DtypeTest, TensorBytesWholeByteTypes) {
  EXPECT_EQ(BytesOk(DType::kF32, {2, 3}), 24u);
  EXPECT_EQ(BytesOk(DType::kF32, {}), 4u);  // a scalar has one element
  EXPECT_EQ(BytesOk(DType::kBF16, {7}), 14u);
  EXPECT_EQ(BytesOk(DType::kBool, {5}), 5u);
  EXPECT_EQ(BytesOk(DType::kC64, {3}), 24u);
  EXPECT_EQ(BytesOk(DType::kF64, {2, 2, 2}), 64u);
  EXPECT_EQ(BytesOk(DType::kF8_E4M3, {9}), 9u);
  for (const Expected& e : AllDTypes()) {
    EXPECT_EQ(BytesOk(e.dtype, {8}), static_cast<uint64_t>(e.bits)) << e.name;
    EXPECT_EQ(BytesOk(e.dtype, {0}), 0u) << e.name;
    EXPECT_EQ(BytesOk(e.dtype, {3, 0, 5}), 0u) << e.name;
  }
}

TEST(DtypeTest, TensorBytesSubByteWholeByteRule) {
  // F4: two elements per byte.
  EXPECT_EQ(BytesOk(DType::kF4, {4}), 2u);
  EXPECT_EQ(BytesOk(DType::kF4, {2, 3}), 3u);
  for (uint64_t odd : {1u, 3u, 5u, 1001u}) {
    Result<uint64_t> r = TensorBytes(DType::kF4, std::vector<uint64_t>{odd});
    ASSERT_FALSE(r.ok()) << odd;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
    EXPECT_NE(r.status().message().find("do not fill whole bytes"), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find("F4"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(std::to_string(odd) + " elements"), std::string::npos)
        << r.status().message();
  }
  // F6: four elements per three bytes.
  EXPECT_EQ(BytesOk(DType::kF6_E2M3, {4}), 3u);
  EXPECT_EQ(BytesOk(DType::kF6_E3M2, {4}), 3u);
  EXPECT_EQ(BytesOk(DType::kF6_E2M3, {2, 2}), 3u);
  EXPECT_EQ(BytesOk(DType::kF6_E3M2, {8}), 6u);
  for (uint64_t n : {1u, 2u, 3u, 5u, 6u, 7u}) {
    for (DType d : {DType::kF6_E2M3, DType::kF6_E3M2}) {
      Result<uint64_t> r = TensorBytes(d, std::vector<uint64_t>{n});
      ASSERT_FALSE(r.ok()) << DTypeName(d) << " " << n;
      EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
      EXPECT_NE(r.status().message().find("do not fill whole bytes"), std::string::npos);
    }
  }
}

TEST(DtypeTest, TensorBytesShapeProductOverflowFails) {
  const uint64_t k2p32 = uint64_t{1} << 32;
  for (std::vector<uint64_t> shape : std::vector<std::vector<uint64_t>>{
           {k2p32, k2p32}, {~uint64_t{0}, 2}, {3, ~uint64_t{0}}, {k2p32, k2p32, 0}}) {
    Result<uint64_t> r = TensorBytes(DType::kU8, shape);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
    EXPECT_NE(r.status().message().find("more elements than fit in 64 bits"), std::string::npos)
        << r.status().message();
  }
  // The largest product that fits is fine for a byte type... as long as the
  // bit count fits too (see the next test); a zero dimension first stops it.
  EXPECT_EQ(BytesOk(DType::kU8, {0, k2p32, k2p32}), 0u);
  EXPECT_EQ(BytesOk(DType::kU8, {k2p32, (uint64_t{1} << 28) - 1}), k2p32 * ((uint64_t{1} << 28) - 1));
}

TEST(DtypeTest, TensorBytesBitCountOverflowFails) {
  // numel fits in 64 bits but numel * bits does not.
  struct Case {
    DType dtype;
    uint64_t numel;
  };
  for (Case c : {Case{DType::kF64, uint64_t{1} << 58}, Case{DType::kF32, uint64_t{1} << 59},
                 Case{DType::kF4, uint64_t{1} << 62}, Case{DType::kF6_E2M3, uint64_t{1} << 62},
                 Case{DType::kU8, ~uint64_t{0}}}) {
    Result<uint64_t> r = TensorBytes(c.dtype, std::vector<uint64_t>{c.numel});
    ASSERT_FALSE(r.ok()) << DTypeName(c.dtype);
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
    EXPECT_NE(r.status().message().find("overflows 64 bits"), std::string::npos) << r.status().message();
  }
  // Just below the limit.
  EXPECT_EQ(BytesOk(DType::kF64, {(uint64_t{1} << 58) - 1}), ((uint64_t{1} << 58) - 1) * 8);
  EXPECT_EQ(BytesOk(DType::kF4, {uint64_t{1} << 61}), uint64_t{1} << 60);
}

TEST(DtypeTest, ParseCastTarget) {
  struct Case {
    const char* text;
    DType dtype;
  };
  for (Case c : {Case{"bf16", DType::kBF16}, Case{"BF16", DType::kBF16}, Case{"bfloat16", DType::kBF16},
                 Case{"BFloat16", DType::kBF16}, Case{"f16", DType::kF16}, Case{"fp16", DType::kF16},
                 Case{"float16", DType::kF16}, Case{"half", DType::kF16}, Case{"F16", DType::kF16},
                 Case{"f32", DType::kF32}, Case{"fp32", DType::kF32}, Case{"float32", DType::kF32},
                 Case{"float", DType::kF32}, Case{"FP32", DType::kF32}}) {
    auto d = ParseCastTarget(c.text);
    ASSERT_TRUE(d.has_value()) << c.text;
    EXPECT_EQ(*d, c.dtype) << c.text;
  }
  for (const char* bad : {"", "f64", "float64", "double", "fp8", "f8_e4m3", "int8", "i32", "u8",
                          "bool", "bf 16", " bf16", "bf16 ", "bfloat", "f4", "c64"}) {
    EXPECT_FALSE(ParseCastTarget(bad).has_value()) << "'" << bad << "'";
  }
  // Every cast target is a castable float.
  for (const char* t : {"bf16", "f16", "f32"}) EXPECT_TRUE(IsCastableFloat(*ParseCastTarget(t)));
}

}  // namespace
}  // namespace hoist
