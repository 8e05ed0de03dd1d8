// Loading a checkpoint into host memory.
//
// LoadToHost plans the load from the catalog alone (which tensors, in which
// dtype, at which 64-byte-aligned offset of one arena), reserves the arena
// once, then fills it with parallel positional reads, casting floating-point
// tensors when asked. The returned LoadedModel owns the arena; TensorView
// pointers stay valid as long as the model lives. On any error every byte
// reserved is released before returning.
//
// Thread-safety: a LoadedModel is immutable after LoadToHost returns.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "hoist/catalog.h"
#include "hoist/dtype.h"
#include "hoist/status.h"

namespace hoist {

class HostArena;

inline constexpr uint64_t kHostTensorAlignBytes = 64;

struct LoadOptions {
  // Cast F16/BF16/F32/F64 tensors to this type (BF16, F16 or F32). Other
  // tensors keep their stored type.
  std::optional<DType> cast_to;
  // ECMAScript regex searched in each name; empty selects every tensor.
  std::string only_regex;
  // Reader threads; 0 picks a default from the core count.
  int threads = 0;
  // Largest single read; big tensors are split so threads share them.
  uint64_t chunk_bytes = 8ull << 20;
};

struct TensorView {
  std::string name;
  DType dtype = DType::kU8;        // after any cast
  DType stored_dtype = DType::kU8;  // in the file
  std::vector<uint64_t> shape;
  const unsigned char* data = nullptr;
  uint64_t size_bytes = 0;
  uint64_t offset_bytes = 0;  // in the arena

  // The elements as T. REQUIRES: sizeof(T) * 8 == DTypeBits(dtype).
  template <typename T>
  std::span<const T> as() const {
    return {reinterpret_cast<const T*>(data), size_bytes / sizeof(T)};
  }
};

struct LoadStats {
  uint64_t bytes_read = 0;    // from files
  uint64_t bytes_loaded = 0;  // tensor bytes in memory, after casts
  uint64_t arena_bytes = 0;   // the reservation, alignment padding included
  int driver_allocs = 0;
  int threads = 0;
  double seconds = 0;          // whole load: plan, reserve, read
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

 private:
  friend Result<LoadedModel> LoadToHost(const Catalog&, const LoadOptions&);
  std::unique_ptr<HostArena> arena_;
  std::vector<TensorView> tensors_;
  std::unordered_map<std::string, size_t> index_;
  LoadStats stats_;
};

Result<LoadedModel> LoadToHost(const Catalog& catalog, const LoadOptions& options);

// The default number of reader threads for this machine.
int DefaultReadThreads();

}  // namespace hoist
