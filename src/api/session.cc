#include "util/text.h"
#include "api/session.h"

#include "io/hub_cache.h"

#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "hoist/writer.h"
#include "format/json_util.h"
#include "io/file.h"
#include "load/fit.h"
#ifdef HOIST_WITH_CUDA
#include "hoist/cuda.h"
#endif

namespace hoist {

namespace {

// --shard RANK/WORLD (none when empty) and its --split REGEX=DIM rules.
Status ParseShardFlags(const std::string& shard_text, const std::vector<std::string>& split_texts,
                       std::optional<ShardSpec>* shard, std::vector<SplitRule>* splits) {
  if (!shard_text.empty()) {
    HOIST_ASSIGN_OR_RETURN(ShardSpec parsed, ParseShard(shard_text));
    *shard = parsed;
  }
  for (const std::string& r : split_texts) {
    HOIST_ASSIGN_OR_RETURN(SplitRule rule, ParseSplitRule(r));
    splits->push_back(std::move(rule));
  }
  return Status::Ok();
}

// The checks of a request's flags that need nothing else: made before a
// load starts any device, so a mistake costs no GPU start-up.
Status CheckFlags(const PlanRequest& a) {
  HOIST_RETURN_IF_ERROR(ParseCompat(a.compat).status());
  HOIST_RETURN_IF_ERROR(ParseDtypeFlag(a.dtype).status());
  if (a.strict && a.expect_file.empty() && a.expect_json.empty()) {
    return InvalidArgument("strict checks a load against expected names (" + Opt("--expect") + "), and none were given");
  }
  return Status::Ok();
}

}  // namespace

Result<bool> ParseCompat(const std::string& text) {
  if (!text.empty() && text != "hf-legacy") return InvalidArgument(Opt("--compat") + " " + QuoteName(text) + ": the only mode is hf-legacy");
  return text == "hf-legacy";
}

Result<std::pair<std::string, std::string>> SplitAssignment(const std::string& flag, const std::string& text) {
  size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) return InvalidArgument(flag + " " + QuoteName(text) + ": expected A=B");
  return std::make_pair(text.substr(0, eq), text.substr(eq + 1));
}

DeviceRegistry MakeDefaultRegistry(std::string* warning) {
  DeviceRegistry registry = MakeCpuRegistry();
  warning->clear();
#ifdef HOIST_WITH_CUDA
  int count = 0;
  Status s = RegisterCudaDevices(&registry, &count);
  if (!s.ok()) *warning = s.message();
#endif
  return registry;
}

void StartDevices(const PlanRequest& request, const DeviceRegistry& registry) {
  std::vector<Device*> devices;
  if (!request.device_map.empty()) {
    devices = registry.All();
  } else if (request.device.empty()) {
    if (Device* d = registry.Find(DeviceId::Cuda(0))) devices.push_back(d);
  } else if (Result<DeviceId> id = ParseDeviceId(request.device); id.ok() && registry.Find(*id)) {
    devices.push_back(registry.Find(*id));
  }
  // Each context starts on a thread of its own: several GPUs start in the
  // time of the slowest, not of them all (hundreds of ms to seconds each).
  std::erase_if(devices, [](Device* d) { return d->id().kind != DeviceKind::kCuda; });
  if (devices.size() == 1) {
    (void)devices[0]->GetMemoryInfo();
    return;
  }
  std::vector<std::thread> starts;
  starts.reserve(devices.size());
  for (Device* d : devices) {
    try {
      starts.emplace_back([d] { (void)d->GetMemoryInfo(); });
    } catch (const std::exception&) {
      (void)d->GetMemoryInfo();  // no thread to be had: this one starts here
    }
  }
  for (std::thread& t : starts) t.join();
}

bool MayUseGpus(const PlanRequest& request) { return !(request.device == "cpu" && request.device_map.empty()); }

DeviceRegistry MakeRegistryFor(const PlanRequest& request, std::string* warning) {
  if (MayUseGpus(request)) return MakeDefaultRegistry(warning);
  warning->clear();
  return MakeCpuRegistry();
}

Result<std::optional<DType>> ParseDtypeFlag(const std::string& text) {
  if (text.empty()) return std::optional<DType>();
  auto d = ParseCastTarget(text);
  if (!d) return InvalidArgument(Opt("--dtype") + " " + QuoteName(text) + ": expected bf16, f16 or f32");
  return std::optional<DType>(*d);
}

Result<PlanOptions> MakePlanOptions(const PlanRequest& a, const DeviceRegistry& registry, uint64_t margin,
                                    std::map<DeviceId, uint64_t>* max_memory) {
  PlanOptions o;
  HOIST_ASSIGN_OR_RETURN(o.cast_to, ParseDtypeFlag(a.dtype));
  o.only_regex = a.only;
  o.drops = a.drops;
  o.no_split = a.no_split;
  o.map_host = a.map_host;
  HOIST_RETURN_IF_ERROR(ParseShardFlags(a.shard, a.splits, &o.shard, &o.splits));
  HOIST_RETURN_IF_ERROR(CheckFlags(a));
  HOIST_ASSIGN_OR_RETURN(o.compat_hf_legacy, ParseCompat(a.compat));
  for (const auto& [pattern, replacement] : a.renames) {
    if (pattern.empty()) return InvalidArgument(AssignmentText("--rename", pattern, replacement) + ": the pattern is empty");
    o.renames.push_back({pattern, replacement});
  }
  if (!a.no_config_ties) {
    HOIST_ASSIGN_OR_RETURN(o.tie_word_embeddings, ConfigTiesWordEmbeddings(a.path));
  }
  for (const auto& [alias, source] : a.ties) {
    if (alias.empty()) return InvalidArgument(AssignmentText("--tie", alias, source) + ": the name to tie is empty");
    o.ties.push_back({alias, source});
  }
  if (!a.expect_file.empty()) {
    Result<std::string> read = ReadSmallFile(a.expect_file);
    if (!read.ok()) return Status(read.status().code(), Opt("--expect") + " " + read.status().message());
    const std::string& text = *read;
    HOIST_ASSIGN_OR_RETURN(o.expect, ParseExpect(text, Printable(a.expect_file)));
  } else if (!a.expect_json.empty()) {
    HOIST_ASSIGN_OR_RETURN(o.expect, ParseExpect(a.expect_json, "expect"));
  }
  if (!a.max_memory.empty()) {
    HOIST_ASSIGN_OR_RETURN(*max_memory, ParseMaxMemory(a.max_memory));
  }
  if (!a.device.empty() && !a.device_map.empty()) return InvalidArgument("give " + Opt("--device") + " or " + Opt("--device-map") + ", not both");
  if (!a.device_map.empty()) {
    o.device_map = a.device_map;
    // Capacities (docs/planning.md §4). The devices: as accelerate has it,
    // those --max-memory names where it gives a GPU or the cpu a size above
    // 0, else every GPU and the cpu (so "1=0" alone only leaves GPU 1
    // out); the disk only where named. Each at its free memory (less the
    // margin on GPUs) capped by --max-memory; a device named but not here
    // counts with that size (planning for a machine this is not).
    bool names_devices = false;
    for (const auto& [id, limit] : *max_memory) {
      names_devices = names_devices || (id.kind != DeviceKind::kDisk && limit > 0);
    }
    for (Device* d : registry.All()) {
      if (names_devices && max_memory->count(d->id()) == 0) continue;  // left out: not to be used
      HOIST_ASSIGN_OR_RETURN(MemoryInfo mem, d->GetMemoryInfo());
      uint64_t m = d->id().kind == DeviceKind::kCuda ? margin : 0;
      o.capacity_bytes[d->id()] = mem.free_bytes > m ? mem.free_bytes - m : 0;
    }
    for (const auto& [id, limit] : *max_memory) {
      auto it = o.capacity_bytes.find(id);
      o.capacity_bytes[id] = it == o.capacity_bytes.end() ? limit : std::min(it->second, limit);
    }
  } else if (!a.device.empty()) {
    Result<DeviceId> id = ParseDeviceId(a.device);
    if (!id.ok()) return InvalidArgument(Opt("--device") + ": " + id.status().message());
    o.device = *id;
  } else {
    o.device = registry.Find(DeviceId::Cuda(0)) != nullptr ? DeviceId::Cuda(0) : DeviceId::Cpu();
  }
  return o;
}

// A strategy that found no room, where a device here had less free memory
// than --max-memory allows it: says so, since raising the limit cannot help.
Result<LoadPlan> BuildPlanExplained(const Catalog& catalog, const PlanOptions& po,
                                    const std::map<DeviceId, uint64_t>& max_memory) {
  Result<LoadPlan> plan = BuildPlan(catalog, po);
  if (plan.ok() || plan.status().code() != StatusCode::kOutOfMemory || po.device_map.empty()) return plan;
  std::string notes;
  for (const auto& [id, limit] : max_memory) {
    auto it = po.capacity_bytes.find(id);
    if (it == po.capacity_bytes.end() || it->second >= limit) continue;
    notes += "; " + id.ToString() + " is here with " + ByteText(it->second) + " free" +
             (id.kind == DeviceKind::kCuda ? " (less the margin)" : "") + ", below the " + ByteText(limit) + " " +
             Opt("--max-memory") + " allows it: a device present counts with its free memory at most";
  }
  if (notes.empty()) return plan;
  return Status(plan.status().code(), plan.status().message() + notes);
}

Status CheckStrict(const std::string& path, const LoadPlan& plan) {
  std::string found;
  auto add = [&](const std::vector<std::string>& names, const char* what) {
    if (names.empty()) return;
    found += (found.empty() ? "" : "; ") + std::to_string(names.size()) + " " + what + " (" + SomeNames(names) + ")";
  };
  add(plan.missing, "missing");
  add(plan.unexpected, "unexpected");
  if (!plan.mismatched.empty()) {
    found += (found.empty() ? "" : "; ") + std::to_string(plan.mismatched.size()) + " mismatched (" +
             plan.mismatch_notes.front() + (plan.mismatched.size() > 1 ? ", and more" : "") + ")";
  }
  if (found.empty()) return Status::Ok();
  return InvalidArgument(Printable(path) + ": not as expected (strict): " + found);
}

std::map<DeviceId, Availability> AvailableFor(const LoadPlan& plan, const DeviceRegistry& registry, uint64_t margin,
                                              const std::map<DeviceId, uint64_t>& max_memory) {
  std::map<DeviceId, Availability> out;
  for (const DevicePlan& d : plan.devices) {
    if (d.device.kind == DeviceKind::kDisk || d.reserve_bytes == 0) continue;
    std::optional<uint64_t> limit;
    if (auto it = max_memory.find(d.device); it != max_memory.end()) limit = it->second;
    Result<std::optional<Availability>> fit = AvailableOn(d.device, registry.Find(d.device), margin, limit);
    if (fit.ok() && *fit) out.emplace(d.device, **fit);
  }
  return out;
}

std::vector<std::string> FitWarnings(const LoadPlan& plan, const std::map<DeviceId, Availability>& available) {
  std::vector<std::string> out;
  for (const DevicePlan& d : plan.devices) {
    auto it = available.find(d.device);
    if (it != available.end() && d.reserve_bytes > it->second.bytes) {
      out.push_back(d.device.ToString() + ": the plan needs " + ByteText(d.reserve_bytes) + " but only " +
                    ByteText(it->second.bytes) + " is available (" + it->second.why + "); a load would stop before allocating");
    }
  }
  return out;
}

Result<uint64_t> ParseMargin(const std::string& text) {
  Result<uint64_t> bytes = ParseByteCount(text);
  if (!bytes.ok()) return InvalidArgument(Opt("--margin") + ": " + bytes.status().message());
  return bytes;
}

Result<std::unique_ptr<LoadSession>> LoadFromRequest(const LoadRequest& request, const DeviceRegistry& registry,
                                                     std::unique_ptr<Catalog> opened) {
  Result<uint64_t> chunk_size = ParseByteSize(request.chunk_size);
  if (!chunk_size.ok()) return InvalidArgument(Opt("--chunk-size") + ": " + chunk_size.status().message());
  const uint64_t chunk = *chunk_size;
  HOIST_ASSIGN_OR_RETURN(uint64_t margin, ParseMargin(request.plan.margin));
  if (request.direct != "auto" && request.direct != "on" && request.direct != "off") {
    return InvalidArgument(Opt("--direct") + " " + QuoteName(request.direct) + ": expected auto, on or off");
  }
  if (request.io != "auto" && request.io != "pread" && request.io != "uring") {
    return InvalidArgument(Opt("--io") + " " + QuoteName(request.io) + ": expected auto, pread or uring");
  }
  if (request.alloc != "reserve" && request.alloc != "per-tensor") {
    return InvalidArgument(Opt("--alloc") + " " + QuoteName(request.alloc) + ": expected reserve or per-tensor");
  }
  // The command line's own limits, for callers that bypass its parser (Python).
  if (request.threads < 0 || request.threads > 1024) {
    return InvalidArgument(Opt("--threads") + " " + std::to_string(request.threads) + ": expected 1 to 1024, or 0 for the default");
  }
  if (request.staging_slots < 0 || request.staging_slots > 256) {
    return InvalidArgument(Opt("--staging-buffers") + " " + std::to_string(request.staging_slots) +
                           ": expected 1 to 256, or 0 for the default");
  }
  HOIST_RETURN_IF_ERROR(CheckFlags(request.plan));
  // "org/name": the Hugging Face cache's snapshot of that model.
  HOIST_ASSIGN_OR_RETURN(std::string path, ResolveCheckpointPath(request.plan.path));
  if (path != request.plan.path) {
    LoadRequest resolved = request;
    resolved.plan.path = std::move(path);
    return LoadFromRequest(resolved, registry, std::move(opened));
  }
  auto session = std::make_unique<LoadSession>();
  session->path = request.plan.path;
  session->alloc = request.alloc;
  session->io = request.io;

  // Device start-up (a CUDA context takes from a fraction of a second to many
  // seconds) runs while the headers are parsed and the load is planned: the
  // first call on each device creates its context.
  std::thread warm_up;
  try {
    warm_up = std::thread([&request, &registry] { StartDevices(request.plan, registry); });
  } catch (const std::exception&) {
    StartDevices(request.plan, registry);  // no thread to be had: before planning, not beside it
  }
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{warm_up};

  auto plan_start = std::chrono::steady_clock::now();
  if (opened != nullptr) {
    session->catalog = std::move(opened);
  } else {
    HOIST_ASSIGN_OR_RETURN(Catalog catalog, OpenCatalog(request.plan.path));
    session->catalog = std::make_unique<Catalog>(std::move(catalog));
  }
  LoadOptions options;
  HOIST_ASSIGN_OR_RETURN(PlanOptions po, MakePlanOptions(request.plan, registry, margin, &options.max_memory));
  HOIST_ASSIGN_OR_RETURN(LoadPlan plan, BuildPlanExplained(*session->catalog, po, options.max_memory));
  if (request.plan.strict) HOIST_RETURN_IF_ERROR(CheckStrict(request.plan.path, plan));
  session->plan_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - plan_start).count();

  options.alloc = request.alloc == "per-tensor" ? AllocStrategy::kPerTensor : AllocStrategy::kReserve;
  options.chunk_bytes = chunk;
  options.threads = request.threads;
  options.staging_slots = request.staging_slots;
  options.gpu_margin_bytes = margin;
  options.pipeline = request.pipeline;
  options.direct = request.direct == "on" ? DirectIo::kOn : request.direct == "off" ? DirectIo::kOff : DirectIo::kAuto;
  options.io = request.io == "uring" ? IoEngine::kUring : request.io == "pread" ? IoEngine::kPread : IoEngine::kAuto;
  options.progress = request.progress;
  options.cancel = request.cancel;
  session->staging = {options.chunk_bytes, options.pipeline};
  Result<LoadedModel> model = Load(*session->catalog, std::move(plan), registry, options);
  if (!model.ok() && model.status().code() == StatusCode::kOutOfMemory) {  // which checkpoint did not fit
    return OutOfMemory(Printable(request.plan.path) + ": " + model.status().message());
  }
  HOIST_ASSIGN_OR_RETURN(session->model, std::move(model));
  return session;
}

namespace {

// One JSON object per tensor, of up to `fields` members, built in place: a
// plan or report of a 90,000-tensor checkpoint builds as many objects, and
// nlohmann's initializer lists copy every member (4-6x slower, measured).
class TensorListJson {
 public:
  explicit TensorListJson(size_t count) : list_(nlohmann::ordered_json::array()) {
    list_.get_ref<nlohmann::ordered_json::array_t&>().reserve(count);
  }
  nlohmann::ordered_json::object_t& Add(size_t fields) {
    auto& items = list_.get_ref<nlohmann::ordered_json::array_t&>();
    items.emplace_back(nlohmann::ordered_json::value_t::object);
    auto& object = items.back().get_ref<nlohmann::ordered_json::object_t&>();
    object.reserve(fields);
    return object;
  }
  nlohmann::ordered_json Take() { return std::move(list_); }

 private:
  nlohmann::ordered_json list_;
};

}  // namespace

namespace {
// A --split part: {"dim": D, "start": A, "stop": B}.
nlohmann::ordered_json SliceJson(const TensorSlice& s) {
  return {{"dim", s.dim}, {"start", s.start}, {"stop", s.stop}};
}
}  // namespace

namespace {

// Copies a checkpoint's config.json beside its conversion; after a cast,
// its dtype (transformers' "dtype", or "torch_dtype" before 5.0) names what
// the weights now are. A config the strict parser refuses (nesting, UTF-8,
// repeated keys), one that is not an object, or one over 16 MiB is copied
// byte for byte. The copy replaces an earlier config.json whole or not at
// all (and with `sync`, is on the disk when this returns), as the weights do.
Status CopyConfig(const std::string& src, const std::string& dst, std::optional<DType> cast_to, bool sync) {
  constexpr uint64_t kMaxRewrittenBytes = 16 << 20;  // a config is a few kB
  HOIST_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(src));
  if (cast_to && text.size() <= kMaxRewrittenBytes &&
      ParseJsonStrict(Printable(src), text).ok()) {  // then parsed again, keeping its key order
    nlohmann::ordered_json config = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    const char* torch_name = *cast_to == DType::kBF16 ? "bfloat16" : *cast_to == DType::kF16 ? "float16" : "float32";
    bool named = false;
    for (const char* key : {"dtype", "torch_dtype"}) {
      if (config.is_object() && config.contains(key) && config[key].is_string()) {
        config[key] = torch_name;
        named = true;
      }
    }
    if (named) text = config.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  return ReplaceFile(dst, text, sync);
}

}  // namespace

Result<WriteResult> ConvertFromRequest(const ConvertRequest& request) {
  if (request.dst.empty()) return InvalidArgument("convert: the output path is empty");
  HOIST_ASSIGN_OR_RETURN(std::optional<DType> cast_to, ParseDtypeFlag(request.dtype));
  Result<uint64_t> shard_bytes = ParseByteSize(request.max_shard_size);
  if (!shard_bytes.ok()) return InvalidArgument(Opt("--max-shard-size") + ": " + shard_bytes.status().message());
  if (request.threads < 0 || request.threads > 1024) {
    return InvalidArgument(Opt("--threads") + " " + std::to_string(request.threads) + ": expected 1 to 1024, or 0 for the default");
  }
  ConvertOptions options;
  options.cast_to = cast_to;
  options.only_regex = request.only;
  HOIST_ASSIGN_OR_RETURN(options.compat_hf_legacy, ParseCompat(request.compat));
  options.drops = request.drops;
  for (const auto& [pattern, replacement] : request.renames) {
    if (pattern.empty()) return InvalidArgument(AssignmentText("--rename", pattern, replacement) + ": the pattern is empty");
    options.renames.push_back({pattern, replacement});
  }
  HOIST_RETURN_IF_ERROR(ParseShardFlags(request.shard, request.splits, &options.shard, &options.splits));
  options.write.max_shard_bytes = *shard_bytes;
  options.write.threads = request.threads;
  options.write.cancel = request.cancel;
  options.write.sync = request.sync;
  HOIST_ASSIGN_OR_RETURN(std::string src, ResolveCheckpointPath(request.src));
  HOIST_ASSIGN_OR_RETURN(Catalog catalog, OpenCatalog(src));
  HOIST_ASSIGN_OR_RETURN(WriteResult written, ConvertCheckpoint(catalog, request.dst, options));
  // Keep config.json with the weights, as users expect of a converted model,
  // its dtype saying what the cast made of them. The config beside the
  // source: in its directory, or beside its index.
  std::error_code ec;
  std::optional<std::filesystem::path> src_dir;
  if (std::filesystem::is_directory(src, ec)) {
    src_dir = src;
  } else if (EndsWith(src, ".safetensors.index.json")) {
    src_dir = std::filesystem::path(src).parent_path();
    if (src_dir->empty()) src_dir = ".";
  }
  const std::filesystem::path src_config = src_dir ? *src_dir / "config.json" : std::filesystem::path();
  if (src_dir && std::filesystem::is_directory(request.dst, ec) && std::filesystem::exists(src_config, ec)) {
    const auto copy_start = std::chrono::steady_clock::now();
    Status copied = CopyConfig(src_config.string(), (std::filesystem::path(request.dst) / "config.json").string(),
                               cast_to, request.sync);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - copy_start).count();
    written.seconds += seconds;
    if (request.sync) written.sync_seconds += seconds;  // nearly all of it
    if (!copied.ok()) written.warnings.push_back(copied.message());
  }
  return written;
}

Result<PlannedRequest> PlanFromRequest(const PlanRequest& request, const DeviceRegistry& registry) {
  HOIST_RETURN_IF_ERROR(CheckFlags(request));
  HOIST_ASSIGN_OR_RETURN(uint64_t margin, ParseMargin(request.margin));
  PlannedRequest out;
  HOIST_ASSIGN_OR_RETURN(out.path, ResolveCheckpointPath(request.path));
  HOIST_ASSIGN_OR_RETURN(Catalog catalog, OpenCatalog(out.path));
  out.catalog = std::make_unique<Catalog>(std::move(catalog));
  std::map<DeviceId, uint64_t> max_memory;
  PlanRequest resolved = request;
  resolved.path = out.path;
  HOIST_ASSIGN_OR_RETURN(PlanOptions po, MakePlanOptions(resolved, registry, margin, &max_memory));
  HOIST_ASSIGN_OR_RETURN(out.plan, BuildPlanExplained(*out.catalog, po, max_memory));
  if (request.strict) HOIST_RETURN_IF_ERROR(CheckStrict(out.path, out.plan));
  out.available = AvailableFor(out.plan, registry, margin, max_memory);
  for (std::string& w : FitWarnings(out.plan, out.available)) out.plan.warnings.push_back(std::move(w));
  // A GPU the plan uses that this machine, which has GPUs, lacks: a typo,
  // or planning for another machine; either way a load here would refuse
  // it. (On a machine with none, a plan for GPUs is plainly for elsewhere.)
  for (const DevicePlan& d : out.plan.devices) {
    if (d.device.kind != DeviceKind::kCuda || registry.CudaCount() == 0 || registry.Find(d.device) != nullptr) {
      continue;
    }
    const bool named = max_memory.count(d.device) > 0;
    out.plan.warnings.push_back(d.device.ToString() + " is not on this machine (" +
                                std::to_string(registry.CudaCount()) + " CUDA GPUs found): " +
                                (named ? "planned with the size " + Opt("--max-memory") + " gives it"
                                       : "its fit is not checked") +
                                ", and a load here would refuse it");
  }
  return out;
}

nlohmann::ordered_json CatalogJson(const Catalog& catalog) {
  nlohmann::ordered_json out;
  out["files"] = nlohmann::ordered_json::array();
  for (const CatalogFile& f : catalog.files()) out["files"].push_back(f.path);
  TensorListJson tensors(catalog.tensors().size());
  for (const TensorInfo& t : catalog.tensors()) {
    auto& j = tensors.Add(6);
    j.emplace_back("name", t.name);
    j.emplace_back("dtype", DTypeName(t.dtype));
    j.emplace_back("shape", t.shape);
    j.emplace_back("file", catalog.files()[t.file_index].path);
    j.emplace_back("offset", t.offset_bytes);
    j.emplace_back("nbytes", t.size_bytes);
  }
  out["tensors"] = tensors.Take();
  out["total_bytes"] = catalog.total_bytes();
  out["metadata"] = catalog.metadata();
  return out;
}

nlohmann::ordered_json PlanJson(const Catalog& catalog, const LoadPlan& plan,
                                const std::map<DeviceId, Availability>* available) {
  nlohmann::ordered_json out;
  TensorListJson tensors(plan.tensors.size());
  for (const PlannedTensor& t : plan.tensors) {
    auto& j = tensors.Add(6);
    j.emplace_back("name", t.name);
    j.emplace_back("device", t.device.ToString());
    j.emplace_back("dtype", DTypeName(t.dtype));
    j.emplace_back("shape", t.shape);
    // A tied tensor's own size, as the load report gives it ("tied_to" says
    // it takes no room of its own).
    j.emplace_back("nbytes", t.alias_of >= 0 ? plan.tensors[static_cast<size_t>(t.alias_of)].size_bytes : t.size_bytes);
    if (t.device.kind == DeviceKind::kDisk || t.mapped) {  // no reservation: where it stays instead
      j.emplace_back("offset", nullptr);
      std::error_code ec;  // absolute, as the load report gives it
      const std::string& file = catalog.files()[t.source->file_index].path;
      const std::filesystem::path absolute = std::filesystem::absolute(file, ec);
      j.emplace_back("file", ec ? file : absolute.string());
      j.emplace_back("file_offset", t.file_offset_bytes);
      if (t.mapped) j.emplace_back("mapped", true);
    } else {
      j.emplace_back("offset", t.offset_bytes);
    }
    if (t.alias_of >= 0) j.emplace_back("tied_to", plan.tensors[static_cast<size_t>(t.alias_of)].name);
    if (t.slice) j.emplace_back("slice", SliceJson(*t.slice));
  }
  out["tensors"] = tensors.Take();
  out["devices"] = nlohmann::ordered_json::object();
  for (const DevicePlan& d : plan.devices) {
    nlohmann::ordered_json& j = out["devices"][d.device.ToString()];
    j = {{"bytes", d.reserve_bytes}, {"tensors", d.tensor_count}};
    if (available != nullptr && d.device.kind != DeviceKind::kDisk) {
      auto it = available->find(d.device);
      const bool known = it != available->end();
      using json = nlohmann::ordered_json;
      j["available"] = known ? json(it->second.bytes) : json();  // null: unknown
      j["fits"] = d.reserve_bytes == 0 ? json(true) : known ? json(d.reserve_bytes <= it->second.bytes) : json();
    }
  }
  out["warnings"] = plan.warnings;
  // As the load report has them: empty where nothing was expected.
  out["missing"] = plan.missing;
  out["unexpected"] = plan.unexpected;
  out["mismatched"] = plan.mismatched;
  return out;
}

nlohmann::ordered_json ReportJson(const LoadSession& session) {
  const LoadedModel& model = session.model;
  const LoadStats& st = model.stats();
  const double seconds = st.seconds + session.plan_seconds;
  nlohmann::ordered_json report;
  report["path"] = session.path;
  report["total_bytes"] = st.bytes_loaded;
  report["bytes_read"] = st.bytes_read;
  report["mapped_bytes"] = st.mapped_bytes;  // of bytes_read: mapped from the files, not copied
  report["mapped_files"] = st.mapped_files;
  report["seconds"] = seconds;
  report["gbps"] = seconds > 0 ? static_cast<double>(st.bytes_read) / seconds / 1e9 : 0.0;
  report["alloc"] = session.alloc;
  report["threads"] = st.threads;
  report["direct_io_files"] = st.direct_files;
  report["io"] = session.io;
  report["uring_files"] = st.uring_files;
  // With the pipeline, reads, copies and casts overlap: `read` is the whole
  // streaming phase, `copy` the span from the first copy queued until the
  // GPUs were done (with the pipeline off: the copy phase after the reads),
  // and `cast` the span from the first cast queued on a GPU until the GPUs
  // were done where any was (device_cast_pieces counts them), else the CPU
  // seconds of casting on the host. host_cast_cpu_seconds is the latter in
  // every case: the two are different clocks, not to be added. `device_start`
  // is the wait for GPU start-up (CUDA contexts) that planning did not hide.
  report["stages"] = {{"plan", session.plan_seconds},
                      {"device_start", st.device_start_seconds},
                      {"reserve", st.reserve_seconds},
                      {"read", st.read_seconds},
                      {"copy", st.copy_seconds},
                      {"cast", st.device_cast_pieces > 0 ? st.device_cast_seconds : st.host_cast_seconds}};
  report["read_ahead_bytes"] = st.read_ahead_bytes;
  report["device_cast_pieces"] = st.device_cast_pieces;
  report["host_cast_cpu_seconds"] = st.host_cast_seconds;
  report["time_to_first_tensor"] = st.time_to_first_tensor + session.plan_seconds;
  bool bounced = false;
  for (const DeviceStats& d : st.devices) bounced = bounced || d.bounced_reads;
  report["staging"] = {{"chunk_bytes", session.staging.chunk_bytes},
                       {"buffers_per_gpu", st.staging_slots},
                       {"pipeline", session.staging.pipeline},
                       {"bounced_reads", bounced}};
  TensorListJson tensors(model.tensors().size());
  for (const TensorView& v : model.tensors()) {
    auto& j = tensors.Add(8);
    j.emplace_back("name", v.name);
    j.emplace_back("device", v.device.ToString());
    j.emplace_back("dtype", DTypeName(v.dtype));
    j.emplace_back("stored_dtype", DTypeName(v.stored_dtype));
    j.emplace_back("shape", v.shape);
    j.emplace_back("nbytes", v.size_bytes);
    if (v.device.kind == DeviceKind::kDisk || v.mapped) {  // no reservation: where it stays instead
      j.emplace_back("offset", nullptr);
      j.emplace_back("file", v.file);
      j.emplace_back("file_offset", v.file_offset_bytes);
      if (v.mapped) j.emplace_back("mapped", true);
    } else {
      j.emplace_back("offset", v.offset_bytes);
    }
    if (v.tied) {
      j.emplace_back("tied", true);
      j.emplace_back("tied_to", v.tied_to);  // as the plan names it
    }
    if (v.slice) j.emplace_back("slice", SliceJson(*v.slice));
  }
  report["tensors"] = tensors.Take();
  report["devices"] = nlohmann::ordered_json::object();
  for (const DeviceStats& d : st.devices) {
    report["devices"][d.device.ToString()] = {{"bytes", d.reserved_bytes},
                                              {"tensor_bytes", d.bytes},
                                              {"driver_allocs", d.driver_allocs},
                                              {"gbps", st.seconds > 0 ? static_cast<double>(d.bytes) / st.seconds / 1e9 : 0.0},
                                              {"peak_reserved_bytes", d.peak_reserved_bytes}};
  }
  report["missing"] = model.plan().missing;
  report["unexpected"] = model.plan().unexpected;
  report["mismatched"] = model.plan().mismatched;
  report["warnings"] = model.plan().warnings;
  return report;
}

}  // namespace hoist
