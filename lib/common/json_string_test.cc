#include "lib/common/json_string.h"

#include <string>

#include "gtest/gtest.h"

namespace tern {
namespace {

std::string Json(absl::string_view s) {
  std::string out;
  AppendJsonString(out, s);
  return out;
}

TEST(AppendJsonString, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(Json("a\"b\\c"), R"("a\"b\\c")");
  EXPECT_EQ(Json("\b\f\n\r\t"), R"("\b\f\n\r\t")");
  EXPECT_EQ(Json(std::string("\x01\x1f\0", 3)), R"("\u0001\u001f\u0000")");
}

TEST(AppendJsonString, PassesValidUtf8Through) {
  EXPECT_EQ(Json("b\xc3\xbc \xe2\x82\xac \xf0\x9f\x98\x80"), "\"b\xc3\xbc \xe2\x82\xac \xf0\x9f\x98\x80\"");
}

TEST(AppendJsonString, ReplacesBytesThatAreNotUtf8) {
  const std::string replacement = "\xEF\xBF\xBD";
  EXPECT_EQ(Json("a\xff" "b"), "\"a" + replacement + "b\"");
  EXPECT_EQ(Json("\xc0\xaf"), "\"" + replacement + replacement + "\"");      // overlong
  EXPECT_EQ(Json("\xed\xa0\x80"), "\"" + replacement + replacement + replacement + "\"");  // surrogate
  EXPECT_EQ(Json("\xc3"), "\"" + replacement + "\"");                          // cut short
}

TEST(AppendJsonString, AppendsToWhatIsThere) {
  std::string out = "x:";
  AppendJsonString(out, "y");
  EXPECT_EQ(out, "x:\"y\"");
}

}  // namespace
}  // namespace tern
