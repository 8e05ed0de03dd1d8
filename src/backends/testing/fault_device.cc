#include "backends/testing/fault_device.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "cast/cast.h"
#include "io/file.h"

namespace hoist::testing {

namespace {

class FaultEvent final : public Event {
 public:
  explicit FaultEvent(FaultDevice* device) : device_(device) { ++device_->live_events_; }
  ~FaultEvent() override { --device_->live_events_; }
  Status Record() override {
    HOIST_RETURN_IF_ERROR(device_->Hit(FaultPoint::kEventRecord));
    point_ = device_->Queued();
    return Status::Ok();
  }
  Status Wait() override {
    HOIST_RETURN_IF_ERROR(device_->Hit(FaultPoint::kEventWait));
    device_->RunUpTo(point_);
    return Status::Ok();
  }

  FaultDevice::QueuePoint point() const { return point_; }
  const FaultDevice* device() const { return device_; }

 private:
  FaultDevice* device_;
  FaultDevice::QueuePoint point_;
};

const char* PointName(FaultPoint p) {
  switch (p) {
    case FaultPoint::kAllocate: return "allocate";
    case FaultPoint::kAllocatePinned: return "allocate pinned";
    case FaultPoint::kCopy: return "copy";
    case FaultPoint::kCast: return "cast";
    case FaultPoint::kEventRecord: return "event record";
    case FaultPoint::kEventWait: return "event wait";
    case FaultPoint::kDeviceWait: return "device wait";
    case FaultPoint::kSynchronize: return "synchronize";
  }
  return "?";
}

}  // namespace

FaultDevice::~FaultDevice() {
  for (uintptr_t addr : refusing_reads_) File::RefuseReadsIntoForTesting(reinterpret_cast<void*>(addr), 0, false);
  for (auto& [addr, n] : pinned_blocks_) std::free(reinterpret_cast<void*>(addr));
}

Status FaultDevice::SpoiledCheck(const std::string& what) const {
  if (sticky_ && spoiled_) {
    return Status(StatusCode::kDevice, id_.ToString() + ": " + what + " after an injected failure (sticky)");
  }
  return Status::Ok();
}

Status FaultDevice::Hit(FaultPoint point) {
  int i = static_cast<int>(point);
  int n = ++calls_[i];
  HOIST_RETURN_IF_ERROR(SpoiledCheck(std::string(PointName(point)) + " call " + std::to_string(n)));
  if (fail_at_[i] != 0 && n == fail_at_[i]) {
    spoiled_ = true;
    StatusCode code = point == FaultPoint::kAllocate ? StatusCode::kOutOfMemory : StatusCode::kDevice;
    return Status(code, id_.ToString() + ": injected failure of " + PointName(point) + " call " + std::to_string(n));
  }
  return Status::Ok();
}

uint64_t FaultDevice::outstanding_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return device_bytes_;
}
uint64_t FaultDevice::outstanding_pinned_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pinned_bytes_;
}

Result<MemoryInfo> FaultDevice::GetMemoryInfo() {
  std::call_once(started_, [this] { std::this_thread::sleep_for(start_delay_); });
  HOIST_RETURN_IF_ERROR(SpoiledCheck("memory info"));
  std::lock_guard<std::mutex> lock(mu_);
  return MemoryInfo{capacity_bytes_ - device_bytes_, capacity_bytes_};
}

Result<void*> FaultDevice::Allocate(uint64_t size_bytes) {
  HOIST_RETURN_IF_ERROR(Hit(FaultPoint::kAllocate));
  std::lock_guard<std::mutex> lock(mu_);
  if (device_bytes_ + size_bytes > capacity_bytes_) {
    return OutOfMemory(id_.ToString() + ": out of memory allocating " + std::to_string(size_bytes) + " bytes");
  }
  void* handle = device_memory_.Allocate(size_bytes);
  if (handle == nullptr) return OutOfMemory("test device: cannot map " + std::to_string(size_bytes) + " bytes");
  device_bytes_ += size_bytes;
  return handle;
}

void FaultDevice::Free(void* ptr) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [contents, size] = device_memory_.Whole(ptr);
  if (contents == nullptr) std::abort();  // a double free or a stranger's pointer is a test failure
  DrainBeforeFreeLocked(contents, contents + size);
  device_bytes_ -= device_memory_.Free(ptr).size_bytes;
}

Result<void*> FaultDevice::AllocatePinned(uint64_t size_bytes) {
  HOIST_RETURN_IF_ERROR(Hit(FaultPoint::kAllocatePinned));
  void* p = std::aligned_alloc(4096, std::max<uint64_t>(4096, (size_bytes + 4095) / 4096 * 4096));
  if (p == nullptr) return OutOfMemory("test device: pinned allocation failed");
  std::lock_guard<std::mutex> lock(mu_);
  pinned_blocks_[reinterpret_cast<uintptr_t>(p)] = size_bytes;
  pinned_bytes_ += size_bytes;
  if (pinned_refuses_reads_.load()) {
    File::RefuseReadsIntoForTesting(p, size_bytes, true);
    refusing_reads_.insert(reinterpret_cast<uintptr_t>(p));
  }
  return p;
}

void FaultDevice::FreePinned(void* ptr) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pinned_blocks_.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == pinned_blocks_.end()) std::abort();
  const auto* begin = static_cast<const unsigned char*>(ptr);
  DrainBeforeFreeLocked(begin, begin + it->second);
  pinned_bytes_ -= it->second;
  pinned_blocks_.erase(it);
  if (refusing_reads_.erase(reinterpret_cast<uintptr_t>(ptr)) > 0) File::RefuseReadsIntoForTesting(ptr, 0, false);
  std::free(ptr);
}

void FaultDevice::DrainBeforeFreeLocked(const unsigned char* begin, const unsigned char* end) {
  const auto touches = [&](const void* p, uint64_t n) {
    const auto* q = static_cast<const unsigned char*>(p);
    return q != nullptr && q < end && q + n > begin;
  };
  bool queued = false;
  for (size_t i = done_.copies; i < copies_.size() && !queued; ++i) {
    queued = touches(copies_[i].dst, copies_[i].size_bytes) || touches(copies_[i].src, copies_[i].size_bytes);
  }
  for (size_t i = done_.casts; i < casts_.size() && !queued; ++i) {
    const PendingCast& c = casts_[i];
    queued = touches(c.dst, c.count * static_cast<uint64_t>(DTypeBits(c.to) / 8)) ||
             touches(c.src, c.count * static_cast<uint64_t>(DTypeBits(c.from) / 8));
  }
  if (!queued) return;
  ++frees_with_queued_work_;
  if (sticky_ && spoiled_) {
    done_ = {copies_.size(), casts_.size()};  // a spoiled context runs nothing more
  } else {
    RunUpToLocked({UINT64_MAX, UINT64_MAX});
  }
}

FaultDevice::QueuePoint FaultDevice::Queued() {
  std::lock_guard<std::mutex> lock(mu_);
  return {copies_.size(), casts_.size()};
}

void FaultDevice::RunUpTo(QueuePoint point) {
  std::lock_guard<std::mutex> lock(mu_);
  RunUpToLocked(point);
}

void FaultDevice::RunUpToLocked(QueuePoint point) {
  // Every cast was issued after the copies it must follow, so running the
  // copies first keeps that order; copies issued after a cast may run
  // before it, as they may on a GPU.
  if (copies_overtake_casts_) point.copies = UINT64_MAX;
  const auto run_casts_to = [this](uint64_t n) {
    for (; done_.casts < n && done_.casts < casts_.size(); ++done_.casts) {
      const PendingCast& c = casts_[done_.casts];
      CastFloats(c.from, c.src, c.to, c.dst, c.count);
    }
  };
  for (; done_.copies < point.copies && done_.copies < copies_.size(); ++done_.copies) {
    PendingCopy& c = copies_[done_.copies];
    run_casts_to(c.after_casts);  // a device-side wait holds the copy back
    std::this_thread::sleep_until(c.lands);
    std::memcpy(c.dst, c.src != nullptr ? c.src : c.snapshot.data(), c.size_bytes);
    std::vector<unsigned char>().swap(c.snapshot);
  }
  run_casts_to(point.casts);
}

Status FaultDevice::WaitOnDevice(Event* event) {
  HOIST_RETURN_IF_ERROR(Hit(FaultPoint::kDeviceWait));
  auto* e = dynamic_cast<FaultEvent*>(event);
  if (e == nullptr || e->device() != this) return InvalidArgument("test device: WaitOnDevice needs one of its own events");
  std::lock_guard<std::mutex> lock(mu_);
  copy_barrier_ = std::max(copy_barrier_, e->point().casts);
  return Status::Ok();
}

Status FaultDevice::CopyToDeviceAsync(void* dst, const void* src, uint64_t size_bytes) {
  HOIST_RETURN_IF_ERROR(Hit(FaultPoint::kCopy));
  std::lock_guard<std::mutex> lock(mu_);
  unsigned char* to = device_memory_.Contents(dst, size_bytes);
  if (to == nullptr) {
    return InvalidArgument("test device: copy of " + std::to_string(size_bytes) +
                           " bytes to an address outside every device allocation");
  }
  const auto from = reinterpret_cast<uintptr_t>(src);
  auto it = pinned_blocks_.upper_bound(from);
  const bool pinned = it != pinned_blocks_.begin() && from - std::prev(it)->first + size_bytes <= std::prev(it)->second;
  if (!pinned) ++pageable_copies_;
  PendingCopy copy{to, src, {}, size_bytes, copy_barrier_, std::chrono::steady_clock::now() + copy_latency_};
  if (copies_read_at_issue_) {
    const auto* bytes = static_cast<const unsigned char*>(src);
    copy.snapshot.assign(bytes, bytes + size_bytes);
    copy.src = nullptr;
  }
  copies_.push_back(std::move(copy));
  return Status::Ok();
}

Status FaultDevice::CastAsync(void* dst, DType to, const void* src, DType from, uint64_t count) {
  HOIST_RETURN_IF_ERROR(Hit(FaultPoint::kCast));
  if (!supports_cast_) return NotSupported("test device: no cast kernel");
  if (!IsCastableFloat(from) || !IsCastableFloat(to) || from == to) {
    return InvalidArgument("test device: not a cast between two float types");
  }
  const auto misaligned = [](const void* p, DType t) {
    return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(DTypeBits(t) / 8) != 0;
  };
  if (misaligned(src, from) || misaligned(dst, to)) return InvalidArgument("test device: misaligned cast buffers");
  std::lock_guard<std::mutex> lock(mu_);
  unsigned char* out = device_memory_.Contents(dst, count * static_cast<uint64_t>(DTypeBits(to) / 8));
  const unsigned char* in = device_memory_.Contents(src, count * static_cast<uint64_t>(DTypeBits(from) / 8));
  if (out == nullptr || in == nullptr) {
    return InvalidArgument("test device: cast of " + std::to_string(count) + " elements " +
                           (in == nullptr ? "from" : "to") + " an address outside every device allocation");
  }
  casts_.push_back({out, in, count, from, to});
  return Status::Ok();
}

Status FaultDevice::CopyToHost(void* dst, const void* src, uint64_t size_bytes) {
  HOIST_RETURN_IF_ERROR(SpoiledCheck("copy to host"));
  std::lock_guard<std::mutex> lock(mu_);
  RunUpToLocked({UINT64_MAX, UINT64_MAX});
  const unsigned char* from = device_memory_.Contents(src, size_bytes);
  if (from == nullptr) {
    return InvalidArgument("test device: copy of " + std::to_string(size_bytes) +
                           " bytes from an address outside every device allocation");
  }
  std::memcpy(dst, from, size_bytes);
  return Status::Ok();
}

Result<std::unique_ptr<Event>> FaultDevice::CreateEvent() {
  HOIST_RETURN_IF_ERROR(SpoiledCheck("event creation"));
  return std::unique_ptr<Event>(new FaultEvent(this));
}

Status FaultDevice::Synchronize() {
  HOIST_RETURN_IF_ERROR(Hit(FaultPoint::kSynchronize));
  RunUpTo({UINT64_MAX, UINT64_MAX});
  return Status::Ok();
}

}  // namespace hoist::testing
