// Writing safetensors checkpoints: one file, or Hugging Face-style shards
// (model-0000K-of-0000N.safetensors) with model.safetensors.index.json.
//
// The writer streams: tensor bytes come from a caller-supplied fill function,
// piece by piece, from several threads, so a checkpoint larger than memory
// can be written. Headers are padded with spaces so the data section starts
// 8-byte aligned, as the reference writer does.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "hoist/dtype.h"
#include "hoist/plan.h"
#include "hoist/status.h"

namespace hoist {

struct OutTensor {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t size_bytes = 0;
};

// Fills dst[0, size_bytes) with bytes [offset_bytes, offset_bytes + size_bytes)
// of tensor `index`. offset_bytes is a multiple of 8. Called from several
// threads at once, for disjoint pieces.
using FillFn = std::function<Status(size_t index, uint64_t offset_bytes, uint64_t size_bytes, unsigned char* dst)>;

struct WriteOptions {
  // Shards are cut so none exceeds this (a single larger tensor gets a shard
  // of its own, listed when met), in tensor order, as huggingface_hub does.
  uint64_t max_shard_bytes = 5'000'000'000;
  // A shard whose tensor order would leave one at an offset its element
  // size does not divide is ordered by element size, largest first (as the
  // reference writer's dtype order leaves every tensor aligned). Off: the
  // order given is kept whatever it does (tests that need unaligned files).
  bool align_elements = true;
  // Write headers only and leave the data as a hole in the file.
  bool sparse = false;
  int threads = 0;  // 0: default
  uint64_t piece_bytes = 8ull << 20;
  // metadata.total_size for the index, when it must say something other
  // than the bytes written (hoist synth reproducing a published index).
  std::optional<uint64_t> index_total_size;
  // Files never removed as stale outputs (a conversion's own sources).
  std::vector<std::string> keep_files;
  // When set, the write stops at its next piece (kCancelled) and leaves nothing behind.
  const std::atomic<bool>* cancel = nullptr;
  // Wait until the files are on the disk before renaming them into place,
  // and until the renames are, before returning: a crash then leaves the
  // earlier files or the whole new ones, never new names over data that
  // had not reached the disk yet.
  bool sync = true;
};

struct WriteResult {
  std::vector<std::string> files;  // paths written, index last when there is one
  std::vector<std::string> removed;  // an earlier write's outputs this one replaced
  std::vector<std::string> warnings;  // the source's, and what key mapping found
  uint64_t data_bytes = 0;
  double seconds = 0;
  double sync_seconds = 0;  // of `seconds`, waiting for the disk
};

// Writes `tensors` to `dst`. When every tensor fits in one shard and `dst`
// ends in ".safetensors", that file is written; otherwise `dst` is a
// directory (created if needed) that receives model.safetensors or the
// shards and the index. Every file is written under a temporary name beside
// its own (".hoist-PID-TOKEN-K.partial") and renamed into place once all of
// them are whole: a write that fails or is cancelled (or whose renames
// fail) leaves no partial file a load could take for a checkpoint, leaves
// the earlier output as it was, and removes the directories it made.
Result<WriteResult> WriteCheckpoint(const std::string& dst, const std::vector<OutTensor>& tensors,
                                    const std::map<std::string, std::string>& metadata,
                                    const WriteOptions& options, const FillFn& fill);

// The JSON header for `tensors` laid out back to back in the given order,
// padded with trailing spaces so that 8 + size is a multiple of 8.
std::string BuildHeader(const std::vector<const OutTensor*>& tensors,
                        const std::map<std::string, std::string>& metadata);

// "5GB" (10^9), "5GiB" (2^30), "500MB", "1024" (bytes), "1.5 GB", as Hugging
// Face parses them; the unit's case does not matter, except that "5Gb" (a
// lowercase b after a prefix) is refused: Hugging Face reads it as bits (an
// eighth of 5GB), most people as bytes. A size is more than 0.
Result<uint64_t> ParseByteSize(const std::string& text);
// The same, and 0 with or without a unit ("0", "0GiB"): for limits.
Result<uint64_t> ParseByteCount(const std::string& text);

}  // namespace hoist

namespace hoist {

class Catalog;

struct ConvertOptions {
  std::optional<DType> cast_to;  // BF16, F16 or F32; floats only
  std::string only_regex;        // keep matching tensors only, after key mapping (all when empty)
  // Key mapping, as a load applies it (PlanOptions): compat, drops, renames.
  bool compat_hf_legacy = false;
  std::vector<std::string> drops;
  std::vector<std::pair<std::string, std::string>> renames;  // {regex, replacement}
  // Tensor parallelism, as a load takes it (PlanOptions): only part
  // shard->rank of each tensor a rule names is written, under its name, with
  // the part's shape; the metadata gains "hoist.shard" (RANK/WORLD) and
  // "hoist.split" (the rules, one REGEX=DIM a line).
  std::optional<ShardSpec> shard;
  std::vector<SplitRule> splits;
  WriteOptions write;
};

// Rewrites a checkpoint, optionally cast and re-sharded, keeping its
// metadata. Reads and writes piece by piece: memory use is bounded by the
// threads' piece buffers, not by the model.
Result<WriteResult> ConvertCheckpoint(const Catalog& catalog, const std::string& dst,
                                      const ConvertOptions& options);

}  // namespace hoist
