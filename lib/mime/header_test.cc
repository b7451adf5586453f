#include "lib/mime/header.h"

#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::mime {
namespace {

using ::testing::ElementsAre;
using ::testing::Optional;

// Every line of a formatted field ends in CRLF, is at most 998 characters,
// every line after the first is a continuation (starts with WSP), and there
// is no CR or LF anywhere except in those line ends.
void ExpectWellFormedField(const std::string& field) {
  ASSERT_GE(field.size(), 2u);
  ASSERT_EQ(field.substr(field.size() - 2), "\r\n");
  std::vector<std::string> lines = absl::StrSplit(field.substr(0, field.size() - 2), "\r\n");
  for (size_t i = 0; i < lines.size(); ++i) {
    SCOPED_TRACE(lines[i]);
    EXPECT_LE(lines[i].size(), kMaxLineLength);
    EXPECT_EQ(lines[i].find('\r'), std::string::npos);
    EXPECT_EQ(lines[i].find('\n'), std::string::npos);
    if (i > 0) {
      ASSERT_FALSE(lines[i].empty());
      EXPECT_TRUE(lines[i][0] == ' ' || lines[i][0] == '\t');
    }
  }
}

std::string ValueOf(const std::string& field) {
  std::optional<std::string> v = GetHeader(field, field.substr(0, field.find(':')));
  return v.value_or("<missing>");
}

TEST(SplitHeaderBlock, SplitsAtFirstEmptyLineWithCrlf) {
  HeaderBlock b = SplitHeaderBlock("A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n");
  EXPECT_TRUE(b.has_separator);
  EXPECT_EQ(b.headers, "A: 1\r\nB: 2\r\n");
  EXPECT_EQ(b.body, "body\r\n\r\nmore\r\n");
}

TEST(SplitHeaderBlock, AcceptsBareLfLineEnds) {
  HeaderBlock b = SplitHeaderBlock("A: 1\nB: 2\n\nbody\n");
  EXPECT_TRUE(b.has_separator);
  EXPECT_EQ(b.headers, "A: 1\nB: 2\n");
  EXPECT_EQ(b.body, "body\n");
}

TEST(SplitHeaderBlock, MessageWithoutEmptyLineIsAllHeaders) {
  HeaderBlock b = SplitHeaderBlock("A: 1\r\nB: 2\r\n");
  EXPECT_FALSE(b.has_separator);
  EXPECT_EQ(b.headers, "A: 1\r\nB: 2\r\n");
  EXPECT_EQ(b.body, "");
}

TEST(SplitHeaderBlock, LeadingEmptyLineMeansNoHeaders) {
  HeaderBlock b = SplitHeaderBlock("\r\nbody");
  EXPECT_TRUE(b.has_separator);
  EXPECT_EQ(b.headers, "");
  EXPECT_EQ(b.body, "body");
}

TEST(ParseHeaderFields, KeepsFoldsAndSkipsGarbageLines) {
  std::vector<HeaderField> fields = ParseHeaderFields(
      "From mbox-line Thu Nov 21\r\n"
      "Subject: hello\r\n"
      "\tworld\r\n"
      "not a header line\r\n"
      " orphan continuation\r\n"
      "Bad Name: x\r\n"
      "X-Obsolete : spaced\r\n"
      "To:a@b\r\n");
  ASSERT_EQ(fields.size(), 3u);
  EXPECT_EQ(fields[0].name, "Subject");
  EXPECT_EQ(fields[0].raw_value, " hello\r\n\tworld");
  EXPECT_EQ(fields[1].name, "X-Obsolete");
  EXPECT_EQ(fields[1].raw_value, " spaced");
  EXPECT_EQ(fields[2].name, "To");
  EXPECT_EQ(fields[2].raw_value, "a@b");
}

TEST(GetHeader, ReturnsFirstMatchUnfoldedCaseInsensitively) {
  std::string msg =
      "Received: x\r\n"
      "SUBJECT: first\r\n"
      "  part two\r\n"
      "Subject: second\r\n"
      "\r\n"
      "Subject: in the body\r\n";
  EXPECT_THAT(GetHeader(msg, "subject"), Optional(std::string("first  part two")));
  EXPECT_EQ(GetHeader(msg, "Message-Id"), std::nullopt);
}

TEST(GetHeader, DoesNotLookIntoTheBody) {
  EXPECT_EQ(GetHeader("A: 1\r\n\r\nMessage-Id: <x@y>\r\n", "Message-Id"), std::nullopt);
}

TEST(GetHeader, BareCrInValueIsRemovedNotKept) {
  // A bare CR in a stored header must not survive into a value Tern quotes.
  EXPECT_THAT(GetHeader("Subject: a\rBcc: evil@x\r\n\r\n", "Subject"), Optional(std::string("aBcc: evil@x")));
}

TEST(DecodeEncodedWords, DecodesBAndQAndDropsSpaceBetweenWords) {
  EXPECT_EQ(DecodeEncodedWords("=?UTF-8?B?w6nDqQ==?="), "\xC3\xA9\xC3\xA9");
  EXPECT_EQ(DecodeEncodedWords("=?utf-8?q?caf=C3=A9_au_lait?="), "caf\xC3\xA9 au lait");
  EXPECT_EQ(DecodeEncodedWords("=?utf-8?q?a?= =?utf-8?q?b?="), "ab");
  EXPECT_EQ(DecodeEncodedWords("x =?utf-8?q?a?=  y"), "x a  y");
}

TEST(DecodeEncodedWords, ConvertsLatin1ToUtf8) {
  EXPECT_EQ(DecodeEncodedWords("=?ISO-8859-1?Q?gr=FC=DF?="), "gr\xC3\xBC\xC3\x9F");
}

TEST(DecodeEncodedWords, LeavesUnknownCharsetAndMalformedWordsAlone) {
  EXPECT_EQ(DecodeEncodedWords("=?koi8-r?B?8NLJ18XU?="), "=?koi8-r?B?8NLJ18XU?=");
  EXPECT_EQ(DecodeEncodedWords("=?utf-8?x?abc?="), "=?utf-8?x?abc?=");
  EXPECT_EQ(DecodeEncodedWords("=?utf-8?q?unterminated"), "=?utf-8?q?unterminated");
  EXPECT_EQ(DecodeEncodedWords("=?utf-8?q?bad=ZZ?="), "=?utf-8?q?bad=ZZ?=");
}

TEST(DecodeEncodedWords, ResultIsAlwaysValidUtf8) {
  EXPECT_EQ(DecodeEncodedWords("=?utf-8?b?/w==?= raw\xFF"), "\xEF\xBF\xBD raw\xEF\xBF\xBD");
}

TEST(ToValidUtf8, ReplacesOverlongSurrogateAndTruncatedSequences) {
  EXPECT_EQ(ToValidUtf8("ok \xE2\x82\xAC"), "ok \xE2\x82\xAC");
  EXPECT_EQ(ToValidUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");                 // overlong '/'
  EXPECT_EQ(ToValidUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(ToValidUtf8("a\xE2\x82"), "a\xEF\xBF\xBD\xEF\xBF\xBD");               // truncated
}

TEST(CollapseToOneLine, TurnsEachControlRunIntoOneSpace) {
  EXPECT_EQ(CollapseToOneLine("a\r\nb\n\n\tc\x7f" "d\x01"), "a b c d ");
}

TEST(FormatHeaderField, ShortAsciiValueStaysOnOneLine) {
  EXPECT_EQ(FormatHeaderField("Subject", "failure notice"), "Subject: failure notice\r\n");
}

TEST(FormatHeaderField, CrLfInValueCannotInjectAHeader) {
  struct Case {
    const char* label;
    const char* value;
  };
  const Case cases[] = {
      {"crlf", "hi\r\nBcc: victim@example.com"},
      {"bare lf", "hi\nBcc: victim@example.com"},
      {"bare cr", "hi\rBcc: victim@example.com"},
      {"end of headers", "hi\r\n\r\n<html>body</html>"},
      {"folded look-alike", "hi\r\n Bcc: victim@example.com"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    for (HeaderText mode : {HeaderText::kUnstructured, HeaderText::kAsciiStructured}) {
      std::string field = FormatHeaderField("Subject", c.value, mode);
      ExpectWellFormedField(field);
      std::vector<HeaderField> parsed = ParseHeaderFields(field);
      ASSERT_EQ(parsed.size(), 1u);
      EXPECT_EQ(parsed[0].name, "Subject");
      EXPECT_FALSE(SplitHeaderBlock(field + "X: y\r\n").has_separator);
    }
  }
}

TEST(FormatHeaderField, FoldsLongAsciiValuesAtSpaces) {
  std::string value;
  for (int i = 0; i < 40; ++i) {
    value += "word" + std::to_string(i) + " ";
  }
  std::string field = FormatHeaderField("Subject", value);
  ExpectWellFormedField(field);
  std::vector<std::string> lines = absl::StrSplit(field.substr(0, field.size() - 2), "\r\n");
  EXPECT_GT(lines.size(), 2u);
  for (const std::string& line : lines) {
    EXPECT_LE(line.size(), kFoldLineLength);
  }
  // Unfolding gives the value back (its trailing space trimmed).
  EXPECT_EQ(ValueOf(field), value.substr(0, value.size() - 1));
}

TEST(FormatHeaderField, EncodesNonAsciiWordsAndRoundTrips) {
  std::string subject = "R\xC3\xA9sum\xC3\xA9 f\xC3\xBCr Gr\xC3\xBC\xC3\x9F" "e and plain words \xE2\x9C\x93";
  std::string field = FormatHeaderField("Subject", subject);
  ExpectWellFormedField(field);
  EXPECT_TRUE(IsAscii(field));
  EXPECT_NE(field.find("=?UTF-8?B?"), std::string::npos);
  EXPECT_NE(field.find(" plain "), std::string::npos) << field;  // ASCII words stay readable
  EXPECT_EQ(DecodeEncodedWords(ValueOf(field)), subject);
}

TEST(FormatHeaderField, LongNonAsciiTextSplitsOnlyAtCharacterBoundaries) {
  std::string subject;
  for (int i = 0; i < 200; ++i) {
    subject += "\xE2\x82\xAC";  // three-byte euro sign, no spaces at all
  }
  std::string field = FormatHeaderField("Subject", subject);
  ExpectWellFormedField(field);
  std::vector<std::string> lines = absl::StrSplit(field.substr(0, field.size() - 2), "\r\n");
  for (const std::string& line : lines) {
    EXPECT_LE(line.size(), kFoldLineLength);
  }
  // Each encoded-word decodes to whole characters on its own.
  for (const std::string& line : lines) {
    size_t start = line.find("=?");
    ASSERT_NE(start, std::string::npos);
    std::string decoded = DecodeEncodedWords(line.substr(start));
    EXPECT_EQ(decoded.find("\xEF\xBF\xBD"), std::string::npos) << line;
  }
  EXPECT_EQ(DecodeEncodedWords(ValueOf(field)), subject);
}

TEST(FormatHeaderField, LiteralEncodedWordLookAlikeIsEncodedSoItReadsBackVerbatim) {
  std::string subject = "see =?utf-8?q?not_me?= here";
  std::string field = FormatHeaderField("Subject", subject);
  EXPECT_EQ(DecodeEncodedWords(ValueOf(field)), subject);
}

TEST(FormatHeaderField, HugeUnbrokenAsciiTokenStaysUnder998) {
  std::string token(3000, 'x');
  std::string unstructured = FormatHeaderField("Subject", token);
  ExpectWellFormedField(unstructured);
  EXPECT_EQ(DecodeEncodedWords(ValueOf(unstructured)), token);

  std::string structured = FormatHeaderField("Diagnostic-Code", "smtp;550 " + token, HeaderText::kAsciiStructured);
  ExpectWellFormedField(structured);
}

TEST(FormatHeaderField, AsciiStructuredReplacesNonAsciiBytes) {
  EXPECT_EQ(FormatHeaderField("Diagnostic-Code", "smtp;550 n\xC3\xA9in", HeaderText::kAsciiStructured),
            "Diagnostic-Code: smtp;550 n??in\r\n");
}

TEST(FormatHeaderField, InvalidUtf8IsRepairedBeforeEncoding) {
  std::string field = FormatHeaderField("Subject", "bad \xFF byte");
  EXPECT_TRUE(IsAscii(field));
  EXPECT_EQ(DecodeEncodedWords(ValueOf(field)), "bad \xEF\xBF\xBD byte");
}

TEST(IsValidFieldName, RejectsColonSpaceControlAndEmpty) {
  EXPECT_TRUE(IsValidFieldName("X-Tern-Test"));
  EXPECT_FALSE(IsValidFieldName(""));
  EXPECT_FALSE(IsValidFieldName("A:B"));
  EXPECT_FALSE(IsValidFieldName("A B"));
  EXPECT_FALSE(IsValidFieldName("A\x01"));
  EXPECT_FALSE(IsValidFieldName("\xC3\xA9"));
}

TEST(ParseHeaderFields, SplitsOnlyOnRealLineEnds) {
  EXPECT_THAT(ParseHeaderFields("A: 1\r\nB: 2"), ElementsAre(testing::Field(&HeaderField::name, "A"),
                                                           testing::Field(&HeaderField::name, "B")));
}

TEST(FormatRfc5322Date, FormatsUtcWithNumericZoneOrTheZoneGiven) {
  const absl::Time t = absl::FromCivil(absl::CivilSecond(2026, 11, 21, 7, 5, 0), absl::UTCTimeZone());
  EXPECT_EQ(FormatRfc5322Date(t), "Sat, 21 Nov 2026 07:05:00 +0000");
  EXPECT_EQ(FormatRfc5322Date(t, absl::FixedTimeZone(-5 * 3600)), "Sat, 21 Nov 2026 02:05:00 -0500");
}

}  // namespace
}  // namespace tern::mime
