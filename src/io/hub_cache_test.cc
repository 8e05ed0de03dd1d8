#include "io/hub_cache.h"

#include <pwd.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace hoist {
namespace {

namespace fs = std::filesystem;

// Sets the cache variables for one test and puts back what was there.
class CacheEnv {
 public:
  CacheEnv() {
    for (const char* name : kNames) {
      const char* v = std::getenv(name);
      saved_[name] = v == nullptr ? std::nullopt : std::optional<std::string>(v);
      ::unsetenv(name);
    }
  }
  ~CacheEnv() {
    for (const auto& [name, value] : saved_) {
      if (value) {
        ::setenv(name.c_str(), value->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
  }
  void Set(const char* name, const std::string& value) { ::setenv(name, value.c_str(), 1); }

 private:
  static constexpr const char* kNames[] = {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME",
                                           "HOME"};
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST(HubCacheTest, DirectoryFollowsHuggingfaceHubsPrecedence) {
  CacheEnv env;
  env.Set("HOME", "/home/u");
  EXPECT_EQ(HubCacheDir(), "/home/u/.cache/huggingface/hub");
  env.Set("XDG_CACHE_HOME", "/xdg");
  EXPECT_EQ(HubCacheDir(), "/xdg/huggingface/hub");
  env.Set("HF_HOME", "~/hf");
  EXPECT_EQ(HubCacheDir(), "/home/u/hf/hub");
  env.Set("HUGGINGFACE_HUB_CACHE", "/legacy");
  EXPECT_EQ(HubCacheDir(), "/legacy");
  env.Set("HF_HUB_CACHE", "/new");
  EXPECT_EQ(HubCacheDir(), "/new");
}

// As Python's os.path.expandvars(os.path.expanduser(...)): set variables
// expand, unset ones stay as written, and a variable set to "" is set.
TEST(HubCacheTest, VariablesExpandAsPythonExpandsThem) {
  CacheEnv env;
  env.Set("HOME", "/home/u");
  env.Set("ROOT", "/data");
  env.Set("HF_HOME", "$ROOT/hf/${ROOT}/$UNSET_HOIST_VAR");
  EXPECT_EQ(HubCacheDir(), "/data/hf//data/$UNSET_HOIST_VAR/hub");
  env.Set("HF_HUB_CACHE", "~/${ROOT}");
  EXPECT_EQ(HubCacheDir(), "/home/u//data");
  env.Set("HF_HUB_CACHE", "");
  EXPECT_EQ(HubCacheDir(), "");
}

// "~user" as os.path.expanduser reads it: that user's home from the
// password database; a user it lacks is left as written.
TEST(HubCacheTest, TildeUserIsThatUsersHome) {
  CacheEnv env;
  env.Set("HOME", "/home/u");
  const struct passwd* root = ::getpwnam("root");
  ASSERT_NE(root, nullptr);
  std::string root_home = root->pw_dir;
  while (root_home.size() > 1 && root_home.back() == '/') root_home.pop_back();
  env.Set("HF_HOME", "~root/hf");
  EXPECT_EQ(HubCacheDir(), (root_home == "/" ? "" : root_home) + "/hf/hub");
  env.Set("HF_HUB_CACHE", "~no-such-user-of-hoist/hub");
  EXPECT_EQ(HubCacheDir(), "~no-such-user-of-hoist/hub");
  env.Set("HF_HUB_CACHE", "~");
  EXPECT_EQ(HubCacheDir(), "/home/u");
  env.Set("HOME", "/");
  EXPECT_EQ(HubCacheDir(), "/");
  env.Set("HF_HUB_CACHE", "~/hub");
  EXPECT_EQ(HubCacheDir(), "/hub");
}

class ResolveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_.Set("HF_HUB_CACHE", cache_.path().string());
    repo_ = cache_.path() / "models--org--name";
    Snapshot("1111111111111111111111111111111111111111");
    Snapshot("2222222222222222222222222222222222222222");
    Ref("main", "1111111111111111111111111111111111111111");
    Ref("v2", "2222222222222222222222222222222222222222");
    Ref("refs/pr/1", "2222222222222222222222222222222222222222");
  }
  void Snapshot(const std::string& commit) {
    fs::create_directories(repo_ / "snapshots" / commit);
    std::ofstream(repo_ / "snapshots" / commit / "model.safetensors") << "x";
  }
  void Ref(const std::string& name, const std::string& commit) {
    fs::create_directories((repo_ / "refs" / name).parent_path());
    std::ofstream(repo_ / "refs" / name) << commit;
  }
  std::string SnapshotPath(const std::string& commit) { return (repo_ / "snapshots" / commit).string(); }
  std::string Resolved(const std::string& path) {
    Result<std::string> r = ResolveCheckpointPath(path);
    EXPECT_TRUE(r.ok()) << path << ": " << r.status().message();
    return r.ok() ? *r : std::string();
  }

  CacheEnv env_;
  testing::TempDir cache_;
  fs::path repo_;
};

TEST_F(ResolveTest, ARepoIdIsItsSnapshotForEachKindOfRevision) {
  Ref("v1+cu121", "2222222222222222222222222222222222222222");  // git allows '+' and more in a name
  EXPECT_EQ(Resolved("org/name"), SnapshotPath("1111111111111111111111111111111111111111"));  // refs/main
  EXPECT_EQ(Resolved("org/name@main"), SnapshotPath("1111111111111111111111111111111111111111"));
  EXPECT_EQ(Resolved("org/name@v2"), SnapshotPath("2222222222222222222222222222222222222222"));  // a tag
  EXPECT_EQ(Resolved("org/name@refs/pr/1"), SnapshotPath("2222222222222222222222222222222222222222"));
  EXPECT_EQ(Resolved("org/name@2222222222222222222222222222222222222222"),
            SnapshotPath("2222222222222222222222222222222222222222"));  // a commit
  EXPECT_EQ(Resolved("org/name@v1+cu121"), SnapshotPath("2222222222222222222222222222222222222222"));
}

// Namespace and name may each be 96 characters long.
TEST_F(ResolveTest, LongPartsAreRepoIds) {
  const std::string ns(20, 'n'), name(90, 'm');
  fs::create_directories(cache_.path() / ("models--" + ns + "--" + name) / "snapshots" / "abc");
  fs::create_directories(cache_.path() / ("models--" + ns + "--" + name) / "refs");
  std::ofstream(cache_.path() / ("models--" + ns + "--" + name) / "refs" / "main") << "abc";
  EXPECT_EQ(Resolved(ns + "/" + name), (cache_.path() / ("models--" + ns + "--" + name) / "snapshots" / "abc").string());
}

// The ref file's whole content is the commit, and a commit hash is never
// looked up in refs/: what huggingface_hub refuses, hoist refuses.
TEST_F(ResolveTest, RefsAreReadAsHuggingfaceHubReadsThem) {
  Ref("newline", "1111111111111111111111111111111111111111\n");
  Ref("3333333333333333333333333333333333333333", "1111111111111111111111111111111111111111");
  for (const char* path : {"org/name@newline", "org/name@3333333333333333333333333333333333333333"}) {
    Result<std::string> r = ResolveCheckpointPath(path);
    ASSERT_FALSE(r.ok()) << path << " -> " << *r;
    EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  }
}

// A commit listing (trees/COMMIT.json, as snapshot_download writes it) that
// names weight files the snapshot lacks: an interrupted download, refused;
// other files missing do not matter to a load.
TEST_F(ResolveTest, ASnapshotShortOfItsListedWeightsIsRefused) {
  const std::string commit = "1111111111111111111111111111111111111111";
  fs::create_directories(repo_ / "trees");
  auto listing = [&](const std::string& files) {
    std::ofstream(repo_ / "trees" / (commit + ".json")) << R"({"format_version": 1, "files": {)" << files << "}}";
  };
  listing(R"("model.safetensors": {"size": 1, "blob_id": "a"}, "README.md": {"size": 1, "blob_id": "b"})");
  EXPECT_EQ(Resolved("org/name"), SnapshotPath(commit));
  listing(R"("model.safetensors": {"size": 1, "blob_id": "a"},
             "model-00002-of-00002.safetensors": {"size": 1, "blob_id": "c"})");
  Result<std::string> r = ResolveCheckpointPath("org/name");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("model-00002-of-00002.safetensors"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("interrupted download"), std::string::npos) << r.status().message();
  // A listing huggingface_hub would not read either (another format) is no listing.
  std::ofstream(repo_ / "trees" / (commit + ".json")) << R"({"format_version": 2, "files": {"x.safetensors": {}}})";
  EXPECT_EQ(Resolved("org/name"), SnapshotPath(commit));
}

TEST_F(ResolveTest, AnExistingPathIsNeverLookedUp) {
  testing::TempDir cwd;
  fs::create_directories(cwd.path() / "org" / "name");
  const fs::path before = fs::current_path();
  fs::current_path(cwd.path());
  Result<std::string> r = ResolveCheckpointPath("org/name");
  fs::current_path(before);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "org/name");
}

TEST_F(ResolveTest, AMissingRepoOrRevisionSaysWhereItLooked) {
  for (const char* path : {"org/other", "org/name@v9", "org/name@3333333333333333333333333333333333333333",
                           "gpt3@main"}) {
    Result<std::string> r = ResolveCheckpointPath(path);
    ASSERT_FALSE(r.ok()) << path;
    EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
    EXPECT_NE(r.status().message().find(std::string(path) + ": no such file or directory"), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find(cache_.path().string()), std::string::npos) << r.status().message();
  }
}

TEST_F(ResolveTest, WhatIsNotShapedLikeARepoIdComesBackUnchanged) {
  // Paths, names huggingface_hub refuses, revisions that climb out, and a
  // bare name not in the cache (more likely a missing file).
  for (const char* path : {"./org/name", "../x", "/abs/model.safetensors", "a/b/c", "org--x/name", "org/-name",
                           "org/name.", "org/na..me", "org/name.git", "org/name@../../x", "org/name@/abs/ref",
                           "model.safetensors", "", "org/name@", "org/_x_@a/../../b", "nothere/model.safetensors",
                           "nothere/model.safetensors.index.json"}) {
    Result<std::string> r = ResolveCheckpointPath(path);
    ASSERT_TRUE(r.ok()) << path << ": " << r.status().message();
    EXPECT_EQ(*r, path);
  }
}

TEST_F(ResolveTest, ABareNameIsLookedUpToo) {
  fs::create_directories(cache_.path() / "models--gpt2" / "snapshots" / "abc");
  fs::create_directories(cache_.path() / "models--gpt2" / "refs");
  std::ofstream(cache_.path() / "models--gpt2" / "refs" / "main") << "abc";
  EXPECT_EQ(Resolved("gpt2"), (cache_.path() / "models--gpt2" / "snapshots" / "abc").string());
}

TEST_F(ResolveTest, ARefNamingNoSnapshotIsNotFound) {
  for (const char* commit : {"../../../etc", "..", ".", ""}) {
    Ref("broken", commit);
    Result<std::string> r = ResolveCheckpointPath("org/name@broken");
    ASSERT_FALSE(r.ok()) << commit << " -> " << *r;
    EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  }
}

// A ref's content is named in the error, so that "<sha>\n" (written by
// echo) is told apart from a repo that is not there.
TEST_F(ResolveTest, ARefThatNamesNoSnapshotIsNamedWithWhatItHolds) {
  Ref("newline", "1111111111111111111111111111111111111111\n");
  Result<std::string> r = ResolveCheckpointPath("org/name@newline");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find((repo_ / "refs" / "newline").string() +
                                      " holds '1111111111111111111111111111111111111111\\x0a'"),
            std::string::npos)
      << r.status().message();
}

// Every file of the cache is hostile: a FIFO where a ref or a listing
// should be must not block (opening one for reading waits for a writer),
// a device must not be read, a huge file must not be read whole.
TEST_F(ResolveTest, RefsAndListingsThatAreNotSmallRegularFilesAreNeverRead) {
  fs::remove(repo_ / "refs" / "v2");
  ASSERT_EQ(::mkfifo((repo_ / "refs" / "v2").c_str(), 0600), 0);
  fs::create_symlink("/dev/zero", repo_ / "refs" / "zero");
  Ref("huge", std::string(1 << 20, '1'));
  for (const char* path : {"org/name@v2", "org/name@zero", "org/name@huge"}) {
    Result<std::string> r = ResolveCheckpointPath(path);
    ASSERT_FALSE(r.ok()) << path << " -> " << *r;
    EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
    EXPECT_NE(r.status().message().find("ref cannot be followed"), std::string::npos) << r.status().message();
  }
  // A FIFO (and a device) as the commit's listing is no listing.
  const std::string commit = "1111111111111111111111111111111111111111";
  fs::create_directories(repo_ / "trees");
  ASSERT_EQ(::mkfifo((repo_ / "trees" / (commit + ".json")).c_str(), 0600), 0);
  EXPECT_EQ(Resolved("org/name"), SnapshotPath(commit));
  fs::remove(repo_ / "trees" / (commit + ".json"));
  fs::create_symlink("/dev/zero", repo_ / "trees" / (commit + ".json"));
  EXPECT_EQ(Resolved("org/name"), SnapshotPath(commit));
}

}  // namespace
}  // namespace hoist
