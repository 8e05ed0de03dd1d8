#include "io/hub_cache.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <system_error>

#include "util/text.h"

namespace hoist {
namespace {

namespace fs = std::filesystem;

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

std::string ExpandHome(std::string path) {
  if (path == "~" || path.rfind("~/", 0) == 0) path = Env("HOME") + path.substr(1);
  return path;
}

// huggingface_hub's rule for repo ids (validate_repo_id): an optional
// namespace and a name of word characters, '-' and '.', at most 96
// characters, neither starting nor ending with '-' or '.', without "--" or
// "..". REVISION: a branch, tag or commit; refs may hold slashes.
bool ParseRepoId(std::string_view text, std::string* repo, std::string* revision) {
  static const std::regex kShape(R"(^((?:[\w.-]+/)?[\w.-]+)(?:@([\w./-]+))?$)");
  std::cmatch m;
  if (!std::regex_match(text.begin(), text.end(), m, kShape)) return false;
  const std::string id = m[1].str();
  if (id.size() > 96 || id.find("--") != std::string::npos || id.find("..") != std::string::npos) return false;
  const size_t slash = id.find('/');
  const std::string_view name(id);
  const bool has_namespace = slash != std::string::npos;
  for (std::string_view part : {has_namespace ? name.substr(0, slash) : name,
                                has_namespace ? name.substr(slash + 1) : name}) {
    if (part.empty() || part.front() == '-' || part.front() == '.' || part.back() == '-' || part.back() == '.') {
      return false;
    }
  }
  *repo = id;
  *revision = m[2].matched ? m[2].str() : "main";
  return revision->find("..") == std::string::npos;
}

}  // namespace

std::string HubCacheDir() {
  for (const char* name : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}) {
    if (std::string v = Env(name); !v.empty()) return ExpandHome(v);
  }
  if (std::string home = Env("HF_HOME"); !home.empty()) return ExpandHome(home) + "/hub";
  if (std::string xdg = Env("XDG_CACHE_HOME"); !xdg.empty()) return ExpandHome(xdg) + "/huggingface/hub";
  return Env("HOME") + "/.cache/huggingface/hub";
}

Result<std::string> ResolveCheckpointPath(std::string_view path) {
  std::error_code ec;
  if (path.empty() || fs::exists(fs::path(path), ec) || ec) return std::string(path);
  std::string repo, revision;
  if (!ParseRepoId(path, &repo, &revision)) return std::string(path);
  std::string folder = repo;
  for (size_t at = folder.find('/'); at != std::string::npos; at = folder.find('/', at)) folder.replace(at, 1, "--");
  const fs::path root = fs::path(HubCacheDir()) / ("models--" + folder);
  // A ref holds the commit; a commit is its own snapshot's name.
  std::string commit = revision;
  if (std::ifstream ref(root / "refs" / revision); ref) {
    std::getline(ref, commit);
    while (!commit.empty() && (commit.back() == '\n' || commit.back() == '\r' || commit.back() == ' ')) {
      commit.pop_back();
    }
  }
  const fs::path snapshot = root / "snapshots" / commit;
  const bool one_name = !commit.empty() && commit != "." && commit != ".." && commit.find('/') == std::string::npos;
  if (one_name && fs::is_directory(snapshot, ec)) {
    return snapshot.string();
  }
  if (repo.find('/') == std::string::npos && revision == "main" && path.find('@') == std::string_view::npos) {
    return std::string(path);  // a bare name: more likely a file that is not there
  }
  return NotFound(Printable(std::string(path)) + ": no such file or directory, and no snapshot of it (" + revision +
                  ") in the Hugging Face cache at " + Printable(root.string()) +
                  "; hoist reads no network: download it first (huggingface_hub's snapshot_download)");
}

}  // namespace hoist
