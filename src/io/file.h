// File: a move-only owner of a POSIX file descriptor with positional I/O.
//
// ReadAt/WriteAt loop over short transfers and EINTR, so a successful return
// means every byte moved. Positional calls are safe from many threads at once
// on one File (pread/pwrite do not share a file offset).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "hoist/status.h"

namespace hoist {

class File;

// A way to move a file's bytes other than pread (io_uring, src/io/uring.h).
// File::ReadAt and ReadDirectAt do the checks and alignment around it.
class BlockReader {
 public:
  virtual ~BlockReader() = default;
  // Reads [offset, offset + size) of `file` into dst and returns the number
  // of bytes read, fewer than `size` only at the end of the file.
  virtual Result<uint64_t> ReadUpTo(const File& file, uint64_t offset_bytes, unsigned char* dst,
                                    uint64_t size_bytes) = 0;
};

class File {
 public:
  File() = default;
  ~File();
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  static Result<File> OpenRead(const std::string& path);
  // O_DIRECT: reads bypass the page cache. Fails (NotSupported) where the
  // file system refuses it (tmpfs, some overlays).
  static Result<File> OpenReadDirect(const std::string& path);
  // Creates or truncates.
  static Result<File> Create(const std::string& path);
  // Creates a file that must not exist yet (O_EXCL).
  static Result<File> CreateNew(const std::string& path);

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  uint64_t size_bytes() const { return size_bytes_; }

  // Reads exactly size_bytes at offset_bytes; fails on EOF before that.
  // With `via`, the bytes move through it instead of pread.
  Status ReadAt(uint64_t offset_bytes, void* dst, uint64_t size_bytes, BlockReader* via = nullptr) const;
  // pread until `size_bytes` or the end of the file; the bytes read.
  Result<uint64_t> PreadUpTo(uint64_t offset_bytes, unsigned char* dst, uint64_t size_bytes) const;
  Status WriteAt(uint64_t offset_bytes, const void* src, uint64_t size_bytes) const;
  // O_DIRECT reads need this alignment of offset, length and buffer.
  static constexpr uint64_t kDirectAlignBytes = 4096;
  // For a file opened with OpenReadDirect: reads [offset, offset + size) into
  // dst through `bounce`, a buffer aligned to kDirectAlignBytes that it grows
  // as needed (one per thread).
  Status ReadDirectAt(uint64_t offset_bytes, void* dst, uint64_t size_bytes, std::vector<unsigned char>* bounce,
                      BlockReader* via = nullptr) const;
  // Without the copy: reads the aligned blocks around [offset, offset + size)
  // into `aligned` (kDirectAlignBytes-aligned, DirectSpanBytes(offset, size)
  // long) and returns where in it the bytes asked for begin.
  Result<const unsigned char*> ReadDirectInto(uint64_t offset_bytes, uint64_t size_bytes, unsigned char* aligned,
                                              BlockReader* via = nullptr) const;
  // How many bytes an O_DIRECT read of [offset, offset + size) moves.
  static uint64_t DirectSpanBytes(uint64_t offset_bytes, uint64_t size_bytes);
  // Whether the kernel can write reads into `dst` (one byte read there from
  // offset 0): false where it refuses with EFAULT memory the process itself
  // can write, as gVisor does with memory a GPU driver mapped (cudaHostAlloc's
  // pinned buffers). Such memory is filled through ordinary memory instead.
  Result<bool> ReadsCanLandIn(unsigned char* dst) const;
  // Tests: reads into [begin, begin + size) fail as the kernel fails them
  // where it cannot write (EFAULT) until the same range is allowed again.
  static void RefuseReadsIntoForTesting(const void* begin, uint64_t size_bytes, bool refuse);
  // The fraction (0..1) of the file's pages in the page cache, from a sample
  // of at most 4096 pages (mincore).
  double CachedFraction() const;
  // Sets the length (makes holes when growing).
  Status Truncate(uint64_t size_bytes);
  // Waits until the file's data (and what reading it back needs: its size)
  // is on the disk (fdatasync).
  Status Sync() const;
  Status Close();

 private:
  // Opens read-only with O_CLOEXEC | extra_flags; a regular file only.
  static Result<File> OpenForReading(const std::string& path, int extra_flags);
  File(int fd, std::string path, uint64_t size) : fd_(fd), size_bytes_(size), path_(std::move(path)) {}
  // Through `via`, or pread where it is null.
  Result<uint64_t> ReadUpTo(uint64_t offset_bytes, unsigned char* dst, uint64_t size_bytes, BlockReader* via) const;
  int fd_ = -1;
  uint64_t size_bytes_ = 0;
  std::string path_;
};

// A private, copy-on-write mapping of a whole file: its pages are the page
// cache's until written to, so mapping costs no copy and no fresh memory,
// and every process that maps the file shares them. Writes through the
// mapping stay in this process; what another process writes to the file
// may show through pages not yet written here, and a file cut shorter than
// a page in use turns an access to it into SIGBUS (hoist cannot stop that:
// it is the price of any mapping, safetensors' included).
class FileMapping {
 public:
  FileMapping() = default;
  ~FileMapping();
  FileMapping(FileMapping&& other) noexcept;
  FileMapping& operator=(FileMapping&& other) noexcept;
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;

  // Maps all of `file`, readable and (copy-on-write) writable. An empty
  // file maps to nothing (data() == nullptr).
  static Result<FileMapping> Map(const File& file);

  unsigned char* data() const { return data_; }
  uint64_t size_bytes() const { return size_bytes_; }
  // Brings [offset, offset + size) into memory (reading it from the file
  // where the page cache lacks it) and maps it into this process, so a
  // later access neither faults nor reads, and a read error, or a file cut
  // short since it was mapped, shows up here as an error rather than as
  // SIGBUS later. `file` is the file mapped: kernels before 5.14, which lack
  // MADV_POPULATE_READ, read the range from it into `scratch` first (that
  // read finds the errors) and then touch each page. Safe from several
  // threads at once, each with its own scratch.
  Status Populate(const File& file, uint64_t offset_bytes, uint64_t size_bytes,
                  std::vector<unsigned char>* scratch) const;
  // Tests: take the path of kernels without MADV_POPULATE_READ (or not).
  static void UseReadFallbackForTesting(bool on);

 private:
  unsigned char* data_ = nullptr;
  uint64_t size_bytes_ = 0;
  std::string path_;
};

// The whole of a small file (an index, a config, a device map), refusing one
// larger than `limit_bytes` instead of allocating for it.
Result<std::string> ReadSmallFile(const std::string& path, uint64_t limit_bytes = 256ull << 20);

// Writes `text` to `path`, replacing what was there.
Status WriteTextFile(const std::string& path, const std::string& text);

// Waits until `dir`'s entries (files renamed or created in it) are on the
// disk, which a file's own Sync does not cover.
Status SyncDirectory(const std::string& dir);

// "PID-XXXXXXXX" (a random 32-bit hex token): with O_EXCL, a name part no
// other write uses, across threads, processes and containers sharing a
// directory. Temporary files are ".hoist-TOKEN-K.partial".
std::string UniqueWriteToken();

// Puts `text` at `path` whole or not at all: written under a name of its
// own beside it (".hoist-PID-TOKEN-0.partial", O_EXCL), then renamed over
// it. With `sync`, the text is on the disk before the rename, and the
// rename before it returns. On failure the earlier file stays as it was.
Status ReplaceFile(const std::string& path, std::string_view text, bool sync);

}  // namespace hoist
