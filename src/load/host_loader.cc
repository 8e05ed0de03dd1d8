#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <regex>
#include <thread>

#include "cast/cast.h"
#include "format/safetensors.h"
#include "hoist/loader.h"
#include "io/file.h"
#include "load/select.h"
#include "memory/arena.h"

namespace hoist {

Result<std::vector<const TensorInfo*>> SelectTensors(const Catalog& catalog, const std::string& regex) {
  std::vector<const TensorInfo*> out;
  out.reserve(catalog.tensors().size());
  if (regex.empty()) {
    for (const TensorInfo& t : catalog.tensors()) out.push_back(&t);
    return out;
  }
  std::regex re;
  try {
    re = std::regex(regex, std::regex::ECMAScript | std::regex::optimize);
  } catch (const std::regex_error& e) {
    return InvalidArgument("--only " + regex + ": not a valid regular expression (" + e.what() + ")");
  }
  for (const TensorInfo& t : catalog.tensors()) {
    if (std::regex_search(t.name, re)) out.push_back(&t);
  }
  return out;
}

uint64_t TargetBytes(const TensorInfo& info, DType target) {
  if (target == info.dtype) return info.size_bytes;
  // Only whole-byte float types are cast, so the element count is exact.
  uint64_t numel = info.size_bytes / static_cast<uint64_t>(DTypeBits(info.dtype) / 8);
  return numel * static_cast<uint64_t>(DTypeBits(target) / 8);
}

int DefaultReadThreads() {
  unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp(hw == 0 ? 4u : hw, 2u, 32u));
}

namespace {

// One positional read, and where its bytes go.
struct ReadItem {
  uint32_t tensor_index;  // into the selection, for messages
  uint32_t file_index;
  uint64_t file_offset_bytes;
  uint64_t size_bytes;
  unsigned char* dst;  // final place (no cast) or cast destination
  DType src_dtype;
  DType dst_dtype;
};

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

LoadedModel::LoadedModel() = default;
LoadedModel::~LoadedModel() = default;
LoadedModel::LoadedModel(LoadedModel&&) noexcept = default;
LoadedModel& LoadedModel::operator=(LoadedModel&&) noexcept = default;

const TensorView* LoadedModel::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Result<LoadedModel> LoadToHost(const Catalog& catalog, const LoadOptions& options) {
  auto start = std::chrono::steady_clock::now();
  if (options.cast_to && *options.cast_to != DType::kBF16 && *options.cast_to != DType::kF16 &&
      *options.cast_to != DType::kF32) {
    return InvalidArgument("--dtype must be bf16, f16 or f32");
  }
  if (options.chunk_bytes < 4096) return InvalidArgument("chunk size must be at least 4096 bytes");
  HOIST_ASSIGN_OR_RETURN(std::vector<const TensorInfo*> selected, SelectTensors(catalog, options.only_regex));

  // Plan: offsets in one arena, then the reads that fill it.
  LoadedModel model;
  model.tensors_.reserve(selected.size());
  uint64_t arena_bytes = 0;
  for (const TensorInfo* t : selected) {
    TensorView v;
    v.name = t->name;
    v.stored_dtype = t->dtype;
    v.dtype = TargetDType(t->dtype, options.cast_to);
    v.shape = t->shape;
    v.size_bytes = TargetBytes(*t, v.dtype);
    v.offset_bytes = AlignUp(arena_bytes, kHostTensorAlignBytes);
    arena_bytes = v.offset_bytes + v.size_bytes;
    model.index_.emplace(v.name, model.tensors_.size());
    model.tensors_.push_back(std::move(v));
  }
  HOIST_ASSIGN_OR_RETURN(HostArena arena, HostArena::Reserve(arena_bytes));

  std::vector<ReadItem> items;
  uint64_t bytes_read = 0;
  for (size_t i = 0; i < selected.size(); ++i) {
    const TensorInfo& t = *selected[i];
    TensorView& v = model.tensors_[i];
    v.data = arena.data() + v.offset_bytes;
    bytes_read += t.size_bytes;
    // Split on element boundaries so a cast can work on each piece alone.
    uint64_t src_elem = std::max(1, DTypeBits(t.dtype) / 8);
    uint64_t piece = std::max<uint64_t>(options.chunk_bytes / src_elem, 1) * src_elem;
    for (uint64_t done = 0; done < t.size_bytes; done += piece) {
      uint64_t len = std::min(piece, t.size_bytes - done);
      uint64_t dst_off = v.dtype == t.dtype ? done : done / src_elem * (DTypeBits(v.dtype) / 8);
      items.push_back({static_cast<uint32_t>(i), t.file_index, t.offset_bytes + done, len, arena.data() + v.offset_bytes + dst_off,
                       t.dtype, v.dtype});
    }
  }

  std::vector<File> files;
  files.reserve(catalog.files().size());
  for (const CatalogFile& f : catalog.files()) {
    HOIST_ASSIGN_OR_RETURN(File file, File::OpenRead(f.path));
    files.push_back(std::move(file));
  }

  int threads = options.threads > 0 ? options.threads : DefaultReadThreads();
  threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), std::max<size_t>(items.size(), 1)));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mu;
  Status first_error;
  auto worker = [&] {
    std::vector<unsigned char> scratch;
    for (;;) {
      size_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= items.size() || failed.load(std::memory_order_relaxed)) return;
      const ReadItem& it = items[k];
      const File& file = files[it.file_index];
      Status s;
      if (it.src_dtype == it.dst_dtype) {
        s = file.ReadAt(it.file_offset_bytes, it.dst, it.size_bytes);
      } else {
        scratch.resize(it.size_bytes);
        s = file.ReadAt(it.file_offset_bytes, scratch.data(), it.size_bytes);
        if (s.ok()) {
          CastFloats(it.src_dtype, scratch.data(), it.dst_dtype, it.dst,
                     it.size_bytes / static_cast<uint64_t>(DTypeBits(it.src_dtype) / 8));
        }
      }
      if (!s.ok()) {
        s = Status(s.code(), "tensor " + QuoteName(selected[it.tensor_index]->name) + " in " + s.message());
        std::lock_guard<std::mutex> lock(error_mu);
        if (!failed.exchange(true)) first_error = std::move(s);
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads));
  for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (std::thread& th : pool) th.join();
  if (failed.load()) return first_error;  // the arena is unmapped on return

  model.stats_.bytes_read = bytes_read;
  for (const TensorView& v : model.tensors_) model.stats_.bytes_loaded += v.size_bytes;
  model.stats_.arena_bytes = arena.size_bytes();
  model.stats_.driver_allocs = arena.driver_allocs();
  model.stats_.threads = threads;
  model.arena_ = std::make_unique<HostArena>(std::move(arena));
  model.stats_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return model;
}

}  // namespace hoist
