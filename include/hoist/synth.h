// Synthetic checkpoints with real architectures' exact tensor names, shapes
// and sharding, filled with deterministic pseudo-random values, plus the
// config.json that transformers needs to build the model.
//
// The data is a pure function of (tensor name, byte offset), so every run and
// every thread count writes identical files. Values are finite and small
// (magnitudes 2^-7 .. 2^-3) so a model built on them computes without NaNs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hoist/dtype.h"
#include "hoist/status.h"
#include "hoist/writer.h"

namespace hoist {

struct SynthOptions {
  std::string arch;                // see SynthArchNames()
  DType dtype = DType::kBF16;      // BF16, F16 or F32
  int layers = -1;                 // -1: the architecture's own count
  bool sparse = false;             // headers only, data left as file holes
  uint64_t max_shard_bytes = 0;   // 0: the published checkpoint's (5 GB for most)
  int threads = 0;
};

std::vector<std::string> SynthArchNames();

// The tensors of `options.arch` in the order Hugging Face saves them.
Result<std::vector<OutTensor>> SynthTensors(const SynthOptions& options);

// The config.json text for `options`.
Result<std::string> SynthConfigJson(const SynthOptions& options);

// Fills bytes [offset, offset+size) of a tensor named `name` of `dtype`.
// REQUIRES: offset % 8 == 0.
void SynthFill(const std::string& name, DType dtype, uint64_t offset_bytes, uint64_t size_bytes,
               unsigned char* dst);

// Writes the checkpoint and config.json into out_dir.
Result<WriteResult> WriteSynthCheckpoint(const SynthOptions& options, const std::string& out_dir);

}  // namespace hoist
