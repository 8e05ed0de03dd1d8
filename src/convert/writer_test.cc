#include "hoist/writer.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <map>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "format/safetensors.h"
#include "hoist/catalog.h"
#include "hoist/loader.h"
#include "testing/temp_dir.h"

namespace hoist {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

FillFn IndexFill() {
  return [](size_t index, uint64_t offset, uint64_t size, unsigned char* out) {
    for (uint64_t k = 0; k < size; ++k) out[k] = static_cast<unsigned char>(index * 7 + offset + k);
    return Status::Ok();
  };
}

TEST(WriterTest, HeaderIsPaddedToEightBytes) {
  for (size_t name_len = 1; name_len < 20; ++name_len) {
    OutTensor t{std::string(name_len, 'x'), DType::kU8, {3}, 3};
    std::string header = BuildHeader({&t}, {});
    EXPECT_EQ((8 + header.size()) % 8, 0u) << name_len;
    Result<ParsedHeader> parsed = ParseHeaderJson("h", header, 3);
    ASSERT_TRUE(parsed.ok()) << parsed.status().message();
    EXPECT_EQ(parsed->tensors[0].name, t.name);
  }
}

TEST(WriterTest, ParseByteSizeUnits) {
  EXPECT_EQ(*ParseByteSize("5GB"), 5'000'000'000u);
  EXPECT_EQ(*ParseByteSize("5gB"), 5'000'000'000u);
  EXPECT_EQ(*ParseByteSize("2GiB"), 2ull << 30);
  EXPECT_EQ(*ParseByteSize("2gib"), 2ull << 30);
  EXPECT_EQ(*ParseByteSize("500MB"), 500'000'000u);
  EXPECT_EQ(*ParseByteSize("100KB"), 100'000u);
  EXPECT_EQ(*ParseByteSize("1.5GB"), 1'500'000'000u);
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("5 GB"), 5'000'000'000u);  // accelerate takes the space too
  EXPECT_EQ(*ParseByteSize(" 7MiB "), 7ull << 20);
  for (const char* bad : {"", "GB", "5XB", "-1GB", "0", "0GiB", "1e3", "5 G B", "5GB5"}) {
    EXPECT_FALSE(ParseByteSize(bad).ok()) << bad;
  }
  // A lowercase b after a prefix is bits to Hugging Face (5Gb = 625 MB):
  // refused, saying so, rather than read either way.
  for (const char* bits : {"5Gb", "5gb", "100kb", "2Mb", "1tb"}) {
    Result<uint64_t> r = ParseByteSize(bits);
    ASSERT_FALSE(r.ok()) << bits;
    EXPECT_NE(r.status().message().find("a lowercase b means bits"), std::string::npos) << r.status().message();
  }
  EXPECT_NE(ParseByteSize("5Gb").status().message().find("write 5GB"), std::string::npos);
  EXPECT_NE(ParseByteSize("16mb").status().message().find("write 16MB"), std::string::npos);
  EXPECT_NE(ParseByteSize("0.5").status().message().find("less than one byte"), std::string::npos);
  // Limits may be 0, with or without a unit.
  EXPECT_EQ(*ParseByteCount("0"), 0u);
  EXPECT_EQ(*ParseByteCount("0GiB"), 0u);
  EXPECT_EQ(*ParseByteCount("3KiB"), 3072u);
  EXPECT_FALSE(ParseByteCount("-0").ok());
}

TEST(WriterTest, SingleFileRoundTripsWithMetadata) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"w", DType::kF16, {2, 3}, 12}, {"b", DType::kI32, {2}, 8}};
  Result<WriteResult> r = WriteCheckpoint(dir / "one.safetensors", tensors, {{"k", "v"}}, {}, IndexFill());
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->files, std::vector<std::string>{dir / "one.safetensors"});
  Result<Catalog> cat = OpenCatalog(dir / "one.safetensors");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  EXPECT_EQ(cat->metadata().at("k"), "v");
  EXPECT_EQ(cat->files()[0].data_offset_bytes % 8, 0u);
  std::string bytes = ReadAll(dir / "one.safetensors");
  const TensorInfo* b = cat->Find("b");
  ASSERT_NE(b, nullptr);
  for (uint64_t k = 0; k < 8; ++k) {
    EXPECT_EQ(static_cast<unsigned char>(bytes[b->offset_bytes + k]), static_cast<unsigned char>(7 + k));
  }
}

TEST(WriterTest, ShardsGreedilyWithIndex) {
  testing::TempDir dir;
  // 60 + 60 > 100 -> new shard; 60 + 30 fits; 150 alone exceeds the limit
  // and gets its own shard, listed when met, before the open one (as
  // huggingface_hub's split_torch_state_dict_into_shards lists them).
  std::vector<OutTensor> tensors = {{"t0", DType::kU8, {60}, 60},
                                    {"t1", DType::kU8, {60}, 60},
                                    {"t2", DType::kU8, {30}, 30},
                                    {"t3", DType::kU8, {150}, 150}};
  WriteOptions wo;
  wo.max_shard_bytes = 100;
  Result<WriteResult> r = WriteCheckpoint(dir / "out", tensors, {}, wo, IndexFill());
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->files.size(), 4u);  // three shards and the index
  EXPECT_EQ(r->files[0], dir / "out/model-00001-of-00003.safetensors");
  nlohmann::json index = nlohmann::json::parse(ReadAll(dir / "out/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 300);
  EXPECT_EQ(index["weight_map"]["t0"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["t3"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["t1"], "model-00003-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["t2"], "model-00003-of-00003.safetensors");
  Result<Catalog> cat = OpenCatalog(dir / "out");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  EXPECT_EQ(cat->tensors().size(), 4u);
  EXPECT_EQ(cat->total_bytes(), 300u);
}

// huggingface_hub 0.36's split for f32 tensors of 400, 4000, 400, 600 and
// 240 bytes under a 1000-byte limit: {b}, {a, c}, {d, e}.
TEST(WriterTest, ShardsAsHuggingFaceHubCutsThem) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"a", DType::kF32, {100}, 400},
                                    {"b", DType::kF32, {1000}, 4000},
                                    {"c", DType::kF32, {100}, 400},
                                    {"d", DType::kF32, {150}, 600},
                                    {"e", DType::kF32, {60}, 240}};
  WriteOptions wo;
  wo.max_shard_bytes = 1000;
  Result<WriteResult> r = WriteCheckpoint(dir / "out", tensors, {}, wo, IndexFill());
  ASSERT_TRUE(r.ok()) << r.status().message();
  nlohmann::json index = nlohmann::json::parse(ReadAll(dir / "out/model.safetensors.index.json"));
  const std::string s1 = "model-00001-of-00003.safetensors", s2 = "model-00002-of-00003.safetensors",
                    s3 = "model-00003-of-00003.safetensors";
  EXPECT_EQ(index["weight_map"], nlohmann::json({{"a", s2}, {"b", s1}, {"c", s2}, {"d", s3}, {"e", s3}}));
}

// A cast can leave a wide integer after a narrower float: the writer orders
// such a shard by element size so that every tensor is aligned to its
// element, as the reference writer's order leaves them; an aligned order
// is kept as it is.
TEST(WriterTest, AShardThatWouldLeaveATensorUnalignedIsOrderedByElementSize) {
  testing::TempDir dir;
  std::vector<OutTensor> cast = {{"a", DType::kBF16, {3}, 6}, {"b", DType::kI64, {4}, 32}, {"c", DType::kU8, {5}, 5}};
  std::vector<OutTensor> aligned = {{"x", DType::kF32, {2}, 8}, {"y", DType::kBF16, {3}, 6}};
  WriteOptions wo;
  wo.align_elements = true;
  for (const auto* tensors : {&cast, &aligned}) {
    Result<WriteResult> r = WriteCheckpoint(dir / "out.safetensors", *tensors, {}, wo, IndexFill());
    ASSERT_TRUE(r.ok()) << r.status().message();
    Result<Catalog> cat = OpenCatalog(dir / "out.safetensors");
    ASSERT_TRUE(cat.ok()) << cat.status().message();
    for (const TensorInfo& t : cat->tensors()) {
      EXPECT_EQ(t.offset_bytes % static_cast<uint64_t>(std::max(1, DTypeBits(t.dtype) / 8)), 0u) << t.name;
    }
  }
  Result<Catalog> cat = OpenCatalog(dir / "out.safetensors");
  EXPECT_LT(cat->Find("x")->offset_bytes, cat->Find("y")->offset_bytes);  // kept in its order
  // Without the option (tests build unaligned files on purpose), the order stays.
  wo.align_elements = false;
  ASSERT_TRUE(WriteCheckpoint(dir / "raw.safetensors", cast, {}, wo, IndexFill()).ok());
  Result<Catalog> raw = OpenCatalog(dir / "raw.safetensors");
  ASSERT_TRUE(raw.ok());
  EXPECT_NE(raw->Find("b")->offset_bytes % 8, 0u);
}

TEST(WriterTest, AHeaderNoReaderWouldTakeIsRefused) {
  testing::TempDir dir;
  std::map<std::string, std::string> metadata = {{"big", std::string(kMaxHeaderBytes, 'x')}};
  std::vector<OutTensor> tensors = {{"t", DType::kU8, {1}, 1}};
  Result<WriteResult> r = WriteCheckpoint(dir / "out.safetensors", tensors, metadata, WriteOptions{}, IndexFill());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("a safetensors reader accepts"), std::string::npos) << r.status().message();
  EXPECT_FALSE(std::filesystem::exists(dir / "out.safetensors"));
}

TEST(WriterTest, OneShardInADirectoryIsModelSafetensors) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"t", DType::kU8, {4}, 4}};
  Result<WriteResult> r = WriteCheckpoint(dir / "d", tensors, {}, {}, IndexFill());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->files, std::vector<std::string>{dir / "d/model.safetensors"});
}

TEST(WriterTest, RewritingADirectoryRemovesStaleOutputsOnly) {
  testing::TempDir dir;
  std::vector<OutTensor> big = {{"a", DType::kU8, {60}, 60}, {"b", DType::kU8, {60}, 60}, {"c", DType::kU8, {60}, 60}};
  std::vector<OutTensor> small = {{"x", DType::kU8, {8}, 8}};
  WriteOptions sharded;
  sharded.max_shard_bytes = 100;
  ASSERT_TRUE(WriteCheckpoint(dir / "d", big, {}, sharded, IndexFill()).ok());
  std::ofstream(dir / "d/config.json") << "{}";
  std::ofstream(dir / "d/model-1-of-2.safetensors") << "not ours";  // not an output name
  // Shards, then one file: the old index would still win, and its shards linger.
  ASSERT_TRUE(WriteCheckpoint(dir / "d", small, {}, {}, IndexFill()).ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "d/model.safetensors.index.json"));
  EXPECT_FALSE(std::filesystem::exists(dir / "d/model-00001-of-00003.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "d/model-00003-of-00003.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir / "d/config.json"));
  EXPECT_TRUE(std::filesystem::exists(dir / "d/model-1-of-2.safetensors"));
  Result<Catalog> cat = OpenCatalog(dir / "d/model.safetensors");
  ASSERT_TRUE(cat.ok());
  EXPECT_EQ(cat->tensors().size(), 1u);
  // One file, then shards: the old model.safetensors goes (transformers reads
  // it before an index).
  ASSERT_TRUE(WriteCheckpoint(dir / "d", big, {}, sharded, IndexFill()).ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "d/model.safetensors"));
  cat = OpenCatalog(dir / "d");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  EXPECT_EQ(cat->tensors().size(), 3u);
}

TEST(WriterTest, ANewModelSafetensorsRemovesAnOldIndexBesideIt) {
  testing::TempDir dir;
  std::vector<OutTensor> big = {{"a", DType::kU8, {60}, 60}, {"b", DType::kU8, {60}, 60}};
  WriteOptions sharded;
  sharded.max_shard_bytes = 100;
  ASSERT_TRUE(WriteCheckpoint(dir / "d", big, {}, sharded, IndexFill()).ok());
  std::vector<OutTensor> small = {{"x", DType::kU8, {8}, 8}};
  ASSERT_TRUE(WriteCheckpoint(dir / "d/model.safetensors", small, {}, {}, IndexFill()).ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "d/model.safetensors.index.json"));
  Result<Catalog> cat = OpenCatalog(dir / "d");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  EXPECT_EQ(cat->tensors().size(), 1u);
  // Another name is not an output name: nothing beside it is touched.
  ASSERT_TRUE(WriteCheckpoint(dir / "d", big, {}, sharded, IndexFill()).ok());
  ASSERT_TRUE(WriteCheckpoint(dir / "d/other.safetensors", small, {}, {}, IndexFill()).ok());
  EXPECT_TRUE(std::filesystem::exists(dir / "d/model.safetensors.index.json"));
}

TEST(WriterTest, ConvertNeverRemovesItsSource) {
  testing::TempDir dir;
  std::vector<OutTensor> big = {{"a", DType::kF32, {15}, 60}, {"b", DType::kF32, {15}, 60}};
  WriteOptions sharded;
  sharded.max_shard_bytes = 100;
  ASSERT_TRUE(WriteCheckpoint(dir / "d", big, {}, sharded, IndexFill()).ok());
  Result<Catalog> src = OpenCatalog(dir / "d");
  ASSERT_TRUE(src.ok());
  // Consolidate the shards into one file beside them.
  ConvertOptions co;
  ASSERT_TRUE(ConvertCheckpoint(*src, dir / "d/model.safetensors", co).ok());
  EXPECT_TRUE(std::filesystem::exists(dir / "d/model-00001-of-00002.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir / "d/model-00002-of-00002.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir / "d/model.safetensors.index.json"));
}

TEST(WriterTest, RefusesShardsIntoAFileName) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"a", DType::kU8, {8}, 8}, {"b", DType::kU8, {8}, 8}};
  WriteOptions wo;
  wo.max_shard_bytes = 8;
  Result<WriteResult> r = WriteCheckpoint(dir / "x.safetensors", tensors, {}, wo, IndexFill());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST(WriterTest, FillErrorsPropagate) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"a", DType::kU8, {8}, 8}};
  FillFn failing = [](size_t, uint64_t, uint64_t, unsigned char*) { return IoError("source went away"); };
  Result<WriteResult> r = WriteCheckpoint(dir / "x.safetensors", tensors, {}, {}, failing);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "source went away");
}

// Every file under `dir`, hidden ones included.
std::vector<std::string> FilesUnder(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Every regular file under `dir` with its bytes.
std::map<std::string, std::string> ContentsUnder(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[e.path().string()] = ReadAll(e.path().string());
  }
  return out;
}

FillFn ShiftedFill(int shift) {
  return [shift](size_t index, uint64_t offset, uint64_t size, unsigned char* out) {
    for (uint64_t k = 0; k < size; ++k) out[k] = static_cast<unsigned char>(index * 7 + offset + k + shift);
    return Status::Ok();
  };
}

TEST(WriterTest, AFailedWriteLeavesNothingAndTheEarlierOutputWhole) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"a", DType::kU8, {60}, 60}, {"b", DType::kU8, {60}, 60}, {"c", DType::kU8, {60}, 60}};
  WriteOptions sharded;
  sharded.max_shard_bytes = 100;
  sharded.piece_bytes = 8;
  ASSERT_TRUE(WriteCheckpoint(dir / "d", tensors, {}, sharded, IndexFill()).ok());
  const std::map<std::string, std::string> before = ContentsUnder(dir / "d");
  // The same write again, failing at tensor c's third piece: the other
  // pieces (and shards) are written by then, under their temporary names.
  std::atomic<int> filled{0};
  FillFn failing = [&](size_t index, uint64_t offset, uint64_t size, unsigned char* out) {
    if (index == 2 && offset == 16) return IoError("source went away");
    ++filled;
    return ShiftedFill(1)(index, offset, size, out);  // other bytes than the earlier output's
  };
  sharded.threads = 1;
  Result<WriteResult> r = WriteCheckpoint(dir / "d", tensors, {}, sharded, failing);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "source went away");
  EXPECT_GT(filled.load(), 8);
  EXPECT_EQ(ContentsUnder(dir / "d"), before);
  // Into directories that did not exist: they go too, as they were made.
  r = WriteCheckpoint(dir / "new/deeper/x.safetensors", {{"a", DType::kU8, {60}, 60}}, {}, sharded, failing);
  ASSERT_TRUE(r.ok()) << r.status().message();  // tensor 0 never fails
  r = WriteCheckpoint(dir / "new2/deeper", tensors, {}, sharded, failing);
  ASSERT_FALSE(r.ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "new2"));
  EXPECT_TRUE(std::filesystem::exists(dir / "new/deeper/x.safetensors"));
  // A directory that was there stays, however the path reaches it.
  std::filesystem::create_directory(dir / "kept");
  r = WriteCheckpoint(dir / "missing/../kept", tensors, {}, sharded, failing);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(std::filesystem::is_directory(dir / "kept"));
  EXPECT_FALSE(std::filesystem::exists(dir / "missing"));
}

TEST(WriterTest, ARenameThatFailsPutsTheEarlierFilesBack) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"a", DType::kU8, {60}, 60}, {"b", DType::kU8, {60}, 60}, {"c", DType::kU8, {60}, 60}};
  WriteOptions sharded;
  sharded.max_shard_bytes = 100;
  ASSERT_TRUE(WriteCheckpoint(dir / "d", tensors, {}, sharded, IndexFill()).ok());
  // The index's place is taken by a directory with something in it: the
  // shards are renamed into place first, then the index cannot be.
  std::filesystem::remove(dir / "d/model.safetensors.index.json");
  std::filesystem::create_directory(dir / "d/model.safetensors.index.json");
  std::ofstream(dir / "d/model.safetensors.index.json/x") << "x";
  const std::map<std::string, std::string> before = ContentsUnder(dir / "d");
  Result<WriteResult> r = WriteCheckpoint(dir / "d", tensors, {}, sharded, ShiftedFill(1));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("model.safetensors.index.json: cannot put the written file in place"),
            std::string::npos) << r.status().message();
  EXPECT_EQ(r.status().message().find(".partial"), std::string::npos) << r.status().message();
  EXPECT_EQ(ContentsUnder(dir / "d"), before);  // every shard as it was, nothing hidden left
}

TEST(WriterTest, WritesToOneNameAtOnceEachLeaveAWholeFile) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"a", DType::kU8, {1 << 16}, 1 << 16}, {"b", DType::kU8, {1 << 16}, 1 << 16}};
  WriteOptions wo;
  wo.piece_bytes = 4096;
  std::vector<std::thread> writers;
  std::vector<Status> results(4);
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      results[t] = WriteCheckpoint(dir / "m.safetensors", tensors, {}, wo, ShiftedFill(t)).status();
    });
  }
  for (std::thread& w : writers) w.join();
  for (const Status& s : results) EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(FilesUnder(dir.path()), std::vector<std::string>{dir / "m.safetensors"});
  // Whole, and one writer's: every byte from the same fill.
  Result<Catalog> cat = OpenCatalog(dir / "m.safetensors");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  const std::string bytes = ReadAll(dir / "m.safetensors");
  const size_t data = bytes.size() - (2u << 16);
  const int shift = static_cast<unsigned char>(bytes[data]);
  std::vector<unsigned char> want(2u << 16);
  ASSERT_TRUE(ShiftedFill(shift)(0, 0, 1 << 16, want.data()).ok());
  ASSERT_TRUE(ShiftedFill(shift)(1, 0, 1 << 16, want.data() + (1 << 16)).ok());
  EXPECT_EQ(bytes.substr(data), std::string(want.begin(), want.end()));
}

TEST(WriterTest, AKilledWritesLeftoversAreNamedNotRemoved) {
  testing::TempDir dir;
  std::filesystem::create_directory(dir / "d");
  std::ofstream(dir / "d/.hoist-4242-deadbeef-0.partial") << std::string(100, 'x');
  std::ofstream(dir / "d/.hoist-notours.partial") << "x";
  for (const std::string dst : {"d", "d/other.safetensors"}) {
    Result<WriteResult> r = WriteCheckpoint(dir / dst, {{"a", DType::kU8, {8}, 8}}, {}, {}, IndexFill());
    ASSERT_TRUE(r.ok()) << r.status().message();
    ASSERT_EQ(r->warnings.size(), 1u) << dst;
    EXPECT_EQ(r->warnings[0], dir / "d/.hoist-4242-deadbeef-0.partial" +
                                  ": 100 bytes left by a write that was killed (or is running now); remove it if none is");
  }
  EXPECT_TRUE(std::filesystem::exists(dir / "d/.hoist-4242-deadbeef-0.partial"));
  EXPECT_TRUE(std::filesystem::exists(dir / "d/.hoist-notours.partial"));
}

TEST(WriterTest, ALongOutputNameStillFits) {
  testing::TempDir dir;
  const std::string name = std::string(240, 'b') + ".safetensors";  // 252 bytes: the limit is 255
  Result<WriteResult> r = WriteCheckpoint(dir / name, {{"a", DType::kU8, {8}, 8}}, {}, {}, IndexFill());
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(std::filesystem::exists(dir / name));
}

TEST(WriterTest, ACancelledWriteStopsAndLeavesNothing) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"a", DType::kU8, {64}, 64}, {"b", DType::kU8, {64}, 64}};
  std::atomic<bool> cancel{false};
  std::atomic<int> filled{0};
  WriteOptions wo;
  wo.piece_bytes = 8;
  wo.threads = 1;
  wo.cancel = &cancel;
  FillFn fill = [&](size_t index, uint64_t offset, uint64_t size, unsigned char* out) {
    if (++filled == 3) cancel.store(true);
    return IndexFill()(index, offset, size, out);
  };
  Result<WriteResult> r = WriteCheckpoint(dir / "out/m.safetensors", tensors, {}, wo, fill);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().message();
  EXPECT_EQ(filled.load(), 3);
  EXPECT_FALSE(std::filesystem::exists(dir / "out"));
  EXPECT_TRUE(FilesUnder(dir.path()).empty());
}

// A cancel that comes after the last piece (while the files are synced,
// which can take minutes) still leaves the earlier output as it was.
TEST(WriterTest, ACancelAfterTheLastPieceStillReplacesNothing) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"a", DType::kU8, {64}, 64}};
  ASSERT_TRUE(WriteCheckpoint(dir / "m.safetensors", tensors, {}, {}, IndexFill()).ok());
  const std::string earlier = ReadAll(dir / "m.safetensors");
  std::atomic<bool> cancel{false};
  WriteOptions wo;
  wo.piece_bytes = 8;
  wo.threads = 1;
  wo.cancel = &cancel;
  int pieces = 0;
  FillFn fill = [&](size_t index, uint64_t offset, uint64_t size, unsigned char* out) {
    if (++pieces == 8) cancel.store(true);  // the last of 64 / 8
    for (uint64_t i = 0; i < size; ++i) out[i] = static_cast<unsigned char>(0xF0 ^ (offset + i));
    return Status::Ok();
  };
  std::vector<OutTensor> other = {{"b", DType::kU8, {64}, 64}};
  Result<WriteResult> r = WriteCheckpoint(dir / "m.safetensors", other, {}, wo, fill);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(pieces, 8);
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().message();
  EXPECT_EQ(ReadAll(dir / "m.safetensors"), earlier);
  EXPECT_EQ(FilesUnder(dir.path()), std::vector<std::string>{dir / "m.safetensors"});
}

TEST(WriterTest, ConvertCastsAndKeepsMetadata) {
  testing::TempDir dir;
  std::vector<OutTensor> tensors = {{"f", DType::kF32, {1000}, 4000}, {"i", DType::kI16, {5}, 10}};
  FillFn fill = [](size_t index, uint64_t offset, uint64_t size, unsigned char* out) {
    for (uint64_t k = 0; k < size; k += 4) {
      float v = static_cast<float>((offset + k) / 4 % 64) * 0.25f - 7.0f;  // exact in bf16
      std::memcpy(out + k, &v, std::min<uint64_t>(4, size - k));
    }
    return Status::Ok();
  };
  ASSERT_TRUE(WriteCheckpoint(dir / "src.safetensors", tensors, {{"format", "pt"}}, {}, fill).ok());
  Result<Catalog> src = OpenCatalog(dir / "src.safetensors");
  ASSERT_TRUE(src.ok());
  ConvertOptions co;
  co.cast_to = DType::kBF16;
  co.write.piece_bytes = 256;  // many pieces per tensor
  ASSERT_TRUE(ConvertCheckpoint(*src, dir / "dst.safetensors", co).ok());
  Result<Catalog> dst = OpenCatalog(dir / "dst.safetensors");
  ASSERT_TRUE(dst.ok()) << dst.status().message();
  EXPECT_EQ(dst->metadata().at("format"), "pt");
  EXPECT_EQ(dst->Find("f")->dtype, DType::kBF16);
  EXPECT_EQ(dst->Find("f")->size_bytes, 2000u);
  EXPECT_EQ(dst->Find("i")->dtype, DType::kI16);
  LoadOptions lo;
  lo.cast_to = DType::kF32;
  Result<LoadedModel> back = LoadToHost(*dst, lo);
  ASSERT_TRUE(back.ok());
  auto values = back->Find("f")->as<float>();
  ASSERT_EQ(values.size(), 1000u);
  for (size_t e = 0; e < values.size(); ++e) EXPECT_EQ(values[e], static_cast<float>(e % 64) * 0.25f - 7.0f) << e;
}

// One rank's part of a matrix split along its columns is one run per row;
// pieces of 24 bytes cut the runs (40 bytes as I16, 80 as F32) anywhere.
TEST(WriterTest, ConvertWritesOneRanksPartThroughPiecesThatCutItsRuns) {
  testing::TempDir dir;
  constexpr uint64_t kRows = 7, kCols = 60;
  std::vector<OutTensor> tensors = {{"w", DType::kI16, {kRows, kCols}, kRows * kCols * 2},
                                    {"f", DType::kBF16, {kRows, kCols}, kRows * kCols * 2},
                                    {"n", DType::kF32, {3}, 12}};
  auto value = [](size_t tensor, uint64_t row, uint64_t col) {
    return static_cast<uint16_t>(tensor == 0 ? row * 1000 + col : 0x3f80 + (row * kCols + col) % 128);
  };
  FillFn fill = [&](size_t index, uint64_t offset, uint64_t size, unsigned char* out) {
    for (uint64_t k = 0; k < size; ++k) {
      const uint64_t at = offset + k, e = at / 2;
      const uint16_t v = index < 2 ? value(index, e / kCols, e % kCols) : static_cast<uint16_t>(e);
      out[k] = static_cast<unsigned char>(at % 2 == 0 ? v & 0xff : v >> 8);
    }
    return Status::Ok();
  };
  ASSERT_TRUE(WriteCheckpoint(dir / "src.safetensors", tensors, {{"format", "pt"}}, {}, fill).ok());
  Result<Catalog> src = OpenCatalog(dir / "src.safetensors");
  ASSERT_TRUE(src.ok());
  for (bool cast : {false, true}) {
    for (int rank = 0; rank < 3; ++rank) {
      ConvertOptions co;
      co.shard = ShardSpec{rank, 3};
      co.splits = {{"^[wf]$", -1}};
      if (cast) co.cast_to = DType::kF32;
      co.write.piece_bytes = 24;
      const std::string out = dir / ("rank" + std::to_string(rank) + (cast ? "-f32" : "") + ".safetensors");
      Result<WriteResult> written = ConvertCheckpoint(*src, out, co);
      ASSERT_TRUE(written.ok()) << written.status().message();
      Result<Catalog> part = OpenCatalog(out);
      ASSERT_TRUE(part.ok()) << part.status().message();
      EXPECT_EQ(part->metadata().at("hoist.shard"), std::to_string(rank) + "/3");
      EXPECT_EQ(part->metadata().at("hoist.split"), "^[wf]$=-1");
      EXPECT_EQ(part->metadata().at("format"), "pt");
      ASSERT_EQ(part->Find("w")->shape, (std::vector<uint64_t>{kRows, kCols / 3}));
      EXPECT_EQ(part->Find("n")->shape, std::vector<uint64_t>{3});
      Result<LoadedModel> back = LoadToHost(*part, {});
      ASSERT_TRUE(back.ok()) << back.status().message();
      auto w = back->Find("w")->as<int16_t>();
      ASSERT_EQ(w.size(), kRows * kCols / 3);
      for (uint64_t row = 0; row < kRows; ++row) {
        for (uint64_t c = 0; c < kCols / 3; ++c) {
          const uint64_t col = rank * (kCols / 3) + c;
          EXPECT_EQ(static_cast<uint16_t>(w[row * (kCols / 3) + c]), value(0, row, col)) << row << "," << col;
          const unsigned char* f = back->Find("f")->data + (row * (kCols / 3) + c) * (cast ? 4 : 2);
          uint32_t bits = 0;
          std::memcpy(&bits, f, cast ? 4 : 2);
          EXPECT_EQ(cast ? bits >> 16 : bits, value(1, row, col)) << row << "," << col;  // bf16 -> f32 is exact
        }
      }
    }
  }
}

}  // namespace
}  // namespace hoist
