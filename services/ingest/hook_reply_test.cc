#include "services/ingest/hook_reply.h"

#include <string>

#include "gtest/gtest.h"

namespace tern::ingest {
namespace {

TEST(HookRejectReply, BuildsOneSafeReplyLine) {
  struct Case {
    const char* label;
    uint32_t code;
    std::string text;
    std::string expected;
  };
  const Case cases[] = {
      {"keeps the hook's enhanced code", 550, "5.7.1 no thanks", "550 5.7.1 no thanks"},
      {"adds 5.7.1 to a 5xx", 554, "go away", "554 5.7.1 go away"},
      {"adds 4.7.1 to a 4xx", 451, "busy", "451 4.7.1 busy"},
      {"fixes the class of a mismatched code", 550, "4.2.2 full", "550 5.2.2 full"},
      {"keeps multi-digit subject and detail", 553, "5.10.123 odd", "553 5.10.123 odd"},
      {"not a code when glued to text", 550, "5.7.1x no", "550 5.7.1 5.7.1x no"},
      {"drops a repeated reply code", 550, "550 5.7.1 spam", "550 5.7.1 spam"},
      {"drops a repeated multi-line code", 450, "450-4.2.0 wait", "450 4.2.0 wait"},
      {"empty 5xx text", 550, "", "550 5.7.1 Message rejected by policy"},
      {"empty 4xx text", 421, "  ", "421 4.7.1 Message temporarily rejected by policy, try again later"},
      {"enhanced code alone", 550, "5.7.26", "550 5.7.26 Message rejected by policy"},
      {"CR LF cannot start a second reply", 550, "no\r\n250 2.0.0 Ok", "550 5.7.1 no  250 2.0.0 Ok"},
      {"other controls become spaces", 550, "a\tb\x01" "c", "550 5.7.1 a b c"},
      {"non-ASCII becomes ?", 550, "caf\xc3\xa9", "550 5.7.1 caf??"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    absl::StatusOr<std::string> reply = HookRejectReply(c.code, c.text);
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(*reply, c.expected);
  }
}

TEST(HookRejectReply, RefusesCodesOutside4xxAnd5xx) {
  for (uint32_t code : {0u, 250u, 354u, 399u, 600u, 1550u}) {
    SCOPED_TRACE(code);
    absl::StatusOr<std::string> reply = HookRejectReply(code, "5.7.1 no");
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(reply.status().message().find(std::to_string(code)), std::string::npos) << reply.status();
  }
  EXPECT_TRUE(HookRejectReply(400, "x").ok());
  EXPECT_TRUE(HookRejectReply(599, "x").ok());
}

TEST(HookRejectReply, BoundsTheLineLength) {
  absl::StatusOr<std::string> reply = HookRejectReply(550, "5.7.1 " + std::string(5000, 'x'));
  ASSERT_TRUE(reply.ok());
  // RFC 5321 §4.5.3.1.5: 512 octets with CRLF.
  EXPECT_LE(reply->size() + 2, 512u);
  EXPECT_EQ(reply->rfind("550 5.7.1 xxx", 0), 0u);
}

}  // namespace
}  // namespace tern::ingest
