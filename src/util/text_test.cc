#include "util/text.h"

#include <gtest/gtest.h>

namespace hoist {
namespace {

TEST(OptionStyleTest, FlagsByDefaultKeywordsOnceChosen) {
  EXPECT_EQ(Opt("--device-map"), "--device-map");
  EXPECT_EQ(OptText("--shard RANK/WORLD", "shard=(rank, world)"), "--shard RANK/WORLD");
  SetOptionStyle(OptionStyle::kKeywords);
  EXPECT_EQ(Opt("--device-map"), "device_map");
  EXPECT_EQ(Opt("--staging-buffers"), "staging_buffers");
  EXPECT_EQ(Opt("--io"), "io");
  EXPECT_EQ(OptText("--shard RANK/WORLD", "shard=(rank, world)"), "shard=(rank, world)");
  SetOptionStyle(OptionStyle::kFlags);
  EXPECT_EQ(Opt("--chunk-size"), "--chunk-size");
}

}  // namespace
}  // namespace hoist
