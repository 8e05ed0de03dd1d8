// `hoist probe`: what this machine offers a load. For each GPU: memory,
// host-to-device bandwidth, cudaMalloc and pinning costs. For the host: what
// fresh memory costs (a load onto `cpu` pays it for its whole arena) and
// memcpy. Returns the process exit code like the other subcommands (see
// cli/commands.h): 0 also when there is no GPU or the build has no CUDA
// backend.
#pragma once

#include <string>

namespace hoist::cli {

struct ProbeArgs {
  bool json = false;
  std::string host_bytes;  // memory the host probe touches; "": 1 GiB, at most half the free memory
  int threads = 0;                  // host probe threads; 0: a load's default
};

int RunProbe(const ProbeArgs& args);

}  // namespace hoist::cli
