// Strict JSON parsing shared by the header, index and device-map readers.
#pragma once

#include <string_view>

#include <nlohmann/json.hpp>

#include "hoist/status.h"

namespace hoist {

inline constexpr int kMaxJsonDepth = 64;

// Parses `text` as JSON. Also refuses invalid UTF-8, raw NUL bytes, a byte
// order mark and nesting deeper than kMaxJsonDepth. Fails (Corruption, message prefixed by `label`) on a
// syntax error or on an object that repeats a key: a plain parser keeps the
// last value silently, which would let two entries hide one another.
Result<nlohmann::json> ParseJsonStrict(std::string_view label, std::string_view text);

}  // namespace hoist
