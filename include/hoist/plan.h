// LoadPlan: every decision of a load, made before a byte of tensor data is
// read.
//
// BuildPlan takes the catalogue and the user's options and decides, for each
// tensor, its name after key mapping, its target device (a device map in the
// Hugging Face/accelerate format, or a strategy such as "balanced"), its
// target dtype, its byte size on that device and its offset in that device's
// single reservation (256-byte aligned). Reservation sizes are exact: the
// stored bytes of quantized/packed tensors and their scales (never cast),
// tied aliases counted once, `disk` placements counted against no device.
// Planning needs no device: capacities come from the caller.
//
// A LoadPlan is a plain value; it is safe to share once built.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "hoist/catalog.h"
#include "hoist/device.h"
#include "hoist/dtype.h"
#include "hoist/status.h"

namespace hoist {

inline constexpr uint64_t kDeviceTensorAlignBytes = 256;
inline constexpr uint64_t kDefaultGpuMarginBytes = 1288490189;  // 1.2 GiB

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
};

struct PlannedTensor {
  std::string name;             // after key mapping
  const TensorInfo* source = nullptr;
  DeviceId device;
  DType dtype = DType::kU8;     // after any cast
  uint64_t size_bytes = 0;      // on the device
  uint64_t offset_bytes = 0;    // in the device's reservation (disk: 0)
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

  const DevicePlan* FindDevice(DeviceId id) const;
};

Result<LoadPlan> BuildPlan(const Catalog& catalog, const PlanOptions& options);

// "0=20GiB,1=20GiB,cpu=64GiB" -> limits per device.
Result<std::map<DeviceId, uint64_t>> ParseMaxMemory(const std::string& text);

// Reads tie_word_embeddings from a config.json beside the checkpoint (in the
// directory, or beside the file) and returns {"lm_head.weight",
// "model.embed_tokens.weight"} when it is true. Missing config: no ties.
Result<std::vector<std::pair<std::string, std::string>>> TiesFromConfig(const std::string& checkpoint_path);

// Parses --expect: a JSON list of names, or an object name -> {"dtype", "shape"}.
Result<std::vector<ExpectedTensor>> ParseExpect(const std::string& json_text, const std::string& label);

// The tensors that quantization leaves in float but that must never be cast
// (scales, zero points, absmax...): true for names such as
// "...weight_scale", "...weight_scale_inv", "...weight_scale_2", "...SCB",
// "...scales", "...absmax". BuildPlan also never casts a float tensor,
// other than a bias, of a module whose weight is stored quantized.
bool IsQuantizationAuxiliary(const std::string& name);

}  // namespace hoist
