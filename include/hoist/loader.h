// Loading a checkpoint onto devices.
//
// Load() carries out a LoadPlan: it checks every device's reservation
// against its free memory (minus a margin) and any --max-memory limit before
// allocating anything, makes one driver allocation per device (or one per
// tensor with AllocStrategy::kPerTensor, the baseline), then fills them with
// parallel positional reads: straight into memory the host can address, and
// through pinned staging buffers and asynchronous copies for GPUs. cpu
// tensors the plan maps (PlanOptions::map_host) are views of private
// mappings of their files instead, brought into memory by the same threads
// (so a load leaves nothing to fault in, and reports read errors itself). The
// returned LoadedModel owns every allocation; TensorView pointers stay valid
// as long as it lives. On any error every byte reserved, on every device and
// on the host, is returned before Load returns.
//
// LoadToHost is the host-only shortcut: plan onto `cpu` and load.
//
// Thread-safety: a LoadedModel is immutable after it is returned.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "hoist/catalog.h"
#include "hoist/device.h"
#include "hoist/dtype.h"
#include "hoist/plan.h"
#include "hoist/status.h"

namespace hoist {

class FileMapping;  // src/io/file.h

enum class AllocStrategy { kReserve, kPerTensor };

// How files are read: kAuto uses O_DIRECT for a file mostly outside the page
// cache (where the file system allows it) and buffered reads otherwise. The
// default is kOff: on the virtio disk it was measured on, buffered reads with
// more threads beat O_DIRECT (docs/loading.md); NVMe is still to be measured.
enum class DirectIo { kAuto, kOn, kOff };

// What moves the bytes: pread from each reader thread (the default), or
// io_uring, each thread keeping several reads of a chunk in flight
// (src/io/uring.h); kAuto uses io_uring for files mostly outside the page
// cache and pread for cached ones (pread everywhere when io_uring is
// unavailable). pread stays the default: on the disk measured so far
// neither won reliably from a cold cache, and io_uring lost from a warm one
// (docs/loading.md).
enum class IoEngine { kAuto, kPread, kUring };

// Counters another thread may read while a load runs (a progress line).
struct LoadProgress {
  std::atomic<uint64_t> done{0};
  std::atomic<uint64_t> total{0};
};

struct LoadOptions {
  // Planning (LoadToHost only).
  std::optional<DType> cast_to;
  std::string only_regex;
  bool map_host = false;  // PlanOptions::map_host

  AllocStrategy alloc = AllocStrategy::kReserve;
  // Reader threads; 0: one per core (2..32), at least 8 when a file is mostly
  // outside the page cache (the reads then wait on the disk, not the CPU).
  int threads = 0;
  uint64_t chunk_bytes = 16ull << 20;    // largest single read; a staging slot's size
  int staging_slots = 0;                 // pinned buffers per GPU; 0: its share of the readers + 2, at most 32
  uint64_t gpu_margin_bytes = kDefaultGpuMarginBytes;
  std::map<DeviceId, uint64_t> max_memory;  // extra per-device limits
  // false: read everything into host memory first, then copy each GPU's
  // bytes over (the baseline the staged pipeline is measured against).
  bool pipeline = true;
  DirectIo direct = DirectIo::kOff;
  IoEngine io = IoEngine::kPread;
  // When set, Load stores the bytes it will read in progress->total once the
  // reads are planned, and adds to progress->done as reads finish.
  LoadProgress* progress = nullptr;
  // When set, another thread (a signal handler, say) may set it to stop the
  // load: the reads stop before their next chunk, every byte reserved is
  // returned, and Load fails with kCancelled.
  const std::atomic<bool>* cancel = nullptr;
  // Test hook: called before the k-th read (0-based); a non-OK status fails it.
  std::function<Status(uint64_t read_index)> before_read;
};

struct TensorView {
  std::string name;
  DeviceId device;
  DType dtype = DType::kU8;         // after any cast
  DType stored_dtype = DType::kU8;  // in the file
  std::vector<uint64_t> shape;       // of the part loaded, where a --split took one
  std::optional<TensorSlice> slice;  // which part of the stored tensor that is
  // Device pointer (a host pointer for cpu); nullptr for disk tensors.
  const unsigned char* data = nullptr;
  uint64_t size_bytes = 0;
  uint64_t offset_bytes = 0;  // in the device reservation (0 where mapped)
  // Where the bytes are in the file (disk tensors are read from here); for
  // a split part, where its first run begins.
  std::string file;
  uint64_t file_offset_bytes = 0;
  bool tied = false;          // shares the storage of another tensor,
  std::string tied_to;        // this one (empty where not tied)
  bool mapped = false;        // a view of its file's pages (PlanOptions::map_host), not a copy

  // The elements as T. REQUIRES: host-addressable device, sizeof(T) * 8 == DTypeBits(dtype).
  template <typename T>
  std::span<const T> as() const {
    return {reinterpret_cast<const T*>(data), size_bytes / sizeof(T)};
  }
};

struct DeviceStats {
  DeviceId device;
  uint64_t bytes = 0;           // tensor bytes placed on it
  uint64_t reserved_bytes = 0;  // held by the model
  uint64_t peak_reserved_bytes = 0;
  int driver_allocs = 0;
  // The kernel refused reads into its pinned staging buffers (gVisor): they
  // were filled through ordinary memory, one more copy per byte.
  bool bounced_reads = false;
};

struct LoadStats {
  uint64_t bytes_read = 0;    // from files, mapped bytes included
  uint64_t mapped_bytes = 0;  // tensor bytes mapped from files instead of copied
  int mapped_files = 0;
  uint64_t bytes_loaded = 0;  // tensor bytes on devices, after casts
  uint64_t arena_bytes = 0;   // host reservation, alignment padding included
  int driver_allocs = 0;      // all devices
  int threads = 0;
  int direct_files = 0;       // files read with O_DIRECT (the rest buffered)
  int uring_files = 0;        // files read, at least in part, through io_uring (the rest with pread)
  int staging_slots = 0;      // pinned buffers per GPU (0: none were needed)
  double seconds = 0;
  double plan_seconds = 0, reserve_seconds = 0, read_seconds = 0;
  // Waiting for GPUs to start (their CUDA contexts) where planning did not
  // hide it: part of `seconds`, before the reservations.
  double device_start_seconds = 0;
  // Bytes of files mostly outside the page cache read into it during that
  // wait, so that the load's reads of them come from memory.
  uint64_t read_ahead_bytes = 0;
  // Copies to GPUs: with the pipeline off, the copy phase after the reads;
  // with it on, the span from the first copy queued until every GPU had
  // finished (it overlaps read_seconds). 0 where nothing was copied.
  double copy_seconds = 0;
  // Casts on the host (cpu tensors, or the pipeline-off baseline): CPU
  // seconds summed over the reader threads.
  double host_cast_seconds = 0;
  // Casts on a GPU (their own stream, overlapped with reads and copies):
  // the span from the first cast queued until every GPU had finished, and
  // how many pieces were cast.
  double device_cast_seconds = 0;
  int device_cast_pieces = 0;
  double time_to_first_tensor = 0;    // from the start of Load until one tensor is complete
  std::vector<DeviceStats> devices;
};

class LoadedModel {
 public:
  LoadedModel();
  ~LoadedModel();
  LoadedModel(LoadedModel&&) noexcept;
  LoadedModel& operator=(LoadedModel&&) noexcept;

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* Find(const std::string& name) const;
  const LoadStats& stats() const { return stats_; }
  const LoadPlan& plan() const { return plan_; }

 private:
  friend Result<LoadedModel> Load(const Catalog&, LoadPlan, const DeviceRegistry&, const LoadOptions&);
  friend Result<LoadedModel> LoadToHost(const Catalog&, const LoadOptions&);
  std::vector<DeviceMemory> allocations_;
  std::vector<std::unique_ptr<FileMapping>> mappings_;
  std::vector<TensorView> tensors_;
  std::unordered_map<std::string, size_t> index_;
  LoadPlan plan_;
  LoadStats stats_;
};

// REQUIRES: `plan` was built from `catalog`; `catalog` and `devices` outlive
// the returned model (its plan points into the catalogue, its memory belongs
// to the registry's devices).
Result<LoadedModel> Load(const Catalog& catalog, LoadPlan plan, const DeviceRegistry& devices,
                         const LoadOptions& options);

// REQUIRES: `catalog` outlives the returned model.
Result<LoadedModel> LoadToHost(const Catalog& catalog, const LoadOptions& options);

// The default number of reader threads for this machine.
int DefaultReadThreads();

}  // namespace hoist
