#include "lib/smtp/reply_parser.h"

#include <chrono>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tern::smtp {
namespace {

// Feeds all lines; returns the reply or the first error.
absl::StatusOr<SmtpReply> ParseAll(const std::vector<std::string>& lines, ReplyParser::Options options = {}) {
  ReplyParser parser(options);
  for (size_t i = 0; i < lines.size(); ++i) {
    absl::StatusOr<bool> done = parser.Feed(lines[i]);
    if (!done.ok()) {
      return done.status();
    }
    if (*done) {
      EXPECT_EQ(i + 1, lines.size()) << "reply completed before the last line";
      return parser.TakeReply();
    }
  }
  return absl::OutOfRangeError("incomplete");
}

TEST(ReplyParser, ParsesSingleLineWithEnhancedCode) {
  auto reply = ParseAll({"250 2.1.5 Ok"});
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->code, 250);
  ASSERT_TRUE(reply->enhanced.has_value());
  EXPECT_EQ(reply->enhanced->ToString(), "2.1.5");
  EXPECT_EQ(reply->Text(), "Ok");
  EXPECT_EQ(reply->ToString(), "250 2.1.5 Ok");
}

TEST(ReplyParser, ParsesMultiDigitEnhancedCode) {
  auto reply = ParseAll({"550 5.7.26 Unauthenticated email from example.com is not accepted"});
  ASSERT_TRUE(reply.ok()) << reply.status();
  ASSERT_TRUE(reply->enhanced.has_value());
  EXPECT_EQ(*reply->enhanced, (EnhancedStatusCode{5, 7, 26}));
  EXPECT_EQ(reply->Text(), "Unauthenticated email from example.com is not accepted");
}

TEST(ReplyParser, ParsesThreeDigitSubjectAndDetail) {
  auto reply = ParseAll({"451 4.123.456 odd but legal"});
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(*reply->enhanced, (EnhancedStatusCode{4, 123, 456}));
}

TEST(ReplyParser, ReplyWithoutEnhancedCodeHasNone) {
  auto reply = ParseAll({"550 No such user"});
  ASSERT_TRUE(reply.ok());
  EXPECT_FALSE(reply->enhanced.has_value());
  EXPECT_EQ(reply->Text(), "No such user");
  EXPECT_EQ(DefaultEnhancedStatus(reply->code).ToString(), "5.0.0");
  EXPECT_EQ(DefaultEnhancedStatus(421).ToString(), "4.0.0");
}

TEST(ReplyParser, EnhancedCodeOfOtherClassStaysText) {
  auto reply = ParseAll({"250 5.1.1 confused server"});
  ASSERT_TRUE(reply.ok());
  EXPECT_FALSE(reply->enhanced.has_value());
  EXPECT_EQ(reply->Text(), "5.1.1 confused server");
}

TEST(ReplyParser, NotAnEnhancedCodeWhenGlued) {
  struct Case {
    const char* label;
    const char* line;
  } cases[] = {
      {"four digits", "550 5.1.1234 x"},
      {"letter after", "550 5.1.1x y"},
      {"two parts", "550 5.1 x"},
      {"no digits", "550 5..1 x"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    auto reply = ParseAll({c.line});
    ASSERT_TRUE(reply.ok());
    EXPECT_FALSE(reply->enhanced.has_value());
  }
}

TEST(ReplyParser, JoinsMultilineReply) {
  auto reply = ParseAll({"452-4.2.2 Mailbox full", "452 4.2.2 try later"});
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->code, 452);
  EXPECT_EQ(reply->enhanced->ToString(), "4.2.2");
  EXPECT_EQ(reply->lines.size(), 2u);
  EXPECT_EQ(reply->Text(), "Mailbox full try later");  // no trailing space, unlike Haraka
}

TEST(ReplyParser, AcceptsBareCodeLines) {
  auto reply = ParseAll({"250-", "250"});
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->code, 250);
  EXPECT_EQ(reply->Text(), "");
}

TEST(ReplyParser, RejectsMixedCodesInMultilineReply) {
  auto reply = ParseAll({"250-first", "251 second"});
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReplyParser, RejectsGarbage) {
  struct Case {
    const char* label;
    std::string line;
  } cases[] = {
      {"words", "hello there"},
      {"empty", ""},
      {"short", "25"},
      {"code 1xx", "199 nope"},
      {"code 6xx", "600 nope"},
      {"missing space", "250OK"},
      {"tab separator", "250\tOK"},
      {"binary", std::string("\x00\xff\x01", 3)},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    auto reply = ParseAll({c.line});
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument) << reply.status();
  }
}

TEST(ReplyParser, GarbageErrorQuotesLineEscaped) {
  ReplyParser parser;
  auto done = parser.Feed("hello\r there");
  ASSERT_FALSE(done.ok());
  EXPECT_NE(done.status().message().find("hello\\r there"), std::string::npos) << done.status();
}

TEST(ReplyParser, RejectsTooLongLine) {
  ReplyParser::Options options;
  options.max_line_length = 100;
  EXPECT_TRUE(ParseAll({"250 " + std::string(96, 'x')}, options).ok());
  EXPECT_EQ(ParseAll({"250 " + std::string(97, 'x')}, options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReplyParser, RejectsTooManyLines) {
  ReplyParser::Options options;
  options.max_lines = 3;
  EXPECT_TRUE(ParseAll({"250-a", "250-b", "250 c"}, options).ok());
  EXPECT_FALSE(ParseAll({"250-a", "250-b", "250-c", "250 d"}, options).ok());
}

TEST(ReplyParser, ResetsBetweenReplies) {
  ReplyParser parser;
  ASSERT_TRUE(*parser.Feed("220 hi"));
  EXPECT_EQ(parser.TakeReply().code, 220);
  EXPECT_FALSE(parser.in_progress());
  ASSERT_FALSE(*parser.Feed("250-a"));
  EXPECT_TRUE(parser.in_progress());
  ASSERT_TRUE(*parser.Feed("250 b"));
  EXPECT_EQ(parser.TakeReply().lines.size(), 2u);
}

TEST(ReplyParser, FeedAfterCompleteIsAnError) {
  ReplyParser parser;
  ASSERT_TRUE(*parser.Feed("250 ok"));
  EXPECT_FALSE(parser.Feed("250 again").ok());
}

SmtpReply Ehlo(std::vector<std::string> lines) {
  SmtpReply reply;
  reply.code = 250;
  reply.lines = std::move(lines);
  return reply;
}

TEST(EhloCapabilities, ParsesCommonKeywords) {
  EhloCapabilities caps = ParseEhloCapabilities(Ehlo({"mx.example.com Hello", "PIPELINING", "SIZE 10240000",
                                                      "8BITMIME", "smtputf8", "STARTTLS", "AUTH PLAIN LOGIN",
                                                      "DSN", "ENHANCEDSTATUSCODES", "CHUNKING", "RequireTLS"}));
  EXPECT_TRUE(caps.pipelining);
  EXPECT_TRUE(caps.size);
  EXPECT_EQ(caps.size_limit, 10240000u);
  EXPECT_TRUE(caps.eight_bit_mime);
  EXPECT_TRUE(caps.smtputf8);
  EXPECT_TRUE(caps.starttls);
  EXPECT_TRUE(caps.dsn);
  EXPECT_TRUE(caps.enhanced_status_codes);
  EXPECT_TRUE(caps.chunking);
  EXPECT_TRUE(caps.requiretls);
  EXPECT_EQ(caps.auth_mechanisms, (std::vector<std::string>{"PLAIN", "LOGIN"}));
}

TEST(EhloCapabilities, GreetingLineIsNotAKeyword) {
  EhloCapabilities caps = ParseEhloCapabilities(Ehlo({"PIPELINING"}));
  EXPECT_FALSE(caps.pipelining);
  EXPECT_FALSE(ParseEhloCapabilities(Ehlo({"REQUIRETLS", "PIPELINING"})).requiretls);
}

TEST(EhloCapabilities, SizeWithoutOrWithBadLimit) {
  EXPECT_TRUE(ParseEhloCapabilities(Ehlo({"x", "SIZE"})).size);
  EXPECT_EQ(ParseEhloCapabilities(Ehlo({"x", "SIZE"})).size_limit, 0u);
  EXPECT_EQ(ParseEhloCapabilities(Ehlo({"x", "SIZE lots"})).size_limit, 0u);
}

TEST(EhloCapabilities, OldStyleAuthEqualsAndDuplicates) {
  EhloCapabilities caps = ParseEhloCapabilities(Ehlo({"x", "AUTH=LOGIN PLAIN", "AUTH login cram-md5"}));
  EXPECT_EQ(caps.auth_mechanisms, (std::vector<std::string>{"LOGIN", "PLAIN", "CRAM-MD5"}));
}

TEST(EhloCapabilities, ManyDistinctAuthMechanismsParseQuickly) {
  // The largest reply the parser lets through (256 lines of 4 KiB) naming
  // ~240,000 distinct mechanisms: the duplicate check once scanned every
  // mechanism kept so far for each one, about 30 s of the worker's thread.
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
  std::vector<std::string> lines = {"mx.example.com"};
  size_t next = 0;
  while (lines.size() < 256) {
    std::string line = "AUTH";
    while (line.size() + 5 <= 4096) {
      line += ' ';
      for (size_t k = next++; ; k /= alphabet.size()) {
        line += alphabet[k % alphabet.size()];
        if (k < alphabet.size()) {
          break;
        }
      }
    }
    lines.push_back(std::move(line));
  }
  lines.back() += " a";  // the first name again, in lower case: kept once
  const auto start = std::chrono::steady_clock::now();
  EhloCapabilities caps = ParseEhloCapabilities(Ehlo(std::move(lines)));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(caps.auth_mechanisms.size(), next);
}

TEST(EhloCapabilities, NothingOfferedByHeloStyleReply) {
  EhloCapabilities caps = ParseEhloCapabilities(Ehlo({"mx.example.com"}));
  EXPECT_FALSE(caps.pipelining || caps.size || caps.starttls || caps.smtputf8 || caps.eight_bit_mime);
  EXPECT_TRUE(caps.auth_mechanisms.empty());
}

}  // namespace
}  // namespace tern::smtp
