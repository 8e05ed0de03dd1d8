// Device maps, as Hugging Face accelerate users write them, and the
// strategies that compute one ("auto", "balanced", "balanced_low_0",
// "sequential"). See docs/planning.md for the semantics.
#pragma once

#include <cstdint>
#include <map>
#include <regex>
#include <string>
#include <utility>
#include <unordered_set>
#include <vector>

#include "hoist/device.h"
#include "hoist/status.h"

namespace hoist {

using DeviceMapEntries = std::vector<std::pair<std::string, DeviceId>>;

// Parses {"prefix": 0 | "cuda:1" | "cpu" | "disk", ...}. `text` is inline
// JSON, or else the path of a file holding it.
Result<DeviceMapEntries> ParseDeviceMap(const std::string& text);

bool IsDeviceMapStrategy(const std::string& text);

// Explicit map: the longest key that is a dot-boundary prefix of the name
// wins ("" covers everything). A name no key covers is an error; keys that
// cover no name become warnings (a key that covers names but loses each to a
// longer key does not).
// The index of the longest key of `map` that covers `name`, or -1.
int LongestCoveringKey(const std::string& name, const DeviceMapEntries& map);

Result<std::vector<DeviceId>> PlaceByMap(const std::vector<std::string>& names, const DeviceMapEntries& map,
                                         std::vector<std::string>* warnings);

// The unit a strategy never splits: the shortest (outermost) dot-boundary
// prefix matching one of `no_split` in full, else the repeated numbered block
// (model.layers.N, transformer.h.N, ...), else the module (name without its
// last component).
std::string SplitUnitOf(const std::string& name, const std::vector<std::regex>& no_split);

// The order a strategy places units in: the model's forward order as far as
// names tell it. Checkpoints list tensors by name (the reference writer sorts
// them: layers.0, layers.1, layers.10, ..., and lm_head before model.*), so
// units are ordered as a tree of their dotted names, siblings by what their
// names say (front-ends, embeddings, projectors, an encoder before its
// decoder, the rest in file order with numbers by number, final norms,
// heads; PlaceOf in device_map.cc). Returns indices into `units`.
std::vector<size_t> ForwardOrder(const std::vector<std::string>& units);

// What a device holds, for people: the units of `names` (as a strategy cuts
// them, without --no-split) in ForwardOrder, runs of consecutive numbered
// siblings written as ranges: "model.embed_tokens, model.layers.0-13".
// Units in `partial` (split between devices) read "part of model.layers.0".
// Past about `max_chars`, the units left are counted: "..., and 12 more".
std::string DescribeUnits(const std::vector<std::string>& names, const std::unordered_set<std::string>& partial = {},
                          size_t max_chars = 160);

// Strategy placement: walks units in ForwardOrder and fills devices up to
// their capacities, never going back: GPUs in index order (balanced_low_0:
// GPU 0 after the others), then cpu, then disk when --max-memory allows it.
// `sizes` are the bytes each tensor takes on a device (0 for aliases).
Result<std::vector<DeviceId>> PlaceByStrategy(const std::vector<std::string>& names,
                                              const std::vector<uint64_t>& sizes, const std::string& strategy,
                                              const std::map<DeviceId, uint64_t>& capacity_bytes,
                                              const std::vector<std::regex>& no_split);

}  // namespace hoist
