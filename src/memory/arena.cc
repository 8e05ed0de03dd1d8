#include "memory/arena.h"

#include <sys/mman.h>

#include <string>
#include <utility>

namespace hoist {

HostArena::~HostArena() {
  if (data_ != nullptr) ::munmap(data_, size_bytes_);
}
HostArena::HostArena(HostArena&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_bytes_(std::exchange(other.size_bytes_, 0)) {}
HostArena& HostArena::operator=(HostArena&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_bytes_);
    data_ = std::exchange(other.data_, nullptr);
    size_bytes_ = std::exchange(other.size_bytes_, 0);
  }
  return *this;
}

Result<HostArena> HostArena::Reserve(uint64_t size_bytes) {
  HostArena arena;
  if (size_bytes == 0) return arena;
  void* p = ::mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (p == MAP_FAILED) {
    return OutOfMemory("cannot reserve " + std::to_string(size_bytes) + " bytes of host memory");
  }
  // Large pages cut the page faults of the first touch by 512x where the
  // kernel allows it; failure to get them is harmless.
  (void)::madvise(p, size_bytes, MADV_HUGEPAGE);
  arena.data_ = static_cast<unsigned char*>(p);
  arena.size_bytes_ = size_bytes;
  return arena;
}

}  // namespace hoist
