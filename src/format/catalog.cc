#include "hoist/catalog.h"

#include <algorithm>
#include <cassert>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <system_error>
#include <unordered_map>

#include "format/index.h"
#include "format/json_util.h"
#include "format/safetensors.h"
#include "io/file.h"
#include "util/parallel.h"
#include "util/text.h"

namespace hoist {

namespace fs = std::filesystem;

// Bounds the header bytes parsed at once: shards read in parallel must not
// multiply what a hostile header (up to 100 MB of JSON) costs. A header
// larger than the whole budget waits until it can run alone.
class HeaderBudget {
 public:
  explicit HeaderBudget(uint64_t bytes) : capacity_(bytes) {}

  class Lease {
   public:
    Lease(HeaderBudget* budget, uint64_t bytes) : budget_(budget), bytes_(std::min(bytes, budget->capacity_)) {
      std::unique_lock<std::mutex> lock(budget_->mu_);
      budget_->cv_.wait(lock, [&] { return budget_->used_ + bytes_ <= budget_->capacity_; });
      budget_->used_ += bytes_;
    }
    ~Lease() {
      std::lock_guard<std::mutex> lock(budget_->mu_);
      budget_->used_ -= bytes_;
      budget_->cv_.notify_all();
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;

   private:
    HeaderBudget* budget_;
    uint64_t bytes_;
  };

 private:
  const uint64_t capacity_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t used_ = 0;
};

// Assembles a Catalog; the only writer of its fields.
class CatalogBuilder {
 public:
  // Reads the files' headers in parallel (a DeepSeek-V3 checkpoint has 163
  // shards), then adds them in the given order; the error reported is the
  // first file's in that order, and *failed (when given) says which.
  Status AddFiles(const std::vector<std::string>& paths, size_t* failed = nullptr) {
    // Files are handed out in order and a failure stops the handing out, so
    // every file before the first failure has its header (a few after it
    // may have been read too).
    std::vector<std::optional<Result<Header>>> headers(paths.size());
    HeaderBudget budget(kHeaderBudgetBytes);
    int threads = static_cast<int>(std::min<size_t>(paths.size(), kHeaderThreads));
    (void)ParallelFor(paths.size(), threads, [&](size_t i) {
      headers[i] = ReadHeader(paths[i], &budget);
      return headers[i]->status();
    });
    size_t tensors = 0;
    for (const auto& h : headers) tensors += h && h->ok() ? (*h)->parsed.tensors.size() : 0;
    cat_.tensors_.reserve(tensors);
    for (size_t i = 0; i < paths.size(); ++i) {
      assert(headers[i].has_value());  // only files after the first failure can be unread
      Status added = headers[i]->ok() ? Add(paths[i], **std::move(headers[i])) : headers[i]->status();
      if (!added.ok()) {
        if (failed) *failed = i;
        return added;
      }
    }
    return Status::Ok();
  }
  Catalog Finish() { return std::move(cat_); }
  const Catalog& catalog() const { return cat_; }
  void Warn(std::string warning) { cat_.warnings_.push_back(std::move(warning)); }

 private:
  static constexpr size_t kHeaderThreads = 8;
  static constexpr uint64_t kHeaderBudgetBytes = 256ull << 20;
  struct Header {
    uint64_t file_size_bytes = 0;
    ParsedHeader parsed;
  };

  static Result<Header> ReadHeader(const std::string& path, HeaderBudget* budget) {
    HOIST_ASSIGN_OR_RETURN(File file, File::OpenRead(path));
    char prefix[8] = {};
    uint64_t length = 0;  // a file too short or too long fails in ReadSafetensorsHeader
    if (file.size_bytes() >= 8 && file.ReadAt(0, prefix, 8).ok()) {
      for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(prefix[i]);
    }
    HeaderBudget::Lease lease(budget, std::min(length, file.size_bytes()));
    HOIST_ASSIGN_OR_RETURN(ParsedHeader parsed, ReadSafetensorsHeader(file));
    return Header{file.size_bytes(), std::move(parsed)};
  }

  Status Add(const std::string& path, Header header) {
    auto file_index = static_cast<uint32_t>(cat_.files_.size());
    const uint64_t data_offset = header.parsed.data_offset_bytes;
    cat_.files_.push_back({path, header.file_size_bytes, data_offset});
    for (auto& [key, value] : header.parsed.metadata) cat_.metadata_.emplace(key, value);
    for (HeaderTensor& t : header.parsed.tensors) {
      auto [it, inserted] = cat_.index_.emplace(t.name, cat_.tensors_.size());
      if (!inserted) {
        const TensorInfo& first = cat_.tensors_[it->second];
        return Corruption(Printable(path) + ": tensor " + QuoteName(t.name) + " is also in " +
                          Printable(cat_.files_[first.file_index].path) + " (one name in two files)");
      }
      TensorInfo info;
      info.name = std::move(t.name);
      info.dtype = t.dtype;
      info.shape = std::move(t.shape);
      info.file_index = file_index;
      info.offset_bytes = data_offset + t.begin_bytes;
      info.size_bytes = t.end_bytes - t.begin_bytes;
      if (__builtin_add_overflow(cat_.total_bytes_, info.size_bytes, &cat_.total_bytes_)) {
        return Corruption(Printable(path) + ": tensor sizes add up to more than 64 bits");
      }
      cat_.tensors_.push_back(std::move(info));
    }
    return Status::Ok();
  }

  Catalog cat_;
};

const TensorInfo* Catalog::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

constexpr uint64_t kMaxIndexBytes = 256ull << 20;

// A shard name from an index must stay inside the checkpoint directory.
bool IsSafeRelativePath(const std::string& name) {
  if (name.empty() || name.front() == '/') return false;
  fs::path p(name);
  for (const auto& part : p) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

namespace {

// model.safetensors.index.json, read straight from the parser's events: a
// DeepSeek-V3-sized index (90k names) would otherwise become a DOM first.
// As in the header parser, the first wrong value is noted and the parse goes
// on, so the text's own errors are reported first.
class IndexSax : public StrictSax {
 public:
  explicit IndexSax(const std::string& label) : label_(label) {}

  bool null() { return Scalar(); }
  bool boolean(bool) { return Scalar(); }
  bool number_integer(int64_t v) { return v >= 0 ? number_unsigned(static_cast<uint64_t>(v)) : Scalar(); }
  bool number_unsigned(uint64_t v) {
    if (Top() == Frame::kMetadata && in_total_size_) {
      out_.total_size = v;
      return true;
    }
    return Scalar();
  }
  bool number_float(double v, const std::string&) {
    // 1.6e10 written as a float (some writers do) is still a byte count.
    if (Top() == Frame::kMetadata && in_total_size_ && v >= 0 && v < 1.8e19 &&
        static_cast<double>(static_cast<uint64_t>(v)) == v) {
      out_.total_size = static_cast<uint64_t>(v);
      return true;
    }
    return Scalar();
  }
  bool binary(nlohmann::json::binary_t&) { return Scalar(); }
  bool string(std::string& s) {
    if (Top() != Frame::kWeightMap) return Scalar();
    if (!IsSafeRelativePath(s)) {
      Problem(label_ + ": weight_map sends " + QuoteName(out_.weight_map.back().first) + " to " + QuoteName(s) +
              ", which is not a file inside the checkpoint directory");
      return true;
    }
    auto [it, added] = shard_ids_.emplace(std::move(s), static_cast<uint32_t>(shard_ids_.size()));
    out_.weight_map.back().second = it->second;
    return true;
  }
  bool start_object(std::size_t) { return Enter() && Open(/*is_object=*/true); }
  bool start_array(std::size_t) { return Enter() && Open(/*is_object=*/false); }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }
  bool key(std::string& k) {
    switch (Top()) {
      case Frame::kWeightMap:
        out_.weight_map.emplace_back(std::move(k), 0);  // repeats: after the parse
        return true;
      case Frame::kMetadata:
        in_total_size_ = k == "total_size";
        break;
      case Frame::kRoot:
        next_ = k == "weight_map" ? Frame::kWeightMap : k == "metadata" ? Frame::kMetadata : Frame::kSkip;
        break;
      default:
        break;
    }
    if (!keys_.back().Insert(k)) return Repeated(k);
    return true;
  }

  // The parse went through: the index, or what is wrong with it.
  Result<ParsedIndex> Finish() {
    if (!root_is_object_) return Corruption(label_ + ": not a JSON object");
    size_t repeat = FirstRepeatedName(out_.weight_map.size(),
                                      [&](size_t i) { return std::string_view(out_.weight_map[i].first); });
    if (repeat < out_.weight_map.size()) {
      return RepeatedKeyError(label_, out_.weight_map[repeat].first);
    }
    if (!has_weight_map_) return Corruption(label_ + ": no \"weight_map\" object");
    if (!problem_.ok()) return problem_;
    // Shards sorted by name, and the map's positions with them.
    std::vector<uint32_t> position(shard_ids_.size());
    for (auto& [name, id] : shard_ids_) out_.shards.push_back(name);
    std::sort(out_.shards.begin(), out_.shards.end());
    for (uint32_t i = 0; i < out_.shards.size(); ++i) position[shard_ids_[out_.shards[i]]] = i;
    for (auto& entry : out_.weight_map) entry.second = position[entry.second];
    return std::move(out_);
  }

 private:
  enum class Frame : uint8_t { kNone, kRoot, kWeightMap, kMetadata, kSkip };

  Frame Top() const { return stack_.empty() ? Frame::kNone : stack_.back(); }
  void Problem(std::string message) {
    if (problem_.ok()) problem_ = Corruption(std::move(message));
  }
  // A value the frame above does not take.
  bool Scalar() {
    if (Top() == Frame::kWeightMap) {
      Problem(label_ + ": weight_map entry for " + QuoteName(out_.weight_map.back().first) + " is not a file name");
    } else if (Top() == Frame::kMetadata && in_total_size_) {
      Problem(label_ + ": metadata.total_size is not a non-negative integer");
    }
    return true;
  }
  bool Open(bool is_object) {
    Frame next = Frame::kSkip;
    if (Top() == Frame::kNone) {
      root_is_object_ = is_object;
      if (is_object) next = Frame::kRoot;
    } else if (Top() == Frame::kRoot && is_object && next_ != Frame::kSkip) {
      next = next_;
      if (next == Frame::kWeightMap) has_weight_map_ = true;
    } else {
      Scalar();
    }
    stack_.push_back(next);
    keys_.emplace_back();
    return true;
  }
  bool Close() {
    Leave();
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }

  const std::string& label_;
  std::vector<Frame> stack_;
  std::vector<KeySet> keys_;  // one per open container; the weight map's names are checked after
  Frame next_ = Frame::kSkip;  // what the root's current key leads to
  bool in_total_size_ = false;
  bool root_is_object_ = false;
  bool has_weight_map_ = false;
  std::unordered_map<std::string, uint32_t> shard_ids_;  // in order of first mention
  ParsedIndex out_;
  Status problem_;
};

}  // namespace

Result<ParsedIndex> ParseIndexJson(const std::string& label, std::string_view text) {
  IndexSax sax(label);
  HOIST_RETURN_IF_ERROR(ParseJsonSaxStrict(label, text, &sax));
  return sax.Finish();
}

namespace {

// Elements in all tensors; nullopt when the count overflows 64 bits.
std::optional<uint64_t> TotalElements(const Catalog& cat) {
  uint64_t total = 0;
  for (const TensorInfo& t : cat.tensors()) {
    const std::optional<uint64_t> n = ElementCount(t.shape);
    if (!n || __builtin_add_overflow(total, *n, &total)) return std::nullopt;
  }
  return total;
}

// `strays`: the directory's other .safetensors files, which the index
// leaves out; a warning names them.
Result<Catalog> OpenIndexed(const fs::path& dir, const std::string& index_path, std::vector<std::string> strays = {}) {
  HOIST_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path, kMaxIndexBytes));
  HOIST_ASSIGN_OR_RETURN(ParsedIndex index, ParseIndexJson(Printable(index_path), text));
  std::vector<std::string> paths;
  for (const std::string& shard : index.shards) paths.push_back((dir / shard).string());
  CatalogBuilder builder;
  std::erase_if(strays, [&](const std::string& name) {
    return std::find(index.shards.begin(), index.shards.end(), name) != index.shards.end();
  });
  if (!strays.empty()) {
    std::sort(strays.begin(), strays.end());
    builder.Warn(Printable(index_path) + ": does not list " + SomeNames(strays) + " of its directory; " +
                 (strays.size() == 1 ? "that file is" : "those files are") + " not read");
  }
  size_t failed = 0;
  Status added = builder.AddFiles(paths, &failed);
  if (!added.ok() && added.code() == StatusCode::kNotFound) {
    return NotFound(Printable(index_path) + ": shard " + QuoteName(index.shards[failed]) + " does not exist");
  }
  HOIST_RETURN_IF_ERROR(added);

  // Shard i of the index is file i of the catalogue. Match every name the
  // index lists to its tensor, then judge in the catalogue's order.
  const Catalog& cat = builder.catalog();
  const std::vector<TensorInfo>& tensors = cat.tensors();
  constexpr size_t kUnlisted = SIZE_MAX;
  std::vector<size_t> listed_as(tensors.size(), kUnlisted);  // tensor -> its weight_map entry
  size_t first_absent = kUnlisted;
  for (size_t e = 0; e < index.weight_map.size(); ++e) {
    const TensorInfo* t = cat.Find(index.weight_map[e].first);
    if (t == nullptr) {
      first_absent = std::min(first_absent, e);
    } else {
      listed_as[static_cast<size_t>(t - tensors.data())] = e;
    }
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    const std::string& file = cat.files()[t.file_index].path;
    if (listed_as[i] == kUnlisted) {
      return Corruption(Printable(file) + ": tensor " + QuoteName(t.name) + " is in this shard but not in " +
                        Printable(index_path));
    }
    uint32_t shard = index.weight_map[listed_as[i]].second;
    if (shard != t.file_index) {
      return Corruption(Printable(index_path) + ": tensor " + QuoteName(t.name) + " is listed in " +
                        QuoteName(index.shards[shard]) + " but found in " + Printable(file));
    }
  }
  if (first_absent != kUnlisted) {
    const auto& [name, shard] = index.weight_map[first_absent];
    return Corruption(Printable(index_path) + ": tensor " + QuoteName(name) + " is listed in " +
                      QuoteName(index.shards[shard]) + " but that shard does not contain it");
  }
  if (index.total_size && *index.total_size != cat.total_bytes()) {
    const std::optional<uint64_t> elements = TotalElements(cat);
    const bool quantized = std::any_of(cat.tensors().begin(), cat.tensors().end(),
                                       [](const TensorInfo& t) { return IsNarrowFloat(t.dtype); });
    if (quantized && elements && *index.total_size % 2 == 0 && *index.total_size / 2 == *elements) {
      builder.Warn(Printable(index_path) + ": metadata.total_size says " + std::to_string(*index.total_size) +
                   " bytes, the model's size at 2 bytes per element, but the shards hold " +
                   std::to_string(cat.total_bytes()) + " bytes of tensors (an FP8 release's index keeps its 16-bit size); ignored");
      return builder.Finish();
    }
    return Corruption(Printable(index_path) + ": metadata.total_size says " + std::to_string(*index.total_size) +
                      " bytes but the shards hold " + std::to_string(cat.total_bytes()) + " bytes of tensors");
  }
  return builder.Finish();
}

// Without an index, shards named as Hugging Face names them
// (PREFIX-00002-of-00003.safetensors) must all be there: a download or copy
// that stopped early would otherwise load as a smaller model. `names` are
// the readable .safetensors files' names; an error names what is missing.
Status CheckShardSets(const fs::path& dir, const std::vector<std::string>& names) {
  static const std::regex kShard(R"((.*)-(\d{5})-of-(\d{5})\.safetensors)");
  std::map<std::pair<std::string, int>, std::set<int>> sets;  // (prefix, count) -> numbers present
  for (const std::string& name : names) {
    std::smatch m;
    if (std::regex_match(name, m, kShard)) sets[{m[1].str(), std::stoi(m[3].str())}].insert(std::stoi(m[2].str()));
  }
  for (const auto& [key, present] : sets) {
    const std::string& prefix = key.first;  // not structured bindings: clang 14 cannot capture those
    const int count = key.second;
    auto shard_name = [&](int k) {
      char number[48];
      std::snprintf(number, sizeof number, "-%05d-of-%05d.safetensors", k, count);
      return prefix + number;
    };
    std::vector<std::string> missing;
    for (int k = 1; k <= count; ++k) {
      if (present.count(k) == 0) missing.push_back(shard_name(k));
    }
    if (!missing.empty()) {
      const bool one = missing.size() == 1;
      return NotFound(Printable(dir.string()) + ": " + (one ? "shard " : std::to_string(missing.size()) + " shards ") +
                      SomeNames(missing) + " of " + std::to_string(count) + (one ? " is" : " are") +
                      " missing or unreadable, and there is no " + kIndexFileName + ": an interrupted download or copy?");
    }
  }
  return Status::Ok();
}

Result<Catalog> OpenDirectory(const fs::path& dir) {
  std::error_code ec;
  std::vector<std::string> files;
  std::vector<std::string> unreadable;  // .safetensors entries that are not regular files, and why
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& p = it->path();
    if (p.extension() != ".safetensors") continue;
    std::error_code type_ec;
    if (it->is_regular_file(type_ec)) {
      files.push_back(p.string());
    } else if (it->is_symlink(type_ec) && !fs::exists(it->status(type_ec))) {
      unreadable.push_back(QuoteName(p.filename().string()) + " (a link to nothing: an interrupted download?)");
    } else {
      unreadable.push_back(QuoteName(p.filename().string()) + " (not a regular file)");
    }
  }
  if (ec) return IoError(Printable(dir.string()) + ": cannot list directory: " + ec.message());
  std::string index_path = (dir / kIndexFileName).string();
  const std::string single = (dir / "model.safetensors").string();
  const bool has_single = std::find(files.begin(), files.end(), single) != files.end();
  const bool has_index = fs::exists(index_path, ec);
  if (has_single && (has_index || files.size() > 1)) {
    // transformers' from_pretrained reads model.safetensors, and nothing
    // else, when it is there: so does hoist, to load the same weights.
    std::vector<std::string> others;
    if (has_index) others.push_back(kIndexFileName);
    for (const std::string& f : files) {
      if (f != single) others.push_back(fs::path(f).filename().string());
    }
    std::sort(others.begin(), others.end());
    CatalogBuilder builder;
    builder.Warn(Printable(dir.string()) + ": model.safetensors is read, as transformers reads it, and " +
                 SomeNames(others) + " beside it " + (others.size() == 1 ? "is" : "are") + " not");
    HOIST_RETURN_IF_ERROR(builder.AddFiles({single}));
    return builder.Finish();
  }
  if (has_index) {
    std::vector<std::string> names;
    for (const std::string& f : files) names.push_back(fs::path(f).filename().string());
    return OpenIndexed(dir, index_path, std::move(names));
  }
  if (files.empty()) {
    std::sort(unreadable.begin(), unreadable.end());
    std::string seen;
    for (size_t i = 0; i < unreadable.size() && i < 3; ++i) seen += (i ? ", " : "") + unreadable[i];
    if (unreadable.size() > 3) seen += ", ...";
    return NotFound(Printable(dir.string()) + ": no .safetensors files" +
                    (unreadable.empty() ? std::string() : " that can be read (" + seen + ")") + " and no " +
                    kIndexFileName);
  }
  std::sort(files.begin(), files.end());
  {
    std::vector<std::string> names;
    for (const std::string& f : files) names.push_back(fs::path(f).filename().string());
    HOIST_RETURN_IF_ERROR(CheckShardSets(dir, names));
  }
  CatalogBuilder builder;
  HOIST_RETURN_IF_ERROR(builder.AddFiles(files));
  return builder.Finish();
}

}  // namespace

Result<Catalog> OpenCatalog(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec == std::errc::not_a_directory) {  // "model.safetensors/": a file where the path wants a directory
    return NotFound(Printable(path) + ": not a directory (a file stands where the path goes on past it)");
  }
  if (ec && ec != std::errc::no_such_file_or_directory) return IoError(Printable(path) + ": " + ec.message());
  if (ec || !fs::exists(st)) return NotFound(Printable(path) + ": no such file or directory");
  if (fs::is_directory(st)) return OpenDirectory(path);
  if (EndsWith(path, ".safetensors.index.json")) {  // an index names its shards: open them
    fs::path dir = fs::path(path).parent_path();
    return OpenIndexed(dir.empty() ? fs::path(".") : dir, path);
  }
  CatalogBuilder builder;
  HOIST_RETURN_IF_ERROR(builder.AddFiles({path}));
  return builder.Finish();
}

}  // namespace hoist
