#include "services/ingest/proxy_protocol.h"

#include <arpa/inet.h>

#include <string>

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

// A v2 header: fixed part for `ver_cmd` and `fam`, then `rest` (addresses
// and TLVs), with the length field filled in.
std::string V2(uint8_t ver_cmd, uint8_t fam, const std::string& rest) {
  std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
  h.push_back(static_cast<char>(ver_cmd));
  h.push_back(static_cast<char>(fam));
  h.push_back(static_cast<char>(rest.size() >> 8));
  h.push_back(static_cast<char>(rest.size() & 0xFF));
  return h + rest;
}

std::string Ip(int family, const char* text) {
  unsigned char buf[16];
  EXPECT_EQ(inet_pton(family, text, buf), 1);
  return std::string(reinterpret_cast<char*>(buf), family == AF_INET ? 4 : 16);
}

std::string Port(uint16_t port) { return std::string{static_cast<char>(port >> 8), static_cast<char>(port & 0xFF)}; }

TEST(ParseProxyV2, ParsesTcp4AndTcp6WithTheirPorts) {
  std::string h = V2(0x21, 0x11, Ip(AF_INET, "192.0.2.1") + Ip(AF_INET, "198.51.100.2") + Port(56324) + Port(25));
  ASSERT_TRUE(IsProxyV2Start(h[0]));
  auto rest = ProxyV2RestSize(h.substr(0, kProxyV2FixedSize));
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(*rest, 12u);
  auto parsed = ParseProxyV2(h);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->protocol, "TCP4");
  EXPECT_EQ(parsed->src_ip, "192.0.2.1");
  EXPECT_EQ(parsed->dst_ip, "198.51.100.2");
  EXPECT_EQ(parsed->src_port, 56324);
  EXPECT_EQ(parsed->dst_port, 25);

  h = V2(0x21, 0x21, Ip(AF_INET6, "2001:db8::1") + Ip(AF_INET6, "2001:db8::2") + Port(65535) + Port(587));
  parsed = ParseProxyV2(h);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->protocol, "TCP6");
  EXPECT_EQ(parsed->src_ip, "2001:db8::1");
  EXPECT_EQ(parsed->src_port, 65535);
  EXPECT_EQ(parsed->dst_port, 587);
  EXPECT_FALSE(IsProxyV2Start('P'));
}

TEST(ParseProxyV2, SkipsTlvsAfterTheAddresses) {
  // PP2_TYPE_AUTHORITY ("mx.example") and PP2_TYPE_NOOP, as HAProxy may send.
  const std::string tlvs = std::string("\x02\x00\x0a", 3) + "mx.example" + std::string("\x04\x00\x00", 3);
  auto parsed = ParseProxyV2(V2(0x21, 0x11, Ip(AF_INET, "192.0.2.9") + Ip(AF_INET, "192.0.2.10") + Port(1) +
                                                Port(2) + tlvs));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->src_ip, "192.0.2.9");
}

TEST(ParseProxyV2, LocalAndAddresslessFamiliesUseTheConnectionsOwnAddresses) {
  // LOCAL (a proxy's health check), with and without an address block.
  EXPECT_TRUE(ParseProxyV2(V2(0x20, 0x00, "")).value().unknown());
  EXPECT_TRUE(ParseProxyV2(V2(0x20, 0x11, std::string(12, '\x01'))).value().unknown());
  // PROXY over UNSPEC, over AF_UNIX, and over a datagram transport.
  EXPECT_TRUE(ParseProxyV2(V2(0x21, 0x00, "")).value().unknown());
  EXPECT_TRUE(ParseProxyV2(V2(0x21, 0x31, std::string(216, 'x'))).value().unknown());
  EXPECT_TRUE(ParseProxyV2(V2(0x21, 0x12, std::string(12, '\x01'))).value().unknown());
}

TEST(ParseProxyV2, ChecksTheCrc32cTlv) {
  // 192.0.2.7:40000 -> 198.51.100.2:25 with PP2_TYPE_CRC32C 0x3597c814,
  // computed independently (Python, CRC-32C check value 0xE3069283 verified).
  const std::string good(
      "\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21\x11\x00\x13\xc0\x00\x02\x07\xc6\x33\x64\x02"
      "\x9c\x40\x00\x19\x03\x00\x04\x35\x97\xc8\x14",
      35);
  auto parsed = ParseProxyV2(good);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->src_ip, "192.0.2.7");
  EXPECT_EQ(parsed->src_port, 40000);
  std::string tampered = good;
  tampered[19] = '\x08';  // the source address's last octet
  EXPECT_FALSE(ParseProxyV2(tampered).ok());
  std::string bad_sum = good;
  bad_sum[34] = '\x15';
  EXPECT_FALSE(ParseProxyV2(bad_sum).ok());
}

TEST(ParseProxyV2, RejectsMalformedHeaders) {
  const std::string v4 = Ip(AF_INET, "192.0.2.1") + Ip(AF_INET, "192.0.2.2") + Port(1) + Port(2);
  std::string wrong_signature = V2(0x21, 0x11, v4);
  wrong_signature[8] = 'X';
  std::string short_length = V2(0x21, 0x11, v4);
  short_length[15] = 11;  // the length says one octet less than is there
  for (const std::string& bad : {
           wrong_signature,
           V2(0x11, 0x11, v4),                        // version 1 in a binary header
           V2(0x22, 0x11, v4),                        // command 2
           V2(0x21, 0x41, v4),                        // family 4
           V2(0x21, 0x13, v4),                        // transport 3
           V2(0x21, 0x11, v4.substr(0, 11)),          // IPv4 block too short
           V2(0x21, 0x21, v4 + std::string(20, 0)),   // IPv6 block too short
           V2(0x21, 0x11, v4 + "\x02\x00"),           // TLV header cut
           V2(0x21, 0x11, v4 + "\x02\x00\x05" "ab"),  // TLV value overruns
           V2(0x21, 0x11, v4 + std::string("\x03\x00\x02\x00\x00", 5)),  // CRC32c of 2 octets
           short_length,
           std::string("\r\n\r\n", 4),
       }) {
    SCOPED_TRACE(testing::PrintToString(bad));
    EXPECT_FALSE(ParseProxyV2(bad).ok());
  }
  EXPECT_FALSE(ProxyV2RestSize("PROXY TCP4 192.0.").ok());
}

TEST(ParseProxyV1, RejectsAddressWithNulOctet) {
  // Found by proxy_protocol_fuzz: inet_pton stopped at the NUL, so the text
  // after it ended up in src_ip.
  const std::string line = std::string("PROXY TCP4 192.0.2.1") + '\0' + "junk 198.51.100.2 56324 25";
  EXPECT_FALSE(ParseProxyV1(line).ok());
  const std::string v6 = std::string("PROXY TCP6 ::1") + '\0' + "junk 2001:db8::2 56324 25";
  EXPECT_FALSE(ParseProxyV1(v6).ok());
}

}  // namespace
}  // namespace tern::ingest
