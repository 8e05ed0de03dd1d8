// `hoist probe`: what each GPU offers a load (memory, host-to-device
// bandwidth, cudaMalloc and pinning costs). Returns the process exit code like
// the other subcommands (see cli/commands.h): 0 also when there is no GPU or
// the build has no CUDA backend.
#pragma once

namespace hoist::cli {

struct ProbeArgs {
  bool json = false;
};

int RunProbe(const ProbeArgs& args);

}  // namespace hoist::cli
