// hoist: load model checkpoints at the speed of the hardware.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/commands.h"
#include "hoist/synth.h"

int main(int argc, char** argv) {
  using namespace hoist::cli;
  CLI::App app{"hoist: load model checkpoints (safetensors) onto accelerators at the speed of the hardware"};
  app.set_version_flag("--version", std::string("hoist ") + HOIST_VERSION);
  app.require_subcommand(1);

  InspectArgs inspect;
  auto* c_inspect = app.add_subcommand("inspect", "List the tensors of a checkpoint (reads headers only)");
  c_inspect->add_option("PATH", inspect.path, ".safetensors file or checkpoint directory")->required();
  c_inspect->add_flag("--json", inspect.json, "Print JSON instead of a table");

  LoadArgs load;
  auto* c_load = app.add_subcommand("load", "Load a checkpoint into memory and report how fast");
  c_load->add_option("PATH", load.path, ".safetensors file or checkpoint directory")->required();
  c_load->add_option("--device", load.device, "Target device (cpu)")->capture_default_str();
  c_load->add_option("--dtype", load.dtype, "Cast floating-point tensors to bf16, f16 or f32");
  c_load->add_option("--threads", load.threads, "Reader threads (default: one per core, 2..32)")
      ->check(CLI::Range(1, 1024));
  c_load->add_option("--only", load.only, "Load only tensors whose name matches this regex");
  c_load->add_option("--report", load.report, "Write a JSON report to this file");
  c_load->add_option("--chunk-size", load.chunk_size, "Largest single read (e.g. 8MiB)")->capture_default_str();
  c_load->add_flag("--quiet,-q", load.quiet, "Print nothing on success");

  ConvertArgs convert;
  auto* c_convert = app.add_subcommand("convert", "Rewrite a checkpoint: cast, filter, re-shard");
  c_convert->add_option("SRC", convert.src, "Source .safetensors file or directory")->required();
  c_convert->add_option("DST", convert.dst, "Output .safetensors file, or a directory for shards")->required();
  c_convert->add_option("--dtype", convert.dtype, "Cast floating-point tensors to bf16, f16 or f32");
  c_convert->add_option("--only", convert.only, "Keep only tensors whose name matches this regex");
  c_convert->add_option("--max-shard-size", convert.max_shard_size, "Largest shard (5GB, 500MB, 2GiB)")
      ->capture_default_str();
  c_convert->add_option("--threads", convert.threads, "I/O threads")->check(CLI::Range(1, 1024));

  SynthArgs synth;
  std::string arch_help = "Architecture:";
  for (const std::string& n : hoist::SynthArchNames()) arch_help += " " + n;
  auto* c_synth = app.add_subcommand("synth", "Write a synthetic checkpoint with a real architecture's layout");
  c_synth->add_option("--arch", synth.arch, arch_help)->required();
  c_synth->add_option("OUT_DIR", synth.out_dir, "Directory to write")->required();
  c_synth->add_option("--dtype", synth.dtype, "bf16, f16 or f32")->capture_default_str();
  c_synth->add_option("--layers", synth.layers, "Number of decoder layers (default: the architecture's)")
      ->check(CLI::Range(1, 10000));
  c_synth->add_flag("--sparse", synth.sparse, "Write headers only; leave the data as file holes");
  c_synth->add_option("--max-shard-size", synth.max_shard_size, "Largest shard")->capture_default_str();
  c_synth->add_option("--threads", synth.threads, "Writer threads")->check(CLI::Range(1, 1024));
  c_synth->add_flag("--quiet,-q", synth.quiet, "Print nothing on success");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "error: {} (see --help)\n", e.what());
    return 2;
  }
  if (c_inspect->parsed()) return RunInspect(inspect);
  if (c_load->parsed()) return RunLoad(load);
  if (c_convert->parsed()) return RunConvert(convert);
  if (c_synth->parsed()) return RunSynth(synth);
  return 2;
}
