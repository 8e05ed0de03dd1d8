// Moving a file into and out of the page cache, for tests of cold reads.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "io/file.h"

namespace hoist::testing {

// Asks the kernel to drop the file's pages (clean after fsync); some
// sandboxes ignore it, so a test checks with InPageCache.
inline void DropFromPageCache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// Reads the whole file, so that its pages are in the cache.
inline void ReadIntoPageCache(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> block(1 << 20);
  while (in.read(block.data(), static_cast<std::streamsize>(block.size())) || in.gcount() > 0) {
  }
}

// Mostly in the page cache, as a load judges it (File::CachedFraction).
inline bool InPageCache(const std::string& path) {
  Result<File> file = File::OpenRead(path);
  return file.ok() && file->CachedFraction() >= 0.5;
}

}  // namespace hoist::testing
