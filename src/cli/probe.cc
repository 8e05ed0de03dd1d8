#include "cli/probe.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "hoist/device.h"
#include "hoist/loader.h"
#include "hoist/writer.h"

#ifdef HOIST_WITH_CUDA
#include "hoist/cuda.h"
#endif

namespace hoist::cli {
namespace {

using nlohmann::ordered_json;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

ordered_json HostJson(const HostProbe& h) {
  return {{"cores", std::thread::hardware_concurrency()},
          {"threads", h.threads},
          {"bytes", h.bytes},
          {"fresh_memory_seconds", h.fresh_seconds},
          {"fresh_memory_gbps", h.fresh_gbps},
          {"memcpy_gbps", h.memcpy_gbps},
          {"free_page_reporting", h.free_page_reporting}};
}

void PrintHost(const HostProbe& h) {
  fmt::print("host  {} cores\n", std::thread::hardware_concurrency());
  fmt::print("  fresh memory, first touch {:10.2f} GB/s  ({:.2f} GiB, {} threads; a cpu load's arena pays this)\n",
             h.fresh_gbps, static_cast<double>(h.bytes) / kGiB, h.threads);
  fmt::print("  memcpy                    {:10.2f} GB/s\n", h.memcpy_gbps);
  if (h.free_page_reporting) {
    fmt::print("  free page reporting on: idle freed memory goes back to the hypervisor, and fresh memory\n"
               "  costs more after an idle spell (bench/fresh-memory-after-idle)\n");
  }
}

#ifdef HOIST_WITH_CUDA

// A cudaMalloc time of 0 means "not measured" (the size did not fit).
ordered_json MicrosOrNull(double us) { return us > 0 ? ordered_json(us) : ordered_json(nullptr); }
std::string MicrosText(double us) { return us > 0 ? fmt::format("{:10.1f} us", us) : "   skipped (does not fit)"; }

Result<ordered_json> ProbeGpus(bool print) {
  Result<std::vector<CudaProbe>> probes = ProbeCudaDevices();
  if (!probes.ok()) return probes.status();
  ordered_json gpus = ordered_json::array();
  if (probes->empty() && print) {
    std::string why = CudaUnavailableReason();
    fmt::print("no CUDA GPU found{}\n", why.empty() ? "" : " (" + why + ")");
  }
  for (const CudaProbe& p : *probes) {
    gpus.push_back({{"index", p.index},
                    {"name", p.name},
                    {"free_bytes", p.free_bytes},
                    {"total_bytes", p.total_bytes},
                    {"h2d_pinned_gbps", p.h2d_pinned_gbps},
                    {"h2d_pageable_gbps", p.h2d_pageable_gbps},
                    {"pin_gbps", p.pin_gbps},
                    {"pinned_alloc_gbps", p.pinned_alloc_gbps},
                    {"malloc_us_1mib", MicrosOrNull(p.malloc_us_1mib)},
                    {"malloc_us_64mib", MicrosOrNull(p.malloc_us_64mib)},
                    {"malloc_us_1gib", MicrosOrNull(p.malloc_us_1gib)}});
    if (!print) continue;
    fmt::print("cuda:{}  {}\n", p.index, p.name);
    fmt::print("  memory free / total      {:.2f} / {:.2f} GiB\n", p.free_bytes / kGiB, p.total_bytes / kGiB);
    fmt::print("  host-to-device pinned    {:10.2f} GB/s\n", p.h2d_pinned_gbps);
    fmt::print("  host-to-device pageable  {:10.2f} GB/s\n", p.h2d_pageable_gbps);
    fmt::print("  host pinning             {:10.2f} GB/s\n", p.pin_gbps);
    fmt::print("  pinned allocation        {:10.2f} GB/s  (cudaHostAlloc, as the staging ring)\n", p.pinned_alloc_gbps);
    fmt::print("  cudaMalloc 1 MiB         {}\n", MicrosText(p.malloc_us_1mib));
    fmt::print("  cudaMalloc 64 MiB        {}\n", MicrosText(p.malloc_us_64mib));
    fmt::print("  cudaMalloc 1 GiB         {}\n\n", MicrosText(p.malloc_us_1gib));
  }
  return gpus;
}

#else  // !HOIST_WITH_CUDA

Result<ordered_json> ProbeGpus(bool print) {
  if (print) fmt::print("this build of hoist has no CUDA backend (it was built without the CUDA toolkit)\n");
  return ordered_json::array();
}

#endif  // HOIST_WITH_CUDA

}  // namespace

int RunProbe(const ProbeArgs& args) {
  Result<uint64_t> host_bytes = uint64_t{1} << 30;
  if (!args.host_bytes.empty()) {
    host_bytes = ParseByteSize(args.host_bytes);
    if (!host_bytes.ok()) host_bytes = InvalidArgument("--host-bytes: " + host_bytes.status().message());
  } else if (Result<MemoryInfo> memory = MakeCpuDevice()->GetMemoryInfo(); memory.ok()) {
    host_bytes = std::min(*host_bytes, memory->free_bytes / 2);  // the default never crowds the machine
  }
  if (!host_bytes.ok()) return Fail(host_bytes.status());
  // The host first: its arguments are checked before anything is printed.
  Result<HostProbe> host = ProbeHost(*host_bytes, args.threads > 0 ? args.threads : DefaultReadThreads());
  if (!host.ok()) return Fail(host.status());
  Result<ordered_json> gpus = ProbeGpus(!args.json);
  if (!gpus.ok()) return Fail(gpus.status());
  if (!args.json) {
    PrintHost(*host);
    return 0;
  }
  ordered_json out;
  out["gpus"] = std::move(*gpus);
#ifndef HOIST_WITH_CUDA
  out["cuda"] = false;
#endif
  out["host"] = HostJson(*host);
  fmt::print("{}\n", out.dump(2));
  return 0;
}

}  // namespace hoist::cli
