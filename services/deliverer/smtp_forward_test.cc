#include "services/deliverer/smtp_forward.h"

#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "services/deliverer/deliverer_config.h"

namespace tern::deliverer {
namespace {

class SmtpForwardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("smtp_forward_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  absl::StatusOr<SmtpForwardRoutes> Load() { return LoadSmtpForwardRoutes(config::ConfigDir(dir_.string())); }
  std::map<std::string, StaticRoute> LoadByDomain() {
    auto routes = Load();
    EXPECT_TRUE(routes.ok()) << routes.status();
    std::map<std::string, StaticRoute> out;
    for (StaticRoute& r : routes.value_or(SmtpForwardRoutes{}).by_domain) {
      out[r.domain] = r;
    }
    return out;
  }

  std::filesystem::path dir_;
};

// Haraka's own config directory ships smtp_forward.ini (localhost:2555);
// it only means something when the plugin is in `plugins`.
TEST_F(SmtpForwardTest, TheFileAloneRoutesNothing) {
  Write("smtp_forward.ini", "host=localhost\nport=2555\nenable_outbound=true\n");
  Write("plugins", "# queue/smtp_forward\nrelay\n");
  auto routes = Load();
  ASSERT_TRUE(routes.ok()) << routes.status();
  EXPECT_TRUE(routes->by_domain.empty() && routes->by_sender.empty());
}

TEST_F(SmtpForwardTest, EnableOutboundSendsEveryRelayedMessageToTheSmarthost) {
  Write("plugins", "relay\nqueue/smtp_forward\n");
  Write("smtp_forward.ini",
        "host=smarthost.example.net\nport=587\nenable_outbound=true\nauth_type=plain\nauth_user=relay\n"
        "auth_pass=s3cret\n");
  auto routes = LoadByDomain();
  ASSERT_EQ(routes.size(), 1u);
  const StaticRoute& all = routes["*"];
  ASSERT_EQ(all.hosts.size(), 1u);
  EXPECT_EQ(all.hosts[0].host, "smarthost.example.net");
  EXPECT_EQ(all.hosts[0].port, 587);
  EXPECT_EQ(all.auth_type, "plain");
  EXPECT_EQ(all.auth_user, "relay");
  EXPECT_EQ(all.auth_pass, "s3cret");
  EXPECT_EQ(all.tls, RouteTls::kOpportunistic);
}

// As smtp_forward.js: without enable_outbound only the per-domain sections
// route (its get_mx hook), each to its host or [main]'s, on its port or
// [main]'s or 25, with its own AUTH.
TEST_F(SmtpForwardTest, DomainSectionsRouteTheirDomainsWithMainAsFallback) {
  Write("plugins", "smtp_forward\n");
  Write("smtp_forward.ini",
        "host=10.0.0.1\nport=2525\n"
        "[Example.COM]\nhost=10.0.0.5\nauth_type=login\nauth_user=u\nauth_pass=p\n"
        "[example.net]\nenable_tls=false\n"
        "[someone@example.org]\nhost=10.0.0.9\n"  // by sender: only under mail_from
        "[tls]\nrejectUnauthorized=false\n");
  auto routes = LoadByDomain();
  ASSERT_EQ(routes.size(), 2u);
  EXPECT_FALSE(routes.contains("*"));  // enable_outbound defaults to false, as in Haraka
  EXPECT_EQ(routes["example.com"].hosts[0].host, "10.0.0.5");
  EXPECT_EQ(routes["example.com"].hosts[0].port, 2525);
  EXPECT_EQ(routes["example.com"].auth_user, "u");
  EXPECT_EQ(routes["example.net"].hosts[0].host, "10.0.0.1");
  EXPECT_EQ(routes["example.net"].tls, RouteTls::kNone);
  EXPECT_TRUE(routes["example.net"].auth_user.empty());  // AUTH is not inherited from [main]
}

TEST_F(SmtpForwardTest, HostPoolAndVerifiedTls) {
  Write("plugins", "queue/smtp_forward\n");
  Write("smtp_forward.ini",
        "enable_outbound=true\nforwarding_host_pool=10.0.0.1:25, 10.0.0.2:2525,[2001:db8::3]:26\n"
        "[tls]\nrejectUnauthorized=true\n");
  auto routes = LoadByDomain();
  const StaticRoute& all = routes["*"];
  ASSERT_EQ(all.hosts.size(), 3u);
  EXPECT_EQ(all.hosts[1].host, "10.0.0.2");
  EXPECT_EQ(all.hosts[1].port, 2525);
  EXPECT_EQ(all.hosts[2].host, "2001:db8::3");
  EXPECT_EQ(all.tls, RouteTls::kRequired);
}

TEST_F(SmtpForwardTest, WhatCannotBeCarriedOverIsAnErrorNamingTheKey) {
  Write("plugins", "queue/smtp_forward\n");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"enable_outbound=true\n", "no host to forward to"},
      {"enable_outbound=true\nhost=10.0.0.1\nport=99999\n", "port"},
      {"enable_outbound=true\nhost=lmtp://10.0.0.1\n", "SMTP over TCP"},
      {"enable_outbound=true\nhost=10.0.0.1\nauth_user=u\n", "auth_pass"},
      {"domain_selector=rcpt\n", "domain_selector"},
  };
  for (const auto& [ini, want] : cases) {
    SCOPED_TRACE(ini);
    Write("smtp_forward.ini", ini);
    auto routes = Load();
    ASSERT_FALSE(routes.ok());
    EXPECT_TRUE(absl::StrContains(routes.status().message(), "smtp_forward.ini")) << routes.status();
    EXPECT_TRUE(absl::StrContains(routes.status().message(), want)) << routes.status();
  }
  // By sender with no per-sender sections: [main] alone, which needs no selector.
  Write("smtp_forward.ini", "domain_selector=mail_from\nenable_outbound=true\nhost=10.0.0.1\n");
  auto routes = LoadByDomain();
  EXPECT_EQ(routes["*"].hosts[0].host, "10.0.0.1");
}

// domain_selector=mail_from: the sections name senders. Haraka's get_mx
// reads the sender's domain section; the forward of relayed mail
// (enable_outbound) also its address section, and [main] for the rest.
TEST_F(SmtpForwardTest, ByMailFromSectionsRouteBySenderAddressThenDomain) {
  Write("plugins", "queue/smtp_forward\n");
  Write("smtp_forward.ini",
        "domain_selector=mail_from\nenable_outbound=true\nhost=10.0.0.1\n"
        "[Tenant.Example]\nhost=10.0.0.2\nauth_type=plain\nauth_user=t\nauth_pass=p\n"
        "[boss@tenant.example]\nhost=10.0.0.3\n");
  Write("outbound_routes.ini", "[own.example]\nhost=192.0.2.1\n");
  auto config = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(config.ok()) << config.status();
  auto host_for = [&](const char* domain, const char* from) {
    const StaticRoute* r = config->RouteFor(domain, from);
    return r == nullptr ? std::string("mx") : r->hosts[0].host;
  };
  EXPECT_EQ(host_for("gmail.example", "alice@TENANT.example"), "10.0.0.2");
  EXPECT_EQ(config->RouteFor("gmail.example", "alice@tenant.example")->auth_user, "t");
  EXPECT_EQ(host_for("gmail.example", "Boss@tenant.example"), "10.0.0.3");
  EXPECT_EQ(host_for("gmail.example", "someone@other.example"), "10.0.0.1");  // [main]
  EXPECT_EQ(host_for("gmail.example", ""), "10.0.0.1");                      // a DSN
  EXPECT_EQ(host_for("own.example", "alice@tenant.example"), "192.0.2.1");    // Tern's file wins
  EXPECT_EQ(config->smtp_forward_routes,
            (std::vector<std::string>{"*", "from:boss@tenant.example", "from:tenant.example"}));

  // Without enable_outbound only get_mx routes: domain sections, no
  // address sections, no [main]; other senders go to the MX hosts.
  Write("smtp_forward.ini", "domain_selector=mail_from\nhost=10.0.0.1\n[tenant.example]\nhost=10.0.0.2\n"
                            "[boss@tenant.example]\nhost=10.0.0.3\n");
  config = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(host_for("gmail.example", "boss@tenant.example"), "10.0.0.2");
  EXPECT_EQ(host_for("gmail.example", "someone@other.example"), "mx");
}

// Tern's own outbound_routes.ini wins where both route a domain.
TEST_F(SmtpForwardTest, OutboundRoutesIniTakesPrecedence) {
  Write("plugins", "queue/smtp_forward\n");
  Write("smtp_forward.ini", "enable_outbound=true\nhost=10.0.0.1\n[a.example]\nhost=10.0.0.2\n"
                            "[b.example]\nhost=10.0.0.3\n");
  Write("outbound_routes.ini", "[a.example]\nhost[]=192.0.2.1\n");
  auto config = DelivererConfig::Load(config::ConfigDir(dir_.string()));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->routes.Find("a.example")->hosts[0].host, "192.0.2.1");
  EXPECT_EQ(config->routes.Find("b.example")->hosts[0].host, "10.0.0.3");
  EXPECT_EQ(config->routes.Find("anything.example")->hosts[0].host, "10.0.0.1");
  EXPECT_EQ(config->smtp_forward_routes, (std::vector<std::string>{"b.example", "*"}));
}

}  // namespace
}  // namespace tern::deliverer
