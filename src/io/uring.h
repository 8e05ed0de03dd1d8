// Reads through io_uring (liburing): one read is cut into pieces that are in
// flight together, so a single thread keeps the device's queue full. That is
// what O_DIRECT reads from NVMe need; from the page cache the kernel copies
// inline and pread is as good (docs/loading.md has the measurements).
//
// A UringReader is one ring: use it from one thread (the loader keeps one per
// reader thread). Built only when liburing is found (HOIST_HAVE_URING);
// otherwise MakeUringReader says so.
#pragma once

#include <cstdint>
#include <memory>

#include "io/file.h"

namespace hoist {

struct UringOptions {
  unsigned queue_depth = 16;      // reads in flight per ring
  uint64_t piece_bytes = 1 << 20;  // each read's size (a multiple of 4096, for O_DIRECT)
};

// NotSupported when hoist was built without liburing or the kernel refuses
// io_uring (disabled by sysctl or a seccomp filter).
Result<std::unique_ptr<BlockReader>> MakeUringReader(const UringOptions& options = {});

// Whether MakeUringReader can succeed here (tries once, then remembers).
bool UringAvailable();

}  // namespace hoist
