// The Hugging Face shard index (model.safetensors.index.json), parsed as the
// hostile input it is, apart from the files it names, so it can be tested
// and fuzzed on its own. The cross-checks against the shards are the
// catalogue's (catalog.cc).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hoist/status.h"

namespace hoist {

struct ParsedIndex {
  std::vector<std::string> shards;               // each named once, sorted
  std::map<std::string, std::string> shard_of;   // tensor name -> shard
  std::optional<uint64_t> total_size;            // metadata.total_size, when given
};

// Strict JSON (json_util.h); a "weight_map" object of tensor name -> shard
// file name, each a relative path that stays inside the directory; an
// optional metadata.total_size that is a non-negative integer. Errors are
// one line that starts with `label`.
Result<ParsedIndex> ParseIndexJson(const std::string& label, std::string_view text);

}  // namespace hoist
