// A CUDA runtime on the host, for testing the CUDA backend where there is no
// GPU: the subset of the runtime API (and of the driver's context calls)
// that cuda_device.cc and context.cc use, and LaunchCast / CastKernelUsable
// of cast_kernel.h, in place of libcudart and cast_kernel.cu. Linked into
// hoist_cuda_emulated_tests, which runs the backend's own GPU tests on CPU in
// every build (the real kernel's arithmetic is src/cast/convert.h, which the
// host tests cover).
//
// It keeps the semantics a GPU imposes on the backend, so that a backend bug
// that only a GPU would show shows here too:
// - device memory is not host memory: an allocation hands out addresses the
//   host cannot touch (PROT_NONE; any host access crashes) and keeps the
//   bytes in a second mapping that only copies and casts reach; copies and
//   casts outside an allocation fail;
// - streams are asynchronous and ordered: each runs its work on a thread of
//   its own, in issue order; a copy from pinned memory reads its source when
//   it runs, not when issued; one from pageable memory waits for the stream
//   and copies at once, as the driver does;
// - events mark a point in a stream; cudaStreamWaitEvent holds a stream
//   until the event's latest record has been reached, cudaEventSynchronize
//   holds the host;
// - streams made with cudaStreamNonBlocking do not synchronize with the
//   legacy default stream: cudaMemcpy waits for no stream;
// - cudaFree and cudaFreeHost wait for all work first;
// - the current device and context are per host thread: a new thread has no
//   current context until a runtime call binds device 0's (or cudaSetDevice
//   another's); cuCtxGetCurrent / cuCtxSetCurrent come through
//   cudaGetDriverEntryPointByVersion as from the real runtime;
// - work lands late: each piece waits a random 0-300 us before it runs
//   (kernels 0-2 ms).
// Two devices of 4 GiB each, so that multi-GPU paths run too.
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <sys/mman.h>

#include <algorithm>
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
#include <string_view>
#include <thread>
#include <vector>

#include "backends/cuda/cast_kernel.h"
#include "cast/cast.h"

namespace {

constexpr int kDevices = 2;
constexpr uint64_t kDeviceBytes = uint64_t{4} << 30;

// A stream: work runs on its own thread, in order.
class Stream {
 public:
  explicit Stream(int device) : device_(device), worker_([this] { Run(); }) {}
  ~Stream() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  int device() const { return device_; }
  // `max_lag_us`: how late, at most, the work lands after the work before it.
  void Enqueue(std::function<void()> work, int max_lag_us = 300) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back({std::move(work), max_lag_us});
    }
    cv_.notify_all();
  }
  void Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing is left
      Work work = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      // A GPU's work lands some time after it was issued: a random lag
      // before each piece, so that a missing wait shows as wrong bytes
      // rather than hiding behind a fast worker thread.
      std::this_thread::sleep_for(std::chrono::microseconds(rng_() % (work.max_lag_us + 1)));
      work.run();
      lock.lock();
      busy_ = false;
      cv_.notify_all();
    }
  }

  const int device_;
  std::mutex mu_;
  std::condition_variable cv_;
  struct Work {
    std::function<void()> run;
    int max_lag_us;
  };
  std::deque<Work> queue_;
  bool busy_ = false, stop_ = false;
  std::minstd_rand rng_{std::random_device{}()};
  std::thread worker_;  // last: starts once the rest is constructed
};

// An event: records are numbered; a wait is for the record current when it
// was asked for.
struct EventState {
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
};

struct DeviceBlock {
  int device;
  uint64_t size_bytes, mapped_bytes;
  unsigned char* contents;
};

// A context per device; its address is the CUcontext handed out.
struct Context {
  int device;
};

struct Runtime {
  std::mutex mu;
  Context contexts[kDevices] = {{0}, {1}};
  uint64_t used_bytes[kDevices] = {};
  std::map<uintptr_t, DeviceBlock> device_blocks;      // by handle
  std::map<uintptr_t, uint64_t> pinned;                 // cudaHostAlloc'd or registered: address -> bytes
  std::map<uintptr_t, bool> host_allocs;                // which pinned ranges cudaHostAlloc made
  std::map<Stream*, std::shared_ptr<Stream>> streams;
  std::map<EventState*, std::shared_ptr<EventState>> events;
};

Runtime& R() {
  static Runtime* runtime = new Runtime();  // never destroyed: streams may outlive static destructors
  return *runtime;
}

thread_local int t_device = 0;
thread_local Context* t_context = nullptr;
thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t Fail(cudaError_t err) {
  t_last_error = err;
  return err;
}

// The device the runtime acts on; binds its context as the runtime does
// when a thread has none current.
int CurrentDevice() {
  if (t_context == nullptr) t_context = &R().contexts[t_device];
  return t_context->device;
}

// Where [p, p + n) of device memory keeps its bytes, or nullptr when it is
// not inside one allocation. Needs R().mu.
unsigned char* DeviceBytesLocked(const void* p, uint64_t n) {
  auto& blocks = R().device_blocks;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  auto it = blocks.upper_bound(addr);
  if (it == blocks.begin()) return nullptr;
  --it;
  const uint64_t offset = addr - it->first;
  if (offset >= it->second.mapped_bytes) return nullptr;  // not this block at all
  if (offset > it->second.size_bytes || n > it->second.size_bytes - offset) return nullptr;
  return it->second.contents + offset;
}

bool InsideAnyDeviceBlockLocked(const void* p) {
  auto& blocks = R().device_blocks;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  auto it = blocks.upper_bound(addr);
  if (it == blocks.begin()) return false;
  --it;
  return addr - it->first < it->second.mapped_bytes;
}

bool PinnedLocked(const void* p, uint64_t n) {
  auto& pinned = R().pinned;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  auto it = pinned.upper_bound(addr);
  if (it == pinned.begin()) return false;
  --it;
  return addr - it->first <= it->second && n <= it->second - (addr - it->first);
}

std::shared_ptr<Stream> FindStreamLocked(cudaStream_t s) {
  auto it = R().streams.find(reinterpret_cast<Stream*>(s));
  return it == R().streams.end() ? nullptr : it->second;
}

std::shared_ptr<EventState> FindEvent(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(R().mu);
  auto it = R().events.find(reinterpret_cast<EventState*>(e));
  return it == R().events.end() ? nullptr : it->second;
}

// Waits for every stream: what cudaFree, cudaFreeHost and
// cudaDeviceSynchronize do.
void DrainAll() {
  std::vector<std::shared_ptr<Stream>> all;
  {
    std::lock_guard<std::mutex> lock(R().mu);
    for (auto& [p, s] : R().streams) all.push_back(s);
  }
  for (auto& s : all) s->Drain();
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

}  // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = kDevices;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= kDevices) return Fail(cudaErrorInvalidDevice);
  t_device = device;
  t_context = &R().contexts[device];
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
    default: return "emulated error";
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
  std::lock_guard<std::mutex> lock(R().mu);
  *total_bytes = kDeviceBytes;
  *free_bytes = kDeviceBytes - R().used_bytes[device];
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  const int device = CurrentDevice();
  std::lock_guard<std::mutex> lock(R().mu);
  if (size > kDeviceBytes - R().used_bytes[device]) return Fail(cudaErrorMemoryAllocation);
  const uint64_t mapped = std::max<uint64_t>(4096, (size + 4095) / 4096 * 4096);
  void* handle = ::mmap(nullptr, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (handle == MAP_FAILED) return Fail(cudaErrorMemoryAllocation);
  void* contents = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (contents == MAP_FAILED) {
    ::munmap(handle, mapped);
    return Fail(cudaErrorMemoryAllocation);
  }
  R().device_blocks[reinterpret_cast<uintptr_t>(handle)] = {device, size, mapped, static_cast<unsigned char*>(contents)};
  R().used_bytes[device] += size;
  *ptr = handle;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  (void)CurrentDevice();
  if (ptr == nullptr) return cudaSuccess;  // the context-creation idiom
  DrainAll();
  std::lock_guard<std::mutex> lock(R().mu);
  auto it = R().device_blocks.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == R().device_blocks.end()) return Fail(cudaErrorInvalidValue);
  R().used_bytes[it->second.device] -= it->second.size_bytes;
  ::munmap(ptr, it->second.mapped_bytes);
  ::munmap(it->second.contents, it->second.mapped_bytes);
  R().device_blocks.erase(it);
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) {
  (void)CurrentDevice();
  void* p = std::aligned_alloc(4096, std::max<size_t>(4096, (size + 4095) / 4096 * 4096));
  if (p == nullptr) return Fail(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(R().mu);
  R().pinned[reinterpret_cast<uintptr_t>(p)] = size;
  R().host_allocs[reinterpret_cast<uintptr_t>(p)] = true;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  DrainAll();
  std::lock_guard<std::mutex> lock(R().mu);
  auto it = R().host_allocs.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == R().host_allocs.end()) return Fail(cudaErrorInvalidValue);
  R().host_allocs.erase(it);
  R().pinned.erase(reinterpret_cast<uintptr_t>(ptr));
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaHostRegister(void* ptr, size_t size, unsigned int) {
  std::lock_guard<std::mutex> lock(R().mu);
  if (PinnedLocked(ptr, 1) || R().pinned.count(reinterpret_cast<uintptr_t>(ptr))) {
    return Fail(cudaErrorHostMemoryAlreadyRegistered);
  }
  R().pinned[reinterpret_cast<uintptr_t>(ptr)] = size;
  return cudaSuccess;
}

cudaError_t cudaHostUnregister(void* ptr) {
  std::lock_guard<std::mutex> lock(R().mu);
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  if (R().host_allocs.count(addr) || !R().pinned.count(addr)) return Fail(cudaErrorHostMemoryNotRegistered);
  R().pinned.erase(addr);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  const int device = CurrentDevice();
  auto s = std::make_shared<Stream>(device);
  Stream* raw = s.get();
  std::lock_guard<std::mutex> lock(R().mu);
  R().streams[raw] = std::move(s);
  *stream = reinterpret_cast<cudaStream_t>(raw);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  std::shared_ptr<Stream> s;
  {
    std::lock_guard<std::mutex> lock(R().mu);
    auto it = R().streams.find(reinterpret_cast<Stream*>(stream));
    if (it == R().streams.end()) return Fail(cudaErrorInvalidResourceHandle);
    s = std::move(it->second);
    R().streams.erase(it);
  }
  s->Drain();  // the work already queued still completes
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  (void)CurrentDevice();
  if (stream == nullptr) return cudaSuccess;  // nothing runs on the legacy stream here
  std::shared_ptr<Stream> s;
  {
    std::lock_guard<std::mutex> lock(R().mu);
    s = FindStreamLocked(stream);
  }
  if (s == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  s->Drain();
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  (void)CurrentDevice();
  auto e = std::make_shared<EventState>();
  std::lock_guard<std::mutex> lock(R().mu);
  R().events[e.get()] = e;
  *event = reinterpret_cast<cudaEvent_t>(e.get());
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(R().mu);
  // Work already queued that records or waits on it keeps it alive.
  if (R().events.erase(reinterpret_cast<EventState*>(event)) == 0) return Fail(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::shared_ptr<EventState> e = FindEvent(event);
  if (e == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  uint64_t record = 0;
  {
    std::lock_guard<std::mutex> lock(e->mu);
    record = ++e->recorded;
  }
  if (stream == nullptr) {
    e->Reach(record);
    return cudaSuccess;
  }
  std::lock_guard<std::mutex> lock(R().mu);
  std::shared_ptr<Stream> s = FindStreamLocked(stream);
  if (s == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  s->Enqueue([e, record] { e->Reach(record); });
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  std::shared_ptr<EventState> e = FindEvent(event);
  if (e == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  uint64_t record = 0;
  {
    std::lock_guard<std::mutex> lock(e->mu);
    record = e->recorded;
  }
  e->WaitFor(record);
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  std::shared_ptr<EventState> e = FindEvent(event);
  if (e == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  uint64_t record = 0;
  {
    std::lock_guard<std::mutex> lock(e->mu);
    record = e->recorded;  // the record as of now; later ones do not count
  }
  std::lock_guard<std::mutex> lock(R().mu);
  std::shared_ptr<Stream> s = FindStreamLocked(stream);
  if (s == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  s->Enqueue([e, record] { e->WaitFor(record); });
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind, cudaStream_t stream) {
  (void)CurrentDevice();
  if (count == 0) return cudaSuccess;
  std::shared_ptr<Stream> s;
  unsigned char* to = nullptr;
  const unsigned char* from = nullptr;
  bool pinned_source = false;
  {
    std::lock_guard<std::mutex> lock(R().mu);
    if (stream != nullptr && (s = FindStreamLocked(stream)) == nullptr) return Fail(cudaErrorInvalidResourceHandle);
    // Each side is device memory (translated) or host memory (as is); a
    // pointer into an allocation but past its end is an error.
    to = InsideAnyDeviceBlockLocked(dst) ? DeviceBytesLocked(dst, count) : static_cast<unsigned char*>(dst);
    from = InsideAnyDeviceBlockLocked(src) ? DeviceBytesLocked(src, count) : static_cast<const unsigned char*>(src);
    if (to == nullptr || from == nullptr) return Fail(cudaErrorInvalidValue);
    pinned_source = from != src || PinnedLocked(src, count);
  }
  if (s == nullptr) {
    std::memcpy(to, from, count);
    return cudaSuccess;
  }
  if (!pinned_source) {
    // Pageable: the driver waits for the stream and copies before returning.
    s->Drain();
    std::memcpy(to, from, count);
    return cudaSuccess;
  }
  s->Enqueue([to, from, count] { std::memcpy(to, from, count); });
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  // The legacy default stream, which non-blocking streams do not wait for.
  return cudaMemcpyAsync(dst, src, count, kind, nullptr);
}

}  // extern "C"

namespace hoist::cuda {

cudaError_t CastKernelUsable() { return cudaSuccess; }

cudaError_t LaunchCast(FloatType from, const void* src, FloatType to, void* dst, uint64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const DType in_type = CoreType(from), out_type = CoreType(to);
  std::shared_ptr<Stream> s;
  const unsigned char* in = nullptr;
  unsigned char* out = nullptr;
  {
    std::lock_guard<std::mutex> lock(R().mu);
    s = FindStreamLocked(stream);
    in = DeviceBytesLocked(src, count * static_cast<uint64_t>(DTypeBits(in_type) / 8));
    out = DeviceBytesLocked(dst, count * static_cast<uint64_t>(DTypeBits(out_type) / 8));
  }
  if (s == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  if (in == nullptr || out == nullptr) return Fail(cudaErrorInvalidValue);  // a GPU would fault
  // Kernels lag longer than copies: the copy engine runs ahead of them, as
  // it may on a GPU, and a copy that overwrites a cast's input too early shows.
  s->Enqueue([=] { CastFloats(in_type, in, out_type, out, count); }, 2000);
  return cudaSuccess;
}

}  // namespace hoist::cuda
