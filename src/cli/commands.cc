#include "util/text.h"
#include "cli/commands.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_set>
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
#include "api/session.h"
#include "format/json_util.h"
#include "io/file.h"
#include "plan/device_map.h"

namespace hoist::cli {

int Fail(const Status& s) {
  fmt::print(stderr, "error: {}\n", s.message());
  return s.IsBadInput() ? 2 : 1;
}

namespace {

using nlohmann::ordered_json;

std::string HumanBytes(uint64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f} GB", static_cast<double>(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.2f} MB", static_cast<double>(n) / 1e6);
  if (n >= 1'000) return fmt::format("{:.2f} kB", static_cast<double>(n) / 1e3);
  return fmt::format("{} B", n);
}

double Rate(uint64_t bytes, double seconds) { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }

// Whether `path` can be written, checked before a load spends its time, by
// opening it for writing (a file this creates is removed again): whatever
// stands in the way (a missing or non-directory parent, a directory, a
// dangling link, permissions) is found now, with the system's reason.
Status CheckWritable(const std::string& flag, const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd >= 0) {
    ::close(fd);
    ::unlink(path.c_str());
    return Status::Ok();
  }
  if (errno == EEXIST) fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::close(fd);
    return Status::Ok();
  }
  return InvalidArgument(flag + " " + Printable(path) + ": cannot write: " + std::strerror(errno));
}

// What --expect found, on stderr: how many names are missing, unexpected
// (never read) and mismatched, with the first few of each.
void PrintExpectSummary(const PlanRequest& request, const LoadPlan& plan, bool quiet) {
  if (quiet || (request.expect_file.empty() && request.expect_json.empty())) return;
  if (plan.missing.empty() && plan.unexpected.empty() && plan.mismatched.empty()) {
    const bool filtered = !request.only.empty() || !request.drops.empty();
    fmt::print(stderr, "expect: the checkpoint holds every expected tensor and nothing else{}\n",
               filtered ? " that --only and --drop let through" : "");
    return;
  }
  if (!plan.missing.empty()) fmt::print(stderr, "expect: {} missing: {}\n", plan.missing.size(), SomeNames(plan.missing));
  if (!plan.mismatched.empty()) {
    std::string notes;
    for (size_t i = 0; i < plan.mismatch_notes.size() && i < 3; ++i) notes += (i ? "; " : "") + plan.mismatch_notes[i];
    if (plan.mismatch_notes.size() > 3) notes += fmt::format("; and {} more", plan.mismatch_notes.size() - 3);
    fmt::print(stderr, "expect: {} mismatched: {}\n", plan.mismatched.size(), notes);
  }
  if (!plan.unexpected.empty()) {
    fmt::print(stderr, "expect: {} unexpected (not read): {}\n", plan.unexpected.size(), SomeNames(plan.unexpected));
  }
}

// On stderr: the earlier outputs a write removed, and its warnings.
void PrintWritten(const WriteResult& written) {
  for (const std::string& path : written.removed) {
    fmt::print(stderr, "removed {}: an earlier output this one replaces\n", Printable(path));
  }
  for (const std::string& w : written.warnings) fmt::print(stderr, "warning: {}\n", w);
}

}  // namespace

namespace {
// Each A=B of a repeatable flag, split at its first '='.
Status SplitAssignments(const std::string& flag, const std::vector<std::string>& texts,
                        std::vector<std::pair<std::string, std::string>>* out) {
  for (const std::string& text : texts) {
    HOIST_ASSIGN_OR_RETURN(auto kv, SplitAssignment(flag, text));
    out->push_back(std::move(kv));
  }
  return Status::Ok();
}
}  // namespace

Status ApplyAssignmentFlags(const AssignmentFlags& flags, PlanRequest* request) {
  HOIST_RETURN_IF_ERROR(SplitAssignments("--tie", flags.ties, &request->ties));
  HOIST_RETURN_IF_ERROR(SplitAssignments("--rename", flags.renames, &request->renames));
  HOIST_ASSIGN_OR_RETURN(request->max_memory, SplitMaxMemory(flags.max_memory));
  return Status::Ok();
}

int RunInspect(const InspectArgs& args) {
  Result<Catalog> cat = OpenCatalog(args.path);
  if (!cat.ok()) return Fail(cat.status());
  for (const std::string& w : cat->warnings()) fmt::print(stderr, "warning: {}\n", w);
  if (args.json) {
    fmt::print("{}\n", CatalogJson(*cat).dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
    return 0;
  }
  // Names, file names and metadata come from the file: escaped, so a
  // hostile one sends no terminal escape sequence; metadata values shortened.
  std::vector<std::string> shown;
  shown.reserve(cat->tensors().size());
  size_t name_width = 4;
  for (const TensorInfo& t : cat->tensors()) name_width = std::max(name_width, shown.emplace_back(Printable(t.name)).size());
  name_width = std::min<size_t>(name_width, 72);
  bool many_files = cat->files().size() > 1;
  fmt::print("{:<{}}  {:<11} {:<22} {:>14} {:>12}{}\n", "name", name_width, "dtype", "shape", "bytes", "offset",
             many_files ? "  file" : "");
  for (size_t i = 0; i < cat->tensors().size(); ++i) {
    const TensorInfo& t = cat->tensors()[i];
    std::string file =
        many_files ? "  " + Printable(std::filesystem::path(cat->files()[t.file_index].path).filename().string()) : "";
    fmt::print("{:<{}}  {:<11} {:<22} {:>14} {:>12}{}\n", shown[i], name_width, DTypeName(t.dtype), ShapeText(t.shape),
               t.size_bytes, t.offset_bytes, file);
  }
  fmt::print("{} tensor{}, {} ({} bytes) in {} file{}\n", cat->tensors().size(), cat->tensors().size() == 1 ? "" : "s",
             HumanBytes(cat->total_bytes()), cat->total_bytes(), cat->files().size(), cat->files().size() == 1 ? "" : "s");
  constexpr size_t kShownValueBytes = 200;
  for (const auto& [k, v] : cat->metadata()) {
    std::string value = Printable(std::string_view(v).substr(0, kShownValueBytes));
    if (v.size() > kShownValueBytes) value += fmt::format("... ({} bytes; --json shows it whole)", v.size());
    fmt::print("metadata {}: {}\n", Printable(k), value);
  }
  return 0;
}

namespace {

void PrintWarnings(const LoadPlan& plan, bool quiet) {
  if (quiet) return;
  for (const std::string& w : plan.warnings) fmt::print(stderr, "warning: {}\n", w);
}

DeviceRegistry MakeRegistry(const PlanRequest& request) {
  std::string warning;
  DeviceRegistry registry = MakeRegistryFor(request, &warning);
  if (!warning.empty()) fmt::print(stderr, "warning: {}\n", warning);
  return registry;
}

}  // namespace

int RunPlan(const PlanCmdArgs& args) {
  PlanRequest request = args.request;
  if (Status s = ApplyAssignmentFlags(args.flags, &request); !s.ok()) return Fail(s);
  DeviceRegistry registry = MakeRegistry(request);
  Result<PlannedRequest> planned = PlanFromRequest(request, registry);
  if (!planned.ok()) return Fail(planned.status());
  const Catalog* cat = planned->catalog.get();
  LoadPlan* plan = &planned->plan;
  PrintWarnings(*plan, false);  // on stderr, so --json output stays JSON
  PrintExpectSummary(request, *plan, false);
  if (args.json) {
    fmt::print("{}\n", PlanJson(*cat, *plan, &planned->available).dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
    return 0;
  }
  size_t width = 4;
  std::vector<std::string> shown;  // escaped, as in inspect
  shown.reserve(plan->tensors.size());
  for (const PlannedTensor& t : plan->tensors) {
    width = std::max(width, std::min<size_t>(shown.emplace_back(Printable(t.name)).size(), 72));
  }
  fmt::print("{:<{}}  {:<8} {:<7} {:>14} {:>14}\n", "name", width, "device", "dtype", "bytes", "offset");
  for (size_t i = 0; i < plan->tensors.size(); ++i) {
    const PlannedTensor& t = plan->tensors[i];
    std::string offset = t.device.kind == DeviceKind::kDisk ? "-" : t.mapped ? "mapped" : std::to_string(t.offset_bytes);
    if (t.alias_of >= 0) offset += " (tied)";
    // A tied tensor's own size (the load report's too); "(tied)" says it takes no room of its own.
    const uint64_t bytes = t.alias_of >= 0 ? plan->tensors[static_cast<size_t>(t.alias_of)].size_bytes : t.size_bytes;
    fmt::print("{:<{}}  {:<8} {:<7} {:>14} {:>14}\n", shown[i], width, t.device.ToString(), DTypeName(t.dtype), bytes,
               offset);
  }
  // Units (as strategies cut them) that a map or --no-split spread over
  // more than one device are shown as parts.
  std::map<std::string, DeviceId> unit_device;
  std::unordered_set<std::string> partial;
  for (const PlannedTensor& t : plan->tensors) {
    const std::string unit = SplitUnitOf(t.name, {});
    auto [it, inserted] = unit_device.emplace(unit, t.device);
    if (!inserted && it->second != t.device) partial.insert(unit);
  }
  for (const DevicePlan& d : plan->devices) {
    std::vector<std::string> names;
    for (const PlannedTensor& t : plan->tensors) {
      if (t.device == d.device) names.push_back(t.name);
    }
    fmt::print("{}: {} tensor{}, reservation {} ({} bytes): {}\n", d.device.ToString(), d.tensor_count,
               d.tensor_count == 1 ? "" : "s",
               HumanBytes(d.reserve_bytes), d.reserve_bytes, Printable(DescribeUnits(names, partial)));
  }
  return 0;
}

// A progress line on a terminal, updated in place: bytes done, GB/s, ETA.
// Nothing when stderr is not a terminal.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled) {
    if (enabled && ::isatty(STDERR_FILENO)) thread_ = std::thread([this] { Run(); });
  }
  ~ProgressLine() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    fmt::print(stderr, "\r\033[K");
  }
  LoadProgress* counters() { return thread_.joinable() ? &progress_ : nullptr; }

 private:
  void Run() {
    auto start = std::chrono::steady_clock::now();
    std::unique_lock<std::mutex> lock(mu_);
    // The first line as soon as the load knows its size, then every 0.1 s.
    while (progress_.total.load() == 0) {
      if (cv_.wait_for(lock, std::chrono::milliseconds(5), [this] { return stop_; })) return;
    }
    do {
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      uint64_t done = progress_.done.load(), total = progress_.total.load();
      double gbps = s > 0 ? static_cast<double>(done) / s / 1e9 : 0;
      double eta = gbps > 0 && total > done ? static_cast<double>(total - done) / 1e9 / gbps : 0;
      // Before the first bytes land (GPU start-up, a cold disk) there is no
      // rate to tell, nor a time left.
      if (done == 0) {
        fmt::print(stderr, "\r\033[K0 B / {}  starting", HumanBytes(total));
      } else {
        fmt::print(stderr, "\r\033[K{} / {}  {:.2f} GB/s  ETA {:.1f} s", HumanBytes(done), HumanBytes(total), gbps, eta);
      }
      std::fflush(stderr);
    } while (!cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stop_; }));
  }
  LoadProgress progress_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// Ctrl-C (SIGINT) or SIGTERM while a load runs: the first asks the load to
// stop, which returns every byte it reserved; the command then prints one
// line and ends by that signal, as if it had not caught it (so that a shell
// loop or a supervisor sees the signal, not an ordinary failure). Handlers
// go back to what they were as the first signal arrives, so a second ends
// the process at once. A signal the command was started ignoring (a
// background job's SIGINT) stays ignored.
class StopOnSignal {
 public:
  StopOnSignal() {
    stop_.store(false);
    signal_ = 0;
    struct sigaction action = {};
    action.sa_handler = &StopOnSignal::Handle;
    sigemptyset(&action.sa_mask);
    for (size_t k = 0; k < 2; ++k) {
      installed_[k] = false;
      if (::sigaction(kSignals[k], nullptr, &previous_[k]) != 0 || previous_[k].sa_handler == SIG_IGN) continue;
      installed_[k] = ::sigaction(kSignals[k], &action, nullptr) == 0;
    }
  }
  ~StopOnSignal() { Restore(); }
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
  const std::atomic<bool>* flag() const { return &stop_; }
  // The signal caught, 0 if none. Read it once the StopOnSignal is gone:
  // until its handlers are back, one may still arrive.
  static int received() { return signal_; }

  // Ends the process by `signal`, its action the default. Returns only if
  // that did not end it (the signal blocked), with the shell's code for it.
  static int EndBy(int signal) {
    std::signal(signal, SIG_DFL);
    std::raise(signal);
    return 128 + signal;
  }

 private:
  static void Handle(int signal) {
    signal_ = signal;
    stop_.store(true, std::memory_order_relaxed);  // lock-free: safe in a handler
    Restore();  // sigaction is async-signal-safe
  }
  static void Restore() {
    for (size_t k = 0; k < 2; ++k) {
      if (installed_[k]) (void)::sigaction(kSignals[k], &previous_[k], nullptr);
    }
  }
  static constexpr int kSignals[2] = {SIGINT, SIGTERM};
  static_assert(std::atomic<bool>::is_always_lock_free);
  static inline std::atomic<bool> stop_{false};
  static inline volatile std::sig_atomic_t signal_ = 0;
  static inline struct sigaction previous_[2] = {};
  static inline bool installed_[2] = {false, false};
};

namespace {
// --report must not write over the checkpoint it reports on, nor add to its
// folder a file a load would read as part of it: a weights file, an index
// or the config.json beside them, whether or not one is there yet.
Status CheckNotTheCheckpoint(const std::string& report, const std::string& checkpoint) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path dir = fs::is_directory(checkpoint, ec) ? fs::path(checkpoint) : fs::path(checkpoint).parent_path();
  const fs::path parent = fs::path(report).parent_path();
  const std::string name = fs::path(report).filename().string();
  const bool checkpoint_file = EndsWith(name, ".safetensors") || EndsWith(name, ".safetensors.index.json") ||
                               name == "config.json" || name == "generation_config.json";
  if (fs::equivalent(report, checkpoint, ec) ||
      (checkpoint_file && fs::equivalent(parent.empty() ? fs::path(".") : parent, dir.empty() ? fs::path(".") : dir, ec))) {
    return InvalidArgument(Opt("--report") + " " + Printable(report) +
                           ": names a file of the checkpoint being loaded (weights, index or config); write the "
                           "report elsewhere");
  }
  return Status::Ok();
}
}  // namespace

int RunLoad(const LoadArgs& args) {
  const bool report_to_stdout = args.report == "-";
  if (!args.report.empty() && !report_to_stdout) {
    if (Status s = CheckNotTheCheckpoint(args.report, args.request.plan.path); !s.ok()) return Fail(s);
    if (Status s = CheckWritable("--report", args.report); !s.ok()) return Fail(s);
  }
  LoadRequest request = args.request;
  if (Status s = ApplyAssignmentFlags(args.flags, &request.plan); !s.ok()) return Fail(s);
  auto registry = std::make_unique<DeviceRegistry>(MakeRegistry(request.plan));
  Result<std::unique_ptr<LoadSession>> session = NotFound("");
  {
    StopOnSignal stop;
    ProgressLine progress(!args.quiet);
    request.progress = progress.counters();
    request.cancel = stop.flag();
    session = LoadFromRequest(request, *registry);
  }
  // Whether or not the load saw it before its end; after the handlers are
  // back, a signal takes its default action.
  if (const int signal = StopOnSignal::received(); signal != 0) {
    session = Cancelled("");
    registry.reset();
    fmt::print(stderr, "error: {}: load interrupted by {}\n", Printable(args.request.plan.path),
               signal == SIGINT ? "SIGINT" : "SIGTERM");
    return StopOnSignal::EndBy(signal);
  }
  if (!session.ok()) {
    // The devices go first: whatever their clean-up has to say (after a GPU
    // fault, that it failed too) comes before the error, which stays the
    // last line.
    registry.reset();
    return Fail(session.status());
  }
  const LoadedModel& model = (*session)->model;
  PrintWarnings(model.plan(), args.quiet);
  PrintExpectSummary(args.request.plan, model.plan(), args.quiet);
  const LoadStats& st = model.stats();
  const double seconds = st.seconds + (*session)->plan_seconds;
  if (!args.report.empty()) {
    const std::string text = ReportJson(**session).dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    if (report_to_stdout) {
      fmt::print("{}", text);
    } else if (Status s = WriteTextFile(args.report, text); !s.ok()) {
      return Fail(s);
    }
  }
  if (!args.quiet) {
    std::string where;
    for (const DeviceStats& d : st.devices) {
      where += (where.empty() ? "" : ", ") + d.device.ToString();
      if (st.devices.size() > 1) where += " (" + HumanBytes(d.bytes) + ")";
    }
    size_t on_disk = 0;
    for (const TensorView& v : model.tensors()) on_disk += v.device.kind == DeviceKind::kDisk ? 1 : 0;
    if (where.empty()) where = "no device";
    // With the report on stdout, the summary goes to stderr.
    const size_t loaded = model.tensors().size() - on_disk;
    fmt::print(report_to_stdout ? stderr : stdout,
               "loaded {} tensor{}, {} in {:.3f} s ({:.2f} GB/s) to {} with {} thread{}, {} allocation{}{}{}\n",
               loaded, loaded == 1 ? "" : "s", HumanBytes(st.bytes_loaded), seconds, Rate(st.bytes_read, seconds),
               where, st.threads, st.threads == 1 ? "" : "s", st.driver_allocs, st.driver_allocs == 1 ? "" : "s",
               on_disk ? fmt::format("; {} left on disk", on_disk) : std::string(),
               st.mapped_bytes > 0 ? fmt::format("; {} of it mapped from {} file{}", HumanBytes(st.mapped_bytes),
                                                 st.mapped_files, st.mapped_files == 1 ? "" : "s")
                                   : std::string());
  }
  return 0;
}

int RunConvert(const ConvertArgs& args) {
  ConvertRequest request = args.request;
  if (Status s = SplitAssignments("--rename", args.renames, &request.renames); !s.ok()) return Fail(s);
  Result<WriteResult> written = NotFound("");
  {
    StopOnSignal stop;  // Ctrl-C stops the write, which then removes what it had written
    request.cancel = stop.flag();
    written = ConvertFromRequest(request);
  }
  const int signal = StopOnSignal::received();
  if (!written.ok() && signal == 0) return Fail(written.status());
  if (written.ok()) {  // in place, whether or not a signal came at the end
    PrintWritten(*written);
    if (!args.quiet) {
      fmt::print("wrote {} in {} file{} ({:.3f} s{})\n", HumanBytes(written->data_bytes), written->files.size(),
                 written->files.size() == 1 ? "" : "s", written->seconds,
                 request.sync ? fmt::format(", {:.3f} s of it waiting for the disk", written->sync_seconds)
                              : std::string(", not waiting for the disk"));
    }
  }
  if (signal != 0) {
    fmt::print(stderr, "error: {}: convert interrupted by {}{}\n", Printable(request.dst),
               signal == SIGINT ? "SIGINT" : "SIGTERM",
               written.ok() ? ", after the write had finished" : "; nothing was written");
    return StopOnSignal::EndBy(signal);
  }
  return 0;
}

int RunSynth(const SynthArgs& args) {
  SynthOptions options;
  options.arch = args.arch;
  options.layers = args.layers;
  options.sparse = args.sparse;
  options.threads = args.threads;
  auto dtype = ParseCastTarget(args.dtype);
  if (!dtype) return Fail(InvalidArgument("--dtype " + QuoteName(args.dtype) + ": expected bf16, f16 or f32"));
  options.dtype = *dtype;
  if (!args.max_shard_size.empty()) {
    Result<uint64_t> shard = ParseByteSize(args.max_shard_size);
    if (!shard.ok()) return Fail(InvalidArgument("--max-shard-size: " + shard.status().message()));
    options.max_shard_bytes = *shard;
  }
  Result<WriteResult> written = WriteSynthCheckpoint(options, args.out_dir);
  if (!written.ok()) return Fail(written.status());
  PrintWritten(*written);
  if (!args.quiet) {
    const auto shards = std::count_if(written->files.begin(), written->files.end(),
                                      [](const std::string& f) { return EndsWith(f, ".safetensors"); });
    const bool indexed = std::any_of(written->files.begin(), written->files.end(),
                                     [](const std::string& f) { return EndsWith(f, ".index.json"); });
    // Sparse: headers only, so no rate (nothing was written at any speed).
    fmt::print("wrote {} ({}{}) to {}: {} .safetensors file{}{} and config.json, {:.3f} s{}\n", args.arch,
               HumanBytes(written->data_bytes), args.sparse ? ", sparse" : "", args.out_dir, shards,
               shards == 1 ? "" : "s", indexed ? ", an index" : "", written->seconds,
               args.sparse ? std::string() : fmt::format(" ({:.2f} GB/s)", Rate(written->data_bytes, written->seconds)));
  }
  return 0;
}

}  // namespace hoist::cli
