// The published architectures `hoist synth` can reproduce: their shapes and
// config.json fields, as released on the Hugging Face hub.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hoist {

enum class Family { kLlama, kQwen2, kMixtral, kDeepseekV3 };

struct ArchSpec {
  const char* name;
  Family family;
  int hidden_size;
  int intermediate_size;
  int num_layers;
  int num_heads;
  int num_kv_heads;
  int head_dim;
  int vocab_size;
  bool tie_word_embeddings;
  int num_experts;  // Mixtral and DeepSeek-V3 (routed experts)
  // config.json fields beyond the shapes, as a JSON object text. DeepSeek-V3
  // also takes its attention and expert sizes from here.
  const char* extra_config;
  // The largest shard of the published checkpoint, roughly; `hoist synth`
  // cuts shards at this size unless told otherwise.
  uint64_t shard_bytes = 5'000'000'000;
};

const std::vector<ArchSpec>& Archs();
const ArchSpec* FindArch(const std::string& name);

}  // namespace hoist
