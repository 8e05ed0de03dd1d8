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
struct LoadArgs {
  std::string path;
  std::string device = "cpu";
  std::string dtype;
  int threads = 0;
  std::string only;
  std::string report;
  std::string chunk_size = "8MiB";
  bool quiet = false;
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
int RunConvert(const ConvertArgs& args);
int RunSynth(const SynthArgs& args);

}  // namespace hoist::cli
