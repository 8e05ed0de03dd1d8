#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <regex>
#include <system_error>
#include <thread>

#include "cast/cast.h"
#include "format/safetensors.h"
#include "hoist/loader.h"
#include "io/file.h"
#include "io/uring.h"
#include "load/fit.h"
#include "load/select.h"
#include "util/parallel.h"
#include "util/text.h"

namespace hoist {

Result<std::regex> CompileRegex(const std::string& flag, const std::string& pattern) {
  try {
    return std::regex(pattern, std::regex::ECMAScript | std::regex::optimize);
  } catch (const std::regex_error& e) {
    return InvalidArgument(flag + " " + QuoteName(pattern) + ": not a valid regular expression (" + e.what() + ")");
  }
}

uint64_t TargetBytes(uint64_t stored_bytes, DType stored, DType target) {
  if (target == stored) return stored_bytes;
  // Only whole-byte float types are cast, so the element count is exact.
  uint64_t numel = stored_bytes / static_cast<uint64_t>(DTypeBits(stored) / 8);
  return numel * static_cast<uint64_t>(DTypeBits(target) / 8);
}

int DefaultReadThreads() {
  unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp(hw == 0 ? 4u : hw, 2u, 32u));
}

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// One positional read, and where its bytes go.
struct ReadItem {
  uint32_t tensor;  // index into the plan
  uint32_t device;  // index into the per-device state
  uint64_t file_offset_bytes;  // where the piece starts in the file
  uint64_t size_bytes;     // in the file
  // Where the piece starts in the tensor's stored bytes: a --split part
  // across an inner dimension is several runs of the file, read one after
  // the other into consecutive bytes.
  uint64_t packed_offset = 0;
  unsigned char* dst;      // device address of the piece
  uint64_t dst_bytes;      // after any cast
  bool tail = false;       // lands on the cast scratch: after every device cast, cast on the host
  bool map = false;        // a mapped tensor's piece: brought into memory where it is, not read
};

// A pinned buffer a GPU's copies go through: one chunk of the device's ring.
// A slot is reusable once the event recorded after its copy (and the cast
// that follows it) has completed.
struct StagingSlot {
  unsigned char* buffer = nullptr;
  std::unique_ptr<Event> event;
  bool pending = false;  // a copy from it may still be running
};

struct DeviceState {
  Device* device = nullptr;
  DeviceStats stats;
  unsigned char* base = nullptr;  // reservation (kReserve)
  bool staged = false;           // copies go through pinned staging buffers
  bool device_casts = false;     // staged, and some tensor is cast on the device
  uint64_t slot_stride = 0;      // bytes per staging slot
  // The kernel refuses reads into the slots (EFAULT: gVisor, for memory the
  // GPU driver maps): file bytes reach them through ordinary memory.
  bool bounce_reads = false;
  DeviceMemory mirror;           // pipeline off: the device's bytes in host memory first
  // Device casts: a chunk's file bytes land in one of a few chunks of
  // scratch, taken in turn, and a kernel casts them into place. Copies do
  // not wait for casts, so the copy into a chunk first waits, on the device,
  // for the event recorded after the chunk's last cast. Guarded by copy_mu.
  // With --alloc reserve the scratch is the end of the reservation itself
  // (no second allocation): the pieces that land there (tail pieces) come
  // last, are cast on the host, and are copied once the device has finished
  // every cast. With per-tensor allocations it is an allocation of its own
  // (`scratch_memory`), freed when the load ends.
  DeviceMemory scratch_memory;
  unsigned char* scratch = nullptr;
  int scratch_chunks = 0;
  uint64_t scratch_stride = 0;
  uint64_t tail_begin = UINT64_MAX;  // offset in the reservation where the scratch starts
  int cast_pieces_left = 0;          // device casts of non-tail pieces not yet queued; guarded by mu
  bool tail_fenced = false;          // the copy stream waits for every cast; guarded by copy_mu
  std::vector<std::unique_ptr<Event>> scratch_events;
  std::vector<char> scratch_used;  // its event has been recorded
  size_t next_scratch = 0;
  // Pinned host memory, a few allocations cut into slots: the first before
  // the reads start, the rest pinned in the background while they run.
  std::vector<DeviceMemory> ring;
  std::vector<StagingSlot> slots;  // sized up front; a slot is usable once its index is in free_slots
  std::deque<size_t> free_slots;
  std::mutex mu;               // guards free_slots and ring
  std::condition_variable cv;
  std::mutex copy_mu;          // keeps a piece's copy, cast and record together
};

// `needed` bytes of which `limited` count against --max-memory (the
// tensors); the rest (staging, cast scratch) only against free memory.
// What a reader thread keeps between its reads: the cast's input, the
// O_DIRECT bounce buffer and its io_uring ring. Worker threads' copies die
// with them; the calling thread's is emptied when Load ends, so nothing
// stays held between loads.
struct ReaderLocal {
  std::vector<unsigned char> scratch;
  std::vector<unsigned char> bounce;
  std::unique_ptr<BlockReader> ring;
  bool no_ring = false;  // a ring could not be made on this thread
};
thread_local ReaderLocal reader_local;

// The checkpoint's files, open, each with how it will be read.
struct OpenFiles {
  std::vector<File> files;         // buffered
  std::vector<File> direct;        // O_DIRECT where chosen (fd -1 otherwise)
  std::vector<char> uring;         // to be read through io_uring
  // Set by the first read of each file that a ring served (a thread that
  // could not make one reads with pread).
  std::unique_ptr<std::atomic<bool>[]> uring_used;
  std::vector<char> cold;          // mostly outside the page cache (0 where nobody needed to know)
  int direct_count = 0;
  bool any_cold = false;           // some file was cold when opened
};

// Files outside the page cache may be read with O_DIRECT (no double copy
// through the cache) and through io_uring; cached ones with buffered pread.
Result<OpenFiles> OpenForLoad(const Catalog& catalog, const LoadOptions& options, bool any_gpu) {
  OpenFiles out;
  const size_t n = catalog.files().size();
  out.direct.resize(n);
  out.uring.assign(n, 0);
  out.cold.assign(n, 0);
  out.uring_used = std::make_unique<std::atomic<bool>[]>(n);
  out.files.reserve(n);
  for (size_t k = 0; k < n; ++k) {
    const CatalogFile& f = catalog.files()[k];
    HOIST_ASSIGN_OR_RETURN(File file, File::OpenRead(f.path));
    if (file.size_bytes() != f.size_bytes) {
      return IoError(QuoteName(f.path) + " changed since its header was read (" + std::to_string(f.size_bytes) +
                     " bytes then, " + std::to_string(file.size_bytes()) + " now)");
    }
    // Cold files get more reader threads, may be read with O_DIRECT or
    // io_uring, and are read ahead while GPUs start.
    const bool look =
        options.threads == 0 || options.direct == DirectIo::kAuto || options.io == IoEngine::kAuto || any_gpu;
    const bool cold = look && file.CachedFraction() < 0.5;
    out.cold[k] = cold;
    out.any_cold = out.any_cold || cold;
    out.uring[k] = options.io == IoEngine::kUring || (options.io == IoEngine::kAuto && cold && UringAvailable());
    if (options.direct == DirectIo::kOn || (options.direct == DirectIo::kAuto && cold)) {
      Result<File> d = File::OpenReadDirect(f.path);
      if (d.ok()) {
        out.direct[k] = std::move(d).value();
        ++out.direct_count;
      } else if (d.status().code() != StatusCode::kNotSupported) {
        return d.status();
      }
    }
    out.files.push_back(std::move(file));
  }
  return out;
}

// Reads in plan order, but devices interleaved so each progresses at the
// same rate (the one furthest behind, as a fraction of its bytes, goes
// next): with a model split over several GPUs, all of their copy streams are
// busy at once instead of one after the other.
std::vector<ReadItem> InterleaveByDevice(std::vector<ReadItem> items, size_t devices) {
  if (devices < 2) return items;
  std::vector<std::vector<ReadItem>> per(devices);
  std::vector<uint64_t> total(devices, 0), issued(devices, 0);
  for (const ReadItem& it : items) {
    per[it.device].push_back(it);
    total[it.device] += it.size_bytes;
  }
  std::vector<size_t> next(devices, 0);
  std::vector<ReadItem> out;
  out.reserve(items.size());
  while (out.size() < items.size()) {
    size_t best = devices;
    for (size_t d = 0; d < devices; ++d) {
      if (next[d] == per[d].size()) continue;
      // issued[d] / total[d] < issued[best] / total[best], without division.
      if (best == devices || static_cast<unsigned __int128>(issued[d]) * total[best] <
                                 static_cast<unsigned __int128>(issued[best]) * total[d]) {
        best = d;
      }
    }
    issued[best] += per[best][next[best]].size_bytes;
    out.push_back(per[best][next[best]++]);
  }
  return out;
}

// Reads a load's cold bytes through the page cache, in the order the load
// will read them (devices interleaved), on threads of its own, until Stop:
// the wait for GPUs to start (a CUDA context takes from a fraction of a
// second to many seconds) then fetches from the disk what the reads after it
// find in the cache. Its reads only warm the cache: a failed one ends the
// read-ahead, and the load's own read of those bytes reports the error.
class ReadAhead {
 public:
  // Gaps between a --split part's runs from which they are read ahead one
  // by one rather than as one span.
  static constexpr uint64_t kReadAheadGapBytes = 64 << 10;
  ReadAhead(const LoadPlan& plan, const OpenFiles& open, int threads, uint64_t chunk)
      : file_bytes_(open.files.size()) {
    try {
      std::vector<ReadItem> items;
      for (size_t i = 0; i < plan.tensors.size(); ++i) {
        const PlannedTensor& t = plan.tensors[i];
        if (t.device.kind == DeviceKind::kDisk || t.alias_of >= 0 || !open.cold[t.source->file_index]) continue;
        uint32_t device = 0;
        while (device < plan.devices.size() && plan.devices[device].device != t.device) ++device;
        // A part's runs one by one where the gaps between them are large;
        // else the span from the first to the last (the page cache holds
        // whole pages, and read-ahead fills the gaps anyway).
        if (t.runs > 1 && t.stride_bytes - t.run_bytes >= kReadAheadGapBytes) {
          for (uint64_t r = 0; r < t.runs; ++r) {
            items.push_back({static_cast<uint32_t>(i), device, t.file_offset_bytes + r * t.stride_bytes, t.run_bytes,
                             0, nullptr, 0});
          }
        } else {
          const uint64_t span = t.runs == 0 ? 0 : (t.runs - 1) * t.stride_bytes + t.run_bytes;
          items.push_back({static_cast<uint32_t>(i), device, t.file_offset_bytes, span, 0, nullptr, 0});
        }
      }
      for (const ReadItem& it : InterleaveByDevice(std::move(items), plan.devices.size() + 1)) {
        const uint32_t file = plan.tensors[it.tensor].source->file_index;
        for (uint64_t done = 0; done < it.size_bytes; done += chunk) {
          const uint64_t n = std::min(chunk, it.size_bytes - done);
          if (!pieces_.empty() && pieces_.back().file == file &&
              pieces_.back().offset + pieces_.back().size == it.file_offset_bytes + done &&
              pieces_.back().size + n <= chunk) {
            pieces_.back().size += n;  // small tensors side by side in the file: one read
          } else {
            pieces_.push_back({file, it.file_offset_bytes + done, n});
          }
        }
      }
      if (pieces_.empty()) return;
      thread_ = std::thread([this, &open, threads] {
        try {
          (void)ParallelFor(pieces_.size(), threads, [this, &open](size_t k) {
            if (stop_.load(std::memory_order_relaxed)) return Status::Ok();
            const Piece& p = pieces_[k];
            thread_local std::vector<unsigned char> buffer(kBlockBytes);  // one per thread, reused
            for (uint64_t done = 0; done < p.size && !stop_.load(std::memory_order_relaxed);) {
              const uint64_t n = std::min<uint64_t>(kBlockBytes, p.size - done);
              if (!open.files[p.file].ReadAt(p.offset + done, buffer.data(), n).ok()) {
                stop_.store(true);
                break;
              }
              done += n;
              file_bytes_[p.file].fetch_add(n, std::memory_order_relaxed);
            }
            return Status::Ok();
          });
        } catch (const std::exception&) {
          // Out of memory or threads: the load reads the rest itself.
        }
      });
    } catch (const std::exception&) {
      // As above: no read-ahead.
    }
  }
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;
  ~ReadAhead() { Stop(); }

  // Stops the reads (each thread may finish the block it is reading).
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  // Bytes of file k read ahead so far.
  uint64_t file_bytes(size_t k) const { return file_bytes_[k].load(); }

 private:
  static constexpr uint64_t kBlockBytes = 1 << 20;
  struct Piece {
    uint32_t file;
    uint64_t offset, size;
  };
  std::vector<Piece> pieces_;
  std::vector<std::atomic<uint64_t>> file_bytes_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Waits, on a thread per GPU, for an event recorded after the first tensor
// queued in full on that GPU, and notes when it completed. Joined before the
// load returns, on every path (the load synchronizes each device first, so
// the waits end).
class FirstTensorWatch {
 public:
  // `done` is called, on a watching thread, as each watched event completes.
  FirstTensorWatch(size_t devices, std::function<void()> done) : watches_(devices), done_(std::move(done)) {}
  FirstTensorWatch(const FirstTensorWatch&) = delete;
  FirstTensorWatch& operator=(const FirstTensorWatch&) = delete;
  ~FirstTensorWatch() { Join(); }

  // The first call for each device index records an event on `device` after
  // the work queued so far and has `done` called when it has completed; later
  // calls do nothing. A device call that fails fails the load (status()), as
  // any other would.
  void Start(size_t index, Device* device) {
    Watch& w = watches_[index];
    if (w.started.exchange(true)) return;
    Result<std::unique_ptr<Event>> event = device->CreateEvent();
    if (!event.ok()) return Fail(event.status());
    w.event = std::move(event).value();
    if (Status st = w.event->Record(); !st.ok()) return Fail(st);
    auto wait = [this, e = w.event.get()] {
      if (Status st = e->Wait(); st.ok()) {
        done_();
      } else {
        Fail(st);
      }
    };
    try {
      w.thread = std::thread(wait);
    } catch (const std::system_error&) {
      wait();  // no thread to be had: wait here
    }
  }
  void Join() {
    for (Watch& w : watches_) {
      if (w.thread.joinable()) w.thread.join();
    }
  }
  // The first failure. REQUIRES: joined.
  const Status& status() const { return status_; }

 private:
  void Fail(const Status& st) {
    std::lock_guard<std::mutex> lock(mu_);
    if (status_.ok()) status_ = st;
  }
  struct Watch {
    std::atomic<bool> started{false};
    std::unique_ptr<Event> event;
    std::thread thread;
  };
  std::vector<Watch> watches_;
  const std::function<void()> done_;
  std::mutex mu_;
  Status status_;
};

// Whether --dtype could shrink what `plan` puts on `id`: some tensor there
// is a float wider than 16 bits that a cast would narrow (16-bit floats
// cannot get smaller; quantized data and its scales are never cast).
bool CastCouldShrink(const LoadPlan& plan, const Catalog& catalog, DeviceId id) {
  const QuantizationAux quantization(catalog.tensors());
  return std::any_of(plan.tensors.begin(), plan.tensors.end(), [&](const PlannedTensor& t) {
    return t.device == id && t.alias_of < 0 && IsCastableFloat(t.dtype) && DTypeBits(t.dtype) > 16 &&
           !quantization.Contains(t.source->name);
  });
}

// `cast_could_shrink` is asked only when the load does not fit, for its advice.
Status CheckFits(DeviceId id, Device* device, uint64_t needed, uint64_t limited, const LoadOptions& options,
                 const std::function<bool()>& cast_could_shrink, int gpu_count) {
  if (needed == 0) return Status::Ok();
  // --max-memory limits the tensors; the load's own buffers count against
  // free memory only.
  std::optional<uint64_t> limit;
  if (auto it = options.max_memory.find(id); it != options.max_memory.end()) limit = it->second + (needed - limited);
  HOIST_ASSIGN_OR_RETURN(std::optional<Availability> fit, AvailableOn(id, device, options.gpu_margin_bytes, limit));
  if (!fit) return Status::Ok();  // no device and no limit: nothing to check against
  const uint64_t available = fit->bytes;
  const std::string& why = fit->why;
  if (needed > available) {
    std::string what = needed == limited ? "the plan needs " + ByteText(needed)
                                         : "the load needs " + ByteText(needed) + " (" + ByteText(needed - limited) +
                                               " of it staging and cast buffers)";
    // When free memory (not --max-memory) is the limit and the tensors alone
    // would fit, the load's own buffers are the excess.
    const bool buffers = !fit->max_memory && needed > limited && limited <= available;
    // With no GPU to spread onto: map the files instead of copying them, or
    // leave part of the model in them.
    std::vector<std::string> ways;
    if (gpu_count == 0 && id == DeviceId::Cpu()) {
      ways = {"map it from its files instead with " + OptText("--mmap", "mmap=True"),
              "leave part of it there with " + OptText("--device-map auto --max-memory cpu=...,disk=...",
                                                       "device_map=\"auto\", max_memory={\"cpu\": ..., \"disk\": ...}")};
    } else {
      ways = {"spread the model with " + OptText("--device-map auto --max-memory 0=...,cpu=...",
                                                 "device_map=\"auto\", max_memory={0: ..., \"cpu\": ...}")};
    }
    if (cast_could_shrink()) ways.push_back("shrink it with " + OptText("--dtype bf16", "dtype=\"bf16\""));
    std::string spread;
    for (size_t k = 0; k < ways.size(); ++k) {
      spread += (k == 0 ? "" : k + 1 == ways.size() ? ", or " : ", ") + ways[k];
    }
    std::string advice = !buffers ? spread
                         : id.kind == DeviceKind::kCuda
                             ? "use a smaller " + Opt("--chunk-size") + " (the GPU holds four chunks of cast scratch)"
                             : "use fewer or smaller staging buffers (" + OptText("--staging-buffers N", "staging_buffers=N") + ", " +
                                   Opt("--chunk-size") + ")";
    return OutOfMemory(id.ToString() + ": " + what + " but only " + ByteText(available) + " is available (" + why +
                       "); " + advice);
  }
  return Status::Ok();
}

// Staging slots and cast scratch areas are this many bytes apart, so each
// holds a chunk and starts aligned for any element type.
uint64_t SlotStride(uint64_t chunk_bytes) { return (chunk_bytes + 255) / 256 * 256; }

// Pins slots [begin, end) of `s`'s ring in one allocation and hands them to
// the readers. Nothing is published unless all of it worked.
Status PinSlots(DeviceState& s, int begin, int end) {
  if (begin >= end) return Status::Ok();
  HOIST_ASSIGN_OR_RETURN(DeviceMemory part,
                         DeviceMemory::AllocatePinned(s.device, s.slot_stride * static_cast<uint64_t>(end - begin)));
  for (int k = begin; k < end; ++k) {
    StagingSlot& slot = s.slots[static_cast<size_t>(k)];
    slot.buffer = part.data() + static_cast<uint64_t>(k - begin) * s.slot_stride;
    HOIST_ASSIGN_OR_RETURN(slot.event, s.device->CreateEvent());
  }
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.ring.push_back(std::move(part));
    for (int k = begin; k < end; ++k) s.free_slots.push_back(static_cast<size_t>(k));
  }
  s.cv.notify_all();
  return Status::Ok();
}

// Pinning costs about 1-2 GB/s (docs/planning.md): a whole ring pinned
// before the first read would hold up a load that streams at 50 GB/s. So
// this many slots are pinned first, and the rest this many per allocation
// on a background thread while the reads run.
constexpr int kFirstSlots = 2;
constexpr int kSlotsPerPin = 2;

// Joins the background pinner, asking it to stop first, on every way out.
struct BackgroundPinner {
  std::atomic<bool>* stop = nullptr;
  std::thread thread;
  void Join() {
    if (thread.joinable()) thread.join();
  }
  ~BackgroundPinner() {
    if (stop != nullptr) stop->store(true);
    Join();
  }
};

// The default staging ring never exceeds this many slots per GPU (32 chunks
// of 16 MiB: 512 MiB pinned; twice that where casts widen on the host),
// however many reader threads there are.
constexpr int kMaxDefaultSlots = 32;

// A host cast reads and casts this much at a time (a multiple of every
// element size), so the bytes it casts are still in the core's cache.
constexpr uint64_t kHostCastBlockBytes = 512 << 10;

// Chunks of device scratch for casts on a GPU. Two let a copy fill one
// while a kernel casts from the other; more give slack when the copy
// stream runs ahead.
constexpr int kScratchChunks = 4;

// kCancelled once the caller has set options.cancel.
Status CheckCancelled(const LoadOptions& options) {
  if (options.cancel == nullptr || !options.cancel->load(std::memory_order_relaxed)) return Status::Ok();
  return Cancelled("the load was cancelled");
}

}  // namespace

LoadedModel::LoadedModel() = default;
LoadedModel::~LoadedModel() = default;
LoadedModel::LoadedModel(LoadedModel&&) noexcept = default;
LoadedModel& LoadedModel::operator=(LoadedModel&&) noexcept = default;

const TensorView* LoadedModel::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Result<LoadedModel> Load(const Catalog& catalog, LoadPlan plan, const DeviceRegistry& registry,
                         const LoadOptions& options) {
  const auto start = Clock::now();
  if (options.chunk_bytes < 4096) return InvalidArgument(Opt("--chunk-size") + " must be at least 4096 bytes");
  // Pieces start 256-byte aligned in their tensor, so a device cast's
  // vector loads and stores stay aligned whatever --chunk-size said.
  const uint64_t chunk = options.chunk_bytes / 256 * 256;
  if (options.staging_slots < 0) return InvalidArgument("the number of staging buffers cannot be negative");
  if (options.io == IoEngine::kUring) {
    if (Result<std::unique_ptr<BlockReader>> probe = MakeUringReader(); !probe.ok()) return probe.status();
  }
  LoadedModel model;

  // Host memory for the pipeline-off baseline; declared before the device
  // states whose buffers it owns, so it outlives them.
  std::unique_ptr<Device> host = MakeCpuDevice();
  // Devices in the plan must exist, and each reservation must fit, before
  // anything is allocated.
  std::vector<std::unique_ptr<DeviceState>> states;
  std::map<DeviceId, uint32_t> state_of;
  int gpus = 0;
  for (const DevicePlan& d : plan.devices) {
    Device* device = registry.Find(d.device);
    gpus += device != nullptr && !device->host_addressable() ? 1 : 0;
  }
  HOIST_ASSIGN_OR_RETURN(OpenFiles open, OpenForLoad(catalog, options, gpus > 0));
  int threads = options.threads > 0 ? options.threads : DefaultReadThreads();
  if (options.threads == 0 && open.any_cold) threads = std::max(threads, 8);
  // Enough staging buffers for every reader to fill one while two copies run,
  // the readers shared out over the GPUs (they take the GPUs in turn).
  const int slots = options.staging_slots > 0 ? options.staging_slots
                                              : std::min(kMaxDefaultSlots, (threads + gpus - 1) / std::max(gpus, 1) + 2);
  const uint64_t stride = SlotStride(chunk);
  // A GPU's first call waits for its context, if the start-up begun before
  // planning (api/session.cc) has not finished: that wait is the
  // device_start stage, and cold files are read ahead meanwhile (the
  // reservations and the staging ring need the contexts; the page cache does
  // not). Errors show up in the calls below.
  double device_start_seconds = 0;
  uint64_t read_ahead_bytes = 0;
  if (gpus > 0) {
    const auto wait_start = Clock::now();
    // O_DIRECT reads (--direct on) would not find the bytes in the cache.
    std::optional<ReadAhead> ahead;
    if (open.any_cold && options.direct != DirectIo::kOn) ahead.emplace(plan, open, threads, chunk);
    for (const DevicePlan& d : plan.devices) {
      Device* device = registry.Find(d.device);
      if (device != nullptr && !device->host_addressable()) (void)device->GetMemoryInfo();
    }
    if (ahead) {
      ahead->Stop();
      // A file read (in part) ahead is read through the cache: buffered, and
      // with pread where --io auto chose io_uring for it.
      for (size_t k = 0; k < open.files.size(); ++k) {
        const uint64_t bytes = ahead->file_bytes(k);
        if (bytes == 0) continue;
        read_ahead_bytes += bytes;
        open.cold[k] = 0;
        if (open.direct[k].fd() >= 0) {
          open.direct[k] = File();
          --open.direct_count;
        }
        if (options.io == IoEngine::kAuto) open.uring[k] = 0;
      }
    }
    device_start_seconds = Since(wait_start);
  }
  HOIST_RETURN_IF_ERROR(CheckCancelled(options));
  uint64_t host_extra = 0;  // staging (or the pipeline-off copy) in host memory
  uint64_t host_tensors = 0;
  for (const DevicePlan& d : plan.devices) {
    if (d.device.kind == DeviceKind::kDisk) continue;
    Device* device = registry.Find(d.device);
    if (device == nullptr) {
      return InvalidArgument(d.device.ToString() + " is not present on this machine (" +
                             std::to_string(registry.CudaCount()) + " CUDA GPUs found)");
    }
    uint64_t needed = d.reserve_bytes;
    if (options.alloc == AllocStrategy::kPerTensor) {
      needed = 0;
      for (const PlannedTensor& t : plan.tensors) {
        if (t.device == d.device && t.alias_of < 0 && !t.mapped) needed += t.size_bytes;
      }
    }
    auto state = std::make_unique<DeviceState>();
    state->device = device;
    state->stats.device = d.device;
    state->staged = !device->host_addressable();
    uint64_t scratch = 0;
    if (state->staged) {
      // Casts run on the device when it can (a kernel, after a raw copy
      // into its scratch); otherwise on the host, into a slot wide enough
      // for the widest cast.
      bool casts = false;
      uint64_t widen = 1;
      for (const PlannedTensor& t : plan.tensors) {
        if (t.device != d.device || t.alias_of >= 0 || t.dtype == t.source->dtype) continue;
        casts = true;
        widen = std::max<uint64_t>(widen, static_cast<uint64_t>(DTypeBits(t.dtype) / DTypeBits(t.source->dtype)));
      }
      state->device_casts = options.pipeline && casts && device->SupportsCast();
      if (state->device_casts) {
        // Reserve: as many chunks of scratch as the reservation holds, up to
        // kScratchChunks; a model smaller than one chunk is cast on the host.
        state->scratch_chunks = options.alloc == AllocStrategy::kReserve
                                    ? static_cast<int>(std::min<uint64_t>(kScratchChunks, d.reserve_bytes / stride))
                                    : kScratchChunks;
        state->device_casts = state->scratch_chunks > 0;
      }
      state->slot_stride = state->device_casts ? stride : SlotStride(chunk * widen);
      if (open.direct_count > 0) {
        // O_DIRECT reads land in the slot whole: page-aligned slots with
        // room for the blocks around a chunk.
        const uint64_t a = File::kDirectAlignBytes;
        state->slot_stride = (std::max(state->slot_stride, chunk + 2 * a) + a - 1) / a * a;
      }
      host_extra += options.pipeline ? state->slot_stride * static_cast<uint64_t>(slots) : d.reserve_bytes;
      if (state->device_casts && options.alloc == AllocStrategy::kPerTensor) scratch = stride * kScratchChunks;
    }
    if (device->host_addressable() && d.device == DeviceId::Cpu()) host_tensors = needed;
    if (!device->host_addressable() || d.device != DeviceId::Cpu()) {
      HOIST_RETURN_IF_ERROR(CheckFits(d.device, device, needed + scratch, needed, options,
                                      [&] { return CastCouldShrink(plan, catalog, d.device); }, registry.CudaCount()));
    }
    state_of[d.device] = static_cast<uint32_t>(states.size());
    states.push_back(std::move(state));
  }
  // The host holds its own tensors plus every GPU's staging buffers.
  Device* cpu = registry.Find(DeviceId::Cpu());
  if (cpu == nullptr) cpu = host.get();
  HOIST_RETURN_IF_ERROR(CheckFits(DeviceId::Cpu(), cpu, host_tensors + host_extra, host_tensors, options,
                                  [&] { return CastCouldShrink(plan, catalog, DeviceId::Cpu()); }, registry.CudaCount()));

  // Reserve: one allocation per device, or one per tensor.
  const auto reserve_start = Clock::now();
  std::vector<unsigned char*> tensor_ptr(plan.tensors.size(), nullptr);
  for (const DevicePlan& d : plan.devices) {
    if (d.device.kind == DeviceKind::kDisk || options.alloc != AllocStrategy::kReserve || d.reserve_bytes == 0) {
      continue;
    }
    DeviceState& s = *states[state_of[d.device]];
    HOIST_ASSIGN_OR_RETURN(DeviceMemory a, DeviceMemory::Allocate(s.device, d.reserve_bytes));
    s.base = static_cast<unsigned char*>(a.get());
    s.stats.reserved_bytes += a.size_bytes();
    s.stats.driver_allocs += 1;
    model.allocations_.push_back(std::move(a));
  }
  // Mapped tensors: one private mapping per file that holds any.
  std::vector<const FileMapping*> mapping_of(open.files.size(), nullptr);
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    if (!t.mapped || t.alias_of >= 0) continue;
    const uint32_t f = t.source->file_index;
    if (mapping_of[f] == nullptr) {
      Result<FileMapping> m = FileMapping::Map(open.files[f]);
      if (!m.ok()) return Status(m.status().code(), "tensor " + QuoteName(t.source->name) + " in " + m.status().message());
      model.mappings_.push_back(std::make_unique<FileMapping>(std::move(m).value()));
      mapping_of[f] = model.mappings_.back().get();
    }
    tensor_ptr[i] = mapping_of[f]->data() + t.file_offset_bytes;
  }
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    if (t.device.kind == DeviceKind::kDisk || t.alias_of >= 0) continue;
    DeviceState& s = *states[state_of[t.device]];
    if (t.mapped) {
      s.stats.bytes += t.size_bytes;
      continue;
    }
    if (options.alloc == AllocStrategy::kReserve) {
      tensor_ptr[i] = s.base + t.offset_bytes;
    } else if (t.size_bytes > 0) {
      HOIST_RETURN_IF_ERROR(CheckCancelled(options));  // a driver call per tensor may take a while
      HOIST_ASSIGN_OR_RETURN(DeviceMemory a, DeviceMemory::Allocate(s.device, t.size_bytes));
      tensor_ptr[i] = static_cast<unsigned char*>(a.get());
      s.stats.reserved_bytes += a.size_bytes();
      s.stats.driver_allocs += 1;
      model.allocations_.push_back(std::move(a));
    }
    s.stats.bytes += t.size_bytes;
  }
  // Cast scratch: the end of the reservation, or (per-tensor) one more
  // allocation for this load only.
  for (const DevicePlan& d : plan.devices) {
    if (d.device.kind == DeviceKind::kDisk) continue;
    DeviceState& s = *states[state_of[d.device]];
    if (!s.device_casts) continue;
    const uint64_t bytes = stride * static_cast<uint64_t>(s.scratch_chunks);
    if (options.alloc == AllocStrategy::kReserve) {
      s.tail_begin = (d.reserve_bytes - bytes) / kDeviceTensorAlignBytes * kDeviceTensorAlignBytes;
      s.scratch = s.base + s.tail_begin;
    } else {
      HOIST_ASSIGN_OR_RETURN(s.scratch_memory, DeviceMemory::Allocate(s.device, bytes));
      s.scratch = s.scratch_memory.data();
      s.stats.driver_allocs += 1;
    }
    s.scratch_stride = stride;
    for (int k = 0; k < s.scratch_chunks; ++k) {
      HOIST_ASSIGN_OR_RETURN(std::unique_ptr<Event> e, s.device->CreateEvent());
      s.scratch_events.push_back(std::move(e));
    }
    s.scratch_used.assign(static_cast<size_t>(s.scratch_chunks), 0);
  }
  for (auto& s : states) s->stats.peak_reserved_bytes = s->stats.reserved_bytes + s->scratch_memory.size_bytes();
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    if (plan.tensors[i].alias_of >= 0) tensor_ptr[i] = tensor_ptr[static_cast<size_t>(plan.tensors[i].alias_of)];
  }

  // Staging for devices the host cannot write directly: a slot holds one
  // chunk of file bytes, or of cast output where casts run on the host.
  for (auto& s : states) {
    if (!s->staged) continue;
    if (!options.pipeline) {
      const DevicePlan* d = plan.FindDevice(s->stats.device);
      HOIST_ASSIGN_OR_RETURN(s->mirror, DeviceMemory::Allocate(host.get(), std::max<uint64_t>(d->reserve_bytes, 1)));
      continue;
    }
    s->slots.resize(static_cast<size_t>(slots));
    HOIST_RETURN_IF_ERROR(PinSlots(*s, 0, std::min(slots, kFirstSlots)));
    if (!open.files.empty()) {
      HOIST_ASSIGN_OR_RETURN(bool lands, open.files[0].ReadsCanLandIn(s->slots[0].buffer));
      s->bounce_reads = !lands;
      s->stats.bounced_reads = !lands;
      if (!lands) {
        plan.warnings.push_back(s->stats.device.ToString() +
                                ": the kernel refuses reads into pinned staging memory (EFAULT, as under gVisor); "
                                "file bytes go through ordinary memory first, at the cost of a copy");
      }
    }
  }
  std::atomic<bool> stop{false};  // wakes workers waiting for a staging buffer
  // The rest of each ring, pinned while the reads run. A failure stops the
  // load like a failed read.
  std::mutex pin_mu;
  Status pin_status;
  BackgroundPinner pinner;
  pinner.stop = &stop;
  if (options.pipeline && slots > kFirstSlots) {
    auto pin_rest = [&] {
      for (auto& s : states) {
        if (!s->staged) continue;
        for (int k = kFirstSlots; k < slots && !stop.load(); k += kSlotsPerPin) {
          Status st = PinSlots(*s, k, std::min(slots, k + kSlotsPerPin));
          if (st.ok()) continue;
          {
            std::lock_guard<std::mutex> lock(pin_mu);
            pin_status = std::move(st);
          }
          stop.store(true);
          for (auto& w : states) {
            std::lock_guard<std::mutex> lock(w->mu);
            w->cv.notify_all();
          }
          return;
        }
      }
    };
    try {
      pinner.thread = std::thread(pin_rest);
    } catch (const std::system_error&) {
      pin_rest();  // no thread to be had: pin the rest now
      HOIST_RETURN_IF_ERROR(pin_status);
    }
  }
  const double reserve_seconds = Since(reserve_start);

  // Reads, cut on element boundaries so a cast can work on each piece alone.
  const auto read_start = Clock::now();
  std::vector<ReadItem> items;
  uint64_t bytes_read = 0, mapped_bytes = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    if (t.device.kind == DeviceKind::kDisk || t.alias_of >= 0) continue;
    const TensorInfo& src = *t.source;
    uint64_t src_elem = static_cast<uint64_t>(std::max(1, DTypeBits(src.dtype) / 8));
    uint64_t dst_elem = t.dtype == src.dtype ? src_elem : static_cast<uint64_t>(DTypeBits(t.dtype) / 8);
    DeviceState& st = *states[state_of[t.device]];
    const uint64_t piece = std::max<uint64_t>(chunk / src_elem, 1) * src_elem;
    // Where a piece would reach into the cast scratch, pieces from there on
    // are cut so that their cast output fits a staging slot: they are cast
    // on the host.
    const uint64_t small_piece = std::max<uint64_t>(chunk / std::max(src_elem, dst_elem), 1) * src_elem;
    const uint64_t stored = StoredBytes(t);
    bytes_read += stored;
    if (t.mapped) {
      mapped_bytes += stored;
      for (uint64_t done = 0; done < stored; done += piece) {
        const uint64_t len = std::min(piece, stored - done);
        items.push_back({static_cast<uint32_t>(i), state_of[t.device], t.file_offset_bytes + done, len, done,
                         tensor_ptr[i] + done, len, false, true});
      }
      continue;
    }
    for (uint64_t done = 0, len = 0; done < stored; done += len) {
      len = std::min(piece, stored - done);
      uint64_t dst_off = done / src_elem * dst_elem;
      if (t.offset_bytes + dst_off + len / src_elem * dst_elem > st.tail_begin) {
        len = std::min(small_piece, stored - done);
      }
      uint64_t dst_bytes = len / src_elem * dst_elem;
      unsigned char* dst = st.staged && !options.pipeline ? st.mirror.data() + t.offset_bytes : tensor_ptr[i];
      const bool tail = t.offset_bytes + dst_off + dst_bytes > st.tail_begin;
      items.push_back({static_cast<uint32_t>(i), state_of[t.device], FileOffsetOf(t, done), len, done, dst + dst_off,
                       dst_bytes, tail});
      if (!tail && t.dtype != src.dtype && st.device_casts) ++st.cast_pieces_left;
    }
  }
  // Tail pieces last: they wait for every device cast to be queued.
  items = InterleaveByDevice(std::move(items), states.size());
  std::stable_partition(items.begin(), items.end(), [](const ReadItem& it) { return !it.tail; });
  if (options.progress != nullptr) options.progress->total.store(bytes_read);
  std::atomic<uint64_t> host_cast_ns{0};
  // When the first copy and the first device cast were queued (under a
  // device's copy_mu; the earliest over all devices wins).
  std::atomic<int64_t> first_copy_ns{INT64_MAX}, first_cast_ns{INT64_MAX};
  auto mark_first = [&](std::atomic<int64_t>& first) {
    if (first.load(std::memory_order_relaxed) != INT64_MAX) return;
    int64_t expected = INT64_MAX;
    first.compare_exchange_strong(expected, NowNs());
  };
  int device_cast_pieces = 0;
  for (const auto& s : states) device_cast_pieces += s->cast_pieces_left;

  auto process = [&](const ReadItem& it, ReaderLocal& local) -> Status {
    const PlannedTensor& t = plan.tensors[it.tensor];
    if (it.map) {
      return mapping_of[t.source->file_index]->Populate(open.files[t.source->file_index], it.file_offset_bytes,
                                                        it.size_bytes, &local.scratch);
    }
    const File& file = open.files[t.source->file_index];
    const File& direct = open.direct[t.source->file_index];
    const bool cast = t.dtype != t.source->dtype;
    DeviceState& s = *states[it.device];
    // This thread's io_uring ring for this file, or nullptr for pread.
    auto reader = [&]() -> Result<BlockReader*> {
      if (!open.uring[t.source->file_index]) return nullptr;
      if (local.ring == nullptr && !local.no_ring) {
        Result<std::unique_ptr<BlockReader>> ring = MakeUringReader();
        if (ring.ok()) {
          local.ring = std::move(ring).value();
        } else if (options.io == IoEngine::kUring) {
          return Status(ring.status().code(), Printable(file.path()) + ": " + ring.status().message());
        } else {
          local.no_ring = true;  // auto: this thread reads with pread (e.g. out of file descriptors)
        }
      }
      if (local.ring != nullptr) open.uring_used[t.source->file_index].store(true, std::memory_order_relaxed);
      return local.ring.get();
    };
    auto read_range = [&](uint64_t offset, unsigned char* dst, uint64_t size) -> Status {
      HOIST_ASSIGN_OR_RETURN(BlockReader* via, reader());
      // A part's short runs through O_DIRECT would each read whole blocks:
      // they go through the page cache.
      if (direct.fd() < 0 || t.runs > 1) return file.ReadAt(offset, dst, size, via);
      return direct.ReadDirectAt(offset, dst, size, &local.bounce, via);
    };
    // Bytes [packed, packed + size) of the tensor's stored bytes, run by run.
    auto read_packed = [&](uint64_t packed, unsigned char* dst, uint64_t size) -> Status {
      if (t.runs <= 1) return read_range(t.file_offset_bytes + packed, dst, size);
      while (size > 0) {
        const uint64_t n = std::min(size, t.run_bytes - packed % t.run_bytes);
        HOIST_RETURN_IF_ERROR(read_range(FileOffsetOf(t, packed), dst, n));
        packed += n, dst += n, size -= n;
      }
      return Status::Ok();
    };
    auto read_into = [&](unsigned char* dst) { return read_packed(it.packed_offset, dst, it.size_bytes); };
    // The piece a cache-sized block at a time into this thread's scratch,
    // each block handed to `use(offset in the piece, bytes)` while it is
    // still in cache.
    auto through_scratch = [&](auto&& use) -> Status {
      const uint64_t block = std::min<uint64_t>(it.size_bytes, kHostCastBlockBytes);
      local.scratch.resize(block);
      for (uint64_t done = 0; done < it.size_bytes; done += block) {
        const uint64_t n = std::min(block, it.size_bytes - done);
        HOIST_RETURN_IF_ERROR(read_packed(it.packed_offset + done, local.scratch.data(), n));
        use(done, n);
      }
      return Status::Ok();
    };
    // Into memory the kernel cannot write (bounce_reads): through scratch, then
    // copied. O_DIRECT reads go through the thread's aligned buffer anyway.
    auto bounce_into = [&](unsigned char* dst) -> Status {
      if (direct.fd() >= 0 && t.runs <= 1) return read_into(dst);
      return through_scratch([&](uint64_t done, uint64_t n) { std::memcpy(dst + done, local.scratch.data(), n); });
    };
    // A cast on the host casts each block into place.
    auto cast_into = [&](unsigned char* dst) -> Status {
      const uint64_t in_elem = static_cast<uint64_t>(DTypeBits(t.source->dtype) / 8);
      const uint64_t out_elem = static_cast<uint64_t>(DTypeBits(t.dtype) / 8);
      uint64_t cast_ns = 0;
      Status st = through_scratch([&](uint64_t done, uint64_t n) {
        const auto cast_start = Clock::now();
        CastFloats(t.source->dtype, local.scratch.data(), t.dtype, dst + done / in_elem * out_elem, n / in_elem);
        cast_ns += static_cast<uint64_t>(std::chrono::nanoseconds(Clock::now() - cast_start).count());
      });
      host_cast_ns.fetch_add(cast_ns, std::memory_order_relaxed);
      return st;
    };
    if (!s.staged || !options.pipeline) return cast ? cast_into(it.dst) : read_into(it.dst);

    size_t slot_index;
    {
      std::unique_lock<std::mutex> lock(s.mu);
      // A tail piece overwrites cast scratch: not before every cast that
      // reads it is queued (the copy stream then waits for them). It waits
      // holding no slot, so the casts it waits for can proceed.
      if (it.tail) s.cv.wait(lock, [&] { return s.cast_pieces_left == 0 || stop.load(); });
      s.cv.wait(lock, [&] { return !s.free_slots.empty() || stop.load(); });
      if (stop.load()) return Status::Ok();
      slot_index = s.free_slots.front();
      s.free_slots.pop_front();
    }
    StagingSlot& slot = s.slots[slot_index];
    Status st;
    if (slot.pending) {
      // Where the wait fails, the slot's last copy may still read it: it
      // stays out of the ring, and the load fails (the final synchronize
      // waits for that copy before anything is freed).
      st = slot.event->Wait();
      if (!st.ok()) return st;
    }
    slot.pending = false;
    const bool device_cast = cast && s.device_casts && !it.tail;
    // Where the piece's file bytes are once read: O_DIRECT reads land in the
    // (page-aligned) slot with the blocks around them, and are copied from
    // there, with no bounce buffer.
    const unsigned char* bytes = slot.buffer;
    if (st.ok()) {
      if (cast && !device_cast) {
        st = cast_into(slot.buffer);  // reads into ordinary memory; the cast writes the slot
      } else if (s.bounce_reads) {
        st = bounce_into(slot.buffer);
      } else if (direct.fd() >= 0 && t.runs <= 1 &&
                 reinterpret_cast<uintptr_t>(slot.buffer) % File::kDirectAlignBytes == 0) {
        Result<BlockReader*> via = reader();
        Result<const unsigned char*> got =
            via.ok() ? direct.ReadDirectInto(it.file_offset_bytes, it.size_bytes, slot.buffer, *via)
                     : Result<const unsigned char*>(via.status());
        st = got.status();
        if (got.ok()) bytes = *got;
      } else {
        st = read_into(slot.buffer);
      }
    }
    bool queued = false;  // something on the stream may still read the slot
    if (st.ok()) {
      std::lock_guard<std::mutex> lock(s.copy_mu);
      if (device_cast) {
        // File bytes to the next chunk of scratch once the device is done
        // with its last cast, then the kernel casts them into place; the
        // events after both free the scratch chunk and the slot.
        const size_t k = s.next_scratch;
        s.next_scratch = (k + 1) % s.scratch_events.size();
        unsigned char* raw = s.scratch + k * s.scratch_stride;
        if (s.scratch_used[k]) st = s.device->WaitOnDevice(s.scratch_events[k].get());
        if (st.ok()) st = s.device->CopyToDeviceAsync(raw, bytes, it.size_bytes);
        queued = st.ok();
        if (st.ok()) {
          mark_first(first_copy_ns);
          st = s.device->CastAsync(it.dst, t.dtype, raw, t.source->dtype,
                                   it.size_bytes / static_cast<uint64_t>(DTypeBits(t.source->dtype) / 8));
          if (st.ok()) mark_first(first_cast_ns);
        }
        if (st.ok()) st = s.scratch_events[k]->Record();
        if (st.ok()) s.scratch_used[k] = 1;
      } else {
        if (it.tail && !s.tail_fenced) {
          // The first copy over the scratch: the copy stream waits for every
          // cast, all of them queued by now.
          for (size_t k = 0; k < s.scratch_events.size() && st.ok(); ++k) {
            if (s.scratch_used[k]) st = s.device->WaitOnDevice(s.scratch_events[k].get());
          }
          s.tail_fenced = st.ok();
        }
        if (st.ok()) st = s.device->CopyToDeviceAsync(it.dst, bytes, it.dst_bytes);
        queued = st.ok();
        if (st.ok()) mark_first(first_copy_ns);
      }
      if (st.ok()) st = slot.event->Record();
      slot.pending = st.ok();
    }
    // A slot whose copy was queued but not covered by an event is not
    // handed out again: the load is failing, and the final synchronize
    // waits for the copy before anything is released.
    if (st.ok() || !queued) {
      std::lock_guard<std::mutex> lock(s.mu);
      s.free_slots.push_back(slot_index);
      if (st.ok() && device_cast) --s.cast_pieces_left;
    }
    // All: a tail piece waiting for the casts shares the condition with
    // readers waiting for a slot, and one woken for nothing must not absorb
    // the wake-up.
    s.cv.notify_all();
    return st;
  };

  // The time to the first complete tensor. In host memory a tensor is
  // complete when its last read returns; on a GPU once the device has run
  // the copies (and casts) queued for it, so the first tensor queued in full
  // on each GPU gets an event recorded after it, which a thread of its own
  // waits for. The earliest completion wins.
  std::vector<std::atomic<uint32_t>> pieces_left(plan.tensors.size());
  for (const ReadItem& it : items) pieces_left[it.tensor].fetch_add(1, std::memory_order_relaxed);
  std::atomic<int64_t> first_complete_ns{INT64_MAX};
  auto complete_now = [&first_complete_ns] {
    const int64_t now = NowNs();
    for (int64_t seen = first_complete_ns.load(); now < seen && !first_complete_ns.compare_exchange_weak(seen, now);) {
    }
  };
  FirstTensorWatch watch(states.size(), complete_now);
  auto tensor_done = [&](uint32_t device) {
    DeviceState& ds = *states[device];
    if (!ds.staged) {
      complete_now();  // in host memory
    } else if (options.pipeline) {
      watch.Start(device, ds.device);
    }  // pipeline off: in the host copy, the copies to the device come later
  };

  Status read_status = ParallelFor(
      items.size(), threads,
      [&](size_t k) -> Status {
        const ReadItem& it = items[k];
        Status s = options.before_read ? options.before_read(k) : Status::Ok();
        if (s.ok()) s = CheckCancelled(options);
        if (s.code() == StatusCode::kCancelled) return s;  // not this tensor's problem
        if (s.ok()) s = process(it, reader_local);
        if (s.ok()) {
          if (options.progress != nullptr) options.progress->done.fetch_add(it.size_bytes, std::memory_order_relaxed);
          if (pieces_left[it.tensor].fetch_sub(1) == 1) tensor_done(it.device);
          return s;
        }
        return Status(s.code(), "tensor " + QuoteName(plan.tensors[it.tensor].source->name) + " in " + s.message());
      },
      [&] {
        stop.store(true);
        for (auto& st : states) {
          std::lock_guard<std::mutex> lock(st->mu);
          st->cv.notify_all();
        }
      },
      &threads);
  // Done reading: the pinner need not pin more. Its failure fails the load
  // (readers it stopped may have left their pieces unread).
  stop.store(true);
  pinner.Join();
  if (read_status.ok() && !pin_status.ok()) read_status = pin_status;
  reader_local = ReaderLocal();
  // Pipeline off: now copy each GPU's bytes from host memory, tensor by tensor.
  const auto copy_start = Clock::now();
  double copy_seconds = 0;
  bool any_staged = false;
  for (auto& s : states) any_staged = any_staged || s->staged;
  if (read_status.ok() && !options.pipeline && any_staged) {
    for (size_t i = 0; i < plan.tensors.size() && read_status.ok(); ++i) {
      const PlannedTensor& t = plan.tensors[i];
      if (t.device.kind == DeviceKind::kDisk || t.alias_of >= 0 || t.size_bytes == 0) continue;
      DeviceState& s = *states[state_of[t.device]];
      if (!s.staged) continue;
      read_status = s.device->CopyToDeviceAsync(tensor_ptr[i], s.mirror.data() + t.offset_bytes, t.size_bytes);
      if (read_status.ok()) watch.Start(state_of[t.device], s.device);
    }
    for (auto& s : states) {
      if (s->staged && read_status.ok()) read_status = s->device->Synchronize();
    }
    copy_seconds = Since(copy_start);
  }
  // Copies may still be reading the staging buffers: wait for every device
  // before anything is released, on success and on failure alike.
  for (auto& s : states) {
    if (!s->staged) continue;
    Status st = s->device->Synchronize();
    if (!st.ok() && read_status.ok()) read_status = st;
  }
  const int64_t devices_done = NowNs();
  watch.Join();  // its events have completed: every device is synchronized
  if (read_status.ok()) read_status = watch.status();
  if (!read_status.ok()) return read_status;  // allocations and staging are released on return
  // Pipelined copies and device casts: from the first queued until the GPUs
  // were done.
  auto span = [&](const std::atomic<int64_t>& first) {
    const int64_t f = first.load();
    return f == INT64_MAX ? 0.0 : static_cast<double>(devices_done - f) / 1e9;
  };
  if (options.pipeline) copy_seconds = span(first_copy_ns);

  // Views.
  model.tensors_.reserve(plan.tensors.size());
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    TensorView v;
    v.name = t.name;
    v.device = t.device;
    v.dtype = t.dtype;
    v.stored_dtype = t.source->dtype;
    v.shape = t.shape;
    v.slice = t.slice;
    v.data = tensor_ptr[i];
    v.size_bytes = t.alias_of >= 0 ? plan.tensors[static_cast<size_t>(t.alias_of)].size_bytes : t.size_bytes;
    v.offset_bytes = t.offset_bytes;
    // Absolute, so disk tensors can be read after the working directory changes.
    std::error_code ec;
    std::filesystem::path file = std::filesystem::absolute(catalog.files()[t.source->file_index].path, ec);
    v.file = ec ? catalog.files()[t.source->file_index].path : file.string();
    v.file_offset_bytes = t.file_offset_bytes;
    v.tied = t.alias_of >= 0;
    if (v.tied) v.tied_to = plan.tensors[static_cast<size_t>(t.alias_of)].name;
    v.mapped = t.mapped;
    model.index_.emplace(v.name, model.tensors_.size());
    model.tensors_.push_back(std::move(v));
  }

  LoadStats& st = model.stats_;
  st.bytes_read = bytes_read;
  st.mapped_bytes = mapped_bytes;
  st.mapped_files = static_cast<int>(model.mappings_.size());
  st.threads = threads;
  st.direct_files = open.direct_count;
  st.uring_files = 0;
  for (size_t k = 0; k < open.files.size(); ++k) st.uring_files += open.uring_used[k].load() ? 1 : 0;
  st.staging_slots = any_staged && options.pipeline ? slots : 0;
  for (auto& s : states) {
    st.bytes_loaded += s->stats.bytes;
    st.driver_allocs += s->stats.driver_allocs;
    if (s->stats.device == DeviceId::Cpu()) st.arena_bytes = s->stats.reserved_bytes;
    st.devices.push_back(s->stats);
  }
  st.device_start_seconds = device_start_seconds;
  st.read_ahead_bytes = read_ahead_bytes;
  st.reserve_seconds = reserve_seconds;
  st.copy_seconds = copy_seconds;
  st.host_cast_seconds = static_cast<double>(host_cast_ns.load()) / 1e9;
  st.device_cast_seconds = span(first_cast_ns);
  st.device_cast_pieces = device_cast_pieces;
  st.read_seconds = Since(read_start) - (options.pipeline ? 0 : copy_seconds);
  const int64_t first_ns = first_complete_ns.load();
  st.time_to_first_tensor =
      first_ns == INT64_MAX ? 0.0
                            : static_cast<double>(first_ns - std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                                 start.time_since_epoch())
                                                                 .count()) /
                                  1e9;
  st.seconds = Since(start);
  model.plan_ = std::move(plan);
  return model;
}

Result<LoadedModel> LoadToHost(const Catalog& catalog, const LoadOptions& options) {
  const auto start = Clock::now();
  PlanOptions po;
  po.cast_to = options.cast_to;
  po.only_regex = options.only_regex;
  po.map_host = options.map_host;
  po.device = DeviceId::Cpu();
  HOIST_ASSIGN_OR_RETURN(LoadPlan plan, BuildPlan(catalog, po));
  const double plan_seconds = Since(start);
  // Lives as long as the process: models loaded through it hold its device.
  static const DeviceRegistry* cpu = new DeviceRegistry(MakeCpuRegistry());
  HOIST_ASSIGN_OR_RETURN(LoadedModel model, Load(catalog, std::move(plan), *cpu, options));
  model.stats_.plan_seconds = plan_seconds;
  model.stats_.seconds += plan_seconds;
  return model;
}

}  // namespace hoist
