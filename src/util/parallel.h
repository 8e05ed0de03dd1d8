// ParallelFor: the one worker pool hoist's loaders and writers share.
#pragma once

#include <cstddef>
#include <functional>

#include "hoist/status.h"

namespace hoist {

// Runs body(k) for every k in [0, count) on up to `threads` threads (the
// calling thread is one of them), handing indices out in order from a shared
// counter. The first non-OK status stops the threads from taking new
// indices, calls `on_failure` once (to wake threads blocked in a body) and is
// returned. Returns the number of threads used in *threads_used.
Status ParallelFor(size_t count, int threads, const std::function<Status(size_t)>& body,
                   const std::function<void()>& on_failure = nullptr, int* threads_used = nullptr);

// True on a thread ParallelFor started, false on the caller's (and any
// other) thread. Such a thread is hoist's own: the CUDA backend leaves a
// device current on it between calls rather than restoring what was there.
bool OnParallelForWorker();

}  // namespace hoist
