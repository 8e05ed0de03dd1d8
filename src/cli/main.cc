// hoist: load model checkpoints at the speed of the hardware.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <system_error>

#include "io/hub_cache.h"
#include "cli/commands.h"
#include "cli/probe.h"
#include "hoist/synth.h"
#include "util/text.h"

namespace {
int Run(int argc, char** argv);
}  // namespace

// Output that cannot be written (a full disk, a closed pipe's reader gone
// without SIGPIPE) is a failure of its own: one line, exit 1, never an
// abort or a silent success.
int main(int argc, char** argv) {
  int rc = 0;
  try {
    rc = Run(argc, argv);
  } catch (const std::system_error& e) {  // fmt::print found stdout unwritable
    std::fprintf(stderr, "error: stdout: cannot write: %s\n", e.code().message().c_str());
    return 1;
  }
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    std::fprintf(stderr, "error: stdout: cannot write: %s\n", std::strerror(errno));
    return rc == 0 ? 1 : rc;
  }
  return rc;
}

namespace {
int Run(int argc, char** argv) {
  using namespace hoist::cli;
  CLI::App app{"hoist: load model checkpoints (safetensors) onto accelerators at the speed of the hardware"};
  app.set_version_flag("--version", std::string("hoist ") + HOIST_VERSION);
  app.require_subcommand(1);

  InspectArgs inspect;
  auto* c_inspect = app.add_subcommand("inspect", "List the tensors of a checkpoint (reads headers only)");
  c_inspect->add_option("PATH", inspect.path, ".safetensors file or checkpoint directory")->required();
  c_inspect->add_flag("--json", inspect.json, "Print JSON instead of a table");

  auto add_plan_flags = [](CLI::App* c, hoist::PlanRequest& a, AssignmentFlags& f) {
    c->add_option("PATH", a.path, ".safetensors file or checkpoint directory")->required();
    c->add_option("--device", a.device, "Put everything on one device: cpu, cuda, cuda:N or N, disk (left in its file) (default: cuda:0 if present, else cpu)");
    c->add_option("--device-map", a.device_map,
                  "accelerate-style map (JSON inline or a file: {\"model.layers.0\": 0, \"\": \"cpu\"}) "
                  "or auto|balanced|balanced_low_0|sequential");
    c->add_option("--max-memory", f.max_memory, "Per-device limits: 0=20GiB,1=20GiB,cpu=64GiB");
    c->add_option("--dtype", a.dtype, "Cast floating-point tensors to bf16, f16 or f32 (quantized data and scales never)");
    c->add_option("--only", a.only, "Only tensors whose (mapped) name matches this regex");
    c->add_option("--tie", f.ties, "DST=SRC: DST shares SRC's storage (repeatable)");
    c->add_option("--rename", f.renames, "REGEX=REPLACEMENT, applied to names; first match wins (repeatable)");
    c->add_option("--drop", a.drops, "Drop tensors whose name matches REGEX (repeatable)");
    c->add_option("--compat", a.compat, "hf-legacy: gamma/beta -> weight/bias, drop rotary_emb.inv_freq");
    c->add_option("--expect", a.expect_file, "JSON file: a list of names, or name -> {dtype, shape}");
    c->add_flag("--strict", a.strict, "With --expect: a name missing, unexpected or mismatched is an error (exit 2), "
                "found before anything is read");
    c->add_option("--no-split", a.no_split, "REGEX naming modules a device-map strategy never splits (repeatable)");
    c->add_flag("--no-config-ties", a.no_config_ties, "Ignore tie_word_embeddings in a config.json beside the checkpoint");
    c->add_option("--shard", a.shard, "RANK/WORLD: load part RANK of each tensor a --split rule names (tensor parallelism)");
    c->add_option("--split", a.splits,
                  "REGEX=DIM: with --shard, split the tensors whose (mapped) name matches along DIM (negative: from "
                  "the last) into WORLD equal parts; first match wins (repeatable)");
    c->add_flag("--mmap", a.map_host,
                "cpu tensors that need no cast are mapped from their files (copy-on-write, sharing the page cache) "
                "instead of copied into host memory");
    c->add_option("--margin", a.margin, "Free memory left on each GPU (0: none)")->capture_default_str();
  };

  LoadArgs load;
  auto* c_load = app.add_subcommand("load", "Load a checkpoint onto devices and report how fast");
  add_plan_flags(c_load, load.request.plan, load.flags);
  c_load->add_option("--alloc", load.request.alloc, "reserve: one allocation per device; per-tensor: the baseline")
      ->check(CLI::IsMember({"reserve", "per-tensor"}))->capture_default_str();
  c_load->add_option("--threads", load.request.threads, "Reader threads (default: one per core, 2..32)")
      ->check(CLI::Range(1, 1024));
  c_load->add_option("--report", load.report, "Write a JSON report to this file (-: to stdout, the summary then on stderr)");
  c_load->add_option("--chunk-size", load.request.chunk_size, "Largest single read, and the size of a staging buffer (e.g. 32MiB)")->capture_default_str();
  c_load->add_option("--staging-buffers", load.request.staging_slots,
                     "Pinned staging buffers per GPU (default 0: its share of the reader threads + 2, at most 32)")
      ->check(CLI::Range(0, 256));
  c_load->add_option("--direct", load.request.direct,
                     "O_DIRECT reads: off, auto (for files outside the page cache), on")
      ->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  c_load->add_option("--io", load.request.io,
                     "What issues the reads: pread, uring (io_uring, several reads in flight per thread), or auto "
                     "(uring for files outside the page cache)")
      ->check(CLI::IsMember({"auto", "pread", "uring"}))->capture_default_str();
  c_load->add_flag("--no-pipeline", [&load](int64_t) { load.request.pipeline = false; },
                   "Read everything into host memory, then copy (the baseline for benchmarks)");
  c_load->add_flag("--quiet,-q", load.quiet, "Print nothing on success (and no progress line)");

  PlanCmdArgs plan;
  auto* c_plan = app.add_subcommand("plan", "Print where each tensor would go, without loading (no device needed)");
  add_plan_flags(c_plan, plan.request, plan.flags);
  c_plan->add_flag("--json", plan.json, "Print JSON");

  ProbeArgs probe;
  auto* c_probe = app.add_subcommand(
      "probe", "Measure what this machine offers a load: each GPU's memory, host-to-device GB/s and cudaMalloc "
               "cost; the host's fresh-memory and memcpy GB/s");
  c_probe->add_flag("--json", probe.json, "Print JSON");
  c_probe->add_option("--host-bytes", probe.host_bytes,
                      "Fresh host memory to measure (e.g. 2GiB; default 1GiB, at most half the free memory)");
  c_probe->add_option("--threads", probe.threads, "Threads for the host measurement (default: a load's)")
      ->check(CLI::Range(1, 1024));

  ConvertArgs convert;
  auto* c_convert = app.add_subcommand("convert", "Rewrite a checkpoint: cast, filter, re-shard");
  c_convert->add_option("SRC", convert.request.src, "Source .safetensors file or directory")->required();
  c_convert->add_option("DST", convert.request.dst, "Output .safetensors file, or a directory for shards")->required();
  c_convert->add_option("--dtype", convert.request.dtype, "Cast floating-point tensors to bf16, f16 or f32");
  c_convert->add_option("--only", convert.request.only, "Keep only tensors whose (mapped) name matches this regex");
  c_convert->add_option("--rename", convert.renames, "REGEX=REPLACEMENT, applied to names; first match wins (repeatable)");
  c_convert->add_option("--drop", convert.request.drops, "Leave out tensors whose name matches REGEX (repeatable)");
  c_convert->add_option("--compat", convert.request.compat, "hf-legacy: gamma/beta -> weight/bias, drop rotary_emb.inv_freq");
  c_convert->add_option("--max-shard-size", convert.request.max_shard_size, "Largest shard (5GB, 500MB, 2GiB)")
      ->capture_default_str();
  c_convert->add_option("--threads", convert.request.threads, "I/O threads")->check(CLI::Range(1, 1024));
  c_convert->add_flag("--no-sync", [&convert](int64_t) { convert.request.sync = false; },
                      "Do not wait for the disk: faster, but a crash soon after may leave an output file empty "
                      "or partial, and the earlier one it replaced gone (by default each is on the disk before "
                      "it replaces anything)");
  c_convert->add_flag("-q,--quiet", convert.quiet,
                      "No summary on success; warnings and the earlier outputs removed are still told (stderr)");
  c_convert->add_option("--shard", convert.request.shard,
                        "RANK/WORLD: write part RANK of each tensor a --split rule names (one tensor-parallel rank)");
  c_convert->add_option("--split", convert.request.splits,
                        "REGEX=DIM: with --shard, the tensors to split along DIM (negative: from the last) into "
                        "WORLD equal parts; first match wins (repeatable)");

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
  c_synth->add_option("--max-shard-size", synth.max_shard_size,
                      "Largest shard (default: about the published checkpoint's, 5GB for most)");
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
    // An unknown word where the subcommand goes says so, not "required".
    if (app.get_subcommands().empty() && argc > 1 && argv[1][0] != '-') {
      fmt::print(stderr, "error: {} is not a command: inspect, load, plan, probe, convert or synth (see --help)\n",
                 hoist::QuoteName(argv[1]));
      return 2;
    }
    // CLI11 says "--only: At Most 1 required but received 2" of an option
    // given twice that takes one value.
    std::string what = e.what();
    if (const size_t at = what.find(": At Most 1 required but received "); at != std::string::npos) {
      what = what.substr(0, at) + ": given more than once; it takes one value";
    }
    fmt::print(stderr, "error: {} (see --help)\n", what);
    return 2;
  }
  // A PATH that does not exist may name a model in the Hugging Face cache
  // ("org/name"): its snapshot directory is read instead.
  auto resolve = [](std::string& path) {
    hoist::Result<std::string> found = hoist::ResolveCheckpointPath(path);
    if (!found.ok()) return Fail(found.status());
    path = *found;
    return 0;
  };
  if (c_inspect->parsed()) return resolve(inspect.path) ? 2 : RunInspect(inspect);
  if (c_load->parsed()) return resolve(load.request.plan.path) ? 2 : RunLoad(load);
  if (c_plan->parsed()) return resolve(plan.request.path) ? 2 : RunPlan(plan);
  if (c_probe->parsed()) return RunProbe(probe);
  if (c_convert->parsed()) return resolve(convert.request.src) ? 2 : RunConvert(convert);
  if (c_synth->parsed()) return RunSynth(synth);
  return 2;
}
}  // namespace
