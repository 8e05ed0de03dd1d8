// The safetensors header parser: hostile bytes in, a checked header out.
//
// Every rule of docs/safetensors-format.md is enforced here, before anything
// else in hoist sees a tensor: header length bounds, UTF-8, a JSON object,
// no duplicate keys, known dtypes, non-negative integer shapes and offsets,
// byte sizes computed with overflow checks, and tensors that tile the data
// section exactly. Nothing read from the file is used before it is checked;
// allocations are bounded by the (capped) header length.
//
// All functions are pure (no I/O) except ReadSafetensorsHeader.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hoist/dtype.h"
#include "hoist/status.h"
#include "util/text.h"  // QuoteName

namespace hoist {

class File;

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// DLPack's and PyTorch's limit; also bounds the memory a hostile shape costs.
inline constexpr uint64_t kMaxRank = 64;

struct HeaderTensor {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t begin_bytes = 0;  // relative to the data section
  uint64_t end_bytes = 0;
};

struct ParsedHeader {
  uint64_t header_bytes = 0;      // N, the JSON length
  uint64_t data_offset_bytes = 0; // 8 + N
  uint64_t data_bytes = 0;        // file size - 8 - N
  std::vector<HeaderTensor> tensors;  // sorted by begin_bytes
  std::vector<std::pair<std::string, std::string>> metadata;  // sorted by key
};

// Checks the 8-byte length prefix against the file size. `prefix` holds the
// first min(file_size, 64) bytes of the file (enough to spot a Git LFS
// pointer). Returns N.
Result<uint64_t> CheckHeaderLength(std::string_view label, std::string_view prefix,
                                   uint64_t file_size_bytes);

// Parses and validates the JSON header. `data_bytes` is the size of the data
// section that follows it.
Result<ParsedHeader> ParseHeaderJson(std::string_view label, std::string_view json,
                                     uint64_t data_bytes);

// A whole file held in memory (tests, the fuzzer).
Result<ParsedHeader> ParseSafetensorsBuffer(std::string_view label, std::string_view file_bytes);

// Reads the prefix and the header of an open file, then parses it.
Result<ParsedHeader> ReadSafetensorsHeader(const File& file);


// True when `bytes` is well-formed UTF-8 (no overlongs, no surrogates).
bool IsValidUtf8(std::string_view bytes);

}  // namespace hoist
