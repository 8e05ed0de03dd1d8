#include "synth/archs.h"

namespace hoist {

namespace {

constexpr const char* kLlama31Extra = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "attention_bias": false, "mlp_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "initializer_range": 0.02,
  "max_position_embeddings": 131072, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "use_cache": true,
  "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}})";

constexpr const char* kLlama32Extra = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "attention_bias": false, "mlp_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "initializer_range": 0.02,
  "max_position_embeddings": 131072, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "use_cache": true,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}})";

constexpr const char* kTinyExtra = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
  "attention_bias": false, "mlp_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02,
  "max_position_embeddings": 2048, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0, "use_cache": true})";

constexpr const char* kQwen25Extra = R"({
  "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
  "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
  "initializer_range": 0.02, "max_position_embeddings": 131072, "max_window_layers": 28,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072,
  "use_sliding_window": false, "use_cache": true})";

constexpr const char* kMixtral7Extra = R"({
  "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu",
  "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02,
  "max_position_embeddings": 32768, "num_experts_per_tok": 2, "output_router_logits": false,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
  "sliding_window": null, "use_cache": true})";

constexpr const char* kMixtral22Extra = R"({
  "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu",
  "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02,
  "max_position_embeddings": 65536, "num_experts_per_tok": 2, "output_router_logits": false,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
  "sliding_window": null, "use_cache": true})";

// deepseek-ai/DeepSeek-V3 as released (FP8 weights in 128x128 blocks with
// F32 inverse scales, BF16 embeddings, norms and router). num_hidden_layers
// counts the decoder layers; the multi-token-prediction layer after them is
// in the checkpoint too (num_nextn_predict_layers).
constexpr const char* kDeepseekV3Extra = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "attention_bias": false, "attention_dropout": 0.0,
  "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
               "AutoModel": "modeling_deepseek.DeepseekV3Model",
               "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
  "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
  "initializer_range": 0.02, "kv_lora_rank": 512, "max_position_embeddings": 163840,
  "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_shared_experts": 1,
  "norm_topk_prob": true, "num_experts_per_tok": 8, "num_nextn_predict_layers": 1,
  "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "topk_group": 4,
  "topk_method": "noaux_tc", "use_cache": true, "v_head_dim": 128})";

}  // namespace

const std::vector<ArchSpec>& Archs() {
  //                name             family          hidden inter  layers heads kv  hdim vocab   tied   experts
  static const std::vector<ArchSpec> kArchs = {
      {"tiny-llama", Family::kLlama, 64, 128, 2, 4, 2, 16, 512, false, 0, kTinyExtra},
      {"llama-3.2-1b", Family::kLlama, 2048, 8192, 16, 32, 8, 64, 128256, true, 0, kLlama32Extra},
      {"llama-3.1-8b", Family::kLlama, 4096, 14336, 32, 32, 8, 128, 128256, false, 0, kLlama31Extra},
      {"llama-3.1-70b", Family::kLlama, 8192, 28672, 80, 64, 8, 128, 128256, false, 0, kLlama31Extra},
      {"qwen2.5-7b", Family::kQwen2, 3584, 18944, 28, 28, 4, 128, 152064, false, 0, kQwen25Extra},
      {"mixtral-8x7b", Family::kMixtral, 4096, 14336, 32, 32, 8, 128, 32000, false, 8, kMixtral7Extra},
      {"mixtral-8x22b", Family::kMixtral, 6144, 16384, 56, 48, 8, 128, 32000, false, 8, kMixtral22Extra},
      // Most of the published 163 shards hold 4.30 GB.
      {"deepseek-v3", Family::kDeepseekV3, 7168, 18432, 61, 128, 128, 0, 129280, false, 256, kDeepseekV3Extra,
       4'310'000'000},
  };
  return kArchs;
}

const ArchSpec* FindArch(const std::string& name) {
  for (const ArchSpec& a : Archs()) {
    if (name == a.name) return &a;
  }
  return nullptr;
}

}  // namespace hoist
