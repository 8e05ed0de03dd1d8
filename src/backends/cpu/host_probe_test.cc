// ProbeHost: measures over the memory it was asked for, with the threads it
// was asked for, and gives every byte back.
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "hoist/device.h"

namespace hoist {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// A figure of /proc/self/status in bytes ("RssAnon:", "VmHWM:"), 0 if absent.
uint64_t StatusBytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    if (key == field) {
      uint64_t kib = 0;
      in >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

TEST(HostProbeTest, MeasuresTheRequestedBytesWithTheRequestedThreads) {
  Result<HostProbe> p = ProbeHost(64 * kMiB + 100, 3);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->bytes, 64 * kMiB);  // whole pages only
  EXPECT_EQ(p->threads, 3);
  ASSERT_GT(p->fresh_seconds, 0);
  EXPECT_TRUE(std::isfinite(p->fresh_gbps) && p->fresh_gbps > 0);
  EXPECT_TRUE(std::isfinite(p->memcpy_gbps) && p->memcpy_gbps > 0);
  EXPECT_NEAR(p->fresh_gbps, static_cast<double>(p->bytes) / p->fresh_seconds / 1e9, 1e-9 * p->fresh_gbps);
}

TEST(HostProbeTest, MakesTheMemoryResidentAndReturnsIt) {
  const uint64_t before = StatusBytes("RssAnon:");
  if (before == 0) GTEST_SKIP() << "no RssAnon in /proc/self/status";
  // "5" resets the peak resident size (VmHWM) to the current one.
  const bool peak_reset = static_cast<bool>(std::ofstream("/proc/self/clear_refs") << "5" << std::flush);
  Result<HostProbe> p = ProbeHost(256 * kMiB, 2);
  ASSERT_TRUE(p.ok()) << p.status().message();
  // The whole arena was resident at once...
  if (peak_reset) {
    EXPECT_GE(StatusBytes("VmHWM:"), before + 250 * kMiB);
  }
  // ...and the arena was unmapped: the process is back near where it
  // started, not 256 MiB above it.
  EXPECT_LT(StatusBytes("RssAnon:"), before + 32 * kMiB);
}

TEST(HostProbeTest, RejectsBadArguments) {
  for (int threads : {0, -1, 1025}) {
    Result<HostProbe> p = ProbeHost(64 * kMiB, threads);
    ASSERT_FALSE(p.ok()) << threads;
    EXPECT_TRUE(p.status().IsBadInput()) << p.status().message();
  }
  Result<HostProbe> tiny = ProbeHost(4096 * 3, 2);  // under two pages a thread
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("too small"), std::string::npos) << tiny.status().message();
  EXPECT_TRUE(ProbeHost(4096 * 4, 2).ok());
}

}  // namespace
}  // namespace hoist
