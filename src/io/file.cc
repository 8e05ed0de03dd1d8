#include "io/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <utility>

#include "util/text.h"

namespace hoist {
namespace {
Status Errno(const std::string& path, const char* what) {
  int err = errno;
  return IoError(Printable(path) + ": " + what + ": " + std::strerror(err));
}
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14; older C libraries lack the name
#endif
// Keep each syscall well under the kernel's 2 GiB per-call cap.
constexpr uint64_t kMaxIoBytes = uint64_t{1} << 30;

// RefuseReadsIntoForTesting's ranges (begin -> size); the count spares
// every read the lock while there are none.
std::atomic<int> refused_count{0};
std::mutex refused_mu;
std::map<uintptr_t, uint64_t> refused;

bool RefusedForTesting(const void* dst, uint64_t size_bytes) {
  if (refused_count.load(std::memory_order_acquire) == 0 || size_bytes == 0) return false;
  const auto begin = reinterpret_cast<uintptr_t>(dst);
  std::lock_guard<std::mutex> lock(refused_mu);
  for (const auto& [b, n] : refused) {
    if (begin < b + n && b < begin + size_bytes) return true;
  }
  return false;
}
}  // namespace

void File::RefuseReadsIntoForTesting(const void* begin, uint64_t size_bytes, bool refuse) {
  std::lock_guard<std::mutex> lock(refused_mu);
  if (refuse) {
    refused[reinterpret_cast<uintptr_t>(begin)] = size_bytes;
  } else {
    refused.erase(reinterpret_cast<uintptr_t>(begin));
  }
  refused_count.store(static_cast<int>(refused.size()), std::memory_order_release);
}

Result<uint64_t> File::ReadUpTo(uint64_t offset_bytes, unsigned char* dst, uint64_t size_bytes,
                                BlockReader* via) const {
  if (RefusedForTesting(dst, size_bytes)) {
    errno = EFAULT;
    return Errno(path_, "read failed");
  }
  return via ? via->ReadUpTo(*this, offset_bytes, dst, size_bytes) : PreadUpTo(offset_bytes, dst, size_bytes);
}

Result<bool> File::ReadsCanLandIn(unsigned char* dst) const {
  if (RefusedForTesting(dst, 1)) return false;
  while (true) {
    if (::pread(fd_, dst, 1, 0) >= 0) return true;
    if (errno == EINTR) continue;
    if (errno == EFAULT) return false;
    return Errno(path_, "read failed");
  }
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}
File::File(File&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), size_bytes_(other.size_bytes_), path_(std::move(other.path_)) {}
File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    size_bytes_ = other.size_bytes_;
    path_ = std::move(other.path_);
  }
  return *this;
}

Result<File> File::OpenRead(const std::string& path) { return OpenForReading(path, 0); }

Result<File> File::OpenReadDirect(const std::string& path) { return OpenForReading(path, O_DIRECT); }

Result<File> File::OpenForReading(const std::string& path, int extra_flags) {
  // Anything but a regular file is refused before it is opened: opening a
  // device can act on it (a watchdog, a tape). What a path names can change
  // between the two calls, so the open guards too. O_NONBLOCK: opening a
  // FIFO must not wait for a writer; O_NOCTTY: a terminal does not become
  // this process's. Anything but a regular file is refused again below, and
  // O_NONBLOCK is cleared: io_uring fails O_NONBLOCK reads with EAGAIN on
  // file systems that cannot promise not to block (NFS, FUSE).
  struct stat named {};
  if (::stat(path.c_str(), &named) == 0 && !S_ISREG(named.st_mode)) {
    return InvalidArgument(Printable(path) + ": not a regular file");
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | extra_flags);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound(Printable(path) + ": no such file");
    if (errno == EINVAL && (extra_flags & O_DIRECT) != 0) {
      return NotSupported(Printable(path) + ": O_DIRECT is not supported here");
    }
    return Errno(path, "cannot open");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    Status s = Errno(path, "cannot stat");
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(Printable(path) + ": not a regular file");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    Status s = Errno(path, "cannot clear O_NONBLOCK");
    ::close(fd);
    return s;
  }
  return File(fd, path, static_cast<uint64_t>(st.st_size));
}

uint64_t File::DirectSpanBytes(uint64_t offset_bytes, uint64_t size_bytes) {
  const uint64_t a = kDirectAlignBytes;
  return (offset_bytes + size_bytes + a - 1) / a * a - offset_bytes / a * a;
}

Result<const unsigned char*> File::ReadDirectInto(uint64_t offset_bytes, uint64_t size_bytes, unsigned char* aligned,
                                                  BlockReader* via) const {
  const uint64_t a = kDirectAlignBytes;
  const uint64_t begin = offset_bytes / a * a;
  const uint64_t span = DirectSpanBytes(offset_bytes, size_bytes);
  // The last aligned block may run past the end of the file: fine, as long
  // as the bytes asked for were there.
  HOIST_ASSIGN_OR_RETURN(uint64_t got, ReadUpTo(begin, aligned, span, via));
  if (got < offset_bytes - begin + size_bytes) {
    return IoError(Printable(path_) + ": unexpected end of file at offset " + std::to_string(begin + got) +
                   " (the file shrank while being read?)");
  }
  return aligned + (offset_bytes - begin);
}

Status File::ReadDirectAt(uint64_t offset_bytes, void* dst, uint64_t size_bytes, std::vector<unsigned char>* bounce,
                          BlockReader* via) const {
  const uint64_t a = kDirectAlignBytes;
  const uint64_t span = DirectSpanBytes(offset_bytes, size_bytes);
  if (bounce->size() < span + a) bounce->resize(span + a);
  // The vector's data is aligned by hand: offset into it.
  auto* base = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(bounce->data()) + a - 1) / a * a);
  HOIST_ASSIGN_OR_RETURN(const unsigned char* bytes, ReadDirectInto(offset_bytes, size_bytes, base, via));
  std::memcpy(dst, bytes, size_bytes);
  return Status::Ok();
}

double File::CachedFraction() const {
  const long page = ::sysconf(_SC_PAGESIZE);
  if (size_bytes_ == 0 || page <= 0) return 1.0;
  void* map = ::mmap(nullptr, size_bytes_, PROT_READ, MAP_SHARED, fd_, 0);
  if (map == MAP_FAILED) return 1.0;  // cannot tell: treat as cached (buffered reads)
  const uint64_t pages = (size_bytes_ + static_cast<uint64_t>(page) - 1) / static_cast<uint64_t>(page);
  const uint64_t samples = std::min<uint64_t>(pages, 4096);
  uint64_t resident = 0;
  for (uint64_t i = 0; i < samples; ++i) {
    uint64_t p = i * pages / samples;
    unsigned char vec = 0;
    if (::mincore(static_cast<char*>(map) + p * static_cast<uint64_t>(page), static_cast<size_t>(page), &vec) != 0) {
      ::munmap(map, size_bytes_);
      return 1.0;  // cannot tell (a sandbox without mincore): as above
    }
    resident += vec & 1;
  }
  ::munmap(map, size_bytes_);
  return static_cast<double>(resident) / static_cast<double>(samples);
}

Result<std::string> ReadSmallFile(const std::string& path, uint64_t limit_bytes) {
  HOIST_ASSIGN_OR_RETURN(File file, File::OpenRead(path));
  if (file.size_bytes() > limit_bytes) {
    return Corruption(Printable(path) + ": " + std::to_string(file.size_bytes()) +
                      " bytes is too large for this kind of file");
  }
  std::string text(file.size_bytes(), '\0');
  HOIST_RETURN_IF_ERROR(file.ReadAt(0, text.data(), text.size()));
  return text;
}

Result<File> File::Create(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno(path, "cannot create");
  return File(fd, path, 0);
}

Result<File> File::CreateNew(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Errno(path, "cannot create");
  return File(fd, path, 0);
}

Result<uint64_t> File::PreadUpTo(uint64_t offset_bytes, unsigned char* dst, uint64_t size_bytes) const {
  uint64_t done = 0;
  while (done < size_bytes) {
    size_t want = static_cast<size_t>(std::min(size_bytes - done, kMaxIoBytes));
    ssize_t got = ::pread(fd_, dst + done, want, static_cast<off_t>(offset_bytes + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return Errno(path_, "read failed");
    }
    if (got == 0) break;
    done += static_cast<uint64_t>(got);
  }
  return done;
}

Status File::ReadAt(uint64_t offset_bytes, void* dst, uint64_t size_bytes, BlockReader* via) const {
  auto* out = static_cast<unsigned char*>(dst);
  HOIST_ASSIGN_OR_RETURN(uint64_t got, ReadUpTo(offset_bytes, out, size_bytes, via));
  if (got < size_bytes) {
    return IoError(Printable(path_) + ": unexpected end of file at offset " + std::to_string(offset_bytes + got) +
                   " (the file shrank while being read?)");
  }
  return Status::Ok();
}

Status File::WriteAt(uint64_t offset_bytes, const void* src, uint64_t size_bytes) const {
  const auto* in = static_cast<const char*>(src);
  while (size_bytes > 0) {
    size_t want = static_cast<size_t>(size_bytes < kMaxIoBytes ? size_bytes : kMaxIoBytes);
    ssize_t put = ::pwrite(fd_, in, want, static_cast<off_t>(offset_bytes));
    if (put < 0) {
      if (errno == EINTR) continue;
      return Errno(path_, "write failed");
    }
    in += put;
    offset_bytes += static_cast<uint64_t>(put);
    size_bytes -= static_cast<uint64_t>(put);
  }
  return Status::Ok();
}

Status File::Truncate(uint64_t size_bytes) {
  if (::ftruncate(fd_, static_cast<off_t>(size_bytes)) != 0) return Errno(path_, "cannot set size");
  size_bytes_ = size_bytes;
  return Status::Ok();
}

Status File::Sync() const {
  if (::fdatasync(fd_) != 0) return Errno(path_, "cannot write to the disk");
  return Status::Ok();
}

Status SyncDirectory(const std::string& dir) {
  const std::string path = dir.empty() ? "." : dir;
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno(path, "cannot open the directory");
  const bool ok = ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  errno = saved;
  return ok ? Status::Ok() : Errno(path, "cannot write the directory to the disk");
}

std::string UniqueWriteToken() {
  std::random_device random;
  char token[32];
  std::snprintf(token, sizeof token, "%ld-%08x", static_cast<long>(::getpid()), static_cast<unsigned>(random()));
  return token;
}

Status ReplaceFile(const std::string& path, std::string_view text, bool sync) {
  const std::filesystem::path final_path(path);
  const std::string temp = (final_path.parent_path() / (".hoist-" + UniqueWriteToken() + "-0.partial")).string();
  Status s = [&]() -> Status {
    HOIST_ASSIGN_OR_RETURN(File file, File::CreateNew(temp));
    HOIST_RETURN_IF_ERROR(file.WriteAt(0, text.data(), text.size()));
    if (sync) HOIST_RETURN_IF_ERROR(file.Sync());
    HOIST_RETURN_IF_ERROR(file.Close());
    if (::rename(temp.c_str(), path.c_str()) != 0) return Errno(path, "cannot put the written file in place");
    return Status::Ok();
  }();
  if (!s.ok()) {
    ::unlink(temp.c_str());
    // The message names the file asked for, not the temporary one.
    std::string message = s.message();
    if (size_t at = message.find(Printable(temp)); at != std::string::npos) {
      message.replace(at, Printable(temp).size(), Printable(path));
    }
    return Status(s.code(), std::move(message));
  }
  if (sync) return SyncDirectory(final_path.parent_path().string());
  return Status::Ok();
}

Status File::Close() {
  if (fd_ < 0) return Status::Ok();
  int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) return Errno(path_, "close failed");
  return Status::Ok();
}

FileMapping::~FileMapping() {
  if (data_ != nullptr) ::munmap(data_, size_bytes_);
}

FileMapping::FileMapping(FileMapping&& other) noexcept { *this = std::move(other); }

FileMapping& FileMapping::operator=(FileMapping&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_bytes_);
    data_ = std::exchange(other.data_, nullptr);
    size_bytes_ = std::exchange(other.size_bytes_, 0);
    path_ = std::move(other.path_);
  }
  return *this;
}

Result<FileMapping> FileMapping::Map(const File& file) {
  FileMapping m;
  m.path_ = file.path();
  if (file.size_bytes() == 0) return m;
  void* p = ::mmap(nullptr, static_cast<size_t>(file.size_bytes()), PROT_READ | PROT_WRITE, MAP_PRIVATE, file.fd(), 0);
  if (p == MAP_FAILED) return Errno(file.path(), "cannot map the file");
  m.data_ = static_cast<unsigned char*>(p);
  m.size_bytes_ = file.size_bytes();
  return m;
}

namespace {
// Set once MADV_POPULATE_READ has been refused (EINVAL: a kernel before 5.14).
std::atomic<bool> no_populate{false};
}  // namespace

void FileMapping::UseReadFallbackForTesting(bool on) { no_populate.store(on); }

Status FileMapping::Populate(const File& file, uint64_t offset_bytes, uint64_t size_bytes,
                             std::vector<unsigned char>* scratch) const {
  if (size_bytes == 0) return Status::Ok();
  if (offset_bytes > size_bytes_ || size_bytes > size_bytes_ - offset_bytes) {
    return InvalidArgument(Printable(path_) + ": bytes " + std::to_string(offset_bytes) + "+" +
                           std::to_string(size_bytes) + " lie outside the mapped file");
  }
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = offset_bytes / page * page;
  const uint64_t end = offset_bytes + size_bytes;  // madvise takes the whole last page
  while (!no_populate.load(std::memory_order_relaxed)) {
    if (::madvise(data_ + begin, static_cast<size_t>(end - begin), MADV_POPULATE_READ) == 0) return Status::Ok();
    if (errno == EINTR) continue;
    if (errno == EINVAL) {
      no_populate.store(true, std::memory_order_relaxed);
      break;
    }
    if (errno == EFAULT) {
      return IoError(Printable(path_) + ": bytes " + std::to_string(offset_bytes) + "+" + std::to_string(size_bytes) +
                     " of the mapped file cannot be read (was the file cut short while it loaded?)");
    }
    return Errno(path_, "cannot bring the mapped file into memory");
  }
  // Without it: read the range (into the page cache, and past a short read
  // or a read error to an error of its own), then one read of each page
  // maps the cached page. Only a file cut short between the two can still
  // raise SIGBUS.
  constexpr uint64_t kBlockBytes = 1 << 20;
  scratch->resize(static_cast<size_t>(std::min(size_bytes, kBlockBytes)));
  for (uint64_t done = 0; done < size_bytes; done += kBlockBytes) {
    const uint64_t n = std::min(kBlockBytes, size_bytes - done);
    Status st = file.ReadAt(offset_bytes + done, scratch->data(), n);
    if (!st.ok()) return st;
  }
  unsigned char sum = 0;
  for (uint64_t p = begin; p < end; p += page) sum ^= *static_cast<volatile unsigned char*>(data_ + p);
  (void)sum;
  return Status::Ok();
}

Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return IoError(Printable(path) + ": cannot write: " + std::strerror(errno));
  out << text;
  out.close();
  if (!out) return IoError(Printable(path) + ": write failed: " + std::strerror(errno));
  return Status::Ok();
}

}  // namespace hoist
