#include "lib/address/authority.h"

#include "gtest/gtest.h"

namespace tern::address {
namespace {

TEST(HostAuthority, BracketsIpv6AndLeavesOutTheDefaultPort) {
  EXPECT_EQ(HostAuthority("reports.example", 443, 443), "reports.example");
  EXPECT_EQ(HostAuthority("reports.example", 8443, 443), "reports.example:8443");
  EXPECT_EQ(HostAuthority("192.0.2.7", 25, 0), "192.0.2.7:25");
  EXPECT_EQ(HostAuthority("2001:db8::1", 443, 443), "[2001:db8::1]");
  EXPECT_EQ(HostAuthority("::1", 2525, 0), "[::1]:2525");
  EXPECT_EQ(HostAuthority("mx.example", 0, 0), "mx.example");
}

}  // namespace
}  // namespace tern::address
