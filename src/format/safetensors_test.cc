// Tests for the safetensors header parser: one test per validation rule of
// docs/safetensors-format.md, each on a file image built (and then
// corrupted) in memory. The reference files are in
// safetensors_conformance_test.cc.
#include "format/safetensors.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "hoist/catalog.h"
#include "io/file.h"

namespace hoist {
namespace {

constexpr std::string_view kLabel = "ckpt/model-00007.safetensors";

// A valid two-tensor file: "a" F32 [2] at [0, 8), "b" U8 [3] at [8, 11).
constexpr std::string_view kValidHeader =
    R"({"__metadata__":{"format":"pt"},)"
    R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
    R"("b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})";
constexpr uint64_t kValidDataBytes = 11;

class SafetensorsTest : public ::testing::Test {
 protected:
  // 8-byte little-endian length, then the header, then the data section.
  static std::string Image(std::string_view header, std::string_view data) {
    return WithLength(header.size(), std::string(header) + std::string(data));
  }
  // A data section of `n` distinct bytes.
  static std::string Data(uint64_t n) {
    std::string d(n, '\0');
    for (uint64_t i = 0; i < n; ++i) d[i] = static_cast<char>(i * 7 + 1);
    return d;
  }
  static std::string Image(std::string_view header, uint64_t data_bytes) {
    return Image(header, Data(data_bytes));
  }
  // Any length prefix followed by `rest`.
  static std::string WithLength(uint64_t n, std::string_view rest) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    out += rest;
    return out;
  }
  // One tensor entry, as JSON text (no braces around the whole header).
  static std::string Entry(std::string_view name_json, std::string_view dtype, std::string_view shape,
                           std::string_view offsets) {
    return "\"" + std::string(name_json) + "\":{\"dtype\":\"" + std::string(dtype) + "\",\"shape\":" +
           std::string(shape) + ",\"data_offsets\":" + std::string(offsets) + "}";
  }

  // Corruption helpers, leveldb log_test style.
  static std::string ValidImage() { return Image(kValidHeader, kValidDataBytes); }
  static void SetByte(std::string* image, size_t offset, char value) { (*image)[offset] = value; }
  static void ShrinkBy(std::string* image, size_t bytes) { image->resize(image->size() - bytes); }
  static void SetLength(std::string* image, uint64_t n) {
    for (int i = 0; i < 8; ++i) (*image)[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  }
  // Replaces the first occurrence of `from` in the header, keeping the
  // length prefix right.
  static std::string Replace(std::string_view header, std::string_view from, std::string_view to) {
    std::string h(header);
    size_t at = h.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) h.replace(at, from.size(), to);
    return h;
  }

  static Result<ParsedHeader> Parse(std::string_view image) { return ParseSafetensorsBuffer(kLabel, image); }

  // The call failed with kCorruption, with a one-line message that starts
  // with the file label and contains every one of `parts`.
  static void ExpectCorruption(const Result<ParsedHeader>& r, const std::vector<std::string>& parts) {
    ASSERT_FALSE(r.ok()) << "expected a failure";
    const Status& s = r.status();
    EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.message();
    EXPECT_EQ(s.message().rfind(std::string(kLabel) + ": ", 0), 0u) << s.message();
    EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();
    for (const std::string& p : parts) {
      EXPECT_NE(s.message().find(p), std::string::npos) << "'" << p << "' not in: " << s.message();
    }
  }
  static void ExpectCorruption(std::string_view image, const std::vector<std::string>& parts) {
    SCOPED_TRACE(::testing::Message() << "image of " << image.size() << " bytes");
    ExpectCorruption(Parse(image), parts);
  }
  static ParsedHeader ExpectOk(std::string_view image) {
    Result<ParsedHeader> r = Parse(image);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? *r : ParsedHeader{};
  }
};

// --- the well-formed baseline ----------------------------------------------

TEST_F(SafetensorsTest, ValidImageParses) {
  ParsedHeader h = ExpectOk(ValidImage());
  EXPECT_EQ(h.header_bytes, kValidHeader.size());
  EXPECT_EQ(h.data_offset_bytes, 8 + kValidHeader.size());
  EXPECT_EQ(h.data_bytes, kValidDataBytes);
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[0].dtype, DType::kF32);
  EXPECT_EQ(h.tensors[0].shape, std::vector<uint64_t>{2});
  EXPECT_EQ(h.tensors[0].begin_bytes, 0u);
  EXPECT_EQ(h.tensors[0].end_bytes, 8u);
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[1].dtype, DType::kU8);
  EXPECT_EQ(h.tensors[1].begin_bytes, 8u);
  EXPECT_EQ(h.tensors[1].end_bytes, 11u);
  ASSERT_EQ(h.metadata.size(), 1u);
  EXPECT_EQ(h.metadata[0], (std::pair<std::string, std::string>("format", "pt")));
}

TEST_F(SafetensorsTest, TensorsComeBackSortedByOffsetNotByName) {
  std::string header = "{" + Entry("a", "U8", "[2]", "[4,6]") + "," + Entry("m", "U8", "[4]", "[0,4]") + "," +
                       Entry("z", "U8", "[1]", "[6,7]") + "}";
  ParsedHeader h = ExpectOk(Image(header, 7));
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "m");
  EXPECT_EQ(h.tensors[1].name, "a");
  EXPECT_EQ(h.tensors[2].name, "z");
}

TEST_F(SafetensorsTest, MetadataComesBackSortedByKey) {
  std::string header = R"({"__metadata__":{"zeta":"1","alpha":"2"}})";
  ParsedHeader h = ExpectOk(Image(header, 0));
  ASSERT_EQ(h.metadata.size(), 2u);
  EXPECT_EQ(h.metadata[0].first, "alpha");
  EXPECT_EQ(h.metadata[1].first, "zeta");
}

TEST_F(SafetensorsTest, SubByteTensorsParse) {
  std::string header = "{" + Entry("f4", "F4", "[2,3]", "[0,3]") + "," + Entry("f6", "F6_E2M3", "[4]", "[3,6]") +
                       "," + Entry("f6b", "F6_E3M2", "[8]", "[6,12]") + "}";
  ParsedHeader h = ExpectOk(Image(header, 12));
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].dtype, DType::kF4);
  EXPECT_EQ(h.tensors[1].dtype, DType::kF6_E2M3);
  EXPECT_EQ(h.tensors[2].dtype, DType::kF6_E3M2);
}

TEST_F(SafetensorsTest, EveryDTypeNameIsAccepted) {
  std::string header = "{";
  uint64_t offset = 0;
  for (int i = 0; i < kNumDTypes; ++i) {
    auto d = static_cast<DType>(i);
    uint64_t bytes = static_cast<uint64_t>(DTypeBits(d));  // 8 elements
    if (i > 0) header += ",";
    header += Entry("t" + std::to_string(i), DTypeName(d), "[8]",
                    "[" + std::to_string(offset) + "," + std::to_string(offset + bytes) + "]");
    offset += bytes;
  }
  header += "}";
  ParsedHeader h = ExpectOk(Image(header, offset));
  ASSERT_EQ(h.tensors.size(), static_cast<size_t>(kNumDTypes));
  for (int i = 0; i < kNumDTypes; ++i) EXPECT_EQ(h.tensors[i].dtype, static_cast<DType>(i));
}

// --- the 8-byte length prefix ----------------------------------------------

TEST_F(SafetensorsTest, FileShorterThan8BytesFails) {
  for (size_t n = 0; n < 8; ++n) {
    ExpectCorruption(std::string(n, '\0'),
                     {"file is " + std::to_string(n) + " bytes", "too short for the 8-byte header length"});
  }
  // A valid image cut to 7 bytes.
  std::string image = ValidImage();
  ShrinkBy(&image, image.size() - 7);
  ExpectCorruption(image, {"file is 7 bytes, too short"});
}

TEST_F(SafetensorsTest, HeaderLengthOverLimitFails) {
  for (uint64_t n : {kMaxHeaderBytes + 1, uint64_t{1} << 40, ~uint64_t{0}}) {
    ExpectCorruption(WithLength(n, "{}"),
                     {"header length " + std::to_string(n) + " exceeds the limit of 100000000 bytes"});
  }
  // Exactly the limit is allowed by this rule (and then fails the next one).
  ExpectCorruption(WithLength(kMaxHeaderBytes, "{}"), {"header length 100000000 runs past the end"});
  // Via the corruption helper: a valid image whose prefix says 2^32 + N.
  std::string image = ValidImage();
  SetByte(&image, 4, 1);
  ExpectCorruption(image, {"header length " + std::to_string((uint64_t{1} << 32) + kValidHeader.size()),
                           "exceeds the limit"});
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFileFails) {
  std::string valid = ValidImage();
  std::string image = valid;
  uint64_t n = valid.size() - 8 + 1;  // one byte more than the file holds
  SetLength(&image, n);
  ExpectCorruption(image, {"header length " + std::to_string(n) + " runs past the end of the " +
                           std::to_string(valid.size()) + "-byte file (truncated?)"});
  // A file cut inside its header.
  image = valid;
  ShrinkBy(&image, kValidDataBytes + 5);
  ExpectCorruption(image, {"header length " + std::to_string(kValidHeader.size()) + " runs past the end"});
  // Exactly 8 + N == file size is fine as far as this rule goes.
  ExpectOk(Image("{}", 0));
}

TEST_F(SafetensorsTest, GitLfsPointerGetsItsOwnMessage) {
  const std::string pointer =
      "version https://git-lfs.github.com/spec/v1\n"
      "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
      "size 123\n";
  Result<ParsedHeader> r = Parse(pointer);
  ExpectCorruption(r, {"Git LFS pointer", "git lfs pull"});
  // Not the generic "header length ... exceeds the limit" message.
  EXPECT_EQ(r.status().message().find("exceeds"), std::string::npos);
  // Also through the file-reading path.
  // (The prefix rule is in CheckHeaderLength, which both paths share.)
  Result<uint64_t> n = CheckHeaderLength(kLabel, pointer.substr(0, 64), pointer.size());
  ASSERT_FALSE(n.ok());
  EXPECT_NE(n.status().message().find("Git LFS pointer"), std::string::npos);
}

// --- the header text ---------------------------------------------------------

TEST_F(SafetensorsTest, HeaderNotUtf8Fails) {
  // Each bad sequence sits inside a JSON string (a tensor name), where a JSON
  // parser alone might let it through.
  const std::vector<std::string> bad = {
      "\xff",              // never valid
      "\x80",              // stray continuation byte
      "\xc0\xaf",          // overlong '/'
      "\xc1\xbf",          // overlong
      "\xe0\x80\xaf",      // overlong 3-byte '/'
      "\xf0\x80\x80\xaf",  // overlong 4-byte '/'
      "\xed\xa0\x80",      // UTF-16 surrogate U+D800
      "\xed\xbf\xbf",      // UTF-16 surrogate U+DFFF
      "\xf4\x90\x80\x80",  // U+110000, past the last code point
      "\xe2\x82",          // truncated sequence
  };
  for (const std::string& seq : bad) {
    std::string header = "{" + Entry("w" + seq, "U8", "[1]", "[0,1]") + "}";
    ExpectCorruption(Image(header, 1), {"header is not valid UTF-8"});
    std::string meta = R"({"__metadata__":{"k":")" + seq + R"("}})";
    ExpectCorruption(Image(meta, 0), {"header is not valid UTF-8"});
  }
  // Byte-level corruption of a valid image: a name byte becomes 0xC0.
  std::string image = ValidImage();
  size_t at = image.find("\"a\"");
  ASSERT_NE(at, std::string::npos);
  SetByte(&image, at + 1, '\xc0');
  ExpectCorruption(image, {"not valid UTF-8"});
  // The same names in valid UTF-8 are fine.
  ExpectOk(Image("{" + Entry("w\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "U8", "[1]", "[0,1]") + "}", 1));
}

TEST_F(SafetensorsTest, EscapedLoneSurrogateFails) {
  // Valid UTF-8 bytes, but the JSON escape names half a surrogate pair.
  std::string header = "{" + Entry("w\\ud800", "U8", "[1]", "[0,1]") + "}";
  ExpectCorruption(Image(header, 1), {"header", "not valid JSON"});
  // A proper pair is fine.
  ExpectOk(Image("{" + Entry("w\\ud83d\\ude00", "U8", "[1]", "[0,1]") + "}", 1));
}

TEST_F(SafetensorsTest, HeaderNotJsonFails) {
  for (const std::string& text : std::vector<std::string>{"", "{", "{\"a\":}", "not json", "{} x", "{}{}",
                                                          "{/*c*/}", "{'a':1}", "{\"a\":1,}", "{}\xef\xbb\xbf", "\t\v{}"}) {
    SCOPED_TRACE(::testing::PrintToString(text));
    ExpectCorruption(Image(text, 0), {"header", "not valid JSON", "parse error"});
  }
  std::string image = ValidImage();
  SetByte(&image, 8, '[');  // the opening brace
  ExpectCorruption(image, {"not valid JSON"});
}

TEST_F(SafetensorsTest, NulByteInHeaderFails) {
  // nlohmann's lexer takes a NUL for the end of input, so without its own
  // check everything after one would never be parsed.
  struct Case {
    std::string text;
    size_t at;
  };
  for (const Case& c : {Case{std::string("{}\0", 3), 2}, Case{std::string("{}\0xyz", 6), 2},
                        Case{std::string("{}\0{\"a\":1}", 10), 2}, Case{std::string("\0{}", 3), 0},
                        Case{std::string("{\"a\0\":1}", 8), 3}}) {
    SCOPED_TRACE(::testing::PrintToString(c.text));
    ExpectCorruption(Image(c.text, 0), {"header contains a NUL byte at position " + std::to_string(c.at)});
  }
  // A tensor hidden behind a NUL is not silently dropped either.
  std::string header = "{" + Entry("w", "U8", "[0]", "[0,0]") + "}" + std::string(1, '\0') + "\"x\":5}";
  ExpectCorruption(Image(header, 0), {"NUL byte"});
}

TEST_F(SafetensorsTest, ByteOrderMarkFails) {
  // Not JSON whitespace (nlohmann would skip it; the reference parser does not).
  ExpectCorruption(Image("\xef\xbb\xbf{}", 0), {"byte order mark"});
  ExpectCorruption(Image("\xef\xbb\xbf" + std::string(kValidHeader), kValidDataBytes), {"byte order mark"});
  // Elsewhere it is a syntax error.
  ExpectCorruption(Image(" \xef\xbb\xbf{}", 0), {"not valid JSON"});
}

TEST_F(SafetensorsTest, NumberBeyondDoubleRangeFails) {
  // nlohmann reports these as out_of_range.406; that must come back as a
  // Corruption, never as an escaping exception.
  for (std::string_view text : {R"({"a":1e400})", R"({"__metadata__":{"k":-1e999}})",
                                R"({"w":{"dtype":"U8","shape":[1e400],"data_offsets":[0,0]}})"}) {
    SCOPED_TRACE(std::string(text));
    ExpectCorruption(Image(text, 0), {"header", "not valid JSON", "number overflow"});
  }
  std::string digits(400, '9');
  ExpectCorruption(Image("{\"w\":{\"dtype\":\"U8\",\"shape\":[" + digits + "],\"data_offsets\":[0,0]}}", 0),
                   {"not valid JSON"});
}

TEST_F(SafetensorsTest, JsonErrorMessageIsShort) {
  Result<ParsedHeader> r = Parse(Image("{\"" + std::string(100000, 'a'), 0));
  ExpectCorruption(r, {"not valid JSON"});
  EXPECT_LT(r.status().message().size(), 1000u);
}

TEST_F(SafetensorsTest, DeeplyNestedJsonFailsEarly) {
  const size_t depth = 100000;
  std::string header = R"({"__metadata__":{"k":)" + std::string(depth, '[') + std::string(depth, ']') + "}}";
  ExpectCorruption(Image(header, 0), {"header", "nest"});
}

TEST_F(SafetensorsTest, HeaderJsonButNotObjectFails) {
  for (std::string_view text : {"[]", "[{}]", "123", "-1.5", "\"str\"", "null", "true"}) {
    SCOPED_TRACE(std::string(text));
    ExpectCorruption(Image(text, 0), {"header is not a JSON object"});
  }
}

TEST_F(SafetensorsTest, LeadingAndTrailingWhitespaceAccepted) {
  ParsedHeader h = ExpectOk(Image(" \t\r\n{}\n\r\t ", 0));
  EXPECT_TRUE(h.tensors.empty());
  // Padding with spaces, as the reference writer does, and a leading newline.
  std::string header = "\n  " + std::string(kValidHeader) + "        ";
  h = ExpectOk(Image(header, kValidDataBytes));
  EXPECT_EQ(h.header_bytes, header.size());
  EXPECT_EQ(h.data_offset_bytes, 8 + header.size());
  EXPECT_EQ(h.tensors.size(), 2u);
}

// --- __metadata__ --------------------------------------------------------------

TEST_F(SafetensorsTest, MetadataAbsentAccepted) {
  ParsedHeader h = ExpectOk(Image("{" + Entry("w", "U8", "[1]", "[0,1]") + "}", 1));
  EXPECT_TRUE(h.metadata.empty());
  EXPECT_EQ(h.tensors.size(), 1u);
}

TEST_F(SafetensorsTest, MetadataNullAccepted) {
  ParsedHeader h = ExpectOk(Image(R"({"__metadata__":null,)" + Entry("w", "U8", "[1]", "[0,1]") + "}", 1));
  EXPECT_TRUE(h.metadata.empty());
  EXPECT_EQ(h.tensors.size(), 1u);
  h = ExpectOk(Image(R"({"__metadata__":{}})", 0));
  EXPECT_TRUE(h.metadata.empty());
}

TEST_F(SafetensorsTest, MetadataNotObjectFails) {
  for (std::string_view v : {"[]", "\"x\"", "1", "true", "[[\"k\",\"v\"]]"}) {
    SCOPED_TRACE(std::string(v));
    ExpectCorruption(Image(R"({"__metadata__":)" + std::string(v) + "}", 0),
                     {"__metadata__ is not a JSON object"});
  }
}

TEST_F(SafetensorsTest, MetadataNonStringValueFails) {
  for (std::string_view v : {"1", "null", "true", "[]", "{\"x\":\"y\"}", "1.5"}) {
    SCOPED_TRACE(std::string(v));
    ExpectCorruption(Image(R"({"__metadata__":{"ok":"fine","bad_key":)" + std::string(v) + "}}", 0),
                     {"__metadata__ value for 'bad_key' is not a string"});
  }
}

// --- tensor entries ------------------------------------------------------------

TEST_F(SafetensorsTest, TensorEntryNotObjectFails) {
  for (std::string_view v : {"1", "null", "[]", "\"U8\""}) {
    ExpectCorruption(Image(R"({"layer.w":)" + std::string(v) + "}", 0),
                     {"tensor 'layer.w'", "entry is not a JSON object"});
  }
}

TEST_F(SafetensorsTest, UnknownDtypeFails) {
  for (std::string_view d : {"F8", "bf16", "", "FLOAT32", "Q4_K"}) {
    std::string header = "{" + Entry("layer.w", d, "[1]", "[0,1]") + "}";
    ExpectCorruption(Image(header, 1), {"tensor 'layer.w'", "unknown dtype '" + std::string(d) + "'"});
  }
  // A dtype that is not a string at all.
  ExpectCorruption(Image(Replace(kValidHeader, "\"F32\"", "32"), kValidDataBytes),
                   {"tensor 'a'", "\"dtype\" is not a string"});
}

TEST_F(SafetensorsTest, MissingDtypeFails) {
  ExpectCorruption(Image(Replace(kValidHeader, R"("dtype":"U8",)", ""), kValidDataBytes),
                   {"tensor 'b'", "missing \"dtype\""});
}

TEST_F(SafetensorsTest, MissingShapeFails) {
  ExpectCorruption(Image(Replace(kValidHeader, R"("shape":[3],)", ""), kValidDataBytes),
                   {"tensor 'b'", "missing \"shape\""});
}

TEST_F(SafetensorsTest, MissingDataOffsetsFails) {
  ExpectCorruption(Image(Replace(kValidHeader, R"(,"data_offsets":[8,11])", ""), kValidDataBytes),
                   {"tensor 'b'", "missing \"data_offsets\""});
}

TEST_F(SafetensorsTest, ShapeNotArrayFails) {
  for (std::string_view v : {"3", "\"3\"", "{\"0\":3}", "null"}) {
    SCOPED_TRACE(std::string(v));
    ExpectCorruption(Image(Replace(kValidHeader, "[3]", v), kValidDataBytes),
                     {"tensor 'b'", "\"shape\" is not an array"});
  }
}

TEST_F(SafetensorsTest, NegativeShapeEntryFails) {
  ExpectCorruption(Image("{" + Entry("w", "U8", "[2,-3]", "[0,6]") + "}", 6),
                   {"tensor 'w'", "shape entry 1 is not a non-negative integer"});
  ExpectCorruption(Image("{" + Entry("w", "U8", "[-1]", "[0,0]") + "}", 0),
                   {"tensor 'w'", "shape entry 0 is not a non-negative integer"});
  // -9223372036854775808 (INT64_MIN) must not wrap into a valid size.
  ExpectCorruption(Image("{" + Entry("w", "U8", "[-9223372036854775808]", "[0,0]") + "}", 0),
                   {"shape entry 0 is not a non-negative integer"});
}

TEST_F(SafetensorsTest, FloatShapeEntryFails) {
  for (std::string_view s : {"[2.0]", "[1.5]", "[2e0]", "[1E1]", "[-0.0]"}) {
    SCOPED_TRACE(std::string(s));
    ExpectCorruption(Image("{" + Entry("w", "U8", s, "[0,2]") + "}", 2),
                     {"tensor 'w'", "shape entry 0 is not a non-negative integer"});
  }
}

TEST_F(SafetensorsTest, HugeShapeEntryFails) {
  // 2^64 and beyond do not fit; the JSON parser makes them floats.
  for (std::string_view s : {"[18446744073709551616]", "[99999999999999999999999]", "[1e30]"}) {
    SCOPED_TRACE(std::string(s));
    ExpectCorruption(Image("{" + Entry("w", "U8", s, "[0,0]") + "}", 0),
                     {"tensor 'w'", "shape entry 0 is not a non-negative integer"});
  }
}

TEST_F(SafetensorsTest, NonNumericShapeEntryFails) {
  for (std::string_view s : {"[\"3\"]", "[null]", "[true]", "[[3]]", "[1,{}]"}) {
    SCOPED_TRACE(std::string(s));
    ExpectCorruption(Image("{" + Entry("w", "U8", s, "[0,3]") + "}", 3),
                     {"tensor 'w'", "is not a non-negative integer"});
  }
}

TEST_F(SafetensorsTest, DataOffsetsNotPairFails) {
  for (std::string_view v : {"[8]", "[8,11,11]", "[]", "8", "\"8,11\"", "{\"0\":8,\"1\":11}", "null"}) {
    SCOPED_TRACE(std::string(v));
    ExpectCorruption(Image(Replace(kValidHeader, "[8,11]", v), kValidDataBytes),
                     {"tensor 'b'", "\"data_offsets\" is not a [begin, end] pair"});
  }
}

TEST_F(SafetensorsTest, DataOffsetsNotNonNegativeIntegersFails) {
  for (std::string_view v : {"[-1,11]", "[8,-11]", "[8.0,11]", "[8,11.5]", "[8,18446744073709551616]",
                             "[\"8\",11]", "[null,11]"}) {
    SCOPED_TRACE(std::string(v));
    ExpectCorruption(Image(Replace(kValidHeader, "[8,11]", v), kValidDataBytes),
                     {"tensor 'b'", "\"data_offsets\" holds something other than non-negative integers"});
  }
}

TEST_F(SafetensorsTest, DataOffsetsBeginAfterEndFails) {
  ExpectCorruption(Image(Replace(kValidHeader, "[8,11]", "[11,8]"), kValidDataBytes),
                   {"tensor 'b'", "data_offsets [11, 8] end before they begin"});
  // With a huge begin, end - begin would wrap to a small number.
  ExpectCorruption(Image("{" + Entry("w", "U8", "[0]", "[18446744073709551615,0]") + "}", 0),
                   {"tensor 'w'", "end before they begin"});
}

TEST_F(SafetensorsTest, SizeMismatchFails) {
  // F32 [2] needs 8 bytes.
  ExpectCorruption(Image(Replace(kValidHeader, "[0,8]", "[0,7]"), kValidDataBytes),
                   {"tensor 'a'", "data_offsets [0, 7] span 7 bytes but F32 of this shape needs 8"});
  ExpectCorruption(Image(Replace(kValidHeader, "[0,8]", "[0,9]"), kValidDataBytes),
                   {"tensor 'a'", "span 9 bytes but F32 of this shape needs 8"});
  // Shape and offsets agree with another dtype only.
  ExpectCorruption(Image(Replace(kValidHeader, "\"F32\"", "\"F64\""), kValidDataBytes),
                   {"tensor 'a'", "span 8 bytes but F64 of this shape needs 16"});
  // A sub-byte tensor that does not fill whole bytes.
  ExpectCorruption(Image("{" + Entry("q", "F4", "[3]", "[0,2]") + "}", 2),
                   {"tensor 'q'", "3 elements of F4 do not fill whole bytes"});
  ExpectCorruption(Image("{" + Entry("q", "F6_E2M3", "[3]", "[0,2]") + "}", 2),
                   {"tensor 'q'", "do not fill whole bytes"});
  // Zero elements need zero bytes.
  ExpectCorruption(Image("{" + Entry("z", "F32", "[0]", "[0,4]") + "}", 4),
                   {"tensor 'z'", "span 4 bytes but F32 of this shape needs 0"});
}

TEST_F(SafetensorsTest, ShapeProductOverflowFails) {
  ExpectCorruption(Image("{" + Entry("w", "U8", "[4294967296,4294967296]", "[0,0]") + "}", 0),
                   {"tensor 'w'", "more elements than fit in 64 bits"});
  // numel fits but numel * bits does not.
  ExpectCorruption(Image("{" + Entry("w", "F32", "[4611686018427387904]", "[0,0]") + "}", 0),
                   {"tensor 'w'", "byte size overflows 64 bits"});
  // A product that wraps to exactly a plausible small size must not pass:
  // 2^32 * 2^32 + ... wraps to 0 modulo 2^64.
  ExpectCorruption(Image("{" + Entry("w", "U8", "[65536,65536,65536,65536]", "[0,0]") + "}", 0),
                   {"tensor 'w'", "more elements than fit in 64 bits"});
}

// --- tiling of the data section ------------------------------------------------

TEST_F(SafetensorsTest, GapBetweenTensorsFails) {
  std::string header = "{" + Entry("a", "U8", "[4]", "[0,4]") + "," + Entry("b", "U8", "[4]", "[6,10]") + "}";
  ExpectCorruption(Image(header, 10),
                   {"tensor 'b'", "data_offsets [6, 10]", "leave a gap: the previous tensor ends at 4"});
  // A gap before the first tensor.
  ExpectCorruption(Image("{" + Entry("a", "U8", "[4]", "[2,6]") + "}", 6),
                   {"tensor 'a'", "leave a gap: the previous tensor ends at 0"});
}

TEST_F(SafetensorsTest, OverlappingTensorsFail) {
  std::string header = "{" + Entry("a", "U8", "[4]", "[0,4]") + "," + Entry("b", "U8", "[4]", "[2,6]") + "}";
  ExpectCorruption(Image(header, 6), {"tensor 'b'", "data_offsets [2, 6]", "overlap the previous tensor, which ends at 4"});
  // Two tensors on the very same bytes.
  header = "{" + Entry("a", "U8", "[4]", "[0,4]") + "," + Entry("b", "U8", "[4]", "[0,4]") + "}";
  ExpectCorruption(Image(header, 4), {"overlap the previous tensor"});
  // A zero-size tensor inside another one.
  header = "{" + Entry("a", "U8", "[4]", "[0,4]") + "," + Entry("z", "U8", "[0]", "[2,2]") + "}";
  ExpectCorruption(Image(header, 4), {"tensor 'z'", "overlap"});
}

TEST_F(SafetensorsTest, TrailingBytesAfterLastTensorFail) {
  std::string image = ValidImage() + "xyz";
  ExpectCorruption(image, {"3 bytes after the last tensor belong to no tensor"});
  ExpectCorruption(Image("{}", 1), {"1 bytes after the last tensor belong to no tensor"});
}

TEST_F(SafetensorsTest, TensorPastEndOfDataFails) {
  std::string image = ValidImage();
  ShrinkBy(&image, 1);
  ExpectCorruption(image, {"tensor 'b'", "data_offsets [8, 11]", "run past the end of the 10-byte data section"});
  // Far past the end: the end offset is not used to allocate or read anything.
  std::string header = "{" + Entry("w", "U8", "[1099511627776]", "[0,1099511627776]") + "}";
  ExpectCorruption(Image(header, 16), {"tensor 'w'", "run past the end of the 16-byte data section"});
}

TEST_F(SafetensorsTest, DuplicateTensorNameFails) {
  // The same key twice in the JSON text: a plain parser would keep one.
  std::string header = "{" + Entry("w", "U8", "[4]", "[0,4]") + "," + Entry("w", "U8", "[4]", "[4,8]") + "}";
  ExpectCorruption(Image(header, 8), {"header", "key 'w' appears twice"});
  // Also when the two entries are identical.
  header = "{" + Entry("w", "U8", "[4]", "[0,4]") + "," + Entry("w", "U8", "[4]", "[0,4]") + "}";
  ExpectCorruption(Image(header, 4), {"key 'w' appears twice"});
}

TEST_F(SafetensorsTest, DuplicateKeyInsideMetadataFails) {
  ExpectCorruption(Image(R"({"__metadata__":{"k":"1","other":"x","k":"2"}})", 0), {"key 'k' appears twice"});
  // And a repeated __metadata__ itself.
  ExpectCorruption(Image(R"({"__metadata__":{"k":"1"},"__metadata__":{"k":"1"}})", 0),
                   {"key '__metadata__' appears twice"});
  // And a repeated field inside a tensor entry.
  ExpectCorruption(Image(Replace(kValidHeader, R"("dtype":"U8")", R"("dtype":"U8","dtype":"U8")"), kValidDataBytes),
                   {"key 'dtype' appears twice"});
}

TEST_F(SafetensorsTest, SameKeyInDifferentObjectsIsNotADuplicate) {
  // "dtype" appears in both entries and "a" both as a tensor and a metadata key.
  ParsedHeader h = ExpectOk(Image(R"({"__metadata__":{"a":"x","b":"y"},)" + Entry("a", "U8", "[1]", "[0,1]") + "," +
                                      Entry("b", "U8", "[1]", "[1,2]") + "}",
                                  2));
  EXPECT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.metadata.size(), 2u);
}

TEST_F(SafetensorsTest, RepeatedKeyInsideAnIgnoredValueFails) {
  // A field hoist does not read still follows JSON's rules, however deep.
  ExpectCorruption(Image(Replace(kValidHeader, R"("dtype":"U8")", R"("dtype":"U8","x":{"y":[{"k":1,"k":2}]})"),
                         kValidDataBytes),
                   {"key 'k' appears twice"});
  ExpectCorruption(Image(Replace(kValidHeader, R"("dtype":"U8")", R"("dtype":"U8","x":1,"x":2)"), kValidDataBytes),
                   {"key 'x' appears twice"});
  // Unknown fields are otherwise skipped, whatever they hold.
  ParsedHeader h = ExpectOk(Image(
      Replace(kValidHeader, R"("dtype":"U8")", R"("dtype":"U8","x":{"dtype":[{"shape":{}}],"data_offsets":null})"),
      kValidDataBytes));
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[1].shape, std::vector<uint64_t>{3});
}

TEST_F(SafetensorsTest, FirstRepeatedTensorNameIsTheOneNamed) {
  std::string header = "{" + Entry("a", "U8", "[1]", "[0,1]") + "," + Entry("b", "U8", "[1]", "[1,2]") + "," +
                       Entry("c", "U8", "[1]", "[2,3]") + "," + Entry("b", "U8", "[1]", "[3,4]") + "," +
                       Entry("a", "U8", "[1]", "[4,5]") + "}";
  ExpectCorruption(Image(header, 5), {"key 'b' appears twice"});
}

TEST_F(SafetensorsTest, EntryProblemsAreJudgedInOneOrderWhateverTheFieldOrder) {
  // data_offsets and shape are wrong too, but a missing dtype comes first.
  ExpectCorruption(Image(R"({"w":{"data_offsets":[1],"shape":"x"}})", 0), {"tensor 'w'", "missing \"dtype\""});
  // A shape of more than kMaxRank dimensions is named for its rank, even
  // when its elements are wrong as well.
  std::string dims = "[";
  for (uint64_t i = 0; i <= kMaxRank; ++i) dims += (i ? ",\"x\"" : "\"x\"");
  dims += "]";
  ExpectCorruption(Image(R"({"w":{"data_offsets":[0,0],"shape":)" + dims + R"(,"dtype":"U8"}})", 0),
                   {"tensor 'w'", "shape has 65 dimensions"});
  // Values of the wrong kind, containers included.
  ExpectCorruption(Image(R"({"w":{"dtype":{"F32":1},"shape":[],"data_offsets":[0,4]}})", 4),
                   {"\"dtype\" is not a string"});
  ExpectCorruption(Image(R"({"w":{"dtype":"U8","shape":[2,[1]],"data_offsets":[0,2]}})", 2),
                   {"shape entry 1 is not a non-negative integer"});
  ExpectCorruption(Image(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":{"begin":0,"end":2}}})", 2),
                   {"\"data_offsets\" is not a [begin, end] pair"});
  ExpectCorruption(Image(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,[2]]}})", 2),
                   {"\"data_offsets\" holds something other than non-negative integers"});
  ExpectCorruption(Image(R"({"__metadata__":{"k":{"v":"1"}}})", 0), {"__metadata__ value for 'k' is not a string"});
  ExpectCorruption(Image(R"({"__metadata__":["k"]})", 0), {"__metadata__ is not a JSON object"});
  ExpectCorruption(Image(R"({"w":[{"dtype":"U8"}]})", 0), {"tensor 'w'", "entry is not a JSON object"});
  ExpectCorruption(Image(R"([{"w":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}])", 0),
                   {"header is not a JSON object"});
}

TEST_F(SafetensorsTest, SyntaxErrorOutranksAnEarlierBadEntry) {
  // The first entry is wrong, but the text is not JSON at all: that is what
  // the message says, as for any other file that is not JSON.
  ExpectCorruption(Image(R"({"w":{"dtype":"NOPE","shape":[],"data_offsets":[0,0]}, "v": })", 0),
                   {"not valid JSON"});
}

TEST_F(SafetensorsTest, ZeroSizeTensorsAccepted) {
  std::string header = "{" + Entry("empty0", "F32", "[0]", "[0,0]") + "," + Entry("a", "U8", "[2]", "[0,2]") + "," +
                       Entry("empty1", "BF16", "[3,0,5]", "[2,2]") + "," + Entry("b", "U8", "[1]", "[2,3]") + "," +
                       Entry("empty2", "F4", "[0]", "[3,3]") + "}";
  ParsedHeader h = ExpectOk(Image(header, 3));
  ASSERT_EQ(h.tensors.size(), 5u);
  for (const HeaderTensor& t : h.tensors) {
    if (t.name.rfind("empty", 0) == 0) {
      EXPECT_EQ(t.begin_bytes, t.end_bytes) << t.name;
    }
  }
  // Sorted by begin, then end: a zero-size tensor comes before a real one
  // that starts at the same offset.
  std::vector<std::string> names;
  for (const HeaderTensor& t : h.tensors) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"empty0", "a", "empty1", "b", "empty2"}));
  // A file of zero-size tensors only, and no data.
  h = ExpectOk(Image("{" + Entry("e", "U8", "[0]", "[0,0]") + "}", 0));
  EXPECT_EQ(h.tensors.size(), 1u);
}

TEST_F(SafetensorsTest, EmptyHeaderWithNoDataAccepted) {
  ParsedHeader h = ExpectOk(Image("{}", 0));
  EXPECT_TRUE(h.tensors.empty());
  EXPECT_TRUE(h.metadata.empty());
  EXPECT_EQ(h.header_bytes, 2u);
  EXPECT_EQ(h.data_offset_bytes, 10u);
  EXPECT_EQ(h.data_bytes, 0u);
  // A zero-length header is not JSON.
  ExpectCorruption(Image("", 0), {"not valid JSON"});
}

TEST_F(SafetensorsTest, ScalarTensorAccepted) {
  ParsedHeader h = ExpectOk(Image("{" + Entry("s", "F64", "[]", "[0,8]") + "}", 8));
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_TRUE(h.tensors[0].shape.empty());
  EXPECT_EQ(h.tensors[0].end_bytes, 8u);
}

TEST_F(SafetensorsTest, MessagesStayOneLineForHostileNames) {
  // JSON "\n" in a name is a real newline in the key; the message escapes it.
  std::string header = "{" + Entry("evil\\nname\\u0007\\u007f", "NOPE", "[1]", "[0,1]") + "}";
  Result<ParsedHeader> r = Parse(Image(header, 1));
  ExpectCorruption(r, {"tensor 'evil\\x0aname\\x07\\x7f'", "unknown dtype 'NOPE'"});
  // A hostile dtype string is quoted the same way.
  header = "{" + Entry("w", "F32\\r\\nX", "[1]", "[0,1]") + "}";
  ExpectCorruption(Image(header, 1), {"unknown dtype 'F32\\x0d\\x0aX'"});
  // Tiling errors, duplicate keys and metadata keys quote names too.
  header = "{" + Entry("a\\nb", "U8", "[1]", "[1,2]") + "}";
  ExpectCorruption(Image(header, 2), {"tensor 'a\\x0ab'", "leave a gap"});
  header = "{" + Entry("a\\nb", "U8", "[1]", "[0,1]") + "," + Entry("a\\nb", "U8", "[1]", "[1,2]") + "}";
  ExpectCorruption(Image(header, 2), {"key 'a\\x0ab' appears twice"});
  ExpectCorruption(Image(R"({"__metadata__":{"line\nbreak":1}})", 0), {"value for 'line\\x0abreak'"});
  // A raw control byte in the JSON text is a syntax error; its message stays one line.
  ExpectCorruption(Image(std::string("{\"a\nb\":1}"), 0), {"not valid JSON"});
  // A very long name is shortened.
  std::string long_name(5000, 'n');
  r = Parse(Image("{" + Entry(long_name, "NOPE", "[1]", "[0,1]") + "}", 1));
  ExpectCorruption(r, {"...'", "unknown dtype 'NOPE'"});
  EXPECT_LT(r.status().message().size(), 600u);
}

TEST(SafetensorsQuoteNameTest, EscapesAndShortens) {
  EXPECT_EQ(QuoteName("plain.weight"), "'plain.weight'");
  EXPECT_EQ(QuoteName(""), "''");
  EXPECT_EQ(QuoteName("a\nb"), "'a\\x0ab'");
  EXPECT_EQ(QuoteName(std::string_view("\0\x1f\x7f", 3)), "'\\x00\\x1f\\x7f'");
  EXPECT_EQ(QuoteName("caf\xc3\xa9"), "'caf\xc3\xa9'");  // UTF-8 passes through
  std::string q = QuoteName(std::string(1000, 'x'));
  EXPECT_LT(q.size(), 200u);
  EXPECT_NE(q.find("...'"), std::string::npos);
  EXPECT_EQ(q.find('\n'), std::string::npos);
}

// --- the file-reading path -------------------------------------------------------

TEST_F(SafetensorsTest, CheckHeaderLengthMatchesBufferPath) {
  std::string image = ValidImage();
  Result<uint64_t> n = CheckHeaderLength(kLabel, std::string_view(image).substr(0, 64), image.size());
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(*n, kValidHeader.size());
  Result<uint64_t> bad = CheckHeaderLength(kLabel, std::string_view(image).substr(0, 64), 8 + *n - 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kCorruption);
  Result<ParsedHeader> h = ParseHeaderJson(kLabel, kValidHeader, kValidDataBytes);
  ASSERT_TRUE(h.ok()) << h.status().message();
  EXPECT_EQ(h->tensors.size(), 2u);
  ExpectCorruption(ParseHeaderJson(kLabel, kValidHeader, kValidDataBytes + 1), {"1 bytes after the last tensor"});
}

}  // namespace
}  // namespace hoist
