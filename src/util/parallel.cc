#include "util/parallel.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace hoist {
namespace {
thread_local bool parallel_for_worker = false;
}  // namespace

bool OnParallelForWorker() { return parallel_for_worker; }

Status ParallelFor(size_t count, int threads, const std::function<Status(size_t)>& body,
                   const std::function<void()>& on_failure, int* threads_used) {
  const size_t n = std::clamp<size_t>(static_cast<size_t>(std::max(threads, 1)), 1, std::max<size_t>(count, 1));
  if (threads_used != nullptr) *threads_used = static_cast<int>(n);
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  Status first_error;
  auto worker = [&] {
    for (;;) {
      size_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= count || failed.load(std::memory_order_relaxed)) return;
      Status s = body(k);
      if (!s.ok()) {
        {
          std::lock_guard<std::mutex> lock(mu);
          if (failed.exchange(true)) return;
          first_error = std::move(s);
        }
        if (on_failure) on_failure();
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(n - 1);
  for (size_t i = 1; i < n; ++i) {
    try {
      pool.emplace_back([&worker] {
        parallel_for_worker = true;
        worker();
      });
    } catch (const std::system_error&) {
      break;  // the system has no more threads to give: go on with those started
    }
  }
  if (threads_used != nullptr) *threads_used = static_cast<int>(pool.size() + 1);
  worker();
  for (std::thread& t : pool) t.join();
  return first_error;
}

}  // namespace hoist
