// The `hoist` subcommands. Each returns the process exit code: 0 success,
// 2 bad input or arguments, 1 any other failure.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace hoist::cli {

struct InspectArgs {
  std::string path;
  bool json = false;
};
// Planning flags shared by `load` and `plan`.
struct PlanArgs {
  std::string path;
  std::string device;       // empty: the best device present (cuda:0, else cpu)
  std::string device_map;
  std::string max_memory;
  std::string dtype;
  std::string only;
  std::vector<std::string> ties, renames, drops, no_split;
  std::string compat;
  std::string expect;
  bool no_config_ties = false;
};
struct LoadArgs {
  PlanArgs plan;
  std::string alloc = "reserve";
  std::string margin = "1.2GiB";
  int threads = 0;
  std::string report;
  std::string chunk_size = "8MiB";
  int staging_slots = 4;
  bool quiet = false;
};
struct PlanCmdArgs {
  PlanArgs plan;
  bool json = false;
};
struct ConvertArgs {
  std::string src, dst;
  std::string dtype;
  std::string only;
  std::string max_shard_size = "5GB";
  int threads = 0;
};
struct SynthArgs {
  std::string arch;
  std::string out_dir;
  std::string dtype = "bf16";
  int layers = -1;
  bool sparse = false;
  std::string max_shard_size = "5GB";
  int threads = 0;
  bool quiet = false;
};

int RunInspect(const InspectArgs& args);
int RunLoad(const LoadArgs& args);
int RunPlan(const PlanCmdArgs& args);
int RunConvert(const ConvertArgs& args);
int RunSynth(const SynthArgs& args);

}  // namespace hoist::cli
