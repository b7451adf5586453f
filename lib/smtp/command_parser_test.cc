#include "lib/smtp/command_parser.h"

#include <string>

#include "gtest/gtest.h"

namespace tern::smtp {
namespace {

const ParseContext kEsmtp{.esmtp = true, .smtputf8 = false};
const ParseContext kHelo{.esmtp = false, .smtputf8 = false};
const ParseContext kUtf8Txn{.esmtp = true, .smtputf8 = true};

Command MustParse(absl::string_view line, const ParseContext& ctx = kEsmtp) {
  ParseResult r = ParseCommand(line, ctx);
  if (auto* e = std::get_if<CommandError>(&r)) {
    ADD_FAILURE() << "unexpected error for '" << line << "': " << e->ToString();
    return {};
  }
  return std::get<Command>(std::move(r));
}

TEST(ParseCommand, RecognisesVerbsCaseInsensitively) {
  struct Case {
    const char* label;
    const char* line;
    Verb verb;
    const char* argument;
  };
  const Case cases[] = {
      {"ehlo", "EHLO client.example", Verb::kEhlo, "client.example"},
      {"ehlo lower", "ehlo client.example", Verb::kEhlo, "client.example"},
      {"helo mixed", "HeLo [192.0.2.1]", Verb::kHelo, "[192.0.2.1]"},
      {"data", "DATA", Verb::kData, ""},
      {"data trailing space", "data ", Verb::kData, ""},
      {"rset", "RSET", Verb::kRset, ""},
      {"noop with arg", "NOOP hello", Verb::kNoop, "hello"},
      {"quit", "quit", Verb::kQuit, ""},
      {"vrfy", "VRFY user", Verb::kVrfy, "user"},
      {"help", "HELP", Verb::kHelp, ""},
      {"help topic", "HELP MAIL", Verb::kHelp, "MAIL"},
      {"starttls", "STARTTLS", Verb::kStarttls, ""},
      {"auth", "AUTH PLAIN", Verb::kAuth, "PLAIN"},
      {"bdat", "BDAT 100 LAST", Verb::kBdat, "100 LAST"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    Command cmd = MustParse(c.line);
    EXPECT_EQ(cmd.verb, c.verb);
    EXPECT_EQ(cmd.argument, c.argument);
  }
}

TEST(ParseCommand, RejectsBadCommandsWithTheRightReply) {
  struct Case {
    const char* label;
    std::string line;
    ParseContext ctx;
    int code;
    const char* enhanced;
  };
  const Case cases[] = {
      {"unknown verb", "XYZZY", kEsmtp, 500, "5.5.2"},
      {"expn unsupported", "EXPN list", kEsmtp, 500, "5.5.2"},
      {"verb glued", "MAIL:FROM:<a@b.example>", kEsmtp, 500, "5.5.2"},
      {"empty", "", kEsmtp, 500, "5.5.2"},
      {"spaces only", "   ", kEsmtp, 500, "5.5.2"},
      {"nul", std::string("NOOP\0x", 6), kEsmtp, 500, "5.5.2"},
      {"bare cr", "NOOP a\rb", kEsmtp, 500, "5.5.2"},
      {"ehlo without host", "EHLO", kEsmtp, 501, "5.5.4"},
      {"helo without host", "HELO ", kEsmtp, 501, "5.5.4"},
      {"data with argument", "DATA now", kEsmtp, 501, "5.5.4"},
      {"rset with argument", "RSET x", kEsmtp, 501, "5.5.4"},
      {"quit with argument", "QUIT now", kEsmtp, 501, "5.5.4"},
      {"vrfy without argument", "VRFY", kEsmtp, 501, "5.5.4"},
      {"auth without mechanism", "AUTH", kEsmtp, 501, "5.5.4"},
      {"mail without from", "MAIL <a@b.example>", kEsmtp, 501, "5.5.4"},
      {"mail from nothing", "MAIL FROM:", kEsmtp, 501, "5.5.4"},
      {"mail bad path", "MAIL FROM:<a@@b.example>", kEsmtp, 553, "5.1.7"},
      {"mail unclosed", "MAIL FROM:<a@b.example", kEsmtp, 553, "5.1.7"},
      {"mail glued params", "MAIL FROM:<a@b.example>SIZE=1", kEsmtp, 553, "5.1.7"},
      {"mail unknown param", "MAIL FROM:<a@b.example> FOO=bar", kEsmtp, 555, "5.5.4"},
      {"mail rcpt param", "MAIL FROM:<a@b.example> NOTIFY=NEVER", kEsmtp, 555, "5.5.4"},
      {"mail binarymime", "MAIL FROM:<a@b.example> BODY=BINARYMIME", kEsmtp, 501, "5.5.4"},
      {"mail params after helo", "MAIL FROM:<a@b.example> SIZE=10", kHelo, 555, "5.5.4"},
      {"size not a number", "MAIL FROM:<a@b.example> SIZE=ten", kEsmtp, 501, "5.5.4"},
      {"size negative", "MAIL FROM:<a@b.example> SIZE=-1", kEsmtp, 501, "5.5.4"},
      {"size empty", "MAIL FROM:<a@b.example> SIZE=", kEsmtp, 501, "5.5.4"},
      {"size no value", "MAIL FROM:<a@b.example> SIZE", kEsmtp, 501, "5.5.4"},
      {"size too many digits", "MAIL FROM:<a@b.example> SIZE=123456789012345678901", kEsmtp, 501, "5.5.4"},
      {"duplicate param", "MAIL FROM:<a@b.example> SIZE=1 size=2", kEsmtp, 501, "5.5.4"},
      {"bad keyword", "MAIL FROM:<a@b.example> -X=1", kEsmtp, 501, "5.5.4"},
      {"smtputf8 with value", "MAIL FROM:<a@b.example> SMTPUTF8=yes", kEsmtp, 501, "5.5.4"},
      {"requiretls with value", "MAIL FROM:<a@b.example> REQUIRETLS=yes", kEsmtp, 501, "5.5.4"},
      {"requiretls after helo", "MAIL FROM:<a@b.example> REQUIRETLS", kHelo, 555, "5.5.4"},
      {"bad ret", "MAIL FROM:<a@b.example> RET=ALL", kEsmtp, 501, "5.5.4"},
      {"bad envid xtext", "MAIL FROM:<a@b.example> ENVID=a+2", kEsmtp, 501, "5.5.4"},
      {"envid lower hex", "MAIL FROM:<a@b.example> ENVID=a+2b", kEsmtp, 501, "5.5.4"},
      {"envid too long", "MAIL FROM:<a@b.example> ENVID=" + std::string(101, 'x'), kEsmtp, 501, "5.5.4"},
      {"envid decodes to control", "MAIL FROM:<a@b.example> ENVID=a+0Db", kEsmtp, 501, "5.5.4"},
      {"utf8 sender without smtputf8", "MAIL FROM:<\xc3\xa9@b.example>", kEsmtp, 553, "5.6.7"},
      {"rcpt without to", "RCPT <a@b.example>", kEsmtp, 501, "5.5.4"},
      {"rcpt null", "RCPT TO:<>", kEsmtp, 501, "5.1.3"},
      {"rcpt bad domain", "RCPT TO:<a@-b.example>", kEsmtp, 501, "5.1.3"},
      {"rcpt utf8 without smtputf8", "RCPT TO:<\xc3\xa9@b.example>", kEsmtp, 553, "5.6.7"},
      {"rcpt mail param", "RCPT TO:<a@b.example> SIZE=1", kEsmtp, 555, "5.5.4"},
      {"rcpt params after helo", "RCPT TO:<a@b.example> NOTIFY=NEVER", kHelo, 555, "5.5.4"},
      {"notify bad word", "RCPT TO:<a@b.example> NOTIFY=ALWAYS", kEsmtp, 501, "5.5.4"},
      {"notify never mixed", "RCPT TO:<a@b.example> NOTIFY=NEVER,FAILURE", kEsmtp, 501, "5.5.4"},
      {"notify repeated", "RCPT TO:<a@b.example> NOTIFY=DELAY,DELAY", kEsmtp, 501, "5.5.4"},
      {"notify empty item", "RCPT TO:<a@b.example> NOTIFY=DELAY,", kEsmtp, 501, "5.5.4"},
      {"orcpt no type", "RCPT TO:<a@b.example> ORCPT=a@b.example", kEsmtp, 501, "5.5.4"},
      {"orcpt empty address", "RCPT TO:<a@b.example> ORCPT=rfc822;", kEsmtp, 501, "5.5.4"},
      {"orcpt bad xtext", "RCPT TO:<a@b.example> ORCPT=rfc822;a+ZZ", kEsmtp, 501, "5.5.4"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    ParseResult r = ParseCommand(c.line, c.ctx);
    ASSERT_TRUE(std::holds_alternative<CommandError>(r)) << "accepted: " << c.line;
    const CommandError& e = std::get<CommandError>(r);
    EXPECT_EQ(e.code, c.code) << e.ToString();
    EXPECT_EQ(e.enhanced, c.enhanced) << e.ToString();
    EXPECT_FALSE(e.text.empty());
  }
}

TEST(ParseCommand, ParsesMailFromWithParameters) {
  Command cmd = MustParse("MAIL FROM:<a@b.example> SIZE=1000 BODY=8bitmime RET=HDRS ENVID=QQ+2B1+3D2");
  EXPECT_EQ(cmd.verb, Verb::kMail);
  EXPECT_EQ(cmd.path.ToString(), "a@b.example");
  ASSERT_TRUE(cmd.mail.size.has_value());
  EXPECT_EQ(*cmd.mail.size, 1000u);
  EXPECT_EQ(cmd.mail.body, BodyType::k8BitMime);
  EXPECT_EQ(cmd.mail.ret, DsnRet::kHdrs);
  EXPECT_EQ(cmd.mail.envid, "QQ+1=2");
  EXPECT_FALSE(cmd.mail.smtputf8);
  ASSERT_EQ(cmd.parameters.size(), 4u);
  EXPECT_EQ(cmd.parameters[1].keyword, "BODY");
  EXPECT_EQ(cmd.parameters[1].value, "8bitmime");
}

TEST(ParseCommand, ToleratesCommonClientQuirks) {
  struct Case {
    const char* label;
    const char* line;
    const char* path;
  };
  const Case cases[] = {
      {"space after colon", "MAIL FROM: <a@b.example>", "a@b.example"},
      {"several spaces", "MAIL FROM:   <a@b.example>  SIZE=5 ", "a@b.example"},
      {"lower-case from", "mail from:<a@b.example>", "a@b.example"},
      {"no brackets", "MAIL FROM:a@b.example", "a@b.example"},
      {"null sender", "MAIL FROM:<>", ""},
      {"null sender with space", "MAIL FROM: <>", ""},
      {"source route", "MAIL FROM:<@relay.example:a@b.example>", "a@b.example"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    Command cmd = MustParse(c.line);
    EXPECT_EQ(cmd.verb, Verb::kMail);
    EXPECT_EQ(cmd.path.ToString(), c.path);
  }
}

TEST(ParseCommand, SaturatesHugeSize) {
  Command cmd = MustParse("MAIL FROM:<a@b.example> SIZE=99999999999999999999");
  ASSERT_TRUE(cmd.mail.size.has_value());
  EXPECT_EQ(*cmd.mail.size, std::numeric_limits<uint64_t>::max());
}

TEST(ParseCommand, AllowsUtf8SenderOnlyWithSmtputf8) {
  Command cmd = MustParse("MAIL FROM:<j\xc3\xbcrgen@b.example> SMTPUTF8");
  EXPECT_TRUE(cmd.mail.smtputf8);
  EXPECT_TRUE(cmd.path_non_ascii);
  EXPECT_EQ(cmd.path.local, "j\xc3\xbcrgen");
}

TEST(ParseCommand, ParsesRequireTls) {
  EXPECT_TRUE(MustParse("MAIL FROM:<a@b.example> requiretls SIZE=10").mail.requiretls);
  EXPECT_FALSE(MustParse("MAIL FROM:<a@b.example> SIZE=10").mail.requiretls);
}

TEST(ParseCommand, ParsesRcptToWithDsnParameters) {
  Command cmd = MustParse("RCPT TO:<u@d.example> NOTIFY=success,Delay ORCPT=rfc822;u+2Bx@d.example");
  EXPECT_EQ(cmd.verb, Verb::kRcpt);
  EXPECT_EQ(cmd.path.ToString(), "u@d.example");
  EXPECT_EQ(cmd.rcpt.notify, kNotifySuccess | kNotifyDelay);
  EXPECT_EQ(cmd.rcpt.orcpt, "rfc822;u+x@d.example");

  Command never = MustParse("RCPT TO:<u@d.example> NOTIFY=NEVER");
  EXPECT_EQ(never.rcpt.notify, kNotifyNever);
}

TEST(ParseCommand, AcceptsPostmasterAndUtf8Recipients) {
  Command pm = MustParse("RCPT TO:<Postmaster>");
  EXPECT_EQ(pm.path.local, "Postmaster");
  EXPECT_TRUE(pm.path.domain.empty());

  Command utf8 = MustParse("RCPT TO:<\xc3\xa9@b\xc3\xbc.example>", kUtf8Txn);
  EXPECT_TRUE(utf8.path_non_ascii);
}

TEST(ParseCommand, AcceptsPlainMailAfterHelo) {
  Command cmd = MustParse("MAIL FROM:<a@b.example>", kHelo);
  EXPECT_EQ(cmd.verb, Verb::kMail);
  EXPECT_TRUE(cmd.parameters.empty());
}

TEST(DecodeXtext, DecodesHexcharsAndRejectsBadInput) {
  struct Case {
    const char* label;
    const char* in;
    bool ok;
    const char* out;
  };
  const Case cases[] = {
      {"plain", "abc", true, "abc"},
      {"plus", "a+2Bb", true, "a+b"},
      {"equals", "+3D", true, "="},
      {"empty", "", true, ""},
      {"lower hex", "+2b", false, ""},
      {"truncated", "a+2", false, ""},
      {"lone plus", "+", false, ""},
      {"raw equals", "a=b", false, ""},
      {"space", "a b", false, ""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    std::string out;
    EXPECT_EQ(DecodeXtext(c.in, &out), c.ok);
    if (c.ok) {
      EXPECT_EQ(out, c.out);
    }
  }
}

TEST(CommandError, RendersAReplyLine) {
  EXPECT_EQ((CommandError{555, "5.5.4", "Unsupported parameter FOO"}).ToString(),
            "555 5.5.4 Unsupported parameter FOO\r\n");
}

TEST(ParseCommand, ParsesBdatSizeAndLast) {
  Command cmd = MustParse("BDAT 1000");
  EXPECT_EQ(cmd.bdat_size, 1000u);
  EXPECT_FALSE(cmd.bdat_last);
  cmd = MustParse("bdat 0 last");
  EXPECT_EQ(cmd.bdat_size, 0u);
  EXPECT_TRUE(cmd.bdat_last);
  for (const char* bad : {"BDAT", "BDAT x", "BDAT 10 FIRST", "BDAT -1", "BDAT 1 LAST x", "BDAT 1234567890123456789"}) {
    SCOPED_TRACE(bad);
    ParseResult r = ParseCommand(bad, kEsmtp);
    ASSERT_TRUE(std::holds_alternative<CommandError>(r));
    EXPECT_EQ(std::get<CommandError>(r).code, 501);
  }
}

TEST(ParseCommand, ParsesAuthMechanismAndInitialResponse) {
  Command cmd = MustParse("AUTH plain AGFsaWNlAHNlY3JldA==");
  EXPECT_EQ(cmd.auth_mechanism, "PLAIN");
  ASSERT_TRUE(cmd.auth_initial.has_value());
  EXPECT_EQ(*cmd.auth_initial, "AGFsaWNlAHNlY3JldA==");
  cmd = MustParse("AUTH CRAM-MD5");
  EXPECT_EQ(cmd.auth_mechanism, "CRAM-MD5");
  EXPECT_FALSE(cmd.auth_initial.has_value());
  for (const char* bad : {"AUTH PL@IN", "AUTH PLAIN a b", "AUTH ABCDEFGHIJKLMNOPQRSTUVWXYZ"}) {
    SCOPED_TRACE(bad);
    ParseResult r = ParseCommand(bad, kEsmtp);
    ASSERT_TRUE(std::holds_alternative<CommandError>(r));
    EXPECT_EQ(std::get<CommandError>(r).code, 501);
  }
}

TEST(ParseCommand, AcceptsMailAuthParameter) {
  Command cmd = MustParse("MAIL FROM:<a@b.example> AUTH=user+2Bx@b.example");
  EXPECT_EQ(cmd.mail.auth, "user+x@b.example");
  cmd = MustParse("MAIL FROM:<a@b.example> AUTH=<>");
  EXPECT_EQ(cmd.mail.auth, "<>");
  ParseResult r = ParseCommand("MAIL FROM:<a@b.example> AUTH=bad+zz", kEsmtp);
  ASSERT_TRUE(std::holds_alternative<CommandError>(r));
  EXPECT_EQ(std::get<CommandError>(r).code, 501);
}

}  // namespace
}  // namespace tern::smtp
