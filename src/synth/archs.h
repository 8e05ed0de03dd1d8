// The published architectures `hoist synth` can reproduce: their shapes and
// config.json fields, as released on the Hugging Face hub.
#pragma once

#include <string>
#include <vector>

namespace hoist {

enum class Family { kLlama, kQwen2, kMixtral };

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
  int num_experts;  // Mixtral only
  // config.json fields beyond the shapes, as a JSON object text.
  const char* extra_config;
};

const std::vector<ArchSpec>& Archs();
const ArchSpec* FindArch(const std::string& name);

}  // namespace hoist
