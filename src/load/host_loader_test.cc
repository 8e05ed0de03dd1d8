#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cast/cast.h"
#include "hoist/catalog.h"
#include "hoist/loader.h"
#include "hoist/synth.h"
#include "hoist/writer.h"
#include "io/file.h"
#include "io/uring.h"
#include "testing/page_cache.h"
#include "testing/temp_dir.h"

namespace hoist {
namespace {

// Writes tensors whose byte k is a function of (tensor index, k), so any
// misplaced byte shows.
unsigned char PatternByte(size_t index, uint64_t k) {
  return static_cast<unsigned char>((k * 131 + index * 17 + (k >> 8)) & 0xFF);
}

Status WritePattern(const std::string& dst, const std::vector<OutTensor>& tensors, uint64_t max_shard_bytes) {
  WriteOptions wo;
  wo.max_shard_bytes = max_shard_bytes;
  wo.piece_bytes = 4096;
  wo.align_elements = false;  // the layout as given: tests place tensors where they need them
  FillFn fill = [](size_t index, uint64_t offset, uint64_t size, unsigned char* out) {
    for (uint64_t k = 0; k < size; ++k) out[k] = PatternByte(index, offset + k);
    return Status::Ok();
  };
  Result<WriteResult> r = WriteCheckpoint(dst, tensors, {{"format", "pt"}}, wo, fill);
  return r.ok() ? Status::Ok() : r.status();
}

std::vector<OutTensor> MixedTensors() {
  return {
      {"a.weight", DType::kBF16, {300, 7}, 300 * 7 * 2},  // spans several 4 KiB chunks
      {"a.bias", DType::kF32, {7}, 28},
      {"b.counts", DType::kI64, {3}, 24},
      {"b.mask", DType::kBool, {5}, 5},
      {"c.q", DType::kF8_E4M3, {33}, 33},
      {"c.packed", DType::kF4, {2, 3}, 3},
      {"d.empty", DType::kF16, {0, 4}, 0},
      {"d.scalar", DType::kF64, {}, 8},
  };
}

TEST(HostLoaderTest, LoadsEveryByteIntoOneAlignedArena) {
  testing::TempDir dir;
  auto tensors = MixedTensors();
  ASSERT_TRUE(WritePattern(dir / "ckpt", tensors, 2000).ok());  // several shards
  Result<Catalog> cat = OpenCatalog(dir / "ckpt");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  ASSERT_GT(cat->files().size(), 1u);
  for (int threads : {1, 2, 5}) {
    LoadOptions opt;
    opt.threads = threads;
    opt.chunk_bytes = 4096;
    Result<LoadedModel> model = LoadToHost(*cat, opt);
    ASSERT_TRUE(model.ok()) << model.status().message();
    EXPECT_EQ(model->stats().driver_allocs, 1);
    EXPECT_EQ(model->tensors().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorView* v = model->Find(tensors[i].name);
      ASSERT_NE(v, nullptr) << tensors[i].name;
      EXPECT_EQ(v->dtype, tensors[i].dtype);
      EXPECT_EQ(v->shape, tensors[i].shape);
      EXPECT_EQ(v->size_bytes, tensors[i].size_bytes);
      // 256-byte aligned, so also the 64 bytes the host path promises.
      EXPECT_EQ(reinterpret_cast<uintptr_t>(v->data) % kDeviceTensorAlignBytes, 0u) << v->name;
      for (uint64_t k = 0; k < v->size_bytes; ++k) {
        ASSERT_EQ(v->data[k], PatternByte(i, k)) << v->name << " byte " << k << " threads " << threads;
      }
    }
    EXPECT_EQ(model->stats().bytes_read, cat->total_bytes());
    EXPECT_EQ(model->Find("absent"), nullptr);
  }
}

TEST(HostLoaderTest, CastsOnlyFloatingPointTensors) {
  testing::TempDir dir;
  auto tensors = MixedTensors();
  ASSERT_TRUE(WritePattern(dir / "m.safetensors", tensors, 1ull << 40).ok());
  Result<Catalog> cat = OpenCatalog(dir / "m.safetensors");
  ASSERT_TRUE(cat.ok());
  LoadOptions opt;
  opt.cast_to = DType::kF32;
  opt.chunk_bytes = 4096;
  Result<LoadedModel> model = LoadToHost(*cat, opt);
  ASSERT_TRUE(model.ok()) << model.status().message();

  const TensorView* w = model->Find("a.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kF32);
  EXPECT_EQ(w->stored_dtype, DType::kBF16);
  EXPECT_EQ(w->size_bytes, 300u * 7 * 4);
  auto floats = w->as<float>();
  for (size_t e = 0; e < floats.size(); ++e) {
    uint16_t raw = static_cast<uint16_t>(PatternByte(0, 2 * e) | (PatternByte(0, 2 * e + 1) << 8));
    float want = Bf16ToF32(raw);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(floats[e]));
    } else {
      ASSERT_EQ(floats[e], want) << e;
    }
  }
  EXPECT_EQ(model->Find("d.scalar")->dtype, DType::kF32);
  EXPECT_EQ(model->Find("d.empty")->size_bytes, 0u);
  for (const char* kept : {"b.counts", "b.mask", "c.q", "c.packed"}) {
    const TensorView* v = model->Find(kept);
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(v->dtype, v->stored_dtype) << kept;
  }
}

// A host cast reads and casts a piece in cache-sized blocks: pieces of
// many blocks with a ragged last one, in both directions (narrowing and
// widening), land whole and in order.
TEST(HostLoaderTest, CastsLargePiecesBlockByBlock) {
  testing::TempDir dir;
  const std::vector<OutTensor> tensors = {{"big.f32", DType::kF32, {786'433}, 786'433 * 4},    // 3 MiB + 4 bytes
                                          {"big.bf16", DType::kBF16, {700'001}, 700'001 * 2}};  // 1.3 MiB + 2
  ASSERT_TRUE(WritePattern(dir / "m.safetensors", tensors, 1ull << 40).ok());
  Result<Catalog> cat = OpenCatalog(dir / "m.safetensors");
  ASSERT_TRUE(cat.ok());
  for (uint64_t chunk : {uint64_t{16} << 20, uint64_t{1'000'004}}) {  // whole tensors, or pieces of ~2 blocks
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    LoadOptions opt;
    opt.cast_to = DType::kF16;
    opt.chunk_bytes = chunk;
    opt.threads = 2;
    Result<LoadedModel> model = LoadToHost(*cat, opt);
    ASSERT_TRUE(model.ok()) << model.status().message();
    for (size_t i = 0; i < tensors.size(); ++i) {
      std::vector<unsigned char> file(tensors[i].size_bytes);
      for (uint64_t k = 0; k < file.size(); ++k) file[k] = PatternByte(i, k);
      const size_t n = file.size() / static_cast<size_t>(DTypeBits(tensors[i].dtype) / 8);
      std::vector<unsigned char> want(n * 2);
      CastFloats(tensors[i].dtype, file.data(), DType::kF16, want.data(), n);
      const TensorView* v = model->Find(tensors[i].name);
      ASSERT_NE(v, nullptr);
      ASSERT_EQ(v->size_bytes, want.size());
      ASSERT_EQ(std::memcmp(v->data, want.data(), want.size()), 0) << v->name;
    }
  }
}

TEST(HostLoaderTest, OnlySelectsByRegexSearch) {
  testing::TempDir dir;
  ASSERT_TRUE(WritePattern(dir / "m.safetensors", MixedTensors(), 1ull << 40).ok());
  Result<Catalog> cat = OpenCatalog(dir / "m.safetensors");
  ASSERT_TRUE(cat.ok());
  LoadOptions opt;
  opt.only_regex = R"(^b\.|bias$)";
  Result<LoadedModel> model = LoadToHost(*cat, opt);
  ASSERT_TRUE(model.ok());
  std::vector<std::string> names;
  for (const TensorView& v : model->tensors()) names.push_back(v.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a.bias", "b.counts", "b.mask"}));

  opt.only_regex = "nothing-matches";
  model = LoadToHost(*cat, opt);
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->tensors().size(), 0u);
  EXPECT_EQ(model->stats().driver_allocs, 0);

  opt.only_regex = "([unclosed";
  model = LoadToHost(*cat, opt);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kInvalidArgument);
}

TEST(HostLoaderTest, FileThatChangedAfterCatalogueIsRefused) {
  testing::TempDir dir;
  ASSERT_TRUE(WritePattern(dir / "m.safetensors", MixedTensors(), 1ull << 40).ok());
  Result<Catalog> cat = OpenCatalog(dir / "m.safetensors");
  ASSERT_TRUE(cat.ok());
  std::filesystem::resize_file(dir / "m.safetensors", cat->files()[0].data_offset_bytes + 100);
  Result<LoadedModel> model = LoadToHost(*cat, LoadOptions{});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kIoError);
  EXPECT_NE(model.status().message().find("m.safetensors"), std::string::npos) << model.status().message();
  EXPECT_NE(model.status().message().find("changed since its header was read"), std::string::npos)
      << model.status().message();
}

TEST(HostLoaderTest, DirectReadsAreByteExactAndChosenForUncachedFiles) {
  testing::TempDir dir;
  auto tensors = MixedTensors();
  ASSERT_TRUE(WritePattern(dir / "ckpt", tensors, 2000).ok());
  Result<Catalog> cat = OpenCatalog(dir / "ckpt");
  ASSERT_TRUE(cat.ok());
  {
    Result<File> probe = File::OpenReadDirect(cat->files()[0].path);
    if (!probe.ok()) GTEST_SKIP() << "no O_DIRECT on this file system: " << probe.status().message();
  }
  for (DirectIo mode : {DirectIo::kOn, DirectIo::kAuto}) {
    for (const CatalogFile& f : cat->files()) testing::DropFromPageCache(f.path);
    LoadOptions opt;
    opt.direct = mode;
    opt.io = IoEngine::kAuto;
    opt.chunk_bytes = 4096;  // reads at every alignment
    Result<LoadedModel> model = LoadToHost(*cat, opt);
    ASSERT_TRUE(model.ok()) << model.status().message();
    EXPECT_EQ(model->stats().direct_files, static_cast<int>(cat->files().size()));
    // --io auto (set below) reads the cold files through io_uring.
    EXPECT_EQ(model->stats().uring_files, UringAvailable() ? static_cast<int>(cat->files().size()) : 0);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorView* v = model->Find(tensors[i].name);
      for (uint64_t k = 0; k < v->size_bytes; ++k) ASSERT_EQ(v->data[k], PatternByte(i, k)) << v->name << " " << k;
    }
  }
  // Cached files are read through the page cache. (Direct reads bypass it,
  // so bring the files in first.)
  for (const CatalogFile& f : cat->files()) testing::ReadIntoPageCache(f.path);
  LoadOptions opt;
  opt.direct = DirectIo::kAuto;
  opt.io = IoEngine::kAuto;
  Result<LoadedModel> model = LoadToHost(*cat, opt);
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->stats().direct_files, 0);
  EXPECT_EQ(model->stats().uring_files, 0);
  EXPECT_EQ(model->stats().threads, std::min(DefaultReadThreads(), model->stats().threads));  // no cold boost
}

TEST(HostLoaderTest, UringReadsAreByteExactBufferedAndDirect) {
  if (!UringAvailable()) GTEST_SKIP() << MakeUringReader().status().message();
  testing::TempDir dir;
  auto tensors = MixedTensors();
  ASSERT_TRUE(WritePattern(dir / "ckpt", tensors, 2000).ok());
  Result<Catalog> cat = OpenCatalog(dir / "ckpt");
  ASSERT_TRUE(cat.ok());
  for (DirectIo mode : {DirectIo::kOff, DirectIo::kOn}) {
    for (std::optional<DType> cast : {std::optional<DType>(), std::optional<DType>(DType::kF32)}) {
      LoadOptions opt;
      opt.io = IoEngine::kUring;
      opt.direct = mode;
      opt.cast_to = cast;
      opt.chunk_bytes = 4096;
      Result<LoadedModel> model = LoadToHost(*cat, opt);
      ASSERT_TRUE(model.ok()) << model.status().message();
      EXPECT_EQ(model->stats().uring_files, static_cast<int>(cat->files().size()));
      if (cast) continue;  // the cast values are checked against pread below
      for (size_t i = 0; i < tensors.size(); ++i) {
        const TensorView* v = model->Find(tensors[i].name);
        for (uint64_t k = 0; k < v->size_bytes; ++k) ASSERT_EQ(v->data[k], PatternByte(i, k)) << v->name << " " << k;
      }
    }
  }
  LoadOptions a, b;
  a.cast_to = b.cast_to = DType::kF32;
  b.io = IoEngine::kUring;
  Result<LoadedModel> ma = LoadToHost(*cat, a), mb = LoadToHost(*cat, b);
  ASSERT_TRUE(ma.ok() && mb.ok());
  for (const TensorView& v : ma->tensors()) {
    const TensorView* w = mb->Find(v.name);
    ASSERT_EQ(std::vector<unsigned char>(v.data, v.data + v.size_bytes),
              std::vector<unsigned char>(w->data, w->data + w->size_bytes));
  }
}

TEST(HostLoaderTest, RejectsNonFloatCastTarget) {
  testing::TempDir dir;
  ASSERT_TRUE(WritePattern(dir / "m.safetensors", MixedTensors(), 1ull << 40).ok());
  Result<Catalog> cat = OpenCatalog(dir / "m.safetensors");
  ASSERT_TRUE(cat.ok());
  LoadOptions opt;
  opt.cast_to = DType::kI32;
  EXPECT_EQ(LoadToHost(*cat, opt).status().code(), StatusCode::kInvalidArgument);
}

TEST(HostLoaderTest, LoadsSynthesizedModelMatchingItsGenerator) {
  testing::TempDir dir;
  SynthOptions so;
  so.arch = "tiny-llama";
  ASSERT_TRUE(WriteSynthCheckpoint(so, dir / "tiny").ok());
  Result<Catalog> cat = OpenCatalog(dir / "tiny");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  Result<LoadedModel> model = LoadToHost(*cat, LoadOptions{});
  ASSERT_TRUE(model.ok());
  for (const TensorView& v : model->tensors()) {
    std::vector<unsigned char> want(v.size_bytes);
    SynthFill(v.name, v.dtype, 0, v.size_bytes, want.data());
    ASSERT_EQ(std::memcmp(want.data(), v.data, v.size_bytes), 0) << v.name;
  }
}

// The bytes of part `rank` of `world` along `dim` of a tensor whose stored
// bytes are `whole`: by the definition of a slice of a row-major array.
std::vector<unsigned char> PartBytes(const std::vector<unsigned char>& whole, const std::vector<uint64_t>& shape,
                                     size_t dim, uint64_t world, uint64_t rank, uint64_t element) {
  uint64_t outer = 1, inner = element;
  for (size_t i = 0; i < dim; ++i) outer *= shape[i];
  for (size_t i = dim + 1; i < shape.size(); ++i) inner *= shape[i];
  const uint64_t part = shape[dim] / world;
  std::vector<unsigned char> out;
  for (uint64_t o = 0; o < outer; ++o) {
    const uint64_t begin = (o * shape[dim] + rank * part) * inner;
    out.insert(out.end(), whole.begin() + static_cast<long>(begin), whole.begin() + static_cast<long>(begin + part * inner));
  }
  return out;
}

TEST(HostLoaderTest, ShardLoadsEachPartByteExact) {
  testing::TempDir dir;
  const std::vector<OutTensor> tensors = {{"a.w", DType::kBF16, {30, 70}, 30 * 70 * 2},
                                          {"b.w", DType::kF32, {4, 50, 6}, 4 * 50 * 6 * 4},
                                          {"c.w", DType::kI8, {10, 9}, 90},
                                          {"d.w", DType::kF32, {7}, 28},
                                          {"e.w", DType::kU8, {3, 40000}, 120000}};
  ASSERT_TRUE(WritePattern(dir / "ckpt", tensors, 12000).ok());  // several shards
  Result<Catalog> cat = OpenCatalog(dir / "ckpt");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  // a along its columns and b along its middle (short runs close together),
  // c along its rows (one range), d whole, e along its columns (runs 40 KB
  // apart).
  const int dims[] = {1, 1, 0, -1, 1};
  for (uint64_t rank : {0, 1}) {
    for (uint64_t chunk : {uint64_t{4096}, uint64_t{1} << 20}) {
      for (bool cast : {false, true}) {
        for (bool map : {false, true}) {
          SCOPED_TRACE("rank " + std::to_string(rank) + " chunk " + std::to_string(chunk) + (cast ? " cast" : "") +
                       (map ? " mmap" : ""));
          PlanOptions po;
          po.device = DeviceId::Cpu();
          po.shard = ShardSpec{static_cast<int>(rank), 2};
          po.splits = {{"^a", 1}, {"^b", -2}, {"^c", 0}, {"^e", 1}};
          po.map_host = map;
          if (cast) po.cast_to = DType::kF32;
          Result<LoadPlan> plan = BuildPlan(*cat, po);
          ASSERT_TRUE(plan.ok()) << plan.status().message();
          LoadOptions opt;
          opt.chunk_bytes = chunk;  // 4096: pieces end inside a run; 1 MiB: a piece holds many runs
          opt.threads = 3;
          static const DeviceRegistry registry = MakeCpuRegistry();
          Result<LoadedModel> model = Load(*cat, std::move(plan).value(), registry, opt);
          ASSERT_TRUE(model.ok()) << model.status().message();
          uint64_t stored = 0;
          for (size_t i = 0; i < tensors.size(); ++i) {
            std::vector<unsigned char> whole(tensors[i].size_bytes);
            for (uint64_t k = 0; k < whole.size(); ++k) whole[k] = PatternByte(i, k);
            const uint64_t element = static_cast<uint64_t>(DTypeBits(tensors[i].dtype) / 8);
            std::vector<uint64_t> shape = tensors[i].shape;
            std::vector<unsigned char> want = whole;
            if (dims[i] >= 0) {
              want = PartBytes(whole, shape, static_cast<size_t>(dims[i]), 2, rank, element);
              shape[static_cast<size_t>(dims[i])] /= 2;
            }
            stored += want.size();
            const TensorView* v = model->Find(tensors[i].name);
            ASSERT_NE(v, nullptr);
            EXPECT_EQ(v->shape, shape) << v->name;
            EXPECT_EQ(v->slice.has_value(), dims[i] >= 0) << v->name;
            if (v->slice) {
              EXPECT_EQ(v->slice->dim, dims[i]);
              EXPECT_EQ(v->slice->start, rank * tensors[i].shape[static_cast<size_t>(dims[i])] / 2);
            }
            if (cast && (tensors[i].dtype == DType::kBF16)) {
              std::vector<unsigned char> wide(want.size() * 2);
              CastFloats(DType::kBF16, want.data(), DType::kF32, wide.data(), want.size() / 2);
              want = wide;
            }
            ASSERT_EQ(v->size_bytes, want.size()) << v->name;
            ASSERT_EQ(std::memcmp(v->data, want.data(), want.size()), 0) << v->name;
            // Only a part that is one range of its file, needing no cast, is mapped.
            const bool one_range = i == 2 || i == 3;  // c split along its rows, d whole
            const bool cast_here = cast && tensors[i].dtype == DType::kBF16;
            EXPECT_EQ(v->mapped, map && one_range && !cast_here && v->file_offset_bytes % std::min<uint64_t>(element, 8) == 0)
                << v->name;
            if (map && i == 2) {
              EXPECT_TRUE(v->mapped);  // an I8 part is aligned wherever it starts
            }
          }
          EXPECT_EQ(model->stats().bytes_read, stored);
        }
      }
    }
  }
}

// How many of this process's mappings are of `path` (/proc/self/maps).
int MappingsOf(const std::string& path) {
  std::ifstream maps("/proc/self/maps");
  const std::string want = std::filesystem::canonical(path).string();
  int n = 0;
  for (std::string line; std::getline(maps, line);) {
    n += line.size() >= want.size() && line.compare(line.size() - want.size(), want.size(), want) == 0 ? 1 : 0;
  }
  return n;
}

// Whether the plan can map a tensor: stored as loaded, not empty, and at a
// file offset that is a multiple of its element size (at most 8).
bool ShouldMap(const TensorInfo& t, bool cast) {
  const uint64_t element = static_cast<uint64_t>(std::clamp(DTypeBits(t.dtype) / 8, 1, 8));
  return !cast && t.size_bytes > 0 && t.offset_bytes % element == 0;
}

TEST(HostLoaderTest, MmapMapsWhatItCanAndReadsTheRest) {
  testing::TempDir dir;
  auto tensors = MixedTensors();
  ASSERT_TRUE(WritePattern(dir / "ckpt", tensors, 2000).ok());  // several shards
  Result<Catalog> cat = OpenCatalog(dir / "ckpt");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  uint64_t want_mapped = 0;
  std::set<uint32_t> want_files;
  int unmapped = 0;
  for (const TensorInfo& t : cat->tensors()) {
    if (ShouldMap(t, false)) {
      want_mapped += t.size_bytes;
      want_files.insert(t.file_index);
    } else {
      unmapped += t.size_bytes > 0 ? 1 : 0;
    }
  }
  ASSERT_GT(want_mapped, 0u);
  ASSERT_GT(unmapped, 0);  // b.counts, an I64 at an offset of 4 mod 8
  for (int threads : {1, 3}) {
    LoadOptions opt;
    opt.threads = threads;
    opt.chunk_bytes = 4096;  // a.weight is mapped in two pieces
    opt.map_host = true;
    {
      Result<LoadedModel> model = LoadToHost(*cat, opt);
      ASSERT_TRUE(model.ok()) << model.status().message();
      const LoadStats& st = model->stats();
      EXPECT_EQ(st.mapped_bytes, want_mapped);
      EXPECT_EQ(st.mapped_files, static_cast<int>(want_files.size()));
      EXPECT_EQ(st.bytes_read, cat->total_bytes());
      EXPECT_EQ(st.bytes_loaded, cat->total_bytes());
      EXPECT_EQ(st.driver_allocs, 1);  // the arena, for the rest
      EXPECT_EQ(st.arena_bytes, model->plan().FindDevice(DeviceId::Cpu())->reserve_bytes);
      EXPECT_LT(st.arena_bytes, cat->total_bytes() - want_mapped + 256 * tensors.size());
      for (size_t i = 0; i < tensors.size(); ++i) {
        const TensorView* v = model->Find(tensors[i].name);
        ASSERT_NE(v, nullptr);
        const TensorInfo& info = *model->plan().tensors[i].source;
        EXPECT_EQ(v->mapped, ShouldMap(info, false)) << v->name;
        const uint64_t element = static_cast<uint64_t>(std::clamp(DTypeBits(v->dtype) / 8, 1, 8));
        EXPECT_EQ(reinterpret_cast<uintptr_t>(v->data) % element, 0u) << v->name;
        for (uint64_t k = 0; k < v->size_bytes; ++k) {
          ASSERT_EQ(v->data[k], PatternByte(i, k)) << v->name << " byte " << k;
        }
      }
      for (uint32_t k = 0; k < cat->files().size(); ++k) {  // one mapping per file with a mapped tensor
        EXPECT_EQ(MappingsOf(cat->files()[k].path), want_files.count(k) ? 1 : 0) << cat->files()[k].path;
      }
      // Writes stay in this process: the file keeps its bytes.
      const TensorView* w = model->Find("a.weight");
      ASSERT_TRUE(w->mapped);
      const_cast<unsigned char*>(w->data)[5] ^= 0xFF;
      EXPECT_EQ(w->data[5], PatternByte(0, 5) ^ 0xFF);
      Result<File> file = File::OpenRead(w->file);
      ASSERT_TRUE(file.ok());
      unsigned char byte = 0;
      ASSERT_TRUE(file->ReadAt(w->file_offset_bytes + 5, &byte, 1).ok());
      EXPECT_EQ(byte, PatternByte(0, 5));
    }
    for (const CatalogFile& f : cat->files()) EXPECT_EQ(MappingsOf(f.path), 0) << f.path;  // gone with the model
  }
}

TEST(HostLoaderTest, MmapCopiesWhatACastChanges) {
  testing::TempDir dir;
  ASSERT_TRUE(WritePattern(dir / "m.safetensors", MixedTensors(), 1ull << 40).ok());
  Result<Catalog> cat = OpenCatalog(dir / "m.safetensors");
  ASSERT_TRUE(cat.ok());
  LoadOptions opt;
  opt.map_host = true;
  opt.cast_to = DType::kF32;
  Result<LoadedModel> model = LoadToHost(*cat, opt);
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_FALSE(model->Find("a.weight")->mapped);  // bf16 -> f32
  EXPECT_EQ(model->Find("a.weight")->dtype, DType::kF32);
  EXPECT_EQ(model->Find("c.q")->mapped, true);     // fp8: never cast
  EXPECT_EQ(model->Find("c.q")->data[3], PatternByte(4, 3));
}

// Either way of populating (MADV_POPULATE_READ, or the read that kernels
// before 5.14 take instead) turns a file cut short into an error, not SIGBUS.
class MmapCutShortTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { FileMapping::UseReadFallbackForTesting(GetParam()); }
  void TearDown() override { FileMapping::UseReadFallbackForTesting(false); }
};

TEST_P(MmapCutShortTest, FailsNamingTheTensorAndUnmapsTheFile) {
  testing::TempDir dir;
  const std::vector<OutTensor> tensors = {{"w1", DType::kBF16, {40'000}, 80'000}, {"w2", DType::kBF16, {40'000}, 80'000}};
  ASSERT_TRUE(WritePattern(dir / "m.safetensors", tensors, 1ull << 40).ok());
  Result<Catalog> cat = OpenCatalog(dir / "m.safetensors");
  ASSERT_TRUE(cat.ok());
  LoadOptions opt;
  opt.map_host = true;
  opt.threads = 1;
  opt.chunk_bytes = 8192;
  // Between the mapping and the first read, the file loses its data.
  opt.before_read = [&](uint64_t k) {
    if (k == 0) std::filesystem::resize_file(dir / "m.safetensors", cat->files()[0].data_offset_bytes);
    return Status::Ok();
  };
  Result<LoadedModel> model = LoadToHost(*cat, opt);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kIoError);
  const std::string& m = model.status().message();
  EXPECT_NE(m.find("tensor 'w1'"), std::string::npos) << m;
  EXPECT_NE(m.find("m.safetensors"), std::string::npos) << m;
  EXPECT_NE(m.find(GetParam() ? "unexpected end of file" : "cut short"), std::string::npos) << m;
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  EXPECT_EQ(MappingsOf(dir / "m.safetensors"), 0);
}

INSTANTIATE_TEST_SUITE_P(Populate, MmapCutShortTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "read" : "madvise"; });

TEST(HostLoaderTest, MmapLoadStopsWhenCancelled) {
  testing::TempDir dir;
  const std::vector<OutTensor> tensors = {{"w", DType::kBF16, {400'000}, 800'000}};
  ASSERT_TRUE(WritePattern(dir / "m.safetensors", tensors, 1ull << 40).ok());
  Result<Catalog> cat = OpenCatalog(dir / "m.safetensors");
  ASSERT_TRUE(cat.ok());
  std::atomic<bool> cancel{false};
  std::atomic<uint64_t> reads{0};
  LoadOptions opt;
  opt.map_host = true;
  opt.threads = 2;
  opt.chunk_bytes = 4096;  // 196 pieces
  opt.cancel = &cancel;
  opt.before_read = [&](uint64_t k) {
    reads.fetch_add(1);
    if (k == 5) cancel.store(true);
    return Status::Ok();
  };
  Result<LoadedModel> model = LoadToHost(*cat, opt);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kCancelled);
  EXPECT_LT(reads.load(), 20u);
  EXPECT_EQ(MappingsOf(dir / "m.safetensors"), 0);
}

}  // namespace
}  // namespace hoist
