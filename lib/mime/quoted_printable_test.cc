#include "lib/mime/quoted_printable.h"

#include <string>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace tern::mime {
namespace {

// A straightforward decoder for the tests (RFC 2045 §6.7).
std::string Decode(const std::string& qp) {
  std::string out;
  for (size_t i = 0; i < qp.size(); ++i) {
    if (qp[i] == '=' && i + 2 < qp.size() + 0 && qp.compare(i + 1, 2, "\r\n") == 0) {
      i += 2;  // soft line break
    } else if (qp[i] == '=' && i + 2 < qp.size()) {
      out.push_back(static_cast<char>(std::stoi(qp.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(qp[i]);
    }
  }
  return out;
}

TEST(QuotedPrintable, AsciiTextIsUnchanged) {
  EXPECT_EQ(QuotedPrintableEncode("Hello, world.\r\nSecond line.\r\n"), "Hello, world.\r\nSecond line.\r\n");
}

TEST(QuotedPrintable, EncodesNonAsciiEqualsSignAndTrailingWhitespace) {
  EXPECT_EQ(QuotedPrintableEncode("Gr\xC3\xBC\xC3\x9F" "e a=b \r\ntab\t\r\n"), "Gr=C3=BC=C3=9Fe a=3Db=20\r\ntab=09\r\n");
}

TEST(QuotedPrintable, BareLfBecomesCrlf) {
  EXPECT_EQ(QuotedPrintableEncode("a\nb\n"), "a\r\nb\r\n");
}

TEST(QuotedPrintable, LongLinesGetSoftBreaksAndDecodeBack) {
  std::string text = std::string(200, 'x') + " \xE2\x80\x93 " + std::string(100, 'y') + "\r\n";
  std::string qp = QuotedPrintableEncode(text);
  for (absl::string_view line : absl::StrSplit(qp, "\r\n")) {
    EXPECT_LE(line.size(), 76u) << line;
  }
  EXPECT_EQ(Decode(qp), text);
}

TEST(QuotedPrintable, NeverSplitsAnEscape) {
  // 74 literal characters then a 3-byte escape: the escape must move whole.
  std::string text = std::string(74, 'a') + "\xC3\xA9" + "\r\n";
  std::string qp = QuotedPrintableEncode(text);
  EXPECT_EQ(qp, std::string(74, 'a') + "=\r\n=C3=A9\r\n");
  EXPECT_EQ(Decode(qp), text);
}

TEST(HasLineLongerThan, IgnoresCrAndChecksEveryLine) {
  EXPECT_FALSE(HasLineLongerThan("abc\r\nde\r\n", 3));
  EXPECT_TRUE(HasLineLongerThan("abc\r\ndefg\r\n", 3));
  EXPECT_TRUE(HasLineLongerThan("abcd", 3));
}

}  // namespace
}  // namespace tern::mime
