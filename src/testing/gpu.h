// For the gpu-labelled tests: whether a missing GPU fails them rather than
// skips them. scripts/gpu-check sets HOIST_REQUIRE_GPU=1 on a machine whose
// nvidia-smi lists a GPU, so a CUDA runtime that finds none there is a
// failure, not a quiet pass.
#pragma once

#include <cstdlib>
#include <cstring>

namespace hoist::testing {

inline bool GpuRequired() {
  const char* v = std::getenv("HOIST_REQUIRE_GPU");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

}  // namespace hoist::testing
