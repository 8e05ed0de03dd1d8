#include "io/hub_cache.h"

#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <regex>
#include <sstream>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/file.h"
#include "util/text.h"

namespace hoist {
namespace {

namespace fs = std::filesystem;

std::optional<std::string> Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::nullopt : std::optional<std::string>(v);
}

// Python's os.path.expandvars: $NAME and ${NAME} of variables that are set;
// the rest is left as it is.
std::string ExpandVars(const std::string& text) {
  static const std::regex kVar(R"(\$(\w+|\{[^}]*\}))");
  std::string out;
  auto last = text.cbegin();
  for (std::sregex_iterator it(text.begin(), text.end(), kVar), end; it != end; ++it) {
    std::string name = (*it)[1].str();
    if (name.front() == '{') name = name.substr(1, name.size() - 2);
    out.append(last, text.cbegin() + it->position());
    const std::optional<std::string> value = Env(name.c_str());
    out += value ? *value : it->str();
    last = text.cbegin() + it->position() + it->length();
  }
  out.append(last, text.cend());
  return out;
}

// Python's os.path.expanduser: "~" and "~/..." ($HOME, else the password
// database), and "~user" and "~user/..." (the password database); a user
// it does not know is left as written.
std::string ExpandUser(const std::string& path) {
  if (path.empty() || path.front() != '~') return path;
  const size_t slash = std::min(path.find('/'), path.size());
  std::optional<std::string> home;
  if (slash == 1) {
    home = Env("HOME");
    if (!home) {
      const struct passwd* pw = ::getpwuid(::getuid());
      if (pw == nullptr || pw->pw_dir == nullptr) return path;
      home = pw->pw_dir;
    }
  } else {
    const struct passwd* pw = ::getpwnam(path.substr(1, slash - 1).c_str());
    if (pw == nullptr || pw->pw_dir == nullptr) return path;
    home = pw->pw_dir;
  }
  // Python strips the home's trailing slash, keeping "/" for the root.
  while (home->size() > 1 && home->back() == '/') home->pop_back();
  const std::string out = (*home == "/" ? "" : *home) + path.substr(slash);
  return out.empty() ? "/" : out;
}

// Python's os.path.join of two parts.
std::string Join(const std::string& a, const std::string& b) {
  if (a.empty() || (!b.empty() && b.front() == '/')) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

// huggingface_hub's validate_repo_id: "name" or "namespace/name", each
// part 1-96 ASCII word characters, '-' or '.', starting and ending with a
// word character; no "--" or ".."; not ending in ".git".
bool IsRepoId(const std::string& id) {
  static const std::regex kShape(R"(^(\w(?:[\w.-]{0,94}\w)?/)?\w(?:[\w.-]{0,94}\w)?$)");
  return std::regex_match(id, kShape) && id.find("--") == std::string::npos &&
         id.find("..") == std::string::npos && !EndsWith(id, ".git");
}

// A revision names refs/REVISION: relative, and never climbing out of refs/.
bool IsSafeRevision(const std::string& revision) {
  if (revision.empty() || revision.front() == '/') return false;
  std::istringstream parts(revision);
  for (std::string part; std::getline(parts, part, '/');) {
    if (part == "..") return false;
  }
  return true;
}

// A snapshot's name: one path component.
bool IsOneName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

// The weight files that huggingface_hub's listing of the commit
// (trees/COMMIT.json, written by snapshot_download) names and the snapshot
// lacks: an interrupted download. Other files are not asked for (a download
// of the weights alone is whole for a load). Nothing when there is no
// listing, or one it would not read either.
std::vector<std::string> MissingWeights(const fs::path& repo, const std::string& commit, const fs::path& snapshot) {
  // Like every file of the cache, read as hostile: a regular file only
  // (a FIFO would block the open), of a listing's size at most.
  constexpr uint64_t kMaxListingBytes = 64 << 20;
  Result<std::string> text = ReadSmallFile((repo / "trees" / (commit + ".json")).string(), kMaxListingBytes);
  if (!text.ok()) return {};
  const nlohmann::json tree = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (tree.is_discarded() || !tree.is_object() || tree.value("format_version", 0) != 1 ||
      !tree.contains("files") || !tree["files"].is_object()) {
    return {};
  }
  std::vector<std::string> missing;
  for (const auto& [file, info] : tree["files"].items()) {
    if (!EndsWith(file, ".safetensors") && !EndsWith(file, ".safetensors.index.json")) continue;
    std::error_code ec;
    if (!fs::is_regular_file(snapshot / file, ec)) missing.push_back(file);
  }
  return missing;
}

}  // namespace

std::string HubCacheDir() {
  // huggingface_hub.constants, in order; a variable set to "" counts as set.
  std::string home = Env("HF_HOME").value_or(Join(Env("XDG_CACHE_HOME").value_or(ExpandUser("~/.cache")), "huggingface"));
  home = ExpandVars(ExpandUser(home));
  const std::string legacy = Env("HUGGINGFACE_HUB_CACHE").value_or(Join(home, "hub"));
  return ExpandVars(ExpandUser(Env("HF_HUB_CACHE").value_or(legacy)));
}

Result<std::string> ResolveCheckpointPath(std::string_view path_view) {
  const std::string path(path_view);
  std::error_code ec;
  if (path.empty() || fs::exists(fs::path(path), ec) || ec) return path;
  const size_t at = path.rfind('@');
  const std::string repo_id = path.substr(0, at);
  const std::string revision = at == std::string::npos ? "main" : path.substr(at + 1);
  // A missing "dir/model.safetensors" is a file not there, not a repo.
  const bool file_name = EndsWith(repo_id, ".safetensors") || EndsWith(repo_id, ".json");
  if (file_name || !IsRepoId(repo_id) || !IsSafeRevision(revision)) return path;
  std::string folder = "models--" + repo_id;
  if (size_t slash = folder.find('/'); slash != std::string::npos) folder.replace(slash, 1, "--");
  const fs::path repo = fs::path(HubCacheDir()) / folder;

  // As snapshot_download(local_files_only=True): a commit hash names its
  // snapshot; a branch or tag, the commit its refs/ file holds, unchanged.
  static const std::regex kCommit("^[0-9a-f]{40}$");
  std::optional<std::string> commit;
  const fs::path ref = repo / "refs" / revision;
  std::string ref_problem;  // why the ref names no snapshot, where it is there
  if (std::regex_match(revision, kCommit)) {
    commit = revision;
  } else if (fs::exists(ref, ec)) {
    // A regular file of a snapshot name's length at most: a FIFO there
    // would block the open, a device or a huge file would be read.
    constexpr uint64_t kMaxRefBytes = 255;
    Result<std::string> text = ReadSmallFile(ref.string(), kMaxRefBytes);
    if (text.ok()) {
      commit = *text;
    } else {
      ref_problem = text.status().message();
    }
  }
  const std::string shown = Printable(path);
  if (commit && IsOneName(*commit) && fs::is_directory(repo / "snapshots" / *commit, ec)) {
    const fs::path snapshot = repo / "snapshots" / *commit;
    std::vector<std::string> missing = MissingWeights(repo, *commit, snapshot);
    if (missing.empty()) return snapshot.string();
    return NotFound(shown + ": the Hugging Face cache's snapshot " + Printable(snapshot.string()) + " lacks " +
                    std::to_string(missing.size()) + " of its weight files (" + Printable(missing.front()) +
                    (missing.size() > 1 ? ", ..." : "") + "): an interrupted download; download it again");
  }
  if (repo_id.find('/') == std::string::npos && at == std::string::npos) {
    return path;  // a bare name: more likely a file that is not there
  }
  if (commit && !std::regex_match(revision, kCommit)) {
    ref_problem = Printable(ref.string()) + " holds " + QuoteName(*commit) + ", which names no snapshot in " +
                  Printable((repo / "snapshots").string());
  }
  if (!ref_problem.empty()) {
    return NotFound(shown + ": the Hugging Face cache's ref cannot be followed: " + ref_problem +
                    "; download it again (huggingface_hub's snapshot_download)");
  }
  return NotFound(shown + ": no such file or directory, and no snapshot of it (" + Printable(revision) +
                  ") in the Hugging Face cache at " + Printable(repo.string()) +
                  "; hoist reads no network: download it first (huggingface_hub's snapshot_download)");
}

}  // namespace hoist
