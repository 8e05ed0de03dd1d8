// The pretend GPU's own checks must catch what they exist for; otherwise a
// loader test passing on it proves nothing about a real GPU.
#include "backends/testing/fault_device.h"

#include <sys/resource.h>

#include <cstring>
#include <vector>

#include <gtest/gtest.h>

namespace hoist::testing {
namespace {

class FaultDeviceTest : public ::testing::Test {
 protected:
  FaultDevice gpu_{DeviceId::Cuda(0), 1 << 20};
};

// Named *DeathTest so that gtest runs it first, before other tests start
// threads.
using FaultDeviceDeathTest = FaultDeviceTest;

// No core file for the crash the test expects.
void NoCoreDump() {
  struct rlimit none = {0, 0};
  setrlimit(RLIMIT_CORE, &none);
}

TEST_F(FaultDeviceDeathTest, HostCannotTouchDeviceMemory) {
  auto p = gpu_.Allocate(1000);
  ASSERT_TRUE(p.ok());
  auto* bytes = static_cast<volatile unsigned char*>(*p);
  EXPECT_DEATH(
      {
        NoCoreDump();
        bytes[10] = 1;
      },
      "");
  EXPECT_DEATH(
      {
        NoCoreDump();
        (void)bytes[999];
      },
      "");
  gpu_.Free(*p);
}

TEST_F(FaultDeviceTest, CopiesAndCastsStayInsideAllocations) {
  auto dev = gpu_.Allocate(1000);
  auto pinned = gpu_.AllocatePinned(4096);
  ASSERT_TRUE(dev.ok() && pinned.ok());
  auto* d = static_cast<unsigned char*>(*dev);
  std::memset(*pinned, 7, 4096);
  EXPECT_TRUE(gpu_.CopyToDeviceAsync(d, *pinned, 1000).ok());
  EXPECT_TRUE(gpu_.CopyToDeviceAsync(d + 1000, *pinned, 0).ok());
  Status past_end = gpu_.CopyToDeviceAsync(d + 1, *pinned, 1000);
  EXPECT_FALSE(past_end.ok());
  EXPECT_NE(past_end.message().find("outside every device allocation"), std::string::npos) << past_end.message();
  EXPECT_FALSE(gpu_.CopyToDeviceAsync(*pinned, *pinned, 8).ok());  // host memory is no destination
  EXPECT_FALSE(gpu_.CastAsync(d, DType::kF32, d + 600, DType::kF16, 201).ok());  // reads 2 bytes past the end
  EXPECT_TRUE(gpu_.CastAsync(d, DType::kF32, d + 600, DType::kF16, 200).ok());
  std::vector<unsigned char> back(1001);
  EXPECT_FALSE(gpu_.CopyToHost(back.data(), d, 1001).ok());
  ASSERT_TRUE(gpu_.CopyToHost(back.data(), d + 1, 999).ok());
  EXPECT_EQ(back[998], 7);
  gpu_.Free(*dev);
  gpu_.FreePinned(*pinned);
  EXPECT_EQ(gpu_.outstanding_bytes(), 0u);
  EXPECT_EQ(gpu_.outstanding_pinned_bytes(), 0u);
}

TEST_F(FaultDeviceTest, CountsCopiesFromPageableMemory) {
  auto dev = gpu_.Allocate(64);
  auto pinned = gpu_.AllocatePinned(64);
  ASSERT_TRUE(dev.ok() && pinned.ok());
  std::vector<unsigned char> pageable(64, 3);
  ASSERT_TRUE(gpu_.CopyToDeviceAsync(*dev, *pinned, 64).ok());
  EXPECT_EQ(gpu_.pageable_copies(), 0);
  ASSERT_TRUE(gpu_.CopyToDeviceAsync(*dev, pageable.data(), 64).ok());
  EXPECT_EQ(gpu_.pageable_copies(), 1);
  // Straddling the end of a pinned block is not pinned either.
  ASSERT_TRUE(gpu_.CopyToDeviceAsync(*dev, static_cast<unsigned char*>(*pinned) + 32, 33).ok());
  EXPECT_EQ(gpu_.pageable_copies(), 2);
  ASSERT_TRUE(gpu_.Synchronize().ok());
  gpu_.Free(*dev);
  gpu_.FreePinned(*pinned);
}

// When a copy reads its source is up to the GPU: a buffer filled after the
// copy was issued gives wrong bytes in one mode, a buffer reused before the
// copy ran in the other.
TEST_F(FaultDeviceTest, CopiesReadTheirSourceLateOrAtIssue) {
  for (bool at_issue : {false, true}) {
    SCOPED_TRACE(at_issue ? "read at issue" : "read late");
    FaultDevice gpu(DeviceId::Cuda(0), 1 << 20);
    gpu.set_copies_read_at_issue(at_issue);
    auto dev = gpu.Allocate(16);
    auto pinned = gpu.AllocatePinned(16);
    ASSERT_TRUE(dev.ok() && pinned.ok());
    std::memset(*pinned, 1, 16);
    ASSERT_TRUE(gpu.CopyToDeviceAsync(*dev, *pinned, 16).ok());
    std::memset(*pinned, 2, 16);  // the buffer changes before anyone waited
    ASSERT_TRUE(gpu.Synchronize().ok());
    unsigned char got = 0;
    ASSERT_TRUE(gpu.CopyToHost(&got, *dev, 1).ok());
    EXPECT_EQ(got, at_issue ? 1 : 2);
    gpu.Free(*dev);
    gpu.FreePinned(*pinned);
  }
}

TEST_F(FaultDeviceTest, FreeingUnderQueuedWorkRunsItAndIsCounted) {
  auto dev = gpu_.Allocate(16);
  auto pinned = gpu_.AllocatePinned(16);
  auto other = gpu_.AllocatePinned(16);
  ASSERT_TRUE(dev.ok() && pinned.ok() && other.ok());
  gpu_.FreePinned(*other);  // nothing queued touches it
  EXPECT_EQ(gpu_.frees_with_queued_work(), 0);
  std::memset(*pinned, 9, 16);
  ASSERT_TRUE(gpu_.CopyToDeviceAsync(*dev, *pinned, 16).ok());
  gpu_.FreePinned(*pinned);  // the copy still reads it
  EXPECT_EQ(gpu_.frees_with_queued_work(), 1);
  unsigned char got = 0;
  ASSERT_TRUE(gpu_.CopyToHost(&got, *dev, 1).ok());
  EXPECT_EQ(got, 9);  // it ran before the free
  gpu_.Free(*dev);
  EXPECT_EQ(gpu_.frees_with_queued_work(), 1);
}

TEST_F(FaultDeviceTest, StickyFailuresFailEveryLaterCall) {
  for (bool sticky : {false, true}) {
    SCOPED_TRACE(sticky ? "sticky" : "one-off");
    FaultDevice gpu(DeviceId::Cuda(0), 1 << 20);
    gpu.set_sticky_failures(sticky);
    gpu.FailAt(FaultPoint::kCopy, 1);
    auto dev = gpu.Allocate(16);
    auto pinned = gpu.AllocatePinned(16);
    ASSERT_TRUE(dev.ok() && pinned.ok());
    EXPECT_FALSE(gpu.CopyToDeviceAsync(*dev, *pinned, 16).ok());
    EXPECT_EQ(gpu.CopyToDeviceAsync(*dev, *pinned, 16).ok(), !sticky);
    EXPECT_EQ(gpu.Synchronize().ok(), !sticky);
    EXPECT_EQ(gpu.CreateEvent().ok(), !sticky);
    unsigned char byte = 0;
    EXPECT_EQ(gpu.CopyToHost(&byte, *dev, 1).ok(), !sticky);
    EXPECT_EQ(gpu.GetMemoryInfo().ok(), !sticky);
    auto more = gpu.Allocate(16);
    EXPECT_EQ(more.ok(), !sticky);
    if (more.ok()) gpu.Free(*more);
    gpu.Free(*dev);  // frees still free
    gpu.FreePinned(*pinned);
    EXPECT_EQ(gpu.outstanding_bytes(), 0u);
    EXPECT_EQ(gpu.outstanding_pinned_bytes(), 0u);
  }
}

}  // namespace
}  // namespace hoist::testing
