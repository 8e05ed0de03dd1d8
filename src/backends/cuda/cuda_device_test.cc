// Tests of the CUDA backend on a real GPU. Every test skips, with the reason,
// on a machine without one (ctest label `gpu`).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cast/cast.h"
#include "backends/cuda/context.h"
#include "hoist/cuda.h"
#include "testing/cast_inputs.h"
#include "testing/gpu.h"
#include "hoist/device.h"

namespace hoist {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
// How far free device memory may drift between two readings taken around an
// allocation that has been returned (driver bookkeeping, other processes).
constexpr uint64_t kFreeSlackBytes = 4 * kMiB;

std::vector<unsigned char> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<unsigned char> v(n);
  for (auto& b : v) b = static_cast<unsigned char>(rng());
  return v;
}

uint64_t AbsDiff(uint64_t a, uint64_t b) { return a > b ? a - b : b - a; }

class CudaDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = -1;
    Status s = RegisterCudaDevices(&registry_, &count);
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_EQ(count, registry_.CudaCount());
    if (count == 0) {
      if (hoist::testing::GpuRequired()) FAIL() << "HOIST_REQUIRE_GPU=1 but no CUDA GPU: " << CudaUnavailableReason();
      GTEST_SKIP() << "no CUDA GPU: " << CudaUnavailableReason();
    }
    device_ = registry_.Find(DeviceId::Cuda(0));
    ASSERT_NE(device_, nullptr);
    // Create the context and the copy stream, and let the driver set up its
    // small-allocation pool, before any test reads free memory; the pool's
    // first page stays taken for the whole test, so that the driver cannot
    // hand it back between two readings.
    Result<DeviceMemory> warm = DeviceMemory::Allocate(device_, 1);
    ASSERT_TRUE(warm.ok()) << warm.status().message();
    warm_ = std::move(*warm);
    ASSERT_TRUE(device_->Synchronize().ok());
  }

  uint64_t FreeBytes() {
    Result<MemoryInfo> info = device_->GetMemoryInfo();
    EXPECT_TRUE(info.ok()) << info.status().message();
    return info.ok() ? info->free_bytes : 0;
  }

  // Copies `size` bytes from host_src to device_dst, waits on an event, reads
  // them back into a fresh buffer and returns it.
  std::vector<unsigned char> RoundTrip(Device* device, void* device_dst, const unsigned char* host_src, size_t size) {
    std::vector<unsigned char> back(size, 0);
    Status s = device->CopyToDeviceAsync(device_dst, host_src, size);
    EXPECT_TRUE(s.ok()) << s.message();
    Result<std::unique_ptr<Event>> event = device->CreateEvent();
    EXPECT_TRUE(event.ok()) << event.status().message();
    if (!event.ok()) return back;
    s = (*event)->Record();
    EXPECT_TRUE(s.ok()) << s.message();
    s = (*event)->Wait();
    EXPECT_TRUE(s.ok()) << s.message();
    s = device->CopyToHost(back.data(), device_dst, size);
    EXPECT_TRUE(s.ok()) << s.message();
    return back;
  }

  DeviceRegistry registry_;
  Device* device_ = nullptr;
  std::optional<DeviceMemory> warm_;  // declared after registry_: freed before its device
};

TEST_F(CudaDeviceTest, DevicesAreNamedAndNumbered) {
  for (int i = 0; i < registry_.CudaCount(); ++i) {
    Device* d = registry_.Find(DeviceId::Cuda(i));
    ASSERT_NE(d, nullptr) << "cuda:" << i;
    EXPECT_EQ(d->id().ToString(), "cuda:" + std::to_string(i));
    EXPECT_FALSE(d->name().empty());
    EXPECT_FALSE(d->host_addressable());
    Result<MemoryInfo> info = d->GetMemoryInfo();
    ASSERT_TRUE(info.ok()) << info.status().message();
    EXPECT_GT(info->total_bytes, 0u);
    EXPECT_LE(info->free_bytes, info->total_bytes);
  }
  // A second registration into the same registry would duplicate devices.
  int count = 0;
  EXPECT_FALSE(RegisterCudaDevices(&registry_, &count).ok());
}

TEST_F(CudaDeviceTest, AllocationIsAlignedAndReturnedWhenItDies) {
  const uint64_t before = FreeBytes();
  {
    Result<DeviceMemory> big = DeviceMemory::Allocate(device_, 256 * kMiB);
    ASSERT_TRUE(big.ok()) << big.status().message();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(big->get()) % 256, 0u);
    EXPECT_LE(FreeBytes() + 256 * kMiB, before + kFreeSlackBytes) << "256 MiB allocated but free memory barely moved";
    std::vector<DeviceMemory> odd;
    for (uint64_t size : {uint64_t{1}, uint64_t{3}, uint64_t{255}, uint64_t{257}, kMiB + 3, 7 * kMiB + 1}) {
      Result<DeviceMemory> a = DeviceMemory::Allocate(device_, size);
      ASSERT_TRUE(a.ok()) << a.status().message();
      EXPECT_EQ(reinterpret_cast<uintptr_t>(a->get()) % 256, 0u) << size << " bytes";
      odd.push_back(std::move(*a));
    }
  }
  EXPECT_LE(AbsDiff(FreeBytes(), before), kFreeSlackBytes);
}

TEST_F(CudaDeviceTest, PinnedBufferRoundTrip) {
  const size_t size = kMiB + 13;
  Result<DeviceMemory> pinned = DeviceMemory::AllocatePinned(device_, size);
  ASSERT_TRUE(pinned.ok()) << pinned.status().message();
  std::vector<unsigned char> want = RandomBytes(size, 1);
  std::memcpy(pinned->data(), want.data(), size);
  Result<DeviceMemory> dev = DeviceMemory::Allocate(device_, size);
  ASSERT_TRUE(dev.ok()) << dev.status().message();
  std::vector<unsigned char> got = RoundTrip(device_, dev->get(), pinned->data(), size);
  EXPECT_TRUE(got == want);
}

TEST_F(CudaDeviceTest, CopiesFromUnalignedHostOffsetsAndOddSizes) {
  const size_t host_size = 4 * kMiB + 64;
  std::vector<unsigned char> pageable = RandomBytes(host_size, 2);
  Result<DeviceMemory> pinned = DeviceMemory::AllocatePinned(device_, host_size);
  ASSERT_TRUE(pinned.ok()) << pinned.status().message();
  std::memcpy(pinned->data(), pageable.data(), host_size);
  Result<DeviceMemory> dev = DeviceMemory::Allocate(device_, host_size);
  ASSERT_TRUE(dev.ok()) << dev.status().message();
  auto* dev_bytes = static_cast<unsigned char*>(dev->get());

  struct Case {
    size_t host_offset, device_offset, size;
  };
  for (Case c : {Case{1, 0, 1}, Case{3, 5, 4093}, Case{7, 256, 65537}, Case{13, 1, kMiB + 5}, Case{63, 17, 4 * kMiB}}) {
    for (bool from_pinned : {false, true}) {
      const unsigned char* src = (from_pinned ? pinned->data() : pageable.data()) + c.host_offset;
      std::vector<unsigned char> got = RoundTrip(device_, dev_bytes + c.device_offset, src, c.size);
      EXPECT_EQ(std::memcmp(got.data(), src, c.size), 0)
          << (from_pinned ? "pinned" : "pageable") << " host offset " << c.host_offset << ", device offset "
          << c.device_offset << ", " << c.size << " bytes";
    }
  }
}

TEST_F(CudaDeviceTest, ManyQueuedCopiesThenSynchronize) {
  const size_t chunk = 64 * 1024 + 3;
  const int chunks = 256;
  const size_t total = chunk * chunks;
  Result<DeviceMemory> pinned = DeviceMemory::AllocatePinned(device_, total);
  ASSERT_TRUE(pinned.ok()) << pinned.status().message();
  std::vector<unsigned char> want = RandomBytes(total, 3);
  std::memcpy(pinned->data(), want.data(), total);
  Result<DeviceMemory> dev = DeviceMemory::Allocate(device_, total);
  ASSERT_TRUE(dev.ok()) << dev.status().message();
  auto* dev_bytes = static_cast<unsigned char*>(dev->get());
  // Queued in reverse so that a copy dropped or misplaced shows.
  for (int i = chunks - 1; i >= 0; --i) {
    Status s = device_->CopyToDeviceAsync(dev_bytes + i * chunk, pinned->data() + i * chunk, chunk);
    ASSERT_TRUE(s.ok()) << s.message();
  }
  ASSERT_TRUE(device_->Synchronize().ok());
  std::vector<unsigned char> got(total, 0);
  Status s = device_->CopyToHost(got.data(), dev_bytes, total);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(got == want);
}

// Each call sets its device, so threads that never called cudaSetDevice
// themselves can use every GPU.
TEST_F(CudaDeviceTest, CopiesFromSeveralThreadsOnEveryDevice) {
  const size_t per_thread = 3 * kMiB + 11;
  const int threads_per_device = 4;
  for (Device* d : registry_.All()) {
    if (d->id().kind != DeviceKind::kCuda) continue;
    Result<DeviceMemory> dev = DeviceMemory::Allocate(d, per_thread * threads_per_device);
    ASSERT_TRUE(dev.ok()) << dev.status().message();
    auto* dev_bytes = static_cast<unsigned char*>(dev->get());
    std::vector<std::vector<unsigned char>> want(threads_per_device);
    std::vector<std::thread> threads;
    std::vector<std::string> errors(threads_per_device);
    for (int t = 0; t < threads_per_device; ++t) {
      want[t] = RandomBytes(per_thread, 10 + t);
      threads.emplace_back([&, t] {
        Status s = d->CopyToDeviceAsync(dev_bytes + t * per_thread, want[t].data(), per_thread);
        Result<std::unique_ptr<Event>> e = d->CreateEvent();
        if (s.ok() && !e.ok()) s = e.status();
        if (s.ok()) s = (*e)->Record();
        if (s.ok()) s = (*e)->Wait();
        if (!s.ok()) errors[t] = s.message();
      });
    }
    for (auto& th : threads) th.join();
    for (const std::string& e : errors) EXPECT_EQ(e, "");
    for (int t = 0; t < threads_per_device; ++t) {
      std::vector<unsigned char> got(per_thread, 0);
      Status s = d->CopyToHost(got.data(), dev_bytes + t * per_thread, per_thread);
      ASSERT_TRUE(s.ok()) << s.message();
      EXPECT_TRUE(got == want[t]) << d->id().ToString() << " thread " << t;
    }
  }
}

TEST_F(CudaDeviceTest, OutOfMemoryIsReportedAndLeavesMemoryAlone) {
  Result<MemoryInfo> info = device_->GetMemoryInfo();
  ASSERT_TRUE(info.ok()) << info.status().message();
  const uint64_t asked = info->total_bytes * 2;
  Result<void*> r = device_->Allocate(asked);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfMemory) << r.status().message();
  const std::string& m = r.status().message();
  EXPECT_NE(m.find(device_->id().ToString()), std::string::npos) << m;
  EXPECT_NE(m.find(std::to_string(asked)), std::string::npos) << m;
  EXPECT_NE(m.find("cudaErrorMemoryAllocation"), std::string::npos) << m;
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  EXPECT_LE(AbsDiff(FreeBytes(), info->free_bytes), kFreeSlackBytes);
  // The error is not sticky: the device still works.
  Result<DeviceMemory> after = DeviceMemory::Allocate(device_, kMiB);
  EXPECT_TRUE(after.ok()) << after.status().message();
  Result<DeviceMemory> pinned = DeviceMemory::AllocatePinned(device_, kMiB);
  ASSERT_TRUE(pinned.ok()) << pinned.status().message();
  std::vector<unsigned char> want = RandomBytes(kMiB, 4);
  std::memcpy(pinned->data(), want.data(), kMiB);
  EXPECT_TRUE(RoundTrip(device_, after->get(), pinned->data(), kMiB) == want);
}

// A caller's current context (PyTorch's current device, say) is as it was
// after any call: here a thread with none current keeps none.
TEST_F(CudaDeviceTest, LeavesTheCallersCurrentContextAlone) {
  ASSERT_TRUE(cuda::ContextCallsAvailable()) << "a GPU but no cuCtxGetCurrent/cuCtxSetCurrent from the driver";
  std::thread caller([&] {
    cuda::Context before = reinterpret_cast<cuda::Context>(1), after = reinterpret_cast<cuda::Context>(1);
    ASSERT_TRUE(cuda::GetCurrentContext(&before));
    EXPECT_EQ(before, nullptr);  // a new thread has no current context
    ASSERT_TRUE(device_->GetMemoryInfo().ok());
    Result<DeviceMemory> mem = DeviceMemory::Allocate(device_, kMiB);
    ASSERT_TRUE(mem.ok());
    std::vector<unsigned char> bytes(kMiB, 7);
    ASSERT_TRUE(device_->CopyToDeviceAsync(mem->get(), bytes.data(), kMiB).ok());
    ASSERT_TRUE(device_->Synchronize().ok());
    mem->Reset();
    ASSERT_TRUE(cuda::GetCurrentContext(&after));
    EXPECT_EQ(after, nullptr);
  });
  caller.join();
}

TEST_F(CudaDeviceTest, ProbeReturnsPlausibleNumbers) {
  Result<std::vector<CudaProbe>> probes = ProbeCudaDevices();
  ASSERT_TRUE(probes.ok()) << probes.status().message();
  ASSERT_EQ(static_cast<int>(probes->size()), registry_.CudaCount());
  for (size_t i = 0; i < probes->size(); ++i) {
    const CudaProbe& p = (*probes)[i];
    SCOPED_TRACE("cuda:" + std::to_string(p.index));
    EXPECT_EQ(p.index, static_cast<int>(i));
    EXPECT_EQ(p.name, registry_.Find(DeviceId::Cuda(p.index))->name());
    EXPECT_GT(p.total_bytes, 0u);
    EXPECT_LE(p.free_bytes, p.total_bytes);
    // Generous bounds: anything outside them is a unit or timing bug.
    EXPECT_GT(p.h2d_pinned_gbps, 0.1);
    EXPECT_LT(p.h2d_pinned_gbps, 1000.0);
    EXPECT_GT(p.h2d_pageable_gbps, 0.01);
    EXPECT_LT(p.h2d_pageable_gbps, 1000.0);
    EXPECT_GE(p.pin_gbps, 0.0);  // 0: cudaHostRegister refused (the probe warns; loads do not need it)
    EXPECT_GT(p.pinned_alloc_gbps, 0.0);
    EXPECT_GT(p.malloc_us_1mib, 0.0);
    EXPECT_GT(p.malloc_us_64mib, 0.0);
    if (p.free_bytes > 2 * 1024 * kMiB) {
      EXPECT_GT(p.malloc_us_1gib, 0.0);
    }
    EXPECT_LT(p.malloc_us_1mib, 1e6);
  }
  // The probe returns everything it allocated.
  EXPECT_LE(AbsDiff(FreeBytes(), (*probes)[0].free_bytes), 64 * kMiB);
}

// The kernel against the host's CastFloats, byte for byte, on every input of
// testing/cast_inputs.h.
TEST_F(CudaDeviceTest, CastKernelIsBitIdenticalToTheHostCast) {
  const hoist::testing::CastInputs inputs;
  for (const auto& c : inputs.Sources()) {
    for (DType to : {DType::kF16, DType::kBF16, DType::kF32, DType::kF64}) {
      if (to == c.type) continue;
      SCOPED_TRACE(std::string(DTypeName(c.type)) + " -> " + std::string(DTypeName(to)));
      const size_t in_bytes = c.count * static_cast<size_t>(DTypeBits(c.type) / 8);
      const size_t out_bytes = c.count * static_cast<size_t>(DTypeBits(to) / 8);
      Result<DeviceMemory> in = DeviceMemory::Allocate(device_, in_bytes);
      Result<DeviceMemory> out = DeviceMemory::Allocate(device_, out_bytes);
      ASSERT_TRUE(in.ok() && out.ok());
      ASSERT_TRUE(device_->CopyToDeviceAsync(in->get(), c.data, in_bytes).ok());
      const size_t in_elem = static_cast<size_t>(DTypeBits(c.type) / 8);
      const size_t elem = static_cast<size_t>(DTypeBits(to) / 8);
      std::vector<unsigned char> want(out_bytes);
      CastFloats(c.type, c.data, to, want.data(), c.count);
      // All of it (the vector kernel), then a ragged tail (vector and scalar
      // kernels), then a start one element in (the scalar kernel alone).
      struct Range {
        size_t first, count;
      };
      for (Range r : {Range{0, c.count}, Range{0, c.count - 3}, Range{1, c.count - 1}}) {
        SCOPED_TRACE("elements " + std::to_string(r.first) + " + " + std::to_string(r.count));
        // A sentinel everywhere first: a missed write, or one outside the
        // range, shows.
        const std::vector<unsigned char> sentinel(out_bytes, 0xA5);
        ASSERT_TRUE(device_->CopyToDeviceAsync(out->get(), sentinel.data(), out_bytes).ok());
        Status s = device_->CastAsync(out->data() + r.first * elem, to, in->data() + r.first * in_elem, c.type,
                                      r.count);
        ASSERT_TRUE(s.ok()) << s.message();
        std::vector<unsigned char> got(out_bytes);
        ASSERT_TRUE(device_->CopyToHost(got.data(), out->get(), out_bytes).ok());
        for (size_t i = 0; i < c.count; ++i) {
          const bool inside = i >= r.first && i < r.first + r.count;
          ASSERT_EQ(std::memcmp(&got[i * elem], inside ? &want[i * elem] : &sentinel[i * elem], elem), 0)
              << (inside ? "element " : "written outside the range: element ") << i;
        }
      }
    }
  }
}

TEST_F(CudaDeviceTest, CastRejectsWhatTheKernelCannotDo) {
  Result<DeviceMemory> buf = DeviceMemory::Allocate(device_, 4096);
  ASSERT_TRUE(buf.ok());
  EXPECT_FALSE(device_->CastAsync(buf->get(), DType::kF32, buf->data() + 1024, DType::kI8, 16).ok());
  EXPECT_FALSE(device_->CastAsync(buf->data() + 2, DType::kF32, buf->data() + 1024, DType::kF16, 16).ok());
}

}  // namespace
}  // namespace hoist
