// The parser against files hoist did not write: the reference files in
// testdata/conformance (written by the safetensors reference implementation,
// values from its README), and the UTF-8 check every header and name passes.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "format/safetensors.h"
#include "hoist/catalog.h"
#include "io/file.h"

namespace hoist {
namespace {
// --- IsValidUtf8 -------------------------------------------------------------------

TEST(Utf8Test, AcceptsWellFormed) {
  for (std::string_view s : {std::string_view(""), std::string_view("ascii only"), std::string_view("\0nul", 4),
                             std::string_view("\x7f"), std::string_view("\xc2\x80"),       // U+0080
                             std::string_view("\xdf\xbf"),                                 // U+07FF
                             std::string_view("\xe0\xa0\x80"),                             // U+0800
                             std::string_view("\xe2\x82\xac"),                             // euro sign
                             std::string_view("\xed\x9f\xbf"),                             // U+D7FF
                             std::string_view("\xee\x80\x80"),                             // U+E000
                             std::string_view("\xef\xbf\xbf"),                             // U+FFFF
                             std::string_view("\xf0\x90\x80\x80"),                         // U+10000
                             std::string_view("\xf0\x9f\x98\x80"),                         // emoji
                             std::string_view("\xf4\x8f\xbf\xbf"),                         // U+10FFFF
                             std::string_view("mixed \xc3\xa9t\xc3\xa9 \xe2\x82\xac 5")}) {
    EXPECT_TRUE(IsValidUtf8(s)) << ::testing::PrintToString(std::string(s));
  }
}

TEST(Utf8Test, RejectsOverlongEncodings) {
  for (std::string_view s : {"\xc0\x80", "\xc0\xaf", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf", "\xf0\x80\x80\x80",
                             "\xf0\x8f\xbf\xbf"}) {
    EXPECT_FALSE(IsValidUtf8(s)) << ::testing::PrintToString(std::string(s));
  }
}

TEST(Utf8Test, RejectsSurrogates) {
  for (std::string_view s : {"\xed\xa0\x80", "\xed\xaf\xbf", "\xed\xb0\x80", "\xed\xbf\xbf",
                             "\xed\xa0\xbd\xed\xb8\x80" /* CESU-8 pair */}) {
    EXPECT_FALSE(IsValidUtf8(s)) << ::testing::PrintToString(std::string(s));
  }
}

TEST(Utf8Test, RejectsOutOfRangeAndBadLeads) {
  for (std::string_view s : {"\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xf7\xbf\xbf\xbf", "\xf8\x88\x80\x80\x80",
                             "\xfe", "\xff", "\x80", "\xbf", "a\x80z"}) {
    EXPECT_FALSE(IsValidUtf8(s)) << ::testing::PrintToString(std::string(s));
  }
}

TEST(Utf8Test, RejectsTruncatedAndBrokenSequences) {
  for (std::string_view s : {"\xc3", "\xe2\x82", "\xf0\x9f\x98", "\xc3\x41", "\xe2\x28\xa1", "\xf0\x9f\x98\x41",
                             "ok\xe2\x82"}) {
    EXPECT_FALSE(IsValidUtf8(s)) << ::testing::PrintToString(std::string(s));
  }
}

TEST(Utf8Test, VerdictDoesNotDependOnWhereASequenceFalls) {
  // ASCII is skipped a word at a time: every case above, after 0 to 17 ASCII
  // bytes and before 0 to 9, keeps its verdict.
  const std::vector<std::pair<std::string, bool>> cases = {
      {"\xc3\xa9", true}, {"\xf0\x9f\x98\x80", true}, {"\xef\xbf\xbf", true},  {"\x7f", true},
      {"\xff", false},     {"\x80", false},             {"\xc3", false},         {"\xe2\x82", false},
      {"\xed\xa0\x80", false}, {"\xc0\xaf", false},     {"\xf4\x90\x80\x80", false}};
  for (const auto& [middle, valid] : cases) {
    for (size_t before = 0; before < 18; ++before) {
      for (size_t after = 0; after < 10; ++after) {
        std::string s = std::string(before, 'a') + middle + std::string(after, 'z');
        EXPECT_EQ(IsValidUtf8(s), valid) << ::testing::PrintToString(s);
      }
    }
  }
}

// --- the reference files in testdata/conformance ----------------------------------

std::string ConformancePath(const std::string& file) {
  return std::string(HOIST_TESTDATA_DIR) + "/conformance/" + file;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Element i of a tensor stored in `dtype`, as a double (F16 decoded by hand).
double Element(DType dtype, const unsigned char* p, int i) {
  auto le = [&](int bytes) {
    uint64_t v = 0;
    for (int k = bytes - 1; k >= 0; --k) v = (v << 8) | p[i * bytes + k];
    return v;
  };
  switch (dtype) {
    case DType::kU8: return static_cast<double>(le(1));
    case DType::kU16: return static_cast<double>(le(2));
    case DType::kU32: return static_cast<double>(le(4));
    case DType::kI8: return static_cast<double>(static_cast<int8_t>(le(1)));
    case DType::kI16: return static_cast<double>(static_cast<int16_t>(le(2)));
    case DType::kI32: return static_cast<double>(static_cast<int32_t>(le(4)));
    case DType::kF32: {
      auto bits = static_cast<uint32_t>(le(4));
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case DType::kF64: {
      uint64_t bits = le(8);
      double d;
      std::memcpy(&d, &bits, 8);
      return d;
    }
    case DType::kF16: {
      auto h = static_cast<uint32_t>(le(2));
      double sign = (h & 0x8000) ? -1.0 : 1.0;
      int exp = static_cast<int>((h >> 10) & 0x1f);
      double frac = static_cast<double>(h & 0x3ff);
      if (exp == 0) return sign * frac * std::ldexp(1.0, -24);
      return sign * (1.0 + frac / 1024.0) * std::ldexp(1.0, exp - 15);
    }
    default: ADD_FAILURE() << "no decoder for " << DTypeName(dtype); return 0;
  }
}

struct ConformanceCase {
  const char* file;
  const char* tensor;
  DType dtype;
  uint64_t header_bytes;  // from the README: 81 or 83
  std::vector<double> values;
};

std::vector<ConformanceCase> ConformanceCases() {
  const std::vector<double> kSigned = {-3, -2, -1, 0, 1, 2};
  return {
      {"B.safetensors", "B", DType::kU8, 81, {253, 254, 255, 0, 1, 2}},
      {"H.safetensors", "H", DType::kU16, 83, {65533, 65534, 65535, 0, 1, 2}},
      {"I.safetensors", "I", DType::kU32, 83, {4294967293.0, 4294967294.0, 4294967295.0, 0, 1, 2}},
      {"b.safetensors", "b", DType::kI8, 81, kSigned},
      {"h.safetensors", "h", DType::kI16, 83, kSigned},
      {"i.safetensors", "i", DType::kI32, 83, kSigned},
      {"e.safetensors", "e", DType::kF16, 83, kSigned},
      {"f.safetensors", "f", DType::kF32, 83, kSigned},
      {"d.safetensors", "d", DType::kF64, 83, kSigned},
  };
}

class SafetensorsConformanceTest : public ::testing::TestWithParam<ConformanceCase> {};

TEST_P(SafetensorsConformanceTest, SingleFileParsesWithExactValues) {
  const ConformanceCase& c = GetParam();
  const std::string path = ConformancePath(c.file);
  const uint64_t nbytes = 6 * static_cast<uint64_t>(DTypeBits(c.dtype)) / 8;

  Result<File> file = File::OpenRead(path);
  ASSERT_TRUE(file.ok()) << file.status().message();
  EXPECT_EQ(file->size_bytes(), 8 + c.header_bytes + nbytes);
  Result<ParsedHeader> h = ReadSafetensorsHeader(*file);
  ASSERT_TRUE(h.ok()) << h.status().message();
  EXPECT_EQ(h->header_bytes, c.header_bytes);
  EXPECT_EQ(h->data_offset_bytes, 8 + c.header_bytes);
  EXPECT_EQ(h->data_bytes, nbytes);
  ASSERT_EQ(h->tensors.size(), 1u);
  const HeaderTensor& t = h->tensors[0];
  EXPECT_EQ(t.name, c.tensor);
  EXPECT_EQ(t.dtype, c.dtype);
  EXPECT_EQ(t.shape, std::vector<uint64_t>{6});
  EXPECT_EQ(t.begin_bytes, 0u);
  EXPECT_EQ(t.end_bytes, nbytes);
  ASSERT_EQ(h->metadata.size(), 1u);
  EXPECT_EQ(h->metadata[0], (std::pair<std::string, std::string>("test", "a")));

  // The buffer path agrees with the file path.
  std::string bytes = ReadAll(path);
  Result<ParsedHeader> hb = ParseSafetensorsBuffer(c.file, bytes);
  ASSERT_TRUE(hb.ok()) << hb.status().message();
  EXPECT_EQ(hb->tensors.size(), 1u);

  // The catalogue gives the absolute offset; the bytes there are the values.
  Result<Catalog> cat = OpenCatalog(path);
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  ASSERT_EQ(cat->tensors().size(), 1u);
  const TensorInfo& info = cat->tensors()[0];
  EXPECT_EQ(info.name, c.tensor);
  EXPECT_EQ(info.dtype, c.dtype);
  EXPECT_EQ(info.shape, std::vector<uint64_t>{6});
  EXPECT_EQ(info.offset_bytes, 8 + c.header_bytes);
  EXPECT_EQ(info.size_bytes, nbytes);
  EXPECT_EQ(cat->total_bytes(), nbytes);
  EXPECT_EQ(cat->metadata().at("test"), "a");
  ASSERT_EQ(bytes.size(), info.offset_bytes + info.size_bytes);
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data() + info.offset_bytes);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(Element(c.dtype, data, i), c.values[i]) << c.file << " element " << i;
}

INSTANTIATE_TEST_SUITE_P(SafetensorsReference, SafetensorsConformanceTest, ::testing::ValuesIn(ConformanceCases()),
                         [](const ::testing::TestParamInfo<ConformanceCase>& info) {
                           // Test names must be unique and case-insensitively distinct here.
                           return std::string(DTypeName(info.param.dtype));
                         });

TEST(SafetensorsConformanceOverallTest, NineTensorsBackToBack) {
  const std::string path = ConformancePath("overall.safetensors");
  Result<File> file = File::OpenRead(path);
  ASSERT_TRUE(file.ok()) << file.status().message();
  Result<ParsedHeader> h = ReadSafetensorsHeader(*file);
  ASSERT_TRUE(h.ok()) << h.status().message();
  EXPECT_EQ(h->header_bytes, 526u);  // the README: data starts at 8 + 526
  EXPECT_EQ(h->data_offset_bytes, 534u);
  EXPECT_EQ(h->data_bytes, 168u);
  ASSERT_EQ(h->metadata.size(), 1u);
  EXPECT_EQ(h->metadata[0], (std::pair<std::string, std::string>("test", "a")));

  // Offsets 0, 6, 18, 42, ... as the README says: sorted by offset, packed,
  // nothing aligned to its element size.
  struct Want {
    const char* name;
    DType dtype;
    uint64_t begin, end;
  };
  const std::vector<Want> want = {
      {"B", DType::kU8, 0, 6},     {"H", DType::kU16, 6, 18},   {"I", DType::kU32, 18, 42},
      {"b", DType::kI8, 42, 48},   {"d", DType::kF64, 48, 96},  {"e", DType::kF16, 96, 108},
      {"f", DType::kF32, 108, 132}, {"h", DType::kI16, 132, 144}, {"i", DType::kI32, 144, 168},
  };
  ASSERT_EQ(h->tensors.size(), want.size());
  for (size_t k = 0; k < want.size(); ++k) {
    const HeaderTensor& t = h->tensors[k];
    EXPECT_EQ(t.name, want[k].name) << k;
    EXPECT_EQ(t.dtype, want[k].dtype) << k;
    EXPECT_EQ(t.shape, std::vector<uint64_t>{6}) << k;
    EXPECT_EQ(t.begin_bytes, want[k].begin) << t.name;
    EXPECT_EQ(t.end_bytes, want[k].end) << t.name;
  }

  // The catalogue: same order, absolute offsets, and each tensor's values
  // equal those in the single-dtype files.
  Result<Catalog> cat = OpenCatalog(path);
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  ASSERT_EQ(cat->tensors().size(), 9u);
  EXPECT_EQ(cat->total_bytes(), 168u);
  EXPECT_EQ(cat->metadata().at("test"), "a");
  std::string bytes = ReadAll(path);
  ASSERT_EQ(bytes.size(), 702u);
  for (const ConformanceCase& c : ConformanceCases()) {
    const TensorInfo* t = cat->Find(c.tensor);
    ASSERT_NE(t, nullptr) << c.tensor;
    EXPECT_EQ(t->dtype, c.dtype);
    const auto* data = reinterpret_cast<const unsigned char*>(bytes.data() + t->offset_bytes);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(Element(c.dtype, data, i), c.values[i]) << c.tensor << " element " << i;
  }
  for (size_t k = 0; k < want.size(); ++k) {
    EXPECT_EQ(cat->tensors()[k].name, want[k].name);
    EXPECT_EQ(cat->tensors()[k].offset_bytes, 534 + want[k].begin);
  }
}

TEST(ReviewFixesTest, RankAboveSixtyFourIsRefused) {
  std::string dims;
  for (int i = 0; i < 65; ++i) dims += (i ? ",1" : "1");
  std::string json = "{\"t\":{\"dtype\":\"U8\",\"shape\":[" + dims + "],\"data_offsets\":[0,1]}}";
  Result<ParsedHeader> r = ParseHeaderJson("f", json, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("65 dimensions"), std::string::npos) << r.status().message();
}

TEST(ReviewFixesTest, QuoteNameCutsOnACharacterBoundary) {
  std::string name = "a";
  for (int i = 0; i < 100; ++i) name += "\xc3\xa9";  // é
  std::string quoted = QuoteName(name);
  EXPECT_TRUE(IsValidUtf8(quoted)) << quoted;
  EXPECT_NE(quoted.find("..."), std::string::npos);
}

}  // namespace
}  // namespace hoist
