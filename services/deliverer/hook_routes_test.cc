#include "services/deliverer/hook_routes.h"

#include "gtest/gtest.h"

namespace tern::deliverer {
namespace {

tern::v1::MxRoute Route(const std::string& host, uint32_t port) {
  tern::v1::MxRoute m;
  m.set_host(host);
  m.set_port(port);
  return m;
}

TEST(RouteFromHook, TlsMeansWhatTheFilesTlsMeansWithTheSameDefault) {
  // Unset: implicit TLS on port 465 (RFC 8314), opportunistic elsewhere.
  absl::StatusOr<StaticRoute> submissions = RouteFromHook(Route("smtp.example.net", 465), "x.test");
  ASSERT_TRUE(submissions.ok()) << submissions.status();
  EXPECT_EQ(submissions->tls, RouteTls::kImplicit);
  absl::StatusOr<StaticRoute> mx = RouteFromHook(Route("mx.example.net", 25), "x.test");
  ASSERT_TRUE(mx.ok()) << mx.status();
  EXPECT_EQ(mx->tls, RouteTls::kOpportunistic);
  EXPECT_EQ(mx->domain, "x.test");

  // Set: as written, also on port 465.
  const std::pair<tern::v1::MxRouteTls, RouteTls> cases[] = {
      {tern::v1::MX_ROUTE_TLS_OPPORTUNISTIC, RouteTls::kOpportunistic},
      {tern::v1::MX_ROUTE_TLS_REQUIRED, RouteTls::kRequired},
      {tern::v1::MX_ROUTE_TLS_NONE, RouteTls::kNone},
      {tern::v1::MX_ROUTE_TLS_IMPLICIT, RouteTls::kImplicit}};
  for (const auto& [wire, want] : cases) {
    tern::v1::MxRoute m = Route("smtp.example.net", 465);
    m.set_tls(wire);
    absl::StatusOr<StaticRoute> r = RouteFromHook(m, "x.test");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tls, want) << tern::v1::MxRouteTls_Name(wire);
  }
}

TEST(RouteFromHook, RefusesWhatTheFileWouldRefuseWithoutEchoingThePassword) {
  tern::v1::MxRoute unix_implicit;
  unix_implicit.set_unix_path("/run/lmtp");
  unix_implicit.set_tls(tern::v1::MX_ROUTE_TLS_IMPLICIT);
  EXPECT_FALSE(RouteFromHook(unix_implicit, "x.test").ok());

  tern::v1::MxRoute unknown = Route("mx.example.net", 25);
  unknown.set_tls(static_cast<tern::v1::MxRouteTls>(42));  // a newer or broken hook
  absl::StatusOr<StaticRoute> r = RouteFromHook(unknown, "x.test");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("tls"), std::string::npos) << r.status();

  EXPECT_FALSE(RouteFromHook(Route("mx.example.net", 70000), "x.test").ok());
  tern::v1::MxRoute bad_bind = Route("mx.example.net", 25);
  bad_bind.set_bind("not-an-ip");
  bad_bind.set_auth_user("u");
  bad_bind.set_auth_pass("hunter2");
  absl::StatusOr<StaticRoute> b = RouteFromHook(bad_bind, "x.test");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().message().find("hunter2"), std::string::npos) << b.status();
}

}  // namespace
}  // namespace tern::deliverer
