// Micro-benchmarks of hoist's CPU hot spots. Figures quoted in notes come
// from running this binary: build/hoist_bench [--benchmark_filter=...].
#include <benchmark/benchmark.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cast/cast.h"
#include "format/safetensors.h"
#include "hoist/catalog.h"
#include "hoist/plan.h"
#include "hoist/synth.h"
#include "hoist/writer.h"

namespace hoist {
namespace {

// n small tensors, named as in a mixture-of-experts model.
std::vector<OutTensor> ManyTensors(int n) {
  std::vector<OutTensor> tensors;
  tensors.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    tensors.push_back({"model.layers." + std::to_string(i / 10) + ".mlp.experts." + std::to_string(i % 10) +
                           ".weight",
                       DType::kBF16, {4, 2}, 16});
  }
  return tensors;
}

std::vector<const OutTensor*> Pointers(const std::vector<OutTensor>& tensors) {
  std::vector<const OutTensor*> ptrs;
  for (const OutTensor& t : tensors) ptrs.push_back(&t);
  return ptrs;
}

// A header with n small tensors, as the reference writer lays them out.
std::string MakeHeader(int n) { return BuildHeader(Pointers(ManyTensors(n)), {{"format", "pt"}}); }

// Writing such a header (hoist convert and synth).
void BM_BuildHeader(benchmark::State& state) {
  const std::vector<OutTensor> tensors = ManyTensors(static_cast<int>(state.range(0)));
  const std::vector<const OutTensor*> ptrs = Pointers(tensors);
  for (auto _ : state) benchmark::DoNotOptimize(BuildHeader(ptrs, {{"format", "pt"}}));
  state.counters["tensors/s"] =
      benchmark::Counter(static_cast<double>(state.range(0)), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_BuildHeader)->Arg(1000)->Arg(100000)->Unit(benchmark::kMillisecond);

void BM_ParseHeader(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::string header = MakeHeader(n);
  for (auto _ : state) {
    Result<ParsedHeader> parsed = ParseHeaderJson("bench", header, static_cast<uint64_t>(n) * 16);
    if (!parsed.ok()) state.SkipWithError(parsed.status().message().c_str());
    benchmark::DoNotOptimize(parsed);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(header.size()));
  state.counters["tensors/s"] = benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ParseHeader)->Arg(1000)->Arg(100000)->Unit(benchmark::kMillisecond);

// Opening a sharded checkpoint of n tensors in 160 shards with an index (the
// size of DeepSeek-V3's: 163 shards, about 90k tensors): the index, every
// shard's header and the cross-check between them.
void BM_OpenCatalog(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const std::vector<OutTensor> tensors = ManyTensors(n);
  const std::string dir = "/tmp/hoist-bench-catalog-" + std::to_string(n);
  WriteOptions wo;
  wo.sparse = true;
  wo.max_shard_bytes = static_cast<uint64_t>(n) * 16 / 160 + 16;
  if (!WriteCheckpoint(dir, tensors, {}, wo, nullptr).ok()) return state.SkipWithError("cannot write");
  for (auto _ : state) {
    Result<Catalog> cat = OpenCatalog(dir);
    if (!cat.ok()) return state.SkipWithError(cat.status().message().c_str());
    benchmark::DoNotOptimize(cat);
  }
  std::filesystem::remove_all(dir);
  state.counters["tensors/s"] = benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_OpenCatalog)->Arg(100000)->Unit(benchmark::kMillisecond);

// Planning 100k tensors onto two GPUs and the cpu with a balanced device map,
// from a header-only checkpoint written once.
void BM_Plan(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::vector<OutTensor> tensors;
  for (int i = 0; i < n; ++i) {
    tensors.push_back({"model.layers." + std::to_string(i / 100) + ".experts." + std::to_string(i % 100) + ".weight",
                       DType::kBF16, {64, 64}, 64 * 64 * 2});
  }
  std::string path = "/tmp/hoist-bench-plan-" + std::to_string(n) + ".safetensors";
  WriteOptions wo;
  wo.sparse = true;
  wo.max_shard_bytes = UINT64_MAX;
  if (!WriteCheckpoint(path, tensors, {}, wo, nullptr).ok()) return state.SkipWithError("cannot write");
  Result<Catalog> cat = OpenCatalog(path);
  if (!cat.ok()) return state.SkipWithError(cat.status().message().c_str());
  PlanOptions po;
  po.device_map = "balanced";
  po.cast_to = DType::kF32;
  po.capacity_bytes = {{DeviceId::Cuda(0), 1ull << 30}, {DeviceId::Cuda(1), 1ull << 30}, {DeviceId::Cpu(), 1ull << 34}};
  for (auto _ : state) {
    Result<LoadPlan> plan = BuildPlan(*cat, po);
    if (!plan.ok()) return state.SkipWithError(plan.status().message().c_str());
    benchmark::DoNotOptimize(plan);
  }
  std::remove(path.c_str());
  state.counters["tensors/s"] = benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Plan)->Arg(100000)->Unit(benchmark::kMillisecond);

void BM_Cast(benchmark::State& state) {
  const auto src = static_cast<DType>(state.range(0));
  const auto dst = static_cast<DType>(state.range(1));
  const size_t count = 1 << 22;
  std::vector<unsigned char> in(count * static_cast<size_t>(DTypeBits(src) / 8));
  std::vector<unsigned char> out(count * static_cast<size_t>(DTypeBits(dst) / 8));
  SynthFill("x", src, 0, in.size(), in.data());
  for (auto _ : state) {
    CastFloats(src, in.data(), dst, out.data(), count);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(std::string(DTypeName(src)) + "->" + std::string(DTypeName(dst)));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(out.size()));
}
void CastPairs(benchmark::internal::Benchmark* b) {
  const DType types[] = {DType::kF16, DType::kBF16, DType::kF32, DType::kF64};
  for (DType s : types) {
    for (DType d : {DType::kF16, DType::kBF16, DType::kF32}) {
      if (s != d) b->Args({static_cast<int64_t>(s), static_cast<int64_t>(d)});
    }
  }
}
BENCHMARK(BM_Cast)->Apply(CastPairs)->Unit(benchmark::kMillisecond);

void BM_SynthFill(benchmark::State& state) {
  std::vector<unsigned char> buf(8 << 20);
  uint64_t offset = 0;
  for (auto _ : state) {
    SynthFill("model.layers.0.mlp.up_proj.weight", DType::kBF16, offset, buf.size(), buf.data());
    offset += buf.size();
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(buf.size()));
}
BENCHMARK(BM_SynthFill)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace hoist

BENCHMARK_MAIN();
