#include "io/hub_cache.h"

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

class ResolveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_.Set("HF_HUB_CACHE", cache_.path().string());
    repo_ = cache_.path() / "models--org--name";
    Snapshot("1111111111111111111111111111111111111111");
    Snapshot("2222222222222222222222222222222222222222");
    Ref("main", "1111111111111111111111111111111111111111\n");
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
  EXPECT_EQ(Resolved("org/name"), SnapshotPath("1111111111111111111111111111111111111111"));  // refs/main
  EXPECT_EQ(Resolved("org/name@main"), SnapshotPath("1111111111111111111111111111111111111111"));
  EXPECT_EQ(Resolved("org/name@v2"), SnapshotPath("2222222222222222222222222222222222222222"));  // a tag
  EXPECT_EQ(Resolved("org/name@refs/pr/1"), SnapshotPath("2222222222222222222222222222222222222222"));
  EXPECT_EQ(Resolved("org/name@2222222222222222222222222222222222222222"),
            SnapshotPath("2222222222222222222222222222222222222222"));  // a commit
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
  for (const char* path : {"org/other", "org/name@v9", "org/name@3333333333333333333333333333333333333333"}) {
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
                           "org/name.", "org/na..me", "org/name@../../x", "model.safetensors", "", "org/name@"}) {
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

}  // namespace
}  // namespace hoist
