// The Hugging Face shard index (model.safetensors.index.json), parsed as the
// hostile input it is, apart from the files it names, so it can be tested
// and fuzzed on its own. The cross-checks against the shards are the
// catalogue's (catalog.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hoist/status.h"

namespace hoist {

struct ParsedIndex {
  std::vector<std::string> shards;  // each named once, sorted
  // weight_map as listed: tensor name -> its shard's position in `shards`.
  // Names are unique.
  std::vector<std::pair<std::string, uint32_t>> weight_map;
  std::optional<uint64_t> total_size;  // metadata.total_size, when given
};

// Strict JSON (json_util.h); a "weight_map" object of tensor name -> shard
// file name, each a relative path that stays inside the directory; an
// optional metadata.total_size that is a non-negative integer. Errors are
// one line that starts with `label`.
Result<ParsedIndex> ParseIndexJson(const std::string& label, std::string_view text);

}  // namespace hoist
