// FaultDevice: a pretend accelerator for tests on machines without one.
//
// Its memory is not the host's to touch: an allocation hands out addresses
// the host cannot read or write (a PROT_NONE mapping; any host access is a
// crash, as it would be on a GPU), and keeps the bytes in a second, private
// mapping that only the device's own calls use. Loads therefore take the
// staged path with pinned buffers, asynchronous copies and events, as they
// do on a GPU. Every copy and cast is checked against the allocations it
// touches (out of bounds is an error), and a copy from memory that is not
// pinned is counted (on a GPU it would be synchronous and slow).
//
// Copies are really asynchronous: they are queued and carried out only when
// an event recorded after them is waited on, or the device is synchronized.
// By default they read their source then, as late as a GPU may, so a
// staging buffer reused too early shows up as wrong bytes; with
// set_copies_read_at_issue they read it when issued, as early as a GPU may,
// so a copy issued before its buffer was filled shows up instead. Casts
// queue apart from copies, as on a GPU's second stream, and run after every
// copy due at that point; with set_copies_overtake_casts, after copies
// issued later too (the latest order a GPU allows), so a cast input
// overwritten by a later copy shows up as well.
//
// Freeing memory that queued work still touches runs that work first (as
// cudaFree's implicit synchronization does; after a sticky failure, drops
// it) and is counted: a load that frees before it synchronizes is a bug on
// devices without that guarantee. Only a failed synchronization excuses it.
//
// It has a configurable capacity, counts every byte and call, and can fail
// the k-th call of any kind, once or from then on (sticky, as a CUDA
// context is after a kernel fault: every later call fails, events and
// read-backs included, and nothing queued runs), so every error path of a
// load can be driven and checked for leaks (outstanding_bytes() must return
// to zero).
//
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "hoist/device.h"
#include "testing/shadow_memory.h"

namespace hoist::testing {

enum class FaultPoint {
  kAllocate,
  kAllocatePinned,
  kCopy,
  kCast,
  kEventRecord,
  kEventWait,
  kDeviceWait,
  kSynchronize
};
inline constexpr int kFaultPointCount = static_cast<int>(FaultPoint::kSynchronize) + 1;

class FaultDevice final : public Device {
 public:
  FaultDevice(DeviceId id, uint64_t capacity_bytes) : id_(id), capacity_bytes_(capacity_bytes) {}
  ~FaultDevice() override;

  // The `nth` call (1-based) at `point` fails; 0 disables.
  void FailAt(FaultPoint point, int nth) { fail_at_[static_cast<int>(point)] = nth; }
  // After an injected failure, every later call of every kind fails too
  // (frees still free, and nothing queued runs any more), as on a GPU whose
  // context a fault has spoiled.
  void set_sticky_failures(bool v) { sticky_ = v; }
  int calls(FaultPoint point) const { return calls_[static_cast<int>(point)].load(); }
  // Device and pinned bytes currently held.
  uint64_t outstanding_bytes() const;
  uint64_t outstanding_pinned_bytes() const;
  int live_events() const { return live_events_.load(); }
  // Copies whose source was not pinned memory of this device.
  int pageable_copies() const { return pageable_copies_.load(); }
  // Frees of memory that queued copies or casts still touched.
  int frees_with_queued_work() const { return frees_with_queued_work_.load(); }
  // Copies read their source when issued rather than when they run.
  void set_copies_read_at_issue(bool v) { copies_read_at_issue_ = v; }
  // The first GetMemoryInfo takes this long, as a GPU's first call waits
  // for its CUDA context; calls made meanwhile wait for it too.
  void set_start_delay(std::chrono::milliseconds d) { start_delay_ = d; }
  // A copy completes no sooner than this long after it was issued, as on a
  // busy link: whatever waits for it waits that long.
  void set_copy_latency(std::chrono::milliseconds d) { copy_latency_ = d; }
  // Pinned memory allocated from now on takes no reads from files (they
  // fail with EFAULT, File::RefuseReadsIntoForTesting), though the host may
  // write it: pinned buffers under gVisor, which maps them from the GPU
  // driver.
  void set_pinned_refuses_reads(bool v) { pinned_refuses_reads_ = v; }

  DeviceId id() const override { return id_; }
  std::string name() const override { return "fault-injecting test device"; }
  bool host_addressable() const override { return false; }
  Result<MemoryInfo> GetMemoryInfo() override;
  Result<void*> Allocate(uint64_t size_bytes) override;
  void Free(void* ptr) override;
  Result<void*> AllocatePinned(uint64_t size_bytes) override;
  void FreePinned(void* ptr) override;
  Status CopyToDeviceAsync(void* dst, const void* src, uint64_t size_bytes) override;
  // Queued apart from copies; run on the host with CastFloats when its turn
  // comes (after the copies due with it). Refuses what the CUDA backend
  // refuses (same types, misaligned buffers).
  Status CastAsync(void* dst, DType to, const void* src, DType from, uint64_t count) override;
  bool SupportsCast() override { return supports_cast_; }
  // A device without a cast kernel: loads must cast on the host.
  void set_supports_cast(bool v) { supports_cast_ = v; }
  // Copies overtake casts: whenever queued work runs, every copy issued so
  // far runs before the casts due, as a GPU's copy engine may run ahead of
  // its cast stream. A cast input that a later copy overwrites then shows
  // up as wrong bytes, however the loader's waits fall.
  void set_copies_overtake_casts(bool v) { copies_overtake_casts_ = v; }
  Status CopyToHost(void* dst, const void* src, uint64_t size_bytes) override;
  Result<std::unique_ptr<Event>> CreateEvent() override;
  // Copies issued after it run only after the casts before the event.
  Status WaitOnDevice(Event* event) override;
  Status Synchronize() override;

  // Internal: counts a call at `point`, failing it when asked.
  Status Hit(FaultPoint point);
  // Internal: how many copies and casts are queued so far; runs the copies
  // up to `copies`, then the casts up to `casts`.
  struct QueuePoint {
    uint64_t copies = 0, casts = 0;
  };
  QueuePoint Queued();
  void RunUpTo(QueuePoint point);
  std::atomic<int> live_events_{0};

 private:
  struct PendingCopy {
    unsigned char* dst;        // in a block's contents
    const void* src;           // host memory, or nullptr when read at issue
    std::vector<unsigned char> snapshot;
    uint64_t size_bytes;
    uint64_t after_casts;      // the casts that must have run first (WaitOnDevice)
    std::chrono::steady_clock::time_point lands;  // not before (set_copy_latency)
  };
  struct PendingCast {
    unsigned char* dst;        // both in blocks' contents
    const unsigned char* src;
    uint64_t count;
    DType from, to;
  };

  // Fails once the device is spoiled (sticky mode).
  Status SpoiledCheck(const std::string& what) const;
  void RunUpToLocked(QueuePoint point);
  // Counts a free while queued work touches [begin, end), then runs it. Needs mu_.
  void DrainBeforeFreeLocked(const unsigned char* begin, const unsigned char* end);

  DeviceId id_;
  uint64_t capacity_bytes_;
  bool supports_cast_ = true;
  bool copies_overtake_casts_ = false;
  bool copies_read_at_issue_ = false;
  std::atomic<bool> pinned_refuses_reads_{false};
  bool sticky_ = false;
  std::chrono::milliseconds start_delay_{0};
  std::chrono::milliseconds copy_latency_{0};
  std::once_flag started_;
  std::atomic<bool> spoiled_{false};
  std::atomic<int> fail_at_[kFaultPointCount] = {};
  std::atomic<int> calls_[kFaultPointCount] = {};
  std::atomic<int> pageable_copies_{0}, frees_with_queued_work_{0};
  mutable std::mutex mu_;
  ShadowMemory device_memory_;
  std::map<uintptr_t, uint64_t> pinned_blocks_;  // address -> size
  std::set<uintptr_t> refusing_reads_;           // pinned blocks that refuse reads
  std::vector<PendingCopy> copies_;  // issued, in order
  std::vector<PendingCast> casts_;
  QueuePoint done_;                  // how many of each have run
  uint64_t copy_barrier_ = 0;        // after_casts for copies issued from now on
  uint64_t device_bytes_ = 0, pinned_bytes_ = 0;
};

}  // namespace hoist::testing
