#include "services/deliverer/static_routes.h"

#include "gtest/gtest.h"
#include "services/deliverer/route_planner.h"

namespace tern::deliverer {
namespace {

config::IniFile Ini(const std::string& text) {
  auto ini = config::IniFile::Parse(text, "outbound_routes.ini");
  EXPECT_TRUE(ini.ok()) << ini.status();
  return *ini;
}

TEST(ParseRouteHost, AcceptsEveryWrittenForm) {
  auto h = ParseRouteHost("Smart.Example.NET");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->host, "smart.example.net");
  EXPECT_EQ(h->port, 0);
  EXPECT_FALSE(h->lmtp);

  h = ParseRouteHost("10.0.0.7:2525");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->host, "10.0.0.7");
  EXPECT_EQ(h->port, 2525);

  h = ParseRouteHost("[2001:db8::7]:587");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->host, "2001:db8::7");
  EXPECT_EQ(h->port, 587);

  h = ParseRouteHost("2001:db8::8");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->host, "2001:db8::8");

  h = ParseRouteHost("lmtp://127.0.0.1:24");
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->lmtp);
  EXPECT_EQ(h->port, 24);

  h = ParseRouteHost("lmtp://mail.local");
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->lmtp);
  EXPECT_EQ(h->port, 0);

  h = ParseRouteHost("/run/dovecot/lmtp");
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->lmtp);
  EXPECT_EQ(h->unix_path, "/run/dovecot/lmtp");

  h = ParseRouteHost("lmtp:///run/dovecot/lmtp");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->unix_path, "/run/dovecot/lmtp");
}

TEST(ParseRouteHost, RejectsMalformedEntries) {
  for (const char* bad : {"", "host:0", "host:70000", "host:abc", "[2001:db8::1", "[not-ip]:25", "[::1]x",
                          "bad host", "lmtp://", "a@b"}) {
    EXPECT_FALSE(ParseRouteHost(bad).ok()) << bad;
  }
}

TEST(StaticRoutes, FindsDomainThenStarAndKeepsEveryKey) {
  auto routes = StaticRoutes::Load(Ini(R"(
[Example.COM]
host[]=mx2.example.net:2525
host[]=10.0.0.1
priority=5
auth_user=relay
auth_pass=secret
auth_type=cram-md5
force_auth=true
bind=127.0.0.1
bind_helo=out.example.org
tls=required

[*]
host=smarthost.example.net
tls=none
)"));
  ASSERT_TRUE(routes.ok()) << routes.status();
  EXPECT_EQ(routes->size(), 2u);
  const StaticRoute* r = routes->Find("example.com");
  ASSERT_NE(r, nullptr);
  ASSERT_EQ(r->hosts.size(), 2u);
  EXPECT_EQ(r->hosts[0].host, "mx2.example.net");
  EXPECT_EQ(r->hosts[1].host, "10.0.0.1");
  EXPECT_EQ(r->priority, 5);
  EXPECT_TRUE(r->has_auth());
  EXPECT_EQ(r->auth_type, "cram-md5");
  EXPECT_TRUE(r->force_auth);
  EXPECT_EQ(r->bind, "127.0.0.1");
  EXPECT_EQ(r->bind_helo, "out.example.org");
  EXPECT_EQ(r->tls, RouteTls::kRequired);
  const StaticRoute* star = routes->Find("other.test");
  ASSERT_NE(star, nullptr);
  EXPECT_EQ(star->domain, "*");
  EXPECT_EQ(star->tls, RouteTls::kNone);
  EXPECT_FALSE(star->has_auth());
}

TEST(StaticRoutes, ImplicitTlsIsChosenOrDefaultsOnPort465) {
  auto routes = StaticRoutes::Load(Ini(R"(
[explicit.test]
host[]=smtp.example.net:4650
tls=implicit

[submissions.test]
host[]=smtp.example.net:465
host[]=smtp2.example.net:465

[starttls-on-465.test]
host[]=smtp.example.net:465
tls=required

[mixed.test]
host[]=smtp.example.net:465
host[]=smtp.example.net:587
)"));
  ASSERT_TRUE(routes.ok()) << routes.status();
  EXPECT_EQ(routes->Find("explicit.test")->tls, RouteTls::kImplicit);
  EXPECT_EQ(routes->Find("submissions.test")->tls, RouteTls::kImplicit) << "port 465 is implicit TLS (RFC 8314)";
  EXPECT_EQ(routes->Find("starttls-on-465.test")->tls, RouteTls::kRequired) << "what the operator wrote wins";
  EXPECT_EQ(routes->Find("mixed.test")->tls, RouteTls::kOpportunistic);
  EXPECT_STREQ(RouteTlsName(RouteTls::kImplicit), "implicit");

  auto unix_socket = StaticRoutes::Load(Ini("[a.test]\nhost=/run/lmtp\ntls=implicit\n"));
  ASSERT_FALSE(unix_socket.ok());
  EXPECT_NE(unix_socket.status().message().find("unix socket"), std::string::npos) << unix_socket.status();
}

TEST(StaticRoutes, NoFileNoRoutes) {
  auto routes = StaticRoutes::Load(config::IniFile());
  ASSERT_TRUE(routes.ok());
  EXPECT_EQ(routes->Find("example.com"), nullptr);
}

TEST(StaticRoutes, ErrorsNameTheKeyButNeverTheSecret) {
  auto routes = StaticRoutes::Load(Ini("[a.test]\nhost=x.test\nauth_pass=hunter2\n"));
  ASSERT_FALSE(routes.ok());
  EXPECT_NE(routes.status().message().find("auth_user"), std::string::npos) << routes.status();
  EXPECT_EQ(routes.status().message().find("hunter2"), std::string::npos) << routes.status();

  for (const char* text : {"[a.test]\npriority=1\n", "[a.test]\nhost=x:99999\n", "[a.test]\nhost=x\ntls=maybe\n",
                           "[a.test]\nhost=x\nbind=not-an-ip\n", "[a.test]\nhost=x\nforce_auth=true\n",
                           "[a.test]\nhost=x\nauth_type=xoauth2\nauth_user=u\nauth_pass=p\n"}) {
    EXPECT_FALSE(StaticRoutes::Load(Ini(text)).ok()) << text;
  }
}

TEST(StaticRoutes, AClientCertificateIsReadWithItsKeyAndResolvedLikeAConfigFile) {
  auto routes = StaticRoutes::Load(Ini("[a.test]\nhost=x.test\ntls_cert=relay.pem\ntls_key=/abs/relay.key\n"),
                                   [](const std::string& name) {
                                     return name.front() == '/' ? name : "/etc/tern/" + name;
                                   });
  ASSERT_TRUE(routes.ok()) << routes.status();
  const StaticRoute* r = routes->Find("a.test");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->tls_cert, "/etc/tern/relay.pem");
  EXPECT_EQ(r->tls_key, "/abs/relay.key");
  EXPECT_EQ(routes->all().size(), 1u);
}

TEST(StaticRoutes, AClientCertificateNeedsItsKeyAndTls) {
  auto routes = StaticRoutes::Load(Ini("[a.test]\nhost=x.test\ntls_cert=relay.pem\n"));
  ASSERT_FALSE(routes.ok());
  EXPECT_NE(routes.status().message().find("[a.test] tls_key: tls_cert and tls_key must be set together"),
            std::string::npos)
      << routes.status();
  routes = StaticRoutes::Load(Ini("[a.test]\nhost=x.test\ntls_cert=r.pem\ntls_key=r.key\ntls=none\n"));
  ASSERT_FALSE(routes.ok());
  EXPECT_NE(routes.status().message().find("[a.test] tls_cert: a client certificate needs TLS"), std::string::npos)
      << routes.status();
}

TEST(PlanRoute, KeepsWrittenOrderAndAppliesPortsAndLocalChecks) {
  auto routes = StaticRoutes::Load(Ini(R"(
[r.test]
host[]=b.example:2525
host[]=192.0.2.9
host[]=lmtp://198.51.100.1
host[]=127.0.0.1:2525
host[]=/run/lmtp.sock
priority=7
)"));
  ASSERT_TRUE(routes.ok()) << routes.status();
  RoutePlanner::Options o;
  o.port = 25;
  o.inet_prefer = InetPrefer::kV4;
  RoutePlanner planner(o);
  std::vector<dns::HostAnswer> answers(5);
  answers[0].ipv6 = {"2001:db8::b"};
  answers[0].ipv4 = {"203.0.113.2"};
  RoutePlan plan = planner.PlanRoute(*routes->Find("r.test"), answers);
  ASSERT_EQ(plan.attempts.size(), 5u);
  EXPECT_EQ(plan.attempts[0].ip, "203.0.113.2");  // v4 first within the host
  EXPECT_EQ(plan.attempts[0].port, 2525);
  EXPECT_EQ(plan.attempts[0].mx_host, "b.example");
  EXPECT_EQ(plan.attempts[1].ip, "2001:db8::b");
  EXPECT_EQ(plan.attempts[2].ip, "192.0.2.9");
  EXPECT_EQ(plan.attempts[2].port, 25);
  EXPECT_EQ(plan.attempts[2].preference, 7);
  EXPECT_EQ(plan.attempts[3].ip, "198.51.100.1");
  EXPECT_EQ(plan.attempts[3].port, 24);  // LMTP default
  EXPECT_TRUE(plan.attempts[3].lmtp);
  EXPECT_EQ(plan.attempts[4].unix_path, "/run/lmtp.sock");
  EXPECT_TRUE(plan.attempts[4].lmtp);
  // local_mx_ok=false refused the literal loopback IP, as it would from DNS.
  ASSERT_EQ(plan.skipped.size(), 1u);
  EXPECT_NE(plan.skipped[0].find("127.0.0.1"), std::string::npos) << plan.skipped[0];
  EXPECT_NE(plan.skipped[0].find("local_mx_ok=false"), std::string::npos);
}

TEST(PlanRoute, LocalMxOkAllowsLoopbackLiterals) {
  auto routes = StaticRoutes::Load(Ini("[r.test]\nhost=127.0.0.1:2525\n"));
  ASSERT_TRUE(routes.ok());
  RoutePlanner::Options o;
  o.local_mx_ok = true;
  RoutePlan plan = RoutePlanner(o).PlanRoute(*routes->Find("r.test"), {dns::HostAnswer()});
  ASSERT_EQ(plan.attempts.size(), 1u);
  EXPECT_EQ(plan.attempts[0].ip, "127.0.0.1");
}

TEST(PlanRoute, UnresolvableHostIsSkippedWithTheReason) {
  auto routes = StaticRoutes::Load(Ini("[r.test]\nhost=gone.example\n"));
  ASSERT_TRUE(routes.ok());
  dns::HostAnswer temp;
  temp.status = dns::LookupStatus::kTempFail;
  temp.detail = "gone.example: SERVFAIL";
  RoutePlan plan = RoutePlanner({}).PlanRoute(*routes->Find("r.test"), {temp});
  EXPECT_TRUE(plan.attempts.empty());
  EXPECT_TRUE(plan.dns_trouble);
  ASSERT_EQ(plan.skipped.size(), 1u);
  EXPECT_EQ(plan.skipped[0], "gone.example: SERVFAIL");
}

TEST(RoutePlanner, RefusesUniqueLocalIpv6) {
  RoutePlanner planner({});
  EXPECT_EQ(planner.LocalReason("fd12:3456::1"), "unique-local address");
  EXPECT_EQ(planner.LocalReason("2001:db8::1"), "");
}

}  // namespace
}  // namespace tern::deliverer
