#include "plan/device_map.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <tuple>
#include <unordered_set>

#include "format/json_util.h"
#include "format/safetensors.h"
#include "io/file.h"
#include "util/text.h"

namespace hoist {

namespace {

bool CoversName(const std::string& key, const std::string& name) {
  if (key.empty()) return true;
  return name.size() >= key.size() && name.compare(0, key.size(), key) == 0 &&
         (name.size() == key.size() || name[key.size()] == '.');
}

}  // namespace

bool IsDeviceMapStrategy(const std::string& text) {
  return text == "auto" || text == "balanced" || text == "balanced_low_0" || text == "sequential";
}

Result<DeviceMapEntries> ParseDeviceMap(const std::string& text) {
  std::string json_text = text, label = Opt("--device-map");
  size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos || text[first] != '{') {
    Result<std::string> file = ReadSmallFile(text);
    if (!file.ok() && first != std::string::npos && text[first] == '[') {  // JSON, but a list
      return InvalidArgument(Opt("--device-map") + " " + QuoteName(text) + ": a device map is a JSON object of prefix -> device");
    }
    if (!file.ok()) {
      return InvalidArgument(Opt("--device-map") + " " + QuoteName(text) + ": not JSON, a strategy, or a readable file (" +
                             file.status().message() + ")");
    }
    json_text = std::move(file).value();
    label = Printable(text);
  }
  HOIST_ASSIGN_OR_RETURN(nlohmann::json doc, ParseJsonStrict(label, json_text));
  if (!doc.is_object()) return InvalidArgument(label + ": a device map is a JSON object of prefix -> device");
  DeviceMapEntries out;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    std::string device_text;
    if (it->is_number_unsigned() || (it->is_number_integer() && it->get<int64_t>() >= 0)) {
      device_text = std::to_string(it->get<uint64_t>());
    } else if (it->is_string()) {
      device_text = it->get<std::string>();
    } else {
      return InvalidArgument(label + ": the device for " + QuoteName(it.key()) + " is not a GPU index or a device name");
    }
    Result<DeviceId> id = ParseDeviceId(device_text);
    if (!id.ok()) return InvalidArgument(label + ": key " + QuoteName(it.key()) + ": " + id.status().message());
    out.emplace_back(it.key(), *id);
  }
  return out;
}

int LongestCoveringKey(const std::string& name, const DeviceMapEntries& map) {
  int best = -1;
  for (size_t k = 0; k < map.size(); ++k) {
    if (CoversName(map[k].first, name) &&
        (best < 0 || map[k].first.size() > map[static_cast<size_t>(best)].first.size())) {
      best = static_cast<int>(k);
    }
  }
  return best;
}

Result<std::vector<DeviceId>> PlaceByMap(const std::vector<std::string>& names, const DeviceMapEntries& map,
                                         std::vector<std::string>* warnings) {
  std::vector<DeviceId> out(names.size());
  std::vector<bool> used(map.size(), false);
  for (size_t i = 0; i < names.size(); ++i) {
    const int best = LongestCoveringKey(names[i], map);
    if (best < 0) {
      return InvalidArgument("device map: no key covers tensor " + QuoteName(names[i]) +
                             " (add its module, a prefix of it, or \"\" for everything else)");
    }
    used[static_cast<size_t>(best)] = true;
    out[i] = map[static_cast<size_t>(best)].second;
  }
  // A key that covers tensors only to lose every one of them to a longer key
  // does match them: only a key that covers nothing is a likely typo.
  for (size_t k = 0; k < map.size(); ++k) {
    if (used[k]) continue;
    const bool covers_any = std::any_of(names.begin(), names.end(),
                                        [&](const std::string& n) { return CoversName(map[k].first, n); });
    if (!covers_any) warnings->push_back("device map key " + QuoteName(map[k].first) + " matches no tensor");
  }
  return out;
}

std::string SplitUnitOf(const std::string& name, const std::vector<std::regex>& no_split) {
  // Dot-boundary prefixes, shortest first.
  std::vector<size_t> cuts;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] == '.') cuts.push_back(i);
  }
  if (!no_split.empty()) {
    for (size_t cut : cuts) {
      std::string prefix = name.substr(0, cut);
      for (const std::regex& re : no_split) {
        if (std::regex_match(prefix, re)) return prefix;
      }
    }
  }
  // The first all-digit component closes the repeated block.
  size_t start = 0;
  for (size_t k = 0; k <= cuts.size(); ++k) {
    size_t end = k < cuts.size() ? cuts[k] : name.size();
    bool digits = end > start;
    for (size_t i = start; i < end && digits; ++i) digits = name[i] >= '0' && name[i] <= '9';
    if (digits && k < cuts.size()) return name.substr(0, end);
    start = end + 1;
  }
  return cuts.empty() ? name : name.substr(0, cuts.back());
}

namespace {

bool IsNumber(std::string_view c) {
  return !c.empty() && c.size() <= 18 && c.find_first_not_of("0123456789") == std::string_view::npos;
}

// Where transformers' models put a module among its siblings, as far as its
// name tells: vision and audio front-ends first (a VLM's vision tower, a
// speech model's feature extractor and convolutions), then input
// embeddings, then what sits between a front-end and the blocks
// (projectors, pre-norms), then an encoder that has a decoder beside it,
// then everything else where it first appears, then final norms, and
// output heads last.
enum class Place { kFrontEnd, kEmbedding, kBridge, kEncoder, kInOrder, kAfterBlocks, kLast };

template <size_t N>
bool OneOf(std::string_view c, const std::string_view (&names)[N]) {
  return std::find(std::begin(names), std::end(names), c) != std::end(names);
}

Place PlaceOf(std::string_view c, bool top_level, bool decoder_beside) {
  static constexpr std::string_view kFrontEnds[] = {"vision_tower", "vision_model", "visual", "audio_tower",
                                                    "feature_extractor", "conv1", "conv2"};
  static constexpr std::string_view kBridges[] = {"multi_modal_projector", "mm_projector", "feature_projection",
                                                  "pre_layrnorm", "pre_layernorm"};
  static constexpr std::string_view kFinalNorms[] = {"norm", "ln_f", "final_layer_norm", "final_layernorm",
                                                     "norm_f", "final_norm", "layer_norm", "layernorm",
                                                     "post_layernorm"};
  // Heads: lm_head and embed_out wherever they sit (an old Llava's
  // language_model.lm_head), generic names only at the top.
  static constexpr std::string_view kHeads[] = {"lm_head", "embed_out"};
  static constexpr std::string_view kTopHeads[] = {"output", "score", "classifier", "proj_out"};
  if (OneOf(c, kHeads) || (top_level && OneOf(c, kTopHeads))) return Place::kLast;
  if (OneOf(c, kFrontEnds)) return Place::kFrontEnd;
  // Embeddings and what comes with them (Bloom's word_embeddings_layernorm).
  if (c == "wte" || c == "wpe" || c == "shared" || c.find("embed") != std::string_view::npos) return Place::kEmbedding;
  if (OneOf(c, kBridges)) return Place::kBridge;
  if (OneOf(c, kFinalNorms)) return Place::kAfterBlocks;
  return c == "encoder" && decoder_beside ? Place::kEncoder : Place::kInOrder;
}

}  // namespace

std::vector<size_t> ForwardOrder(const std::vector<std::string>& units) {
  // A unit's key, component by component: (place, rank among its siblings,
  // number). Numbered siblings (layers.0, layers.1, ...) rank together where
  // the first of them appears and follow their numbers; other siblings rank
  // where they first appear. Keys compare element by element, so a module
  // sorts before the modules inside it and whole subtrees stay together.
  using Element = std::tuple<int, size_t, uint64_t>;
  // First the siblings under every parent path, ranked where they first
  // appear (numbers share one rank, that of the first number seen, under a
  // key no component can be: components hold no dot).
  std::map<std::string, std::map<std::string, size_t>> rank;  // parent path -> component -> rank
  auto for_each_component = [&](const std::string& unit, auto&& fn) {
    std::string_view rest = unit;
    std::string parent;
    while (true) {
      const size_t dot = rest.find('.');
      const std::string_view c = rest.substr(0, dot);
      fn(parent, c, IsNumber(c));
      if (dot == std::string_view::npos) break;
      parent += (parent.empty() ? "" : ".") + std::string(c);
      rest.remove_prefix(dot + 1);
    }
  };
  for (const std::string& unit : units) {
    for_each_component(unit, [&](const std::string& parent, std::string_view c, bool number) {
      auto& siblings = rank[parent];
      siblings.emplace(number ? std::string(".") : std::string(c), siblings.size());
    });
  }
  std::vector<std::vector<Element>> key(units.size());
  for (size_t u = 0; u < units.size(); ++u) {
    for_each_component(units[u], [&](const std::string& parent, std::string_view c, bool number) {
      const auto& siblings = rank.at(parent);
      const Place place = number ? Place::kInOrder : PlaceOf(c, parent.empty(), siblings.count("decoder") > 0);
      key[u].emplace_back(static_cast<int>(place), siblings.at(number ? std::string(".") : std::string(c)),
                          number ? std::stoull(std::string(c)) : 0);
    });
  }
  std::vector<size_t> order(units.size());
  for (size_t u = 0; u < order.size(); ++u) order[u] = u;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key[a] < key[b]; });
  return order;
}

std::string DescribeUnits(const std::vector<std::string>& names, const std::unordered_set<std::string>& partial,
                          size_t max_chars) {
  std::vector<std::string> units;
  std::unordered_set<std::string> seen;
  for (const std::string& n : names) {
    std::string unit = SplitUnitOf(n, {});
    if (seen.insert(unit).second) units.push_back(std::move(unit));
  }
  // Items in order, each with how many units it stands for: a unit as it
  // is, or a run of one container's consecutive numbers written
  // "container.first-last" (numbers written plainly only: layers.01 stays).
  std::vector<std::pair<std::string, size_t>> items;
  std::string container;
  uint64_t first = 0, last = 0;
  bool in_run = false;
  auto flush = [&] {
    if (!in_run) return;
    items.emplace_back(container + "." + std::to_string(first) + (last > first ? "-" + std::to_string(last) : ""),
                       static_cast<size_t>(last - first + 1));
    in_run = false;
  };
  for (size_t u : ForwardOrder(units)) {
    const std::string& unit = units[u];
    const size_t dot = unit.rfind('.');
    const std::string number = dot == std::string::npos ? std::string() : unit.substr(dot + 1);
    if (partial.count(unit) > 0 || !IsNumber(number) || std::to_string(std::stoull(number)) != number) {
      flush();
      const std::string shown = unit.empty() ? "\"\"" : unit;
      items.emplace_back(partial.count(unit) > 0 ? "part of " + shown : shown, 1);
      continue;
    }
    const uint64_t k = std::stoull(number);
    if (in_run && dot == container.size() && unit.compare(0, dot, container) == 0 && k == last + 1) {
      last = k;
      continue;
    }
    flush();
    container = unit.substr(0, dot), first = last = k, in_run = true;
  }
  flush();
  size_t left = units.size();
  std::string out;
  for (const auto& [text, count] : items) {
    const std::string more = ", and " + std::to_string(left) + " more";
    if (!out.empty() && out.size() + 2 + text.size() + (left > count ? more.size() : 0) > max_chars) {
      return out + more;
    }
    out += (out.empty() ? "" : ", ") + text;
    left -= count;
  }
  return out;
}

namespace {
// The mean size of the modules that hold tensors and no other module (a
// tensor's module: its name without the last component), as accelerate's
// get_balanced_memory averages its leaf modules.
uint64_t MeanModuleBytes(const std::vector<std::string>& names, const std::vector<uint64_t>& sizes) {
  std::map<std::string, uint64_t> modules;
  for (size_t i = 0; i < names.size(); ++i) {
    const size_t dot = names[i].rfind('.');
    modules[dot == std::string::npos ? std::string() : names[i].substr(0, dot)] += sizes[i];
  }
  uint64_t sum = 0, count = 0;
  for (const auto& [module, bytes] : modules) {
    const std::string prefix = module + ".";
    auto child = modules.lower_bound(prefix);
    const bool has_child = module.empty() ? modules.size() > 1
                                          : child != modules.end() && child->first.compare(0, prefix.size(), prefix) == 0;
    if (has_child) continue;
    sum += bytes;
    ++count;
  }
  return count == 0 ? 0 : sum / count;
}
}  // namespace

Result<std::vector<DeviceId>> PlaceByStrategy(const std::vector<std::string>& names,
                                              const std::vector<uint64_t>& sizes, const std::string& strategy,
                                              const std::map<DeviceId, uint64_t>& capacity_bytes,
                                              const std::vector<std::regex>& no_split) {
  // Units in order of first appearance; the walk below takes them in
  // ForwardOrder.
  std::vector<std::string> unit_names;
  std::vector<uint64_t> unit_bytes;
  std::vector<size_t> unit_of(names.size());
  std::map<std::string, size_t> unit_index;
  uint64_t total = 0, largest = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    std::string unit = SplitUnitOf(names[i], no_split);
    auto [it, inserted] = unit_index.emplace(unit, unit_names.size());
    if (inserted) {
      unit_names.push_back(unit);
      unit_bytes.push_back(0);
    }
    unit_of[i] = it->second;
    unit_bytes[it->second] += sizes[i];
    total += sizes[i];
  }
  for (uint64_t b : unit_bytes) largest = std::max(largest, b);

  // The GPUs that may take anything: one without room (--max-memory 1=0, or
  // no free memory) neither takes a share nor counts in the others'.
  std::vector<DeviceId> gpus;
  for (const auto& [id, cap] : capacity_bytes) {
    if (id.kind == DeviceKind::kCuda && cap > 0) gpus.push_back(id);
  }
  std::sort(gpus.begin(), gpus.end());
  // Budgets: what each GPU may take, as accelerate's get_balanced_memory
  // computes them. An even share plus a buffer for every GPU but the last,
  // which keeps its whole capacity: 1.25 times the larger of the repeated
  // block and the mean module (so rounding at unit boundaries does not push
  // the last layers off the GPUs). balanced_low_0 shares the model among
  // the GPUs after the first, and GPU 0 comes after them: it takes only what
  // they cannot hold, before the cpu does.
  uint64_t block = 0;
  for (size_t u = 0; u < unit_names.size(); ++u) {
    const std::string& name = unit_names[u];
    if (!name.empty() && name.back() >= '0' && name.back() <= '9') block = std::max(block, unit_bytes[u]);
  }
  const uint64_t buffer = std::max(block, MeanModuleBytes(names, sizes)) / 4 * 5;
  const size_t n = gpus.size();
  const bool low0 = strategy == "balanced_low_0";
  std::vector<uint64_t> budget(n);
  for (size_t g = 0; g < n; ++g) budget[g] = capacity_bytes.at(gpus[g]);
  // The first GPU that shares the model: GPU 0 stands aside under
  // balanced_low_0, and only GPU 0 (one without room is no GPU here).
  const size_t first = low0 && n > 1 && gpus[0] == DeviceId::Cuda(0) ? 1 : 0;
  if (strategy != "sequential" && n - first > 1) {
    const uint64_t per_gpu = total / (n - first) + buffer;
    for (size_t g = first; g + 1 < n; ++g) budget[g] = std::min(budget[g], per_gpu);
  }
  std::vector<std::pair<DeviceId, uint64_t>> order;
  for (size_t g = first; g < n; ++g) order.emplace_back(gpus[g], budget[g]);
  if (first == 1) order.emplace_back(gpus[0], budget[0]);
  auto cpu = capacity_bytes.find(DeviceId::Cpu());
  order.emplace_back(DeviceId::Cpu(), cpu != capacity_bytes.end() ? cpu->second : 0);
  // Disk offload only when asked for (--max-memory disk=SIZE): a model that
  // does not fit the GPUs and the cpu is an error, never a silent spill.
  auto disk = capacity_bytes.find(DeviceId::Disk());
  const bool disk_allowed = disk != capacity_bytes.end() && disk->second > 0;
  if (disk_allowed) order.emplace_back(DeviceId::Disk(), disk->second);

  const std::vector<size_t> walk = ForwardOrder(unit_names);
  std::vector<DeviceId> unit_device(unit_names.size());
  std::vector<uint64_t> used(order.size(), 0);
  size_t d = 0;  // devices are filled in order and never revisited
  for (size_t w = 0; w < walk.size(); ++w) {
    const size_t u = walk[w];
    while (d < order.size() && used[d] + unit_bytes[u] > order[d].second) ++d;
    if (d == order.size()) {
      uint64_t left = 0;
      for (size_t v = w; v < walk.size(); ++v) left += unit_bytes[walk[v]];
      // Devices are filled in order and never gone back to: what each had
      // left when the walk moved past it.
      std::string devices;
      for (size_t k = 0; k < order.size(); ++k) {
        devices += (k ? ", " : "") + order[k].first.ToString() + " ";
        if (order[k].first == DeviceId::Cpu() && cpu == capacity_bytes.end()) {
          devices += "not used (" + Opt("--max-memory") + " names other devices and not the cpu)";
        } else {
          devices += ByteText(order[k].second - used[k]) + " left of " + ByteText(order[k].second);
        }
      }
      return OutOfMemory("device map " + strategy + ": unit " + QuoteName(unit_names[u]) + " (" +
                         ByteText(unit_bytes[u]) + ") fits on no device (" + devices + "; " + ByteText(left) +
                         " of the model left to place); " +
                         (disk_allowed ? "raise " + Opt("--max-memory") + " or shrink the model with " + Opt("--dtype")
                                       : "raise " + Opt("--max-memory") + ", shrink the model with " + Opt("--dtype") + ", or leave the rest in "
                                         "its file with " + OptText("--max-memory disk=SIZE", "max_memory={\"disk\": size}")));
    }
    used[d] += unit_bytes[u];
    unit_device[u] = order[d].first;
  }
  std::vector<DeviceId> out(names.size());
  for (size_t i = 0; i < names.size(); ++i) out[i] = unit_device[unit_of[i]];
  return out;
}

}  // namespace hoist
