#include "lib/smtp/dot_decoder.h"

#include "gtest/gtest.h"

namespace tern::smtp {
namespace {

TEST(DotDecoder, EndsOnlyOnDotCrlf) {
  DotDecoder d;
  EXPECT_FALSE(d.Decode(".", false, /*bare_lf=*/true).end);
  EXPECT_EQ(d.Decode(".", false, true).text, ".");
  EXPECT_TRUE(d.Decode(".", false, false).end);
}

TEST(DotDecoder, RemovesTransparencyDot) {
  DotDecoder d;
  EXPECT_EQ(d.Decode("..x", false, false).text, ".x");
  EXPECT_EQ(d.Decode(".", true, false).text, "");  // a cut line starting with "."
}

TEST(DotDecoder, ContinuationPiecesKeepDotsAndNeverEnd) {
  DotDecoder d;
  auto first = d.Decode("aaaa", /*partial=*/true, false);
  EXPECT_FALSE(first.line_end);
  auto second = d.Decode(".", false, false);
  EXPECT_FALSE(second.end);
  EXPECT_EQ(second.text, ".");
  EXPECT_TRUE(second.line_end);
  EXPECT_TRUE(d.Decode(".", false, false).end);
}

}  // namespace
}  // namespace tern::smtp
