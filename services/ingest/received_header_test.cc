#include "services/ingest/received_header.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tern::ingest {
namespace {

ReceivedInfo Info() {
  ReceivedInfo info;
  info.helo = "client.example";
  info.client_ip = "192.0.2.1";
  info.me = "mx.example";
  info.protocol = "ESMTP";
  info.id = "0123456789abcdef.1";
  info.time = absl::FromUnixSeconds(1795247902);  // Sat, 21 Nov 2026 07:58:22 UTC
  info.zone = absl::UTCTimeZone();
  return info;
}

TEST(BuildReceivedHeader, FoldsBeforeByAndDate) {
  EXPECT_EQ(BuildReceivedHeader(Info()),
            "Received: from client.example ([192.0.2.1])\r\n"
            "\tby mx.example (Tern) with ESMTP id 0123456789abcdef.1;\r\n"
            "\tSat, 21 Nov 2026 07:58:22 +0000\r\n");
}

TEST(BuildReceivedHeader, WritesTheConfiguredComment) {
  ReceivedInfo info = Info();
  info.comment = "Example outbound";
  EXPECT_EQ(BuildReceivedHeader(info),
            "Received: from client.example ([192.0.2.1])\r\n"
            "\tby mx.example (Example outbound) with ESMTP id 0123456789abcdef.1;\r\n"
            "\tSat, 21 Nov 2026 07:58:22 +0000\r\n");
}

TEST(BuildReceivedHeader, WritesIpv6AsAddressLiteral) {
  ReceivedInfo info = Info();
  info.client_ip = "2001:db8::1";
  EXPECT_NE(BuildReceivedHeader(info).find("([IPv6:2001:db8::1])"), std::string::npos);
}

TEST(BuildReceivedHeader, NeutralisesHostileHelo) {
  ReceivedInfo info = Info();
  info.helo = "evil; by x (y)\r\nX-Injected: 1";
  const std::string header = BuildReceivedHeader(info);
  EXPECT_EQ(header.find("X-Injected: 1\r\n"), std::string::npos);
  EXPECT_EQ(header.find(';'), header.find("id 0123456789abcdef.1;") + 21);
  EXPECT_EQ(SanitizeHelo(""), "unknown");
  EXPECT_EQ(SanitizeHelo("[192.0.2.1]"), "[192.0.2.1]");
}

TEST(BuildReceivedHeader, KeepsEveryLineWithinLimitsForLongNames) {
  ReceivedInfo info = Info();
  info.helo = std::string(60, 'h') + ".example";
  info.me = std::string(70, 'm') + ".example";
  const std::string header = BuildReceivedHeader(info);
  size_t start = 0;
  while (start < header.size()) {
    const size_t end = header.find("\r\n", start);
    ASSERT_NE(end, std::string::npos);
    EXPECT_LE(end - start, 998u);
    if (start > 0) {
      EXPECT_EQ(header[start], '\t');  // every continuation is folded whitespace
    }
    start = end + 2;
  }
}

TEST(BuildReceivedHeader, WritesTheTlsCommentOnALineOfItsOwnBeforeTheDate) {
  ReceivedInfo info = Info();
  info.protocol = "ESMTPS";
  info.tls_version = "TLSv1.3";
  info.tls_cipher = "TLS_AES_256_GCM_SHA384";
  for (const char* verify : {"OK", "FAIL", "NO"}) {
    SCOPED_TRACE(verify);
    info.tls_verify = verify;
    EXPECT_EQ(BuildReceivedHeader(info),
              absl::StrCat("Received: from client.example ([192.0.2.1])\r\n"
                           "\tby mx.example (Tern) with ESMTPS id 0123456789abcdef.1\r\n"
                           "\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 verify=",
                           verify,
                           ");\r\n"
                           "\tSat, 21 Nov 2026 07:58:22 +0000\r\n"));
  }
}

TEST(BuildReceivedHeader, TlsCommentCannotBeBrokenOutOf) {
  ReceivedInfo info = Info();
  info.tls_version = "TLSv1.2";
  info.tls_cipher = "X) ; by evil\r\nX-Injected: 1";
  info.tls_verify = "OK";
  const std::string header = BuildReceivedHeader(info);
  EXPECT_EQ(header.find("X-Injected: 1\r\n"), std::string::npos);
  EXPECT_NE(header.find("(version=TLSv1.2 cipher=X____by_evil__X-Injected__1 verify=OK);\r\n"), std::string::npos)
      << header;
}

TEST(ReceivedProtocol, NamesProtocolsPerRfc3848And6531) {
  EXPECT_EQ(ReceivedProtocol(false, false, false, false), "SMTP");
  EXPECT_EQ(ReceivedProtocol(true, false, false, false), "ESMTP");
  EXPECT_EQ(ReceivedProtocol(true, true, false, false), "ESMTPS");
  EXPECT_EQ(ReceivedProtocol(true, false, true, false), "ESMTPA");
  EXPECT_EQ(ReceivedProtocol(true, true, true, false), "ESMTPSA");
  EXPECT_EQ(ReceivedProtocol(true, true, false, true), "UTF8SMTPS");
}

}  // namespace
}  // namespace tern::ingest
