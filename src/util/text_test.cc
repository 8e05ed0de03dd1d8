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
  EXPECT_EQ(AssignmentText("--tie", "a=b", "c\nd"), "tie={'a=b': 'c\\x0ad'}");  // escaped: one line
  SetOptionStyle(OptionStyle::kFlags);
  EXPECT_EQ(Opt("--chunk-size"), "--chunk-size");
  EXPECT_EQ(AssignmentText("--tie", "lm_head.weight", "x"), "--tie 'lm_head.weight=x'");
}

}  // namespace
}  // namespace hoist
