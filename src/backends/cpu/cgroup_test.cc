// The memory cgroup's headroom, read from a fake /proc/self/cgroup and
// /sys/fs/cgroup tree (this machine's own cgroup has no limit to test with).
#include "backends/cpu/cgroup.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace hoist {
namespace {

class CgroupTest : public ::testing::Test {
 protected:
  void Write(const std::string& rel, const std::string& text) {
    std::filesystem::path p = dir_.path() / rel;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  uint64_t Headroom() { return CgroupHeadroomBytes(dir_ / "proc-cgroup", dir_ / "sys"); }

  hoist::testing::TempDir dir_;
};

TEST_F(CgroupTest, V2LimitMinusUsage) {
  Write("proc-cgroup", "0::/user.slice/job\n");
  Write("sys/user.slice/job/memory.max", "1000000\n");
  Write("sys/user.slice/job/memory.current", "400000\n");
  EXPECT_EQ(Headroom(), 600000u);
}

TEST_F(CgroupTest, V2WithoutALimitIsUnlimited) {
  Write("proc-cgroup", "0::/job\n");
  Write("sys/job/memory.max", "max\n");
  Write("sys/job/memory.current", "400000\n");
  EXPECT_EQ(Headroom(), UINT64_MAX);
}

TEST_F(CgroupTest, V1MemoryHierarchy) {
  Write("proc-cgroup", "12:cpu,cpuacct:/x\n5:memory:/docker/abc\n");
  Write("sys/memory/docker/abc/memory.limit_in_bytes", "2048\n");
  Write("sys/memory/docker/abc/memory.usage_in_bytes", "48\n");
  EXPECT_EQ(Headroom(), 2000u);
  // v1's "no limit" is a page-rounded 2^63.
  Write("sys/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
  EXPECT_EQ(Headroom(), UINT64_MAX);
}

TEST_F(CgroupTest, UsageOverTheLimitLeavesNothing) {
  Write("proc-cgroup", "0::/job\n");
  Write("sys/job/memory.max", "1000\n");
  Write("sys/job/memory.current", "5000\n");
  EXPECT_EQ(Headroom(), 0u);
}

TEST_F(CgroupTest, UnreadableOrGarbageMeansNoLimit) {
  EXPECT_EQ(Headroom(), UINT64_MAX);  // no /proc file at all
  Write("proc-cgroup", "0::/job\n");
  EXPECT_EQ(Headroom(), UINT64_MAX);  // no memory.max
  Write("sys/job/memory.max", "12x\n");
  Write("sys/job/memory.current", "1\n");
  EXPECT_EQ(Headroom(), UINT64_MAX);
  Write("sys/job/memory.max", "99999999999999999999999\n");  // overflows 64 bits
  EXPECT_EQ(Headroom(), UINT64_MAX);
}

}  // namespace
}  // namespace hoist
