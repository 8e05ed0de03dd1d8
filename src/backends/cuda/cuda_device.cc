// The CUDA backend: hoist::Device over the CUDA runtime API, and the probe
// behind `hoist probe`. Plain C++ (the cast kernel is in cast_kernel.cu),
// linked with the static runtime. Contracts are in include/hoist/cuda.h.
#include "hoist/cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "backends/cuda/cast_kernel.h"
#include "backends/cuda/context.h"
#include "util/parallel.h"
#include "util/text.h"

namespace hoist {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;


std::string CudaErrorText(cudaError_t err) {
  return fmt::format("{} ({})", cudaGetErrorName(err), cudaGetErrorString(err));
}

// Clears the runtime's record of a non-sticky error, so that it is not
// reported again by a later cudaGetLastError (ours or a caller's). The value
// returned is the error we are already handling.
void ForgetLastError() { (void)cudaGetLastError(); }

// One line: "cuda:N: <what> failed: cudaErrorX (text)". kOutOfMemory for
// cudaErrorMemoryAllocation, kDevice for anything else.
Status CudaFailure(cudaError_t err, int device, std::string_view what) {
  ForgetLastError();
  std::string message = fmt::format("cuda:{}: {} failed: {}", device, what, CudaErrorText(err));
  if (err == cudaErrorMemoryAllocation) return OutOfMemory(std::move(message));
  return Status(StatusCode::kDevice, std::move(message));
}

// After a fault that spoils the context (an illegal address, say) the
// context is dead for the rest of the process, and every later free fails
// too: a few warnings say so, and the rest, hundreds with --alloc
// per-tensor, would only push the error that matters off the screen.
bool IsStickyError(cudaError_t err) {
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
      return true;
    default:
      return false;
  }
}
// Counted per device (its context is what the fault spoiled).
constexpr int kMaxStickyWarnings = 4;
constexpr int kCountedDevices = 64;
std::atomic<int> sticky_warnings[kCountedDevices] = {};

// For the calls that cannot return a Status (Free, FreePinned, destructors).
// cudaErrorCudartUnloading means the process is exiting and the runtime has
// already released everything; that is not worth a warning.
void WarnOnFailure(cudaError_t err, int device, std::string_view what) {
  if (err == cudaSuccess) return;
  ForgetLastError();
  if (err == cudaErrorCudartUnloading) return;
  const int n = IsStickyError(err) && device >= 0 && device < kCountedDevices
                    ? sticky_warnings[device].fetch_add(1, std::memory_order_relaxed)
                    : 0;
  if (n < kMaxStickyWarnings) {
    fmt::print(stderr, "hoist: warning: cuda:{}: {} failed: {}\n", device, what, CudaErrorText(err));
  } else if (n == kMaxStickyWarnings) {
    fmt::print(stderr, "hoist: warning: cuda:{}: later clean-up calls fail the same way; not listed\n", device);
  }
}

// Makes `device` current on the calling thread for one call, and the
// thread's previous context current again after it. The current device is
// per host thread and a Device may be called from any thread, so every path
// that talks to the GPU starts here; and a caller's own current context
// (PyTorch's, on the thread that loads, once it has one) is left as it was,
// even when the load went to another GPU. Where the driver's context calls
// are missing it only sets the device.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) {
    // hoist's own reader threads keep the device between calls.
    restore_ = !OnParallelForWorker() && cuda::GetCurrentContext(&saved_);
    error_ = cudaSetDevice(device);
    if (error_ != cudaSuccess) status_ = CudaFailure(error_, device, "cudaSetDevice");
  }
  ~ScopedDevice() {
    cuda::Context now = nullptr;
    if (restore_ && cuda::GetCurrentContext(&now) && now != saved_) (void)cuda::SetCurrentContext(saved_);
  }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  const Status& status() const { return status_; }
  cudaError_t error() const { return error_; }

 private:
  cudaError_t error_ = cudaSuccess;
  cuda::Context saved_ = nullptr;
  bool restore_ = false;
  Status status_;
};

// Declares a ScopedDevice for the rest of the scope and returns its failure.
#define HOIST_USE_DEVICE(device)        \
  ScopedDevice scoped_device_(device);  \
  HOIST_RETURN_IF_ERROR(scoped_device_.status())

// The kernel's name for a castable dtype. REQUIRES: IsCastableFloat(t).
cuda::FloatType KernelType(DType t) {
  switch (t) {
    case DType::kF16: return cuda::FloatType::kF16;
    case DType::kBF16: return cuda::FloatType::kBF16;
    case DType::kF32: return cuda::FloatType::kF32;
    default: return cuda::FloatType::kF64;
  }
}

// ---------------------------------------------------------------------------
// Devices

class CudaDevice final : public Device {
 public:
  CudaDevice(int index, std::string name) : index_(index), name_(std::move(name)) {}
  ~CudaDevice() override {
    if (stream_ == nullptr && cast_stream_ == nullptr) return;
    ScopedDevice scoped_device(index_);
    WarnOnFailure(scoped_device.error(), index_, "cudaSetDevice");
    if (stream_ != nullptr) WarnOnFailure(cudaStreamDestroy(stream_), index_, "cudaStreamDestroy of the copy stream");
    if (cast_stream_ != nullptr) {
      WarnOnFailure(cudaStreamDestroy(cast_stream_), index_, "cudaStreamDestroy of the cast stream");
      WarnOnFailure(cudaEventDestroy(after_copies_), index_, "cudaEventDestroy");
    }
  }
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  DeviceId id() const override { return DeviceId::Cuda(index_); }
  std::string name() const override { return name_; }
  bool host_addressable() const override { return false; }

  Result<MemoryInfo> GetMemoryInfo() override {
    HOIST_USE_DEVICE(index_);
    size_t free_bytes = 0, total_bytes = 0;
    cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes);
    if (err != cudaSuccess) return CudaFailure(err, index_, "cudaMemGetInfo");
    return MemoryInfo{free_bytes, total_bytes};
  }

  Result<void*> Allocate(uint64_t size_bytes) override {
    HOIST_USE_DEVICE(index_);
    if (size_bytes == 0) size_bytes = 1;  // a null pointer would read as "no allocation"
    void* ptr = nullptr;
    cudaError_t err = cudaMalloc(&ptr, static_cast<size_t>(size_bytes));
    if (err == cudaSuccess) return ptr;
    std::string what = "cudaMalloc of " + ByteText(size_bytes);
    if (err != cudaErrorMemoryAllocation) return CudaFailure(err, index_, what);
    // Out of memory: say how much there was, which is what the user needs to
    // pick a device map.
    Status s = CudaFailure(err, index_, what);
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      return OutOfMemory(s.message() + "; " + ByteText(free_bytes) + " of " + ByteText(total_bytes) + " free");
    }
    ForgetLastError();
    return s;
  }

  void Free(void* device_ptr) override {
    if (device_ptr == nullptr) return;
    ScopedDevice scoped_device(index_);
    WarnOnFailure(scoped_device.error(), index_, "cudaSetDevice");
    WarnOnFailure(cudaFree(device_ptr), index_, "cudaFree");
  }

  Result<void*> AllocatePinned(uint64_t size_bytes) override {
    HOIST_USE_DEVICE(index_);
    if (size_bytes == 0) size_bytes = 1;
    void* ptr = nullptr;
    // Portable: a staging buffer may feed copies to any GPU, not only this one.
    cudaError_t err = cudaHostAlloc(&ptr, static_cast<size_t>(size_bytes), cudaHostAllocPortable);
    if (err != cudaSuccess) {
      return CudaFailure(err, index_,
                         "cudaHostAlloc of " + ByteText(size_bytes) + " of pinned host memory");
    }
    return ptr;
  }

  void FreePinned(void* host_ptr) override {
    if (host_ptr == nullptr) return;
    ScopedDevice scoped_device(index_);
    WarnOnFailure(scoped_device.error(), index_, "cudaSetDevice");
    WarnOnFailure(cudaFreeHost(host_ptr), index_, "cudaFreeHost");
  }

  Status CopyToDeviceAsync(void* device_dst, const void* host_src, uint64_t size_bytes) override {
    if (size_bytes == 0) return Status::Ok();
    HOIST_USE_DEVICE(index_);
    HOIST_ASSIGN_OR_RETURN(cudaStream_t stream, CopyStream());
    cudaError_t err =
        cudaMemcpyAsync(device_dst, host_src, static_cast<size_t>(size_bytes), cudaMemcpyHostToDevice, stream);
    if (err != cudaSuccess) {
      return CudaFailure(err, index_, fmt::format("cudaMemcpyAsync of {} bytes host to device", size_bytes));
    }
    copy_work_.fetch_add(1, std::memory_order_release);
    return Status::Ok();
  }

  bool SupportsCast() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (cast_usable_ < 0) {
      ScopedDevice scoped_device(index_);
      cudaError_t err = scoped_device.error();
      if (err == cudaSuccess) err = cuda::CastKernelUsable();
      if (err != cudaSuccess) {
        ForgetLastError();
        fmt::print(stderr, "hoist: warning: cuda:{}: the cast kernel cannot run here ({}); casts run on the host\n",
                   index_, CudaErrorText(err));
      }
      cast_usable_ = err == cudaSuccess ? 1 : 0;
    }
    return cast_usable_ == 1;
  }

  Status CastAsync(void* device_dst, DType to, const void* device_src, DType from, uint64_t count) override {
    if (count == 0) return Status::Ok();
    if (!IsCastableFloat(from) || !IsCastableFloat(to) || from == to) {
      return InvalidArgument(fmt::format("cuda:{}: no GPU cast from {} to {}", index_, DTypeName(from), DTypeName(to)));
    }
    const auto misaligned = [](const void* p, DType t) {
      return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(DTypeBits(t) / 8) != 0;
    };
    if (misaligned(device_src, from) || misaligned(device_dst, to)) {
      return InvalidArgument(fmt::format("cuda:{}: cast buffers must be aligned to their element sizes", index_));
    }
    HOIST_USE_DEVICE(index_);
    HOIST_ASSIGN_OR_RETURN(cudaStream_t copies, CopyStream());
    std::lock_guard<std::mutex> order(order_mu_);
    HOIST_ASSIGN_OR_RETURN(cudaStream_t casts, CastStreamAfterCopies(copies));
    ++casts_issued_;
    cudaError_t err = cuda::LaunchCast(KernelType(from), device_src, KernelType(to), device_dst, count, casts);
    if (err != cudaSuccess) {
      return CudaFailure(err, index_,
                         fmt::format("the cast kernel ({} -> {}, {} elements)", DTypeName(from), DTypeName(to), count));
    }
    return Status::Ok();
  }

  Status CopyToHost(void* host_dst, const void* device_src, uint64_t size_bytes) override {
    if (size_bytes == 0) return Status::Ok();
    HOIST_USE_DEVICE(index_);
    // The copy stream does not synchronize with the legacy default stream that
    // cudaMemcpy uses, so the queued copies are waited for first: the bytes
    // read back are then the bytes copied in.
    HOIST_RETURN_IF_ERROR(Synchronize());
    cudaError_t err = cudaMemcpy(host_dst, device_src, static_cast<size_t>(size_bytes), cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) {
      return CudaFailure(err, index_, fmt::format("cudaMemcpy of {} bytes device to host", size_bytes));
    }
    return Status::Ok();
  }

  Result<std::unique_ptr<Event>> CreateEvent() override;

  // Both streams, each even when the other fails: the caller frees what
  // the queued work uses once this returns.
  Status Synchronize() override {
    HOIST_USE_DEVICE(index_);
    cudaStream_t copies = nullptr, casts = nullptr;
    uint64_t casts_issued = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      copies = stream_;
    }
    {
      std::lock_guard<std::mutex> order(order_mu_);
      casts = cast_stream_;
      casts_issued = casts_issued_;
    }
    Status status;
    if (copies != nullptr) {
      cudaError_t err = cudaStreamSynchronize(copies);
      if (err != cudaSuccess) status = CudaFailure(err, index_, "cudaStreamSynchronize of the copy stream");
    }
    if (casts != nullptr) {
      cudaError_t err = cudaStreamSynchronize(casts);
      if (err != cudaSuccess && status.ok()) status = CudaFailure(err, index_, "cudaStreamSynchronize of the cast stream");
      if (err == cudaSuccess) {
        std::lock_guard<std::mutex> order(order_mu_);
        casts_done_ = std::max(casts_done_, casts_issued);
      }
    }
    return status;
  }

  // For CudaEvent: a point after every copy and cast issued so far. While
  // casts may be outstanding that is a point on the cast stream once it has
  // caught up with the copies; otherwise a point on the copy stream.
  Status RecordEvent(cudaEvent_t event) {
    HOIST_USE_DEVICE(index_);
    HOIST_ASSIGN_OR_RETURN(cudaStream_t copies, CopyStream());
    std::lock_guard<std::mutex> order(order_mu_);
    cudaStream_t stream = copies;
    if (casts_issued_ > casts_done_) {
      HOIST_ASSIGN_OR_RETURN(stream, CastStreamAfterCopies(copies));
    }
    cudaError_t err = cudaEventRecord(event, stream);
    if (err != cudaSuccess) return CudaFailure(err, index_, "cudaEventRecord");
    return Status::Ok();
  }

  // For WaitOnDevice: the copy stream waits for `event`; casts wait for the
  // copy stream, so they follow too.
  Status CopyStreamWait(cudaEvent_t event) {
    HOIST_USE_DEVICE(index_);
    HOIST_ASSIGN_OR_RETURN(cudaStream_t copies, CopyStream());
    cudaError_t err = cudaStreamWaitEvent(copies, event, 0);
    if (err != cudaSuccess) return CudaFailure(err, index_, "cudaStreamWaitEvent of the copy stream");
    copy_work_.fetch_add(1, std::memory_order_release);  // the next cast must wait for it
    return Status::Ok();
  }

  Status WaitOnDevice(Event* event) override;
  Status WaitEvent(cudaEvent_t event) {
    HOIST_USE_DEVICE(index_);
    cudaError_t err = cudaEventSynchronize(event);
    if (err != cudaSuccess) return CudaFailure(err, index_, "cudaEventSynchronize");
    return Status::Ok();
  }
  void DestroyEvent(cudaEvent_t event) {
    ScopedDevice scoped_device(index_);
    WarnOnFailure(scoped_device.error(), index_, "cudaSetDevice");
    WarnOnFailure(cudaEventDestroy(event), index_, "cudaEventDestroy");
  }

 private:
  // The copy stream, created on first use so that registering a GPU creates
  // no CUDA context. REQUIRES: this device is current (HOIST_USE_DEVICE).
  Result<cudaStream_t> CopyStream() {
    std::lock_guard<std::mutex> lock(mu_);
    if (stream_ == nullptr) {
      cudaStream_t stream = nullptr;
      cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      if (err != cudaSuccess) return CudaFailure(err, index_, "cudaStreamCreateWithFlags of the copy stream");
      stream_ = stream;
    }
    return stream_;
  }

  // The cast stream, made to wait for every copy issued so far: casts run
  // on a stream of their own so that the copy engine goes on with the next
  // copies while a kernel casts. Created with the first cast. The record
  // and wait are skipped when the copy stream has had no work since the
  // last time (a cast right after a cast, an event right after a cast).
  // REQUIRES: order_mu_ held; this device is current.
  Result<cudaStream_t> CastStreamAfterCopies(cudaStream_t copies) {
    if (cast_stream_ == nullptr) {
      cudaEvent_t event = nullptr;
      cudaError_t err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
      if (err != cudaSuccess) return CudaFailure(err, index_, "cudaEventCreateWithFlags");
      cudaStream_t stream = nullptr;
      err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      if (err != cudaSuccess) {
        WarnOnFailure(cudaEventDestroy(event), index_, "cudaEventDestroy");
        return CudaFailure(err, index_, "cudaStreamCreateWithFlags of the cast stream");
      }
      after_copies_ = event;
      cast_stream_ = stream;
    }
    const uint64_t work = copy_work_.load(std::memory_order_acquire);
    if (work == copy_work_covered_) return cast_stream_;
    cudaError_t err = cudaEventRecord(after_copies_, copies);
    if (err != cudaSuccess) return CudaFailure(err, index_, "cudaEventRecord on the copy stream");
    err = cudaStreamWaitEvent(cast_stream_, after_copies_, 0);
    if (err != cudaSuccess) return CudaFailure(err, index_, "cudaStreamWaitEvent of the cast stream");
    copy_work_covered_ = work;
    return cast_stream_;
  }

  const int index_;
  const std::string name_;
  std::mutex mu_;  // guards stream_'s creation and cast_usable_
  cudaStream_t stream_ = nullptr;
  int cast_usable_ = -1;  // -1: not asked yet
  // Orders the cast stream after the copy stream: guards cast_stream_ and
  // after_copies_, and keeps a record of after_copies_ together with the
  // wait or launch that follows it.
  std::mutex order_mu_;
  cudaStream_t cast_stream_ = nullptr;
  cudaEvent_t after_copies_ = nullptr;
  // Work queued on the copy stream (copies, waits), counted once queued;
  // how much of it the cast stream was last made to wait for.
  std::atomic<uint64_t> copy_work_{0};
  uint64_t copy_work_covered_ = 0;
  // Casts launched, and how many of them a Synchronize saw finish.
  uint64_t casts_issued_ = 0, casts_done_ = 0;
};

// A point after its device's copies and casts. Owns the cudaEvent_t.
class CudaEvent final : public Event {
 public:
  CudaEvent(CudaDevice* device, cudaEvent_t event) : device_(device), event_(event) {}
  ~CudaEvent() override { device_->DestroyEvent(event_); }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  Status Record() override { return device_->RecordEvent(event_); }
  // Before the first Record() there is nothing to wait for; CUDA returns at once.
  Status Wait() override { return device_->WaitEvent(event_); }
  bool On(const CudaDevice* device) const { return device_ == device; }
  cudaEvent_t get() const { return event_; }

 private:
  CudaDevice* device_;
  cudaEvent_t event_;
};

Status CudaDevice::WaitOnDevice(Event* event) {
  auto* e = dynamic_cast<CudaEvent*>(event);
  if (e == nullptr || !e->On(this)) {
    return InvalidArgument(fmt::format("cuda:{}: WaitOnDevice needs an event of this device", index_));
  }
  return CopyStreamWait(e->get());
}

Result<std::unique_ptr<Event>> CudaDevice::CreateEvent() {
  HOIST_USE_DEVICE(index_);
  cudaEvent_t event = nullptr;
  // Blocking: a reader thread that waits for a staging slot sleeps instead of
  // spinning (the default with fewer GPUs than cores), so it leaves its core
  // to the readers still copying from the page cache. The wake-up costs tens
  // of microseconds; the copy stream meanwhile works through the other slots.
  cudaError_t err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming | cudaEventBlockingSync);
  if (err != cudaSuccess) return CudaFailure(err, index_, "cudaEventCreateWithFlags");
  return std::unique_ptr<Event>(new CudaEvent(this, event));
}

// ---------------------------------------------------------------------------
// Probe

// Runs `release` when the scope ends: the probe's short-lived CUDA handles.
template <typename F>
class Defer {
 public:
  explicit Defer(F release) : release_(std::move(release)) {}
  ~Defer() { release_(); }
  Defer(const Defer&) = delete;
  Defer& operator=(const Defer&) = delete;

 private:
  F release_;
};

constexpr uint64_t kProbeCopyBytes = 256 * kMiB;
constexpr uint64_t kProbePinBytes = 256 * kMiB;
constexpr int kProbeTimedCopies = 5;
constexpr int kProbeTimedPins = 3;
// Left free on the GPU when deciding whether a timed cudaMalloc fits.
constexpr uint64_t kProbeMallocMarginBytes = 256 * kMiB;

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// GB/s of host-to-device copies of `size_bytes` from `src`: one warm-up copy,
// then the median of kProbeTimedCopies, each timed from issue to completion.
Result<double> TimeHostToDevice(int device, void* dst, const void* src, uint64_t size_bytes, cudaStream_t stream,
                                std::string_view kind) {
  std::vector<double> seconds;
  for (int i = 0; i <= kProbeTimedCopies; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    cudaError_t err = cudaMemcpyAsync(dst, src, static_cast<size_t>(size_bytes), cudaMemcpyHostToDevice, stream);
    if (err != cudaSuccess) {
      return CudaFailure(err, device,
                         fmt::format("probe: cudaMemcpyAsync of {} bytes from {} memory", size_bytes, kind));
    }
    err = cudaStreamSynchronize(stream);
    if (err != cudaSuccess) return CudaFailure(err, device, "probe: cudaStreamSynchronize");
    double s = SecondsSince(t0);
    if (i > 0) seconds.push_back(s);
  }
  double median = Median(seconds);
  return median > 0 ? static_cast<double>(size_bytes) / median / 1e9 : 0.0;
}

// Pinned and pageable host-to-device bandwidth, and host pinning speed.
Status ProbeCopies(int device, uint64_t copy_bytes, CudaProbe* probe) {
  cudaStream_t stream = nullptr;
  cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (err != cudaSuccess) return CudaFailure(err, device, "probe: cudaStreamCreateWithFlags");
  Defer stream_guard([&] { WarnOnFailure(cudaStreamDestroy(stream), device, "probe: cudaStreamDestroy"); });

  void* dst = nullptr;
  err = cudaMalloc(&dst, static_cast<size_t>(copy_bytes));
  if (err != cudaSuccess) return CudaFailure(err, device, fmt::format("probe: cudaMalloc of {} bytes", copy_bytes));
  Defer dst_guard([&] { WarnOnFailure(cudaFree(dst), device, "probe: cudaFree"); });

  {
    void* pinned = nullptr;
    // Timed: what a load's staging ring costs (one try, first touch
    // included, as the ring's buffers get it).
    const auto t0 = std::chrono::steady_clock::now();
    err = cudaHostAlloc(&pinned, static_cast<size_t>(copy_bytes), cudaHostAllocPortable);
    if (err != cudaSuccess) {
      return CudaFailure(err, device, fmt::format("probe: cudaHostAlloc of {} bytes", copy_bytes));
    }
    const double alloc_seconds = SecondsSince(t0);
    probe->pinned_alloc_gbps = alloc_seconds > 0 ? static_cast<double>(copy_bytes) / alloc_seconds / 1e9 : 0.0;
    Defer pinned_guard([&] { WarnOnFailure(cudaFreeHost(pinned), device, "probe: cudaFreeHost"); });
    std::memset(pinned, 0x5a, static_cast<size_t>(copy_bytes));
    HOIST_ASSIGN_OR_RETURN(probe->h2d_pinned_gbps, TimeHostToDevice(device, dst, pinned, copy_bytes, stream, "pinned"));
  }

  // Ordinary memory, touched so that page faults are not timed. It serves the
  // pageable copies first, then the pinning measurement.
  uint64_t host_bytes = std::max(copy_bytes, kProbePinBytes);
  void* host = std::aligned_alloc(4096, static_cast<size_t>(host_bytes));
  if (host == nullptr) {
    return OutOfMemory(fmt::format("cuda:{}: probe: cannot allocate {} bytes of host memory", device, host_bytes));
  }
  // Memory still registered with the driver (its unregistering failed) is
  // not handed back to the C library: the driver may yet use it.
  bool registered = false;
  Defer host_guard([&] {
    if (!registered) std::free(host);
  });
  std::memset(host, 0xa5, static_cast<size_t>(host_bytes));
  HOIST_ASSIGN_OR_RETURN(probe->h2d_pageable_gbps, TimeHostToDevice(device, dst, host, copy_bytes, stream, "pageable"));

  // Pinning is the one figure a load does without (it allocates its staging
  // pinned): where registering memory fails, say so and report 0.
  std::vector<double> seconds;
  for (int i = 0; i < kProbeTimedPins; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    err = cudaHostRegister(host, static_cast<size_t>(kProbePinBytes), cudaHostRegisterDefault);
    if (err != cudaSuccess) {
      WarnOnFailure(err, device, fmt::format("probe: cudaHostRegister of {} bytes", kProbePinBytes));
      probe->pin_gbps = 0;
      return Status::Ok();
    }
    seconds.push_back(SecondsSince(t0));
    registered = true;
    err = cudaHostUnregister(host);
    if (err != cudaSuccess) return CudaFailure(err, device, "probe: cudaHostUnregister");
    registered = false;
  }
  double median = Median(seconds);
  probe->pin_gbps = median > 0 ? static_cast<double>(kProbePinBytes) / median / 1e9 : 0.0;
  return Status::Ok();
}

// Microseconds per cudaMalloc of `size_bytes`: the median of `timed` calls
// after one warm-up, each freed outside the timed part. 0 when the size does
// not fit in free memory with a margin.
Result<double> ProbeMalloc(int device, uint64_t size_bytes, int timed) {
  size_t free_bytes = 0, total_bytes = 0;
  cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes);
  if (err != cudaSuccess) return CudaFailure(err, device, "probe: cudaMemGetInfo");
  if (free_bytes < size_bytes + kProbeMallocMarginBytes) return 0.0;
  std::vector<double> micros;
  for (int i = 0; i <= timed; ++i) {
    void* ptr = nullptr;
    auto t0 = std::chrono::steady_clock::now();
    err = cudaMalloc(&ptr, static_cast<size_t>(size_bytes));
    double s = SecondsSince(t0);
    if (err != cudaSuccess) return CudaFailure(err, device, fmt::format("probe: cudaMalloc of {} bytes", size_bytes));
    err = cudaFree(ptr);
    if (err != cudaSuccess) return CudaFailure(err, device, "probe: cudaFree");
    if (i > 0) micros.push_back(s * 1e6);
  }
  return Median(micros);
}

Result<CudaProbe> ProbeOne(int device) {
  CudaProbe probe;
  probe.index = device;
  HOIST_USE_DEVICE(device);
  // Create the context now, so that its start-up cost lands in no figure.
  cudaError_t err = cudaFree(nullptr);
  if (err != cudaSuccess) return CudaFailure(err, device, "probe: context creation (cudaFree(nullptr))");
  cudaDeviceProp prop;
  err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) return CudaFailure(err, device, "cudaGetDeviceProperties");
  probe.name = prop.name;
  size_t free_bytes = 0, total_bytes = 0;
  err = cudaMemGetInfo(&free_bytes, &total_bytes);
  if (err != cudaSuccess) return CudaFailure(err, device, "probe: cudaMemGetInfo");
  probe.free_bytes = free_bytes;
  probe.total_bytes = total_bytes;

  // A GPU with little free memory gets a smaller copy buffer, not an error.
  uint64_t copy_bytes = kProbeCopyBytes;
  if (free_bytes < 4 * copy_bytes) copy_bytes = std::max<uint64_t>(kMiB, free_bytes / 4 / kMiB * kMiB);
  HOIST_RETURN_IF_ERROR(ProbeCopies(device, copy_bytes, &probe));

  HOIST_ASSIGN_OR_RETURN(probe.malloc_us_1mib, ProbeMalloc(device, kMiB, 21));
  HOIST_ASSIGN_OR_RETURN(probe.malloc_us_64mib, ProbeMalloc(device, 64 * kMiB, 11));
  HOIST_ASSIGN_OR_RETURN(probe.malloc_us_1gib, ProbeMalloc(device, kGiB, 5));
  return probe;
}

// The number of visible GPUs; 0 with `why` set when CUDA is unusable.
int VisibleGpuCount(std::string* why) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    ForgetLastError();
    if (why != nullptr) {
      *why = fmt::format("cudaGetDeviceCount returned {}: {}", cudaGetErrorName(err), cudaGetErrorString(err));
    }
    return 0;
  }
  if (count == 0 && why != nullptr) {
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    *why = "the CUDA driver reports no device";
    if (visible != nullptr) *why += fmt::format(" (CUDA_VISIBLE_DEVICES='{}')", visible);
  }
  return count;
}

}  // namespace

Status RegisterCudaDevices(DeviceRegistry* registry, int* count_out) {
  *count_out = 0;
  if (registry->CudaCount() > 0) {
    return InvalidArgument("RegisterCudaDevices: this registry already holds CUDA devices");
  }
  int count = VisibleGpuCount(nullptr);
  // Query every GPU before adding any, so that a failure adds nothing.
  std::vector<std::unique_ptr<Device>> devices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    cudaError_t err = cudaGetDeviceProperties(&prop, i);
    if (err != cudaSuccess) return CudaFailure(err, i, "cudaGetDeviceProperties");
    devices.push_back(std::make_unique<CudaDevice>(i, std::string(prop.name)));
  }
  for (auto& d : devices) registry->Add(std::move(d));
  *count_out = count;
  return Status::Ok();
}

std::string CudaUnavailableReason() {
  std::string why;
  VisibleGpuCount(&why);
  return why;
}

Result<std::vector<CudaProbe>> ProbeCudaDevices() {
  std::vector<CudaProbe> out;
  int count = VisibleGpuCount(nullptr);
  for (int i = 0; i < count; ++i) {
    HOIST_ASSIGN_OR_RETURN(CudaProbe probe, ProbeOne(i));
    out.push_back(std::move(probe));
  }
  return out;
}

}  // namespace hoist
