#include "hoist/plan.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <regex>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "format/json_util.h"
#include "format/safetensors.h"
#include "io/file.h"
#include "util/text.h"
#include "hoist/writer.h"
#include "load/select.h"
#include "plan/device_map.h"

namespace hoist {

namespace {

// A --rename replacement's $N (and $NN) must name a group its pattern has:
// regex_replace would put nothing there, and names would silently lose a part.
Status CheckGroupReferences(const RenameRule& rule, const std::regex& re) {
  const std::string& text = rule.replacement;
  for (size_t i = 0; i + 1 < text.size(); ++i) {
    if (text[i] != '$') continue;
    if (text[i + 1] == '$') {  // "$$" is a literal $
      ++i;
      continue;
    }
    size_t digits = 0, group = 0;
    while (digits < 2 && i + 1 + digits < text.size() && std::isdigit(static_cast<unsigned char>(text[i + 1 + digits]))) {
      group = group * 10 + static_cast<size_t>(text[i + 1 + digits] - '0');
      ++digits;
    }
    if (digits > 0 && group > re.mark_count()) {
      return InvalidArgument(Opt("--rename") + " " + QuoteName(rule.pattern + "=" + text) + ": $" + std::to_string(group) +
                             " names a group the pattern does not have (it has " + std::to_string(re.mark_count()) + ")");
    }
  }
  return Status::Ok();
}

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Whether a cpu tensor can be mapped from its file: stored as it is loaded,
// not empty, and at a file offset that is a multiple of its element size
// (a mapping starts on a page, so its address then is too). The format
// does not require that alignment, and a typed view must have it; others
// are read into the reservation.
bool Mappable(const PlannedTensor& p) {
  if (p.dtype != p.source->dtype || StoredBytes(p) == 0 || p.runs != 1) return false;
  const uint64_t element = static_cast<uint64_t>(std::clamp(DTypeBits(p.dtype) / 8, 1, 8));
  return p.file_offset_bytes % element == 0;
}

// A --split rule's dimension of a tensor with `dims` dimensions, negative
// counting from the last (may lie outside [0, dims)).
int SplitDim(int dim, int dims) { return dim < 0 ? dim + dims : dim; }

// Part `shard.rank` of `t` split along `dim` into `shard.world` parts:
// p's shape, slice and file runs. Every product below is at most the
// tensor's element count, whose size in bits the catalogue checked fits.
Status SliceTensor(const TensorInfo& t, const std::string& name, int dim, const ShardSpec& shard, PlannedTensor* p) {
  const int dims = static_cast<int>(t.shape.size());
  auto what = [&] { return Opt("--split") + ": tensor " + QuoteName(name) + " " + ShapeText(t.shape); };
  if (dims == 0) return InvalidArgument(what() + " is a scalar, which cannot be split");
  const int d = SplitDim(dim, dims);
  if (d < 0 || d >= dims) return InvalidArgument(what() + " has no dimension " + std::to_string(dim));
  const uint64_t extent = t.shape[static_cast<size_t>(d)];
  const uint64_t world = static_cast<uint64_t>(shard.world), rank = static_cast<uint64_t>(shard.rank);
  if (extent % world != 0) {
    return InvalidArgument(what() + ": dimension " + std::to_string(d) + " (" + std::to_string(extent) +
                           ") does not split into " + std::to_string(world) + " equal parts");
  }
  const uint64_t part = extent / world;
  p->slice = TensorSlice{d, rank * part, (rank + 1) * part};
  p->shape[static_cast<size_t>(d)] = part;
  if (std::find(t.shape.begin(), t.shape.end(), uint64_t{0}) != t.shape.end()) {  // no elements: no bytes
    p->run_bytes = p->stride_bytes = 0;
    return Status::Ok();
  }
  uint64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= t.shape[static_cast<size_t>(i)];
  for (int i = d + 1; i < dims; ++i) inner *= t.shape[static_cast<size_t>(i)];
  const uint64_t bits = static_cast<uint64_t>(DTypeBits(t.dtype));
  const uint64_t run_bits = part * inner * bits, stride_bits = extent * inner * bits;
  if (run_bits % 8 != 0 || stride_bits % 8 != 0) {
    return InvalidArgument(what() + ": " + std::string(DTypeName(t.dtype)) + " parts along dimension " +
                           std::to_string(d) + " do not begin on a byte boundary");
  }
  p->file_offset_bytes = t.offset_bytes + rank * run_bits / 8;
  p->run_bytes = run_bits / 8;
  p->stride_bytes = stride_bits / 8;
  p->runs = outer;
  if (outer > 1 && p->run_bytes == p->stride_bytes) {  // one part (world 1): the runs are back to back
    p->run_bytes *= outer;
    p->runs = 1;
  }
  return Status::Ok();
}

// How quantized weights are stored: integers (int8, packed int4 in int32,
// ...) and floats of 8 bits or fewer.
bool IsQuantizedStorage(DType dtype) {
  switch (dtype) {
    case DType::kU8: case DType::kI8: case DType::kI16: case DType::kU16: case DType::kI32: case DType::kU32:
      return true;
    default:
      return IsNarrowFloat(dtype);
  }
}

std::string ModuleOf(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? std::string() : name.substr(0, dot);
}

}  // namespace

QuantizationAux::QuantizationAux(const std::vector<TensorInfo>& tensors) {
  for (const TensorInfo& t : tensors) {
    const size_t dot = t.name.rfind('.');
    const bool weight_name = dot != std::string::npos &&
                             (t.name.find("weight", dot + 1) != std::string::npos || t.name.compare(dot + 1, 3, "W_q") == 0);
    if (weight_name && IsQuantizedStorage(t.dtype)) {
      quantized_modules_.insert(ModuleOf(t.name));
    }
  }
}

bool QuantizationAux::Contains(const std::string& name) const {
  if (name.find('.') != std::string::npos && !EndsWith(name, ".bias") && quantized_modules_.count(ModuleOf(name)) > 0) {
    return true;
  }
  const std::string last = name.substr(name.rfind('.') + 1);
  // SCB: bitsandbytes LLM.int8 row scales; weight_scale_2 and *_global_scale:
  // NVFP4 (ModelOpt, compressed-tensors) second-level scales.
  static const char* kQuantizerNames[] = {"weight_scale", "weight_scale_inv", "input_scale", "output_scale",
                                          "absmax", "nested_absmax", "qzeros", "g_idx", "weight_g_idx", "quant_map",
                                          "nested_quant_map", "weight_zero_point", "SCB", "weight_global_scale",
                                          "input_global_scale", "k_scale", "v_scale", "q_scale", "kv_scale",
                                          "prob_scale"};
  for (const char* n : kQuantizerNames) {
    if (last == n) return true;
  }
  // A quantizer's numbered scales ("weight_scale_2"), not a model's own
  // ("layer_scale_1" in PoolFormer).
  for (const char* prefix : {"weight_scale_", "input_scale_", "output_scale_"}) {
    const std::string_view p(prefix);
    if (last.size() > p.size() && last.compare(0, p.size(), p) == 0 &&
        last.find_first_not_of("0123456789", p.size()) == std::string::npos) {
      return true;
    }
  }
  if (name.find(".quant_state.") != std::string::npos) return true;
  if (!quantized()) return false;
  // Names a model may give its own parameters: quantization data only in a
  // quantized checkpoint (fp8 KV-cache k_scale/v_scale, GPTQ scales, ...).
  for (const char* n : {"scale", "scales", "zeros", "zero_point"}) {
    if (last == n) return true;
  }
  return EndsWith(last, "_scale") || EndsWith(last, "_scale_inv");
}

const DevicePlan* LoadPlan::FindDevice(DeviceId id) const {
  for (const DevicePlan& d : devices) {
    if (d.device == id) return &d;
  }
  return nullptr;
}

Result<std::vector<std::pair<std::string, std::string>>> SplitMaxMemory(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string::npos) return InvalidArgument(Opt("--max-memory") + " " + QuoteName(item) + ": expected DEVICE=SIZE (0=20GiB)");
    out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  return out;
}

Result<std::map<DeviceId, uint64_t>> ParseMaxMemory(const std::vector<std::pair<std::string, std::string>>& limits) {
  std::map<DeviceId, uint64_t> out;
  for (const auto& [device, size] : limits) {
    // The limit as the caller wrote it: --max-memory '0=20GiB', max_memory[0] or max_memory['cpu'].
    const bool number = !device.empty() && device.find_first_not_of("0123456789") == std::string::npos;
    const std::string where = OptText("--max-memory " + QuoteName(device + "=" + size),
                                      "max_memory[" + (number ? device : QuoteName(device)) + "]");
    Result<DeviceId> id = ParseDeviceId(device);
    if (!id.ok()) return InvalidArgument(where + ": " + id.status().message());
    Result<uint64_t> bytes = ParseByteCount(size);  // 0: the device takes nothing
    if (!bytes.ok()) return InvalidArgument(where + ": " + bytes.status().message());
    if (!out.emplace(*id, *bytes).second) return InvalidArgument(Opt("--max-memory") + ": " + id->ToString() + " is given twice");
  }
  return out;
}

Result<std::map<DeviceId, uint64_t>> ParseMaxMemory(const std::string& text) {
  HOIST_ASSIGN_OR_RETURN(auto limits, SplitMaxMemory(text));
  return ParseMaxMemory(limits);
}

namespace {
// The whole of `text` as an int in [lo, hi], or nothing.
std::optional<int> WholeInt(std::string_view text, int lo, int hi) {
  int v = 0;
  const char* end = text.data() + text.size();
  auto [at, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || at != end || v < lo || v > hi) return std::nullopt;
  return v;
}
}  // namespace

Result<ShardSpec> ParseShard(const std::string& text) {
  const size_t slash = text.find('/');
  std::optional<int> rank, world;
  if (slash != std::string::npos) {
    rank = WholeInt(std::string_view(text).substr(0, slash), 0, 1 << 20);
    world = WholeInt(std::string_view(text).substr(slash + 1), 1, 1 << 20);
  }
  if (!rank || !world) return InvalidArgument(Opt("--shard") + " " + QuoteName(text) + ": expected RANK/WORLD (1/4)");
  if (*rank >= *world) return InvalidArgument(Opt("--shard") + " " + QuoteName(text) + ": the rank must be below the world size");
  return ShardSpec{*rank, *world};
}

Result<SplitRule> ParseSplitRule(const std::string& text) {
  const size_t eq = text.rfind('=');
  std::optional<int> dim;
  if (eq != std::string::npos) dim = WholeInt(std::string_view(text).substr(eq + 1), -64, 63);
  if (!dim) return InvalidArgument(Opt("--split") + " " + QuoteName(text) + ": expected REGEX=DIM (o_proj|down_proj=1)");
  return SplitRule{text.substr(0, eq), *dim};
}

Result<bool> ConfigTiesWordEmbeddings(const std::string& checkpoint_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path dir = fs::is_directory(checkpoint_path, ec) ? fs::path(checkpoint_path) : fs::path(checkpoint_path).parent_path();
  fs::path config = dir / "config.json";
  if (!fs::exists(config, ec)) return false;
  HOIST_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(config.string()));
  HOIST_ASSIGN_OR_RETURN(nlohmann::json doc, ParseJsonStrict(Printable(config.string()), text));
  if (!doc.is_object()) return Corruption(Printable(config.string()) + ": not a JSON object");
  // Only an explicit true: transformers' default differs from one model
  // class to the next (PretrainedConfig: true; LlamaConfig: false).
  auto tie = doc.find("tie_word_embeddings");
  return tie != doc.end() && tie->is_boolean() && tie->get<bool>();
}

Result<std::vector<ExpectedTensor>> ParseExpect(const std::string& json_text, const std::string& label) {
  HOIST_ASSIGN_OR_RETURN(nlohmann::json doc, ParseJsonStrict(label, json_text));
  std::vector<ExpectedTensor> out;
  if (doc.is_array()) {
    for (const auto& v : doc) {
      if (!v.is_string()) return InvalidArgument(label + ": a list of expected names must hold strings only");
      out.push_back({v.get<std::string>(), std::nullopt, std::nullopt});
    }
    return out;
  }
  if (!doc.is_object()) return InvalidArgument(label + ": expected a list of names or an object name -> {dtype, shape}");
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    ExpectedTensor e{it.key(), std::nullopt, std::nullopt};
    if (it->is_object()) {
      if (auto d = it->find("dtype"); d != it->end()) {
        std::optional<DType> dt = d->is_string() ? ParseDTypeName(d->get<std::string>()) : std::nullopt;
        if (!dt && d->is_string()) dt = ParseCastTarget(d->get<std::string>());
        if (!dt) {
          return InvalidArgument(label + ": " + QuoteName(it.key()) + ": unknown dtype " +
                                 (d->is_string() ? QuoteName(d->get<std::string>()) : d->dump()));
        }
        e.dtype = dt;
      }
      if (auto s = it->find("shape"); s != it->end()) {
        if (!s->is_array()) return InvalidArgument(label + ": " + QuoteName(it.key()) + ": shape is not a list");
        std::vector<uint64_t> shape;
        for (const auto& dim : *s) {
          if (!dim.is_number_unsigned()) return InvalidArgument(label + ": " + QuoteName(it.key()) + ": bad shape");
          shape.push_back(dim.get<uint64_t>());
        }
        e.shape = shape;
      }
    }
    out.push_back(std::move(e));
  }
  return out;
}

Result<LoadPlan> BuildPlan(const Catalog& catalog, const PlanOptions& options) {
  if (options.cast_to && !IsCastableFloat(*options.cast_to)) return InvalidArgument(Opt("--dtype") + " must be bf16, f16 or f32");
  // Every size below (casts at most double a tensor, alignment adds at most
  // 256 bytes per tensor) then stays far from 64-bit overflow.
  constexpr uint64_t kMaxPlanBytes = uint64_t{1} << 60;
  if (catalog.total_bytes() > kMaxPlanBytes) {
    return Corruption("the checkpoint claims " + std::to_string(catalog.total_bytes()) +
                      " bytes of tensors, more than hoist plans (1 EiB): its files are sparse or corrupt");
  }
  LoadPlan plan;
  plan.warnings = catalog.warnings();

  // 1. Key mapping: compat, drops, renames.
  std::vector<std::regex> drops;
  for (const std::string& d : options.drops) {
    HOIST_ASSIGN_OR_RETURN(std::regex re, CompileRegex(Opt("--drop"), d));
    drops.push_back(std::move(re));
  }
  std::vector<std::pair<std::regex, std::string>> renames;
  for (const RenameRule& r : options.renames) {
    HOIST_ASSIGN_OR_RETURN(std::regex re, CompileRegex(Opt("--rename"), r.pattern));
    HOIST_RETURN_IF_ERROR(CheckGroupReferences(r, re));
    renames.emplace_back(std::move(re), r.replacement);
  }
  std::optional<std::regex> only;
  if (!options.only_regex.empty()) {
    HOIST_ASSIGN_OR_RETURN(only, CompileRegex(Opt("--only"), options.only_regex));
  }
  if (!options.splits.empty() && !options.shard) return InvalidArgument(Opt("--split") + " needs " + OptText("--shard RANK/WORLD", "shard=(rank, world)"));
  if (options.shard && options.splits.empty()) {
    return InvalidArgument(Opt("--shard") + " needs " +
                           OptText("--split rules naming the tensors to split (REGEX=DIM)",
                                   "split={regex: dim} naming the tensors to split"));
  }
  if (options.shard && (options.shard->world < 1 || options.shard->rank < 0 || options.shard->rank >= options.shard->world)) {
    return InvalidArgument(Opt("--shard") + " " + std::to_string(options.shard->rank) + "/" + std::to_string(options.shard->world) +
                           ": the rank must be at least 0 and below the world size");
  }
  std::vector<std::regex> splits;
  for (const SplitRule& r : options.splits) {
    HOIST_ASSIGN_OR_RETURN(std::regex re, CompileRegex(Opt("--split"), r.pattern));
    splits.push_back(std::move(re));
  }
  std::vector<char> split_used(splits.size(), 0);
  std::unordered_map<std::string, const ExpectedTensor*> expected;
  if (options.expect) {
    for (const ExpectedTensor& e : *options.expect) expected.emplace(e.name, &e);
  }

  // Scales, zero points and the like keep their stored dtype.
  const QuantizationAux quantization(catalog.tensors());

  std::unordered_map<std::string, size_t> by_name;
  for (const TensorInfo& t : catalog.tensors()) {
    std::string name = t.name;
    if (options.compat_hf_legacy) {
      if (EndsWith(name, "rotary_emb.inv_freq")) continue;
      if (EndsWith(name, ".gamma")) name = name.substr(0, name.size() - 6) + ".weight";
      else if (EndsWith(name, ".beta")) name = name.substr(0, name.size() - 5) + ".bias";
    }
    bool dropped = false;
    for (const std::regex& re : drops) dropped = dropped || std::regex_search(name, re);
    if (dropped) continue;
    for (const auto& [re, replacement] : renames) {
      if (std::regex_search(name, re)) {
        name = std::regex_replace(name, re, replacement, std::regex_constants::format_first_only);
        // A regex works on bytes: "^." takes one byte of "é" and leaves
        // the name no text at all.
        if (!IsValidUtf8(name)) {
          return InvalidArgument(Opt("--rename") + ": " + QuoteName(t.name) + " becomes " + QuoteName(name) +
                                 ", which is not UTF-8 (a pattern cut a character in two)");
        }
        break;
      }
    }
    if (only && !std::regex_search(name, *only)) continue;
    if (options.expect && expected.find(name) == expected.end()) {
      plan.unexpected.push_back(name);  // never allocated or read
      continue;
    }
    auto [it, inserted] = by_name.emplace(name, plan.tensors.size());
    if (!inserted) {
      return InvalidArgument("key mapping sends both " + QuoteName(plan.tensors[it->second].source->name) + " and " +
                             QuoteName(t.name) + " to " + QuoteName(name));
    }
    PlannedTensor p;
    p.name = name;
    p.source = &t;
    p.shape = t.shape;
    p.file_offset_bytes = t.offset_bytes;
    p.run_bytes = p.stride_bytes = t.size_bytes;
    for (size_t k = 0; k < splits.size(); ++k) {
      if (!std::regex_search(name, splits[k])) continue;
      HOIST_RETURN_IF_ERROR(SliceTensor(t, name, options.splits[k].dim, *options.shard, &p));
      split_used[k] = 1;
      break;
    }
    const bool castable = IsCastableFloat(t.dtype) && !quantization.Contains(t.name);
    p.dtype = castable ? TargetDType(t.dtype, options.cast_to) : t.dtype;
    p.size_bytes = TargetBytes(StoredBytes(p), t.dtype, p.dtype);
    plan.tensors.push_back(std::move(p));
  }

  // 2. Ties: an alias shares its source's storage and costs nothing.
  std::vector<std::pair<std::string, std::string>> ties;
  if (options.tie_word_embeddings) {
    const char* const* embedding =
        std::find_if(std::begin(kInputEmbeddingNames), std::end(kInputEmbeddingNames),
                     [&](const char* n) { return by_name.count(n) > 0; });
    if (embedding != std::end(kInputEmbeddingNames)) {
      ties.emplace_back("lm_head.weight", *embedding);
    } else if (options.only_regex.empty() && options.drops.empty()) {  // a filter may have left it out
      const std::string config =
          catalog.files().empty()
              ? std::string("config.json")
              : (std::filesystem::path(catalog.files()[0].path).parent_path() / "config.json").string();
      plan.warnings.push_back(
          Printable(config) + " ties the word embeddings, but no input embedding this knows "
          "(model.embed_tokens.weight, transformer.wte.weight, ...) is loaded: lm_head.weight tied to nothing; "
          "name the pair with " + Opt("--tie") + ", or ignore the config with " + OptText("--no-config-ties", "config_ties=False"));
    }
  }
  ties.insert(ties.end(), options.ties.begin(), options.ties.end());
  for (const auto& [alias, source] : ties) {
    if (alias == source) return InvalidArgument(AssignmentText("--tie", alias, source) + ": a tensor cannot be tied to itself");
  }
  // Ties whose source is itself an alias made here (c=b, b=a) wait until
  // it exists, whatever order they came in. What never finds its source is
  // a loop (an error) or names a tensor that is not loaded (a warning).
  auto apply_tie = [&](const std::string& alias, const std::string& source) -> Status {
    auto src = by_name.find(source);
    auto existing = by_name.find(alias);
    if (existing != by_name.end()) {
      PlannedTensor& a = plan.tensors[existing->second];
      const PlannedTensor& s = plan.tensors[src->second];
      // The same stored tensor cut the same way: a part tied to a whole
      // tensor of the part's shape would quietly hold the wrong rows.
      const bool same_cut = a.source->shape == s.source->shape &&
                            a.slice.has_value() == s.slice.has_value() &&
                            (!a.slice || (a.slice->dim == s.slice->dim && a.slice->start == s.slice->start));
      if (a.shape != s.shape || a.source->dtype != s.source->dtype || !same_cut) {
        auto describe = [](const PlannedTensor& t) {
          std::string text = std::string(DTypeName(t.source->dtype)) + " " + ShapeText(t.source->shape);
          if (t.slice) {
            text += " (part " + std::to_string(t.slice->start) + ".." + std::to_string(t.slice->stop) +
                    " of dimension " + std::to_string(t.slice->dim) + ")";
          }
          return text;
        };
        return InvalidArgument(AssignmentText("--tie", alias, source) + ": the tensors differ (" + describe(a) + " vs " +
                               describe(s) + ")");
      }
      a.dtype = s.dtype;
      a.alias_of = static_cast<int>(src->second);
      a.size_bytes = 0;
      return Status::Ok();
    }
    if (options.expect && expected.find(alias) == expected.end()) return Status::Ok();
    PlannedTensor a = plan.tensors[src->second];
    a.name = alias;
    a.alias_of = static_cast<int>(src->second);
    a.size_bytes = 0;
    by_name.emplace(alias, plan.tensors.size());
    plan.tensors.push_back(std::move(a));
    return Status::Ok();
  };
  for (size_t before = ties.size() + 1; !ties.empty() && ties.size() < before;) {
    before = ties.size();
    std::vector<std::pair<std::string, std::string>> waiting;
    for (auto& tie : ties) {
      if (by_name.count(tie.second) == 0) {
        waiting.push_back(std::move(tie));
      } else {
        HOIST_RETURN_IF_ERROR(apply_tie(tie.first, tie.second));
      }
    }
    ties = std::move(waiting);
  }
  std::map<std::string, std::string> source_of(ties.begin(), ties.end());
  for (const auto& [alias, source] : ties) {
    std::string at = source;
    for (size_t steps = 0; steps <= ties.size() && source_of.count(at) > 0 && at != alias; ++steps) at = source_of[at];
    if (at == alias) return InvalidArgument(Opt("--tie") + ": the ties of " + QuoteName(alias) + " form a loop");
    plan.warnings.push_back(AssignmentText("--tie", alias, source) + ": the source is not loaded; nothing tied");
  }

  // Ties may chain (c=b, b=a) or loop (a=b, b=a): point every alias at the
  // tensor that really holds the bytes, and refuse loops.
  for (PlannedTensor& p : plan.tensors) {
    size_t steps = 0;
    while (p.alias_of >= 0 && plan.tensors[static_cast<size_t>(p.alias_of)].alias_of >= 0) {
      p.alias_of = plan.tensors[static_cast<size_t>(p.alias_of)].alias_of;
      if (++steps > plan.tensors.size()) return InvalidArgument(Opt("--tie") + ": the ties of " + QuoteName(p.name) + " form a loop");
    }
  }

  // A tie made here holds its source's storage, so its source's part: a
  // --split rule that names the alias itself cannot cut it another way.
  for (const PlannedTensor& p : plan.tensors) {
    if (p.alias_of < 0) continue;
    const PlannedTensor& s = plan.tensors[static_cast<size_t>(p.alias_of)];
    if (p.source != s.source) continue;  // a tensor of the file, cut by its own rule (ties checked the cut)
    for (size_t k = 0; k < splits.size(); ++k) {
      if (!std::regex_search(p.name, splits[k])) continue;
      split_used[k] = 1;
      const int d = SplitDim(options.splits[k].dim, static_cast<int>(s.source->shape.size()));
      if (!s.slice || s.slice->dim != d) {
        plan.warnings.push_back(
            Opt("--split") + " " + QuoteName(options.splits[k].pattern) + " would cut " + QuoteName(p.name) + " along dimension " +
            std::to_string(options.splits[k].dim) + ", but it is tied to " + QuoteName(s.name) + " and holds " +
            (s.slice ? "its part along dimension " + std::to_string(s.slice->dim) : std::string("all of it")));
      }
      break;
    }
  }
  for (size_t k = 0; k < splits.size(); ++k) {
    if (!split_used[k]) plan.warnings.push_back(Opt("--split") + " " + QuoteName(options.splits[k].pattern) + " matches no tensor");
  }

  // 3. Expectations.
  if (options.expect) {
    for (const ExpectedTensor& e : *options.expect) {
      auto it = by_name.find(e.name);
      if (it == by_name.end()) {
        // A name --only leaves out is not asked for, so not missing.
        if (!only || std::regex_search(e.name, *only)) plan.missing.push_back(e.name);
        continue;
      }
      const PlannedTensor& p = plan.tensors[it->second];
      if ((e.shape && *e.shape != p.shape) || (e.dtype && *e.dtype != p.dtype)) {
        plan.mismatched.push_back(e.name);
        std::string expected, found;  // what the expectation names, each side
        if (e.dtype) expected = DTypeName(*e.dtype), found = DTypeName(p.dtype);
        if (e.shape) {
          expected += (expected.empty() ? "" : " ") + ShapeText(*e.shape);
          found += (found.empty() ? "" : " ") + ShapeText(p.shape);
        }
        plan.mismatch_notes.push_back(QuoteName(e.name) + ": expected " + expected + ", found " + found);
      }
    }
  }

  // 4. Placement. (--no-split patterns are checked even where no strategy uses them.)
  std::vector<std::regex> no_split;
  for (const std::string& r : options.no_split) {
    HOIST_ASSIGN_OR_RETURN(std::regex re, CompileRegex(Opt("--no-split"), r));
    no_split.push_back(std::move(re));
  }
  std::vector<std::string> names;
  std::vector<uint64_t> sizes;
  for (const PlannedTensor& p : plan.tensors) {
    names.push_back(p.name);
    sizes.push_back(AlignUp(p.size_bytes, kDeviceTensorAlignBytes));
  }
  std::vector<DeviceId> placement(plan.tensors.size(), options.device.value_or(DeviceId::Cpu()));
  if (!options.device_map.empty()) {
    if (options.device) return InvalidArgument("give " + Opt("--device") + " or " + Opt("--device-map") + ", not both");
    if (IsDeviceMapStrategy(options.device_map)) {
      HOIST_ASSIGN_OR_RETURN(placement,
                             PlaceByStrategy(names, sizes, options.device_map, options.capacity_bytes, no_split));
    } else {
      HOIST_ASSIGN_OR_RETURN(DeviceMapEntries map, ParseDeviceMap(options.device_map));
      HOIST_ASSIGN_OR_RETURN(placement, PlaceByMap(names, map, &plan.warnings));
      // A map that sends a tied alias elsewhere than its source is overruled
      // (one storage, one device): say so rather than move it silently,
      // unless only the catch-all "" placed it.
      for (size_t i = 0; i < plan.tensors.size(); ++i) {
        const PlannedTensor& p = plan.tensors[i];
        if (p.alias_of < 0) continue;
        const int key = LongestCoveringKey(p.name, map);
        if (key < 0 || map[static_cast<size_t>(key)].first.empty()) continue;
        const DeviceId source_device = placement[static_cast<size_t>(p.alias_of)];
        if (placement[i] != source_device) {
          plan.warnings.push_back("device map: " + QuoteName(p.name) + " is tied to " +
                                  QuoteName(plan.tensors[static_cast<size_t>(p.alias_of)].name) +
                                  " and shares its storage on " + source_device.ToString() + ", not " +
                                  placement[i].ToString() + " as the map says");
        }
      }
    }
  }
  // An alias lives with its source. Disk tensors stay as stored: never cast.
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    PlannedTensor& p = plan.tensors[i];
    p.device = p.alias_of >= 0 ? placement[static_cast<size_t>(p.alias_of)] : placement[i];
    if (p.device.kind == DeviceKind::kDisk) {
      p.dtype = p.source->dtype;
      if (p.alias_of < 0) p.size_bytes = StoredBytes(p);
      if (p.runs > 1) {
        return InvalidArgument("tensor " + QuoteName(p.name) + " is split along dimension " +
                               std::to_string(p.slice->dim) + ", so it cannot stay on disk, where the device map "
                               "put it (a tensor left on disk is one range of its file): give the devices room for "
                               "it, or split it along its outer dimension");
      }
    }
    p.mapped = options.map_host && p.alias_of < 0 && p.device == DeviceId::Cpu() && Mappable(p);
  }
  // An alias may come before its source: the sources are decided first.
  for (PlannedTensor& p : plan.tensors) {
    if (p.alias_of >= 0) p.mapped = plan.tensors[static_cast<size_t>(p.alias_of)].mapped;
  }

  // 5. Offsets inside each device's single reservation.
  std::map<DeviceId, DevicePlan> devices;
  for (PlannedTensor& p : plan.tensors) {
    DevicePlan& d = devices[p.device];
    d.device = p.device;
    ++d.tensor_count;
    if (p.alias_of >= 0 || p.device.kind == DeviceKind::kDisk || p.mapped) continue;
    p.offset_bytes = AlignUp(d.reserve_bytes, kDeviceTensorAlignBytes);
    d.reserve_bytes = p.offset_bytes + p.size_bytes;
  }
  for (PlannedTensor& p : plan.tensors) {
    if (p.alias_of >= 0) p.offset_bytes = plan.tensors[static_cast<size_t>(p.alias_of)].offset_bytes;
  }
  for (auto& [id, d] : devices) plan.devices.push_back(d);
  if (plan.tensors.empty() && !catalog.tensors().empty()) {
    plan.warnings.push_back("none of the checkpoint's " + std::to_string(catalog.tensors().size()) +
                            " tensors is kept (" + Opt("--only") + ", " + Opt("--drop") + " or " + Opt("--expect") + " left out every one)");
  }
  return plan;
}

}  // namespace hoist
