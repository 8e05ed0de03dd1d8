#include "hoist/writer.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <unistd.h>
#include <filesystem>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "hoist/catalog.h"
#include "hoist/loader.h"
#include "io/file.h"
#include "util/parallel.h"
#include "util/text.h"

namespace hoist {

namespace fs = std::filesystem;

std::string BuildHeader(const std::vector<const OutTensor*>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  // The entries go in as a list: ordered_json's operator[] looks for the key
  // first, one by one, which made a 100,000-tensor header take 30 s to build.
  // The names are unique already (a catalogue's, or an architecture's).
  std::vector<std::pair<const std::string, nlohmann::ordered_json>> entries;
  entries.reserve(tensors.size() + 1);
  if (!metadata.empty()) entries.emplace_back("__metadata__", metadata);
  uint64_t offset = 0;
  for (const OutTensor* t : tensors) {
    entries.emplace_back(t->name, nlohmann::ordered_json{{"dtype", std::string(DTypeName(t->dtype))},
                                                         {"shape", t->shape},
                                                         {"data_offsets", {offset, offset + t->size_bytes}}});
    offset += t->size_bytes;
  }
  const nlohmann::ordered_json header(
      nlohmann::ordered_json::object_t(std::make_move_iterator(entries.begin()), std::make_move_iterator(entries.end())));
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  return text;
}

Result<uint64_t> ParseByteSize(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  std::string number = text.substr(0, i), unit = text.substr(i);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "KB") scale = 1e3;
  else if (unit == "MB") scale = 1e6;
  else if (unit == "GB") scale = 1e9;
  else if (unit == "TB") scale = 1e12;
  else if (unit == "KIB") scale = 1024.0;
  else if (unit == "MIB") scale = 1024.0 * 1024;
  else if (unit == "GIB") scale = 1024.0 * 1024 * 1024;
  else if (unit == "TIB") scale = 1024.0 * 1024 * 1024 * 1024;
  char* end = nullptr;
  double value = number.empty() ? -1 : std::strtod(number.c_str(), &end);
  if (scale == 0 || value <= 0 || end != number.c_str() + number.size() || value * scale > 9e18) {
    return InvalidArgument(QuoteName(text) + " is not a size (examples: 5GB, 500MB, 2GiB)");
  }
  return static_cast<uint64_t>(value * scale);
}

namespace {

struct Shard {
  std::string path;
  std::vector<size_t> tensors;
  uint64_t data_offset_bytes = 0;  // 8 + header
  uint64_t data_bytes = 0;
};

struct Piece {
  size_t shard;
  size_t tensor;
  uint64_t tensor_offset_bytes;
  uint64_t file_offset_bytes;
  uint64_t size_bytes;
};

}  // namespace

namespace {
// The files of a write, under temporary names until Commit renames them
// into place; removed if it never does.
class PartialFiles {
 public:
  PartialFiles() = default;
  PartialFiles(const PartialFiles&) = delete;
  PartialFiles& operator=(const PartialFiles&) = delete;
  ~PartialFiles() {
    if (committed_ == temps_.size() && !temps_.empty()) return;
    std::error_code ec;
    for (size_t i = committed_; i < temps_.size(); ++i) fs::remove(temps_[i], ec);
    // Directories the write made, deepest first, where nothing else is in them.
    for (const fs::path& d : created_dirs_) fs::remove(d, ec);
  }
  // Creates `dir` and its missing parents, remembering those it made.
  Status CreateDirectories(const fs::path& dir) {
    std::error_code ec;
    std::vector<fs::path> missing;
    for (fs::path d = dir; !d.empty() && !fs::exists(d, ec); d = d.parent_path()) {
      missing.push_back(d);
      if (d == d.parent_path()) break;
    }
    fs::create_directories(dir, ec);
    for (const fs::path& d : missing) {
      if (fs::is_directory(d)) created_dirs_.push_back(d);
    }
    if (ec) return IoError(Printable(dir.string()) + ": cannot create directory: " + ec.message());
    return Status::Ok();
  }
  // The temporary name `final_path` is written under.
  const std::string& Add(const std::string& final_path) {
    const fs::path p(final_path);
    finals_.push_back(final_path);
    temps_.push_back((p.parent_path() / ("." + p.filename().string() + ".hoist-" + std::to_string(::getpid()) +
                                         ".partial")).string());
    return temps_.back();
  }
  Status Commit() {
    for (; committed_ < temps_.size(); ++committed_) {
      std::error_code ec;
      fs::rename(temps_[committed_], finals_[committed_], ec);
      if (ec) return IoError(Printable(finals_[committed_]) + ": cannot put the written file in place: " + ec.message());
    }
    return Status::Ok();
  }

 private:
  std::vector<std::string> temps_, finals_;
  std::vector<fs::path> created_dirs_;
  size_t committed_ = 0;
};

// A name hoist's directory output uses: model.safetensors, the index, or a
// shard model-NNNNN-of-NNNNN.safetensors.
bool IsOutputName(const std::string& name) {
  if (name == "model.safetensors" || name == kIndexFileName) return true;
  static const std::regex shard(R"(model-\d{5}-of-\d{5}\.safetensors)");
  return std::regex_match(name, shard);
}

// Removes what an earlier write left in `dir` under an output name and this
// one did not write: a stale index would otherwise still be read in place of
// a new single file, and a stale model.safetensors in place of new shards
// (transformers looks for it first), as Hugging Face's save_pretrained
// cleans up too. Other files are left alone.
Status RemoveStaleOutputs(const std::string& dir, const std::vector<std::string>& written,
                          const std::vector<std::string>& keep_files, std::vector<std::string>* removed) {
  std::error_code ec;
  std::set<std::string> keep;
  for (const std::string& w : written) keep.insert(fs::path(w).filename().string());
  fs::directory_iterator it(dir.empty() ? "." : dir, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const fs::path& path = it->path();
    if (!IsOutputName(path.filename().string()) || keep.count(path.filename().string()) > 0) continue;
    bool protected_file = false;
    for (const std::string& k : keep_files) {
      std::error_code eq;
      protected_file = protected_file || fs::equivalent(path, k, eq);
    }
    if (protected_file) continue;
    std::error_code rm;
    fs::remove(path, rm);
    if (rm) return IoError(Printable(path.string()) + ": cannot remove a stale output file: " + rm.message());
    removed->push_back(path.string());
  }
  if (ec) return IoError(Printable(dir) + ": cannot list: " + ec.message());
  return Status::Ok();
}

}  // namespace

Result<WriteResult> WriteCheckpoint(const std::string& dst, const std::vector<OutTensor>& tensors,
                                    const std::map<std::string, std::string>& metadata,
                                    const WriteOptions& options, const FillFn& fill) {
  auto start = std::chrono::steady_clock::now();
  if (options.max_shard_bytes == 0) return InvalidArgument("--max-shard-size must be positive");

  // Cut shards greedily in tensor order.
  std::vector<std::vector<size_t>> groups(1);
  uint64_t current = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    uint64_t size = tensors[i].size_bytes;
    if (!groups.back().empty() && current + size > options.max_shard_bytes) {
      groups.emplace_back();
      current = 0;
    }
    groups.back().push_back(i);
    current += size;
    total += size;
  }

  std::vector<Shard> shards(groups.size());
  std::string dir;
  bool single_file = groups.size() == 1 && EndsWith(dst, ".safetensors");
  PartialFiles partial;  // declared before the files: they close first
  if (single_file) {
    shards[0].path = dst;
    fs::path parent = fs::path(dst).parent_path();
    if (!parent.empty()) HOIST_RETURN_IF_ERROR(partial.CreateDirectories(parent));
  } else {
    if (EndsWith(dst, ".safetensors")) {
      return InvalidArgument(dst + ": the output needs " + std::to_string(groups.size()) +
                             " shards; give a directory instead of a .safetensors file");
    }
    dir = dst;
    HOIST_RETURN_IF_ERROR(partial.CreateDirectories(dir));
    for (size_t s = 0; s < groups.size(); ++s) {
      char name[64];
      if (groups.size() == 1) {
        std::snprintf(name, sizeof name, "model.safetensors");
      } else {
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, groups.size());
      }
      shards[s].path = (fs::path(dir) / name).string();
    }
  }

  std::vector<File> files;
  std::vector<Piece> pieces;
  for (size_t s = 0; s < groups.size(); ++s) {
    Shard& shard = shards[s];
    shard.tensors = groups[s];
    std::vector<const OutTensor*> members;
    for (size_t i : shard.tensors) members.push_back(&tensors[i]);
    std::string header = BuildHeader(members, metadata);
    shard.data_offset_bytes = 8 + header.size();
    HOIST_ASSIGN_OR_RETURN(File file, File::Create(partial.Add(shard.path)));
    unsigned char length[8];
    for (int b = 0; b < 8; ++b) length[b] = static_cast<unsigned char>(header.size() >> (8 * b));
    HOIST_RETURN_IF_ERROR(file.WriteAt(0, length, 8));
    HOIST_RETURN_IF_ERROR(file.WriteAt(8, header.data(), header.size()));
    uint64_t offset = shard.data_offset_bytes;
    for (size_t i : shard.tensors) {
      uint64_t size = tensors[i].size_bytes;
      for (uint64_t done = 0; done < size && !options.sparse; done += options.piece_bytes) {
        pieces.push_back({s, i, done, offset + done, std::min(options.piece_bytes, size - done)});
      }
      offset += size;
      shard.data_bytes += size;
    }
    HOIST_RETURN_IF_ERROR(file.Truncate(offset));
    files.push_back(std::move(file));
  }

  int threads = options.threads > 0 ? options.threads : DefaultReadThreads();
  HOIST_RETURN_IF_ERROR(ParallelFor(pieces.size(), threads, [&](size_t k) -> Status {
    thread_local std::vector<unsigned char> buffer;
    if (options.cancel != nullptr && options.cancel->load(std::memory_order_relaxed)) {
      return Cancelled("the write to " + Printable(dst) + " was cancelled; nothing was written");
    }
    const Piece& p = pieces[k];
    buffer.resize(p.size_bytes);
    HOIST_RETURN_IF_ERROR(fill(p.tensor, p.tensor_offset_bytes, p.size_bytes, buffer.data()));
    return files[p.shard].WriteAt(p.file_offset_bytes, buffer.data(), p.size_bytes);
  }));
  for (File& f : files) HOIST_RETURN_IF_ERROR(f.Close());

  WriteResult result;
  for (const Shard& s : shards) result.files.push_back(s.path);
  if (!single_file && shards.size() > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", options.index_total_size.value_or(total)}};
    std::map<std::string, std::string> weight_map;
    for (const Shard& s : shards) {
      for (size_t i : s.tensors) weight_map[tensors[i].name] = fs::path(s.path).filename().string();
    }
    index["weight_map"] = weight_map;
    std::string text = index.dump(2) + "\n";
    std::string path = (fs::path(dir) / kIndexFileName).string();
    HOIST_ASSIGN_OR_RETURN(File file, File::Create(partial.Add(path)));
    HOIST_RETURN_IF_ERROR(file.WriteAt(0, text.data(), text.size()));
    HOIST_RETURN_IF_ERROR(file.Close());
    result.files.push_back(path);
  }
  HOIST_RETURN_IF_ERROR(partial.Commit());
  // A directory's old outputs go; so do those beside a new model.safetensors,
  // where an old index or shards would shadow it.
  if (!single_file) {
    HOIST_RETURN_IF_ERROR(RemoveStaleOutputs(dir, result.files, options.keep_files, &result.removed));
  } else if (fs::path(dst).filename() == "model.safetensors") {
    HOIST_RETURN_IF_ERROR(
        RemoveStaleOutputs(fs::path(dst).parent_path().string(), result.files, options.keep_files, &result.removed));
  }
  result.data_bytes = total;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace hoist
