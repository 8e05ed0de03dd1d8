// LoadPlan: every decision of a load, made before a byte of tensor data is
// read.
//
// BuildPlan takes the catalogue and the user's options and decides, for each
// tensor, its name after key mapping, its target device (a device map in the
// Hugging Face/accelerate format, or a strategy such as "balanced"), its
// target dtype, its byte size on that device and its offset in that device's
// single reservation (256-byte aligned). Reservation sizes are exact: the
// stored bytes of quantized/packed tensors and their scales (never cast),
// tied aliases counted once, `disk` placements and cpu tensors mapped from
// their files counted against no reservation.
// Planning needs no device: capacities come from the caller.
//
// A LoadPlan is a plain value; it is safe to share once built.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "hoist/catalog.h"
#include "hoist/device.h"
#include "hoist/dtype.h"
#include "hoist/status.h"

namespace hoist {

inline constexpr uint64_t kDeviceTensorAlignBytes = 256;
inline constexpr uint64_t kDefaultGpuMarginBytes = 1288490189;  // 1.2 GiB

// --split: tensors whose name (after mapping) the pattern finds are split
// along `dim` (negative: from the last) into PlanOptions::shard's world
// size of equal parts.
struct SplitRule {
  std::string pattern;  // ECMAScript regex, searched in the name
  int dim = 0;
};

// --shard RANK/WORLD: which of the equal parts a load takes.
struct ShardSpec {
  int rank = 0;
  int world = 1;
};

struct RenameRule {
  std::string pattern;      // ECMAScript regex, searched in the name
  std::string replacement;  // $1-style references allowed
};

// What a caller expects to find (a module's state_dict): names, and
// optionally dtype and shape per name.
struct ExpectedTensor {
  std::string name;
  std::optional<DType> dtype;
  std::optional<std::vector<uint64_t>> shape;
};

struct PlanOptions {
  std::optional<DType> cast_to;  // BF16, F16 or F32; floats only, never quantized data or scales
  std::string only_regex;        // applied to names after mapping

  // Key mapping, applied in this order before anything else.
  bool compat_hf_legacy = false;         // gamma/beta -> weight/bias, drop rotary_emb.inv_freq
  std::vector<std::string> drops;        // regexes searched in the name
  std::vector<RenameRule> renames;       // the first rule that matches is applied
  std::vector<std::pair<std::string, std::string>> ties;  // {alias, source}, names after mapping
  // lm_head.weight shares the input embedding (the first of
  // kInputEmbeddingNames present), as tie_word_embeddings in a config.json says.
  bool tie_word_embeddings = false;
  // When set, only these names are loaded; the rest are reported unexpected.
  std::optional<std::vector<ExpectedTensor>> expect;

  // Placement: one device, or a device map. A map is JSON text in the
  // accelerate format ({"model.layers.0": 0, "": "cpu"}) or one of "auto",
  // "balanced", "balanced_low_0", "sequential".
  std::optional<DeviceId> device;
  std::string device_map;
  std::vector<std::string> no_split;  // regexes naming units a strategy never splits
  // Bytes each device may hold (strategies fill up to these; explicit
  // placements are checked against them when the load reserves).
  std::map<DeviceId, uint64_t> capacity_bytes;
  // Tensor parallelism: a tensor the first matching rule names is split
  // into shard->world equal parts along the rule's dimension, and only part
  // shard->rank is loaded (read from the file and nothing else); the rest
  // load whole. Rules without a shard, or a shard without rules, are an error.
  std::vector<SplitRule> splits;
  std::optional<ShardSpec> shard;
  // cpu tensors that stay as stored (no cast) and whose place in the file
  // suits their element type are mapped from the file (copy-on-write,
  // sharing the page cache) instead of copied into the cpu reservation,
  // which then holds only the rest.
  bool map_host = false;
};

// The part of a tensor a --split takes: elements [start, stop) of
// dimension `dim`.
struct TensorSlice {
  int dim = 0;
  uint64_t start = 0, stop = 0;
};

struct PlannedTensor {
  std::string name;             // after key mapping
  const TensorInfo* source = nullptr;
  std::vector<uint64_t> shape;  // as loaded: the source's, or its slice's
  std::optional<TensorSlice> slice;
  // Where the bytes to load lie in the file: `runs` runs of `run_bytes`
  // each, `stride_bytes` apart, the first at `file_offset_bytes` (one run
  // unless a split cuts across an inner dimension). Without a split: one
  // run, the whole stored tensor.
  uint64_t file_offset_bytes = 0;
  uint64_t runs = 1;
  uint64_t run_bytes = 0;
  uint64_t stride_bytes = 0;
  DeviceId device;
  DType dtype = DType::kU8;     // after any cast
  uint64_t size_bytes = 0;      // on the device
  uint64_t offset_bytes = 0;    // in the device's reservation (disk and mapped: 0)
  bool mapped = false;          // on the cpu, mapped from its file (PlanOptions::map_host)
  int alias_of = -1;            // index of the tensor whose storage this tied alias shares
};

struct DevicePlan {
  DeviceId device;
  uint64_t reserve_bytes = 0;   // the single reservation's exact size
  size_t tensor_count = 0;
};

struct LoadPlan {
  std::vector<PlannedTensor> tensors;   // in catalogue order, then tied aliases
  std::vector<DevicePlan> devices;      // sorted by DeviceId: cpu, cuda:0.., disk
  std::vector<std::string> warnings;    // e.g. device-map keys that match nothing
  // Relative to `expect`, when given.
  std::vector<std::string> missing, unexpected, mismatched;
  // For each of `mismatched`, in order: "'name': expected F32 [2], found BF16 [2]".
  std::vector<std::string> mismatch_notes;

  const DevicePlan* FindDevice(DeviceId id) const;
};

Result<LoadPlan> BuildPlan(const Catalog& catalog, const PlanOptions& options);

// (device, size) pairs -> limits per device: {"0", "20GiB"}, {"cpu", "64GiB"};
// a size of "0" is none.
Result<std::map<DeviceId, uint64_t>> ParseMaxMemory(const std::vector<std::pair<std::string, std::string>>& limits);
// The command's "0=20GiB,1=20GiB,cpu=64GiB" as (device, size) pairs.
Result<std::vector<std::pair<std::string, std::string>>> SplitMaxMemory(const std::string& text);
// Both.
Result<std::map<DeviceId, uint64_t>> ParseMaxMemory(const std::string& text);

// "RANK/WORLD" -> a shard; "REGEX=DIM" (split at the last '=') -> a rule.
Result<ShardSpec> ParseShard(const std::string& text);
Result<SplitRule> ParseSplitRule(const std::string& text);

// The bytes of the file a planned tensor loads (its stored slice).
inline uint64_t StoredBytes(const PlannedTensor& t) { return t.runs * t.run_bytes; }

// The file offset of byte `packed` of a planned tensor's stored bytes.
inline uint64_t FileOffsetOf(const PlannedTensor& t, uint64_t packed) {
  if (t.runs <= 1 || t.run_bytes == 0) return t.file_offset_bytes + packed;
  return t.file_offset_bytes + packed / t.run_bytes * t.stride_bytes + packed % t.run_bytes;
}

// Whether a config.json beside the checkpoint (in the directory, or beside
// the file) says "tie_word_embeddings": true. Missing config: false.
Result<bool> ConfigTiesWordEmbeddings(const std::string& checkpoint_path);

// The names transformers gives the input embedding that a tied
// lm_head.weight shares, most common first (Llama and most decoders, VLM
// language models, OPT, GPT-2/GPT-J, Bloom/Falcon, BART, T5). Not GPT-NeoX,
// whose head is embed_out.
inline constexpr const char* kInputEmbeddingNames[] = {
    "model.embed_tokens.weight",         "model.language_model.embed_tokens.weight",
    "model.decoder.embed_tokens.weight", "transformer.wte.weight",
    "transformer.word_embeddings.weight", "model.shared.weight",
    "shared.weight"};

// Parses --expect: a JSON list of names, or an object name -> {"dtype", "shape"}.
Result<std::vector<ExpectedTensor>> ParseExpect(const std::string& json_text, const std::string& label);

// The float tensors of a checkpoint that quantization keeps beside its
// weights and that a --dtype cast must leave as stored (scales, zero points,
// absmax, ...). A checkpoint is quantized when some tensor named like a
// weight is stored as an integer or a float of 8 bits or fewer. Then:
// - every float tensor but a bias in such a weight's module;
// - names only quantizers use, in any checkpoint: SCB, absmax, qzeros,
//   g_idx, weight_scale, weight_scale_inv, input_scale, weight_scale_2,
//   *_global_scale, the KV-cache scales k_scale, v_scale, q_scale,
//   kv_scale, prob_scale (an fp8 KV cache over bf16 weights), ...;
// - names a model may use for its own parameters (scale, scales, zeros,
//   other *_scale), in quantized checkpoints only: CLIP's logit_scale is
//   cast like any other float.
// HQQ's packed weights (W_q) count as quantized weights.
class QuantizationAux {
 public:
  explicit QuantizationAux(const std::vector<TensorInfo>& tensors);
  bool quantized() const { return !quantized_modules_.empty(); }
  // `name` as stored in the checkpoint.
  bool Contains(const std::string& name) const;

 private:
  std::unordered_set<std::string> quantized_modules_;
};

}  // namespace hoist
