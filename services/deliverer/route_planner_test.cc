#include "services/deliverer/route_planner.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tern::deliverer {
namespace {

dns::MxHost Host(std::string name, uint16_t pref, std::vector<std::string> v4, std::vector<std::string> v6) {
  dns::MxHost h;
  h.name = std::move(name);
  h.preference = pref;
  h.addresses.ipv4 = std::move(v4);
  h.addresses.ipv6 = std::move(v6);
  return h;
}

std::vector<std::string> Ips(const RoutePlan& plan) {
  std::vector<std::string> out;
  for (const auto& a : plan.attempts) {
    out.push_back(a.ip);
  }
  return out;
}

dns::MxAnswer TwoLevels() {
  dns::MxAnswer a;
  a.hosts = {Host("a.x.test", 10, {"192.0.2.1"}, {"2001:db8::1"}), Host("b.x.test", 10, {"192.0.2.2"}, {"2001:db8::2"}),
             Host("c.x.test", 20, {"192.0.2.3"}, {"2001:db8::3"})};
  return a;
}

RoutePlanner::Options Opts(InetPrefer prefer) {
  RoutePlanner::Options o;
  o.inet_prefer = prefer;
  o.port = 2525;
  return o;
}

TEST(RoutePlanner, DefaultOrderIsPerHostV6ThenV4InMxOrder) {
  RoutePlan plan = RoutePlanner(Opts(InetPrefer::kDefault)).Plan(TwoLevels());
  EXPECT_EQ(Ips(plan), (std::vector<std::string>{"2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2",
                                                  "2001:db8::3", "192.0.2.3"}));
  EXPECT_EQ(plan.attempts[0].mx_host, "a.x.test");
  EXPECT_EQ(plan.attempts[0].port, 2525);
  EXPECT_EQ(plan.attempts[5].preference, 20);
}

TEST(RoutePlanner, InetPreferV4OrdersFamiliesWithinOnePreferenceOnly) {
  RoutePlan plan = RoutePlanner(Opts(InetPrefer::kV4)).Plan(TwoLevels());
  // Not Haraka's v4(10), v4(20), v6(10), v6(20): the MX priorities win.
  EXPECT_EQ(Ips(plan), (std::vector<std::string>{"192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2",
                                                  "192.0.2.3", "2001:db8::3"}));
}

TEST(RoutePlanner, InetPreferV6) {
  RoutePlan plan = RoutePlanner(Opts(InetPrefer::kV6)).Plan(TwoLevels());
  EXPECT_EQ(Ips(plan), (std::vector<std::string>{"2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2",
                                                  "2001:db8::3", "192.0.2.3"}));
}

TEST(RoutePlanner, ParsesInetPrefer) {
  EXPECT_EQ(*ParseInetPrefer("V4"), InetPrefer::kV4);
  EXPECT_EQ(*ParseInetPrefer("default"), InetPrefer::kDefault);
  EXPECT_FALSE(ParseInetPrefer("ipv4").ok());
}

TEST(RoutePlanner, RefusesLocalAddressesUnlessLocalMxOk) {
  dns::MxAnswer a;
  a.hosts = {Host("mx.x.test", 10, {"127.0.0.1", "169.254.1.1", "0.0.0.0", "192.0.2.9", "10.0.0.1"},
                  {"::1", "fe80::1", "::", "::ffff:127.0.0.1", "ff02::1"})};
  RoutePlan strict = RoutePlanner(Opts(InetPrefer::kV4)).Plan(a);
  // RFC 1918 is not local (as in Haraka); only public-looking ones remain.
  EXPECT_EQ(Ips(strict), (std::vector<std::string>{"192.0.2.9", "10.0.0.1"}));
  EXPECT_EQ(strict.skipped.size(), 8u);
  EXPECT_NE(strict.skipped[0].find("mx.x.test[127.0.0.1]: loopback address refused"), std::string::npos)
      << strict.skipped[0];

  RoutePlanner::Options ok = Opts(InetPrefer::kV4);
  ok.local_mx_ok = true;
  EXPECT_EQ(RoutePlanner(ok).Plan(a).attempts.size(), 10u);
}

TEST(RoutePlanner, RefusesOwnAddressesAndMe) {
  RoutePlanner::Options o = Opts(InetPrefer::kDefault);
  o.local_addresses = {"192.0.2.1"};
  o.me = "C.X.TEST";
  RoutePlanner planner(o);
  planner.AddLocalAddresses({"2001:DB8::2"});
  RoutePlan plan = planner.Plan(TwoLevels());
  EXPECT_EQ(Ips(plan), (std::vector<std::string>{"2001:db8::1", "192.0.2.2"}));
  ASSERT_EQ(plan.skipped.size(), 3u);
  EXPECT_NE(plan.skipped[2].find("c.x.test: MX is this host"), std::string::npos) << plan.skipped[2];
  EXPECT_EQ(planner.LocalReason("192.0.2.1"), "one of this host's own addresses");
}

TEST(RoutePlanner, DeduplicatesAddressesAndNotesUnresolvedHosts) {
  dns::MxAnswer a;
  a.hosts = {Host("a.x.test", 10, {"192.0.2.1"}, {}), Host("alias.x.test", 20, {"192.0.2.1"}, {}),
             Host("gone.x.test", 30, {}, {})};
  a.hosts[2].addresses.status = dns::LookupStatus::kTempFail;
  a.hosts[2].addresses.detail = "A lookup for gone.x.test: Timeout";
  RoutePlan plan = RoutePlanner(Opts(InetPrefer::kDefault)).Plan(a);
  EXPECT_EQ(Ips(plan), (std::vector<std::string>{"192.0.2.1"}));
  EXPECT_TRUE(plan.dns_trouble);
  ASSERT_EQ(plan.skipped.size(), 1u);
  EXPECT_EQ(plan.skipped[0], "A lookup for gone.x.test: Timeout");
}

TEST(RoutePlanner, NonOkAnswerHasNoAttempts) {
  dns::MxAnswer a = TwoLevels();
  a.status = dns::LookupStatus::kNullMx;
  EXPECT_TRUE(RoutePlanner(Opts(InetPrefer::kDefault)).Plan(a).attempts.empty());
}

}  // namespace
}  // namespace tern::deliverer
