// The user-facing load, shared by the CLI and the Python module: requests
// as the user writes them (flags, keyword arguments), turned into plan
// options, carried out, and reported as JSON.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hoist/catalog.h"
#include "hoist/device.h"
#include "hoist/loader.h"
#include "hoist/plan.h"
#include "hoist/status.h"
#include "hoist/writer.h"
#include "load/fit.h"

namespace hoist {

struct PlanRequest {
  std::string path;
  std::string device;       // empty: the best device present (cuda:0, else cpu)
  std::string device_map;   // JSON text, a file, or a strategy name
  // (device, size): {"0", "20GiB"}, {"cpu", "64GiB"} (the CLI's --max-memory 0=20GiB,cpu=64GiB)
  std::vector<std::pair<std::string, std::string>> max_memory;
  std::string dtype;        // bf16, f16, f32 or empty
  std::string only;
  std::vector<std::pair<std::string, std::string>> ties;     // (DST, SRC): DST shares SRC's storage
  std::vector<std::pair<std::string, std::string>> renames;  // (REGEX, REPLACEMENT), first match wins
  std::vector<std::string> drops, no_split;
  std::string compat;       // "" or "hf-legacy"
  std::string expect_file;  // a JSON file, or
  std::string expect_json;  // JSON text
  bool no_config_ties = false;
  std::string shard;                // --shard RANK/WORLD, or empty
  std::vector<std::string> splits;  // --split REGEX=DIM
  bool map_host = false;  // --mmap: cpu tensors mapped from their files (PlanOptions::map_host)
  bool strict = false;  // with an expectation: any name missing, unexpected or mismatched is an error
  std::string margin = "1.2GiB";  // left free on each GPU ("0": none)
};

struct LoadRequest {
  PlanRequest plan;
  std::string alloc = "reserve";  // or "per-tensor"
  int threads = 0;
  std::string chunk_size = "16MiB";
  int staging_slots = 0;  // 0: each GPU's share of the readers + 2, at most 32
  bool pipeline = true;
  std::string direct = "off";  // auto, on, off
  std::string io = "pread";     // pread, auto, uring
  LoadProgress* progress = nullptr;  // when set, updated as the load runs
  const std::atomic<bool>* cancel = nullptr;  // when set, stops the load (LoadOptions::cancel)
};

// The cpu, and every CUDA GPU when hoist was built with the CUDA backend.
// Problems finding GPUs go to *warning (empty when none).
DeviceRegistry MakeDefaultRegistry(std::string* warning);

// Whether `request` can place anything on a GPU: false only for
// --device cpu without a device map. Finding GPUs starts the CUDA driver
// (a fraction of a second or more), which a load onto the cpu must not pay.
bool MayUseGpus(const PlanRequest& request);

// Starts the GPUs a load of `request` can touch (a CUDA context each,
// created by the first call on a device), all at once: the one named
// device, cuda:0 by default, every GPU for a device map. Returns when they
// have started; a load runs it on a thread of its own.
void StartDevices(const PlanRequest& request, const DeviceRegistry& registry);

// MakeDefaultRegistry where the request may use GPUs, else the cpu alone.
DeviceRegistry MakeRegistryFor(const PlanRequest& request, std::string* warning);

Result<std::optional<DType>> ParseDtypeFlag(const std::string& text);

// --compat: whether it asks for hf-legacy (the only mode), or an error.
Result<bool> ParseCompat(const std::string& text);

// "A=B" (split at the first '='; A not empty) for --rename and --tie.
Result<std::pair<std::string, std::string>> SplitAssignment(const std::string& flag, const std::string& text);

// --margin: bytes left free on each GPU.
Result<uint64_t> ParseMargin(const std::string& text);

// `margin` is left free on GPUs when capacities for a strategy are computed;
// --max-memory limits are returned in *max_memory.
Result<PlanOptions> MakePlanOptions(const PlanRequest& request, const DeviceRegistry& registry, uint64_t margin,
                                    std::map<DeviceId, uint64_t>* max_memory);

// A finished load and what it came from. The catalogue outlives the model,
// whose plan points into it.
struct LoadSession {
  std::string path;
  std::string alloc;
  std::string io;  // the --io engine asked for
  struct Staging {
    uint64_t chunk_bytes = 0;
    bool pipeline = true;
  } staging;  // the buffer count is in the model's stats
  double plan_seconds = 0;
  std::unique_ptr<Catalog> catalog;
  LoadedModel model;
};

// --strict: InvalidArgument naming what `plan` found missing, unexpected
// or mismatched against its expectation, where anything was; else Ok.
Status CheckStrict(const std::string& path, const LoadPlan& plan);

// For `hoist plan`: what a load could have on each device of the plan that
// holds a reservation (free memory less `margin` on GPUs, capped by
// --max-memory), where that is known: not for a device this machine lacks
// and --max-memory does not size.
std::map<DeviceId, Availability> AvailableFor(const LoadPlan& plan, const DeviceRegistry& registry, uint64_t margin,
                                              const std::map<DeviceId, uint64_t>& max_memory);
// One warning per device whose reservation exceeds it; a load would stop
// before allocating.
std::vector<std::string> FitWarnings(const LoadPlan& plan, const std::map<DeviceId, Availability>& available);

// A load's plan without the load (`hoist plan`, Python's hoist.plan): the
// checkpoint opened, its names mapped and placed, offsets assigned, as
// LoadFromRequest would, with --strict applied; nothing past the headers
// read and nothing reserved. FitWarnings are added to plan.warnings.
struct PlannedRequest {
  std::string path;                  // resolved ("org/name": the cache's snapshot)
  std::unique_ptr<Catalog> catalog;  // the plan points into it
  LoadPlan plan;
  std::map<DeviceId, Availability> available;  // AvailableFor
};
Result<PlannedRequest> PlanFromRequest(const PlanRequest& request, const DeviceRegistry& registry);

// `hoist convert` (and Python's hoist.convert): a checkpoint rewritten as a
// load with the same options would hold it: cast, filtered, renamed, one
// tensor-parallel rank's parts, re-sharded. config.json beside the source
// is copied beside the output when that is a directory (its dtype set to the
// cast's); a copy that fails is a warning in the result.
struct ConvertRequest {
  std::string src, dst;
  std::string dtype;  // bf16, f16, f32 or empty
  std::string only;
  std::vector<std::pair<std::string, std::string>> renames;  // (REGEX, REPLACEMENT), first match wins
  std::vector<std::string> drops;
  std::string compat;                  // "" or "hf-legacy"
  std::string max_shard_size = "5GB";  // "5GB", "500MB", "2GiB", or bytes
  int threads = 0;                     // 0: default
  std::string shard;                   // RANK/WORLD, or empty
  std::vector<std::string> splits;     // REGEX=DIM
  const std::atomic<bool>* cancel = nullptr;  // when set, stops the write (WriteOptions::cancel)
  bool sync = true;                           // WriteOptions::sync, config.json included
};
Result<WriteResult> ConvertFromRequest(const ConvertRequest& request);

// `opened`: the checkpoint's catalogue when the caller has opened it
// already (its headers are then not read again); else it is opened here.
Result<std::unique_ptr<LoadSession>> LoadFromRequest(const LoadRequest& request, const DeviceRegistry& registry,
                                                     std::unique_ptr<Catalog> opened = nullptr);

// `hoist inspect --json`: files, tensors (name, dtype, shape, file, offset,
// nbytes), total_bytes and metadata.
nlohmann::ordered_json CatalogJson(const Catalog& catalog);

// `catalog` is the one the plan was built from (disk tensors name their file).
// With `available`, each device with a reservation also says what a load
// could have there ("available": bytes, or null where unknown) and whether
// the reservation fits it ("fits": true, false, or null).
nlohmann::ordered_json PlanJson(const Catalog& catalog, const LoadPlan& plan,
                                const std::map<DeviceId, Availability>* available = nullptr);
nlohmann::ordered_json ReportJson(const LoadSession& session);

}  // namespace hoist
