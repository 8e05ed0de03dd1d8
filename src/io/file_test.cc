// Positional reads: pread and io_uring through the same checks, buffered and
// O_DIRECT, at unaligned offsets, across many pieces, and at the end of file.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "io/file.h"
#include "io/uring.h"
#include "testing/temp_dir.h"

namespace hoist {
namespace {

class FileReadTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    std::mt19937 rng(11);
    bytes_.resize(300'001);  // not a multiple of the block size
    for (auto& b : bytes_) b = static_cast<unsigned char>(rng());
    path_ = dir_ / "data.bin";
    std::ofstream(path_, std::ios::binary).write(reinterpret_cast<const char*>(bytes_.data()),
                                                 static_cast<std::streamsize>(bytes_.size()));
    if (GetParam()) {
      // Small pieces and a shallow queue: many reads per call, resubmitted
      // as the queue frees up.
      UringOptions o;
      o.queue_depth = 3;
      o.piece_bytes = 4096;
      Result<std::unique_ptr<BlockReader>> r = MakeUringReader(o);
      if (!r.ok()) GTEST_SKIP() << r.status().message();
      via_ = std::move(r).value();
    }
  }

  std::vector<unsigned char> Expect(uint64_t offset, uint64_t size) {
    return {bytes_.begin() + static_cast<long>(offset), bytes_.begin() + static_cast<long>(offset + size)};
  }

  hoist::testing::TempDir dir_;
  std::string path_;
  std::vector<unsigned char> bytes_;
  std::unique_ptr<BlockReader> via_;
};

TEST_P(FileReadTest, ReadAtIsByteExactAnywhere) {
  auto f = File::OpenRead(path_);
  ASSERT_TRUE(f.ok());
  for (auto [offset, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 1}, {1, 4095}, {7, 65'537}, {4096, 8192}, {12'345, 200'000}, {0, 300'001}, {299'000, 1001}, {5, 0}}) {
    std::vector<unsigned char> got(size);
    Status s = f->ReadAt(offset, got.data(), size, via_.get());
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_EQ(got, Expect(offset, size)) << offset << "+" << size;
  }
}

TEST_P(FileReadTest, ReadPastTheEndIsAnError) {
  auto f = File::OpenRead(path_);
  ASSERT_TRUE(f.ok());
  std::vector<unsigned char> got(5000);
  Status s = f->ReadAt(298'000, got.data(), got.size(), via_.get());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("unexpected end of file at offset 300001"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("data.bin"), std::string::npos) << s.message();
}

TEST_P(FileReadTest, DirectReadsAreByteExactAndStopAtTheEnd) {
  auto f = File::OpenReadDirect(path_);
  if (!f.ok() && f.status().code() == StatusCode::kNotSupported) GTEST_SKIP() << f.status().message();
  ASSERT_TRUE(f.ok()) << f.status().message();
  std::vector<unsigned char> bounce;
  for (auto [offset, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 4096}, {3, 10}, {4095, 2}, {10'000, 150'000}, {296'000, 4001}, {0, 300'001}}) {
    std::vector<unsigned char> got(size);
    Status s = f->ReadDirectAt(offset, got.data(), size, &bounce, via_.get());
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_EQ(got, Expect(offset, size)) << offset << "+" << size;
    // The same without the copy, into an aligned buffer of the span's size.
    const uint64_t span = File::DirectSpanBytes(offset, size);
    EXPECT_EQ(span % File::kDirectAlignBytes, 0u);
    EXPECT_GE(span, size);
    void* raw = std::aligned_alloc(File::kDirectAlignBytes, span);
    auto* aligned = static_cast<unsigned char*>(raw);
    Result<const unsigned char*> at = f->ReadDirectInto(offset, size, aligned, via_.get());
    ASSERT_TRUE(at.ok()) << at.status().message();
    EXPECT_EQ(*at, aligned + offset % File::kDirectAlignBytes);
    EXPECT_EQ(std::vector<unsigned char>(*at, *at + size), Expect(offset, size)) << offset << "+" << size;
    std::free(raw);
  }
  std::vector<unsigned char> got(10);
  EXPECT_FALSE(f->ReadDirectAt(299'995, got.data(), got.size(), &bounce, via_.get()).ok());
}

INSTANTIATE_TEST_SUITE_P(PreadAndUring, FileReadTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "uring" : "pread"; });

// A mapping shows the file's bytes, keeps writes to itself, checks the
// range it is asked to populate, and maps an empty file to nothing.
TEST(FileMappingTest, MappingIsTheFileCopyOnWrite) {
  hoist::testing::TempDir dir;
  std::vector<unsigned char> bytes(300'001);
  std::mt19937 rng(5);
  for (auto& b : bytes) b = static_cast<unsigned char>(rng());
  const std::string path = dir / "data.bin";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                               static_cast<std::streamsize>(bytes.size()));
  Result<File> file = File::OpenRead(path);
  ASSERT_TRUE(file.ok());
  Result<FileMapping> map = FileMapping::Map(*file);
  ASSERT_TRUE(map.ok()) << map.status().message();
  ASSERT_EQ(map->size_bytes(), bytes.size());
  std::vector<unsigned char> scratch;
  for (bool fallback : {false, true}) {  // MADV_POPULATE_READ, and the read of kernels before 5.14
    FileMapping::UseReadFallbackForTesting(fallback);
    EXPECT_TRUE(map->Populate(*file, 4095, 300'001 - 4095, &scratch).ok());
    EXPECT_TRUE(map->Populate(*file, 300'001, 0, &scratch).ok());
    for (auto [offset, size] : {std::pair<uint64_t, uint64_t>{300'000, 2}, {300'002, 1}, {1, UINT64_MAX}}) {
      Status st = map->Populate(*file, offset, size, &scratch);
      EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << offset << "+" << size;
      EXPECT_NE(st.message().find("data.bin"), std::string::npos) << st.message();
    }
  }
  FileMapping::UseReadFallbackForTesting(false);
  ASSERT_EQ(std::memcmp(map->data(), bytes.data(), bytes.size()), 0);
  map->data()[7] ^= 0x5A;
  unsigned char byte = 0;
  ASSERT_TRUE(file->ReadAt(7, &byte, 1).ok());
  EXPECT_EQ(byte, bytes[7]);
  FileMapping moved = std::move(map).value();
  EXPECT_EQ(moved.data()[7], bytes[7] ^ 0x5A);

  std::ofstream(dir / "empty.bin");
  Result<File> empty = File::OpenRead(dir / "empty.bin");
  ASSERT_TRUE(empty.ok());
  Result<FileMapping> none = FileMapping::Map(*empty);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->data(), nullptr);
  EXPECT_TRUE(none->Populate(*empty, 0, 0, &scratch).ok());
}

// Each loader thread makes its own ring and drops it when done, and the
// kernel may map a later thread's ring where a finished one's was: here a
// small ring's submission entries land where a large ring's head was. Reads
// through both must be exact, and under ThreadSanitizer free of reports
// (liburing maps rings with raw system calls the sanitizer cannot see, so
// nothing but hoist's own annotation orders the two threads' accesses).
TEST(UringTest, ARingMappedWhereAFinishedThreadsWasIsNotShared) {
  if (!UringAvailable()) GTEST_SKIP() << "io_uring is not available here";
  hoist::testing::TempDir dir;
  const std::string path = dir / "data.bin";
  std::vector<unsigned char> bytes(64 * 1024);
  std::mt19937 rng(5);
  for (auto& b : bytes) b = static_cast<unsigned char>(rng());
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  auto f = File::OpenRead(path);
  ASSERT_TRUE(f.ok());
  auto read_once = [&](unsigned queue_depth, std::vector<unsigned char>* got) {
    UringOptions o;
    o.queue_depth = queue_depth;
    o.piece_bytes = 4096;
    Result<std::unique_ptr<BlockReader>> reader = MakeUringReader(o);
    if (!reader.ok()) return reader.status();
    got->resize(bytes.size());
    return f->ReadAt(0, got->data(), got->size(), reader->get());
  };
  std::vector<unsigned char> got_first, got_second;
  Status first, second;
  // A relaxed flag orders the threads in time without telling the sanitizer
  // that one happens before the other, as two loader threads are.
  std::atomic<bool> first_done{false};
  std::thread a([&] {
    first = read_once(128, &got_first);
    first_done.store(true, std::memory_order_relaxed);
  });
  std::thread b([&] {
    while (!first_done.load(std::memory_order_relaxed)) std::this_thread::yield();
    second = read_once(16, &got_second);
  });
  a.join();
  b.join();
  ASSERT_TRUE(first.ok()) << first.message();
  ASSERT_TRUE(second.ok()) << second.message();
  EXPECT_EQ(got_first, bytes);
  EXPECT_EQ(got_second, bytes);
}

TEST(UringTest, RejectsBadOptions) {
  UringOptions o;
  o.piece_bytes = 1000;  // not a multiple of 4096
  EXPECT_FALSE(MakeUringReader(o).ok());
  o.piece_bytes = 4096;
  o.queue_depth = 0;
  EXPECT_FALSE(MakeUringReader(o).ok());
}

}  // namespace
}  // namespace hoist
