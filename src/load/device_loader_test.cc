// Loads onto a pretend GPU (FaultDevice): the staged path, placements across
// devices, the refusal before allocation, and every error path.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "backends/testing/fault_device.h"
#include "cast/cast.h"
#include "hoist/loader.h"
#include "hoist/writer.h"
#include "io/file.h"
#include "io/uring.h"
#include "testing/page_cache.h"
#include "testing/temp_dir.h"

namespace hoist {
namespace {

using hoist::testing::FaultDevice;
using hoist::testing::FaultPoint;

unsigned char PatternByte(size_t index, uint64_t k) {
  return static_cast<unsigned char>((k * 29 + index * 101 + (k >> 9)) & 0xFF);
}

class DeviceLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tensors_ = {{"model.embed_tokens.weight", DType::kBF16, {64, 100}, 64 * 100 * 2},
                {"model.layers.0.w", DType::kF32, {3000}, 12000},
                {"model.layers.0.q", DType::kI8, {77}, 77},
                {"model.layers.1.w", DType::kF16, {5000}, 10000},
                {"model.norm.weight", DType::kBF16, {64}, 128},
                {"lm_head.weight", DType::kBF16, {64, 100}, 64 * 100 * 2}};
    WriteOptions wo;
    wo.max_shard_bytes = 15000;  // several shards
    FillFn fill = [](size_t index, uint64_t offset, uint64_t size, unsigned char* out) {
      for (uint64_t k = 0; k < size; ++k) out[k] = PatternByte(index, offset + k);
      return Status::Ok();
    };
    ASSERT_TRUE(WriteCheckpoint(dir_ / "ckpt", tensors_, {}, wo, fill).ok());
    auto cat = OpenCatalog(dir_ / "ckpt");
    ASSERT_TRUE(cat.ok());
    catalog_ = std::make_unique<Catalog>(std::move(cat).value());
    ResetDevices();
    options_.chunk_bytes = 4096;  // many pieces, tensors straddle chunks
    options_.staging_slots = 2;
    options_.gpu_margin_bytes = 0;
    options_.threads = 3;
  }

  // A fresh registry: the cpu and a new test GPU (gpu_) of `capacity` bytes.
  void ResetDevices(uint64_t capacity = 64ull << 20) {
    auto gpu = std::make_unique<FaultDevice>(DeviceId::Cuda(0), capacity);
    gpu_ = gpu.get();
    registry_ = DeviceRegistry();
    registry_.Add(MakeCpuDevice());
    registry_.Add(std::move(gpu));
  }

  // A fresh GPU whose copies read their source when issued, or as late as
  // CUDA allows (when the stream gets to them).
  void ResetDevicesWithCopiesReadAtIssue(bool at_issue) {
    ResetDevices();
    gpu_->set_copies_read_at_issue(at_issue);
  }

  Result<LoadedModel> LoadWith(PlanOptions po) {
    auto plan = BuildPlan(*catalog_, po);
    if (!plan.ok()) return plan.status();
    return Load(*catalog_, std::move(plan).value(), registry_, options_);
  }

  // Every tensor of `model` holds its bytes from the file, on whichever
  // device it is.
  void ExpectFileBytes(const LoadedModel& model) {
    for (const TensorView& v : model.tensors()) {
      size_t i = IndexOf(v.name);
      ASSERT_EQ(v.size_bytes, tensors_[i].size_bytes) << v.name;
      std::vector<unsigned char> got = DeviceBytes(v);
      for (uint64_t k = 0; k < got.size(); ++k) ASSERT_EQ(got[k], PatternByte(i, k)) << v.name << " byte " << k;
    }
  }

  // The bytes of tensor `name` as the device holds them.
  std::vector<unsigned char> DeviceBytes(const TensorView& v) {
    std::vector<unsigned char> out(v.size_bytes);
    Device* d = registry_.Find(v.device);
    EXPECT_TRUE(d->CopyToHost(out.data(), v.data, v.size_bytes).ok());
    return out;
  }

  size_t IndexOf(const std::string& name) {
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (tensors_[i].name == name) return i;
    }
    return SIZE_MAX;
  }

  // The background pinner stops once the reads are done: a before_read hook
  // that holds the first read until `calls` pinned allocations were tried,
  // so what a test counts does not depend on timing.
  std::function<Status(uint64_t)> HoldUntilPinned(int calls) {
    return [this, calls](uint64_t read) {
      for (int spin = 0; read == 0 && gpu_->calls(FaultPoint::kAllocatePinned) < calls && spin < 5000; ++spin) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      return Status::Ok();
    };
  }

  // The file's bytes of `v`.
  std::vector<unsigned char> FileBytes(const TensorView& v) {
    size_t i = IndexOf(v.name);
    std::vector<unsigned char> file(tensors_[i].size_bytes);
    for (uint64_t k = 0; k < file.size(); ++k) file[k] = PatternByte(i, k);
    return file;
  }

  // The file's bytes of `v` as a load with --dtype f32 must leave them:
  // floats cast on the host, everything else as stored.
  std::vector<unsigned char> FileBytesAsF32(const TensorView& v) {
    std::vector<unsigned char> file = FileBytes(v);
    if (!IsCastableFloat(v.stored_dtype)) return file;
    size_t n = file.size() / static_cast<size_t>(DTypeBits(v.stored_dtype) / 8);
    std::vector<unsigned char> want(n * 4);
    CastFloats(v.stored_dtype, file.data(), DType::kF32, want.data(), n);
    return want;
  }

  // `synchronized`: the load could still synchronize the device before
  // freeing (false when synchronizing is what failed, or the device is
  // spoiled): then nothing may have been freed while queued work used it.
  void ExpectAllReturned(bool synchronized = true) {
    EXPECT_EQ(gpu_->outstanding_bytes(), 0u);
    EXPECT_EQ(gpu_->outstanding_pinned_bytes(), 0u);
    EXPECT_EQ(gpu_->live_events(), 0);
    if (synchronized) {
      EXPECT_EQ(gpu_->frees_with_queued_work(), 0);
    }
  }

  hoist::testing::TempDir dir_;
  std::vector<OutTensor> tensors_;
  std::unique_ptr<Catalog> catalog_;
  DeviceRegistry registry_;
  FaultDevice* gpu_ = nullptr;
  LoadOptions options_;
};

// Whether a GPU's copy reads its staging slot as soon as it is issued or as
// late as it may, the device ends up with the file's bytes.
TEST_F(DeviceLoaderTest, StagedLoadIsByteExactWithOneAllocation) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  for (bool at_issue : {false, true}) {
    SCOPED_TRACE(at_issue ? "copies read at issue" : "copies read late");
    ResetDevicesWithCopiesReadAtIssue(at_issue);
    {
      auto model = LoadWith(po);
      ASSERT_TRUE(model.ok()) << model.status().message();
      EXPECT_EQ(model->stats().driver_allocs, 1);
      EXPECT_GT(gpu_->calls(FaultPoint::kCopy), 10);  // the staged path ran
      // The copies' span (first queued to the GPU done) lies within the load.
      EXPECT_GT(model->stats().copy_seconds, 0);
      EXPECT_LE(model->stats().copy_seconds, model->stats().seconds);
      EXPECT_EQ(model->stats().device_cast_seconds, 0);
      EXPECT_EQ(gpu_->pageable_copies(), 0);            // every copy from the pinned ring
      EXPECT_EQ(gpu_->outstanding_pinned_bytes(), 0u);  // staging is released after the load
      for (const TensorView& v : model->tensors()) {
        EXPECT_EQ(v.device, DeviceId::Cuda(0));
        EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % 256, 0u);
        std::vector<unsigned char> got = DeviceBytes(v);
        size_t i = IndexOf(v.name);
        for (uint64_t k = 0; k < got.size(); ++k) ASSERT_EQ(got[k], PatternByte(i, k)) << v.name << " byte " << k;
      }
    }
    ExpectAllReturned();
  }
}

TEST_F(DeviceLoaderTest, PipelineOffReadsToHostThenCopies) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  po.cast_to = DType::kF32;
  options_.pipeline = false;
  LoadProgress progress;
  options_.progress = &progress;
  {
    auto model = LoadWith(po);
    ASSERT_TRUE(model.ok()) << model.status().message();
    EXPECT_EQ(gpu_->calls(FaultPoint::kAllocatePinned), 0);  // no staging ring
    EXPECT_EQ(gpu_->calls(FaultPoint::kCopy), static_cast<int>(tensors_.size()));  // one copy per tensor
    EXPECT_EQ(gpu_->pageable_copies(), static_cast<int>(tensors_.size()));  // from the host arena: the slow baseline
    EXPECT_EQ(progress.done.load(), model->stats().bytes_read);
    EXPECT_EQ(progress.total.load(), model->stats().bytes_read);
    EXPECT_GT(model->stats().time_to_first_tensor, 0.0);
    const TensorView* v = model->Find("model.layers.0.q");
    std::vector<unsigned char> got = DeviceBytes(*v);
    size_t i = IndexOf("model.layers.0.q");
    for (uint64_t k = 0; k < got.size(); ++k) ASSERT_EQ(got[k], PatternByte(i, k));
    const TensorView* w = model->Find("model.layers.1.w");
    std::vector<unsigned char> f32 = DeviceBytes(*w);
    size_t wi = IndexOf("model.layers.1.w");
    uint16_t h = static_cast<uint16_t>(PatternByte(wi, 0) | PatternByte(wi, 1) << 8);
    float first;
    std::memcpy(&first, f32.data(), 4);
    if (!std::isnan(F16ToF32(h))) {
      EXPECT_EQ(first, F16ToF32(h));
    }
  }
  ExpectAllReturned();
}

TEST_F(DeviceLoaderTest, PerTensorMakesOneAllocationPerTensor) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  options_.alloc = AllocStrategy::kPerTensor;
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_EQ(model->stats().driver_allocs, static_cast<int>(tensors_.size()));
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), static_cast<int>(tensors_.size()));
}

TEST_F(DeviceLoaderTest, CastOnTheDeviceMatchesTheHostCastBitForBit) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  po.cast_to = DType::kF32;
  for (bool at_issue : {false, true}) {
    SCOPED_TRACE(at_issue ? "copies read at issue" : "copies read late");
    ResetDevicesWithCopiesReadAtIssue(at_issue);
    auto model = LoadWith(po);
    ASSERT_TRUE(model.ok()) << model.status().message();
    // File bytes went to the device raw and were cast there, piece by piece.
    EXPECT_GT(gpu_->calls(FaultPoint::kCast), 3);
    EXPECT_GT(model->stats().device_cast_seconds, 0);
    EXPECT_LE(model->stats().device_cast_seconds, model->stats().copy_seconds);
    // The pieces that land on the scratch (the reservation's end) are cast
    // on the host, after the device's casts.
    EXPECT_GT(model->stats().host_cast_seconds, 0);
    EXPECT_EQ(gpu_->pageable_copies(), 0);
    for (const TensorView& v : model->tensors()) {
      SCOPED_TRACE(v.name);
      EXPECT_EQ(v.dtype, IsCastableFloat(v.stored_dtype) ? DType::kF32 : v.stored_dtype);  // others never cast
      ASSERT_EQ(DeviceBytes(v), FileBytesAsF32(v));
    }
    // The scratch the casts went through was the end of the reservation:
    // one allocation, and the peak is the reservation.
    const DeviceStats* gpu = nullptr;
    for (const DeviceStats& d : model->stats().devices) {
      if (d.device == DeviceId::Cuda(0)) gpu = &d;
    }
    ASSERT_NE(gpu, nullptr);
    EXPECT_EQ(gpu->driver_allocs, 1);
    EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), 1);
    EXPECT_EQ(gpu->peak_reserved_bytes, gpu->reserved_bytes);
    EXPECT_EQ(gpu_->outstanding_bytes(), gpu->reserved_bytes);
    EXPECT_EQ(gpu_->outstanding_pinned_bytes(), 0u);
  }
}

// Casts run on their own stream, so the copy engine may run ahead of the
// kernels: a chunk of cast scratch is filled again only once the device has
// finished the cast that reads it (a wait on the device, not the host).
TEST_F(DeviceLoaderTest, CopiesOvertakingCastsNeverOverwriteACastsInput) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  po.cast_to = DType::kF32;
  // More slots than chunks of scratch: copies into a chunk queue up behind
  // casts that have not run yet.
  for (int slots : {2, 8}) {
    for (int threads : {1, 3}) {
      SCOPED_TRACE("slots " + std::to_string(slots) + ", threads " + std::to_string(threads));
      ResetDevices();
      gpu_->set_copies_overtake_casts(true);
      options_.staging_slots = slots;
      options_.threads = threads;
      options_.before_read = HoldUntilPinned(1 + (slots - 1) / 2);  // every slot pinned before the first read
      auto model = LoadWith(po);
      ASSERT_TRUE(model.ok()) << model.status().message();
      for (const TensorView& v : model->tensors()) {
        SCOPED_TRACE(v.name);
        ASSERT_EQ(DeviceBytes(v), FileBytesAsF32(v));
      }
    }
  }
  // With per-tensor allocations the scratch is an allocation of its own: a
  // few chunks (4), however many slots there are, counted in the peak.
  options_.alloc = AllocStrategy::kPerTensor;
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok());
  for (const DeviceStats& d : model->stats().devices) {
    if (d.device == DeviceId::Cuda(0)) {
      EXPECT_EQ(d.peak_reserved_bytes - d.reserved_bytes, 4u * 4096);
      EXPECT_EQ(d.driver_allocs, static_cast<int>(tensors_.size()) + 1);
    }
  }
  for (const TensorView& v : model->tensors()) ASSERT_EQ(DeviceBytes(v), FileBytesAsF32(v)) << v.name;
}

// The scratch is as many chunks of the reservation's end as it holds (up
// to 4): with 4, 2 or 1 chunk, the pieces under it wait for every device
// cast and are cast on the host; a reservation smaller than a chunk is cast
// on the host whole. One allocation and exact bytes in every case.
TEST_F(DeviceLoaderTest, CastScratchAtTheReservationsEndHoweverLargeTheChunks) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  po.cast_to = DType::kF32;
  for (uint64_t chunk : {4096u, 32768u, 65536u, 1u << 20}) {
    for (int slots : {2, 6}) {
      SCOPED_TRACE("chunk " + std::to_string(chunk) + ", slots " + std::to_string(slots));
      ResetDevices();
      options_.chunk_bytes = chunk;
      options_.staging_slots = slots;
      auto model = LoadWith(po);
      ASSERT_TRUE(model.ok()) << model.status().message();
      const uint64_t reserved = model->stats().devices[0].reserved_bytes;
      EXPECT_EQ(model->stats().driver_allocs, 1);
      EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), 1);
      EXPECT_EQ(model->stats().devices[0].peak_reserved_bytes, reserved);
      // Small chunks leave most pieces below the scratch, cast on the
      // device; with larger ones the scratch may cover every cast tensor.
      if (chunk == 4096) {
        EXPECT_GT(gpu_->calls(FaultPoint::kCast), 3);
      }
      if (chunk > reserved) {
        EXPECT_EQ(gpu_->calls(FaultPoint::kCast), 0);
      }
      EXPECT_EQ(model->stats().device_cast_pieces, gpu_->calls(FaultPoint::kCast));
      EXPECT_GT(model->stats().host_cast_seconds, 0);
      for (const TensorView& v : model->tensors()) ASSERT_EQ(DeviceBytes(v), FileBytesAsF32(v)) << v.name;
      EXPECT_EQ(gpu_->pageable_copies(), 0);
    }
  }
}

TEST_F(DeviceLoaderTest, DefaultStagingIsReaderThreadsPlusTwo) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  options_.staging_slots = 0;
  options_.threads = 3;
  options_.before_read = HoldUntilPinned(3);
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_EQ(model->stats().staging_slots, 5);
  // Two slots pinned before the reads, the other three two at a time while
  // they run; all returned when the load ends.
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocatePinned), 3);
  EXPECT_EQ(gpu_->outstanding_pinned_bytes(), 0u);
  EXPECT_EQ(gpu_->live_events(), 0);
  // Two GPUs share the readers: ceil(3 / 2) + 2 each.
  auto second = std::make_unique<FaultDevice>(DeviceId::Cuda(1), 64ull << 20);
  registry_.Add(std::move(second));
  po = PlanOptions();
  po.device_map = R"({"model.layers": 1, "": 0})";
  model = LoadWith(po);
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_EQ(model->stats().staging_slots, 4);
}

TEST_F(DeviceLoaderTest, WithoutACastKernelCastsRunOnTheHost) {
  gpu_->set_supports_cast(false);
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  po.cast_to = DType::kF32;
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_EQ(gpu_->calls(FaultPoint::kCast), 0);
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), 1);
  EXPECT_EQ(model->stats().device_cast_pieces, 0);
  EXPECT_GT(model->stats().host_cast_seconds, 0);
  for (const TensorView& v : model->tensors()) ASSERT_EQ(DeviceBytes(v), FileBytesAsF32(v)) << v.name;
  EXPECT_EQ(gpu_->outstanding_pinned_bytes(), 0u);  // the staging ring is gone; the model holds its reservation
}

TEST_F(DeviceLoaderTest, NoCastNoScratch) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_EQ(gpu_->calls(FaultPoint::kCast), 0);
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), 1);
}

TEST_F(DeviceLoaderTest, DeviceMapSplitsAcrossGpuCpuAndDisk) {
  PlanOptions po;
  po.device_map = R"({"model.layers": 0, "lm_head": "disk", "": "cpu"})";
  po.ties = {};
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok()) << model.status().message();
  const TensorView* w0 = model->Find("model.layers.0.w");
  const TensorView* emb = model->Find("model.embed_tokens.weight");
  const TensorView* head = model->Find("lm_head.weight");
  ASSERT_TRUE(w0 && emb && head);
  EXPECT_EQ(w0->device, DeviceId::Cuda(0));
  EXPECT_EQ(emb->device, DeviceId::Cpu());
  EXPECT_EQ(head->device, DeviceId::Disk());
  EXPECT_EQ(head->data, nullptr);
  // cpu tensors are host memory holding the file's bytes.
  size_t ei = IndexOf("model.embed_tokens.weight");
  for (uint64_t k = 0; k < emb->size_bytes; ++k) ASSERT_EQ(emb->data[k], PatternByte(ei, k));
  // disk tensors point at their bytes in the file, which were not read.
  std::ifstream f(head->file, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(head->file_offset_bytes));
  char c0;
  f.read(&c0, 1);
  EXPECT_EQ(static_cast<unsigned char>(c0), PatternByte(IndexOf("lm_head.weight"), 0));
  EXPECT_EQ(model->stats().bytes_read, 12000u + 77u + 10000u + 12800u + 128u);
  EXPECT_EQ(model->stats().driver_allocs, 2);  // one per device
}

// --mmap maps the cpu side of a split load and streams the GPU side as ever.
TEST_F(DeviceLoaderTest, MmapMapsTheCpuSideOfASplitLoad) {
  PlanOptions po;
  po.device_map = R"({"model.layers": 0, "": "cpu"})";
  po.map_host = true;
  // Mapped bytes take no host memory of the load's: a cpu limit of a byte
  // refuses nothing, with one allocation per device or per tensor.
  options_.max_memory[DeviceId::Cpu()] = 1;
  for (AllocStrategy alloc : {AllocStrategy::kReserve, AllocStrategy::kPerTensor}) {
    SCOPED_TRACE(alloc == AllocStrategy::kReserve ? "reserve" : "per-tensor");
    options_.alloc = alloc;
    ResetDevices();
    auto model = LoadWith(po);
    ASSERT_TRUE(model.ok()) << model.status().message();
    ExpectFileBytes(*model);
    uint64_t mapped = 0;
    for (const TensorView& v : model->tensors()) {
      EXPECT_EQ(v.mapped, v.device == DeviceId::Cpu() && v.file_offset_bytes % 2 == 0) << v.name;
      mapped += v.mapped ? v.size_bytes : 0;
    }
    EXPECT_GT(mapped, 0u);
    EXPECT_EQ(model->stats().mapped_bytes, mapped);
    EXPECT_EQ(model->stats().bytes_read, catalog_->total_bytes());
    EXPECT_GT(gpu_->outstanding_bytes(), 0u);  // the GPU side, held by the model
    model = Result<LoadedModel>(InvalidArgument("released"));
    ExpectAllReturned();
  }
}

// A --shard part onto a GPU: runs across an inner dimension packed into
// the staging slots, with casts on the device, buffered and with O_DIRECT.
TEST_F(DeviceLoaderTest, ShardPartsStreamToTheGpuByteExact) {
  Result<File> probe = File::OpenReadDirect(catalog_->files()[0].path);
  for (int variant = 0; variant < 8; ++variant) {
    const bool direct = variant & 1, cast = variant & 2, refused = variant & 4;
    if (direct && !probe.ok()) continue;  // no O_DIRECT on this file system: the buffered half stands
    {
      SCOPED_TRACE(std::string(direct ? "direct" : "buffered") + (cast ? " cast" : "") +
                   (refused ? " into staging the kernel cannot write" : ""));
      ResetDevices();
      gpu_->set_pinned_refuses_reads(refused);
      options_.direct = direct ? DirectIo::kOn : DirectIo::kOff;
      PlanOptions po;
      po.device = DeviceId::Cuda(0);
      po.shard = ShardSpec{1, 2};
      po.splits = {{"embed_tokens", 1}, {"lm_head", 0}, {"layers\\.1\\.w", 0}};
      if (cast) po.cast_to = DType::kF32;
      {
        auto model = LoadWith(po);
        ASSERT_TRUE(model.ok()) << model.status().message();
        for (const TensorView& v : model->tensors()) {
          const size_t i = IndexOf(v.name);
          const uint64_t element = static_cast<uint64_t>(DTypeBits(tensors_[i].dtype) / 8);
          std::vector<unsigned char> want;
          if (v.name == "model.embed_tokens.weight") {  // columns 50..100 of each of 64 rows
            for (uint64_t r = 0; r < 64; ++r) {
              for (uint64_t k = (r * 100 + 50) * 2; k < (r * 100 + 100) * 2; ++k) want.push_back(PatternByte(i, k));
            }
          } else {
            uint64_t begin = 0, end = tensors_[i].size_bytes;
            if (v.slice) begin = end / 2;  // the second half of rows
            for (uint64_t k = begin; k < end; ++k) want.push_back(PatternByte(i, k));
          }
          EXPECT_EQ(v.slice.has_value(), v.name == "model.embed_tokens.weight" || v.name == "lm_head.weight" ||
                                             v.name == "model.layers.1.w")
              << v.name;
          if (v.dtype != v.stored_dtype) {
            std::vector<unsigned char> wide(want.size() / element * 4);
            CastFloats(v.stored_dtype, want.data(), v.dtype, wide.data(), want.size() / element);
            want = wide;
          }
          ASSERT_EQ(DeviceBytes(v), want) << v.name;
        }
        if (cast) {
          EXPECT_GT(model->stats().device_cast_pieces, 0);
        }
        if (direct) {
          EXPECT_GT(model->stats().direct_files, 0);
        }
        EXPECT_EQ(model->stats().devices[0].bounced_reads, refused);
      }
      ExpectAllReturned();
    }
  }
}

// Under gVisor the kernel refuses reads into pinned memory the GPU driver
// mapped (EFAULT) though the process can write it: the load notices before
// its first read and fills the staging slots through ordinary memory, byte
// exact whichever way the files are read and wherever casts run.
TEST_F(DeviceLoaderTest, StagingTheKernelCannotWriteIsFilledThroughOrdinaryMemory) {
  const bool direct_here = File::OpenReadDirect(catalog_->files()[0].path).ok();
  for (int variant = 0; variant < 12; ++variant) {
    const int io = variant % 3;  // buffered pread, buffered io_uring, O_DIRECT
    const int cast = variant / 3;  // none, on the device, on the host
    if ((io == 1 && !UringAvailable()) || (io == 2 && !direct_here)) continue;
    SCOPED_TRACE(std::string(io == 0 ? "pread" : io == 1 ? "io_uring" : "O_DIRECT") +
                 (cast == 0 ? "" : cast == 1 ? ", cast on the device" : ", cast on the host"));
    ResetDevices();
    gpu_->set_pinned_refuses_reads(true);
    gpu_->set_supports_cast(cast != 2);
    options_.io = io == 1 ? IoEngine::kUring : IoEngine::kPread;
    options_.direct = io == 2 ? DirectIo::kOn : DirectIo::kOff;
    PlanOptions po;
    po.device = DeviceId::Cuda(0);
    if (cast != 0) po.cast_to = DType::kF32;
    {
      auto model = LoadWith(po);
      ASSERT_TRUE(model.ok()) << model.status().message();
      EXPECT_TRUE(model->stats().devices[0].bounced_reads);
      ASSERT_EQ(model->plan().warnings.size(), 1u);
      EXPECT_NE(model->plan().warnings[0].find("cuda:0: the kernel refuses reads into pinned staging memory"),
                std::string::npos)
          << model->plan().warnings[0];
      EXPECT_EQ(gpu_->pageable_copies(), 0);  // the copies still leave from the pinned ring
      if (cast == 1) {
        EXPECT_GT(model->stats().device_cast_pieces, 0);
      }
      for (const TensorView& v : model->tensors()) {
        ASSERT_EQ(DeviceBytes(v), cast ? FileBytesAsF32(v) : FileBytes(v)) << v.name;
      }
    }
    ExpectAllReturned();
  }
  // What the load steers around: a read into such memory fails.
  ResetDevices();
  gpu_->set_pinned_refuses_reads(true);
  auto pinned = DeviceMemory::AllocatePinned(gpu_, 4096);
  ASSERT_TRUE(pinned.ok());
  Result<File> file = File::OpenRead(catalog_->files()[0].path);
  ASSERT_TRUE(file.ok());
  Status read = file->ReadAt(0, pinned->data(), 8);
  EXPECT_FALSE(read.ok());
  EXPECT_NE(read.message().find("Bad address"), std::string::npos) << read.message();
  EXPECT_FALSE(*file->ReadsCanLandIn(pinned->data()));
  std::vector<unsigned char> ordinary(8);
  EXPECT_TRUE(*file->ReadsCanLandIn(ordinary.data()));
}

TEST_F(DeviceLoaderTest, TwoGpusAreFedAtOnce) {
  auto second = std::make_unique<FaultDevice>(DeviceId::Cuda(1), 64ull << 20);
  FaultDevice* gpu1 = second.get();
  registry_.Add(std::move(second));
  PlanOptions po;
  // In plan order, cuda:0's tensors all come before cuda:1's.
  po.device_map = R"({"model.embed_tokens": 0, "model.layers": 0, "": 1})";
  options_.threads = 1;  // reads in the loader's order
  std::vector<std::pair<int, int>> copies_before_read;
  options_.before_read = [&](uint64_t) {
    copies_before_read.emplace_back(gpu_->calls(FaultPoint::kCopy), gpu1->calls(FaultPoint::kCopy));
    return Status::Ok();
  };
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok()) << model.status().message();
  const int gpu0_total = gpu_->calls(FaultPoint::kCopy);
  ASSERT_GT(gpu0_total, 4);
  ASSERT_GT(gpu1->calls(FaultPoint::kCopy), 1);
  // cuda:1 had copies queued while cuda:0 still had most of its own to come.
  bool overlapped = false;
  for (auto [c0, c1] : copies_before_read) overlapped = overlapped || (c1 > 0 && c0 < gpu0_total / 2);
  EXPECT_TRUE(overlapped);
  ExpectFileBytes(*model);
}

TEST_F(DeviceLoaderTest, TiedAliasSharesStorage) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  po.ties = {{"lm_head.weight", "model.embed_tokens.weight"}};
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->Find("lm_head.weight")->data, model->Find("model.embed_tokens.weight")->data);
  EXPECT_TRUE(model->Find("lm_head.weight")->tied);
}

TEST_F(DeviceLoaderTest, RefusesBeforeAllocatingWhenThePlanDoesNotFit) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  options_.max_memory[DeviceId::Cuda(0)] = 30000;
  auto model = LoadWith(po);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kOutOfMemory);
  const std::string& m = model.status().message();
  EXPECT_NE(m.find("cuda:0"), std::string::npos) << m;
  EXPECT_NE(m.find("--device-map"), std::string::npos) << m;
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), 0);
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocatePinned), 0);

  // The margin counts: 64 MiB free minus a 64 MiB margin leaves nothing.
  options_.max_memory.clear();
  options_.gpu_margin_bytes = 64ull << 20;
  model = LoadWith(po);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("margin"), std::string::npos) << model.status().message();
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), 0);
}

TEST_F(DeviceLoaderTest, CastScratchCountsInTheCheckBeforeAllocating) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  po.cast_to = DType::kF32;
  auto plan = BuildPlan(*catalog_, po);
  ASSERT_TRUE(plan.ok());
  const uint64_t reserve = plan->FindDevice(DeviceId::Cuda(0))->reserve_bytes;
  // The scratch lives in the reservation: a cast load fits exactly.
  ResetDevices(reserve);
  EXPECT_TRUE(LoadWith(po).ok());
  // Per tensor, the scratch is an allocation of its own (four 4096-byte
  // chunks): room for the tensors but not for it.
  options_.alloc = AllocStrategy::kPerTensor;
  ResetDevices(reserve + 1000);
  auto model = LoadWith(po);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kOutOfMemory);
  EXPECT_NE(model.status().message().find("staging and cast buffers"), std::string::npos) << model.status().message();
  EXPECT_NE(model.status().message().find("--chunk-size"), std::string::npos) << model.status().message();
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), 0);
  // The same plan without a cast needs no scratch, and fits.
  po.cast_to.reset();
  EXPECT_TRUE(LoadWith(po).ok());
}

TEST_F(DeviceLoaderTest, AbsentDeviceIsAnError) {
  PlanOptions po;
  po.device = DeviceId::Cuda(3);
  auto model = LoadWith(po);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("cuda:3"), std::string::npos);
}

// 0: no cast; 1: casts on the device; 2: casts on the host (no cast kernel).
class DeviceLoaderFaultTest : public DeviceLoaderTest, public ::testing::WithParamInterface<int> {};

TEST_P(DeviceLoaderFaultTest, EveryFailureReturnsEveryByte) {
  PlanOptions po;
  // More cast pieces on the GPU (7) than chunks of cast scratch (4), so the
  // device-side wait before refilling one runs too.
  po.device_map = R"({"model.layers": 0, "model.embed_tokens": 0, "": "cpu"})";
  if (GetParam() > 0) po.cast_to = DType::kF32;
  const bool kernel = GetParam() != 2;
  gpu_->set_supports_cast(kernel);
  // Count each kind of call in a successful load, then fail each one in turn.
  int successful[hoist::testing::kFaultPointCount];
  {
    auto model = LoadWith(po);
    ASSERT_TRUE(model.ok());
    for (int p = 0; p < hoist::testing::kFaultPointCount; ++p) {
      successful[p] = gpu_->calls(static_cast<FaultPoint>(p));
    }
  }
  EXPECT_EQ(successful[static_cast<int>(FaultPoint::kCast)] > 0, GetParam() == 1);
  EXPECT_EQ(successful[static_cast<int>(FaultPoint::kDeviceWait)] > 0, GetParam() == 1);
  ExpectAllReturned();
  // Once as a failure of that call alone, once sticky: every later call
  // fails too, as on a GPU after a fault, so cleanup cannot lean on the
  // device working again.
  int injected = 0;
  for (bool sticky : {false, true}) {
    for (int p = 0; p < hoist::testing::kFaultPointCount; ++p) {
      for (int k = 1; k <= successful[p]; ++k) {
        SCOPED_TRACE(std::string(sticky ? "sticky " : "") + "point " + std::to_string(p) + " call " + std::to_string(k));
        ResetDevices();
        gpu_->FailAt(static_cast<FaultPoint>(p), k);
        gpu_->set_sticky_failures(sticky);
        gpu_->set_supports_cast(kernel);
        auto model = LoadWith(po);
        ASSERT_FALSE(model.ok());
        const std::string& message = model.status().message();
        EXPECT_TRUE(message.find("injected failure") != std::string::npos ||
                    (sticky && message.find("(sticky)") != std::string::npos))
            << message;
        ExpectAllReturned(!sticky && static_cast<FaultPoint>(p) != FaultPoint::kSynchronize);
        ++injected;
      }
    }
  }
  EXPECT_GT(injected, 40);
}

INSTANTIATE_TEST_SUITE_P(NoCastDeviceCastHostCast, DeviceLoaderFaultTest, ::testing::Values(0, 1, 2));

TEST_F(DeviceLoaderTest, BackgroundPinningFailureFailsTheLoadAndReturnsEveryByte) {
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  options_.staging_slots = 7;  // 2 pinned first, then 2 + 2 + 1 in the background
  for (int k = 2; k <= 4; ++k) {
    SCOPED_TRACE("pinned allocation " + std::to_string(k));
    ResetDevices();
    gpu_->FailAt(FaultPoint::kAllocatePinned, k);
    options_.before_read = HoldUntilPinned(k);
    auto model = LoadWith(po);
    ASSERT_FALSE(model.ok());
    EXPECT_NE(model.status().message().find("injected failure of allocate pinned call"), std::string::npos)
        << model.status().message();
    ExpectAllReturned();
  }
  // And with every pin working, all seven slots serve the load.
  ResetDevices();
  options_.before_read = HoldUntilPinned(4);
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocatePinned), 4);
  ExpectFileBytes(*model);
}

TEST_F(DeviceLoaderTest, DirectReadsLandInTheStagingSlots) {
  {
    Result<File> probe = File::OpenReadDirect(catalog_->files()[0].path);
    if (!probe.ok()) GTEST_SKIP() << "no O_DIRECT here: " << probe.status().message();
  }
  options_.direct = DirectIo::kOn;
  for (uint64_t chunk : {4096u, 5000u, 12288u}) {
    for (bool cast : {false, true}) {
      for (bool kernel : {true, false}) {
        // The ring reads into the slot directly too (io_uring where it is here).
        const bool uring = chunk == 5000u && UringAvailable();
        SCOPED_TRACE("chunk " + std::to_string(chunk) + (cast ? " cast" : "") + (kernel ? "" : " on the host") +
                     (uring ? " io_uring" : ""));
        gpu_->set_supports_cast(kernel);
        options_.chunk_bytes = chunk;
        options_.io = uring ? IoEngine::kUring : IoEngine::kPread;
        PlanOptions po;
        po.device = DeviceId::Cuda(0);
        if (cast) po.cast_to = DType::kF32;
        auto model = LoadWith(po);
        ASSERT_TRUE(model.ok()) << model.status().message();
        EXPECT_EQ(model->stats().direct_files, static_cast<int>(catalog_->files().size()));
        EXPECT_EQ(model->stats().uring_files, uring ? static_cast<int>(catalog_->files().size()) : 0);
        if (!cast) {
          ASSERT_NO_FATAL_FAILURE(ExpectFileBytes(*model));
        }
        for (const TensorView& v : model->tensors()) {
          if (cast) {
            ASSERT_EQ(DeviceBytes(v), FileBytesAsF32(v)) << v.name;
          }
        }
      }
    }
  }
}

using hoist::testing::InPageCache;

// Drops the checkpoint's files (every other one with `odd_only`) from the
// page cache; false where this machine does not let it.
bool EvictAll(const Catalog& catalog, bool odd_only = false) {
  bool evicted = true;
  for (size_t k = odd_only ? 1 : 0; k < catalog.files().size(); k += odd_only ? 2 : 1) {
    hoist::testing::DropFromPageCache(catalog.files()[k].path);
    evicted = evicted && !InPageCache(catalog.files()[k].path);
  }
  return evicted;
}

// While a GPU starts (its first call waits for the CUDA context), the cold
// files are read into the page cache, and the load then reads them from
// memory; buffered or O_DIRECT, the bytes on the device are the file's.
TEST_F(DeviceLoaderTest, ColdFilesAreReadAheadWhileTheGpuStarts) {
  for (DirectIo direct : {DirectIo::kOff, DirectIo::kAuto}) {
    SCOPED_TRACE(direct == DirectIo::kOff ? "buffered" : "--direct auto");
    ResetDevices();
    if (!EvictAll(*catalog_)) GTEST_SKIP() << "the page cache cannot be dropped here (posix_fadvise DONTNEED)";
    gpu_->set_start_delay(std::chrono::milliseconds(300));
    options_.direct = direct;
    PlanOptions po;
    po.device = DeviceId::Cuda(0);
    auto model = LoadWith(po);
    ASSERT_TRUE(model.ok()) << model.status().message();
    const LoadStats& st = model->stats();
    EXPECT_GE(st.device_start_seconds, 0.25);
    // The checkpoint is small: all of it was read during the wait, so the
    // files count as cached and none is read with O_DIRECT.
    EXPECT_EQ(st.read_ahead_bytes, st.bytes_read);
    EXPECT_EQ(st.direct_files, 0);
    for (const CatalogFile& f : catalog_->files()) EXPECT_TRUE(InPageCache(f.path)) << f.path;
    ASSERT_NO_FATAL_FAILURE(ExpectFileBytes(*model));
  }
}

// O_DIRECT reads would not find read-ahead bytes in the cache: with
// --direct on nothing is read ahead.
TEST_F(DeviceLoaderTest, DirectOnReadsNothingAhead) {
  {
    Result<File> probe = File::OpenReadDirect(catalog_->files()[0].path);
    if (!probe.ok()) GTEST_SKIP() << "no O_DIRECT here: " << probe.status().message();
  }
  if (!EvictAll(*catalog_)) GTEST_SKIP() << "the page cache cannot be dropped here (posix_fadvise DONTNEED)";
  gpu_->set_start_delay(std::chrono::milliseconds(100));
  options_.direct = DirectIo::kOn;
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  auto model = LoadWith(po);
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_EQ(model->stats().read_ahead_bytes, 0u);
  EXPECT_EQ(model->stats().direct_files, static_cast<int>(catalog_->files().size()));
}

// Some files cold and some cached, a start too short to read much ahead,
// --direct auto and --io auto: each file is read the way its state asks
// (cold ones read ahead in part through the cache, the rest O_DIRECT), split
// between a GPU and the cpu, and the bytes are the file's.
TEST_F(DeviceLoaderTest, ReadAheadStoppedEarlyOverMixedFilesIsByteExact) {
  ASSERT_GE(catalog_->files().size(), 2u);
  for (int delay_ms : {0, 2}) {
    SCOPED_TRACE("start " + std::to_string(delay_ms) + " ms");
    ResetDevices();
    // Back into the cache (O_DIRECT reads bypass it).
    for (const CatalogFile& f : catalog_->files()) hoist::testing::ReadIntoPageCache(f.path);
    if (!EvictAll(*catalog_, /*odd_only=*/true)) GTEST_SKIP() << "the page cache cannot be dropped here";
    uint64_t cold_bytes = 0;
    for (size_t k = 1; k < catalog_->files().size(); k += 2) cold_bytes += catalog_->files()[k].size_bytes;
    gpu_->set_start_delay(std::chrono::milliseconds(delay_ms));
    options_.direct = DirectIo::kAuto;
    options_.io = IoEngine::kAuto;
    PlanOptions po;
    po.device_map = R"({"model.layers.1": "cpu", "": 0})";
    auto model = LoadWith(po);
    ASSERT_TRUE(model.ok()) << model.status().message();
    EXPECT_LE(model->stats().read_ahead_bytes, cold_bytes);
    EXPECT_LE(model->stats().direct_files, static_cast<int>(catalog_->files().size() / 2));
    ASSERT_NO_FATAL_FAILURE(ExpectFileBytes(*model));
  }
}

// Files already in the page cache, and loads with no GPU to wait for, read
// nothing ahead.
TEST_F(DeviceLoaderTest, NothingIsReadAheadForCachedFilesOrCpuLoads) {
  gpu_->set_start_delay(std::chrono::milliseconds(100));
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  auto warm = LoadWith(po);  // the files were just written: in the cache
  ASSERT_TRUE(warm.ok()) << warm.status().message();
  EXPECT_EQ(warm->stats().read_ahead_bytes, 0u);
  if (!EvictAll(*catalog_)) GTEST_SKIP() << "the page cache cannot be dropped here (posix_fadvise DONTNEED)";
  po.device = DeviceId::Cpu();
  auto cpu = LoadWith(po);
  ASSERT_TRUE(cpu.ok()) << cpu.status().message();
  EXPECT_EQ(cpu->stats().read_ahead_bytes, 0u);
  EXPECT_GT(cpu->stats().bytes_read, 0u);
}

// A reservation that fails after the read-ahead: the load fails, and every
// byte is returned.
TEST_F(DeviceLoaderTest, ReservationFailingAfterTheReadAheadReturnsEveryByte) {
  if (!EvictAll(*catalog_)) GTEST_SKIP() << "the page cache cannot be dropped here (posix_fadvise DONTNEED)";
  gpu_->set_start_delay(std::chrono::milliseconds(50));
  gpu_->FailAt(FaultPoint::kAllocate, 1);
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  auto model = LoadWith(po);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), 1);
  ExpectAllReturned();
  // The read-ahead ran before the failure: the files are in the cache.
  for (const CatalogFile& f : catalog_->files()) EXPECT_TRUE(InPageCache(f.path)) << f.path;
}

// On a GPU a tensor is complete once the device has run its copies, not
// when they were queued: with copies that land 200 ms after they are issued,
// the first tensor takes at least that long, pipelined or not; a tensor the
// map keeps in host memory is complete as soon as it is read.
TEST_F(DeviceLoaderTest, TimeToFirstTensorOnAGpuWaitsForItsCopies) {
  options_.chunk_bytes = 1 << 20;  // a piece per tensor, and a slot for each: no read waits for a copy
  options_.staging_slots = 8;
  for (int mode = 0; mode < 3; ++mode) {
    SCOPED_TRACE(mode == 0 ? "pipelined" : mode == 1 ? "--no-pipeline" : "part on the cpu");
    ResetDevices();
    gpu_->set_copy_latency(std::chrono::milliseconds(200));
    options_.pipeline = mode != 1;
    PlanOptions po;
    if (mode < 2) po.device = DeviceId::Cuda(0);
    if (mode == 2) po.device_map = R"({"model.layers.1": "cpu", "": 0})";
    auto model = LoadWith(po);
    ASSERT_TRUE(model.ok()) << model.status().message();
    const LoadStats& st = model->stats();
    EXPECT_LE(st.time_to_first_tensor, st.seconds);
    if (mode < 2) {
      EXPECT_GE(st.time_to_first_tensor, 0.2);
    } else {
      EXPECT_LT(st.time_to_first_tensor, 0.2);
      EXPECT_GE(st.seconds, 0.2);
    }
  }
}

// Each read failing in turn, on one GPU, with casts on it (the pieces over
// the cast scratch included), and split between a GPU and the cpu.
TEST_F(DeviceLoaderTest, ReadFailureReturnsEveryByte) {
  for (int mode = 0; mode < 3; ++mode) {
    PlanOptions po;
    if (mode < 2) po.device = DeviceId::Cuda(0);
    if (mode == 1) po.cast_to = DType::kF32;
    if (mode == 2) po.device_map = R"({"model.layers": 0, "": "cpu"})";
    std::atomic<uint64_t> reads{0};
    options_.before_read = [&](uint64_t) {
      reads.fetch_add(1);
      return Status::Ok();
    };
    ResetDevices();
    ASSERT_TRUE(LoadWith(po).ok());
    ASSERT_GT(reads.load(), 10u);
    for (uint64_t k = 0; k < reads.load(); ++k) {
      SCOPED_TRACE("mode " + std::to_string(mode) + ", read " + std::to_string(k));
      ResetDevices();
      options_.before_read = [k](uint64_t i) { return i == k ? IoError("disk on fire") : Status::Ok(); };
      auto model = LoadWith(po);
      ASSERT_FALSE(model.ok());
      EXPECT_NE(model.status().message().find("disk on fire"), std::string::npos);
      EXPECT_NE(model.status().message().find("tensor '"), std::string::npos);
      ExpectAllReturned();
    }
  }
}

// A cancel flag set while the reads run (as the CLI's signal handler and the
// Python module's wait for Ctrl-C set it): each reader stops at its next
// read, the load fails with kCancelled and names no tensor (none is at
// fault), and every byte is returned. On one GPU, with casts on it, split
// with the cpu, with an allocation per tensor, and on the cpu alone.
TEST_F(DeviceLoaderTest, CancelStopsTheReadsAndReturnsEveryByte) {
  for (int mode = 0; mode < 5; ++mode) {
    SCOPED_TRACE("mode " + std::to_string(mode));
    PlanOptions po;
    if (mode == 2) {
      po.device_map = R"({"model.layers": 0, "": "cpu"})";
    } else {
      po.device = mode == 4 ? DeviceId::Cpu() : DeviceId::Cuda(0);
    }
    if (mode == 1) po.cast_to = DType::kF32;
    options_.alloc = mode == 3 ? AllocStrategy::kPerTensor : AllocStrategy::kReserve;
    ResetDevices();
    std::atomic<bool> cancel{false};
    std::atomic<int> reads{0}, reads_after{0};
    options_.cancel = &cancel;
    options_.before_read = [&](uint64_t) {
      if (cancel.load()) reads_after.fetch_add(1);
      if (reads.fetch_add(1) == 5) cancel.store(true);
      return Status::Ok();
    };
    auto model = LoadWith(po);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), StatusCode::kCancelled) << model.status().message();
    EXPECT_EQ(model.status().message().find("tensor '"), std::string::npos) << model.status().message();
    // The reader that set it and each of the others come to it once more at
    // most: the check that stops them.
    EXPECT_LE(reads_after.load(), options_.threads);
    ExpectAllReturned();
    // Without the flag set the same load reads far more.
    cancel.store(false);
    options_.before_read = [&](uint64_t) {
      reads.fetch_add(1);
      return Status::Ok();
    };
    reads.store(0);
    ResetDevices();
    ASSERT_TRUE(LoadWith(po).ok());
    EXPECT_GT(reads.load(), 5 + options_.threads);
  }
}

// Set before the load starts: nothing is allocated or read.
TEST_F(DeviceLoaderTest, CancelSetBeforeTheLoadAllocatesAndReadsNothing) {
  std::atomic<bool> cancel{true};
  int reads = 0;
  options_.cancel = &cancel;
  options_.before_read = [&](uint64_t) {
    ++reads;
    return Status::Ok();
  };
  PlanOptions po;
  po.device = DeviceId::Cuda(0);
  auto model = LoadWith(po);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kCancelled);
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocate), 0);
  EXPECT_EQ(gpu_->calls(FaultPoint::kAllocatePinned), 0);
  EXPECT_EQ(reads, 0);
  ExpectAllReturned();
}

}  // namespace
}  // namespace hoist
