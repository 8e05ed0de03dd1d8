// Devices: where loaded tensors live, behind one small interface.
//
// The core defines Device and implements it for the host (`cpu`); the CUDA
// backend (hoist_cuda, built when the toolkit is found) and the
// fault-injecting test device implement it elsewhere. Nothing here includes a
// CUDA header. Backends are registered explicitly into a DeviceRegistry by
// whoever builds the program (the CLI, the Python module, a test); nothing
// registers itself from a static initializer.
//
// Ownership: device memory and pinned host memory come back as move-only
// RAII values (DeviceMemory) that return the bytes when they die. Events are owned by unique_ptr.
//
// Thread-safety: a Device may be used from several threads at once; its
// copies run in the order the calls are made, on one copy stream, and its
// casts likewise on one cast stream.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hoist/dtype.h"
#include "hoist/status.h"

namespace hoist {

enum class DeviceKind : uint8_t { kCpu, kCuda, kDisk };

struct DeviceId {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;  // cuda only

  static DeviceId Cpu() { return {DeviceKind::kCpu, 0}; }
  static DeviceId Disk() { return {DeviceKind::kDisk, 0}; }
  static DeviceId Cuda(int i) { return {DeviceKind::kCuda, i}; }
  std::string ToString() const;  // "cpu", "disk", "cuda:0"
  bool operator==(const DeviceId& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const DeviceId& o) const { return !(*this == o); }
  bool operator<(const DeviceId& o) const { return kind != o.kind ? kind < o.kind : index < o.index; }
};

// "cpu", "disk", "cuda" (= cuda:0), "cuda:N", or a bare integer N (= cuda:N),
// as accelerate's device maps write them.
Result<DeviceId> ParseDeviceId(std::string_view text);

struct MemoryInfo {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};

// A point in a device's queued work.
class Event {
 public:
  virtual ~Event() = default;
  // Marks the point after every copy and cast issued so far.
  virtual Status Record() = 0;
  // Blocks until the copies and casts before the last Record() have finished.
  virtual Status Wait() = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceId id() const = 0;
  virtual std::string name() const = 0;
  virtual Result<MemoryInfo> GetMemoryInfo() = 0;
  // True when device pointers are ordinary host pointers (cpu).
  virtual bool host_addressable() const = 0;
  // Device memory, at least 256-byte aligned. One call is one driver
  // allocation in the load report.
  virtual Result<void*> Allocate(uint64_t size_bytes) = 0;
  virtual void Free(void* device_ptr) = 0;
  // Page-locked host memory, for staging.
  virtual Result<void*> AllocatePinned(uint64_t size_bytes) = 0;
  virtual void FreePinned(void* host_ptr) = 0;
  // Queues a host-to-device copy on the copy stream. `src` must stay
  // unchanged until an Event recorded after this call has been waited on.
  virtual Status CopyToDeviceAsync(void* device_dst, const void* host_src, uint64_t size_bytes) = 0;
  // Queues a cast of `count` elements from `src` (device memory holding
  // `from`) into `dst` (device memory, `to`), bit-identical to the host's
  // cast of the same bytes (round to nearest even, NaN stays NaN;
  // src/cast/convert.h). It runs after the copies issued before it, and
  // after the casts before it, but copies issued after it do not wait for it
  // (a GPU casts on a second stream while its copy engine goes on): they
  // must not overwrite `src` or `dst` until an Event recorded after the cast
  // has been waited on (Event::Wait) or waited for on the device
  // (WaitOnDevice). REQUIRES: both types are F16, BF16, F32 or F64; the
  // pointers are aligned to their element sizes and the ranges do not
  // overlap.
  virtual Status CastAsync(void* device_dst, DType to, const void* device_src, DType from, uint64_t count) = 0;
  // Whether CastAsync can run here (a CUDA build may lack code for this
  // GPU's architecture); loads cast on the host where it cannot.
  virtual bool SupportsCast() = 0;
  // Synchronous device-to-host copy (verification, tests).
  virtual Status CopyToHost(void* host_dst, const void* device_src, uint64_t size_bytes) = 0;
  virtual Result<std::unique_ptr<Event>> CreateEvent() = 0;
  // Copies and casts issued after this call start only once the work before
  // `event`'s last Record() (on this device) has finished. The host does not
  // wait: the device does.
  virtual Status WaitOnDevice(Event* event) = 0;
  // Waits for every queued copy and cast.
  virtual Status Synchronize() = 0;
};

// Device memory, or pinned host memory, that returns itself to its device
// when destroyed.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  ~DeviceMemory() { Reset(); }
  DeviceMemory(DeviceMemory&& o) noexcept { *this = std::move(o); }
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    if (this != &o) {
      Reset();
      device_ = o.device_, ptr_ = o.ptr_, size_bytes_ = o.size_bytes_, pinned_ = o.pinned_;
      o.device_ = nullptr, o.ptr_ = nullptr, o.size_bytes_ = 0;
    }
    return *this;
  }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  // Device memory (Device::Allocate).
  static Result<DeviceMemory> Allocate(Device* device, uint64_t size_bytes);
  // Page-locked host memory for staging (Device::AllocatePinned).
  static Result<DeviceMemory> AllocatePinned(Device* device, uint64_t size_bytes);

  void* get() const { return ptr_; }
  unsigned char* data() const { return static_cast<unsigned char*>(ptr_); }
  uint64_t size_bytes() const { return size_bytes_; }
  void Reset() {
    if (ptr_ != nullptr) pinned_ ? device_->FreePinned(ptr_) : device_->Free(ptr_);
    ptr_ = nullptr;
    size_bytes_ = 0;
  }

 private:
  Device* device_ = nullptr;
  void* ptr_ = nullptr;
  uint64_t size_bytes_ = 0;
  bool pinned_ = false;
};

// The devices a program can load onto. Owns them.
class DeviceRegistry {
 public:
  void Add(std::unique_ptr<Device> device) { devices_.push_back(std::move(device)); }
  // nullptr when absent.
  Device* Find(DeviceId id) const;
  std::vector<Device*> All() const;
  int CudaCount() const;

 private:
  std::vector<std::unique_ptr<Device>> devices_;
};

// The host as a device: Allocate is one anonymous mapping (transparent huge
// pages requested), copies are memcpy, events are no-ops. Free memory is
// MemAvailable from /proc/meminfo.
std::unique_ptr<Device> MakeCpuDevice();

// A registry holding the cpu device only.
DeviceRegistry MakeCpuRegistry();

// What the host offers a load onto `cpu` (`hoist probe`), measured with
// `threads` threads over `bytes` of new memory mapped as a load's arena is.
struct HostProbe {
  uint64_t bytes = 0;
  int threads = 0;
  // First touch of fresh memory: the kernel supplies and zeroes each page.
  // A CPU load pays this for its whole arena, besides the copy.
  double fresh_seconds = 0;
  double fresh_gbps = 0;
  // memcpy between pages already touched.
  double memcpy_gbps = 0;
  // Whether the kernel hands idle freed memory back to a hypervisor (a VM's
  // free page reporting): fresh memory then costs whatever the host makes
  // it cost, up to 35x more after an idle spell (bench/results/).
  bool free_page_reporting = false;
};
// REQUIRES: 1 <= threads <= 1024 and bytes >= two pages per thread (else
// InvalidArgument); OutOfMemory when bytes exceed the cpu device's free
// memory or cannot be mapped.
Result<HostProbe> ProbeHost(uint64_t bytes, int threads);

}  // namespace hoist
