// Catalog: what a checkpoint holds, read from its headers only.
//
// OpenCatalog accepts a .safetensors file, a directory with a Hugging Face
// index (model.safetensors.index.json) or a directory of .safetensors files.
// Every header is validated (docs/safetensors-format.md) and, for sharded
// checkpoints, cross-checked against the index before the catalog is
// returned; no tensor data is read. A Catalog is an immutable value: share it
// across threads freely.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "hoist/dtype.h"
#include "hoist/status.h"

namespace hoist {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint32_t file_index = 0;    // into Catalog::files
  uint64_t offset_bytes = 0;  // absolute position in the file
  uint64_t size_bytes = 0;
};

struct CatalogFile {
  std::string path;
  uint64_t size_bytes = 0;         // on disk (apparent size)
  uint64_t data_offset_bytes = 0;  // 8 + header length
};

class Catalog {
 public:
  const std::vector<CatalogFile>& files() const { return files_; }
  // In file order, then by offset within each file.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // Union of every file's __metadata__ (the first file wins on conflicts).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t total_bytes() const { return total_bytes_; }
  // nullptr when absent.
  const TensorInfo* Find(const std::string& name) const;
  // What the checkpoint gets wrong that hoist tolerates, one line each (see
  // OpenCatalog).
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  friend class CatalogBuilder;
  std::vector<CatalogFile> files_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::unordered_map<std::string, size_t> index_;
  uint64_t total_bytes_ = 0;
  std::vector<std::string> warnings_;
};

inline constexpr const char* kIndexFileName = "model.safetensors.index.json";

// An index whose metadata.total_size disagrees with the shards is corrupt,
// with one exception that real checkpoints need: in a checkpoint holding
// floats narrower than 16 bits (FP8, FP6, FP4), a total of exactly 2 bytes
// per element, the size of the model in 16-bit floats, which such releases'
// indexes keep (DeepSeek-V3's FP8 index says 1,369,062,772,000 bytes; its
// shards hold 688,574,839,360). That one is a warning.
Result<Catalog> OpenCatalog(const std::string& path);

}  // namespace hoist
