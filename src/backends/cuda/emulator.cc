// A CUDA runtime on the host, for testing the CUDA backend where there is no
// GPU: the subset of the runtime API (and of the driver's context calls)
// that cuda_device.cc and context.cc use, and LaunchCast / CastKernelUsable
// of cast_kernel.h, in place of libcudart and cast_kernel.cu. Linked into
// hoist_cuda_emulated_tests (the backend's own GPU tests) and hoist_emulated
// (the command), which run in every build. The real kernel's arithmetic is
// src/cast/convert.h, which the host tests cover.
//
// Where CUDA leaves a choice, the emulator takes the one least forgiving to
// the backend, so that a bug only a GPU would show shows here too:
// - device memory is not host memory: an allocation hands out addresses the
//   host cannot touch (testing/shadow_memory.h; any host access crashes).
//   A copy's kind says which side is device memory, and that side must lie
//   inside one allocation;
// - streams are asynchronous and ordered: each runs its work on a thread of
//   its own, in issue order, and lands it late, in slow and fast spells
//   drawn apart for each stream, so either of two streams in turn runs far
//   ahead of the other
//   (HOIST_EMULATOR_SEED fixes the draws; thread timing still varies);
// - a copy from pinned memory reads its source when it runs; one from
//   pageable memory reads it at once (all CUDA promises) and still lands on
//   the stream in turn, never sooner;
// - events mark a point in a stream; cudaStreamWaitEvent and
//   cudaEventSynchronize wait for the record made before them, not later
//   ones; event and stream must be on one device, as must a kernel's stream
//   and the current device;
// - only non-blocking streams exist, and cudaMemcpy waits for none of them;
// - cudaFree waits for its device's work; cudaFreeHost of memory that
//   queued copies still read aborts (a load must synchronize first);
// - the current device and context are per host thread: a new thread has
//   no current context until a runtime call binds device 0's (or
//   cudaSetDevice another's); cuCtxGetCurrent / cuCtxSetCurrent come
//   through cudaGetDriverEntryPointByVersion as from the real runtime.
// - a fault in queued work is asynchronous and sticky, as an illegal
//   address is on a GPU: with HOIST_EMULATOR_FAULT_AFTER_COPIES=N the N-th
//   copy to run faults instead, its device then runs no more copies or
//   kernels, and every later call for it fails with
//   cudaErrorIllegalAddress (events still complete, so nothing hangs);
// - with HOIST_EMULATOR_CONTEXT_START_MS=N, creating a device's context
//   (the first call that binds it, on any thread) takes N ms, and other
//   threads that need that context wait for it, as for a real one;
// - with HOIST_EMULATOR_PINNED_REFUSES_READS=1, reads from files into
//   cudaHostAlloc's memory fail with EFAULT, as under gVisor, which maps it
//   from the driver (File::RefuseReadsIntoForTesting; the host may still
//   write it).
// What it does not model: a bad kernel argument faulting later (it fails at
// launch here), and anything about speed.
// Two devices of 16 GiB each (address space: only what is written takes
// memory), so that multi-GPU paths run too.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string_view>
#include <thread>
#include <vector>

#include "backends/cuda/cast_kernel.h"
#include "cast/cast.h"
#include "io/file.h"
#include "testing/shadow_memory.h"

namespace {

constexpr int kDevices = 2;
constexpr uint64_t kDeviceBytes = uint64_t{16} << 30;

// The seed of the lag draws: HOIST_EMULATOR_SEED, else random.
uint32_t NextSeed() {
  static std::mutex mu;
  static std::minstd_rand seeds = [] {
    const char* fixed = std::getenv("HOIST_EMULATOR_SEED");
    return std::minstd_rand(fixed != nullptr ? static_cast<uint32_t>(std::strtoul(fixed, nullptr, 10))
                                             : std::random_device{}());
  }();
  std::lock_guard<std::mutex> lock(mu);
  return static_cast<uint32_t>(seeds());
}

// A stream: work runs on its own thread, in order, each piece late.
class Stream {
 public:
  explicit Stream(int device) : device_(device), rng_(NextSeed()), worker_([this] { Run(); }) {}
  ~Stream() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  int device() const { return device_; }
  void Enqueue(std::function<void()> work) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(work));
    }
    cv_.notify_all();
  }
  void Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }

 private:
  // Each stream goes through slow and fast spells, each of a fresh random
  // length (1-6 ms): in a slow spell each piece waits 0.3-1 ms, in a fast
  // one at most 50 us. Two streams' spells are independent, so each in turn
  // runs several pieces ahead of the other.
  std::chrono::microseconds Lag() {
    const auto now = std::chrono::steady_clock::now();
    if (now >= spell_ends_) {
      slow_ = rng_() % 2 == 0;
      spell_ends_ = now + std::chrono::microseconds(1000 + rng_() % 5001);
    }
    const uint32_t draw = static_cast<uint32_t>(rng_());
    return std::chrono::microseconds(slow_ ? 300 + draw % 701 : draw % 51);
  }
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing is left
      std::function<void()> work = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      const auto lag = Lag();
      lock.unlock();
      std::this_thread::sleep_for(lag);
      work();
      lock.lock();
      busy_ = false;
      cv_.notify_all();
    }
  }

  const int device_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool busy_ = false, stop_ = false;
  std::minstd_rand rng_;
  bool slow_ = false;  // the spell the stream is in, until spell_ends_
  std::chrono::steady_clock::time_point spell_ends_;
  std::thread worker_;  // last: starts once the rest is constructed
};

// An event: records are numbered; a wait is for the record current when it
// was asked for.
struct EventState {
  explicit EventState(int d) : device(d) {}
  const int device;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t recorded = 0, reached = 0;
  void Reach(uint64_t record) {
    {
      std::lock_guard<std::mutex> lock(mu);
      reached = std::max(reached, record);
    }
    cv.notify_all();
  }
  void WaitFor(uint64_t record) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return reached >= record; });
  }
  uint64_t Latest() {
    std::lock_guard<std::mutex> lock(mu);
    return recorded;
  }
};

// A context per device; its address is the CUcontext handed out.
struct Context {
  int device;
};

// Everything the runtime keeps. Lock order: mu, then a stream's or an
// event's own mutex; stream threads take mu only between pieces of work.
struct RuntimeState {
  std::mutex mu;
  Context contexts[kDevices] = {{0}, {1}};
  uint64_t used_bytes[kDevices] = {};
  hoist::testing::ShadowMemory device_memory;  // owner: the device index
  std::map<uintptr_t, uint64_t> pinned;        // cudaHostAlloc'd or registered: address -> bytes
  std::set<uintptr_t> host_allocs;             // which of them cudaHostAlloc made
  std::multimap<uintptr_t, uint64_t> queued_pinned_reads;  // sources of copies not yet run
  std::map<Stream*, std::shared_ptr<Stream>> streams;
  std::map<EventState*, std::shared_ptr<EventState>> events;
};

RuntimeState& State() {
  static RuntimeState* state = new RuntimeState();  // never destroyed: streams may outlive static destructors
  return *state;
}

// Sticky faults, per device (HOIST_EMULATOR_FAULT_AFTER_COPIES).
std::atomic<int> sticky_error[kDevices] = {};
std::atomic<long> copies_before_fault{[] {
  const char* n = std::getenv("HOIST_EMULATOR_FAULT_AFTER_COPIES");
  return n != nullptr ? std::strtol(n, nullptr, 10) : -1L;
}()};

cudaError_t StickyError(int device) { return static_cast<cudaError_t>(sticky_error[device].load()); }

// Run by a stream before a copy: false when the device has faulted, or
// faults now.
bool CopyMayRun(int device) {
  if (StickyError(device) != cudaSuccess) return false;
  long before = copies_before_fault.load();
  while (before > 0 && !copies_before_fault.compare_exchange_weak(before, before - 1)) {
  }
  if (before == 1) {
    sticky_error[device].store(cudaErrorIllegalAddress);
    return false;
  }
  return true;
}

// Context start-up (HOIST_EMULATOR_CONTEXT_START_MS): once per device; a
// thread that needs the context meanwhile waits, as the runtime makes it.
std::once_flag context_started[kDevices];
void StartContext(int device) {
  std::call_once(context_started[device], [] {
    const char* ms = std::getenv("HOIST_EMULATOR_CONTEXT_START_MS");
    if (ms != nullptr) std::this_thread::sleep_for(std::chrono::milliseconds(std::strtol(ms, nullptr, 10)));
  });
}

thread_local int t_device = 0;
thread_local Context* t_context = nullptr;
thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t Fail(cudaError_t err) {
  t_last_error = err;
  return err;
}


// The device the runtime acts on; binds its context, as the runtime does
// for a thread that has none current.
int CurrentDevice() {
  if (t_context == nullptr) t_context = &State().contexts[t_device];
  StartContext(t_context->device);
  return t_context->device;
}

bool PinnedLocked(const void* p, uint64_t n) {
  auto& pinned = State().pinned;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  auto it = pinned.upper_bound(addr);
  if (it == pinned.begin()) return false;
  --it;
  return addr - it->first <= it->second && n <= it->second - (addr - it->first);
}

bool OverlapsPinnedLocked(uintptr_t begin, uint64_t n) {
  for (auto& [start, size] : State().pinned) {
    if (start < begin + n && begin < start + size) return true;
  }
  return false;
}

std::shared_ptr<Stream> FindStreamLocked(cudaStream_t s) {
  auto it = State().streams.find(reinterpret_cast<Stream*>(s));
  return it == State().streams.end() ? nullptr : it->second;
}

std::shared_ptr<EventState> FindEventLocked(cudaEvent_t e) {
  auto it = State().events.find(reinterpret_cast<EventState*>(e));
  return it == State().events.end() ? nullptr : it->second;
}

// Waits for the work of `device`'s streams (every device's when -1).
void Drain(int device) {
  std::vector<std::shared_ptr<Stream>> streams;
  {
    std::lock_guard<std::mutex> lock(State().mu);
    for (auto& [p, s] : State().streams) {
      if (device < 0 || s->device() == device) streams.push_back(s);
    }
  }
  for (auto& s : streams) s->Drain();
}

CUresult CtxGetCurrent(CUcontext* out) {
  *out = reinterpret_cast<CUcontext>(t_context);
  return CUDA_SUCCESS;
}

CUresult CtxSetCurrent(CUcontext ctx) {
  t_context = reinterpret_cast<Context*>(ctx);
  if (t_context != nullptr) t_device = t_context->device;
  return CUDA_SUCCESS;
}

hoist::DType CoreType(hoist::cuda::FloatType t) {
  switch (t) {
    case hoist::cuda::FloatType::kF16: return hoist::DType::kF16;
    case hoist::cuda::FloatType::kBF16: return hoist::DType::kBF16;
    case hoist::cuda::FloatType::kF32: return hoist::DType::kF32;
    default: return hoist::DType::kF64;
  }
}

// A copy of `count` bytes: each side device memory or host memory as `kind`
// says, on `stream` (nullptr: at once, as cudaMemcpy).
cudaError_t Copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  if (count == 0) return cudaSuccess;
  RuntimeState& st = State();
  std::unique_lock<std::mutex> lock(st.mu);
  if (kind == cudaMemcpyDefault) {
    kind = st.device_memory.OwnerOf(src) >= 0
               ? (st.device_memory.OwnerOf(dst) >= 0 ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
               : (st.device_memory.OwnerOf(dst) >= 0 ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
  }
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  unsigned char* to = dst_device ? st.device_memory.Contents(dst, count) : static_cast<unsigned char*>(dst);
  const unsigned char* from =
      src_device ? st.device_memory.Contents(src, count) : static_cast<const unsigned char*>(src);
  // A host side that is device memory is the caller's mistake too.
  if (to == nullptr || from == nullptr || (!dst_device && st.device_memory.OwnerOf(dst) >= 0) ||
      (!src_device && st.device_memory.OwnerOf(src) >= 0)) {
    return Fail(cudaErrorInvalidValue);
  }
  if (stream == nullptr) {
    lock.unlock();
    std::memcpy(to, from, count);
    return cudaSuccess;
  }
  std::shared_ptr<Stream> s = FindStreamLocked(stream);
  if (s == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  if (!src_device && !PinnedLocked(src, count)) {
    // Pageable: the source is read now; the bytes land in turn.
    auto snapshot = std::make_shared<std::vector<unsigned char>>(from, from + count);
    s->Enqueue([to, snapshot, device = s->device()] {
      if (CopyMayRun(device)) std::memcpy(to, snapshot->data(), snapshot->size());
    });
    return cudaSuccess;
  }
  auto read = src_device ? st.queued_pinned_reads.end()
                         : st.queued_pinned_reads.emplace(reinterpret_cast<uintptr_t>(src), count);
  s->Enqueue([to, from, count, read, src_device, device = s->device()] {
    if (CopyMayRun(device)) std::memcpy(to, from, count);
    if (!src_device) {
      std::lock_guard<std::mutex> done(State().mu);
      State().queued_pinned_reads.erase(read);
    }
  });
  return cudaSuccess;
}

// HOIST_EMULATOR_PINNED_REFUSES_READS=1.
bool PinnedRefusesReads() {
  static const bool refuses = [] {
    const char* v = std::getenv("HOIST_EMULATOR_PINNED_REFUSES_READS");
    return v != nullptr && std::string_view(v) == "1";
  }();
  return refuses;
}

}  // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  // For tests that a command never starts the driver: every path to a GPU
  // begins by counting them.
  if (std::getenv("HOIST_EMULATOR_UNREACHABLE") != nullptr) {
    std::fprintf(stderr, "hoist CUDA emulator: the CUDA runtime was used (HOIST_EMULATOR_UNREACHABLE)\n");
    std::abort();
  }
  *count = kDevices;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= kDevices) return Fail(cudaErrorInvalidDevice);
  t_device = device;
  t_context = &State().contexts[device];
  StartContext(device);
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= kDevices) return Fail(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "hoist CUDA emulator %d", device);
  prop->totalGlobalMem = kDeviceBytes;
  prop->major = 9;
  prop->minor = 0;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  // Never cleared; and, as in CUDA, asking binds no context.
  if (t_context != nullptr) {
    if (cudaError_t sticky = StickyError(t_context->device)) return sticky;
  }
  cudaError_t err = t_last_error;
  t_last_error = cudaSuccess;
  return err;
}

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorHostMemoryAlreadyRegistered: return "cudaErrorHostMemoryAlreadyRegistered";
    case cudaErrorHostMemoryNotRegistered: return "cudaErrorHostMemoryNotRegistered";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorHostMemoryAlreadyRegistered: return "part or all of the requested memory range is already mapped";
    case cudaErrorHostMemoryNotRegistered: return "pointer does not correspond to a registered memory region";
    case cudaErrorNotSupported: return "operation not supported (by the emulator)";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    default: return "unknown error";
  }
}

cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** func, unsigned int, unsigned long long,
                                             cudaDriverEntryPointQueryResult* status) {
  const std::string_view name(symbol);
  *func = name == "cuCtxGetCurrent"   ? reinterpret_cast<void*>(&CtxGetCurrent)
          : name == "cuCtxSetCurrent" ? reinterpret_cast<void*>(&CtxSetCurrent)
                                      : nullptr;
  if (status != nullptr) *status = *func != nullptr ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  const int device = CurrentDevice();
  if (cudaError_t sticky = StickyError(device)) return Fail(sticky);
  std::lock_guard<std::mutex> lock(State().mu);
  *total_bytes = kDeviceBytes;
  *free_bytes = kDeviceBytes - State().used_bytes[device];
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  const int device = CurrentDevice();
  if (cudaError_t sticky = StickyError(device)) return Fail(sticky);
  std::lock_guard<std::mutex> lock(State().mu);
  if (size > kDeviceBytes - State().used_bytes[device]) return Fail(cudaErrorMemoryAllocation);
  void* handle = State().device_memory.Allocate(size, device);
  if (handle == nullptr) return Fail(cudaErrorMemoryAllocation);
  State().used_bytes[device] += size;
  *ptr = handle;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  if (ptr == nullptr) return cudaSuccess;  // the context-creation idiom
  int owner = -1;
  {
    std::lock_guard<std::mutex> lock(State().mu);
    owner = State().device_memory.OwnerOf(ptr);
  }
  if (owner < 0) return Fail(cudaErrorInvalidValue);
  Drain(owner);  // as cudaFree synchronizes
  std::lock_guard<std::mutex> lock(State().mu);
  hoist::testing::ShadowMemory::Freed freed = State().device_memory.Free(ptr);
  if (!freed.found) return Fail(cudaErrorInvalidValue);  // not the start of an allocation
  State().used_bytes[freed.owner] -= freed.size_bytes;
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  void* p = std::aligned_alloc(4096, std::max<size_t>(4096, (size + 4095) / 4096 * 4096));
  if (p == nullptr) return Fail(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(State().mu);
  State().pinned[reinterpret_cast<uintptr_t>(p)] = size;
  State().host_allocs.insert(reinterpret_cast<uintptr_t>(p));
  if (PinnedRefusesReads()) hoist::File::RefuseReadsIntoForTesting(p, size, true);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  std::lock_guard<std::mutex> lock(State().mu);
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  if (State().host_allocs.erase(addr) == 0) return Fail(cudaErrorInvalidValue);
  const uint64_t size = State().pinned[addr];
  for (auto& [start, n] : State().queued_pinned_reads) {
    if (start < addr + size && addr < start + n) {
      std::fprintf(stderr, "hoist CUDA emulator: cudaFreeHost of memory that a queued copy still reads\n");
      std::abort();
    }
  }
  State().pinned.erase(addr);
  if (PinnedRefusesReads()) hoist::File::RefuseReadsIntoForTesting(ptr, 0, false);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaHostRegister(void* ptr, size_t size, unsigned int) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  std::lock_guard<std::mutex> lock(State().mu);
  if (OverlapsPinnedLocked(reinterpret_cast<uintptr_t>(ptr), size)) return Fail(cudaErrorHostMemoryAlreadyRegistered);
  State().pinned[reinterpret_cast<uintptr_t>(ptr)] = size;
  return cudaSuccess;
}

cudaError_t cudaHostUnregister(void* ptr) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  std::lock_guard<std::mutex> lock(State().mu);
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  if (State().host_allocs.count(addr) || !State().pinned.count(addr)) return Fail(cudaErrorHostMemoryNotRegistered);
  State().pinned.erase(addr);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  const int device = CurrentDevice();
  if (cudaError_t sticky = StickyError(device)) return Fail(sticky);
  // A blocking stream would synchronize with the legacy stream, which is
  // not emulated: refuse rather than behave differently.
  if (flags != cudaStreamNonBlocking) return Fail(cudaErrorNotSupported);
  auto s = std::make_shared<Stream>(device);
  Stream* raw = s.get();
  std::lock_guard<std::mutex> lock(State().mu);
  State().streams[raw] = std::move(s);
  *stream = reinterpret_cast<cudaStream_t>(raw);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  std::shared_ptr<Stream> s;
  {
    std::lock_guard<std::mutex> lock(State().mu);
    auto it = State().streams.find(reinterpret_cast<Stream*>(stream));
    if (it == State().streams.end()) return Fail(cudaErrorInvalidResourceHandle);
    s = std::move(it->second);
    State().streams.erase(it);
  }
  s->Drain();  // the work already queued still completes
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  const int device = CurrentDevice();
  if (stream == nullptr) return cudaSuccess;  // nothing runs on the legacy stream here
  std::shared_ptr<Stream> s;
  {
    std::lock_guard<std::mutex> lock(State().mu);
    s = FindStreamLocked(stream);
  }
  if (s == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  s->Drain();
  if (cudaError_t sticky = StickyError(device)) return Fail(sticky);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  const int device = CurrentDevice();
  if (cudaError_t sticky = StickyError(device)) return Fail(sticky);
  auto e = std::make_shared<EventState>(device);
  std::lock_guard<std::mutex> lock(State().mu);
  State().events[e.get()] = e;
  *event = reinterpret_cast<cudaEvent_t>(e.get());
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  std::lock_guard<std::mutex> lock(State().mu);
  // Work already queued that records or waits on it keeps it alive.
  if (State().events.erase(reinterpret_cast<EventState*>(event)) == 0) return Fail(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  if (stream == nullptr) return Fail(cudaErrorNotSupported);  // the legacy stream is not emulated
  // Numbered and queued under one lock, so records reach the stream in
  // their order.
  std::lock_guard<std::mutex> lock(State().mu);
  std::shared_ptr<EventState> e = FindEventLocked(event);
  std::shared_ptr<Stream> s = FindStreamLocked(stream);
  if (e == nullptr || s == nullptr || s->device() != e->device) return Fail(cudaErrorInvalidResourceHandle);
  uint64_t record = 0;
  {
    std::lock_guard<std::mutex> event_lock(e->mu);
    record = ++e->recorded;
  }
  s->Enqueue([e, record] { e->Reach(record); });
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  const int device = CurrentDevice();
  std::shared_ptr<EventState> e;
  uint64_t record = 0;
  {
    std::lock_guard<std::mutex> lock(State().mu);
    e = FindEventLocked(event);
    if (e == nullptr) return Fail(cudaErrorInvalidResourceHandle);
    record = e->Latest();
  }
  e->WaitFor(record);  // never recorded: record 0, reached at once
  if (cudaError_t sticky = StickyError(device)) return Fail(sticky);
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  if (cudaError_t sticky = StickyError(CurrentDevice())) return Fail(sticky);
  std::lock_guard<std::mutex> lock(State().mu);
  std::shared_ptr<EventState> e = FindEventLocked(event);
  std::shared_ptr<Stream> s = FindStreamLocked(stream);
  if (e == nullptr || s == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  const uint64_t record = e->Latest();  // the record as of now; later ones do not count
  s->Enqueue([e, record] { e->WaitFor(record); });
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  if (stream == nullptr) return Fail(cudaErrorNotSupported);  // the legacy stream is not emulated
  return Copy(dst, src, count, kind, stream);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  // On the legacy default stream, which non-blocking streams do not wait for.
  return Copy(dst, src, count, kind, nullptr);
}

}  // extern "C"

namespace hoist::cuda {

cudaError_t CastKernelUsable() { return cudaSuccess; }

cudaError_t LaunchCast(FloatType from, const void* src, FloatType to, void* dst, uint64_t count, cudaStream_t stream) {
  const int device = CurrentDevice();
  if (cudaError_t sticky = StickyError(device)) return Fail(sticky);
  if (count == 0) return cudaSuccess;
  const DType in_type = CoreType(from), out_type = CoreType(to);
  const uint64_t in_size = static_cast<uint64_t>(DTypeBits(in_type) / 8);
  const uint64_t out_size = static_cast<uint64_t>(DTypeBits(out_type) / 8);
  const auto in_addr = reinterpret_cast<uintptr_t>(src), out_addr = reinterpret_cast<uintptr_t>(dst);
  // What cast_kernel.h requires: aligned, not overlapping.
  if (from == to || in_addr % in_size != 0 || out_addr % out_size != 0 ||
      (in_addr < out_addr + count * out_size && out_addr < in_addr + count * in_size)) {
    return Fail(cudaErrorInvalidValue);
  }
  std::shared_ptr<Stream> s;
  const unsigned char* in = nullptr;
  unsigned char* out = nullptr;
  {
    std::lock_guard<std::mutex> lock(State().mu);
    s = FindStreamLocked(stream);
    in = State().device_memory.Contents(src, count * in_size);
    out = State().device_memory.Contents(dst, count * out_size);
  }
  // A kernel runs on a stream of the current device.
  if (s == nullptr || s->device() != device) return Fail(cudaErrorInvalidResourceHandle);
  if (in == nullptr || out == nullptr) return Fail(cudaErrorInvalidValue);  // a GPU would fault
  s->Enqueue([=] {
    if (StickyError(device) == cudaSuccess) CastFloats(in_type, in, out_type, out, count);
  });
  return cudaSuccess;
}

}  // namespace hoist::cuda
