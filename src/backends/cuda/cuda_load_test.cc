// A whole load onto a real GPU, compared byte for byte with the file (ctest
// label `gpu`; skips with the reason on a machine without one).
#include <cmath>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "cast/cast.h"
#include "hoist/cuda.h"
#include "testing/gpu.h"
#include "hoist/loader.h"
#include "hoist/synth.h"
#include "hoist/writer.h"
#include "io/file.h"
#include "testing/temp_dir.h"

namespace hoist {
namespace {

class CudaLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ = MakeCpuRegistry();
    int count = 0;
    ASSERT_TRUE(RegisterCudaDevices(&registry_, &count).ok());
    if (count == 0) {
      if (hoist::testing::GpuRequired()) FAIL() << "HOIST_REQUIRE_GPU=1 but no CUDA GPU: " << CudaUnavailableReason();
      GTEST_SKIP() << "no CUDA GPU: " << CudaUnavailableReason();
    }
    // A real layout (sharded, unaligned sizes) plus odd dtypes and tiny tensors.
    SynthOptions so;
    so.arch = "tiny-llama";
    so.max_shard_bytes = 100'000;
    ASSERT_TRUE(WriteSynthCheckpoint(so, dir_ / "ckpt").ok());
    auto cat = OpenCatalog(dir_ / "ckpt");
    ASSERT_TRUE(cat.ok()) << cat.status().message();
    catalog_ = std::make_unique<Catalog>(std::move(cat).value());
  }

  std::vector<unsigned char> FileBytes(const TensorView& v) {
    std::vector<unsigned char> out(catalog_->Find(v.name)->size_bytes);
    auto f = File::OpenRead(v.file);
    EXPECT_TRUE(f.ok());
    EXPECT_TRUE(f->ReadAt(v.file_offset_bytes, out.data(), out.size()).ok());
    return out;
  }
  std::vector<unsigned char> GpuBytes(const TensorView& v) {
    std::vector<unsigned char> out(v.size_bytes);
    EXPECT_TRUE(registry_.Find(v.device)->CopyToHost(out.data(), v.data, v.size_bytes).ok());
    return out;
  }

  hoist::testing::TempDir dir_;
  DeviceRegistry registry_;
  std::unique_ptr<Catalog> catalog_;
};

TEST_F(CudaLoadTest, ReserveAndPerTensorAreByteExact) {
  for (AllocStrategy alloc : {AllocStrategy::kReserve, AllocStrategy::kPerTensor}) {
    PlanOptions po;
    po.device = DeviceId::Cuda(0);
    auto plan = BuildPlan(*catalog_, po);
    ASSERT_TRUE(plan.ok());
    LoadOptions lo;
    lo.alloc = alloc;
    lo.chunk_bytes = 4096;  // tensors straddle chunks
    auto model = Load(*catalog_, std::move(plan).value(), registry_, lo);
    ASSERT_TRUE(model.ok()) << model.status().message();
    EXPECT_EQ(model->stats().driver_allocs,
              alloc == AllocStrategy::kReserve ? 1 : static_cast<int>(catalog_->tensors().size()));
    for (const TensorView& v : model->tensors()) {
      ASSERT_EQ(GpuBytes(v), FileBytes(v)) << v.name;
    }
  }
}

TEST_F(CudaLoadTest, CastToF32MatchesCpuCast) {
  // The default staging, and more staging buffers than chunks of cast
  // scratch, so that copies into a chunk queue up behind casts still to run.
  for (int slots : {0, 8, 12, 16}) {
    SCOPED_TRACE("staging buffers " + std::to_string(slots));
    PlanOptions po;
    po.device = DeviceId::Cuda(0);
    po.cast_to = DType::kF32;
    auto plan = BuildPlan(*catalog_, po);
    ASSERT_TRUE(plan.ok());
    LoadOptions lo;
    lo.chunk_bytes = 4096;  // many pieces through the device's cast scratch
    lo.staging_slots = slots;
    lo.threads = 4;
    auto model = Load(*catalog_, std::move(plan).value(), registry_, lo);
    ASSERT_TRUE(model.ok()) << model.status().message();
    EXPECT_EQ(model->stats().driver_allocs, 1);  // the cast scratch is the reservation's end
    EXPECT_GT(model->stats().device_cast_pieces, 0);
    for (const TensorView& v : model->tensors()) {
      std::vector<unsigned char> raw = FileBytes(v), got = GpuBytes(v);
      std::vector<unsigned char> want(got.size());
      CastFloats(v.stored_dtype, raw.data(), DType::kF32, want.data(), raw.size() / 2);
      ASSERT_EQ(got, want) << v.name;
    }
  }
}

// Two GPUs fed at once, casting too: each reader thread switches between
// devices, and every copy, cast and event must land on its own device's
// streams (the emulated runtime refuses a kernel on another device's stream).
TEST_F(CudaLoadTest, DeviceMapOverTwoGpusIsByteExact) {
  if (registry_.CudaCount() < 2) GTEST_SKIP() << "one GPU here; this test needs two";
  for (bool cast : {false, true}) {
    SCOPED_TRACE(cast ? "cast to f32" : "no cast");
    PlanOptions po;
    po.device_map = R"({"model.layers.0": 1, "model.layers.2": 1, "lm_head": 1, "": 0})";
    if (cast) po.cast_to = DType::kF32;
    auto plan = BuildPlan(*catalog_, po);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    LoadOptions lo;
    lo.chunk_bytes = 4096;
    lo.threads = 4;
    auto model = Load(*catalog_, std::move(plan).value(), registry_, lo);
    ASSERT_TRUE(model.ok()) << model.status().message();
    int on_second = 0;
    for (const TensorView& v : model->tensors()) {
      SCOPED_TRACE(v.name);
      on_second += v.device == DeviceId::Cuda(1);
      std::vector<unsigned char> raw = FileBytes(v), got = GpuBytes(v);
      if (!cast || !IsCastableFloat(v.stored_dtype)) {
        ASSERT_EQ(got, raw);
        continue;
      }
      std::vector<unsigned char> want(got.size());
      CastFloats(v.stored_dtype, raw.data(), DType::kF32, want.data(), raw.size() / (DTypeBits(v.stored_dtype) / 8));
      ASSERT_EQ(got, want);
    }
    EXPECT_GT(on_second, 0);
    EXPECT_LT(on_second, static_cast<int>(model->tensors().size()));
  }
}

TEST_F(CudaLoadTest, RefusesAPlanLargerThanFreeMemory) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  auto plan = BuildPlan(*catalog_, po);
  ASSERT_TRUE(plan.ok());
  LoadOptions lo;
  lo.max_memory[DeviceId::Cuda(0)] = 1000;
  auto model = Load(*catalog_, std::move(plan).value(), registry_, lo);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kOutOfMemory);
}

}  // namespace
}  // namespace hoist
