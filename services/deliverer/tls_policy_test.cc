#include "services/deliverer/tls_policy.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "services/deliverer/host_flags.h"

namespace tern::deliverer {
namespace {

HostMatcher Matcher(std::vector<std::string> entries) {
  auto m = HostMatcher::Parse(entries);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

TEST(HostMatcher, FactsForceTlsVectors) {
  // haraka-outbound-facts.md §7: force_tls_hosts=['1.2.3.4','hit.example.com'].
  HostMatcher m = Matcher({"1.2.3.4", "hit.example.com"});
  EXPECT_TRUE(m.Matches("", "1.2.3.4", ""));          // exchange 1.2.3.4
  EXPECT_TRUE(m.Matches("1.2.3.4", "mx.other", ""));   // its IP
  EXPECT_FALSE(m.Matches("1.2.3.5", "1.2.3.5", "x"));  // exchange 1.2.3.5
  EXPECT_TRUE(m.Matches("", "", "hit.example.com"));   // domain
  EXPECT_TRUE(m.Matches("9.9.9.9", "HIT.example.com.", ""));
  EXPECT_FALSE(m.Matches("9.9.9.9", "miss.example.com", "example.com"));
}

TEST(HostMatcher, CidrBlocksAndSuffixes) {
  HostMatcher m = Matcher({"192.0.2.0/24", "2001:db8::/32", ".corp.example", " "});
  EXPECT_TRUE(m.Matches("192.0.2.200", "", ""));
  EXPECT_FALSE(m.Matches("192.0.3.1", "", ""));
  EXPECT_TRUE(m.Matches("2001:db8:ffff::1", "", ""));
  EXPECT_FALSE(m.Matches("2001:db9::1", "", ""));
  EXPECT_TRUE(m.Matches("::ffff:192.0.2.1", "", ""));  // mapped compares as IPv4
  EXPECT_TRUE(m.Matches("", "mx1.corp.example", ""));
  EXPECT_FALSE(m.Matches("", "corp.example.com", ""));
  EXPECT_FALSE(Matcher({}).Matches("1.2.3.4", "a", "b"));
  EXPECT_FALSE(HostMatcher::Parse({"10.0.0.0/33"}).ok());
  EXPECT_FALSE(HostMatcher::Parse({"nonsense/8"}).ok());
}

TEST(TlsDecide, ForcedWinsThenNoTlsThenBrokenThenOpportunistic) {
  TlsOutboundConfig c;
  c.force_tls_hosts = Matcher({"secure.test"});
  c.no_tls_hosts = Matcher({"10.0.0.0/8"});
  TlsDecision d = c.Decide(false, RouteTls::kOpportunistic, true, "10.1.1.1", "mx", "secure.test");
  EXPECT_EQ(d.mode, TlsMode::kRequired);
  EXPECT_TRUE(d.verify);
  EXPECT_EQ(d.why, "force_tls_hosts");
  EXPECT_EQ(c.Decide(true, RouteTls::kRequired, false, "1.1.1.1", "mx", "x").mode, TlsMode::kRequired);
  // Implicit TLS: required and verified whatever else says no, even in
  // no_tls_hosts, with TLS off or the host remembered as broken.
  d = c.Decide(false, RouteTls::kImplicit, true, "10.1.1.1", "mx", "x");
  EXPECT_EQ(d.mode, TlsMode::kRequired);
  EXPECT_TRUE(d.verify);
  EXPECT_EQ(d.why, "route tls=implicit");
  d = c.Decide(true, RouteTls::kOpportunistic, false, "10.1.1.1", "mx", "x");
  EXPECT_EQ(d.mode, TlsMode::kNone);
  EXPECT_EQ(d.why, "no_tls_hosts");
  EXPECT_EQ(c.Decide(false, RouteTls::kOpportunistic, false, "1.1.1.1", "mx", "x").mode, TlsMode::kNone);
  EXPECT_EQ(c.Decide(true, RouteTls::kNone, false, "1.1.1.1", "mx", "x").mode, TlsMode::kNone);
  d = c.Decide(true, RouteTls::kOpportunistic, true, "1.1.1.1", "mx", "x");
  EXPECT_EQ(d.mode, TlsMode::kNone);
  EXPECT_EQ(d.why, "broken_tls");
  d = c.Decide(true, RouteTls::kOpportunistic, false, "1.1.1.1", "mx", "x");
  EXPECT_EQ(d.mode, TlsMode::kOpportunistic);
  EXPECT_FALSE(d.verify);
  c.reject_unauthorized = true;
  EXPECT_TRUE(c.Decide(true, RouteTls::kOpportunistic, false, "1.1.1.1", "mx", "x").verify);
}

class TlsIniTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tls_policy_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  std::filesystem::path dir_;
};

TEST_F(TlsIniTest, OutboundInheritsFromMainExceptHostLists) {
  Write("tls.ini",
        "[main]\nrejectUnauthorized=true\nminVersion=TLSv1.2\nno_tls_hosts[]=1.2.3.4\n"
        "[outbound]\nciphers=HIGH:!aNULL\nforce_tls_hosts[]=hit.example.com\n");
  auto c = TlsOutboundConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->reject_unauthorized);
  EXPECT_EQ(c->min_version, "TLSv1.2");
  EXPECT_EQ(c->ciphers, "HIGH:!aNULL");
  EXPECT_TRUE(c->no_tls_hosts.empty());
  EXPECT_TRUE(c->force_tls_hosts.Matches("", "", "hit.example.com"));
  // The context Load built to check the settings is kept for the worker.
  ASSERT_NE(c->context, nullptr);
}

TEST_F(TlsIniTest, DefaultsWithoutAFile) {
  auto c = TlsOutboundConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->reject_unauthorized);
  EXPECT_TRUE(c->no_tls_hosts.empty());
  EXPECT_TRUE(c->MakeContext().ok());
}

TEST_F(TlsIniTest, BadValuesNameTheKey) {
  Write("tls.ini", "[outbound]\nminVersion=SSLv3\n");
  auto c = TlsOutboundConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("minVersion"), std::string::npos) << c.status();

  Write("tls.ini", "[outbound]\nciphers=NO-SUCH-CIPHER\n");
  c = TlsOutboundConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("ciphers"), std::string::npos) << c.status();

  Write("tls.ini", "[outbound]\ncert=client.pem\n");
  c = TlsOutboundConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("key"), std::string::npos) << c.status();

  Write("tls.ini", "[outbound]\ncert=missing.pem\nkey=missing.key\n");
  c = TlsOutboundConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("cert"), std::string::npos) << c.status();

  Write("tls.ini", "[outbound]\nforce_tls_hosts[]=10.0.0.0/99\n");
  c = TlsOutboundConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("force_tls_hosts"), std::string::npos) << c.status();
}

// HostFlags is a header-only helper of the same policy; tested here rather
// than in a test binary of its own.
TEST(HostFlags, ExpiresAndKeepsTheLaterExpiry) {
  HostFlags flags;
  flags.Set("192.0.2.1", kBrokenTlsFlag, 1000);
  flags.Set("192.0.2.1", kBrokenTlsFlag, 500);  // an older fact does not shorten it
  EXPECT_TRUE(flags.Has("192.0.2.1", kBrokenTlsFlag, 999));
  EXPECT_FALSE(flags.Has("192.0.2.1", kBrokenTlsFlag, 1000));
  EXPECT_FALSE(flags.Has("192.0.2.2", kBrokenTlsFlag, 0));
  EXPECT_FALSE(flags.Has("192.0.2.1", "other", 0));
  flags.Set("192.0.2.3", kBrokenTlsFlag, 5000);
  EXPECT_EQ(flags.Expire(2000), 1u);
}

TEST(HostFlags, KeepsTheReasonOfTheLatestExpiry) {
  HostFlags flags;
  flags.Set("192.0.2.1", kUnreachableFlag, 1000, "421 busy");
  flags.Set("192.0.2.1", kUnreachableFlag, 500, "older");
  EXPECT_EQ(flags.Reason("192.0.2.1", kUnreachableFlag), "421 busy");
  flags.Set("192.0.2.1", kUnreachableFlag, 2000, "connection refused");
  EXPECT_EQ(flags.Reason("192.0.2.1", kUnreachableFlag), "connection refused");
  EXPECT_EQ(flags.Reason("192.0.2.1", kBrokenTlsFlag), "");
}

TEST(HostFlags, AClearingDropsTheFlagItEndedButNotOneSetAgainSince) {
  HostFlags flags;
  flags.Set("192.0.2.1", kUnreachableFlag, 1000, "refused");
  EXPECT_TRUE(flags.Clear("192.0.2.1", kUnreachableFlag, 1000));
  EXPECT_FALSE(flags.Has("192.0.2.1", kUnreachableFlag, 0));
  EXPECT_FALSE(flags.Clear("192.0.2.1", kUnreachableFlag, 1000));  // nothing left to drop
  // Failing again after the operator's clearing sets a later expiry: the
  // clearing (still listed by the queue) must not end the new suspension.
  flags.Set("192.0.2.1", kUnreachableFlag, 5000, "refused again");
  EXPECT_FALSE(flags.Clear("192.0.2.1", kUnreachableFlag, 1000));
  EXPECT_TRUE(flags.Has("192.0.2.1", kUnreachableFlag, 2000));
  EXPECT_FALSE(flags.Clear("192.0.2.1", kBrokenTlsFlag, 9000));  // another flag is another fact
}

TEST(FailureStreaks, ReportsFromTheLimitOnUntilASuccess) {
  FailureStreaks streaks(3);
  EXPECT_FALSE(streaks.Failed("a"));
  EXPECT_FALSE(streaks.Failed("a"));
  EXPECT_FALSE(streaks.Failed("b"));  // streaks are per address
  EXPECT_TRUE(streaks.Failed("a"));
  EXPECT_TRUE(streaks.Failed("a"));  // still failing after a pause: at once again
  EXPECT_EQ(streaks.streak("a"), 4u);
  streaks.Succeeded("a");
  EXPECT_EQ(streaks.streak("a"), 0u);
  EXPECT_FALSE(streaks.Failed("a"));
}

TEST(FailureStreaks, LimitZeroNeverReports) {
  FailureStreaks streaks(0);
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(streaks.Failed("a"));
  }
}

}  // namespace
}  // namespace tern::deliverer
