#include "cli/probe.h"

#include <cstdio>
#include <string>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#ifdef HOIST_WITH_CUDA
#include "hoist/cuda.h"
#endif

namespace hoist::cli {

#ifdef HOIST_WITH_CUDA

namespace {

using nlohmann::ordered_json;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// A cudaMalloc time of 0 means "not measured" (the size did not fit).
ordered_json MicrosOrNull(double us) { return us > 0 ? ordered_json(us) : ordered_json(nullptr); }
std::string MicrosText(double us) { return us > 0 ? fmt::format("{:10.1f} us", us) : "   skipped (does not fit)"; }

}  // namespace

int RunProbe(const ProbeArgs& args) {
  Result<std::vector<CudaProbe>> probes = ProbeCudaDevices();
  if (!probes.ok()) {
    fmt::print(stderr, "error: {}\n", probes.status().message());
    return probes.status().IsBadInput() ? 2 : 1;
  }
  if (args.json) {
    ordered_json out;
    out["gpus"] = ordered_json::array();
    for (const CudaProbe& p : *probes) {
      out["gpus"].push_back({{"index", p.index},
                             {"name", p.name},
                             {"free_bytes", p.free_bytes},
                             {"total_bytes", p.total_bytes},
                             {"h2d_pinned_gbps", p.h2d_pinned_gbps},
                             {"h2d_pageable_gbps", p.h2d_pageable_gbps},
                             {"pin_gbps", p.pin_gbps},
                             {"malloc_us_1mib", MicrosOrNull(p.malloc_us_1mib)},
                             {"malloc_us_64mib", MicrosOrNull(p.malloc_us_64mib)},
                             {"malloc_us_1gib", MicrosOrNull(p.malloc_us_1gib)}});
    }
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  if (probes->empty()) {
    std::string why = CudaUnavailableReason();
    fmt::print("no CUDA GPU found{}\n", why.empty() ? "" : " (" + why + ")");
    return 0;
  }
  for (size_t i = 0; i < probes->size(); ++i) {
    const CudaProbe& p = (*probes)[i];
    if (i > 0) fmt::print("\n");
    fmt::print("cuda:{}  {}\n", p.index, p.name);
    fmt::print("  memory free / total      {:.2f} / {:.2f} GiB\n", p.free_bytes / kGiB, p.total_bytes / kGiB);
    fmt::print("  host-to-device pinned    {:10.2f} GB/s\n", p.h2d_pinned_gbps);
    fmt::print("  host-to-device pageable  {:10.2f} GB/s\n", p.h2d_pageable_gbps);
    fmt::print("  host pinning             {:10.2f} GB/s\n", p.pin_gbps);
    fmt::print("  cudaMalloc 1 MiB         {}\n", MicrosText(p.malloc_us_1mib));
    fmt::print("  cudaMalloc 64 MiB        {}\n", MicrosText(p.malloc_us_64mib));
    fmt::print("  cudaMalloc 1 GiB         {}\n", MicrosText(p.malloc_us_1gib));
  }
  return 0;
}

#else  // !HOIST_WITH_CUDA

int RunProbe(const ProbeArgs& args) {
  if (args.json) {
    fmt::print("{}\n", nlohmann::ordered_json{{"gpus", nlohmann::ordered_json::array()}, {"cuda", false}}.dump(2));
  } else {
    fmt::print("this build of hoist has no CUDA backend (it was built without the CUDA toolkit)\n");
  }
  return 0;
}

#endif  // HOIST_WITH_CUDA

}  // namespace hoist::cli
