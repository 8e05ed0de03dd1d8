#include "hoist/catalog.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <system_error>

#include "format/index.h"
#include "format/json_util.h"
#include "format/safetensors.h"
#include "io/file.h"
#include "util/text.h"

namespace hoist {

namespace fs = std::filesystem;

// Assembles a Catalog one file at a time; the only writer of its fields.
class CatalogBuilder {
 public:
  Status AddFile(const std::string& path) {
    HOIST_ASSIGN_OR_RETURN(File file, File::OpenRead(path));
    HOIST_ASSIGN_OR_RETURN(ParsedHeader header, ReadSafetensorsHeader(file));
    auto file_index = static_cast<uint32_t>(cat_.files_.size());
    cat_.files_.push_back({path, file.size_bytes(), header.data_offset_bytes});
    for (auto& [key, value] : header.metadata) cat_.metadata_.emplace(key, value);
    for (HeaderTensor& t : header.tensors) {
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
      info.offset_bytes = header.data_offset_bytes + t.begin_bytes;
      info.size_bytes = t.end_bytes - t.begin_bytes;
      if (__builtin_add_overflow(cat_.total_bytes_, info.size_bytes, &cat_.total_bytes_)) {
        return Corruption(Printable(path) + ": tensor sizes add up to more than 64 bits");
      }
      cat_.tensors_.push_back(std::move(info));
    }
    return Status::Ok();
  }
  Catalog Finish() { return std::move(cat_); }
  const Catalog& catalog() const { return cat_; }

 private:
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

Result<ParsedIndex> ParseIndexJson(const std::string& label, std::string_view text) {
  HOIST_ASSIGN_OR_RETURN(nlohmann::json doc, ParseJsonStrict(label, text));
  if (!doc.is_object()) return Corruption(label + ": not a JSON object");
  auto wm = doc.find("weight_map");
  if (wm == doc.end() || !wm->is_object()) return Corruption(label + ": no \"weight_map\" object");
  ParsedIndex out;
  std::set<std::string> seen;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it->is_string()) {
      return Corruption(label + ": weight_map entry for " + QuoteName(it.key()) + " is not a file name");
    }
    const std::string& shard = it->get_ref<const std::string&>();
    if (!IsSafeRelativePath(shard)) {
      return Corruption(label + ": weight_map sends " + QuoteName(it.key()) + " to " + QuoteName(shard) +
                        ", which is not a file inside the checkpoint directory");
    }
    if (seen.insert(shard).second) out.shards.push_back(shard);
    out.shard_of.emplace(it.key(), shard);
  }
  std::sort(out.shards.begin(), out.shards.end());
  auto meta = doc.find("metadata");
  if (meta != doc.end() && meta->is_object()) {
    auto ts = meta->find("total_size");
    if (ts != meta->end()) {
      bool integral = ts->is_number_unsigned() || (ts->is_number_integer() && ts->get<int64_t>() >= 0);
      uint64_t total = integral ? ts->get<uint64_t>() : 0;
      // 1.6e10 written as a float (some writers do) is still a byte count.
      if (!integral && ts->is_number_float() && ts->get<double>() >= 0 && ts->get<double>() < 1.8e19 &&
          static_cast<double>(static_cast<uint64_t>(ts->get<double>())) == ts->get<double>()) {
        total = static_cast<uint64_t>(ts->get<double>());
        integral = true;
      }
      if (!integral) return Corruption(label + ": metadata.total_size is not a non-negative integer");
      out.total_size = total;
    }
  }
  return out;
}

namespace {

Result<Catalog> OpenIndexed(const fs::path& dir, const std::string& index_path) {
  HOIST_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path, kMaxIndexBytes));
  HOIST_ASSIGN_OR_RETURN(ParsedIndex index, ParseIndexJson(Printable(index_path), text));
  const std::vector<std::string>& shards = index.shards;
  const std::map<std::string, std::string>& shard_of = index.shard_of;
  CatalogBuilder builder;
  for (const std::string& shard : shards) {
    std::string path = (dir / shard).string();
    Status added = builder.AddFile(path);
    if (!added.ok() && added.code() == StatusCode::kNotFound) {
      return NotFound(Printable(index_path) + ": shard " + QuoteName(shard) + " does not exist");
    }
    HOIST_RETURN_IF_ERROR(added);
  }
  const Catalog& cat = builder.catalog();
  for (const TensorInfo& t : cat.tensors()) {
    const std::string& file = cat.files()[t.file_index].path;
    auto it = shard_of.find(t.name);
    if (it == shard_of.end()) {
      return Corruption(Printable(file) + ": tensor " + QuoteName(t.name) + " is in this shard but not in " + Printable(index_path));
    }
    if ((dir / it->second).string() != file) {
      return Corruption(Printable(index_path) + ": tensor " + QuoteName(t.name) + " is listed in " + QuoteName(it->second) +
                        " but found in " + Printable(file));
    }
  }
  for (const auto& [name, shard] : shard_of) {
    if (cat.Find(name) == nullptr) {
      return Corruption(Printable(index_path) + ": tensor " + QuoteName(name) + " is listed in " + QuoteName(shard) +
                        " but that shard does not contain it");
    }
  }
  if (index.total_size && *index.total_size != cat.total_bytes()) {
    return Corruption(Printable(index_path) + ": metadata.total_size says " + std::to_string(*index.total_size) +
                      " bytes but the shards hold " + std::to_string(cat.total_bytes()) + " bytes of tensors");
  }
  return builder.Finish();
}

Result<Catalog> OpenDirectory(const fs::path& dir) {
  std::error_code ec;
  std::string index_path = (dir / kIndexFileName).string();
  if (fs::exists(index_path, ec)) return OpenIndexed(dir, index_path);
  std::vector<std::string> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& p = it->path();
    if (p.extension() == ".safetensors" && it->is_regular_file(ec)) files.push_back(p.string());
  }
  if (ec) return IoError(Printable(dir.string()) + ": cannot list directory: " + ec.message());
  if (files.empty()) return NotFound(Printable(dir.string()) + ": no .safetensors files and no " + kIndexFileName);
  std::sort(files.begin(), files.end());
  CatalogBuilder builder;
  for (const std::string& f : files) HOIST_RETURN_IF_ERROR(builder.AddFile(f));
  return builder.Finish();
}

}  // namespace

Result<Catalog> OpenCatalog(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) return IoError(Printable(path) + ": " + ec.message());
  if (ec || !fs::exists(st)) return NotFound(Printable(path) + ": no such file or directory");
  if (fs::is_directory(st)) return OpenDirectory(path);
  CatalogBuilder builder;
  HOIST_RETURN_IF_ERROR(builder.AddFile(path));
  return builder.Finish();
}

}  // namespace hoist
