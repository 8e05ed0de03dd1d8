// ProbeHost: what fresh host memory costs a load onto `cpu`.
//
// A load's arena is new anonymous memory, so the kernel zeroes every page on
// its first touch before a read can copy into it; on some machines that
// costs more than the copy. `cat FILE > /dev/null` never pays it (it reuses
// one small buffer), which is why a CPU load cannot beat cat on a machine
// whose fresh memory comes slower than cat copies.
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "hoist/device.h"
#include "util/text.h"

namespace hoist {
namespace {

// Whether a virtio balloon offers free page reporting (feature bit 5,
// VIRTIO_BALLOON_F_REPORTING): the kernel then hands idle freed memory back
// to the hypervisor. (/sys/module/page_reporting exists on any kernel built
// with it, bare metal included, so it says nothing.)
bool ReportsFreePages() {
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/sys/bus/virtio/devices", ec), end; !ec && it != end; it.increment(ec)) {
    std::ifstream device(it->path() / "device");
    std::string id, features;
    device >> id;
    if (id != "0x0005") continue;  // the balloon
    std::ifstream(it->path() / "features") >> features;  // one '0' or '1' per feature bit, bit 0 first
    if (features.size() > 5 && features[5] == '1') return true;
  }
  return false;
}

using Clock = std::chrono::steady_clock;

constexpr uint64_t kPage = 4096;

// Runs fn(i, begin, end) on `threads` threads over page-aligned shares of
// [0, bytes) and returns the wall seconds.
template <typename Fn>
double TimeShares(uint64_t bytes, int threads, Fn fn) {
  const uint64_t pages = bytes / kPage;
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads));
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < threads; ++i) {
    const uint64_t begin = pages * static_cast<uint64_t>(i) / static_cast<uint64_t>(threads) * kPage;
    const uint64_t end = pages * static_cast<uint64_t>(i + 1) / static_cast<uint64_t>(threads) * kPage;
    pool.emplace_back([=] { fn(begin, end); });
  }
  for (std::thread& t : pool) t.join();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

Result<HostProbe> ProbeHost(uint64_t bytes, int threads) {
  if (threads < 1 || threads > 1024) return InvalidArgument("host probe: threads must be 1..1024");
  if (bytes < kPage * 2 * static_cast<uint64_t>(threads)) {
    return InvalidArgument("host probe: " + std::to_string(bytes) + " bytes is too small for " +
                           std::to_string(threads) + " threads (at least two pages each)");
  }
  bytes -= bytes % kPage;
  std::unique_ptr<Device> cpu = MakeCpuDevice();
  Result<MemoryInfo> memory = cpu->GetMemoryInfo();
  if (!memory.ok()) return memory.status();
  if (bytes > memory->free_bytes) {
    return OutOfMemory("host probe: " + ByteText(bytes) + " asked for, " + ByteText(memory->free_bytes) +
                       " available");
  }
  // The same kind of mapping a load's arena is (Device::Allocate on cpu).
  Result<DeviceMemory> arena = DeviceMemory::Allocate(cpu.get(), bytes);
  if (!arena.ok()) return arena.status();
  unsigned char* base = arena->data();

  HostProbe probe;
  probe.bytes = bytes;
  probe.threads = threads;
  // First touch: one written byte per page makes the kernel supply (and
  // zero) the whole page.
  probe.fresh_seconds = TimeShares(bytes, threads, [base](uint64_t begin, uint64_t end) {
    volatile unsigned char* p = base;
    for (uint64_t off = begin; off < end; off += kPage) p[off] = 1;
  });
  // Then copies between pages already there: each thread copies the first
  // half of its share onto the second.
  const double copy_seconds = TimeShares(bytes, threads, [base](uint64_t begin, uint64_t end) {
    const uint64_t half = (end - begin) / 2;
    std::memcpy(base + begin + half, base + begin, half);
  });
  probe.fresh_gbps = static_cast<double>(bytes) / probe.fresh_seconds / 1e9;
  probe.memcpy_gbps = static_cast<double>(bytes / 2) / copy_seconds / 1e9;
  probe.free_page_reporting = ReportsFreePages();
  return probe;
}

}  // namespace hoist
