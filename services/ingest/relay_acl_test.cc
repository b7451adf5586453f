#include "services/ingest/relay_acl.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tern::ingest {
namespace {

TEST(RelayAcl, MatchesIpv4AndIpv6Networks) {
  auto acl = RelayAcl::Parse(
      "# clients allowed to relay\n"
      "192.0.2.0/24\n"
      "  10.1.2.3   # one host\n"
      "\n"
      "2001:db8::/32\n"
      "198.51.100.77/20\n"   // host bits set: the network is 198.51.96.0/20
      "0.0.0.0/0\n",
      "relay_acl_allow");
  ASSERT_TRUE(acl.ok()) << acl.status();
  ASSERT_EQ(acl->networks().size(), 5u);

  auto only = RelayAcl::Parse("192.0.2.0/24\n10.1.2.3\n2001:db8::/32\n198.51.100.77/20\n", "x");
  ASSERT_TRUE(only.ok());
  struct Case {
    const char* label;
    const char* ip;
    bool allowed;
  };
  const Case cases[] = {
      {"inside /24", "192.0.2.200", true},
      {"outside /24", "192.0.3.1", false},
      {"single host", "10.1.2.3", true},
      {"next to single host", "10.1.2.4", false},
      {"inside v6 /32", "2001:db8:ffff::1", true},
      {"outside v6", "2001:db9::1", false},
      {"host bits ignored low", "198.51.96.1", true},
      {"host bits ignored high", "198.51.111.255", true},
      {"outside /20", "198.51.112.0", false},
      {"v4-mapped v6 client", "::ffff:192.0.2.9", true},
      {"loopback not listed", "127.0.0.1", false},
      {"v6 loopback not listed", "::1", false},
      {"garbage", "not-an-ip", false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    EXPECT_EQ(only->Allows(c.ip), c.allowed);
  }
  EXPECT_TRUE(acl->Allows("203.0.113.5"));  // 0.0.0.0/0
  EXPECT_FALSE(acl->Allows("2001:db9::1")); // /0 is IPv4 only
}

TEST(RelayAcl, DefaultAllowsOnlyLoopback) {
  RelayAcl acl = RelayAcl::Default();
  EXPECT_TRUE(acl.Allows("127.0.0.1"));
  EXPECT_TRUE(acl.Allows("::1"));
  EXPECT_TRUE(acl.Allows("::ffff:127.0.0.1"));
  EXPECT_FALSE(acl.Allows("127.0.0.2"));
  EXPECT_FALSE(acl.Allows("192.0.2.1"));
}

TEST(RelayAcl, EmptyFileAllowsNobody) {
  auto acl = RelayAcl::Parse("# nothing\n\n", "relay_acl_allow");
  ASSERT_TRUE(acl.ok());
  EXPECT_FALSE(acl->Allows("127.0.0.1"));
}

TEST(RelayAcl, BadLinesNameFileAndLine) {
  struct Case {
    const char* label;
    const char* text;
    const char* where;
  };
  const Case cases[] = {
      {"hostname", "127.0.0.1\nlocalhost\n", "relay_acl_allow:2:"},
      {"v4 prefix too long", "192.0.2.0/33\n", "relay_acl_allow:1:"},
      {"v6 prefix too long", "\n\n2001:db8::/129\n", "relay_acl_allow:3:"},
      {"negative prefix", "192.0.2.0/-1\n", "relay_acl_allow:1:"},
      {"empty prefix", "192.0.2.0/\n", "relay_acl_allow:1:"},
      {"text prefix", "192.0.2.0/abc\n", "relay_acl_allow:1:"},
      {"bad octet", "# c\n192.0.2.256\n", "relay_acl_allow:2:"},
      {"two entries on a line", "192.0.2.1 192.0.2.2\n", "relay_acl_allow:1:"},
      {"zone id", "fe80::1%eth0\n", "relay_acl_allow:1:"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    auto acl = RelayAcl::Parse(c.text, "relay_acl_allow");
    ASSERT_FALSE(acl.ok());
    EXPECT_EQ(acl.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(acl.status().message().find(c.where), absl::string_view::npos) << acl.status();
  }
}

TEST(Cidr, ParsesSingleAddressesAsFullPrefix) {
  auto v4 = Cidr::Parse("192.0.2.1");
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->prefix, 32);
  auto v6 = Cidr::Parse("2001:db8::1");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->prefix, 128);
  EXPECT_TRUE(v6->Contains(*IpAddress::Parse("2001:db8::1")));
  EXPECT_FALSE(v6->Contains(*IpAddress::Parse("2001:db8::2")));
}

TEST(RelayClientCerts, TakesFingerprintsAsOpensslPrintsThemOrAsPlainHex) {
  const std::string a(64, 'a');
  const std::string b = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  std::string colons;
  for (size_t i = 0; i < b.size(); i += 2) {
    absl::StrAppend(&colons, i == 0 ? "" : ":", absl::AsciiStrToUpper(b.substr(i, 2)));
  }
  auto certs = RelayClientCerts::Parse(absl::StrCat("# pinned\n", a, "  # one\n\nsha256 Fingerprint=", colons,
                                                    "\n"),
                                       "relay_clientcerts");
  ASSERT_TRUE(certs.ok()) << certs.status();
  EXPECT_EQ(certs->size(), 2u);
  EXPECT_TRUE(certs->Allows(a, ""));
  EXPECT_TRUE(certs->Allows("", b));  // by its public key
  EXPECT_TRUE(certs->Allows(std::string(64, 'c'), b));
  EXPECT_FALSE(certs->Allows(std::string(64, 'c'), std::string(64, 'd')));
  EXPECT_FALSE(certs->Allows("", ""));  // no certificate
  EXPECT_FALSE(RelayClientCerts().Allows(a, b));
}

TEST(RelayClientCerts, BadLinesNameFileAndLine) {
  for (const std::string& bad : {std::string(40, 'a'),  // SHA-1
                                std::string(63, 'a') + "g", std::string(65, 'a'), std::string("sha256:")}) {
    auto certs = RelayClientCerts::Parse(absl::StrCat(std::string(64, 'a'), "\n", bad, "\n"), "relay_clientcerts");
    ASSERT_FALSE(certs.ok()) << bad;
    EXPECT_TRUE(absl::StartsWith(certs.status().message(), "relay_clientcerts:2: ")) << certs.status();
    EXPECT_TRUE(absl::StrContains(certs.status().message(), "SHA-256 fingerprint")) << certs.status();
  }
}

}  // namespace
}  // namespace tern::ingest
