// The `hoist` subcommands. Each returns the process exit code: 0 success,
// 2 bad input or arguments, 1 any other failure.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "api/session.h"

namespace hoist::cli {

// Prints "error: <message>" on stderr and returns the exit code for `s`:
// 2 for bad input, 1 otherwise.
int Fail(const Status& s);

// The placement flags whose text the command splits itself: --tie DST=SRC,
// --rename REGEX=REPLACEMENT, --max-memory 0=20GiB,cpu=64GiB.
struct AssignmentFlags {
  std::vector<std::string> ties, renames;
  std::string max_memory;
};
// Splits them into `request`'s pairs; InvalidArgument naming the flag.
Status ApplyAssignmentFlags(const AssignmentFlags& flags, PlanRequest* request);

struct InspectArgs {
  std::string path;
  bool json = false;
};
struct LoadArgs {
  LoadRequest request;
  AssignmentFlags flags;
  std::string report;
  bool quiet = false;
};
struct PlanCmdArgs {
  PlanRequest request;
  AssignmentFlags flags;
  bool json = false;
};
struct ConvertArgs {
  ConvertRequest request;
  std::vector<std::string> renames;  // REGEX=REPLACEMENT, split into request.renames
  bool quiet = false;
};
struct SynthArgs {
  std::string arch;
  std::string out_dir;
  std::string dtype = "bf16";
  int layers = -1;
  bool sparse = false;
  std::string max_shard_size;  // empty: the published checkpoint's
  int threads = 0;
  bool quiet = false;
};

int RunInspect(const InspectArgs& args);
int RunLoad(const LoadArgs& args);
int RunPlan(const PlanCmdArgs& args);
int RunConvert(const ConvertArgs& args);
int RunSynth(const SynthArgs& args);

}  // namespace hoist::cli
