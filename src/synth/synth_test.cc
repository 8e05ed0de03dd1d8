#include "hoist/synth.h"

#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <map>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "hoist/catalog.h"
#include "testing/temp_dir.h"

namespace hoist {
namespace {

struct Published {
  const char* arch;
  size_t tensors;
  uint64_t bytes;  // tensor bytes (bf16 but for deepseek-v3's fp8 release)
};

// Tensor counts and bf16 byte totals of the checkpoints as published on the
// Hugging Face hub.
const Published kPublished[] = {
    {"llama-3.2-1b", 146, 2'471'628'800},
    {"llama-3.1-8b", 291, 16'060'522'496},
    {"llama-3.1-70b", 723, 141'107'412'992},
    {"qwen2.5-7b", 339, 15'231'233'024},
    {"mixtral-8x7b", 995, 93'405'585'408},
    {"mixtral-8x22b", 1739, 281'241'268'224},
    // From a header audit of every shard of deepseek-ai/DeepSeek-V3 (revision
    // e815299): 91,991 tensors, 688,574,839,360 bytes of them.
    {"deepseek-v3", 91991, 688'574'839'360},
};

TEST(SynthTest, MatchesPublishedCountsAndBytes) {
  for (const Published& p : kPublished) {
    SynthOptions o;
    o.arch = p.arch;
    Result<std::vector<OutTensor>> tensors = SynthTensors(o);
    ASSERT_TRUE(tensors.ok()) << p.arch;
    uint64_t bytes = 0;
    for (const OutTensor& t : *tensors) bytes += t.size_bytes;
    EXPECT_EQ(tensors->size(), p.tensors) << p.arch;
    EXPECT_EQ(bytes, p.bytes) << p.arch;
  }
}

TEST(SynthTest, DeepseekV3MatchesThePublishedDtypesAndIndex) {
  SynthOptions o;
  o.arch = "deepseek-v3";
  Result<std::vector<OutTensor>> tensors = SynthTensors(o);
  ASSERT_TRUE(tensors.ok());
  std::map<DType, size_t> count;
  uint64_t elements = 0;
  std::map<std::string, const OutTensor*> by_name;
  for (const OutTensor& t : *tensors) {
    ++count[t.dtype];
    uint64_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    elements += n;
    by_name[t.name] = &t;
  }
  // The same audit: BF16 316, F8_E4M3 45,808, F32 45,867; 684,531,386,000
  // elements, which at 2 bytes each is the published index's total_size.
  EXPECT_EQ(count[DType::kBF16], 316u);
  EXPECT_EQ(count[DType::kF8_E4M3], 45808u);
  EXPECT_EQ(count[DType::kF32], 45867u);
  EXPECT_EQ(elements, 684'531'386'000u);
  auto shape = [&](const std::string& name) {
    auto it = by_name.find(name);
    return it == by_name.end() ? std::vector<uint64_t>{} : it->second->shape;
  };
  EXPECT_EQ(shape("model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"), (std::vector<uint64_t>{5, 56}));
  EXPECT_EQ(shape("model.layers.2.mlp.down_proj.weight"), (std::vector<uint64_t>{7168, 18432}));
  EXPECT_EQ(shape("model.layers.3.mlp.experts.255.down_proj.weight_scale_inv"), (std::vector<uint64_t>{56, 16}));
  EXPECT_EQ(shape("model.layers.61.eh_proj.weight"), (std::vector<uint64_t>{7168, 14336}));
  EXPECT_EQ(by_name.count("model.layers.2.mlp.gate.weight"), 0u);  // dense
  EXPECT_EQ(by_name.count("model.layers.62.input_layernorm.weight"), 0u);

  // Written sparse, its index says what the published one says, and opens
  // with a warning about it.
  testing::TempDir dir;
  o.sparse = true;
  o.layers = 4;
  ASSERT_TRUE(WriteSynthCheckpoint(o, dir.path().string()).ok());
  Result<Catalog> cat = OpenCatalog(dir.path().string());
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  EXPECT_EQ(cat->warnings().size(), 1u);
  uint64_t small_elements = 0;
  for (const TensorInfo& t : cat->tensors()) {
    uint64_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    small_elements += n;
  }
  std::ifstream index_file(dir.path() / kIndexFileName);
  auto index = nlohmann::json::parse(index_file);
  EXPECT_EQ(index["metadata"]["total_size"], 2 * small_elements);
  EXPECT_LT(cat->total_bytes(), 2 * small_elements);
  EXPECT_NE(cat->Find("model.layers.4.shared_head.head.weight"), nullptr);  // the MTP layer follows layer 3
  auto config = nlohmann::json::parse(*SynthConfigJson(o));
  EXPECT_EQ(config["num_hidden_layers"], 4);
  EXPECT_EQ(config["n_routed_experts"], 256);
  EXPECT_FALSE(config.contains("head_dim"));
}

TEST(SynthTest, TiedEmbeddingsHaveNoLmHead) {
  SynthOptions o;
  o.arch = "llama-3.2-1b";
  auto tensors = SynthTensors(o);
  ASSERT_TRUE(tensors.ok());
  for (const OutTensor& t : *tensors) EXPECT_NE(t.name, "lm_head.weight");
  o.arch = "llama-3.1-8b";
  tensors = SynthTensors(o);
  EXPECT_EQ(tensors->back().name, "lm_head.weight");
  EXPECT_EQ(tensors->back().shape, (std::vector<uint64_t>{128256, 4096}));
}

TEST(SynthTest, LayersScaleTheModelAndConfig) {
  SynthOptions o;
  o.arch = "llama-3.1-8b";
  o.layers = 2;
  auto tensors = SynthTensors(o);
  ASSERT_TRUE(tensors.ok());
  EXPECT_EQ(tensors->size(), 2u * 9 + 3);
  auto config = nlohmann::json::parse(*SynthConfigJson(o));
  EXPECT_EQ(config["num_hidden_layers"], 2);
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
  EXPECT_EQ(config["hidden_size"], 4096);
}

TEST(SynthTest, RejectsUnknownArchAndBadOptions) {
  SynthOptions o;
  o.arch = "gpt-9";
  EXPECT_EQ(SynthTensors(o).status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(SynthTensors(o).status().message().find("llama-3.1-8b"), std::string::npos);
  o.arch = "tiny-llama";
  o.dtype = DType::kI8;
  EXPECT_FALSE(SynthTensors(o).ok());
}

TEST(SynthTest, FillIsAFunctionOfNameAndOffsetOnly) {
  std::vector<unsigned char> whole(4096), piece(1000);
  SynthFill("x.weight", DType::kBF16, 0, whole.size(), whole.data());
  SynthFill("x.weight", DType::kBF16, 1024, piece.size(), piece.data());
  EXPECT_EQ(std::memcmp(whole.data() + 1024, piece.data(), piece.size()), 0);
  std::vector<unsigned char> other(4096);
  SynthFill("y.weight", DType::kBF16, 0, other.size(), other.data());
  EXPECT_NE(std::memcmp(whole.data(), other.data(), other.size()), 0);
}

TEST(SynthTest, ValuesAreFiniteAndSmall) {
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    std::vector<unsigned char> buf(1 << 16);
    SynthFill("w", dt, 0, buf.size(), buf.data());
    size_t elem = static_cast<size_t>(DTypeBits(dt) / 8);
    for (size_t i = 0; i < buf.size(); i += elem) {
      float v;
      if (dt == DType::kF32) {
        std::memcpy(&v, &buf[i], 4);
      } else {
        uint16_t h;
        std::memcpy(&h, &buf[i], 2);
        // Decode through the exponent field only: magnitude bounds are what matter.
        int exp = dt == DType::kBF16 ? ((h >> 7) & 0xFF) - 127 : ((h >> 10) & 0x1F) - 15;
        v = std::ldexp(1.0f, exp);
      }
      ASSERT_TRUE(std::isfinite(v)) << DTypeName(dt) << " at " << i;
      ASSERT_LT(std::fabs(v), 0.25f) << DTypeName(dt);
      ASSERT_GE(std::fabs(v), 1.0f / 128) << DTypeName(dt);
    }
  }
}

TEST(SynthTest, SparseWritesHeadersAndHoles) {
  testing::TempDir dir;
  SynthOptions o;
  o.arch = "llama-3.1-8b";
  o.sparse = true;
  Result<WriteResult> r = WriteSynthCheckpoint(o, dir / "l8");
  ASSERT_TRUE(r.ok()) << r.status().message();
  Result<Catalog> cat = OpenCatalog(dir / "l8");
  ASSERT_TRUE(cat.ok()) << cat.status().message();
  EXPECT_EQ(cat->tensors().size(), 291u);
  EXPECT_EQ(cat->total_bytes(), 16'060'522'496u);
  EXPECT_EQ(cat->files().size(), 4u);
  uint64_t allocated = 0;
  for (const CatalogFile& f : cat->files()) {
    struct stat st {};
    ASSERT_EQ(::stat(f.path.c_str(), &st), 0);
    EXPECT_LE(f.size_bytes, 5'000'000'000u);
    allocated += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  EXPECT_LT(allocated, 64u << 20) << "sparse files should occupy almost nothing on disk";
}

}  // namespace
}  // namespace hoist
