// ParallelFor: every index once, the first error wins, and the threads it
// starts (not the caller's) know they are its workers.
#include "util/parallel.h"

#include <chrono>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace hoist {
namespace {

TEST(ParallelForTest, RunsEveryIndexOnceAndMarksOnlyItsOwnThreads) {
  std::mutex mu;
  std::vector<int> seen(64, 0);
  std::map<std::thread::id, bool> worker_flag;  // per thread: OnParallelForWorker()
  int used = 0;
  Status s = ParallelFor(
      seen.size(), 3,
      [&](size_t k) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // let every thread take some
        std::lock_guard<std::mutex> lock(mu);
        ++seen[k];
        worker_flag[std::this_thread::get_id()] = OnParallelForWorker();
        return Status::Ok();
      },
      nullptr, &used);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(used, 3);
  for (int n : seen) EXPECT_EQ(n, 1);
  ASSERT_EQ(worker_flag.size(), 3u);
  for (const auto& [id, flag] : worker_flag) EXPECT_EQ(flag, id != std::this_thread::get_id());
  EXPECT_FALSE(OnParallelForWorker());
}

TEST(ParallelForTest, TheFirstErrorStopsTheRestAndIsReturned) {
  int failures = 0;
  Status s = ParallelFor(
      1000, 4, [](size_t k) { return k == 10 ? IoError("index 10") : Status::Ok(); }, [&] { ++failures; });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "index 10");
  EXPECT_EQ(failures, 1);
}

}  // namespace
}  // namespace hoist
