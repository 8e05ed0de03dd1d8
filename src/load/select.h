// Helpers shared by the loader and the planner: regexes for flags, and
// which dtype and size each tensor ends up in.
#pragma once

#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "hoist/catalog.h"
#include "hoist/dtype.h"
#include "hoist/status.h"

namespace hoist {

// An ECMAScript regex; InvalidArgument naming `flag` when malformed.
Result<std::regex> CompileRegex(const std::string& flag, const std::string& pattern);

// The dtype a tensor stored as `stored` has after a cast to `cast_to`:
// only F16/BF16/F32/F64 are cast.
inline DType TargetDType(DType stored, std::optional<DType> cast_to) {
  return cast_to && IsCastableFloat(stored) ? *cast_to : stored;
}

// Byte size of `stored_bytes` of `stored` elements once cast to `target`
// (element count times the new element size).
uint64_t TargetBytes(uint64_t stored_bytes, DType stored, DType target);

}  // namespace hoist
