#include "hoist/writer.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "format/safetensors.h"
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

Result<uint64_t> ParseByteCount(const std::string& text) {
  auto not_a_size = [&](const std::string& why) {
    return InvalidArgument(QuoteName(text) + " is not a size" + why + " (examples: 5GB, 500MB, 2GiB)");
  };
  const size_t first = text.find_first_not_of(' ');
  const size_t last = text.find_last_not_of(' ');
  const std::string trimmed = first == std::string::npos ? "" : text.substr(first, last - first + 1);
  size_t i = 0;
  while (i < trimmed.size() && (std::isdigit(static_cast<unsigned char>(trimmed[i])) || trimmed[i] == '.')) ++i;
  const std::string number = trimmed.substr(0, i);
  size_t u = i;  // "1.5 GB": a space may part number and unit
  while (u < trimmed.size() && trimmed[u] == ' ') ++u;
  std::string unit = trimmed.substr(u);
  if (unit.size() == 2 && unit[1] == 'b' && std::strchr("kKmMgGtT", unit[0]) != nullptr) {
    std::string bytes = unit;
    bytes[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(bytes[0])));
    bytes[1] = 'B';
    return not_a_size(": a lowercase b means bits to Hugging Face, bytes to most; write " + number + bytes);
  }
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
  const double value = number.empty() ? -1 : std::strtod(number.c_str(), &end);
  if (scale == 0 || value < 0 || end != number.c_str() + number.size() || value * scale > 9e18) return not_a_size("");
  if (value > 0 && value * scale < 1) return not_a_size(": less than one byte");
  return static_cast<uint64_t>(value * scale);
}

Result<uint64_t> ParseByteSize(const std::string& text) {
  HOIST_ASSIGN_OR_RETURN(uint64_t bytes, ParseByteCount(text));
  if (bytes == 0) return InvalidArgument(QuoteName(text) + " is not a size here: it must be more than 0");
  return bytes;
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
// The files of one write. Each is written under a name of its own beside
// its final one (".hoist-PID-TOKEN-K.partial": short, so any final name
// still fits, and unique across threads, processes and containers sharing a
// directory, O_EXCL making sure). Commit renames them into place, keeping
// the earlier outputs it replaces under names of their own (hard links)
// until every rename is done, so that a rename that fails puts them back.
// A write that never commits removes its files and the directories it made.
class PartialFiles {
 public:
  PartialFiles() : token_(UniqueWriteToken()) {}
  PartialFiles(const PartialFiles&) = delete;
  PartialFiles& operator=(const PartialFiles&) = delete;
  ~PartialFiles() {
    std::error_code ec;
    for (const Entry& e : files_) {
      if (!committed_) fs::remove(e.temp, ec);
      if (!e.backup.empty()) fs::remove(e.backup, ec);
    }
    if (committed_) return;
    // Directories the write made, deepest first, where nothing else is in them.
    for (auto d = created_dirs_.rbegin(); d != created_dirs_.rend(); ++d) fs::remove(*d, ec);
  }

  // Creates `dir` and its missing parents one component at a time,
  // remembering those this call made (a "missing/../kept" path makes
  // "missing" only).
  Status CreateDirectories(const fs::path& dir) {
    fs::path prefix;
    for (const fs::path& part : dir) {
      prefix /= part;
      std::error_code ec;
      const bool made = fs::create_directory(prefix, ec);
      if (ec == std::errc::file_exists || ec == std::errc::not_a_directory) {  // a file where a directory goes
        return InvalidArgument(Printable(prefix.string()) + ": is a file, not a directory; the output is a "
                               ".safetensors file or a directory");
      }
      if (ec) return IoError(Printable(prefix.string()) + ": cannot create directory: " + ec.message());
      if (made) created_dirs_.push_back(prefix);
    }
    return Status::Ok();
  }

  // The start of this write's temporary names.
  std::string prefix() const { return ".hoist-" + token_ + "-"; }

  // The file that becomes `final_path` on Commit, created under its own name.
  Result<File> Create(const std::string& final_path) {
    Entry e;
    e.final = final_path;
    const std::string stem = prefix() + std::to_string(files_.size());
    e.temp = (fs::path(final_path).parent_path() / (stem + ".partial")).string();
    e.keep_as = (fs::path(final_path).parent_path() / (stem + ".old")).string();
    files_.push_back(e);
    return File::CreateNew(e.temp);
  }

  Status Commit() {
    // The earlier outputs, kept until the renames are done. A file system
    // without hard links gives no such copy: a failed rename then leaves
    // the files renamed before it in place.
    for (Entry& e : files_) {
      std::error_code ec;
      e.had_earlier = fs::symlink_status(e.final, ec).type() != fs::file_type::not_found;
      if (e.had_earlier && ::link(e.final.c_str(), e.keep_as.c_str()) == 0) e.backup = e.keep_as;
    }
    for (size_t k = 0; k < files_.size(); ++k) {
      std::error_code ec;
      fs::rename(files_[k].temp, files_[k].final, ec);
      if (!ec) continue;
      bool restored = true;
      for (size_t i = 0; i < k; ++i) {  // back as they were
        std::error_code undo;
        Entry& e = files_[i];
        bool back = false;  // replaced, and nothing kept to put back
        if (!e.had_earlier) {
          back = fs::remove(e.final, undo) && !undo;
        } else if (!e.backup.empty()) {
          fs::rename(e.backup, e.final, undo);
          back = !undo;
          if (back) e.backup.clear();
        }
        restored = restored && back;
      }
      return IoError(Printable(files_[k].final) + ": cannot put the written file in place: " + ec.message() +
                     (restored ? "; the earlier files are as they were"
                               : "; some files written before it replaced earlier ones that could not be kept"));
    }
    committed_ = true;
    return Status::Ok();
  }

  // After Commit: the earlier outputs kept for a failed rename go.
  void DropBackups() {
    for (Entry& e : files_) {
      std::error_code ec;
      if (!e.backup.empty()) fs::remove(e.backup, ec);
      e.backup.clear();
    }
  }

  // After Commit (and whatever the write removes after it): waits until the
  // renames and removals, and the directories this write made, are on the
  // disk. The files are in place by then, whatever happens: a failure is a
  // warning.
  void SyncDirectories(std::vector<std::string>* warnings) const {
    std::set<std::string> dirs;
    for (const Entry& e : files_) dirs.insert(fs::path(e.final).parent_path().string());
    for (const fs::path& d : created_dirs_) dirs.insert(d.parent_path().string());
    // Deepest first: a directory's own entries before its entry in its parent.
    std::vector<std::string> order(dirs.begin(), dirs.end());
    std::stable_sort(order.begin(), order.end(),
                     [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    for (const std::string& d : order) {
      Status s = SyncDirectory(d);
      if (!s.ok()) warnings->push_back(s.message() + "; the files are in place, but a crash now could still lose them");
    }
  }

  // `s`, its message naming the final files rather than the temporary ones.
  Status Explain(Status s) const {
    if (s.ok()) return s;
    std::string message = s.message();
    for (const Entry& e : files_) {
      for (size_t at = message.find(e.temp); at != std::string::npos; at = message.find(e.temp, at + e.final.size())) {
        message.replace(at, e.temp.size(), e.final);
      }
    }
    return Status(s.code(), std::move(message));
  }

 private:
  struct Entry {
    std::string final, temp, keep_as;
    bool had_earlier = false;  // a file was at `final` before the commit
    std::string backup;        // keep_as, once that file is linked there
  };
  std::string token_;
  std::vector<Entry> files_;
  std::vector<fs::path> created_dirs_;  // outermost first
  bool committed_ = false;
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
// Also warns of another write's temporary files (`own_prefix` names this
// write's): left by one that was killed, unless one is running now.
Status RemoveStaleOutputs(const std::string& dir, const std::vector<std::string>& written,
                          const std::vector<std::string>& keep_files, const std::string& own_prefix,
                          WriteResult* result, bool remove_outputs = true) {
  std::vector<std::string>* removed = &result->removed;
  static const std::regex partial(R"(\.hoist-\d+-[0-9a-f]{8}-\d+\.(partial|old))");
  std::error_code ec;
  std::set<std::string> keep;
  std::vector<fs::path> stale;
  for (const std::string& w : written) keep.insert(fs::path(w).filename().string());
  fs::directory_iterator it(dir.empty() ? "." : dir, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const fs::path& path = it->path();
    const std::string name = path.filename().string();
    if (name.rfind(own_prefix, 0) != 0 && std::regex_match(name, partial)) {
      std::error_code size_ec;
      const uintmax_t size = fs::file_size(path, size_ec);
      result->warnings.push_back(Printable(path.string()) + ": " + (size_ec ? std::string("a file") : ByteText(size)) +
                                 " left by a write that was killed (or is running now); remove it if none is");
      continue;
    }
    if (!remove_outputs || !IsOutputName(name) || keep.count(name) > 0) continue;
    bool protected_file = false;
    for (const std::string& k : keep_files) {
      std::error_code eq;
      protected_file = protected_file || fs::equivalent(path, k, eq);
    }
    if (protected_file) continue;
    stale.push_back(path);
  }
  if (ec) return IoError(Printable(dir) + ": cannot list: " + ec.message());
  // The index first: a crash part way must not leave an index naming
  // shards that are gone, to be read in place of the new output.
  std::stable_partition(stale.begin(), stale.end(), [](const fs::path& p) { return p.filename() == kIndexFileName; });
  for (const fs::path& path : stale) {
    std::error_code rm;
    fs::remove(path, rm);
    if (rm) return IoError(Printable(path.string()) + ": cannot remove a stale output file: " + rm.message());
    removed->push_back(path.string());
  }
  return Status::Ok();
}

}  // namespace

Result<WriteResult> WriteCheckpoint(const std::string& dst, const std::vector<OutTensor>& tensors,
                                    const std::map<std::string, std::string>& metadata,
                                    const WriteOptions& options, const FillFn& fill) {
  auto start = std::chrono::steady_clock::now();
  if (options.max_shard_bytes == 0) return InvalidArgument("--max-shard-size must be positive");

  // Cut shards greedily in tensor order, as huggingface_hub's
  // split_torch_state_dict_into_shards does: a tensor larger than a shard
  // gets a shard of its own, listed when it is met, and the open shard goes
  // on filling after it.
  std::vector<std::vector<size_t>> groups;
  std::vector<size_t> open;
  uint64_t current = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t size = tensors[i].size_bytes;
    total += size;
    if (size > options.max_shard_bytes) {
      groups.push_back({i});
      continue;
    }
    if (current + size > options.max_shard_bytes) {
      groups.push_back(std::move(open));
      open.clear();
      current = 0;
    }
    open.push_back(i);
    current += size;
  }
  if (!open.empty() || groups.empty()) groups.push_back(std::move(open));
  // Each tensor at an offset its element size divides, as the reference
  // writer leaves them (it orders by dtype): a shard whose order would
  // leave one unaligned (a cast shrank the tensor before an I64, another
  // writer's file) is ordered by element size, largest first, and is then
  // aligned throughout, the data section starting 8-aligned.
  auto element_bytes = [&](size_t i) { return std::max<uint64_t>(1, static_cast<uint64_t>(DTypeBits(tensors[i].dtype) / 8)); };
  for (std::vector<size_t>& group : groups) {
    uint64_t offset = 0;
    bool aligned = true;
    for (size_t i : group) {
      aligned = aligned && offset % element_bytes(i) == 0;
      offset += tensors[i].size_bytes;
    }
    if (!aligned && options.align_elements) {
      std::stable_sort(group.begin(), group.end(), [&](size_t a, size_t b) { return element_bytes(a) > element_bytes(b); });
    }
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

  WriteResult result;
  // Errors name the final files, not the temporary ones they are written as.
  HOIST_RETURN_IF_ERROR(partial.Explain([&]() -> Status {
    std::vector<File> files;
    std::vector<Piece> pieces;
    for (size_t s = 0; s < groups.size(); ++s) {
      Shard& shard = shards[s];
      shard.tensors = groups[s];
      std::vector<const OutTensor*> members;
      for (size_t i : shard.tensors) members.push_back(&tensors[i]);
      std::string header = BuildHeader(members, metadata);
      if (header.size() > kMaxHeaderBytes) {  // no reader would take it, hoist's and safetensors' included
        return InvalidArgument(Printable(shard.path) + ": its header would be " + std::to_string(header.size()) +
                               " bytes, more than the " + std::to_string(kMaxHeaderBytes) +
                               " a safetensors reader accepts: shorter names, less metadata or smaller shards");
      }
      shard.data_offset_bytes = 8 + header.size();
      HOIST_ASSIGN_OR_RETURN(File file, partial.Create(shard.path));
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
    if (options.sync) {
      const auto sync_start = std::chrono::steady_clock::now();
      HOIST_RETURN_IF_ERROR(ParallelFor(files.size(), threads, [&](size_t s) { return files[s].Sync(); }));
      result.sync_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - sync_start).count();
    }
    for (File& f : files) HOIST_RETURN_IF_ERROR(f.Close());

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
      HOIST_ASSIGN_OR_RETURN(File file, partial.Create(path));
      HOIST_RETURN_IF_ERROR(file.WriteAt(0, text.data(), text.size()));
      if (options.sync) HOIST_RETURN_IF_ERROR(file.Sync());
      HOIST_RETURN_IF_ERROR(file.Close());
      result.files.push_back(path);
    }
    return Status::Ok();
  }()));
  // A cancel that came while the files were synced still leaves the
  // earlier output as it was: nothing is in place yet.
  if (options.cancel != nullptr && options.cancel->load(std::memory_order_relaxed)) {
    return Cancelled("the write to " + Printable(dst) + " was cancelled; nothing was written");
  }
  HOIST_RETURN_IF_ERROR(partial.Commit());
  // A directory's old outputs go; so do those beside a new model.safetensors,
  // where an old index or shards would shadow it.
  Status removed;
  if (!single_file) {
    removed = RemoveStaleOutputs(dir, result.files, options.keep_files, partial.prefix(), &result);
  } else {
    // Beside a new model.safetensors an old index or shards would shadow it:
    // they go. Beside another name only other writes' leftovers are named.
    const bool replaces = fs::path(dst).filename() == "model.safetensors";
    removed = RemoveStaleOutputs(fs::path(dst).parent_path().string(), result.files, options.keep_files,
                                 partial.prefix(), &result, replaces);
  }
  partial.DropBackups();
  // One sync of each directory covers the renames and the removals.
  if (options.sync) {
    const auto sync_start = std::chrono::steady_clock::now();
    partial.SyncDirectories(&result.warnings);
    result.sync_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - sync_start).count();
  }
  HOIST_RETURN_IF_ERROR(removed);
  result.data_bytes = total;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace hoist
