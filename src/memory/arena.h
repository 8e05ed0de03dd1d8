// HostArena: one anonymous mapping that holds every tensor of a host load.
//
// One reservation per load, not one per tensor: the mapping is made once,
// sized exactly, and unmapped when the arena is destroyed. Pages are touched
// for the first time by the reads that fill them (no zeroing pass). Move-only.
#pragma once

#include <cstddef>
#include <cstdint>

#include "hoist/status.h"

namespace hoist {

class HostArena {
 public:
  HostArena() = default;
  ~HostArena();
  HostArena(HostArena&& other) noexcept;
  HostArena& operator=(HostArena&& other) noexcept;
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  // size_bytes == 0 gives an empty arena and makes no system call.
  static Result<HostArena> Reserve(uint64_t size_bytes);

  unsigned char* data() const { return data_; }
  uint64_t size_bytes() const { return size_bytes_; }
  // System allocations this arena made (0 or 1).
  int driver_allocs() const { return data_ != nullptr ? 1 : 0; }

 private:
  unsigned char* data_ = nullptr;
  uint64_t size_bytes_ = 0;
};

}  // namespace hoist
