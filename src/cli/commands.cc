#include "cli/commands.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "hoist/catalog.h"
#include "hoist/device.h"
#include "hoist/plan.h"
#include "hoist/loader.h"
#include "hoist/synth.h"
#include "hoist/writer.h"
#ifdef HOIST_WITH_CUDA
#include "hoist/cuda.h"
#endif

namespace hoist::cli {
namespace {

using nlohmann::ordered_json;

int Fail(const Status& s) {
  fmt::print(stderr, "error: {}\n", s.message());
  return s.IsBadInput() ? 2 : 1;
}

std::string HumanBytes(uint64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f} GB", static_cast<double>(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.2f} MB", static_cast<double>(n) / 1e6);
  if (n >= 1'000) return fmt::format("{:.2f} kB", static_cast<double>(n) / 1e3);
  return fmt::format("{} B", n);
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

double Rate(uint64_t bytes, double seconds) { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }

Result<std::optional<DType>> ParseDtypeFlag(const std::string& text) {
  if (text.empty()) return std::optional<DType>();
  auto d = ParseCastTarget(text);
  if (!d) return InvalidArgument("--dtype '" + text + "': expected bf16, f16 or f32");
  return std::optional<DType>(*d);
}

Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return IoError(path + ": cannot write");
  out << text;
  out.close();
  if (!out) return IoError(path + ": write failed");
  return Status::Ok();
}

}  // namespace

int RunInspect(const InspectArgs& args) {
  Result<Catalog> cat = OpenCatalog(args.path);
  if (!cat.ok()) return Fail(cat.status());
  if (args.json) {
    ordered_json out;
    out["files"] = ordered_json::array();
    for (const CatalogFile& f : cat->files()) out["files"].push_back(f.path);
    out["tensors"] = ordered_json::array();
    for (const TensorInfo& t : cat->tensors()) {
      out["tensors"].push_back({{"name", t.name},
                                {"dtype", std::string(DTypeName(t.dtype))},
                                {"shape", t.shape},
                                {"file", cat->files()[t.file_index].path},
                                {"offset", t.offset_bytes},
                                {"nbytes", t.size_bytes}});
    }
    out["total_bytes"] = cat->total_bytes();
    out["metadata"] = cat->metadata();
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  size_t name_width = 4;
  for (const TensorInfo& t : cat->tensors()) name_width = std::max(name_width, t.name.size());
  name_width = std::min<size_t>(name_width, 72);
  bool many_files = cat->files().size() > 1;
  fmt::print("{:<{}}  {:<11} {:<22} {:>14} {:>12}{}\n", "name", name_width, "dtype", "shape", "bytes", "offset",
             many_files ? "  file" : "");
  for (const TensorInfo& t : cat->tensors()) {
    std::string file = many_files ? "  " + std::filesystem::path(cat->files()[t.file_index].path).filename().string() : "";
    fmt::print("{:<{}}  {:<11} {:<22} {:>14} {:>12}{}\n", t.name, name_width, DTypeName(t.dtype), ShapeText(t.shape),
               t.size_bytes, t.offset_bytes, file);
  }
  fmt::print("{} tensors, {} ({} bytes) in {} file{}\n", cat->tensors().size(), HumanBytes(cat->total_bytes()),
             cat->total_bytes(), cat->files().size(), cat->files().size() == 1 ? "" : "s");
  for (const auto& [k, v] : cat->metadata()) fmt::print("metadata {}: {}\n", k, v);
  return 0;
}

namespace {

DeviceRegistry MakeRegistry() {
  DeviceRegistry registry = MakeCpuRegistry();
#ifdef HOIST_WITH_CUDA
  int count = 0;
  Status s = RegisterCudaDevices(&registry, &count);
  if (!s.ok()) fmt::print(stderr, "warning: {}\n", s.message());
#endif
  return registry;
}

Result<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(path + ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<std::pair<std::string, std::string>> SplitAssignment(const std::string& flag, const std::string& text) {
  size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) return InvalidArgument(flag + " '" + text + "': expected A=B");
  return std::make_pair(text.substr(0, eq), text.substr(eq + 1));
}

// Turns the flags into PlanOptions; `margin` is subtracted from GPUs' free
// memory when capacities for a device-map strategy are computed.
Result<PlanOptions> MakePlanOptions(const PlanArgs& a, const DeviceRegistry& registry, uint64_t margin,
                                    std::map<DeviceId, uint64_t>* max_memory) {
  PlanOptions o;
  HOIST_ASSIGN_OR_RETURN(o.cast_to, ParseDtypeFlag(a.dtype));
  o.only_regex = a.only;
  o.drops = a.drops;
  o.no_split = a.no_split;
  if (!a.compat.empty() && a.compat != "hf-legacy") {
    return InvalidArgument("--compat '" + a.compat + "': the only mode is hf-legacy");
  }
  o.compat_hf_legacy = a.compat == "hf-legacy";
  for (const std::string& r : a.renames) {
    HOIST_ASSIGN_OR_RETURN(auto kv, SplitAssignment("--rename", r));
    o.renames.push_back({kv.first, kv.second});
  }
  if (!a.no_config_ties) {
    HOIST_ASSIGN_OR_RETURN(o.ties, TiesFromConfig(a.path));
  }
  for (const std::string& t : a.ties) {
    HOIST_ASSIGN_OR_RETURN(auto kv, SplitAssignment("--tie", t));
    o.ties.push_back(kv);
  }
  if (!a.expect.empty()) {
    HOIST_ASSIGN_OR_RETURN(std::string text, ReadText(a.expect));
    HOIST_ASSIGN_OR_RETURN(o.expect, ParseExpect(text, a.expect));
  }
  if (!a.max_memory.empty()) {
    HOIST_ASSIGN_OR_RETURN(*max_memory, ParseMaxMemory(a.max_memory));
  }
  if (!a.device.empty() && !a.device_map.empty()) return InvalidArgument("give --device or --device-map, not both");
  if (!a.device_map.empty()) {
    o.device_map = a.device_map;
    // Capacities: free memory (less the margin on GPUs), capped by --max-memory;
    // devices named only in --max-memory count with that size (planning for
    // a machine this is not).
    for (Device* d : registry.All()) {
      Result<MemoryInfo> mem = d->GetMemoryInfo();
      if (!mem.ok()) return mem.status();
      uint64_t m = d->id().kind == DeviceKind::kCuda ? margin : 0;
      o.capacity_bytes[d->id()] = mem->free_bytes > m ? mem->free_bytes - m : 0;
    }
    for (const auto& [id, limit] : *max_memory) {
      auto it = o.capacity_bytes.find(id);
      o.capacity_bytes[id] = it == o.capacity_bytes.end() ? limit : std::min(it->second, limit);
    }
  } else if (!a.device.empty()) {
    HOIST_ASSIGN_OR_RETURN(DeviceId id, ParseDeviceId(a.device));
    o.device = id;
  } else {
    o.device = registry.Find(DeviceId::Cuda(0)) != nullptr ? DeviceId::Cuda(0) : DeviceId::Cpu();
  }
  return o;
}

void PrintWarnings(const LoadPlan& plan, bool quiet) {
  if (quiet) return;
  for (const std::string& w : plan.warnings) fmt::print(stderr, "warning: {}\n", w);
}

ordered_json PlanJson(const LoadPlan& plan) {
  ordered_json out;
  out["tensors"] = ordered_json::array();
  for (const PlannedTensor& t : plan.tensors) {
    ordered_json j = {{"name", t.name},
                      {"device", t.device.ToString()},
                      {"dtype", std::string(DTypeName(t.dtype))},
                      {"nbytes", t.size_bytes},
                      {"offset", t.offset_bytes}};
    if (t.device.kind == DeviceKind::kDisk) j["offset"] = nullptr;
    if (t.alias_of >= 0) j["tied_to"] = plan.tensors[static_cast<size_t>(t.alias_of)].name;
    out["tensors"].push_back(j);
  }
  out["devices"] = ordered_json::object();
  for (const DevicePlan& d : plan.devices) {
    out["devices"][d.device.ToString()] = {{"bytes", d.reserve_bytes}, {"tensors", d.tensor_count}};
  }
  out["warnings"] = plan.warnings;
  if (!plan.missing.empty() || !plan.unexpected.empty() || !plan.mismatched.empty()) {
    out["missing"] = plan.missing;
    out["unexpected"] = plan.unexpected;
    out["mismatched"] = plan.mismatched;
  }
  return out;
}

}  // namespace

int RunPlan(const PlanCmdArgs& args) {
  Result<Catalog> cat = OpenCatalog(args.plan.path);
  if (!cat.ok()) return Fail(cat.status());
  DeviceRegistry registry = MakeRegistry();
  std::map<DeviceId, uint64_t> max_memory;
  Result<PlanOptions> po = MakePlanOptions(args.plan, registry, kDefaultGpuMarginBytes, &max_memory);
  if (!po.ok()) return Fail(po.status());
  Result<LoadPlan> plan = BuildPlan(*cat, *po);
  if (!plan.ok()) return Fail(plan.status());
  PrintWarnings(*plan, args.json);
  if (args.json) {
    fmt::print("{}\n", PlanJson(*plan).dump(2));
    return 0;
  }
  size_t width = 4;
  for (const PlannedTensor& t : plan->tensors) width = std::max(width, std::min<size_t>(t.name.size(), 72));
  fmt::print("{:<{}}  {:<8} {:<7} {:>14} {:>14}\n", "name", width, "device", "dtype", "bytes", "offset");
  for (const PlannedTensor& t : plan->tensors) {
    std::string offset = t.device.kind == DeviceKind::kDisk ? "-" : std::to_string(t.offset_bytes);
    if (t.alias_of >= 0) offset += " (tied)";
    fmt::print("{:<{}}  {:<8} {:<7} {:>14} {:>14}\n", t.name, width, t.device.ToString(), DTypeName(t.dtype),
               t.size_bytes, offset);
  }
  for (const DevicePlan& d : plan->devices) {
    fmt::print("{}: {} tensors, reservation {} ({} bytes)\n", d.device.ToString(), d.tensor_count,
               HumanBytes(d.reserve_bytes), d.reserve_bytes);
  }
  return 0;
}

int RunLoad(const LoadArgs& args) {
  Result<uint64_t> chunk = ParseByteSize(args.chunk_size);
  if (!chunk.ok()) return Fail(chunk.status());
  Result<uint64_t> margin = ParseByteSize(args.margin);
  if (args.margin == "0") margin = uint64_t{0};
  if (!margin.ok()) return Fail(margin.status());
  Result<Catalog> cat = OpenCatalog(args.plan.path);
  if (!cat.ok()) return Fail(cat.status());
  DeviceRegistry registry = MakeRegistry();
  LoadOptions options;
  Result<PlanOptions> po = MakePlanOptions(args.plan, registry, *margin, &options.max_memory);
  if (!po.ok()) return Fail(po.status());
  auto plan_start = std::chrono::steady_clock::now();
  Result<LoadPlan> plan = BuildPlan(*cat, *po);
  if (!plan.ok()) return Fail(plan.status());
  double plan_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - plan_start).count();
  PrintWarnings(*plan, args.quiet);

  options.alloc = args.alloc == "per-tensor" ? AllocStrategy::kPerTensor : AllocStrategy::kReserve;
  options.chunk_bytes = *chunk;
  options.threads = args.threads;
  options.staging_slots = args.staging_slots;
  options.gpu_margin_bytes = *margin;
  Result<LoadedModel> model = Load(*cat, std::move(plan).value(), registry, options);
  if (!model.ok()) return Fail(model.status());
  const LoadStats& st = model->stats();
  const double seconds = st.seconds + plan_seconds;

  if (!args.report.empty()) {
    ordered_json report;
    report["path"] = args.plan.path;
    report["total_bytes"] = st.bytes_loaded;
    report["bytes_read"] = st.bytes_read;
    report["seconds"] = seconds;
    report["gbps"] = Rate(st.bytes_read, seconds);
    report["alloc"] = args.alloc;
    report["threads"] = st.threads;
    report["chunk_bytes"] = options.chunk_bytes;
    report["stages"] = {{"plan", plan_seconds}, {"reserve", st.reserve_seconds}, {"read", st.read_seconds}};
    report["tensors"] = ordered_json::array();
    for (const TensorView& v : model->tensors()) {
      ordered_json j = {{"name", v.name},
                        {"device", v.device.ToString()},
                        {"dtype", std::string(DTypeName(v.dtype))},
                        {"stored_dtype", std::string(DTypeName(v.stored_dtype))},
                        {"shape", v.shape},
                        {"nbytes", v.size_bytes},
                        {"offset", v.offset_bytes}};
      if (v.tied) j["tied"] = true;
      report["tensors"].push_back(j);
    }
    report["devices"] = ordered_json::object();
    for (const DeviceStats& d : st.devices) {
      report["devices"][d.device.ToString()] = {{"bytes", d.reserved_bytes},
                                                {"tensor_bytes", d.bytes},
                                                {"driver_allocs", d.driver_allocs},
                                                {"peak_reserved_bytes", d.peak_reserved_bytes}};
    }
    report["missing"] = model->plan().missing;
    report["unexpected"] = model->plan().unexpected;
    report["mismatched"] = model->plan().mismatched;
    report["warnings"] = model->plan().warnings;
    Status s = WriteTextFile(args.report, report.dump(2) + "\n");
    if (!s.ok()) return Fail(s);
  }
  if (!args.quiet) {
    std::string where;
    for (const DeviceStats& d : st.devices) {
      where += (where.empty() ? "" : ", ") + d.device.ToString();
      if (st.devices.size() > 1) where += " (" + HumanBytes(d.bytes) + ")";
    }
    if (where.empty()) where = "nowhere";
    fmt::print("loaded {} tensors, {} in {:.3f} s ({:.2f} GB/s) to {} with {} thread{}, {} allocation{}\n",
               model->tensors().size(), HumanBytes(st.bytes_loaded), seconds, Rate(st.bytes_read, seconds), where,
               st.threads, st.threads == 1 ? "" : "s", st.driver_allocs, st.driver_allocs == 1 ? "" : "s");
  }
  return 0;
}

int RunConvert(const ConvertArgs& args) {
  Result<std::optional<DType>> dtype = ParseDtypeFlag(args.dtype);
  if (!dtype.ok()) return Fail(dtype.status());
  Result<uint64_t> shard = ParseByteSize(args.max_shard_size);
  if (!shard.ok()) return Fail(shard.status());
  Result<Catalog> cat = OpenCatalog(args.src);
  if (!cat.ok()) return Fail(cat.status());
  ConvertOptions options;
  options.cast_to = *dtype;
  options.only_regex = args.only;
  options.write.max_shard_bytes = *shard;
  options.write.threads = args.threads;
  Result<WriteResult> written = ConvertCheckpoint(*cat, args.dst, options);
  if (!written.ok()) return Fail(written.status());
  // Keep config.json with the weights, as users expect of a converted model.
  std::error_code ec;
  std::filesystem::path src_config = std::filesystem::path(args.src) / "config.json";
  if (std::filesystem::is_directory(args.src, ec) && std::filesystem::is_directory(args.dst, ec) &&
      std::filesystem::exists(src_config, ec)) {
    std::filesystem::copy_file(src_config, std::filesystem::path(args.dst) / "config.json",
                               std::filesystem::copy_options::overwrite_existing, ec);
  }
  fmt::print("wrote {} in {} file{} ({:.3f} s)\n", HumanBytes(written->data_bytes), written->files.size(),
             written->files.size() == 1 ? "" : "s", written->seconds);
  return 0;
}

int RunSynth(const SynthArgs& args) {
  SynthOptions options;
  options.arch = args.arch;
  options.layers = args.layers;
  options.sparse = args.sparse;
  options.threads = args.threads;
  auto dtype = ParseCastTarget(args.dtype);
  if (!dtype) return Fail(InvalidArgument("--dtype '" + args.dtype + "': expected bf16, f16 or f32"));
  options.dtype = *dtype;
  Result<uint64_t> shard = ParseByteSize(args.max_shard_size);
  if (!shard.ok()) return Fail(shard.status());
  options.max_shard_bytes = *shard;
  Result<WriteResult> written = WriteSynthCheckpoint(options, args.out_dir);
  if (!written.ok()) return Fail(written.status());
  if (!args.quiet) {
    fmt::print("wrote {} ({}{}) to {} in {} files, {:.3f} s ({:.2f} GB/s)\n", args.arch,
               HumanBytes(written->data_bytes), args.sparse ? ", sparse" : "", args.out_dir, written->files.size(),
               written->seconds, args.sparse ? 0.0 : Rate(written->data_bytes, written->seconds));
  }
  return 0;
}

}  // namespace hoist::cli
