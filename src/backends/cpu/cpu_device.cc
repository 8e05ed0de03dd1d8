#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <unordered_map>

#include "util/text.h"
#include "cast/cast.h"
#include "backends/cpu/cgroup.h"
#include "hoist/device.h"

namespace hoist {

std::string DeviceId::ToString() const {
  switch (kind) {
    case DeviceKind::kCpu: return "cpu";
    case DeviceKind::kDisk: return "disk";
    case DeviceKind::kCuda: return "cuda:" + std::to_string(index);
  }
  return "?";
}

Result<DeviceId> ParseDeviceId(std::string_view text) {
  auto bad = [&] {
    return InvalidArgument(QuoteName(text) + " is not a device (expected cpu, disk, cuda, cuda:N or N)");
  };
  auto parse_index = [](std::string_view digits, int* out) {
    if (digits.empty() || digits.size() > 6) return false;
    int v = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return false;
      v = v * 10 + (c - '0');
    }
    *out = v;
    return true;
  };
  if (text == "cpu") return DeviceId::Cpu();
  if (text == "disk") return DeviceId::Disk();
  if (text == "cuda") return DeviceId::Cuda(0);
  int index = 0;
  if (text.substr(0, 5) == "cuda:") {
    if (!parse_index(text.substr(5), &index)) return bad();
    return DeviceId::Cuda(index);
  }
  if (parse_index(text, &index)) return DeviceId::Cuda(index);
  return bad();
}

Result<DeviceMemory> DeviceMemory::Allocate(Device* device, uint64_t size_bytes) {
  HOIST_ASSIGN_OR_RETURN(void* ptr, device->Allocate(size_bytes));
  DeviceMemory m;
  m.device_ = device, m.ptr_ = ptr, m.size_bytes_ = size_bytes, m.pinned_ = false;
  return m;
}

Result<DeviceMemory> DeviceMemory::AllocatePinned(Device* device, uint64_t size_bytes) {
  HOIST_ASSIGN_OR_RETURN(void* ptr, device->AllocatePinned(size_bytes));
  DeviceMemory m;
  m.device_ = device, m.ptr_ = ptr, m.size_bytes_ = size_bytes, m.pinned_ = true;
  return m;
}

Device* DeviceRegistry::Find(DeviceId id) const {
  for (const auto& d : devices_) {
    if (d->id() == id) return d.get();
  }
  return nullptr;
}

std::vector<Device*> DeviceRegistry::All() const {
  std::vector<Device*> out;
  for (const auto& d : devices_) out.push_back(d.get());
  return out;
}

int DeviceRegistry::CudaCount() const {
  int n = 0;
  for (const auto& d : devices_) n += d->id().kind == DeviceKind::kCuda ? 1 : 0;
  return n;
}

namespace {

uint64_t ReadNumber(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text == "max") return UINT64_MAX;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return UINT64_MAX;
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, static_cast<uint64_t>(c - '0'), &v)) {
      return UINT64_MAX;
    }
  }
  return v;
}

}  // namespace

uint64_t CgroupHeadroomBytes(const std::string& proc_cgroup, const std::string& sys_cgroup) {
  std::ifstream in(proc_cgroup);
  std::string line;
  uint64_t headroom = UINT64_MAX;
  while (std::getline(in, line)) {
    std::string limit_file, usage_file;
    if (line.rfind("0::", 0) == 0) {
      std::string dir = sys_cgroup + line.substr(3);
      limit_file = dir + "/memory.max";
      usage_file = dir + "/memory.current";
    } else if (size_t at = line.find(":memory:"); at != std::string::npos) {
      std::string dir = sys_cgroup + "/memory" + line.substr(at + 8);
      limit_file = dir + "/memory.limit_in_bytes";
      usage_file = dir + "/memory.usage_in_bytes";
    } else {
      continue;
    }
    uint64_t limit = ReadNumber(limit_file);
    if (limit >= (uint64_t{1} << 60)) continue;  // "max", or v1's page-rounded 2^63
    uint64_t usage = ReadNumber(usage_file);
    if (usage == UINT64_MAX) continue;
    headroom = std::min(headroom, limit > usage ? limit - usage : 0);
  }
  return headroom;
}

namespace {

class CpuEvent final : public Event {
 public:
  Status Record() override { return Status::Ok(); }
  Status Wait() override { return Status::Ok(); }
};

// Host memory as a device. Allocations are anonymous mappings so that a
// reservation of many gigabytes costs nothing until it is touched, and huge
// pages cut the first-touch page faults.
class CpuDevice final : public Device {
 public:
  DeviceId id() const override { return DeviceId::Cpu(); }
  std::string name() const override { return "host memory"; }
  bool host_addressable() const override { return true; }

  Result<MemoryInfo> GetMemoryInfo() override {
    std::ifstream in("/proc/meminfo");
    std::string key, unit;
    uint64_t kib = 0;
    MemoryInfo info;
    while (in >> key >> kib >> unit) {
      if (key == "MemTotal:") info.total_bytes = kib * 1024;
      if (key == "MemAvailable:") info.free_bytes = kib * 1024;
    }
    if (info.total_bytes == 0) {
      long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
      info.total_bytes = info.free_bytes = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
    }
    info.free_bytes = std::min(info.free_bytes, CgroupHeadroomBytes("/proc/self/cgroup", "/sys/fs/cgroup"));
    return info;
  }

  Result<void*> Allocate(uint64_t size_bytes) override {
    if (size_bytes == 0) size_bytes = 1;
    void* p = ::mmap(nullptr, size_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return OutOfMemory("cpu: cannot reserve " + std::to_string(size_bytes) + " bytes");
    (void)::madvise(p, size_bytes, MADV_HUGEPAGE);
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = size_bytes;
    return p;
  }
  void Free(void* ptr) override {
    uint64_t size = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = sizes_.find(ptr);
      if (it == sizes_.end()) return;
      size = it->second;
      sizes_.erase(it);
    }
    ::munmap(ptr, size);
  }
  // Host memory needs no pinning to be copied from by memcpy.
  Result<void*> AllocatePinned(uint64_t size_bytes) override { return Allocate(size_bytes); }
  void FreePinned(void* ptr) override { Free(ptr); }

  Status CopyToDeviceAsync(void* dst, const void* src, uint64_t size_bytes) override {
    std::memcpy(dst, src, size_bytes);
    return Status::Ok();
  }
  bool SupportsCast() override { return true; }
  Status CastAsync(void* dst, DType to, const void* src, DType from, uint64_t count) override {
    CastFloats(from, src, to, dst, count);
    return Status::Ok();
  }
  Status CopyToHost(void* dst, const void* src, uint64_t size_bytes) override {
    std::memcpy(dst, src, size_bytes);
    return Status::Ok();
  }
  Result<std::unique_ptr<Event>> CreateEvent() override { return std::unique_ptr<Event>(new CpuEvent()); }
  // Everything before the event has already happened.
  Status WaitOnDevice(Event*) override { return Status::Ok(); }
  Status Synchronize() override { return Status::Ok(); }

 private:
  std::mutex mu_;
  std::unordered_map<void*, uint64_t> sizes_;
};

}  // namespace

std::unique_ptr<Device> MakeCpuDevice() { return std::make_unique<CpuDevice>(); }

DeviceRegistry MakeCpuRegistry() {
  DeviceRegistry r;
  r.Add(MakeCpuDevice());
  return r;
}

}  // namespace hoist
