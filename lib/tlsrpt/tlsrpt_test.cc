#include "lib/tlsrpt/tlsrpt.h"

#include <zlib.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::tlsrpt {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;

// ---------------------------------------------------------------------------
// ParseRecord

TEST(ParseRecord, AcceptsMinimalMailtoRecord) {
  absl::StatusOr<Record> record = ParseRecord({"v=TLSRPTv1;rua=mailto:reports@example.com"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:reports@example.com"));
}

TEST(ParseRecord, AcceptsWhitespaceAroundDelimitersAndAFinalDelimiter) {
  absl::StatusOr<Record> record =
      ParseRecord({"v=TLSRPTv1 ;\trua=mailto:a@example.com ,\thttps://reports.example.com/tlsrpt ; "});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:a@example.com", "https://reports.example.com/tlsrpt"));
}

TEST(ParseRecord, KeepsSeveralRuaUrisInRecordOrder) {
  absl::StatusOr<Record> record =
      ParseRecord({"v=TLSRPTv1; rua=https://b.example/r,mailto:z@example.com,mailto:a@example.com"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("https://b.example/r", "mailto:z@example.com", "mailto:a@example.com"));
}

TEST(ParseRecord, AcceptsHttpsUriWithPortAndQueryAndLowersTheScheme) {
  absl::StatusOr<Record> record = ParseRecord({"v=TLSRPTv1; rua=HTTPS://reports.example.com:8443/tls?k=v&x=%2C"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("https://reports.example.com:8443/tls?k=v&x=%2C"));
}

TEST(ParseRecord, SkipsUnknownSchemesButKeepsTheOthers) {
  absl::StatusOr<Record> record =
      ParseRecord({"v=TLSRPTv1; rua=http://reports.example.com/,ftp://x.example/,mailto:tls@example.com"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:tls@example.com"));
}

TEST(ParseRecord, OnlyUnknownSchemesIsAnError) {
  absl::StatusOr<Record> record = ParseRecord({"v=TLSRPTv1; rua=http://reports.example.com/"});
  EXPECT_EQ(record.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(record.status().message(), HasSubstr("http://reports.example.com/"));
}

TEST(ParseRecord, SkipsMailtoWithoutUsableAddress) {
  absl::StatusOr<Record> record = ParseRecord({"v=TLSRPTv1; rua=mailto:nobody,mailto:,mailto:ok@example.com"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:ok@example.com"));
}

TEST(ParseRecord, MissingRuaIsAnError) {
  for (const char* txt : {"v=TLSRPTv1", "v=TLSRPTv1;", "v=TLSRPTv1; ext=1", "v=TLSRPTv1; RUA=mailto:a@example.com"}) {
    SCOPED_TRACE(txt);
    absl::StatusOr<Record> record = ParseRecord({txt});
    EXPECT_EQ(record.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ParseRecord, TwoTlsRptRecordsAreAnError) {
  absl::StatusOr<Record> record =
      ParseRecord({"v=TLSRPTv1; rua=mailto:a@example.com", "v=TLSRPTv1; rua=mailto:b@example.com"});
  EXPECT_EQ(record.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(record.status().message(), HasSubstr("2 TXT records"));
}

TEST(ParseRecord, IgnoresOtherTxtRecords) {
  absl::StatusOr<Record> record =
      ParseRecord({"v=spf1 -all", "v=TLSRPTv2; rua=mailto:new@example.com", "v=TLSRPTv10; rua=mailto:ten@example.com",
                   "site-verification=abc", "v=TLSRPTv1; rua=mailto:tls@example.com"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:tls@example.com"));
}

TEST(ParseRecord, NoTlsRptRecordIsNotFound) {
  EXPECT_EQ(ParseRecord({}).status().code(), absl::StatusCode::kNotFound);
  // The version is case-sensitive (%s in the ABNF) and must come first.
  EXPECT_EQ(ParseRecord({"v=spf1 -all", "V=tlsrptv1; rua=mailto:a@example.com", " v=TLSRPTv1; rua=mailto:a@x.example"})
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

TEST(ParseRecord, IgnoresUnknownFields) {
  absl::StatusOr<Record> record =
      ParseRecord({"v=TLSRPTv1; ext.1=value:with/slashes; rua=mailto:a@example.com; x_y-z=1"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:a@example.com"));
}

TEST(ParseRecord, PercentDecodesMailtoAddresses) {
  absl::StatusOr<Record> record = ParseRecord({"v=TLSRPTv1; rua=mailto:tls%2Breports@example.com?subject=hi"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:tls+reports@example.com"));
}

TEST(ParseRecord, EncodedCommaInMailtoGivesTwoAddresses) {
  absl::StatusOr<Record> record = ParseRecord({"v=TLSRPTv1; rua=mailto:a@example.com%2Cb@example.org"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:a@example.com", "mailto:b@example.org"));
}

TEST(ParseRecord, DecodedControlCharactersAreNotAnAddress) {
  absl::StatusOr<Record> record =
      ParseRecord({"v=TLSRPTv1; rua=mailto:a@example.com%0D%0ABcc:x@evil.example,mailto:ok@example.com"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:ok@example.com"));
}

TEST(ParseRecord, ToleratesWhitespaceAfterTheLastField) {
  absl::StatusOr<Record> record = ParseRecord({"v=TLSRPTv1; rua=mailto:a@example.com \t"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:a@example.com"));
}

TEST(ParseRecord, RejectsWhatTheAbnfDoesNotAllow) {
  struct Case {
    const char* label;
    const char* txt;
  };
  const Case cases[] = {
      {"empty field", "v=TLSRPTv1;;rua=mailto:a@example.com"},
      {"text before the first delimiter", "v=TLSRPTv1 x; rua=mailto:a@example.com"},
      {"space after rua=", "v=TLSRPTv1; rua= mailto:a@example.com"},
      {"space around =", "v=TLSRPTv1; rua =mailto:a@example.com"},
      {"empty URI", "v=TLSRPTv1; rua=mailto:a@example.com,,mailto:b@example.com"},
      {"unencoded !", "v=TLSRPTv1; rua=mailto:a@example.com!10m"},
      {"space in URI", "v=TLSRPTv1; rua=https://example.com/a b"},
      {"bad percent-encoding", "v=TLSRPTv1; rua=mailto:a%2@example.com"},
      {"no scheme", "v=TLSRPTv1; rua=a@example.com"},
      {"extension without =", "v=TLSRPTv1; rua=mailto:a@example.com; flag"},
      {"extension value with =", "v=TLSRPTv1; rua=mailto:a@example.com; x=a=b"},
      {"extension name too long", "v=TLSRPTv1; rua=mailto:a@example.com; abcdefghijklmnopqrstuvwxyz0123456=1"},
      {"extension name starting with _", "v=TLSRPTv1; rua=mailto:a@example.com; _x=1"},
      {"non-ASCII", "v=TLSRPTv1; rua=mailto:b\xc3\xbc@example.com"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    absl::StatusOr<Record> record = ParseRecord({c.txt});
    EXPECT_EQ(record.status().code(), absl::StatusCode::kInvalidArgument) << record.status();
  }
}

TEST(ParseRecord, RuaFieldTwiceAddsBothLists) {
  absl::StatusOr<Record> record = ParseRecord({"v=TLSRPTv1; rua=mailto:a@example.com; rua=https://r.example/"});
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_THAT(record->rua, ElementsAre("mailto:a@example.com", "https://r.example/"));
}

// ---------------------------------------------------------------------------
// Aggregate

SessionCount Success(const std::string& type, uint64_t n) {
  SessionCount c;
  c.policy_type = type;
  c.count = n;
  return c;
}

SessionCount Failure(const std::string& type, const std::string& result, const std::string& mx, uint64_t n) {
  SessionCount c;
  c.policy_type = type;
  c.result_type = result;
  c.receiving_mx_hostname = mx;
  c.receiving_ip = "192.0.2.1";
  c.count = n;
  return c;
}

TEST(Aggregate, GroupsByPolicyAndSumsSuccessesAndFailures) {
  SessionCount sts = Success(kPolicySts, 5);
  sts.policy_string = {"version: STSv1", "mode: enforce", "mx: mx.example.com", "max_age: 86400"};
  sts.mx_host = {"mx.example.com"};
  SessionCount sts_again = sts;
  sts_again.count = 2;
  SessionCount sts_fail = Failure(kPolicySts, kCertificateExpired, "mx.example.com", 3);
  sts_fail.policy_string = sts.policy_string;
  sts_fail.mx_host = sts.mx_host;
  SessionCount sts_fail_again = sts_fail;
  sts_fail_again.count = 4;
  std::vector<PolicyResult> policies =
      Aggregate("example.com", {sts, Success(kPolicyNone, 1), sts_fail, sts_again,
                                Failure(kPolicyNone, kStartTlsNotSupported, "mx2.example.com", 6), sts_fail_again});
  ASSERT_THAT(policies, SizeIs(2));
  // "no-policy-found" sorts before "sts".
  EXPECT_EQ(policies[0].policy_type, kPolicyNone);
  EXPECT_EQ(policies[0].policy_domain, "example.com");
  EXPECT_EQ(policies[0].total_successful_session_count, 1u);
  EXPECT_EQ(policies[0].total_failure_session_count, 6u);
  ASSERT_THAT(policies[0].failure_details, SizeIs(1));
  EXPECT_EQ(policies[0].failure_details[0].result_type, kStartTlsNotSupported);
  EXPECT_EQ(policies[0].failure_details[0].failed_session_count, 6u);

  EXPECT_EQ(policies[1].policy_type, kPolicySts);
  EXPECT_EQ(policies[1].policy_string, sts.policy_string);  // line order kept, not sorted
  EXPECT_THAT(policies[1].mx_host, ElementsAre("mx.example.com"));
  EXPECT_EQ(policies[1].total_successful_session_count, 7u);
  EXPECT_EQ(policies[1].total_failure_session_count, 7u);
  ASSERT_THAT(policies[1].failure_details, SizeIs(1));
  EXPECT_EQ(policies[1].failure_details[0].result_type, kCertificateExpired);
  EXPECT_EQ(policies[1].failure_details[0].receiving_mx_hostname, "mx.example.com");
  EXPECT_EQ(policies[1].failure_details[0].receiving_ip, "192.0.2.1");
  EXPECT_EQ(policies[1].failure_details[0].failed_session_count, 7u);
}

TEST(Aggregate, DifferentPolicyStringsAreDifferentPolicies) {
  SessionCount a = Success(kPolicyTlsa, 1);
  a.policy_string = {"3 1 1 aaaa"};
  SessionCount b = Success(kPolicyTlsa, 1);
  b.policy_string = {"3 1 1 bbbb"};
  EXPECT_THAT(Aggregate("example.com", {b, a}), SizeIs(2));
}

TEST(Aggregate, SplitsFailureDetailsByTheirFields) {
  SessionCount reason = Failure(kPolicySts, kValidationFailure, "mx.example.com", 1);
  reason.failure_reason_code = "X509_V_ERR_CERT_HAS_EXPIRED";
  SessionCount other_ip = Failure(kPolicySts, kValidationFailure, "mx.example.com", 1);
  other_ip.receiving_ip = "192.0.2.2";
  std::vector<PolicyResult> policies =
      Aggregate("example.com", {reason, other_ip, Failure(kPolicySts, kValidationFailure, "mx.example.com", 1),
                                Failure(kPolicySts, kCertificateHostMismatch, "mx.example.com", 1)});
  ASSERT_THAT(policies, SizeIs(1));
  ASSERT_THAT(policies[0].failure_details, SizeIs(4));
  EXPECT_EQ(policies[0].total_failure_session_count, 4u);
  // Sorted by (result type, MX, IP, reason).
  EXPECT_EQ(policies[0].failure_details[0].result_type, kCertificateHostMismatch);
  EXPECT_EQ(policies[0].failure_details[1].failure_reason_code, "");
  EXPECT_EQ(policies[0].failure_details[1].receiving_ip, "192.0.2.1");
  EXPECT_EQ(policies[0].failure_details[2].failure_reason_code, "X509_V_ERR_CERT_HAS_EXPIRED");
  EXPECT_EQ(policies[0].failure_details[3].receiving_ip, "192.0.2.2");
}

TEST(Aggregate, OrderDoesNotDependOnInputOrder) {
  std::vector<SessionCount> counts = {
      Success(kPolicySts, 3),
      Success(kPolicyTlsa, 2),
      Failure(kPolicyTlsa, kTlsaInvalid, "b.example.com", 1),
      Failure(kPolicyTlsa, kDnssecInvalid, "a.example.com", 1),
      Failure(kPolicyNone, kStartTlsNotSupported, "c.example.com", 9),
  };
  std::sort(counts.begin(), counts.end(), [](const SessionCount& a, const SessionCount& b) {
    return a.receiving_mx_hostname < b.receiving_mx_hostname;
  });
  Report first;
  first.policies = Aggregate("example.com", counts);
  std::string expected = RenderJson(first);
  int permutations = 0;
  do {
    Report report;
    report.policies = Aggregate("example.com", counts);
    ASSERT_EQ(RenderJson(report), expected);
    ++permutations;
  } while (std::next_permutation(counts.begin(), counts.end(), [](const SessionCount& a, const SessionCount& b) {
    return a.receiving_mx_hostname < b.receiving_mx_hostname;
  }));
  EXPECT_GT(permutations, 1);
}

TEST(Aggregate, ZeroCountsReportNothing) {
  EXPECT_THAT(Aggregate("example.com", {Success(kPolicySts, 0)}), SizeIs(0));
  std::vector<PolicyResult> policies =
      Aggregate("example.com", {Success(kPolicySts, 1), Failure(kPolicySts, kCertificateExpired, "mx", 0)});
  ASSERT_THAT(policies, SizeIs(1));
  EXPECT_THAT(policies[0].failure_details, SizeIs(0));
}

// ---------------------------------------------------------------------------
// RenderJson

Report SmallReport() {
  Report report;
  report.organization_name = "Example Sender";
  report.start = absl::FromUnixSeconds(1795305600);  // 2026-11-22T00:00:00Z
  report.end = absl::FromUnixSeconds(1795391999);    // 2026-11-22T23:59:59Z
  report.contact_info = "tlsrpt@mail.example.com";
  report.report_id = "20261122.example.net@mail.example.com";
  PolicyResult sts;
  sts.policy_type = kPolicySts;
  sts.policy_string = {"version: STSv1", "mode: enforce", "mx: *.example.net", "max_age: 604800"};
  sts.policy_domain = "example.net";
  sts.mx_host = {"*.example.net"};
  sts.total_successful_session_count = 5326;
  sts.total_failure_session_count = 303;
  sts.failure_details.push_back(FailureDetail{.result_type = kCertificateExpired,
                                              .receiving_mx_hostname = "mx1.example.net",
                                              .receiving_ip = "2001:db8::25",
                                              .failure_reason_code = "",
                                              .failed_session_count = 300});
  FailureDetail no_starttls;
  no_starttls.result_type = kStartTlsNotSupported;
  no_starttls.failed_session_count = 3;
  sts.failure_details.push_back(no_starttls);
  PolicyResult none;
  none.policy_type = kPolicyNone;
  none.policy_domain = "example.net";
  none.total_successful_session_count = 1;
  report.policies = {sts, none};
  return report;
}

TEST(RenderJson, MatchesGoldenForSmallReport) {
  EXPECT_EQ(RenderJson(SmallReport()),
            "{\"organization-name\":\"Example Sender\","
            "\"date-range\":{\"start-datetime\":\"2026-11-22T00:00:00Z\",\"end-datetime\":\"2026-11-22T23:59:59Z\"},"
            "\"contact-info\":\"tlsrpt@mail.example.com\","
            "\"report-id\":\"20261122.example.net@mail.example.com\","
            "\"policies\":["
            "{\"policy\":{\"policy-type\":\"sts\","
            "\"policy-string\":[\"version: STSv1\",\"mode: enforce\",\"mx: *.example.net\",\"max_age: 604800\"],"
            "\"policy-domain\":\"example.net\",\"mx-host\":[\"*.example.net\"]},"
            "\"summary\":{\"total-successful-session-count\":5326,\"total-failure-session-count\":303},"
            "\"failure-details\":["
            "{\"result-type\":\"certificate-expired\",\"receiving-mx-hostname\":\"mx1.example.net\","
            "\"receiving-ip\":\"2001:db8::25\",\"failed-session-count\":300},"
            "{\"result-type\":\"starttls-not-supported\",\"failed-session-count\":3}]},"
            "{\"policy\":{\"policy-type\":\"no-policy-found\",\"policy-domain\":\"example.net\"},"
            "\"summary\":{\"total-successful-session-count\":1,\"total-failure-session-count\":0}}"
            "]}");
}

TEST(RenderJson, EmptyReportStillHasTheRequiredMembers) {
  Report report;
  report.start = absl::UnixEpoch();
  report.end = absl::UnixEpoch() + absl::Hours(24);
  EXPECT_EQ(RenderJson(report),
            "{\"organization-name\":\"\",\"date-range\":{\"start-datetime\":\"1970-01-01T00:00:00Z\","
            "\"end-datetime\":\"1970-01-02T00:00:00Z\"},\"contact-info\":\"\",\"report-id\":\"\",\"policies\":[]}");
}

TEST(RenderJson, EscapesQuotesBackslashesAndControlCharacters) {
  Report report;
  report.organization_name = std::string("a\"b\\c/\b\f\n\r\t\x01\x1f\x7f", 14);
  std::string json = RenderJson(report);
  EXPECT_THAT(json, HasSubstr("\"organization-name\":\"a\\\"b\\\\c/\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\""));
  EXPECT_THAT(json, HasSubstr("\"contact-info\":\"\""));
}

TEST(RenderJson, EscapesNulInsideStrings) {
  Report report;
  report.contact_info = std::string("a\0b", 3);
  EXPECT_THAT(RenderJson(report), HasSubstr("\"contact-info\":\"a\\u0000b\""));
}

TEST(RenderJson, PassesUtf8ThroughAndReplacesInvalidBytes) {
  Report report;
  report.organization_name = "Gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x93\xa7";  // "Grüß € 📧"
  report.contact_info = "bad \xff \xc3 \xed\xa0\x80 \xc0\xaf end";  // stray, truncated, surrogate, overlong
  std::string json = RenderJson(report);
  EXPECT_THAT(json, HasSubstr("\"organization-name\":\"Gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x93\xa7\""));
  EXPECT_THAT(json, HasSubstr("\"contact-info\":\"bad \xef\xbf\xbd \xef\xbf\xbd "
                              "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd end\""));
}

TEST(RenderJson, WritesDatesInUtcWholeSeconds) {
  Report report;
  report.start = absl::FromUnixMillis(1795305600999);
  report.end = absl::InfiniteFuture();
  std::string json = RenderJson(report);
  EXPECT_THAT(json, HasSubstr("\"start-datetime\":\"2026-11-22T00:00:00Z\""));
  EXPECT_THAT(json, HasSubstr("\"end-datetime\":\"9999-12-31T23:59:59Z\""));
}

// ---------------------------------------------------------------------------
// Gzip

// Inflates a gzip stream with zlib; "" with a failure on error.
std::string Gunzip(const std::string& gz) {
  z_stream zs{};
  EXPECT_EQ(inflateInit2(&zs, 15 + 16), Z_OK);  // gzip only, no zlib header
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  zs.avail_in = static_cast<uInt>(gz.size());
  std::string out;
  char buffer[4096];
  int rc;
  do {
    zs.next_out = reinterpret_cast<Bytef*>(buffer);
    zs.avail_out = sizeof buffer;
    rc = inflate(&zs, Z_NO_FLUSH);
    EXPECT_TRUE(rc == Z_OK || rc == Z_STREAM_END) << rc;
    out.append(buffer, sizeof buffer - zs.avail_out);
  } while (rc == Z_OK);
  EXPECT_EQ(zs.avail_in, 0u) << "trailing bytes after the gzip stream";
  inflateEnd(&zs);
  return rc == Z_STREAM_END ? out : "";
}

TEST(Gzip, RoundTripsThroughZlibInflate) {
  std::string json = RenderJson(SmallReport());
  absl::StatusOr<std::string> gz = Gzip(json);
  ASSERT_TRUE(gz.ok()) << gz.status();
  ASSERT_GE(gz->size(), 18u);
  EXPECT_EQ(static_cast<unsigned char>((*gz)[0]), 0x1f);  // RFC 1952 ID1 ID2
  EXPECT_EQ(static_cast<unsigned char>((*gz)[1]), 0x8b);
  EXPECT_EQ((*gz)[2], 8);  // CM = deflate
  EXPECT_EQ(Gunzip(*gz), json);
}

TEST(Gzip, RoundTripsEmptyAndLargeInputs) {
  absl::StatusOr<std::string> empty = Gzip("");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(Gunzip(*empty), "");

  // Larger than one input chunk (1 MiB) and poorly compressible, so that
  // both the input and the output loops go round more than once.
  std::string big;
  uint64_t x = 88172645463325252ULL;
  while (big.size() < (3u << 20)) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    big.push_back(static_cast<char>(x));
  }
  absl::StatusOr<std::string> gz = Gzip(big);
  ASSERT_TRUE(gz.ok());
  EXPECT_EQ(Gunzip(*gz), big);
}

TEST(Gzip, IsDeterministic) { EXPECT_EQ(*Gzip("same input"), *Gzip("same input")); }

// ---------------------------------------------------------------------------
// ReportFilename

TEST(ReportFilename, FollowsSection51) {
  EXPECT_EQ(ReportFilename("mail.sender.example.com", "example.net", absl::FromUnixSeconds(1470013207),
                           absl::FromUnixSeconds(1470186007), "001"),
            "mail.sender.example.com!example.net!1470013207!1470186007!001.json.gz");
}

TEST(ReportFilename, LeavesOutAnEmptyUniqueId) {
  EXPECT_EQ(ReportFilename("s.example", "p.example", absl::FromUnixSeconds(1), absl::FromUnixSeconds(2), ""),
            "s.example!p.example!1!2.json.gz");
}

TEST(ReportFilename, KeepsOnlyAlphanumericsOfTheUniqueId) {
  EXPECT_EQ(ReportFilename("s.example", "p.example", absl::FromUnixSeconds(1), absl::FromUnixSeconds(2), "a-b!c/\"1"),
            "s.example!p.example!1!2!abc1.json.gz");
  EXPECT_EQ(ReportFilename("s.example", "p.example", absl::FromUnixSeconds(1), absl::FromUnixSeconds(2), "!!"),
            "s.example!p.example!1!2.json.gz");
}

TEST(ReportFilename, ClampsTimesBeforeTheEpochToZero) {
  EXPECT_EQ(ReportFilename("s.example", "p.example", absl::FromUnixSeconds(-5), absl::FromUnixSeconds(2), ""),
            "s.example!p.example!0!2.json.gz");
}

// ---------------------------------------------------------------------------
// ComposeMail

MailOptions Options() {
  MailOptions options;
  options.from = "tlsrpt@mail.example.com";
  options.to = "tls-reports@example.net";
  options.submitter = "mail.example.com";
  options.policy_domain = "example.net";
  options.message_id = "tlsrpt.20261122.1@mail.example.com";
  options.date = absl::FromUnixSeconds(1795309200);  // 2026-11-22T01:00:00Z, a Sunday
  return options;
}

// A message or part split into unfolded header fields and a body.
struct Entity {
  std::vector<std::pair<std::string, std::string>> headers;  // name, unfolded value
  std::string body;

  std::string Get(absl::string_view name) const {
    std::string value;
    int found = 0;
    for (const auto& [n, v] : headers) {
      if (absl::EqualsIgnoreCase(n, name)) {
        value = v;
        ++found;
      }
    }
    EXPECT_LE(found, 1) << name << " appears more than once";
    return value;
  }
};

Entity ParseEntity(absl::string_view text) {
  Entity entity;
  size_t end = text.find("\r\n\r\n");
  EXPECT_NE(end, absl::string_view::npos) << "no empty line after the header";
  absl::string_view head = text.substr(0, end);
  entity.body = std::string(text.substr(end + 4));
  for (absl::string_view line : absl::StrSplit(head, "\r\n")) {
    if (!line.empty() && (line[0] == ' ' || line[0] == '\t')) {
      EXPECT_FALSE(entity.headers.empty());
      entity.headers.back().second += std::string(line);  // unfold: drop the CRLF only
      continue;
    }
    size_t colon = line.find(':');
    EXPECT_NE(colon, absl::string_view::npos) << line;
    entity.headers.emplace_back(std::string(line.substr(0, colon)),
                                std::string(absl::StripLeadingAsciiWhitespace(line.substr(colon + 1))));
  }
  return entity;
}

// The value of `param="..."` in a header field value.
std::string Param(absl::string_view value, absl::string_view param) {
  std::string key = absl::StrCat(param, "=\"");
  size_t at = value.find(key);
  if (at == absl::string_view::npos) {
    return "";
  }
  at += key.size();
  return std::string(value.substr(at, value.find('"', at) - at));
}

TEST(ComposeMail, WritesTheSection53HeaderFields) {
  Report report = SmallReport();
  absl::StatusOr<std::string> mail = ComposeMail(report, Options());
  ASSERT_TRUE(mail.ok()) << mail.status();
  Entity message = ParseEntity(*mail);
  EXPECT_EQ(message.Get("From"), "tlsrpt@mail.example.com");
  EXPECT_EQ(message.Get("To"), "tls-reports@example.net");
  EXPECT_EQ(message.Get("Date"), "Sun, 22 Nov 2026 01:00:00 +0000");
  EXPECT_EQ(message.Get("Message-ID"), "<tlsrpt.20261122.1@mail.example.com>");
  EXPECT_EQ(message.Get("Subject"),
            "Report Domain: example.net Submitter: mail.example.com Report-ID: "
            "<20261122.example.net@mail.example.com>");
  EXPECT_EQ(message.Get("TLS-Report-Domain"), "example.net");
  EXPECT_EQ(message.Get("TLS-Report-Submitter"), "mail.example.com");
  EXPECT_EQ(message.Get("TLS-Required"), "No");
  EXPECT_EQ(message.Get("MIME-Version"), "1.0");
  std::string content_type = message.Get("Content-Type");
  EXPECT_TRUE(absl::StartsWith(content_type, "multipart/report;")) << content_type;
  EXPECT_EQ(Param(content_type, "report-type"), "tlsrpt");
  EXPECT_FALSE(Param(content_type, "boundary").empty()) << content_type;
}

TEST(ComposeMail, AttachmentInflatesToTheJsonReport) {
  Report report = SmallReport();
  MailOptions options = Options();
  absl::StatusOr<std::string> mail = ComposeMail(report, options);
  ASSERT_TRUE(mail.ok()) << mail.status();
  Entity message = ParseEntity(*mail);
  std::string boundary = Param(message.Get("Content-Type"), "boundary");
  ASSERT_FALSE(boundary.empty());

  // RFC 2046 §5.1.1: each delimiter is CRLF "--" boundary; the last one
  // has "--" after it. Between them: the parts.
  std::string delimiter = absl::StrCat("\r\n--", boundary);
  std::vector<std::string> pieces = absl::StrSplit(message.body, delimiter);
  ASSERT_THAT(pieces, SizeIs(4));  // preamble, text, attachment, "--" CRLF epilogue
  EXPECT_EQ(pieces[3], "--\r\n");
  ASSERT_TRUE(absl::StartsWith(pieces[1], "\r\n"));
  ASSERT_TRUE(absl::StartsWith(pieces[2], "\r\n"));

  Entity text = ParseEntity(absl::string_view(pieces[1]).substr(2));
  EXPECT_EQ(text.Get("Content-Type"), "text/plain; charset=\"us-ascii\"");
  EXPECT_THAT(text.body, HasSubstr("mail.example.com"));
  EXPECT_THAT(text.body, HasSubstr("example.net"));
  EXPECT_THAT(text.body, HasSubstr("2026-11-22T00:00:00Z to 2026-11-22T23:59:59Z"));

  Entity attachment = ParseEntity(absl::string_view(pieces[2]).substr(2));
  EXPECT_EQ(attachment.Get("Content-Type"), "application/tlsrpt+gzip");
  EXPECT_EQ(attachment.Get("Content-Transfer-Encoding"), "base64");
  std::string disposition = attachment.Get("Content-Disposition");
  EXPECT_TRUE(absl::StartsWith(disposition, "attachment;")) << disposition;
  EXPECT_EQ(Param(disposition, "filename"),
            ReportFilename(options.submitter, options.policy_domain, report.start, report.end, ""));

  std::string base64;
  std::vector<absl::string_view> lines = absl::StrSplit(attachment.body, "\r\n");
  ASSERT_GE(lines.size(), 2u);
  EXPECT_EQ(lines.back(), "");  // the body ends with CRLF
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    EXPECT_LE(lines[i].size(), 76u);
    if (i + 2 < lines.size()) {
      EXPECT_EQ(lines[i].size(), 76u) << "only the last line may be shorter";
    }
    base64 += std::string(lines[i]);
  }
  std::string gz;
  ASSERT_TRUE(absl::Base64Unescape(base64, &gz));
  EXPECT_EQ(Gunzip(gz), RenderJson(report));
}

TEST(ComposeMail, UsesCrlfEverywhereAndKeepsLinesShort) {
  absl::StatusOr<std::string> mail = ComposeMail(SmallReport(), Options());
  ASSERT_TRUE(mail.ok()) << mail.status();
  ASSERT_TRUE(absl::EndsWith(*mail, "\r\n"));
  for (size_t i = 0; i < mail->size(); ++i) {
    if ((*mail)[i] == '\n') {
      ASSERT_TRUE(i > 0 && (*mail)[i - 1] == '\r') << "bare LF at " << i;
    }
    if ((*mail)[i] == '\r') {
      ASSERT_TRUE(i + 1 < mail->size() && (*mail)[i + 1] == '\n') << "bare CR at " << i;
    }
  }
  for (absl::string_view line : absl::StrSplit(*mail, "\r\n")) {
    EXPECT_LE(line.size(), 78u) << line;
    for (char c : line) {
      EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "non-ASCII or control byte in " << line;
    }
  }
}

TEST(ComposeMail, FoldsALongSubjectAtItsSpaces) {
  Report report = SmallReport();
  report.report_id = std::string(60, 'r') + "@mail.example.com";
  MailOptions options = Options();
  options.policy_domain = "a-rather-long-policy-domain-name.mail.example.net";
  absl::StatusOr<std::string> mail = ComposeMail(report, options);
  ASSERT_TRUE(mail.ok()) << mail.status();
  Entity message = ParseEntity(*mail);
  EXPECT_EQ(message.Get("Subject"), absl::StrCat("Report Domain: ", options.policy_domain,
                                                 " Submitter: mail.example.com Report-ID: <", report.report_id, ">"));
  EXPECT_THAT(*mail, HasSubstr("\r\n Submitter:"));
}

TEST(ComposeMail, BoundaryDoesNotOccurInTheParts) {
  absl::StatusOr<std::string> mail = ComposeMail(SmallReport(), Options());
  ASSERT_TRUE(mail.ok()) << mail.status();
  Entity message = ParseEntity(*mail);
  std::string boundary = Param(message.Get("Content-Type"), "boundary");
  // Once in the header, then two delimiters and the close delimiter.
  size_t count = 0;
  for (size_t at = mail->find(boundary); at != std::string::npos; at = mail->find(boundary, at + 1)) {
    ++count;
  }
  EXPECT_EQ(count, 4u);
}

TEST(ComposeMail, IsDeterministic) {
  EXPECT_EQ(*ComposeMail(SmallReport(), Options()), *ComposeMail(SmallReport(), Options()));
}

TEST(ComposeMail, RefusesHeaderInjectionAndMalformedInputs) {
  struct Case {
    const char* label;
    void (*mutate)(Report&, MailOptions&);
  };
  const Case cases[] = {
      {"CRLF in from", [](Report&, MailOptions& o) { o.from = "a@example.com\r\nBcc: victim@example.org"; }},
      {"LF in to", [](Report&, MailOptions& o) { o.to = "a@example.com\nX: y"; }},
      {"CR in to", [](Report&, MailOptions& o) { o.to = "a@exa\rmple.com"; }},
      {"to without @", [](Report&, MailOptions& o) { o.to = "postmaster"; }},
      {"display name in from", [](Report&, MailOptions& o) { o.from = "Reports <a@example.com>"; }},
      {"empty to", [](Report&, MailOptions& o) { o.to = ""; }},
      {"tab in quoted local part", [](Report&, MailOptions& o) { o.to = "\"a\tb\"@example.com"; }},
      {"NUL in from", [](Report&, MailOptions& o) { o.from = std::string("a\0@example.com", 15); }},
      {"non-ASCII to", [](Report&, MailOptions& o) { o.to = "b\xc3\xbc@example.com"; }},
      {"space in submitter", [](Report&, MailOptions& o) { o.submitter = "mail example.com"; }},
      {"CRLF in submitter", [](Report&, MailOptions& o) { o.submitter = "mail.example.com\r\nX: y"; }},
      {"quote in policy domain", [](Report&, MailOptions& o) { o.policy_domain = "exa\"mple.net"; }},
      {"empty policy domain", [](Report&, MailOptions& o) { o.policy_domain = ""; }},
      {"angle bracket in message id", [](Report&, MailOptions& o) { o.message_id = "a>@b"; }},
      {"message id without @", [](Report&, MailOptions& o) { o.message_id = "abc"; }},
      {"LF in report id", [](Report& r, MailOptions&) { r.report_id = "a\n@b"; }},
      {"space in report id", [](Report& r, MailOptions&) { r.report_id = "a b"; }},
      {"empty report id", [](Report& r, MailOptions&) { r.report_id = ""; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    Report report = SmallReport();
    MailOptions options = Options();
    c.mutate(report, options);
    EXPECT_EQ(ComposeMail(report, options).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ComposeMail, AcceptsQuotedLocalPartsAndAddressLiterals) {
  MailOptions options = Options();
  options.to = "\"tls reports\"@example.net";
  options.from = "tlsrpt@[192.0.2.25]";
  absl::StatusOr<std::string> mail = ComposeMail(SmallReport(), options);
  ASSERT_TRUE(mail.ok()) << mail.status();
  EXPECT_EQ(ParseEntity(*mail).Get("To"), "\"tls reports\"@example.net");
}

TEST(ComposeMail, TakesTheAddressesParseRecordReturns) {
  absl::StatusOr<Record> record = ParseRecord({"v=TLSRPTv1; rua=mailto:tls%2Brpt@example.net"});
  ASSERT_TRUE(record.ok()) << record.status();
  MailOptions options = Options();
  options.to = record->rua[0].substr(std::string("mailto:").size());
  EXPECT_TRUE(ComposeMail(SmallReport(), options).ok());
}

TEST(UtcDay, CountsWholeDaysSinceTheEpochRoundingDown) {
  EXPECT_EQ(UtcDay(0), 0);
  EXPECT_EQ(UtcDay(86400 * 1000LL - 1), 0);
  EXPECT_EQ(UtcDay(86400 * 1000LL), 1);
  EXPECT_EQ(UtcDay(-1), -1);
  EXPECT_EQ(UtcDay(-86400 * 1000LL), -1);
  EXPECT_EQ(UtcDay(-86400 * 1000LL - 1), -2);
}

TEST(AddCounts, AddsAndStopsAtTheLargestCount) {
  EXPECT_EQ(AddCounts(2, 3), 5u);
  EXPECT_EQ(AddCounts(UINT64_MAX - 1, 5), UINT64_MAX);
}

TEST(ParseHttpsRua, SplitsHostPortAndTargetAndLowersTheHost) {
  absl::StatusOr<HttpsRua> r = ParseHttpsRua("https://Reports.Example.COM:8443/v1/tlsrpt?k=A%20b#frag");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->host, "reports.example.com");
  EXPECT_EQ(r->port, 8443);
  EXPECT_EQ(r->target, "/v1/tlsrpt?k=A%20b");  // the fragment is not sent
  EXPECT_EQ(r->Origin(), "https://reports.example.com:8443");
}

TEST(ParseHttpsRua, DefaultsToPort443AndTheRootPath) {
  absl::StatusOr<HttpsRua> r = ParseHttpsRua("HTTPS://tlsrpt.example");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->port, 443);
  EXPECT_EQ(r->target, "/");
  EXPECT_EQ(r->Origin(), "https://tlsrpt.example");
  absl::StatusOr<HttpsRua> q = ParseHttpsRua("https://tlsrpt.example?x=1");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->target, "/?x=1");
}

TEST(ParseHttpsRua, AcceptsAddressLiterals) {
  absl::StatusOr<HttpsRua> v4 = ParseHttpsRua("https://192.0.2.7:4443/r");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->host, "192.0.2.7");
  EXPECT_EQ(v4->Origin(), "https://192.0.2.7:4443");
  absl::StatusOr<HttpsRua> v6 = ParseHttpsRua("https://[2001:DB8::1]/r");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "2001:db8::1");
  EXPECT_EQ(v6->port, 443);
  EXPECT_EQ(v6->Origin(), "https://[2001:db8::1]");
}

TEST(ParseHttpsRua, RefusesWhatCannotBePostedTo) {
  for (const char* uri : {"http://example.com/", "mailto:a@example.com", "https://", "https:///path",
                          "https://user@example.com/", "https://example.com:0/", "https://example.com:65536/",
                          "https://example.com:/", "https://example.com:44a/", "https://-bad.example/",
                          "https://a..example/", "https://exa_mple.com/", "https://999.1.1.1/",
                          "https://[2001:db8::1/", "https://[zz::1]/", "https://[::1]x/", "https://example.com/a b",
                          "https://example.com/\x01", "https://example.com/caf\xc3\xa9"}) {
    EXPECT_FALSE(ParseHttpsRua(uri).ok()) << uri;
  }
  EXPECT_FALSE(ParseHttpsRua(absl::StrCat("https://", std::string(64, 'a'), ".example/")).ok());
  EXPECT_TRUE(ParseHttpsRua(absl::StrCat("https://", std::string(63, 'a'), ".example/")).ok());
  EXPECT_THAT(ParseHttpsRua("https://u:p@example.com/").status().message(), HasSubstr("user information"));
}

}  // namespace
}  // namespace tern::tlsrpt
