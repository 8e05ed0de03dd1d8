// Device memory for the stand-in GPUs (the fault-injecting test device and
// the emulated CUDA runtime): each allocation hands out an address range the
// host cannot touch (PROT_NONE: any host read or write crashes, as it would
// on a GPU) and keeps the bytes in a second, private mapping that only the
// stand-in's own copies and casts reach through Contents().
//
// Not thread-safe: the owner locks.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <utility>

namespace hoist::testing {

class ShadowMemory {
 public:
  ShadowMemory() = default;
  ShadowMemory(const ShadowMemory&) = delete;
  ShadowMemory& operator=(const ShadowMemory&) = delete;
  ~ShadowMemory() {
    for (auto& [handle, b] : blocks_) Unmap(handle, b);
  }

  // A new allocation of `size_bytes`, page-aligned (so 256-aligned, as
  // cudaMalloc's are), tagged with `owner` (a device index, say); nullptr
  // when the mappings fail.
  void* Allocate(uint64_t size_bytes, int owner = 0) {
    const uint64_t mapped = std::max<uint64_t>(kPage, (size_bytes + kPage - 1) / kPage * kPage);
    void* handle = ::mmap(nullptr, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (handle == MAP_FAILED) return nullptr;
    void* contents = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (contents == MAP_FAILED) {
      ::munmap(handle, mapped);
      return nullptr;
    }
    blocks_[reinterpret_cast<uintptr_t>(handle)] = {size_bytes, mapped, owner, static_cast<unsigned char*>(contents)};
    return handle;
  }

  struct Freed {
    bool found = false;
    uint64_t size_bytes = 0;
    int owner = 0;
  };
  // Unmaps the allocation that starts at `handle`.
  Freed Free(void* handle) {
    auto it = blocks_.find(reinterpret_cast<uintptr_t>(handle));
    if (it == blocks_.end()) return {};
    Freed freed{true, it->second.size_bytes, it->second.owner};
    Unmap(it->first, it->second);
    blocks_.erase(it);
    return freed;
  }

  // Where [ptr, ptr + size_bytes) keeps its bytes; nullptr unless the whole
  // range lies inside one allocation (its requested size, not the page
  // rounding).
  unsigned char* Contents(const void* ptr, uint64_t size_bytes) const {
    auto it = Find(ptr);
    if (it == blocks_.end()) return nullptr;
    const uint64_t offset = reinterpret_cast<uintptr_t>(ptr) - it->first;
    if (offset > it->second.size_bytes || size_bytes > it->second.size_bytes - offset) return nullptr;
    return it->second.contents + offset;
  }

  // The owner of the allocation `ptr` points into; -1 when none.
  int OwnerOf(const void* ptr) const {
    auto it = Find(ptr);
    return it == blocks_.end() ? -1 : it->second.owner;
  }

  // The contents of the allocation starting at `handle`, and its size.
  std::pair<unsigned char*, uint64_t> Whole(void* handle) const {
    auto it = blocks_.find(reinterpret_cast<uintptr_t>(handle));
    if (it == blocks_.end()) return {nullptr, 0};
    return {it->second.contents, it->second.size_bytes};
  }

 private:
  static constexpr uint64_t kPage = 4096;
  struct Block {
    uint64_t size_bytes, mapped_bytes;
    int owner;
    unsigned char* contents;
  };

  // The allocation whose handle range holds `ptr`; end() when none.
  std::map<uintptr_t, Block>::const_iterator Find(const void* ptr) const {
    const auto addr = reinterpret_cast<uintptr_t>(ptr);
    auto it = blocks_.upper_bound(addr);
    if (it == blocks_.begin()) return blocks_.end();
    --it;
    return addr - it->first < it->second.mapped_bytes ? it : blocks_.end();
  }
  static void Unmap(uintptr_t handle, const Block& b) {
    ::munmap(reinterpret_cast<void*>(handle), b.mapped_bytes);
    ::munmap(b.contents, b.mapped_bytes);
  }

  std::map<uintptr_t, Block> blocks_;  // by handle
};

}  // namespace hoist::testing
