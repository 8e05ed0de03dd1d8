#include "hoist/plan.h"
#include "util/text.h"

#include <fstream>
#include <regex>

#include <gtest/gtest.h>

#include "hoist/synth.h"
#include "hoist/writer.h"
#include "plan/device_map.h"
#include "testing/temp_dir.h"

namespace hoist {
namespace {

// Writes a header-only (sparse) checkpoint and opens its catalogue.
class PlanTest : public ::testing::Test {
 protected:
  const Catalog& Make(const std::vector<OutTensor>& tensors) {
    WriteOptions wo;
    wo.sparse = true;
    wo.align_elements = false;  // the layout as given: tests place tensors where they need them
    std::string path = dir_ / ("m" + std::to_string(n_++) + ".safetensors");
    auto written = WriteCheckpoint(path, tensors, {}, wo, nullptr);
    EXPECT_TRUE(written.ok()) << written.status().message();
    auto cat = OpenCatalog(path);
    EXPECT_TRUE(cat.ok()) << cat.status().message();
    catalogs_.push_back(std::make_unique<Catalog>(std::move(cat).value()));
    return *catalogs_.back();
  }
  const Catalog& Synth(const std::string& arch, int layers = -1) {
    SynthOptions so;
    so.arch = arch;
    so.layers = layers;
    so.sparse = true;
    std::string out = dir_ / (arch + std::to_string(n_++));
    EXPECT_TRUE(WriteSynthCheckpoint(so, out).ok());
    auto cat = OpenCatalog(out);
    EXPECT_TRUE(cat.ok());
    catalogs_.push_back(std::make_unique<Catalog>(std::move(cat).value()));
    paths_.push_back(out);
    return *catalogs_.back();
  }
  static const PlannedTensor* Find(const LoadPlan& p, const std::string& name) {
    for (const PlannedTensor& t : p.tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  static OutTensor T(const std::string& name, DType dt, std::vector<uint64_t> shape) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return {name, dt, shape, n * static_cast<uint64_t>(DTypeBits(dt)) / 8};
  }

  hoist::testing::TempDir dir_;
  std::vector<std::unique_ptr<Catalog>> catalogs_;
  std::vector<std::string> paths_;
  int n_ = 0;
};

TEST_F(PlanTest, OneDeviceOffsetsAreAlignedAndReservationExact) {
  const Catalog& cat = Make({T("a", DType::kBF16, {3}), T("b", DType::kF32, {100}), T("c", DType::kU8, {1})});
  PlanOptions o;
  o.device = DeviceId::Cuda(0);
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  ASSERT_EQ(plan->devices.size(), 1u);
  EXPECT_EQ(plan->devices[0].device, DeviceId::Cuda(0));
  EXPECT_EQ(Find(*plan, "a")->offset_bytes, 0u);
  EXPECT_EQ(Find(*plan, "b")->offset_bytes, 256u);
  EXPECT_EQ(Find(*plan, "c")->offset_bytes, 768u);  // 256 + 400 rounded up to 512
  EXPECT_EQ(plan->devices[0].reserve_bytes, 769u);
  for (const PlannedTensor& t : plan->tensors) EXPECT_EQ(t.offset_bytes % kDeviceTensorAlignBytes, 0u);
}

TEST_F(PlanTest, QuantizedAndScaleTensorsKeepStoredSizeUnderCast) {
  const Catalog& cat = Make({T("q.weight", DType::kI8, {64, 64}), T("q.weight_scale", DType::kF32, {64}),
                             T("f.weight", DType::kF8_E4M3, {32}), T("f.weight_scale_inv", DType::kBF16, {1}),
                             T("p.weight", DType::kF4, {16, 16}), T("p.absmax", DType::kF32, {4}),
                             T("n.weight", DType::kF32, {10}), T("g.qweight", DType::kI32, {8, 4})});
  PlanOptions o;
  o.device = DeviceId::Cuda(0);
  o.cast_to = DType::kBF16;
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(Find(*plan, "q.weight")->size_bytes, 4096u);
  EXPECT_EQ(Find(*plan, "q.weight_scale")->dtype, DType::kF32);
  EXPECT_EQ(Find(*plan, "q.weight_scale")->size_bytes, 256u);
  EXPECT_EQ(Find(*plan, "f.weight")->size_bytes, 32u);
  EXPECT_EQ(Find(*plan, "f.weight_scale_inv")->dtype, DType::kBF16);
  EXPECT_EQ(Find(*plan, "p.weight")->size_bytes, 128u);  // 256 x 4 bits
  EXPECT_EQ(Find(*plan, "p.absmax")->dtype, DType::kF32);
  EXPECT_EQ(Find(*plan, "n.weight")->dtype, DType::kBF16);  // an ordinary float is cast
  EXPECT_EQ(Find(*plan, "n.weight")->size_bytes, 20u);
  EXPECT_EQ(Find(*plan, "g.qweight")->size_bytes, 128u);
}

// Scales under names of their own (bitsandbytes int8's SCB, NVFP4's
// weight_scale_2), or under any name beside a quantized weight, keep their
// stored dtype; biases and the floats of unquantized modules are cast.
TEST_F(PlanTest, ScalesOfQuantizedWeightsAreNeverCastWhateverTheirName) {
  const Catalog& cat = Make({T("a.weight", DType::kI8, {8, 8}), T("a.SCB", DType::kF32, {8}),
                             T("a.bias", DType::kF16, {8}), T("b.weight", DType::kU8, {8, 4}),
                             T("b.weight_scale", DType::kF8_E4M3, {8}), T("b.weight_scale_2", DType::kF32, {1}),
                             T("b.input_scale", DType::kF32, {1}), T("c.qweight", DType::kI32, {4, 8}),
                             T("c.oddly_named_factor", DType::kF16, {8}), T("d.weight", DType::kF32, {8}),
                             T("d.position_ids", DType::kI64, {8}), T("d.layer_gain", DType::kF32, {8}),
                             T("e.weight_global_scale", DType::kF32, {1}), T("e.weight", DType::kF32, {8})});
  PlanOptions o;
  o.device = DeviceId::Cuda(0);
  o.cast_to = DType::kBF16;
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  for (const char* kept : {"a.SCB", "b.weight_scale_2", "b.input_scale", "e.weight_global_scale"}) {
    EXPECT_EQ(Find(*plan, kept)->dtype, DType::kF32) << kept;
    EXPECT_EQ(Find(*plan, kept)->size_bytes, Find(*plan, kept)->source->size_bytes) << kept;
  }
  EXPECT_EQ(Find(*plan, "c.oddly_named_factor")->dtype, DType::kF16);  // beside int32-packed qweight
  EXPECT_EQ(Find(*plan, "a.bias")->dtype, DType::kBF16);
  EXPECT_EQ(Find(*plan, "d.weight")->dtype, DType::kBF16);  // an int64 buffer is not a quantized weight
  EXPECT_EQ(Find(*plan, "d.layer_gain")->dtype, DType::kBF16);
  EXPECT_EQ(Find(*plan, "e.weight")->dtype, DType::kBF16);
  const QuantizationAux quantized(cat.tensors());
  EXPECT_TRUE(quantized.quantized());
  EXPECT_TRUE(quantized.Contains("x.k_scale"));  // fp8 KV-cache scale
  EXPECT_TRUE(quantized.Contains("x.scales"));
  EXPECT_TRUE(quantized.Contains("x.weight_scale_inv"));
  EXPECT_FALSE(quantized.Contains("x.weight_scale_x"));
  EXPECT_FALSE(quantized.Contains("block.layer_scale_1"));  // PoolFormer's own parameter
  EXPECT_FALSE(quantized.Contains("x.scaled_weight"));
}

// In a checkpoint without quantized weights, names a model may use for its
// own parameters (CLIP's logit_scale, a norm's scale) are cast like any
// float; names only quantizers write are still kept.
TEST_F(PlanTest, ScaleNamedParametersOfUnquantizedModelsAreCast) {
  const Catalog& cat = Make({T("logit_scale", DType::kF32, {}), T("text.norm.scale", DType::kF32, {8}),
                             T("text.proj.weight", DType::kF32, {8, 8}), T("a.k_scale", DType::kF32, {1}),
                             T("b.weight_scale_inv", DType::kF32, {1})});
  const QuantizationAux aux(cat.tensors());
  EXPECT_FALSE(aux.quantized());
  PlanOptions o;
  o.device = DeviceId::Cpu();
  o.cast_to = DType::kBF16;
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  for (const char* cast : {"logit_scale", "text.norm.scale", "text.proj.weight"}) {
    EXPECT_EQ(Find(*plan, cast)->dtype, DType::kBF16) << cast;
  }
  // A quantizer's names: weight scales, and an fp8 KV cache's scales beside
  // bf16 weights.
  for (const char* kept : {"b.weight_scale_inv", "a.k_scale"}) EXPECT_EQ(Find(*plan, kept)->dtype, DType::kF32) << kept;
  // HQQ: packed W_q makes its module's scale and zero quantization data.
  auto hqq = BuildPlan(Make({T("m.W_q", DType::kU8, {8, 8}), T("m.scale", DType::kF16, {8}),
                             T("m.zero", DType::kF16, {8}), T("m.bias", DType::kF16, {8})}),
                       o);
  ASSERT_TRUE(hqq.ok());
  EXPECT_EQ(Find(*hqq, "m.scale")->dtype, DType::kF16);
  EXPECT_EQ(Find(*hqq, "m.zero")->dtype, DType::kF16);
  EXPECT_EQ(Find(*hqq, "m.bias")->dtype, DType::kBF16);
}

TEST_F(PlanTest, TiedWeightsAreCountedOnce) {
  const Catalog& cat = Make({T("model.embed_tokens.weight", DType::kBF16, {100, 8}),
                             T("lm_head.weight", DType::kBF16, {100, 8}), T("model.norm.weight", DType::kBF16, {8})});
  PlanOptions o;
  o.device = DeviceId::Cuda(0);
  auto untied = BuildPlan(cat, o);
  o.ties = {{"lm_head.weight", "model.embed_tokens.weight"}};
  auto tied = BuildPlan(cat, o);
  ASSERT_TRUE(tied.ok() && untied.ok());
  // The alias's 1600 bytes (256-aligned: 1792) are no longer reserved.
  EXPECT_EQ(untied->devices[0].reserve_bytes - tied->devices[0].reserve_bytes, 1792u);
  const PlannedTensor* head = Find(*tied, "lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_GE(head->alias_of, 0);
  EXPECT_EQ(head->size_bytes, 0u);
  EXPECT_EQ(head->offset_bytes, Find(*tied, "model.embed_tokens.weight")->offset_bytes);
}

TEST_F(PlanTest, TieAddsAliasMissingFromCheckpointAndReadsConfig) {
  const Catalog& cat = Synth("llama-3.2-1b", 1);
  auto tied_config = ConfigTiesWordEmbeddings(paths_.back());
  ASSERT_TRUE(tied_config.ok());
  ASSERT_TRUE(*tied_config);
  PlanOptions o;
  o.device = DeviceId::Cuda(0);
  o.tie_word_embeddings = true;
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  uint64_t sum = 0;
  for (const PlannedTensor& t : plan->tensors) sum += t.size_bytes;
  EXPECT_EQ(sum, cat.total_bytes());  // the alias adds nothing
  ASSERT_NE(Find(*plan, "lm_head.weight"), nullptr);
  EXPECT_EQ(plan->tensors[static_cast<size_t>(Find(*plan, "lm_head.weight")->alias_of)].name,
            "model.embed_tokens.weight");
  EXPECT_EQ(plan->tensors.size(), cat.tensors().size() + 1);

  Synth("llama-3.1-8b", 1);
  auto untied = ConfigTiesWordEmbeddings(paths_.back());
  ASSERT_TRUE(untied.ok());
  EXPECT_FALSE(*untied);
}

// GPT-2 and others name the input embedding otherwise; a model whose
// embedding hoist does not know gets a warning, not a wrong tie.
TEST_F(PlanTest, TiedWordEmbeddingsFindTheInputEmbeddingByItsName) {
  PlanOptions o;
  o.device = DeviceId::Cpu();
  o.tie_word_embeddings = true;
  auto gpt2 = BuildPlan(Make({T("transformer.wte.weight", DType::kF32, {10, 4}),
                              T("transformer.h.0.mlp.c_fc.weight", DType::kF32, {4, 4})}),
                        o);
  ASSERT_TRUE(gpt2.ok()) << gpt2.status().message();
  const PlannedTensor* head = Find(*gpt2, "lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(gpt2->tensors[static_cast<size_t>(head->alias_of)].name, "transformer.wte.weight");
  EXPECT_TRUE(gpt2->warnings.empty());
  auto unknown = BuildPlan(Make({T("encoder.tok.weight", DType::kF32, {10, 4})}), o);
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ(Find(*unknown, "lm_head.weight"), nullptr);
  ASSERT_EQ(unknown->warnings.size(), 1u);
  EXPECT_NE(unknown->warnings[0].find("--tie"), std::string::npos);
}

TEST_F(PlanTest, BadTiesAreRefusedAndChainsResolve) {
  const Catalog& cat = Make({T("a", DType::kBF16, {4}), T("b", DType::kBF16, {4}), T("c", DType::kBF16, {4}),
                             T("f", DType::kF32, {4})});
  PlanOptions o;
  o.device = DeviceId::Cpu();
  o.ties = {{"a", "a"}};
  EXPECT_EQ(BuildPlan(cat, o).status().code(), StatusCode::kInvalidArgument);
  o.ties = {{"f", "a"}};  // same shape, other dtype: an alias would misread the bytes
  auto plan = BuildPlan(cat, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("F32 [4] vs BF16 [4]"), std::string::npos) << plan.status().message();
  o.ties = {{"a", "b"}, {"b", "a"}};
  plan = BuildPlan(cat, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("loop"), std::string::npos) << plan.status().message();
  o.ties = {{"c", "b"}, {"b", "a"}};  // c -> b -> a: both read a's bytes
  plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->tensors[static_cast<size_t>(Find(*plan, "c")->alias_of)].name, "a");
  EXPECT_EQ(plan->tensors[static_cast<size_t>(Find(*plan, "b")->alias_of)].name, "a");
  EXPECT_EQ(plan->devices[0].reserve_bytes, 256u + 16u);  // a (at 0) and f (at 256) only
}

TEST_F(PlanTest, TieChainsOfNewNamesResolveInAnyOrder) {
  const Catalog& cat = Make({T("a", DType::kBF16, {4})});
  PlanOptions o;
  o.device = DeviceId::Cpu();
  for (auto ties : std::vector<std::vector<std::pair<std::string, std::string>>>{
           {{"x", "y"}, {"y", "a"}}, {{"y", "a"}, {"x", "y"}}}) {
    o.ties = ties;
    auto plan = BuildPlan(cat, o);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    ASSERT_NE(Find(*plan, "x"), nullptr) << ties[0].first << "=" << ties[0].second << " first";
    EXPECT_EQ(plan->tensors[static_cast<size_t>(Find(*plan, "x")->alias_of)].name, "a");
    EXPECT_TRUE(plan->warnings.empty());
  }
  o.ties = {{"p", "q"}, {"q", "p"}};  // a loop of names the checkpoint lacks
  auto loop = BuildPlan(cat, o);
  ASSERT_FALSE(loop.ok());
  EXPECT_NE(loop.status().message().find("loop"), std::string::npos) << loop.status().message();
  o.ties = {{"p", "q"}, {"q", "nosuch"}};  // no source at the end of the chain: warnings, nothing tied
  auto absent = BuildPlan(cat, o);
  ASSERT_TRUE(absent.ok()) << absent.status().message();
  EXPECT_EQ(absent->warnings.size(), 2u);
  EXPECT_EQ(Find(*absent, "p"), nullptr);
}

TEST_F(PlanTest, ConfigTieWarnsNotWhenAFilterLeftTheEmbeddingOut) {
  const Catalog& cat = Make({T("model.embed_tokens.weight", DType::kBF16, {8, 4}), T("model.norm.weight", DType::kBF16, {4})});
  PlanOptions o;
  o.device = DeviceId::Cpu();
  o.tie_word_embeddings = true;
  o.only_regex = "norm";
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->warnings.empty()) << plan->warnings[0];
  EXPECT_EQ(Find(*plan, "lm_head.weight"), nullptr);
  o.only_regex.clear();
  o.drops = {"embed"};
  plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->warnings.empty()) << plan->warnings[0];
}

TEST_F(PlanTest, RenameReferencesOnlyGroupsThePatternHas) {
  const Catalog& cat = Make({T("model.a", DType::kBF16, {4})});
  PlanOptions o;
  o.device = DeviceId::Cpu();
  o.renames = {{"model", "$2"}};
  auto bad = BuildPlan(cat, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("$2 names a group the pattern does not have (it has 0)"), std::string::npos)
      << bad.status().message();
  o.renames = {{"(model)\\.(a)", "$2.$1$$"}};
  auto good = BuildPlan(cat, o);
  ASSERT_TRUE(good.ok()) << good.status().message();
  EXPECT_EQ(good->tensors[0].name, "a.model$");
}

TEST_F(PlanTest, BadNoSplitPatternIsAnErrorWithoutAStrategy) {
  const Catalog& cat = Make({T("a", DType::kBF16, {4})});
  PlanOptions o;
  o.device = DeviceId::Cpu();
  o.no_split = {"(["};
  auto plan = BuildPlan(cat, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("--no-split"), std::string::npos);
}

TEST_F(PlanTest, ExpectedNamesOnlyLeavesOutAreNotMissing) {
  const Catalog& cat = Make({T("a.x", DType::kBF16, {4}), T("b.x", DType::kBF16, {4})});
  PlanOptions o;
  o.device = DeviceId::Cpu();
  o.only_regex = "^a";
  o.expect = std::vector<ExpectedTensor>{{"a.x", {}, {}}, {"b.x", {}, {}}, {"a.gone", {}, {}}, {"c.gone", {}, {}}};
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->missing, std::vector<std::string>{"a.gone"});  // b.x and c.gone: not asked for
  EXPECT_TRUE(plan->unexpected.empty());
}

TEST_F(PlanTest, NothingLeftToLoadIsAWarning) {
  const Catalog& cat = Make({T("a", DType::kBF16, {4}), T("b", DType::kBF16, {4})});
  PlanOptions o;
  o.device = DeviceId::Cpu();
  o.only_regex = "nomatch";
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->tensors.empty());
  ASSERT_EQ(plan->warnings.size(), 1u);
  EXPECT_NE(plan->warnings[0].find("none of the checkpoint's 2 tensors"), std::string::npos) << plan->warnings[0];
  o.only_regex = "a";
  plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->warnings.empty());
}

TEST_F(PlanTest, ConfigTiesOnlyWhenExplicitlyTrue) {
  Synth("llama-3.1-8b", 1);
  std::string dir = paths_.back();
  for (const char* config : {"{}", R"({"tie_word_embeddings": false})", R"({"tie_word_embeddings": "yes"})"}) {
    std::ofstream(dir + "/config.json") << config;
    auto tied = ConfigTiesWordEmbeddings(dir);
    ASSERT_TRUE(tied.ok());
    EXPECT_FALSE(*tied) << config;
  }
  std::ofstream(dir + "/config.json") << R"({"tie_word_embeddings": true})";
  EXPECT_TRUE(*ConfigTiesWordEmbeddings(dir));
}

TEST_F(PlanTest, DiskTensorsAreNeverCast) {
  const Catalog& cat = Make({T("a.w", DType::kBF16, {8}), T("b.w", DType::kBF16, {8})});
  PlanOptions o;
  o.device_map = R"({"a": "disk", "b": "cpu"})";
  o.cast_to = DType::kF32;
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(Find(*plan, "a.w")->dtype, DType::kBF16);
  EXPECT_EQ(Find(*plan, "a.w")->size_bytes, 16u);
  EXPECT_EQ(Find(*plan, "b.w")->dtype, DType::kF32);
}

TEST_F(PlanTest, LongestDotBoundaryPrefixWins) {
  std::vector<OutTensor> ts;
  for (int layer : {1, 10, 11}) ts.push_back(T("model.layers." + std::to_string(layer) + ".mlp.up_proj.weight", DType::kU8, {4}));
  ts.push_back(T("model.embed_tokens.weight", DType::kU8, {4}));
  ts.push_back(T("lm_head.weight", DType::kU8, {4}));
  const Catalog& cat = Make(ts);
  PlanOptions o;
  o.device_map = R"({"model.layers.1": 1, "model": 0, "lm_head": "cpu", "model.layers.1.mlp.gate": "disk"})";
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(Find(*plan, "model.layers.1.mlp.up_proj.weight")->device, DeviceId::Cuda(1));
  EXPECT_EQ(Find(*plan, "model.layers.10.mlp.up_proj.weight")->device, DeviceId::Cuda(0));
  EXPECT_EQ(Find(*plan, "model.layers.11.mlp.up_proj.weight")->device, DeviceId::Cuda(0));
  EXPECT_EQ(Find(*plan, "model.embed_tokens.weight")->device, DeviceId::Cuda(0));
  EXPECT_EQ(Find(*plan, "lm_head.weight")->device, DeviceId::Cpu());
  ASSERT_EQ(plan->warnings.size(), 1u);  // the gate key covers nothing
  EXPECT_NE(plan->warnings[0].find("model.layers.1.mlp.gate"), std::string::npos);
}

TEST_F(PlanTest, UncoveredTensorIsAnErrorNamingIt) {
  const Catalog& cat = Make({T("model.a", DType::kU8, {1}), T("other.b", DType::kU8, {1})});
  PlanOptions o;
  o.device_map = R"({"model": 0})";
  auto plan = BuildPlan(cat, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("'other.b'"), std::string::npos);
  o.device_map = R"({"model": 0, "": "cpu"})";
  plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(Find(*plan, "other.b")->device, DeviceId::Cpu());
}

TEST_F(PlanTest, DiskCountsAgainstNoDevice) {
  const Catalog& cat = Make({T("a.w", DType::kF32, {1000}), T("b.w", DType::kF32, {10})});
  PlanOptions o;
  o.device_map = R"({"a": "disk", "b": "cuda:0"})";
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->FindDevice(DeviceId::Cuda(0))->reserve_bytes, 40u);
  EXPECT_EQ(plan->FindDevice(DeviceId::Disk())->reserve_bytes, 0u);
}

// --mmap: cpu tensors stored as they load, at a file offset that suits
// their element, leave the reservation; casts, other devices, unaligned and
// empty tensors keep their places, and an alias follows its source.
TEST_F(PlanTest, MapHostTakesAlignedUncastCpuTensorsOutOfTheReservation) {
  // In file order: a at 0, b at 6 (an F32 not on a multiple of 4), c at 46,
  // d at 50 (empty), e at 50, f at 60.
  const Catalog& cat = Make({T("a.w", DType::kBF16, {3}), T("b.w", DType::kF32, {10}), T("c.w", DType::kU8, {4}),
                             T("d.w", DType::kF32, {0}), T("e.w", DType::kBF16, {5}), T("g.w", DType::kF32, {4})});
  auto offset = [&](const char* name) {
    for (const TensorInfo& t : cat.tensors()) {
      if (t.name == name) return t.offset_bytes - cat.files()[0].data_offset_bytes;
    }
    return uint64_t{999};
  };
  ASSERT_EQ(offset("b.w"), 6u);
  ASSERT_EQ(cat.files()[0].data_offset_bytes % 8, 0u);
  PlanOptions o;
  o.device_map = R"({"e": 0, "": "cpu"})";
  o.ties = {{"alias.w", "c.w"}, {"alias2.w", "b.w"}};
  auto copied = BuildPlan(cat, o);
  o.map_host = true;
  auto mapped = BuildPlan(cat, o);
  ASSERT_TRUE(copied.ok() && mapped.ok()) << mapped.status().message();
  for (const char* name : {"a.w", "c.w", "g.w", "alias.w"}) {
    EXPECT_TRUE(Find(*mapped, name)->mapped) << name;
    EXPECT_EQ(Find(*mapped, name)->offset_bytes, 0u) << name;
  }
  for (const char* name : {"b.w", "d.w", "e.w", "alias2.w"}) EXPECT_FALSE(Find(*mapped, name)->mapped) << name;
  for (const PlannedTensor& t : copied->tensors) EXPECT_FALSE(t.mapped) << t.name;
  // What stays in the cpu reservation: b (40 bytes at 0) and the empty d
  // (at the next 256-byte boundary).
  EXPECT_EQ(mapped->FindDevice(DeviceId::Cpu())->reserve_bytes, 256u);
  EXPECT_EQ(copied->FindDevice(DeviceId::Cpu())->reserve_bytes, 784u);  // a, b, c, d, g at 256-byte steps
  EXPECT_EQ(mapped->FindDevice(DeviceId::Cpu())->tensor_count, copied->FindDevice(DeviceId::Cpu())->tensor_count);
  EXPECT_EQ(mapped->FindDevice(DeviceId::Cuda(0))->reserve_bytes,
            copied->FindDevice(DeviceId::Cuda(0))->reserve_bytes);
  // A cast is not a mapping.
  o.cast_to = DType::kF32;
  auto cast = BuildPlan(cat, o);
  ASSERT_TRUE(cast.ok());
  EXPECT_FALSE(Find(*cast, "a.w")->mapped);
  EXPECT_TRUE(Find(*cast, "c.w")->mapped);  // u8: never cast
  EXPECT_TRUE(Find(*cast, "g.w")->mapped);  // f32 already
  // A tie onto a tensor later in the file: the alias comes first in the
  // plan, and still follows its source.
  const Catalog& pair = Make({T("x.w", DType::kF32, {4}), T("y.w", DType::kF32, {4})});
  PlanOptions tie;
  tie.device = DeviceId::Cpu();
  tie.map_host = true;
  tie.ties = {{"x.w", "y.w"}};
  auto early = BuildPlan(pair, tie);
  ASSERT_TRUE(early.ok()) << early.status().message();
  ASSERT_GE(Find(*early, "x.w")->alias_of, 0);
  EXPECT_LT(Find(*early, "x.w") - early->tensors.data(), Find(*early, "y.w") - early->tensors.data());
  EXPECT_TRUE(Find(*early, "x.w")->mapped);
  EXPECT_TRUE(Find(*early, "y.w")->mapped);
  EXPECT_EQ(early->FindDevice(DeviceId::Cpu())->reserve_bytes, 0u);
}

// --shard/--split: the part's shape, size, slice and file runs; other
// tensors whole; every way a rule can fail, one line naming the tensor.
TEST_F(PlanTest, SplitTakesOnePartOfTheTensorsARuleNames) {
  const Catalog& cat = Make({T("q.w", DType::kBF16, {8, 6}), T("o.w", DType::kBF16, {6, 8}),
                             T("n.w", DType::kF32, {6}), T("e.w", DType::kF32, {2, 4, 3})});
  auto offset = [&](const char* name) {
    for (const TensorInfo& t : cat.tensors()) {
      if (t.name == name) return t.offset_bytes;
    }
    return uint64_t{0};
  };
  PlanOptions o;
  o.device = DeviceId::Cuda(0);
  o.shard = ShardSpec{1, 2};
  o.splits = {{"^q", 0}, {"^o", -1}, {"^e", 1}, {"nothing", 0}};
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  const PlannedTensor* q = Find(*plan, "q.w");  // rows 4..8: one run
  EXPECT_EQ(q->shape, (std::vector<uint64_t>{4, 6}));
  ASSERT_TRUE(q->slice.has_value());
  EXPECT_EQ(q->slice->dim, 0);
  EXPECT_EQ(q->slice->start, 4u);
  EXPECT_EQ(q->slice->stop, 8u);
  EXPECT_EQ(q->runs, 1u);
  EXPECT_EQ(q->file_offset_bytes, offset("q.w") + 4 * 6 * 2);
  EXPECT_EQ(q->size_bytes, 4u * 6 * 2);
  const PlannedTensor* ow = Find(*plan, "o.w");  // columns 4..8 of each of 6 rows
  EXPECT_EQ(ow->shape, (std::vector<uint64_t>{6, 4}));
  EXPECT_EQ(ow->slice->dim, 1);
  EXPECT_EQ(ow->runs, 6u);
  EXPECT_EQ(ow->run_bytes, 8u);
  EXPECT_EQ(ow->stride_bytes, 16u);
  EXPECT_EQ(ow->file_offset_bytes, offset("o.w") + 8);
  const PlannedTensor* e = Find(*plan, "e.w");  // [2, 4, 3]: rows 2..4 of each of 2 blocks
  EXPECT_EQ(e->shape, (std::vector<uint64_t>{2, 2, 3}));
  EXPECT_EQ(e->runs, 2u);
  EXPECT_EQ(e->run_bytes, 2u * 3 * 4);
  EXPECT_EQ(e->stride_bytes, 4u * 3 * 4);
  EXPECT_EQ(e->file_offset_bytes, offset("e.w") + 2 * 3 * 4);
  EXPECT_EQ(e->size_bytes, 2u * 2 * 3 * 4);
  const PlannedTensor* n = Find(*plan, "n.w");
  EXPECT_FALSE(n->slice.has_value());
  EXPECT_EQ(n->shape, (std::vector<uint64_t>{6}));
  EXPECT_EQ(n->size_bytes, 24u);
  ASSERT_EQ(plan->warnings.size(), 1u);
  EXPECT_NE(plan->warnings[0].find("--split 'nothing' matches no tensor"), std::string::npos) << plan->warnings[0];
}

TEST_F(PlanTest, SplitErrorsNameTheTensorOrTheFlag) {
  const Catalog& cat = Make({T("a.w", DType::kF32, {6, 4}), T("s", DType::kF32, {}), T("p.w", DType::kF4, {2, 6})});
  struct Case {
    std::vector<SplitRule> splits;
    std::optional<ShardSpec> shard;
    std::string device_map;
    const char* message;
  };
  const Case cases[] = {
      {{{"a", 0}}, ShardSpec{0, 4}, "", "--split: tensor 'a.w' [6, 4]: dimension 0 (6) does not split into 4 equal parts"},
      {{{"a", 2}}, ShardSpec{0, 2}, "", "--split: tensor 'a.w' [6, 4] has no dimension 2"},
      {{{"a", -3}}, ShardSpec{0, 2}, "", "has no dimension -3"},
      {{{"^s$", 0}}, ShardSpec{0, 2}, "", "--split: tensor 's' [] is a scalar"},
      {{{"p", 1}}, ShardSpec{1, 6}, "", "F4 parts along dimension 1 do not begin on a byte boundary"},
      {{{"a", 0}}, std::nullopt, "", "--split needs --shard RANK/WORLD"},
      {{}, ShardSpec{0, 2}, "", "--shard needs --split rules"},
      {{{"a", 0}}, ShardSpec{2, 2}, "", "the rank must be at least 0 and below the world size"},
      {{{"(", 0}}, ShardSpec{0, 2}, "", "--split '(': not a valid regular expression"},
      {{{"a", 1}}, ShardSpec{0, 2}, R"({"a": "disk", "": "cpu"})", "tensor 'a.w' is split along dimension 1, so it cannot stay on disk"},
  };
  for (const Case& c : cases) {
    PlanOptions o;
    o.splits = c.splits;
    o.shard = c.shard;
    if (c.device_map.empty()) {
      o.device = DeviceId::Cpu();
    } else {
      o.device_map = c.device_map;
    }
    auto plan = BuildPlan(cat, o);
    ASSERT_FALSE(plan.ok()) << c.message;
    EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(plan.status().message().find(c.message), std::string::npos) << plan.status().message();
    EXPECT_EQ(plan.status().message().find('\n'), std::string::npos);
  }
  // A split along the outer dimension stays one range: it may stay on disk.
  PlanOptions o;
  o.splits = {{"a", 0}};
  o.shard = ShardSpec{1, 3};
  o.device_map = R"({"a": "disk", "": "cpu"})";
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(Find(*plan, "a.w")->size_bytes, 2u * 4 * 4);
  // An even F4 part is whole bytes.
  o = PlanOptions();
  o.device = DeviceId::Cpu();
  o.splits = {{"p", 1}};
  o.shard = ShardSpec{1, 3};
  plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(Find(*plan, "p.w")->run_bytes, 1u);
  EXPECT_EQ(Find(*plan, "p.w")->stride_bytes, 3u);
}

// A tie joins one storage: a part may only be tied to the same part of a
// tensor of the same stored shape. An empty tensor's part stays where the
// tensor is, with no bytes.
TEST_F(PlanTest, SplitPartsTieOnlyToTheSameCutAndEmptyPartsHaveNoBytes) {
  const Catalog& cat = Make({T("a.w", DType::kF32, {8, 4}), T("b.w", DType::kF32, {4, 4}),
                             T("c.w", DType::kF32, {8, 4}), T("z.w", DType::kF32, {0, 4})});
  PlanOptions o;
  o.device = DeviceId::Cpu();
  o.shard = ShardSpec{1, 2};
  o.splits = {{"^[acz]", 0}};
  o.ties = {{"b.w", "a.w"}};
  auto plan = BuildPlan(cat, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("--tie 'b.w=a.w': the tensors differ (F32 [4, 4] vs F32 [8, 4] (part 4..8 of "
                                         "dimension 0))"),
            std::string::npos)
      << plan.status().message();
  o.ties = {{"c.w", "a.w"}};
  plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_GE(Find(*plan, "c.w")->alias_of, 0);
  o.splits = {{"^[az]", 0}, {"^c", 1}};  // the same shape, cut another way
  plan = BuildPlan(cat, o);
  ASSERT_FALSE(plan.ok());
  // A tie made here (b2 is not in the file) holds its source's part; a rule
  // naming the alias another way is a warning, not a second cut.
  o.ties = {{"b2.w", "a.w"}};
  o.splits = {{"^a", 0}, {"^b2", 1}};
  plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(Find(*plan, "b2.w")->shape, (std::vector<uint64_t>{4, 4}));
  ASSERT_EQ(plan->warnings.size(), 1u);
  EXPECT_EQ(plan->warnings[0], "--split '^b2' would cut 'b2.w' along dimension 1, but it is tied to 'a.w' and holds its "
                               "part along dimension 0");
  o.splits = {{"^a|^b2", 0}};  // the same cut: nothing to say
  plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->warnings.empty()) << plan->warnings[0];
  o.ties.clear();
  o.splits = {{"^z", 1}};
  plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  const PlannedTensor* z = Find(*plan, "z.w");
  EXPECT_EQ(z->shape, (std::vector<uint64_t>{0, 2}));
  EXPECT_EQ(z->file_offset_bytes, z->source->offset_bytes);
  EXPECT_EQ(StoredBytes(*z), 0u);
  EXPECT_EQ(z->slice->start, 2u);
}

TEST_F(PlanTest, ParseShardAndSplitRule) {
  EXPECT_EQ(ParseShard("1/4")->rank, 1);
  EXPECT_EQ(ParseShard("1/4")->world, 4);
  for (const char* bad : {"", "1", "4/4", "-1/4", "1/0", "a/4", "1/4/2", "1 /4"}) {
    EXPECT_FALSE(ParseShard(bad).ok()) << bad;
  }
  Result<SplitRule> r = ParseSplitRule("a=b|c=-1");  // the last '=' separates
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->pattern, "a=b|c");
  EXPECT_EQ(r->dim, -1);
  for (const char* bad : {"", "x", "x=", "x=one", "x=1.5"}) EXPECT_FALSE(ParseSplitRule(bad).ok()) << bad;
  EXPECT_EQ(ParseSplitRule("=0")->pattern, "");  // every tensor
}

TEST_F(PlanTest, BadDeviceMapsAreRejected) {
  const Catalog& cat = Make({T("a", DType::kU8, {1})});
  for (const char* bad : {R"({"a": "tpu"})", R"({"a": -1})", R"({"a": 1.5})", R"(["a"])", R"({"a": 0, "a": 1})"}) {
    PlanOptions o;
    o.device_map = bad;
    EXPECT_FALSE(BuildPlan(cat, o).ok()) << bad;
  }
}

uint64_t Gib(double g) { return static_cast<uint64_t>(g * 1024 * 1024 * 1024); }

std::map<DeviceId, uint64_t> PlacedBytes(const LoadPlan& p) {
  std::map<DeviceId, uint64_t> out;
  for (const DevicePlan& d : p.devices) out[d.device] = d.reserve_bytes;
  return out;
}

TEST_F(PlanTest, StrategiesSpreadWholeLayers) {
  const Catalog& cat = Synth("llama-3.1-8b");  // 16.06 GB, 32 layers of ~436 MB
  for (const char* strategy : {"sequential", "balanced", "auto", "balanced_low_0"}) {
    SCOPED_TRACE(strategy);
    PlanOptions o;
    o.device_map = strategy;
    o.capacity_bytes = {{DeviceId::Cuda(0), Gib(12)}, {DeviceId::Cuda(1), Gib(12)}, {DeviceId::Cpu(), Gib(64)}};
    auto plan = BuildPlan(cat, o);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    // A layer never spans two devices.
    std::map<std::string, DeviceId> layer_device;
    for (const PlannedTensor& t : plan->tensors) {
      std::smatch m;
      if (std::regex_search(t.name, m, std::regex(R"(^model\.layers\.(\d+)\.)"))) {
        auto [it, inserted] = layer_device.emplace(m[1], t.device);
        EXPECT_EQ(it->second, t.device) << t.name;
      }
    }
    auto placed = PlacedBytes(*plan);
    uint64_t gpu0 = placed[DeviceId::Cuda(0)], gpu1 = placed[DeviceId::Cuda(1)];
    EXPECT_LE(gpu0, Gib(12));
    EXPECT_LE(gpu1, Gib(12));
    if (std::string(strategy) == "sequential") {
      EXPECT_GT(gpu0, Gib(11));  // GPU 0 filled first
      EXPECT_EQ(placed.count(DeviceId::Cpu()), 0u);  // 16 GB fits in 24 GiB of GPUs
    } else if (std::string(strategy) == "balanced_low_0") {
      // GPU 0 takes only what GPU 1 cannot hold: 14.96 GiB - 12 GiB.
      EXPECT_GT(gpu1, Gib(11));
      EXPECT_LT(gpu0, Gib(3.5));
      EXPECT_EQ(placed.count(DeviceId::Cpu()), 0u);
    } else {
      EXPECT_EQ(placed.count(DeviceId::Cpu()), 0u);
      EXPECT_LT(gpu0 > gpu1 ? gpu0 - gpu1 : gpu1 - gpu0, Gib(1.5));  // even
    }
  }
}

// As accelerate's get_balanced_memory: a GPU without room (max_memory 0)
// takes no share and does not count in the others' shares.
TEST_F(PlanTest, AGpuWithoutRoomTakesNoShareOfABalancedMap) {
  const Catalog& cat = Synth("llama-3.1-8b");  // 14.96 GiB
  PlanOptions o;
  o.device_map = "auto";
  o.capacity_bytes = {{DeviceId::Cuda(0), Gib(10)}, {DeviceId::Cpu(), Gib(30)}};
  auto alone = BuildPlan(cat, o);
  ASSERT_TRUE(alone.ok()) << alone.status().message();
  o.capacity_bytes[DeviceId::Cuda(1)] = 0;
  auto with_empty = BuildPlan(cat, o);
  ASSERT_TRUE(with_empty.ok()) << with_empty.status().message();
  EXPECT_EQ(PlacedBytes(*with_empty), PlacedBytes(*alone));
  EXPECT_GT(PlacedBytes(*alone)[DeviceId::Cuda(0)], Gib(9));  // GPU 0 is the last GPU: all 10 GiB of it
  // Two GPUs of 9 GiB beside an empty GPU 0 hold the whole model.
  o.capacity_bytes = {{DeviceId::Cuda(0), 0}, {DeviceId::Cuda(1), Gib(9)}, {DeviceId::Cuda(2), Gib(9)},
                      {DeviceId::Cpu(), Gib(30)}};
  auto spread = BuildPlan(cat, o);
  ASSERT_TRUE(spread.ok()) << spread.status().message();
  auto placed = PlacedBytes(*spread);
  EXPECT_EQ(placed.count(DeviceId::Cuda(0)), 0u);
  EXPECT_EQ(placed.count(DeviceId::Cpu()), 0u);
  EXPECT_GT(placed[DeviceId::Cuda(1)], Gib(7));
}

// balanced_low_0 keeps GPU 0 light; where GPU 0 has no room, the GPUs that
// have some share the model as balanced would (none of them is GPU 0).
TEST_F(PlanTest, BalancedLow0WithoutGpu0IsBalancedOverTheRest) {
  const Catalog& cat = Synth("llama-3.1-8b");
  PlanOptions o;
  o.capacity_bytes = {{DeviceId::Cuda(0), 0}, {DeviceId::Cuda(1), Gib(10)}, {DeviceId::Cuda(2), Gib(10)},
                      {DeviceId::Cpu(), Gib(30)}};
  o.device_map = "balanced_low_0";
  auto low0 = BuildPlan(cat, o);
  ASSERT_TRUE(low0.ok()) << low0.status().message();
  o.device_map = "balanced";
  auto balanced = BuildPlan(cat, o);
  ASSERT_TRUE(balanced.ok()) << balanced.status().message();
  EXPECT_EQ(PlacedBytes(*low0), PlacedBytes(*balanced));
  EXPECT_GT(PlacedBytes(*low0)[DeviceId::Cuda(1)], Gib(6));
  EXPECT_GT(PlacedBytes(*low0)[DeviceId::Cuda(2)], Gib(6));
}

// Each GPU but the last takes an even share plus 1.25 decoder layers, as
// accelerate 1.16's get_balanced_memory budgets it: for Llama 3.1 8B over
// three GPUs of 6 GiB, 16.06 GB / 3 + 1.25 x 436 MB = 5.494 GiB, which holds
// the embedding and 11 layers (5.45 GiB); one layer of buffer (5.39 GiB)
// would hold 10.
TEST_F(PlanTest, BalancedSharesCarryAccelerateBuffer) {
  const Catalog& cat = Synth("llama-3.1-8b");
  PlanOptions o;
  o.device_map = "balanced";
  o.capacity_bytes = {{DeviceId::Cuda(0), Gib(6)}, {DeviceId::Cuda(1), Gib(6)}, {DeviceId::Cuda(2), Gib(6)},
                      {DeviceId::Cpu(), Gib(30)}};
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  std::set<std::string> on_gpu0;
  for (const PlannedTensor& t : plan->tensors) {
    std::smatch m;
    if (t.device == DeviceId::Cuda(0) && std::regex_search(t.name, m, std::regex(R"(^model\.layers\.(\d+)\.)"))) {
      on_gpu0.insert(m[1]);
    }
  }
  EXPECT_EQ(on_gpu0.size(), 11u);
  EXPECT_LE(PlacedBytes(*plan)[DeviceId::Cuda(0)], Gib(5.494));
}

TEST_F(PlanTest, StrategyOverflowsToCpuThenDiskOnlyWhereDiskIsAllowed) {
  const Catalog& cat = Synth("llama-3.1-8b", 4);
  PlanOptions o;
  o.device_map = "sequential";
  o.capacity_bytes = {{DeviceId::Cuda(0), Gib(1.5)}, {DeviceId::Cpu(), Gib(1)}};
  // GPU and cpu full, disk not named: an error that says how to allow it.
  for (uint64_t disk : {uint64_t{0}, uint64_t{1} << 62}) {
    SCOPED_TRACE(disk ? "disk allowed" : "no disk");
    if (disk) o.capacity_bytes[DeviceId::Disk()] = disk;
    auto plan = BuildPlan(cat, o);
    if (!disk) {
      ASSERT_FALSE(plan.ok());
      EXPECT_EQ(plan.status().code(), StatusCode::kOutOfMemory);
      EXPECT_NE(plan.status().message().find("fits on no device"), std::string::npos) << plan.status().message();
      EXPECT_NE(plan.status().message().find("--max-memory disk=SIZE"), std::string::npos) << plan.status().message();
      EXPECT_EQ(plan.status().message().find("disk "), std::string::npos) << plan.status().message();
      continue;
    }
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    auto placed = PlacedBytes(*plan);
    EXPECT_GT(placed[DeviceId::Cuda(0)], 0u);
    EXPECT_GT(placed[DeviceId::Cpu()], 0u);
    EXPECT_TRUE(plan->FindDevice(DeviceId::Disk()) != nullptr);
  }
  // Disk allowed but too small: the same error, without the advice to allow it.
  o.capacity_bytes[DeviceId::Disk()] = Gib(1);
  auto plan = BuildPlan(cat, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("fits on no device"), std::string::npos);
  EXPECT_EQ(plan.status().message().find("disk=SIZE"), std::string::npos) << plan.status().message();
}

TEST_F(PlanTest, SplitUnits) {
  std::vector<std::regex> none;
  EXPECT_EQ(SplitUnitOf("model.layers.10.mlp.up_proj.weight", none), "model.layers.10");
  EXPECT_EQ(SplitUnitOf("transformer.h.3.attn.c_attn.weight", none), "transformer.h.3");
  EXPECT_EQ(SplitUnitOf("model.layers.3.block_sparse_moe.experts.5.w1.weight", none), "model.layers.3");
  EXPECT_EQ(SplitUnitOf("model.embed_tokens.weight", none), "model.embed_tokens");
  EXPECT_EQ(SplitUnitOf("bias", none), "bias");
  std::vector<std::regex> experts = {std::regex(R"(model\.layers\.\d+\.block_sparse_moe\.experts\.\d+)")};
  EXPECT_EQ(SplitUnitOf("model.layers.3.block_sparse_moe.experts.5.w1.weight", experts),
            "model.layers.3.block_sparse_moe.experts.5");
}

TEST_F(PlanTest, ForwardOrderSortsBlocksByNumberAndPutsLmHeadLast) {
  // As the reference writer lists them: by name.
  const std::vector<std::string> units = {"lm_head",         "model.embed_tokens", "model.layers.0",
                                          "model.layers.1",  "model.layers.10",    "model.layers.11",
                                          "model.layers.2",  "model.norm",         "vision.blocks.3",
                                          "vision.blocks.12"};
  std::vector<std::string> walked;
  for (size_t u : ForwardOrder(units)) walked.push_back(units[u]);
  EXPECT_EQ(walked, (std::vector<std::string>{"model.embed_tokens", "model.layers.0", "model.layers.1",
                                              "model.layers.2", "model.layers.10", "model.layers.11", "model.norm",
                                              "vision.blocks.3", "vision.blocks.12", "lm_head"}));
  // Already in forward order: unchanged.
  const std::vector<std::string> forward = {"transformer.wte", "transformer.h.0", "transformer.h.1", "transformer.ln_f"};
  EXPECT_EQ(ForwardOrder(forward), (std::vector<size_t>{0, 1, 2, 3}));
  auto walk = [](std::vector<std::string> names) {
    std::vector<std::string> out;
    for (size_t u : ForwardOrder(names)) out.push_back(names[u]);
    return out;
  };
  // GPT-2 and GPT-NeoX by name: embeddings first, the final norm after the
  // blocks, the output head (embed_out) last.
  EXPECT_EQ(walk({"transformer.h.0", "transformer.h.1", "transformer.h.10", "transformer.h.2", "transformer.ln_f",
                  "transformer.wte"}),
            (std::vector<std::string>{"transformer.wte", "transformer.h.0", "transformer.h.1", "transformer.h.2",
                                      "transformer.h.10", "transformer.ln_f"}));
  EXPECT_EQ(walk({"embed_out", "gpt_neox.embed_in", "gpt_neox.final_layer_norm", "gpt_neox.layers.0",
                  "gpt_neox.layers.1"}),
            (std::vector<std::string>{"gpt_neox.embed_in", "gpt_neox.layers.0", "gpt_neox.layers.1",
                                      "gpt_neox.final_layer_norm", "embed_out"}));
  // T5 by name: the shared embedding, the encoder's blocks, then the decoder's.
  EXPECT_EQ(walk({"decoder.block.0", "decoder.block.1", "decoder.final_layer_norm", "encoder.block.0",
                  "encoder.block.1", "encoder.final_layer_norm", "lm_head", "shared"}),
            (std::vector<std::string>{"shared", "encoder.block.0", "encoder.block.1", "encoder.final_layer_norm",
                                      "decoder.block.0", "decoder.block.1", "decoder.final_layer_norm", "lm_head"}));
  // An older Llava by name: the vision tower and projector before the
  // language model, its nested lm_head last.
  EXPECT_EQ(walk({"language_model.lm_head", "language_model.model.embed_tokens", "language_model.model.layers.0",
                  "language_model.model.norm", "multi_modal_projector.linear_1", "vision_tower.vision_model.encoder.layers.0"}),
            (std::vector<std::string>{"vision_tower.vision_model.encoder.layers.0", "multi_modal_projector.linear_1",
                                      "language_model.model.embed_tokens", "language_model.model.layers.0",
                                      "language_model.model.norm", "language_model.lm_head"}));
  // An nn.Sequential at the top: numbered units without a dot.
  EXPECT_EQ(walk({"0", "1", "10", "2"}), (std::vector<std::string>{"0", "1", "2", "10"}));
  // --no-split units inside a block (experts) stay with their layer, in number order.
  EXPECT_EQ(walk({"model.layers.0", "model.layers.0.mlp.experts.0", "model.layers.0.mlp.experts.10",
                  "model.layers.0.mlp.experts.2", "model.layers.1", "model.layers.1.mlp.experts.0",
                  "model.layers.10", "model.layers.2"}),
            (std::vector<std::string>{"model.layers.0", "model.layers.0.mlp.experts.0", "model.layers.0.mlp.experts.2",
                                      "model.layers.0.mlp.experts.10", "model.layers.1",
                                      "model.layers.1.mlp.experts.0", "model.layers.2", "model.layers.10"}));
}

TEST_F(PlanTest, DescribeUnitsWritesLayerRuns) {
  std::vector<std::string> names = {"lm_head.weight", "model.embed_tokens.weight"};
  for (int layer : {0, 1, 10, 11, 2, 3, 5}) {
    names.push_back("model.layers." + std::to_string(layer) + ".mlp.up_proj.weight");
    names.push_back("model.layers." + std::to_string(layer) + ".input_layernorm.weight");
  }
  names.push_back("model.norm.weight");
  EXPECT_EQ(DescribeUnits(names),
            "model.embed_tokens, model.layers.0-3, model.layers.5, model.layers.10-11, model.norm, lm_head");
  // Past the limit, the units left are counted (layers, not ranges).
  EXPECT_EQ(DescribeUnits(names, {}, 40), "model.embed_tokens, and 9 more");
  EXPECT_EQ(DescribeUnits({"bias"}), "bias");
  EXPECT_EQ(DescribeUnits({".x"}), "\"\"");
  // Numbers not written plainly stay as they are; a split unit is a part.
  EXPECT_EQ(DescribeUnits({"l.00.w", "l.01.w", "l.1.w", "l.2.w"}), "l.00, l.01, l.1-2");
  EXPECT_EQ(DescribeUnits({"l.0.w", "l.1.a", "l.2.w"}, {"l.1"}), "l.0, part of l.1, l.2");
}

TEST_F(PlanTest, KeyMappingRenamesDropsAndCompat) {
  const Catalog& cat = Make({T("bert.encoder.LayerNorm.gamma", DType::kF32, {4}),
                             T("bert.encoder.LayerNorm.beta", DType::kF32, {4}),
                             T("model.layers.0.self_attn.rotary_emb.inv_freq", DType::kF32, {2}),
                             T("transformer.wte.weight", DType::kF32, {2}), T("junk.x", DType::kF32, {1})});
  PlanOptions o;
  o.compat_hf_legacy = true;
  o.drops = {"^junk\\."};
  o.renames = {{R"(^transformer\.wte)", "model.embed_tokens"}, {R"(^transformer)", "never"}};
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  std::vector<std::string> names;
  for (const PlannedTensor& t : plan->tensors) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"bert.encoder.LayerNorm.bias", "bert.encoder.LayerNorm.weight",
                                             "model.embed_tokens.weight"}));
}

TEST_F(PlanTest, RenameCollisionIsAnError) {
  const Catalog& cat = Make({T("a.x", DType::kU8, {1}), T("b.x", DType::kU8, {1})});
  PlanOptions o;
  o.renames = {{R"(^[ab]\.)", "c."}};
  auto plan = BuildPlan(cat, o);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("'c.x'"), std::string::npos);
}

TEST_F(PlanTest, ExpectReportsAndNeverPlansUnexpected) {
  const Catalog& cat = Make({T("a", DType::kF32, {2}), T("b", DType::kF32, {3}), T("extra", DType::kF32, {1000})});
  auto expect = ParseExpect(R"({"a": {"dtype": "F32", "shape": [2]}, "b": {"shape": [4]}, "c": {}})", "expect");
  ASSERT_TRUE(expect.ok());
  PlanOptions o;
  o.expect = *expect;
  auto plan = BuildPlan(cat, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->missing, std::vector<std::string>{"c"});
  EXPECT_EQ(plan->unexpected, std::vector<std::string>{"extra"});
  EXPECT_EQ(plan->mismatched, std::vector<std::string>{"b"});
  EXPECT_EQ(Find(*plan, "extra"), nullptr);
  EXPECT_EQ(plan->devices[0].reserve_bytes, 256u + 12u);
  auto list = ParseExpect(R"(["a", "zz"])", "expect");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 2u);
  EXPECT_FALSE(ParseExpect(R"([1, 2])", "expect").ok());
}

TEST_F(PlanTest, ParseMaxMemoryAndDeviceIds) {
  auto mm = ParseMaxMemory("0=20GiB,1=500MB,cpu=64GiB,disk=0");
  ASSERT_TRUE(mm.ok()) << mm.status().message();
  EXPECT_EQ(mm->at(DeviceId::Cuda(0)), 20ull << 30);
  EXPECT_EQ(mm->at(DeviceId::Cuda(1)), 500'000'000u);
  EXPECT_EQ(mm->at(DeviceId::Cpu()), 64ull << 30);
  EXPECT_EQ(mm->at(DeviceId::Disk()), 0u);
  EXPECT_FALSE(ParseMaxMemory("gpu=1GB").ok());
  EXPECT_FALSE(ParseMaxMemory("0:1GB").ok());
  EXPECT_EQ(*ParseDeviceId("cuda:3"), DeviceId::Cuda(3));
  EXPECT_EQ(*ParseDeviceId("cuda"), DeviceId::Cuda(0));
  EXPECT_EQ(*ParseDeviceId("7"), DeviceId::Cuda(7));
  EXPECT_EQ(ParseDeviceId("cuda:0")->ToString(), "cuda:0");
  for (const char* bad : {"", "cuda:", "cuda:x", "gpu", "-1", "cuda:-1", "CPU"}) EXPECT_FALSE(ParseDeviceId(bad).ok()) << bad;
}

TEST_F(PlanTest, MaxMemoryPairsNameTheLimitAsTheCallerWroteIt) {
  auto split = SplitMaxMemory("0=1GB,,cpu=2GB");
  ASSERT_TRUE(split.ok()) << split.status().message();
  EXPECT_EQ(*split, (std::vector<std::pair<std::string, std::string>>{{"0", "1GB"}, {"cpu", "2GB"}}));
  EXPECT_FALSE(SplitMaxMemory("cpu").ok());
  // A device name holding '=' or ',' reaches the parser whole (from Python) and is refused as a device.
  EXPECT_FALSE(ParseMaxMemory(std::vector<std::pair<std::string, std::string>>{{"cpu=1", "2GB"}}).ok());
  auto message = [](std::vector<std::pair<std::string, std::string>> limits) {
    Result<std::map<DeviceId, uint64_t>> r = ParseMaxMemory(limits);
    return r.ok() ? std::string("ok") : r.status().message();
  };
  EXPECT_EQ(message({{"cpu", "abc"}}).rfind("--max-memory 'cpu=abc': 'abc' is not a size", 0), 0u) << message({{"cpu", "abc"}});
  SetOptionStyle(OptionStyle::kKeywords);
  const std::string named = message({{"cpu", "abc"}}), numbered = message({{"0", "x"}}), device = message({{"gpu", "1GB"}});
  const std::string twice = message({{"0", "1GB"}, {"cuda:0", "2GB"}});
  SetOptionStyle(OptionStyle::kFlags);
  EXPECT_EQ(named.rfind("max_memory['cpu']: 'abc' is not a size", 0), 0u) << named;
  EXPECT_EQ(numbered.rfind("max_memory[0]: 'x' is not a size", 0), 0u) << numbered;
  EXPECT_EQ(device.rfind("max_memory['gpu']: 'gpu' is not a device", 0), 0u) << device;
  EXPECT_EQ(twice, "max_memory: cuda:0 is given twice");
}

TEST_F(PlanTest, FlagErrorsStayOnOneLine) {
  // Found by fuzz/fuzz_json_inputs.cc: the text was echoed raw.
  for (const char* bad : {"NcSl\n0", "0=\n1GB", "cu\nda=1GB", "\x1b[2J"}) {
    Result<std::map<DeviceId, uint64_t>> r = ParseMaxMemory(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().message().find('\n'), std::string::npos) << r.status().message();
    EXPECT_EQ(r.status().message().find('\x1b'), std::string::npos) << r.status().message();
  }
}

}  // namespace
}  // namespace hoist
