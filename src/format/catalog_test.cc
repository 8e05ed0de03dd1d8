// Tests for OpenCatalog: single files, directories without an index, and
// Hugging Face sharded directories cross-checked against their index.
#include "hoist/catalog.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hoist/dtype.h"

namespace hoist {
namespace {

namespace fs = std::filesystem;

// One tensor of a hand-written file: U8/F32/... with the bytes it holds.
struct T {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
};

class CatalogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() / ("hoist_catalog_test_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter++) + "_" + info->name());
    fs::remove_all(root_);
    ASSERT_TRUE(fs::create_directories(root_));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::string Path(const std::string& rel) const { return (root_ / rel).string(); }

  static void WriteText(const std::string& path, const std::string& bytes) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << path;
  }
  static std::string ReadText(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  // Writes a safetensors file from a raw header and data section.
  static void WriteRaw(const std::string& path, const std::string& header, const std::string& data) {
    std::string bytes(8, '\0');
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    WriteText(path, bytes + header + data);
  }

  // Writes `tensors` back to back in the given order (header keys in that
  // order too), each filled with its own byte value. Returns the header
  // length N. `metadata_json` is inserted verbatim when not empty.
  static uint64_t WriteFile(const std::string& path, const std::vector<T>& tensors,
                            const std::string& metadata_json = "") {
    std::string header = "{";
    std::string data;
    if (!metadata_json.empty()) header += "\"__metadata__\":" + metadata_json;
    for (const T& t : tensors) {
      uint64_t numel = 1;
      std::string shape = "[";
      for (size_t i = 0; i < t.shape.size(); ++i) {
        numel *= t.shape[i];
        shape += (i ? "," : "") + std::to_string(t.shape[i]);
      }
      shape += "]";
      uint64_t bytes = numel * static_cast<uint64_t>(DTypeBits(*ParseDTypeName(t.dtype))) / 8;
      if (header.size() > 1) header += ",";
      header += "\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
                std::to_string(data.size()) + "," + std::to_string(data.size() + bytes) + "]}";
      data.append(bytes, static_cast<char>(FillByte(t.name)));
    }
    header += "}";
    WriteRaw(path, header, data);
    return header.size();
  }
  static unsigned char FillByte(const std::string& name) {
    unsigned char h = 17;
    for (char c : name) h = static_cast<unsigned char>(h * 31 + static_cast<unsigned char>(c));
    return h;
  }

  // A two-shard checkpoint in `dir`: shard 1 holds a (F32 [2,2]) and b (U8 [3]),
  // shard 2 holds c (BF16 [5]). 16 + 3 + 10 = 29 bytes of tensors.
  static constexpr uint64_t kShardedTotal = 29;
  std::string Shard1(const std::string& dir) const { return Path(dir + "/model-00001-of-00002.safetensors"); }
  std::string Shard2(const std::string& dir) const { return Path(dir + "/model-00002-of-00002.safetensors"); }
  void WriteShards(const std::string& dir) {
    WriteFile(Shard1(dir), {{"a", "F32", {2, 2}}, {"b", "U8", {3}}}, R"({"format":"pt"})");
    WriteFile(Shard2(dir), {{"c", "BF16", {5}}});
  }
  std::string IndexPath(const std::string& dir) const { return Path(dir + "/" + kIndexFileName); }
  void WriteIndex(const std::string& dir, const std::string& weight_map_json,
                  const std::string& total_size_json = std::to_string(kShardedTotal)) {
    std::string text = "{\"metadata\":{";
    if (!total_size_json.empty()) text += "\"total_size\":" + total_size_json;
    text += "},\"weight_map\":" + weight_map_json + "}";
    WriteText(IndexPath(dir), text);
  }
  static constexpr const char* kGoodWeightMap =
      R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",)"
      R"("c":"model-00002-of-00002.safetensors"})";

  static void ExpectError(const Result<Catalog>& r, StatusCode code, const std::vector<std::string>& parts) {
    ASSERT_FALSE(r.ok()) << "expected a failure";
    EXPECT_EQ(r.status().code(), code) << StatusCodeName(r.status().code()) << ": " << r.status().message();
    EXPECT_EQ(r.status().message().find('\n'), std::string::npos) << r.status().message();
    for (const std::string& p : parts) {
      EXPECT_NE(r.status().message().find(p), std::string::npos) << "'" << p << "' not in: " << r.status().message();
    }
  }
  static Catalog ExpectOk(const Result<Catalog>& r) {
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? *r : Catalog{};
  }
  static std::vector<std::string> Names(const Catalog& c) {
    std::vector<std::string> out;
    for (const TensorInfo& t : c.tensors()) out.push_back(t.name);
    return out;
  }

  fs::path root_;
};

// --- a single file ---------------------------------------------------------------

TEST_F(CatalogTest, SingleFile) {
  std::string path = Path("one.safetensors");
  uint64_t n = WriteFile(path, {{"w", "F32", {2, 3}}, {"bias", "F16", {3}}, {"flag", "BOOL", {1}}},
                         R"({"format":"pt","k":"v"})");
  Catalog c = ExpectOk(OpenCatalog(path));
  ASSERT_EQ(c.files().size(), 1u);
  EXPECT_EQ(c.files()[0].path, path);
  EXPECT_EQ(c.files()[0].size_bytes, fs::file_size(path));
  EXPECT_EQ(c.files()[0].data_offset_bytes, 8 + n);
  EXPECT_EQ(Names(c), (std::vector<std::string>{"w", "bias", "flag"}));
  EXPECT_EQ(c.total_bytes(), 24u + 6u + 1u);
  EXPECT_EQ(c.metadata().size(), 2u);
  EXPECT_EQ(c.metadata().at("format"), "pt");
  EXPECT_EQ(c.metadata().at("k"), "v");

  const TensorInfo* w = c.Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kF32);
  EXPECT_EQ(w->shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(w->file_index, 0u);
  EXPECT_EQ(w->offset_bytes, 8 + n);
  EXPECT_EQ(w->size_bytes, 24u);
  const TensorInfo* bias = c.Find("bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->dtype, DType::kF16);
  EXPECT_EQ(bias->offset_bytes, 8 + n + 24);
  EXPECT_EQ(bias->size_bytes, 6u);
  EXPECT_EQ(c.Find("flag")->offset_bytes, 8 + n + 30);
  EXPECT_EQ(c.Find("missing"), nullptr);
  EXPECT_EQ(c.Find(""), nullptr);
  EXPECT_EQ(c.Find("W"), nullptr);
}

TEST_F(CatalogTest, OffsetBytesIsAbsoluteAndPointsAtTheData) {
  // A header of odd length (no padding), as real files have.
  std::string path = Path("odd.safetensors");
  uint64_t n = WriteFile(path, {{"x", "U8", {5}}, {"yy", "I16", {3}}, {"z", "F64", {1}}});
  ASSERT_EQ(n % 2, 1u) << "want an unaligned data section for this test; adjust the names";
  Catalog c = ExpectOk(OpenCatalog(path));
  std::string bytes = ReadText(path);
  uint64_t expected_begin = 0;
  for (const TensorInfo& t : c.tensors()) {
    EXPECT_EQ(t.offset_bytes, 8 + n + expected_begin) << t.name;
    expected_begin += t.size_bytes;
    ASSERT_LE(t.offset_bytes + t.size_bytes, bytes.size());
    for (uint64_t i = 0; i < t.size_bytes; ++i) {
      ASSERT_EQ(static_cast<unsigned char>(bytes[t.offset_bytes + i]), FillByte(t.name)) << t.name << " byte " << i;
    }
  }
  EXPECT_EQ(8 + n + expected_begin, bytes.size());
}

TEST_F(CatalogTest, TensorsInOffsetOrderNotNameOrHeaderOrder) {
  // Header lists "a" (at offset 8) before "z" (at offset 0).
  std::string path = Path("order.safetensors");
  std::string header = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[8,12]},)"
                       R"("m":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
                       R"("z":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  WriteRaw(path, header, std::string(12, 'x'));
  Catalog c = ExpectOk(OpenCatalog(path));
  EXPECT_EQ(Names(c), (std::vector<std::string>{"z", "m", "a"}));
  EXPECT_EQ(c.tensors()[0].offset_bytes, 8 + header.size());
  EXPECT_EQ(c.tensors()[2].offset_bytes, 8 + header.size() + 8);
}

TEST_F(CatalogTest, CorruptSingleFileNamesIt) {
  std::string path = Path("bad.safetensors");
  WriteRaw(path, R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", "abc");
  ExpectError(OpenCatalog(path), StatusCode::kCorruption, {path, "tensor 'w'", "run past the end"});
}

TEST_F(CatalogTest, MissingPathIsNotFound) {
  std::string path = Path("nope.safetensors");
  ExpectError(OpenCatalog(path), StatusCode::kNotFound, {path});
}

TEST_F(CatalogTest, EmptyFileAndZeroTensorFile) {
  WriteText(Path("empty.safetensors"), "");
  ExpectError(OpenCatalog(Path("empty.safetensors")), StatusCode::kCorruption,
              {Path("empty.safetensors"), "too short"});
  WriteRaw(Path("none.safetensors"), "{}", "");
  Catalog c = ExpectOk(OpenCatalog(Path("none.safetensors")));
  EXPECT_TRUE(c.tensors().empty());
  EXPECT_EQ(c.total_bytes(), 0u);
  EXPECT_EQ(c.files().size(), 1u);
}

// --- a directory without an index ---------------------------------------------------

TEST_F(CatalogTest, DirectoryWithoutIndexSortedAllTensors) {
  // Written out of name order; other files are ignored.
  WriteFile(Path("d/c.safetensors"), {{"c1", "U8", {2}}}, R"({"who":"c","only_c":"1"})");
  WriteFile(Path("d/a.safetensors"), {{"a2", "I32", {2}}, {"a1", "U8", {1}}}, R"({"who":"a"})");
  WriteFile(Path("d/b.safetensors"), {{"b1", "F16", {4}}});
  WriteText(Path("d/config.json"), "{}");
  WriteText(Path("d/notes.txt"), "not a checkpoint");
  fs::create_directories(Path("d/sub.safetensors"));  // a directory, not a file
  Catalog c = ExpectOk(OpenCatalog(Path("d")));
  ASSERT_EQ(c.files().size(), 3u);
  EXPECT_EQ(fs::path(c.files()[0].path).filename(), "a.safetensors");
  EXPECT_EQ(fs::path(c.files()[1].path).filename(), "b.safetensors");
  EXPECT_EQ(fs::path(c.files()[2].path).filename(), "c.safetensors");
  // File order, then offset order within each file.
  EXPECT_EQ(Names(c), (std::vector<std::string>{"a2", "a1", "b1", "c1"}));
  EXPECT_EQ(c.Find("a2")->file_index, 0u);
  EXPECT_EQ(c.Find("b1")->file_index, 1u);
  EXPECT_EQ(c.Find("c1")->file_index, 2u);
  EXPECT_EQ(c.total_bytes(), 8u + 1u + 8u + 2u);
  // First file wins on metadata conflicts; the union holds everything.
  EXPECT_EQ(c.metadata().at("who"), "a");
  EXPECT_EQ(c.metadata().at("only_c"), "1");
  // offset_bytes is absolute: the file's data section plus the offset in it.
  EXPECT_EQ(c.Find("a2")->offset_bytes, c.files()[0].data_offset_bytes + 0);
  EXPECT_EQ(c.Find("a1")->offset_bytes, c.files()[0].data_offset_bytes + 8);
  EXPECT_EQ(c.Find("b1")->offset_bytes, c.files()[1].data_offset_bytes);
  EXPECT_EQ(c.Find("c1")->offset_bytes, c.files()[2].data_offset_bytes);
}

TEST_F(CatalogTest, DirectoryWithoutIndexSortsManyFiles) {
  // Enough files that a directory listing is unlikely to come back sorted by
  // chance; written in reverse order.
  constexpr int kFiles = 24;
  for (int i = kFiles - 1; i >= 0; --i) {
    char name[32];
    std::snprintf(name, sizeof(name), "d/part-%02d.safetensors", i);
    WriteFile(Path(name), {{"t" + std::to_string(i), "U8", {static_cast<uint64_t>(i + 1)}}});
  }
  Catalog c = ExpectOk(OpenCatalog(Path("d")));
  ASSERT_EQ(c.files().size(), static_cast<size_t>(kFiles));
  ASSERT_EQ(c.tensors().size(), static_cast<size_t>(kFiles));
  for (int i = 0; i < kFiles; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "part-%02d.safetensors", i);
    EXPECT_EQ(fs::path(c.files()[i].path).filename(), name);
    EXPECT_EQ(c.tensors()[i].name, "t" + std::to_string(i));
    EXPECT_EQ(c.tensors()[i].file_index, static_cast<uint32_t>(i));
  }
  EXPECT_EQ(c.total_bytes(), static_cast<uint64_t>(kFiles * (kFiles + 1) / 2));
}

TEST_F(CatalogTest, DirectoryWithoutIndexDuplicateNameAcrossFiles) {
  WriteFile(Path("d/first.safetensors"), {{"shared.weight", "U8", {2}}, {"x", "U8", {1}}});
  WriteFile(Path("d/second.safetensors"), {{"y", "U8", {1}}, {"shared.weight", "U8", {2}}});
  ExpectError(OpenCatalog(Path("d")), StatusCode::kCorruption,
              {"tensor 'shared.weight'", Path("d/first.safetensors"), Path("d/second.safetensors"),
               "one name in two files"});
}

TEST_F(CatalogTest, DirectoryWithoutSafetensorsIsNotFound) {
  WriteText(Path("d/readme.txt"), "x");
  ExpectError(OpenCatalog(Path("d")), StatusCode::kNotFound, {Path("d"), "no .safetensors files"});
}

// Shards named as Hugging Face names them, with no index to say what the
// whole is: all of them or none. A download that stopped before one of
// them (and before the index) would otherwise load as a smaller model.
TEST_F(CatalogTest, DirectoryWithoutIndexNeedsEveryNumberedShard) {
  WriteFile(Path("d/model-00001-of-00003.safetensors"), {{"a", "U8", {1}}});
  WriteFile(Path("d/model-00003-of-00003.safetensors"), {{"c", "U8", {1}}});
  ExpectError(OpenCatalog(Path("d")), StatusCode::kNotFound,
              {Path("d"), "shard 'model-00002-of-00003.safetensors' of 3 is missing or unreadable",
               "no model.safetensors.index.json", "interrupted download"});
  // A dangling link where the shard should be counts as missing.
  fs::create_symlink("../blobs/never-finished", Path("d/model-00002-of-00003.safetensors"));
  ExpectError(OpenCatalog(Path("d")), StatusCode::kNotFound, {"'model-00002-of-00003.safetensors' of 3"});
  fs::remove(Path("d/model-00002-of-00003.safetensors"));
  WriteFile(Path("d/model-00002-of-00003.safetensors"), {{"b", "U8", {1}}});
  EXPECT_EQ(ExpectOk(OpenCatalog(Path("d"))).tensors().size(), 3u);
  // Each set on its own: another prefix's set is whole or not by itself.
  WriteFile(Path("d/adapter-00002-of-00002.safetensors"), {{"z", "U8", {1}}});
  ExpectError(OpenCatalog(Path("d")), StatusCode::kNotFound, {"shard 'adapter-00001-of-00002.safetensors' of 2"});
}

TEST_F(CatalogTest, DirectoryOfLinksToNothingSaysSo) {
  fs::create_directories(Path("d"));
  fs::create_symlink("../blobs/never-finished", Path("d/model.safetensors"));
  ExpectError(OpenCatalog(Path("d")), StatusCode::kNotFound,
              {Path("d"), "no .safetensors files that can be read", "'model.safetensors' (a link to nothing"});
}

TEST_F(CatalogTest, DirectoryWithCorruptFileNamesIt) {
  WriteFile(Path("d/a.safetensors"), {{"a", "U8", {1}}});
  WriteRaw(Path("d/b.safetensors"), "[]", "");
  ExpectError(OpenCatalog(Path("d")), StatusCode::kCorruption, {Path("d/b.safetensors"), "not a JSON object"});
}

// --- a directory with model.safetensors.index.json -----------------------------------

TEST_F(CatalogTest, IndexHappyPath) {
  WriteShards("m");
  WriteIndex("m", kGoodWeightMap);
  // A stray file that the index does not name is not part of the checkpoint.
  WriteFile(Path("m/stray.safetensors"), {{"stray", "U8", {1}}});
  Catalog c = ExpectOk(OpenCatalog(Path("m")));
  ASSERT_EQ(c.files().size(), 2u);
  EXPECT_EQ(c.files()[0].path, Shard1("m"));
  EXPECT_EQ(c.files()[1].path, Shard2("m"));
  EXPECT_EQ(Names(c), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(c.total_bytes(), kShardedTotal);
  EXPECT_EQ(c.Find("stray"), nullptr);
  const TensorInfo* cc = c.Find("c");
  ASSERT_NE(cc, nullptr);
  EXPECT_EQ(cc->file_index, 1u);
  EXPECT_EQ(cc->dtype, DType::kBF16);
  EXPECT_EQ(cc->size_bytes, 10u);
  EXPECT_EQ(cc->offset_bytes, c.files()[1].data_offset_bytes);
  EXPECT_EQ(c.Find("b")->offset_bytes, c.files()[0].data_offset_bytes + 16);
  EXPECT_EQ(c.metadata().at("format"), "pt");
}

TEST_F(CatalogTest, IndexWithoutTotalSizeAccepted) {
  WriteShards("m");
  WriteIndex("m", kGoodWeightMap, "");
  Catalog c = ExpectOk(OpenCatalog(Path("m")));
  EXPECT_EQ(c.tensors().size(), 3u);
}

TEST_F(CatalogTest, IndexListsNameAbsentFromItsShard) {
  WriteShards("m");
  WriteIndex("m",
             R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",)"
             R"("c":"model-00002-of-00002.safetensors","ghost":"model-00002-of-00002.safetensors"})");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption,
              {IndexPath("m"), "tensor 'ghost'", "model-00002-of-00002.safetensors", "does not contain it"});
}

TEST_F(CatalogTest, TensorInShardButNotInIndex) {
  WriteShards("m");
  WriteIndex("m", R"({"a":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"})");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption,
              {Shard1("m"), "tensor 'b'", "not in " + IndexPath("m")});
}

TEST_F(CatalogTest, IndexPutsTensorInWrongShard) {
  WriteShards("m");
  WriteIndex("m",
             R"({"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors",)"
             R"("c":"model-00002-of-00002.safetensors"})");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption,
              {IndexPath("m"), "tensor 'b'", "listed in 'model-00002-of-00002.safetensors'", "found in " + Shard1("m")});
}

TEST_F(CatalogTest, SameNameInTwoShardsWithIndex) {
  WriteFile(Path("m/model-00001-of-00002.safetensors"), {{"a", "U8", {1}}, {"dup", "U8", {2}}});
  WriteFile(Path("m/model-00002-of-00002.safetensors"), {{"dup", "U8", {2}}, {"c", "U8", {1}}});
  WriteIndex("m",
             R"({"a":"model-00001-of-00002.safetensors","dup":"model-00001-of-00002.safetensors",)"
             R"("c":"model-00002-of-00002.safetensors"})",
             "");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption,
              {"tensor 'dup'", Shard1("m"), Shard2("m"), "one name in two files"});
}

TEST_F(CatalogTest, IndexTotalSizeDisagrees) {
  WriteShards("m");
  WriteIndex("m", kGoodWeightMap, "30");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption,
              {IndexPath("m"), "metadata.total_size says 30 bytes but the shards hold 29 bytes"});
}

TEST_F(CatalogTest, IndexTotalSizeOfTwoBytesPerElementIsAWarningForFp8) {
  // An FP8 release: w F8_E4M3 [8] and its F32 scale [1], 9 elements in 12
  // bytes; its index, written for the model in 16-bit floats, says 18
  // (DeepSeek-V3's does this).
  WriteFile(Shard1("q"), {{"w", "F8_E4M3", {8}}});
  WriteFile(Shard2("q"), {{"w_scale", "F32", {1}}});
  const std::string map = R"({"w":"model-00001-of-00002.safetensors","w_scale":"model-00002-of-00002.safetensors"})";
  WriteIndex("q", map, "18");
  Catalog cat = ExpectOk(OpenCatalog(Path("q")));
  EXPECT_EQ(cat.total_bytes(), 12u);
  ASSERT_EQ(cat.warnings().size(), 1u);
  EXPECT_NE(cat.warnings()[0].find(IndexPath("q")), std::string::npos) << cat.warnings()[0];
  EXPECT_NE(cat.warnings()[0].find("2 bytes per element"), std::string::npos) << cat.warnings()[0];
  // Any other disagreement stays an error, one element off included.
  for (std::string v : {"16", "20", "9", "24"}) {
    SCOPED_TRACE(v);
    WriteIndex("q", map, v);
    ExpectError(OpenCatalog(Path("q")), StatusCode::kCorruption, {IndexPath("q"), "metadata.total_size says " + v});
  }
  // An index that agrees warns of nothing.
  WriteIndex("q", map, "12");
  EXPECT_TRUE(ExpectOk(OpenCatalog(Path("q"))).warnings().empty());
  // Without 8-bit floats, 2 bytes per element is no excuse: 4 + 3 + 5 = 12
  // elements here, of F32, U8 and BF16.
  WriteShards("m");
  WriteIndex("m", kGoodWeightMap, "24");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "metadata.total_size says 24"});
}

TEST_F(CatalogTest, IndexTotalSizeNotAnInteger) {
  for (std::string v : {"-29", "\"29\"", "29.5", "null", "1e300"}) {
    SCOPED_TRACE(v);
    WriteShards("m");
    WriteIndex("m", kGoodWeightMap, v);
    ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption,
                {IndexPath("m"), "metadata.total_size is not a non-negative integer"});
  }
  // Some writers emit it as a float with an integral value; that is fine.
  WriteIndex("m", kGoodWeightMap, "29.0");
  ExpectOk(OpenCatalog(Path("m")));
}

TEST_F(CatalogTest, IndexShardOutsideDirectoryRejected) {
  // A real, valid checkpoint sits next to the directory, so a loader without
  // the check would load it.
  WriteFile(Path("evil.safetensors"), {{"a", "U8", {1}}});
  WriteFile(Path("m/sub/inner.safetensors"), {{"z", "U8", {1}}});
  std::vector<std::string> bad = {"../evil.safetensors", "/etc/passwd", Path("evil.safetensors"),
                                  "sub/../../evil.safetensors", "./../evil.safetensors", ""};
  for (const std::string& target : bad) {
    SCOPED_TRACE(target);
    WriteIndex("m", "{\"a\":\"" + target + "\"}", "");
    ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption,
                {IndexPath("m"), "sends 'a' to '" + target + "'", "not a file inside the checkpoint directory"});
  }
  // A subdirectory inside the checkpoint is fine.
  WriteIndex("m", R"({"z":"sub/inner.safetensors"})", "");
  Catalog c = ExpectOk(OpenCatalog(Path("m")));
  ASSERT_EQ(c.tensors().size(), 1u);
  EXPECT_EQ(c.files()[0].path, Path("m/sub/inner.safetensors"));
}

TEST_F(CatalogTest, IndexShardMissingIsNotFound) {
  WriteShards("m");
  fs::remove(Shard2("m"));
  WriteIndex("m", kGoodWeightMap);
  ExpectError(OpenCatalog(Path("m")), StatusCode::kNotFound,
              {IndexPath("m"), "shard 'model-00002-of-00002.safetensors' does not exist"});
}

TEST_F(CatalogTest, ManyShardsReportTheFirstBadShardInIndexOrder) {
  // 24 one-tensor shards, read 8 at a time: whatever order the reads finish
  // in, the error names the first bad shard in the index's order.
  auto shard = [&](int i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-00024.safetensors", i);
    return std::string(name);
  };
  auto write_all = [&] {
    std::string map = "{";
    for (int i = 1; i <= 24; ++i) {
      WriteFile(Path("s/" + shard(i)), {{"t" + std::to_string(i), "U8", {2}}});
      map += (i > 1 ? "," : "") + ("\"t" + std::to_string(i) + "\":\"" + shard(i) + "\"");
    }
    WriteIndex("s", map + "}", "48");
  };
  write_all();
  EXPECT_EQ(ExpectOk(OpenCatalog(Path("s"))).tensors().size(), 24u);

  WriteText(Path("s/" + shard(9)), "not a safetensors file");  // corrupt
  fs::remove(Path("s/" + shard(17)));                          // missing
  ExpectError(OpenCatalog(Path("s")), StatusCode::kCorruption, {Path("s/" + shard(9))});

  write_all();
  fs::remove(Path("s/" + shard(5)));
  WriteText(Path("s/" + shard(20)), "not a safetensors file");
  ExpectError(OpenCatalog(Path("s")), StatusCode::kNotFound, {"shard '" + shard(5) + "' does not exist"});
}

TEST_F(CatalogTest, IndexNotJson) {
  WriteShards("m");
  WriteText(IndexPath("m"), "{\"weight_map\": {\"a\": ");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "not valid JSON"});
  WriteText(IndexPath("m"), "[1,2]");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "not a JSON object"});
  WriteText(IndexPath("m"), "{\"weight_map\":{\"a\":\"x\xff.safetensors\"}}");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "not valid UTF-8"});
  WriteText(IndexPath("m"), R"({"weight_map":{"a":"model-00001-of-00002.safetensors","a":"model-00001-of-00002.safetensors"}})");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "key 'a' appears twice"});
}

TEST_F(CatalogTest, IndexWithHugeNumberIsCorruption) {
  WriteShards("m");
  WriteIndex("m", kGoodWeightMap, "1e400");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "not valid JSON"});
}

TEST_F(CatalogTest, IndexWithNulByteFails) {
  WriteShards("m");
  std::string text = std::string("{\"weight_map\":") + kGoodWeightMap + "}";
  WriteText(IndexPath("m"), text + std::string(1, '\0') + R"({"weight_map":{"x":"y.safetensors"}})");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "NUL"});
}

TEST_F(CatalogTest, IndexWithByteOrderMarkFails) {
  WriteShards("m");
  WriteText(IndexPath("m"), std::string("\xef\xbb\xbf{\"weight_map\":") + kGoodWeightMap + "}");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "byte order mark"});
}

TEST_F(CatalogTest, ShardNameWithNewlineKeepsMessageOneLine) {
  WriteShards("m");
  WriteIndex("m", R"({"a":"x\ny.safetensors"})", "");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kNotFound, {"y.safetensors"});
}

TEST_F(CatalogTest, IndexWithoutWeightMap) {
  WriteShards("m");
  WriteText(IndexPath("m"), R"({"metadata":{"total_size":29}})");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "no \"weight_map\" object"});
  WriteText(IndexPath("m"), R"({"weight_map":["model-00001-of-00002.safetensors"]})");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {IndexPath("m"), "no \"weight_map\" object"});
}

TEST_F(CatalogTest, IndexWeightMapValueNotAString) {
  WriteShards("m");
  WriteIndex("m", R"({"a":1})", "");
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption,
              {IndexPath("m"), "weight_map entry for 'a' is not a file name"});
}

TEST_F(CatalogTest, IndexWithCorruptShardNamesTheShard) {
  WriteShards("m");
  std::string bytes = ReadText(Shard2("m"));
  bytes.pop_back();  // truncate the data section
  WriteText(Shard2("m"), bytes);
  WriteIndex("m", kGoodWeightMap);
  ExpectError(OpenCatalog(Path("m")), StatusCode::kCorruption, {Shard2("m"), "tensor 'c'", "run past the end"});
}

}  // namespace
}  // namespace hoist
