#include "lib/smtp/dot_codec.h"

#include <string>

#include "gtest/gtest.h"

namespace tern::smtp {
namespace {

TEST(DotCodec, EncodesTable) {
  struct Case {
    const char* label;
    std::string body;
    std::string expected;
  } cases[] = {
      {"empty body", "", ".\r\n"},
      {"plain CRLF body", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
      {"leading dot doubled", ".hidden\r\n", "..hidden\r\n.\r\n"},
      {"lone dot line", "a\r\n.\r\nb\r\n", "a\r\n..\r\nb\r\n.\r\n"},
      {"dot not at line start kept", "a.b\r\n", "a.b\r\n.\r\n"},
      {"two leading dots become three", "..x\r\n", "...x\r\n.\r\n"},
      {"bare LF becomes CRLF", "a\nb\n", "a\r\nb\r\n.\r\n"},
      {"bare LF then dot", "a\n.\nb", "a\r\n..\r\nb\r\n.\r\n"},
      {"smuggling pattern neutralised", "a\n.\r\nMAIL FROM:<x>\r\n", "a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"},
      {"bare CR becomes CRLF", "a\r.\r\n", "a\r\n..\r\n.\r\n"},
      {"no final CRLF added", "last line", "last line\r\n.\r\n"},
      {"final bare CR", "x\r", "x\r\n.\r\n"},
      {"bare CR before a later LF", "ab\rcd\nef", "ab\r\ncd\r\nef\r\n.\r\n"},
      {"bare CR then dot before a later CRLF", "a\r.b\r\n", "a\r\n..b\r\n.\r\n"},
      {"only CRLF", "\r\n", "\r\n.\r\n"},
      {"empty lines kept", "\r\n\r\n", "\r\n\r\n.\r\n"},
      {"first char dot without newline", ".", "..\r\n.\r\n"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    EXPECT_EQ(DotCodec::Encode(c.body), c.expected);
  }
}

TEST(DotCodec, AppendsToExistingBuffer) {
  std::string out = "prefix";
  DotCodec::AppendEncoded(".a", &out);
  EXPECT_EQ(out, "prefix..a\r\n.\r\n");
}

TEST(DotCodec, LargeBodyRoundTripsLineByLine) {
  // 4 MiB of lines, every 7th starting with a dot and every 5th with bare LF.
  std::string body;
  std::string expected;
  for (int i = 0; body.size() < (4u << 20); ++i) {
    std::string line = (i % 7 == 0 ? "." : "") + std::string(70, static_cast<char>('a' + i % 26));
    body += line + (i % 5 == 0 ? "\n" : "\r\n");
    expected += (line[0] == '.' ? "." : "") + line + "\r\n";
  }
  expected += ".\r\n";
  EXPECT_EQ(DotCodec::Encode(body), expected);
}

TEST(DotCodec, CrlfCanonicalTellsWhatBdatCanSendAsItIs) {
  struct Case {
    const char* label;
    std::string body;
    bool canonical;
  } cases[] = {
      {"empty", "", true},
      {"CRLF lines", "a\r\n.b\r\n\r\n", true},
      {"leading dots need no stuffing", ".\r\n..\r\n", true},
      {"no final line end", "a\r\nb", false},
      {"bare LF", "a\nb\r\n", false},
      {"bare LF first", "\nb\r\n", false},
      {"bare CR", "a\rb\r\n", false},
      {"CR CR LF", "a\r\r\n", false},
      {"final bare CR", "a\r\n\r", false},
      {"lone CR", "\r", false},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    EXPECT_EQ(DotCodec::IsCrlfCanonical(c.body), c.canonical);
    std::string out;
    DotCodec::AppendCrlfCanonical(c.body, &out);
    // Canonicalising changes exactly the bodies that are not canonical,
    // and its result always is.
    EXPECT_EQ(out == c.body, c.canonical);
    EXPECT_TRUE(DotCodec::IsCrlfCanonical(out));
  }
}

TEST(DotCodec, CrlfCanonicalNeitherStuffsNorTerminates) {
  std::string out = "BDAT 9 LAST\r\n";
  DotCodec::AppendCrlfCanonical(".a\n.\nb", &out);
  EXPECT_EQ(out, "BDAT 9 LAST\r\n.a\r\n.\r\nb\r\n");
}

}  // namespace
}  // namespace tern::smtp
