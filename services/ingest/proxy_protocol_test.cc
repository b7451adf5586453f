#include "services/ingest/proxy_protocol.h"

#include "gtest/gtest.h"

namespace tern::ingest {
namespace {

TEST(ParseProxyV1, ParsesTcp4AndTcp6) {
  auto h = ParseProxyV1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->src_ip, "192.0.2.1");
  EXPECT_EQ(h->dst_ip, "198.51.100.2");
  EXPECT_EQ(h->src_port, 56324);
  EXPECT_EQ(h->dst_port, 25);
  h = ParseProxyV1("PROXY TCP6 2001:db8::1 2001:db8::2 65535 0");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->src_ip, "2001:db8::1");
  EXPECT_EQ(h->src_port, 65535);
}

TEST(ParseProxyV1, AcceptsUnknownWithAnythingAfter) {
  auto h = ParseProxyV1("PROXY UNKNOWN ffff::1 ffff::2 1 2");
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->unknown());
  EXPECT_TRUE(ParseProxyV1("PROXY UNKNOWN").ok());
}

TEST(ParseProxyV1, RejectsMalformedLines) {
  for (const char* bad : {
           "PROXY", "PROXY TCP4", "proxy TCP4 192.0.2.1 192.0.2.2 1 2", "PROXY TCP4 192.0.2.1  192.0.2.2 1 2",
           "PROXY TCP4 2001:db8::1 192.0.2.2 1 2", "PROXY TCP6 192.0.2.1 2001:db8::2 1 2",
           "PROXY TCP4 192.0.2.1 192.0.2.2 01 2", "PROXY TCP4 192.0.2.1 192.0.2.2 1 65536",
           "PROXY TCP4 192.0.2.1 192.0.2.2 1 2 x", "PROXY UDP4 192.0.2.1 192.0.2.2 1 2",
           "PROXY TCP4 192.0.2.1 192.0.2.2 -1 2", "EHLO x",
       }) {
    SCOPED_TRACE(bad);
    EXPECT_FALSE(ParseProxyV1(bad).ok());
  }
  EXPECT_FALSE(ParseProxyV1("PROXY TCP4 " + std::string(200, '1')).ok());
}

}  // namespace
}  // namespace tern::ingest
