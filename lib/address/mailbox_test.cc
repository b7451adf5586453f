#include "lib/address/mailbox.h"

#include <string>

#include "gtest/gtest.h"

namespace tern::address {
namespace {

PathOptions Mail() {
  PathOptions o;
  o.allow_null = true;
  return o;
}
PathOptions Rcpt() {
  PathOptions o;
  o.allow_postmaster = true;
  return o;
}
PathOptions Utf8(PathOptions o) {
  o.smtputf8 = true;
  return o;
}

TEST(ParsePath, AcceptsValidPaths) {
  struct Case {
    const char* label;
    std::string input;
    PathOptions options;
    std::string local;
    std::string domain;
  };
  const Case cases[] = {
      {"plain", "<user@example.com>", Rcpt(), "user", "example.com"},
      {"dots and atext", "<first.last+tag!#$%&'*/=?^_`{|}~-@sub.example.co>", Rcpt(),
       "first.last+tag!#$%&'*/=?^_`{|}~-", "sub.example.co"},
      {"case kept", "<User@Example.COM>", Rcpt(), "User", "Example.COM"},
      {"null sender", "<>", Mail(), "", ""},
      {"quoted local", "<\"john doe\"@example.com>", Rcpt(), "\"john doe\"", "example.com"},
      {"quoted with specials", "<\"a@b>c\\\"d\"@example.com>", Rcpt(), "\"a@b>c\\\"d\"", "example.com"},
      {"ipv4 literal", "<u@[192.0.2.1]>", Rcpt(), "u", "[192.0.2.1]"},
      {"ipv6 literal", "<u@[IPv6:2001:db8::1]>", Rcpt(), "u", "[IPv6:2001:db8::1]"},
      {"ipv6 tag case", "<u@[ipv6:::1]>", Rcpt(), "u", "[ipv6:::1]"},
      {"source route dropped", "<@a.example,@b.example:user@d.example>", Rcpt(), "user", "d.example"},
      {"single hop route", "<@relay.example:u@d.example>", Rcpt(), "u", "d.example"},
      {"postmaster", "<Postmaster>", Rcpt(), "Postmaster", ""},
      {"postmaster lower", "<postmaster>", Rcpt(), "postmaster", ""},
      {"postmaster with domain", "<postmaster@example.com>", Rcpt(), "postmaster", "example.com"},
      {"digit labels", "<u@123.example>", Rcpt(), "u", "123.example"},
      {"hyphen inside", "<u@a-b.example>", Rcpt(), "u", "a-b.example"},
      {"single label", "<u@localhost>", Rcpt(), "u", "localhost"},
      {"utf8 local", "<j\xc3\xbcrgen@example.com>", Utf8(Rcpt()), "j\xc3\xbcrgen", "example.com"},
      {"utf8 domain", "<u@b\xc3\xbc\x63her.example>", Utf8(Rcpt()), "u", "b\xc3\xbc\x63her.example"},
      {"utf8 4-byte", "<\xf0\x9f\x98\x80@example.com>", Utf8(Rcpt()), "\xf0\x9f\x98\x80", "example.com"},
      {"64 octet local", "<" + std::string(64, 'a') + "@example.com>", Rcpt(), std::string(64, 'a'), "example.com"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    auto got = ParsePath(c.input, c.options);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->local, c.local);
    EXPECT_EQ(got->domain, c.domain);
  }
}

TEST(ParsePath, RejectsBadPaths) {
  struct Case {
    const char* label;
    std::string input;
    PathOptions options;
    absl::StatusCode code;
  };
  const auto kSyntax = absl::StatusCode::kInvalidArgument;
  const std::string long_label(64, 'a');
  const std::string label50(50, 'a');
  const Case cases[] = {
      {"empty", "", Rcpt(), kSyntax},
      {"no brackets", "user@example.com", Rcpt(), kSyntax},
      {"null rcpt", "<>", Rcpt(), kSyntax},
      {"unclosed", "<user@example.com", Rcpt(), kSyntax},
      {"no domain", "<user>", Rcpt(), kSyntax},
      {"postmaster for mail", "<postmaster>", Mail(), kSyntax},
      {"empty domain", "<user@>", Rcpt(), kSyntax},
      {"empty local", "<@example.com>", Rcpt(), kSyntax},
      {"leading dot", "<.user@example.com>", Rcpt(), kSyntax},
      {"trailing dot", "<user.@example.com>", Rcpt(), kSyntax},
      {"double dot", "<a..b@example.com>", Rcpt(), kSyntax},
      {"space in local", "<us er@example.com>", Rcpt(), kSyntax},
      {"two ats", "<a@b@example.com>", Rcpt(), kSyntax},
      {"domain trailing dot", "<u@example.com.>", Rcpt(), kSyntax},
      {"domain empty label", "<u@example..com>", Rcpt(), kSyntax},
      {"domain leading hyphen", "<u@-example.com>", Rcpt(), kSyntax},
      {"domain trailing hyphen", "<u@example-.com>", Rcpt(), kSyntax},
      {"domain underscore", "<u@ex_ample.com>", Rcpt(), kSyntax},
      {"label over 63", "<u@" + long_label + ".com>", Rcpt(), kSyntax},
      {"local over 64", "<" + std::string(65, 'a') + "@example.com>", Rcpt(), kSyntax},
      {"domain over 255", "<u@" + label50 + "." + label50 + "." + label50 + "." + label50 + "." + label50 + ".example>",
       Rcpt(), kSyntax},
      {"path over 256", "<" + std::string(64, 'a') + "@" + std::string(60, 'b') + "." + std::string(60, 'c') + "." +
           std::string(60, 'd') + "." + std::string(10, 'e') + ">",
       Rcpt(), kSyntax},
      {"bad ipv4", "<u@[192.0.2.256]>", Rcpt(), kSyntax},
      {"short ipv4", "<u@[192.0.2]>", Rcpt(), kSyntax},
      {"bad ipv6", "<u@[IPv6:2001:db8:::1:2:3:4:5:6]>", Rcpt(), kSyntax},
      {"ipv6 without tag", "<u@[2001:db8::1]>", Rcpt(), kSyntax},
      {"general literal", "<u@[x-foo:bar]>", Rcpt(), kSyntax},
      {"unclosed literal", "<u@[1.2.3.4>", Rcpt(), kSyntax},
      {"unterminated quote", "<\"abc@example.com>", Rcpt(), kSyntax},
      {"control in quote", "<\"a\tb\"@example.com>", Rcpt(), kSyntax},
      {"bad route", "<@a.example u@d.example>", Rcpt(), kSyntax},
      {"route without colon", "<@a.example,u@d.example>", Rcpt(), kSyntax},
      {"literal in route", "<@[1.2.3.4]:u@d.example>", Rcpt(), kSyntax},
      {"trailing text", "<u@example.com>x", Rcpt(), kSyntax},
      {"utf8 without smtputf8", "<j\xc3\xbcrgen@example.com>", Rcpt(), absl::StatusCode::kFailedPrecondition},
      {"utf8 domain without smtputf8", "<u@b\xc3\xbc.example>", Rcpt(), absl::StatusCode::kFailedPrecondition},
      {"invalid utf8", "<j\xc3(rgen@example.com>", Utf8(Rcpt()), kSyntax},
      {"overlong utf8", "<\xc0\xafx@example.com>", Utf8(Rcpt()), kSyntax},
      {"surrogate utf8", "<\xed\xa0\x80@example.com>", Utf8(Rcpt()), kSyntax},
      {"nul", std::string("<a\0b@example.com>", 18), Rcpt(), kSyntax},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    auto got = ParsePath(c.input, c.options);
    ASSERT_FALSE(got.ok()) << got->ToString();
    EXPECT_EQ(got.status().code(), c.code) << got.status();
    EXPECT_FALSE(got.status().message().empty());
  }
}

TEST(ParsePath, RejectsIpv6LiteralWithNulOctet) {
  // Found by address_fuzz: inet_pton stopped at the NUL, so the text after
  // it, control characters included, ended up in the domain.
  const std::string input = std::string("<u@[IPv6:2001:db8::2") + '\0' + "\x01garbage]>";
  auto got = ParsePath(input, Rcpt());
  ASSERT_FALSE(got.ok()) << got->ToString();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParsePathPrefix, ReportsConsumedLengthAndLeavesParameters) {
  auto got = ParsePathPrefix("<a@b.example> SIZE=10", Mail());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->consumed, 13u);
  EXPECT_EQ(got->mailbox.ToString(), "a@b.example");

  auto quoted = ParsePathPrefix("<\"x> y\"@b.example> BODY=8BITMIME", Mail());
  ASSERT_TRUE(quoted.ok()) << quoted.status();
  EXPECT_EQ(quoted->consumed, 18u);
}

TEST(ParsePathPrefix, AcceptsMissingBracketsOnlyWhenAllowed) {
  PathOptions o = Mail();
  o.allow_missing_brackets = true;
  auto got = ParsePathPrefix("a@b.example SIZE=1", o);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->consumed, 11u);
  EXPECT_EQ(got->mailbox.domain, "b.example");
  EXPECT_FALSE(ParsePathPrefix("a@b.example SIZE=1", Mail()).ok());
  EXPECT_FALSE(ParsePathPrefix("a@b.example>", o).ok());
}

TEST(ParsePathPrefix, FlagsNonAscii) {
  auto ascii = ParsePathPrefix("<a@b.example>", Utf8(Mail()));
  ASSERT_TRUE(ascii.ok());
  EXPECT_FALSE(ascii->non_ascii);
  auto utf8 = ParsePathPrefix("<\xc3\xa9@b.example>", Utf8(Mail()));
  ASSERT_TRUE(utf8.ok());
  EXPECT_TRUE(utf8->non_ascii);
}

TEST(Mailbox, ToStringRebuildsThePath) {
  EXPECT_EQ((Mailbox{"a", "b.example"}).ToString(), "a@b.example");
  EXPECT_EQ((Mailbox{"\"a b\"", "[1.2.3.4]"}).ToString(), "\"a b\"@[1.2.3.4]");
  EXPECT_EQ(Mailbox{}.ToString(), "");
  EXPECT_TRUE(Mailbox{}.null());
  EXPECT_TRUE((Mailbox{"a", "[1.2.3.4]"}).is_address_literal());
}

TEST(ParseMailbox, ParsesBareMailboxes) {
  auto got = ParseMailbox("user@example.com", false);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->local, "user");
  EXPECT_FALSE(ParseMailbox("<user@example.com>", false).ok());
  EXPECT_FALSE(ParseMailbox("user@example.com x", false).ok());
  EXPECT_FALSE(ParseMailbox("", false).ok());
}

TEST(CanonicalHostName, LowerCasesAndDropsTrailingDots) {
  EXPECT_EQ(CanonicalHostName("MX.Example.COM."), "mx.example.com");
  EXPECT_EQ(CanonicalHostName("a.b.."), "a.b");
  EXPECT_EQ(CanonicalHostName("."), "");
  EXPECT_EQ(CanonicalHostName(""), "");
}

TEST(IsValidDomain, ChecksLabels) {
  EXPECT_TRUE(IsValidDomain("a.b", false));
  EXPECT_FALSE(IsValidDomain("a..b", false));
  EXPECT_FALSE(IsValidDomain(std::string(256, 'a'), false));
  EXPECT_FALSE(IsValidDomain("b\xc3\xbc.example", false));
  EXPECT_TRUE(IsValidDomain("b\xc3\xbc.example", true));
}

}  // namespace
}  // namespace tern::address
