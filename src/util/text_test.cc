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

TEST(PrintableTest, EscapesControlsAndBytesThatAreNotUtf8) {
  EXPECT_EQ(Printable("plain/name.weight"), "plain/name.weight");
  EXPECT_EQ(Printable("a\nb\x1b[31m"), "a\\x0ab\\x1b[31m");
  EXPECT_EQ(Printable("\xc3\xa9t\xc3\xa9"), "\xc3\xa9t\xc3\xa9");  // "été" stays as it is
  EXPECT_EQ(Printable("\xe2\x82\xac \xf0\x9f\x98\x80"), "\xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(Printable("\xa9.weight"), "\\xa9.weight");           // half of "é"
  EXPECT_EQ(Printable("Z\xc3"), "Z\\xc3");                         // cut at the end
  EXPECT_EQ(Printable("\xc0\xaf"), "\\xc0\\xaf");                 // overlong '/'
  EXPECT_EQ(Printable("\xed\xa0\x80"), "\\xed\\xa0\\x80");       // a surrogate
  EXPECT_EQ(Printable("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");  // past U+10FFFF
  EXPECT_EQ(QuoteName("\xff"), "'\\xff'");
  // UTF-8 that still acts on a terminal or breaks a line: C1 CSI and NEL,
  // U+2028 and U+2029; their neighbours pass.
  EXPECT_EQ(Printable("a\xc2\x9b" "31m"), "a\\xc2\\x9b" "31m");
  EXPECT_EQ(Printable("\xc2\x85"), "\\xc2\\x85");
  EXPECT_EQ(Printable("\xe2\x80\xa8|\xe2\x80\xa9"), "\\xe2\\x80\\xa8|\\xe2\\x80\\xa9");
  EXPECT_EQ(Printable("\xc2\xa0\xe2\x80\xa6"), "\xc2\xa0\xe2\x80\xa6");  // no-break space, ellipsis
}

}  // namespace
}  // namespace hoist
