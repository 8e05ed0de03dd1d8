#include "util/text.h"
#include "hoist/synth.h"

#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "io/file.h"
#include "synth/archs.h"

namespace hoist {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t HashName(const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

// Keeps sign, two exponent bits and the mantissa of each lane of random bits
// and pins the rest of the exponent, so every value is finite, nonzero-ish
// and between 2^-7 and 2^-3 in magnitude.
struct LaneMask {
  uint64_t keep;
  uint64_t set;
};
LaneMask MaskFor(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return {0x81FF81FF81FF81FFull, 0x3C003C003C003C00ull};
    case DType::kF16: return {0x87FF87FF87FF87FFull, 0x2000200020002000ull};
    case DType::kF32: return {0x81FFFFFF81FFFFFFull, 0x3C0000003C000000ull};
    // E4M3FN: clearing the top exponent bit keeps every byte finite (no NaN).
    case DType::kF8_E4M3: return {0xBFBFBFBFBFBFBFBFull, 0};
    default: return {~0ull, 0};
  }
}

void AddTensor(std::vector<OutTensor>* out, const std::string& name, DType dtype,
               std::vector<uint64_t> shape) {
  uint64_t numel = 1;
  for (uint64_t d : shape) numel *= d;
  out->push_back({name, dtype, std::move(shape), numel * static_cast<uint64_t>(DTypeBits(dtype) / 8)});
}

Result<const ArchSpec*> ResolveArch(const SynthOptions& options) {
  const ArchSpec* arch = FindArch(options.arch);
  if (arch == nullptr) {
    std::string known;
    for (const std::string& n : SynthArchNames()) known += (known.empty() ? "" : ", ") + n;
    return InvalidArgument("unknown --arch " + QuoteName(options.arch) + " (known: " + known + ")");
  }
  if (options.dtype != DType::kBF16 && options.dtype != DType::kF16 && options.dtype != DType::kF32) {
    return InvalidArgument("synth --dtype must be bf16, f16 or f32");
  }
  if (options.layers == 0 || options.layers < -1 || options.layers > 10000) {
    return InvalidArgument("--layers must be between 1 and 10000");
  }
  return arch;
}

int LayerCount(const ArchSpec& a, const SynthOptions& o) { return o.layers > 0 ? o.layers : a.num_layers; }

uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// DeepSeek-V3: multi-head latent attention, dense MLPs in the first layers
// and 256 routed experts plus a shared one after them, then the
// multi-token-prediction layer. Linear weights are F8_E4M3, each with an F32
// weight_scale_inv of one value per 128x128 block; the rest is `dt`
// (BF16 as published), the router's bias F32.
std::vector<OutTensor> DeepseekV3Tensors(const ArchSpec& a, int layers, DType dt) {
  const nlohmann::json c = nlohmann::json::parse(a.extra_config);
  const uint64_t h = static_cast<uint64_t>(a.hidden_size), inter = static_cast<uint64_t>(a.intermediate_size);
  const uint64_t heads = static_cast<uint64_t>(a.num_heads), vocab = static_cast<uint64_t>(a.vocab_size);
  const uint64_t experts = static_cast<uint64_t>(a.num_experts);
  const uint64_t q_lora = c["q_lora_rank"], kv_lora = c["kv_lora_rank"], rope = c["qk_rope_head_dim"];
  const uint64_t nope = c["qk_nope_head_dim"], v_dim = c["v_head_dim"], moe_inter = c["moe_intermediate_size"];
  const uint64_t shared = c["n_shared_experts"], block = c["quantization_config"]["weight_block_size"][0];
  const int dense = c["first_k_dense_replace"], nextn = c["num_nextn_predict_layers"];

  std::vector<OutTensor> t;
  auto fp8 = [&](const std::string& name, uint64_t out, uint64_t in) {
    AddTensor(&t, name + ".weight", DType::kF8_E4M3, {out, in});
    AddTensor(&t, name + ".weight_scale_inv", DType::kF32, {CeilDiv(out, block), CeilDiv(in, block)});
  };
  auto mlp = [&](const std::string& p, uint64_t width) {
    fp8(p + "gate_proj", width, h);
    fp8(p + "up_proj", width, h);
    fp8(p + "down_proj", h, width);
  };
  auto layer = [&](int i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    AddTensor(&t, p + "input_layernorm.weight", dt, {h});
    fp8(p + "self_attn.q_a_proj", q_lora, h);
    AddTensor(&t, p + "self_attn.q_a_layernorm.weight", dt, {q_lora});
    fp8(p + "self_attn.q_b_proj", heads * (nope + rope), q_lora);
    fp8(p + "self_attn.kv_a_proj_with_mqa", kv_lora + rope, h);
    AddTensor(&t, p + "self_attn.kv_a_layernorm.weight", dt, {kv_lora});
    fp8(p + "self_attn.kv_b_proj", heads * (nope + v_dim), kv_lora);
    fp8(p + "self_attn.o_proj", h, heads * v_dim);
    AddTensor(&t, p + "post_attention_layernorm.weight", dt, {h});
    if (i < dense) {
      mlp(p + "mlp.", inter);
      return;
    }
    AddTensor(&t, p + "mlp.gate.weight", dt, {experts, h});
    AddTensor(&t, p + "mlp.gate.e_score_correction_bias", DType::kF32, {experts});
    for (uint64_t e = 0; e < experts; ++e) mlp(p + "mlp.experts." + std::to_string(e) + ".", moe_inter);
    mlp(p + "mlp.shared_experts.", moe_inter * shared);
  };

  AddTensor(&t, "model.embed_tokens.weight", dt, {vocab, h});
  for (int i = 0; i < layers; ++i) layer(i);
  AddTensor(&t, "model.norm.weight", dt, {h});
  AddTensor(&t, "lm_head.weight", dt, {vocab, h});
  // The prediction layers follow the decoder's, each a full layer plus its
  // own embedding, norms, projection and head.
  for (int i = layers; i < layers + nextn; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    AddTensor(&t, p + "embed_tokens.weight", dt, {vocab, h});
    AddTensor(&t, p + "enorm.weight", dt, {h});
    AddTensor(&t, p + "hnorm.weight", dt, {h});
    AddTensor(&t, p + "eh_proj.weight", dt, {h, 2 * h});
    layer(i);
    AddTensor(&t, p + "shared_head.norm.weight", dt, {h});
    AddTensor(&t, p + "shared_head.head.weight", dt, {vocab, h});
  }
  return t;
}

}  // namespace

std::vector<std::string> SynthArchNames() {
  std::vector<std::string> names;
  for (const ArchSpec& a : Archs()) names.emplace_back(a.name);
  return names;
}

Result<std::vector<OutTensor>> SynthTensors(const SynthOptions& options) {
  HOIST_ASSIGN_OR_RETURN(const ArchSpec* arch, ResolveArch(options));
  const ArchSpec& a = *arch;
  const DType dt = options.dtype;
  const uint64_t h = static_cast<uint64_t>(a.hidden_size), inter = static_cast<uint64_t>(a.intermediate_size);
  const uint64_t q_out = static_cast<uint64_t>(a.num_heads) * static_cast<uint64_t>(a.head_dim);
  const uint64_t kv_out = static_cast<uint64_t>(a.num_kv_heads) * static_cast<uint64_t>(a.head_dim);
  const uint64_t vocab = static_cast<uint64_t>(a.vocab_size);
  if (a.family == Family::kDeepseekV3) return DeepseekV3Tensors(a, LayerCount(a, options), dt);
  std::vector<OutTensor> t;
  AddTensor(&t, "model.embed_tokens.weight", dt, {vocab, h});
  for (int layer = 0; layer < LayerCount(a, options); ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    AddTensor(&t, p + "self_attn.q_proj.weight", dt, {q_out, h});
    if (a.family == Family::kQwen2) AddTensor(&t, p + "self_attn.q_proj.bias", dt, {q_out});
    AddTensor(&t, p + "self_attn.k_proj.weight", dt, {kv_out, h});
    if (a.family == Family::kQwen2) AddTensor(&t, p + "self_attn.k_proj.bias", dt, {kv_out});
    AddTensor(&t, p + "self_attn.v_proj.weight", dt, {kv_out, h});
    if (a.family == Family::kQwen2) AddTensor(&t, p + "self_attn.v_proj.bias", dt, {kv_out});
    AddTensor(&t, p + "self_attn.o_proj.weight", dt, {h, q_out});
    if (a.family == Family::kMixtral) {
      AddTensor(&t, p + "block_sparse_moe.gate.weight", dt, {static_cast<uint64_t>(a.num_experts), h});
      for (int e = 0; e < a.num_experts; ++e) {
        const std::string ep = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
        AddTensor(&t, ep + "w1.weight", dt, {inter, h});
        AddTensor(&t, ep + "w2.weight", dt, {h, inter});
        AddTensor(&t, ep + "w3.weight", dt, {inter, h});
      }
    } else {
      AddTensor(&t, p + "mlp.gate_proj.weight", dt, {inter, h});
      AddTensor(&t, p + "mlp.up_proj.weight", dt, {inter, h});
      AddTensor(&t, p + "mlp.down_proj.weight", dt, {h, inter});
    }
    AddTensor(&t, p + "input_layernorm.weight", dt, {h});
    AddTensor(&t, p + "post_attention_layernorm.weight", dt, {h});
  }
  AddTensor(&t, "model.norm.weight", dt, {h});
  if (!a.tie_word_embeddings) AddTensor(&t, "lm_head.weight", dt, {vocab, h});
  return t;
}

Result<std::string> SynthConfigJson(const SynthOptions& options) {
  HOIST_ASSIGN_OR_RETURN(const ArchSpec* arch, ResolveArch(options));
  const ArchSpec& a = *arch;
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(a.extra_config);
  config["hidden_size"] = a.hidden_size;
  config["intermediate_size"] = a.intermediate_size;
  config["num_hidden_layers"] = LayerCount(a, options);
  config["num_attention_heads"] = a.num_heads;
  config["num_key_value_heads"] = a.num_kv_heads;
  if (a.head_dim > 0) config["head_dim"] = a.head_dim;
  config["vocab_size"] = a.vocab_size;
  config["tie_word_embeddings"] = a.tie_word_embeddings;
  if (a.family == Family::kMixtral) config["num_local_experts"] = a.num_experts;
  if (a.family == Family::kDeepseekV3) config["n_routed_experts"] = a.num_experts;
  if (a.family == Family::kQwen2) config["max_window_layers"] = LayerCount(a, options);
  const char* torch_dtype = options.dtype == DType::kBF16  ? "bfloat16"
                            : options.dtype == DType::kF16 ? "float16"
                                                           : "float32";
  config["torch_dtype"] = torch_dtype;
  config["hoist_synth"] = {{"arch", a.name}, {"note", "synthetic weights written by hoist synth"}};
  return config.dump(2) + "\n";
}

void SynthFill(const std::string& name, DType dtype, uint64_t offset_bytes, uint64_t size_bytes,
               unsigned char* dst) {
  const uint64_t seed = HashName(name);
  const LaneMask mask = MaskFor(dtype);
  uint64_t word = offset_bytes / 8;
  uint64_t full = size_bytes / 8;
  for (uint64_t i = 0; i < full; ++i) {
    uint64_t v = (SplitMix64(seed ^ (word + i) * 0xD1B54A32D192ED03ull) & mask.keep) | mask.set;
    std::memcpy(dst + i * 8, &v, 8);
  }
  if (uint64_t tail = size_bytes % 8; tail != 0) {
    uint64_t v = (SplitMix64(seed ^ (word + full) * 0xD1B54A32D192ED03ull) & mask.keep) | mask.set;
    std::memcpy(dst + full * 8, &v, tail);
  }
}

Result<WriteResult> WriteSynthCheckpoint(const SynthOptions& options, const std::string& out_dir) {
  // A new or empty directory, never a file nor a directory with something
  // in it: a user's weights there would be overwritten with synthetic ones.
  std::error_code ec;
  if ((std::filesystem::exists(out_dir, ec) && !std::filesystem::is_directory(out_dir, ec)) ||
      EndsWith(out_dir, ".safetensors")) {
    return InvalidArgument(Printable(out_dir) + ": not a directory; synth writes a checkpoint directory "
                           "(config.json and its shards)");
  }
  if (std::filesystem::is_directory(out_dir, ec) && !std::filesystem::is_empty(out_dir, ec)) {
    return InvalidArgument(Printable(out_dir) + ": not empty; synth writes into a new or empty directory "
                           "(remove this one first)");
  }
  HOIST_ASSIGN_OR_RETURN(std::vector<OutTensor> tensors, SynthTensors(options));
  HOIST_ASSIGN_OR_RETURN(std::string config, SynthConfigJson(options));
  const ArchSpec& arch = *FindArch(options.arch);  // SynthTensors checked it
  WriteOptions wo;
  wo.max_shard_bytes = options.max_shard_bytes != 0 ? options.max_shard_bytes : arch.shard_bytes;
  if (arch.family == Family::kDeepseekV3) {
    // The published index gives the model's size at 2 bytes per element, not
    // its FP8 bytes; so does this one, to hold readers to the real thing.
    uint64_t elements = 0;
    for (const OutTensor& t : tensors) elements += t.size_bytes * 8 / static_cast<uint64_t>(DTypeBits(t.dtype));
    wo.index_total_size = 2 * elements;
  }
  wo.sparse = options.sparse;
  wo.threads = options.threads;
  wo.sync = false;  // synthetic data: a crash costs a rerun, not the data
  FillFn fill = [&](size_t index, uint64_t offset, uint64_t size, unsigned char* dst) {
    SynthFill(tensors[index].name, tensors[index].dtype, offset, size, dst);
    return Status::Ok();
  };
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  HOIST_ASSIGN_OR_RETURN(WriteResult result, WriteCheckpoint(out_dir, tensors, metadata, wo, fill));
  std::string config_path = (std::filesystem::path(out_dir) / "config.json").string();
  HOIST_ASSIGN_OR_RETURN(File file, File::Create(config_path));
  HOIST_RETURN_IF_ERROR(file.WriteAt(0, config.data(), config.size()));
  HOIST_RETURN_IF_ERROR(file.Close());
  result.files.push_back(config_path);
  return result;
}

}  // namespace hoist
