#include "services/queue/key_codec.h"

#include <algorithm>
#include <vector>

#include "gtest/gtest.h"

namespace tern::queue {
namespace {

TEST(KeyCodec, ScheduleKeysSortByTypeThenDueTimeThenId) {
  const std::vector<std::string> in_order = {
      EncodeScheduleKey(JobType::kDelivery, 0, "z"),
      EncodeScheduleKey(JobType::kDelivery, 255, "a"),
      EncodeScheduleKey(JobType::kDelivery, 256, "a"),
      EncodeScheduleKey(JobType::kDelivery, 256, "b"),
      EncodeScheduleKey(JobType::kDelivery, 1700000000000, "a"),
      EncodeScheduleKey(JobType::kDelivery, INT64_MAX, "a"),
      EncodeScheduleKey(JobType::kBounce, 0, "a"),
      EncodeScheduleKey(JobType::kBounce, 1, "a"),
  };
  std::vector<std::string> sorted = in_order;
  std::reverse(sorted.begin(), sorted.end());
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, in_order);
}

TEST(KeyCodec, DeletedKeysSortByTimeAndRoundTrip) {
  const std::string early = DeletedKey(256, "tok-b", "m1");
  const std::string late = DeletedKey(1700000000000, "tok-a", "m0");
  EXPECT_LT(early, late);  // the purge walks them oldest first
  EXPECT_TRUE(early.starts_with(DeletedPrefix()));
  auto parts = DecodeDeletedKey(late);
  ASSERT_TRUE(parts.has_value());
  EXPECT_EQ(*parts, (DeletedKeyParts{1700000000000, "tok-a", "m0"}));
  EXPECT_EQ(DecodeDeletedKey(DeletedKey(-5, "t", "m"))->deleted_unix_ms, 0);
  // Not a deleted key: wrong prefix, too short, no separator, empty parts.
  EXPECT_FALSE(DecodeDeletedKey("d123").has_value());
  EXPECT_FALSE(DecodeDeletedKey(IdempotencyKey("12345678tok\0m")).has_value());
  EXPECT_FALSE(DecodeDeletedKey(std::string("d") + std::string(8, '\0') + "tokm").has_value());
  EXPECT_FALSE(DecodeDeletedKey(std::string("d") + std::string(8, '\0') + std::string("\0m", 2)).has_value());
  EXPECT_FALSE(DecodeDeletedKey(std::string("d") + std::string(8, '\0') + std::string("t\0", 2)).has_value());
}

TEST(KeyCodec, NegativeDueTimesAreStoredAsZero) {
  EXPECT_EQ(EncodeScheduleKey(JobType::kBounce, -5, "x"), EncodeScheduleKey(JobType::kBounce, 0, "x"));
}

TEST(KeyCodec, ScheduleKeyRoundTrips) {
  const std::string key = EncodeScheduleKey(JobType::kBounce, 1234567890123, "019a4e2c7d103f2a0001.b1");
  auto decoded = DecodeScheduleKey(key);
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(decoded->type, JobType::kBounce);
  EXPECT_EQ(decoded->due_unix_ms, 1234567890123);
  EXPECT_EQ(decoded->job_id, "019a4e2c7d103f2a0001.b1");
}

TEST(KeyCodec, RejectsKeysItDidNotWrite) {
  EXPECT_FALSE(DecodeScheduleKey("short").has_value());
  std::string bad_type = EncodeScheduleKey(JobType::kDelivery, 1, "x");
  bad_type[0] = 9;
  EXPECT_FALSE(DecodeScheduleKey(bad_type).has_value());
}

TEST(KeyCodec, ScanLimitIncludesEverythingDueAndNothingLater) {
  const std::string limit = ScheduleScanLimit(JobType::kDelivery, 1000);
  EXPECT_LT(EncodeScheduleKey(JobType::kDelivery, 1000, "\xff\xff\xff"), limit);
  EXPECT_LT(EncodeScheduleKey(JobType::kDelivery, 999, "zzz"), limit);
  EXPECT_GE(EncodeScheduleKey(JobType::kDelivery, 1001, ""), limit);
  EXPECT_GE(EncodeScheduleKey(JobType::kBounce, 0, ""), limit);
  EXPECT_LE(ScheduleScanStart(JobType::kDelivery), EncodeScheduleKey(JobType::kDelivery, 0, ""));
  EXPECT_GT(ScheduleScanStart(JobType::kBounce), EncodeScheduleKey(JobType::kDelivery, INT64_MAX, "zz"));
}

TEST(KeyCodec, JobIdsNameTheirMessage) {
  EXPECT_EQ(DeliveryId("m1", 2), "m1.2");
  EXPECT_EQ(BounceId("m1", 3), "m1.b3");
  EXPECT_NE(IdempotencyKey("k"), "k");
  EXPECT_EQ(CorruptKey("deliveries", "m1.1"), std::string("deliveries\0m1.1", 15));
}

}  // namespace
}  // namespace tern::queue

namespace tern::queue {
namespace {

TEST(KeyCodec, EventKeysSortBySequenceAndRoundTrip) {
  EXPECT_LT(EventKey(1), EventKey(2));
  EXPECT_LT(EventKey(255), EventKey(256));
  EXPECT_LT(EventKey(1ull << 40), EventKey((1ull << 40) + 1));
  EXPECT_EQ(DecodeEventKey(EventKey(123456789)), 123456789u);
  EXPECT_EQ(DecodeEventKey("short"), std::nullopt);
}

TEST(KeyCodec, HostFlagKeysShareTheirFlagsPrefixOnly) {
  const std::string k = HostFlagKey("broken_tls", "192.0.2.1");
  EXPECT_EQ(k.rfind(HostFlagPrefix("broken_tls"), 0), 0u);
  EXPECT_EQ(k.rfind(HostFlagPrefix(""), 0), 0u);
  // "broken" is a prefix of "broken_tls" as text, but not as a flag.
  EXPECT_NE(k.rfind(HostFlagPrefix("broken"), 0), 0u);
  EXPECT_NE(k.rfind(IdempotencyKey(""), 0), 0u);
}

TEST(KeyCodec, StsPolicyKeysAreApartFromHostFlagsAndIdempotencyKeys) {
  const std::string k = StsPolicyKey("example.com");
  EXPECT_NE(k.rfind(HostFlagPrefix(""), 0), 0u);
  EXPECT_NE(k.rfind(IdempotencyKey(""), 0), 0u);
  EXPECT_NE(StsPolicyKey("example.com"), StsPolicyKey("example.org"));
  EXPECT_NE(HostFlagKey("x", "y").rfind(StsPolicyKey(""), 0), 0u);
}

TEST(KeyCodec, TheInstanceKeyIsInNoOtherMetaRange) {
  // Every prefix scan of the meta CF (idempotency sweep, host flags, MX
  // sites, TLS counts, deleted records) must pass it by.
  const std::string k = InstanceKey();
  for (const std::string& other : {IdempotencyKey(""), HostFlagPrefix(""), StsPolicyKey(""), MxSitePrefix(),
                                   TlsRptPrefix(), DeletedPrefix()}) {
    EXPECT_NE(k.rfind(other, 0), 0u) << other;
    EXPECT_NE(other.rfind(k, 0), 0u) << other;
  }
}

TEST(KeyCodec, MxSiteKeysShareOnlyTheirOwnPrefix) {
  const std::string k = MxSiteKey("example.com");
  EXPECT_EQ(k.rfind(MxSitePrefix(), 0), 0u);
  for (const std::string& other : {HostFlagPrefix(""), IdempotencyKey(""), StsPolicyKey(""), TlsRptPrefix()}) {
    EXPECT_NE(k.rfind(other, 0), 0u) << other;
    EXPECT_NE(other.rfind(MxSitePrefix(), 0), 0u) << other;
  }
  EXPECT_NE(MxSiteKey("example.com"), MxSiteKey("example.org"));
}

tern::v1::TlsRptCount Count(int64_t day, const std::string& domain, const std::string& result_type = "") {
  tern::v1::TlsRptCount c;
  c.set_day(day);
  c.set_policy_domain(domain);
  c.set_policy_type("sts");
  c.add_policy_string("version: STSv1");
  c.add_policy_string("mode: enforce");
  c.add_mx_host("*.mx.example");
  c.set_result_type(result_type);
  c.set_count(3);
  c.add_rua("mailto:tlsrpt@example.com");
  return c;
}

TEST(KeyCodec, TlsRptKeysSortByDayThenDomainAndRoundTrip) {
  const std::vector<std::string> in_order = {
      TlsRptCountKey(Count(0, "z.example")),        TlsRptCountKey(Count(255, "a.example")),
      TlsRptCountKey(Count(256, "a.example")),      TlsRptCountKey(Count(256, "a.example.net")),
      TlsRptCountKey(Count(256, "b.example")),      TlsRptCountKey(Count(20000, "a.example")),
  };
  std::vector<std::string> sorted = in_order;
  std::reverse(sorted.begin(), sorted.end());
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, in_order);
  const std::string key = TlsRptCountKey(Count(20000, "example.com", "certificate-expired"));
  EXPECT_EQ(DecodeTlsRptKey(key), (TlsRptKey{20000, "example.com"}));
  EXPECT_EQ(key.rfind(TlsRptDomainPrefix(20000, "example.com"), 0), 0u);
  EXPECT_EQ(key.rfind(TlsRptDayPrefix(20000), 0), 0u);
  EXPECT_EQ(key.rfind(TlsRptPrefix(), 0), 0u);
  // "example.co" is a prefix of "example.com" as text, not as a domain.
  EXPECT_NE(key.rfind(TlsRptDomainPrefix(20000, "example.co"), 0), 0u);
  EXPECT_EQ(DecodeTlsRptKey(StsPolicyKey("example.com")), std::nullopt);
  EXPECT_EQ(DecodeTlsRptKey(TlsRptDayPrefix(1)), std::nullopt);
}

TEST(KeyCodec, TlsRptKeyIgnoresCountAndRuaOnly) {
  const tern::v1::TlsRptCount base = Count(20000, "example.com");
  tern::v1::TlsRptCount other = base;
  other.set_count(99);
  other.clear_rua();
  other.add_rua("https://reports.example.com/");
  EXPECT_EQ(TlsRptCountKey(other), TlsRptCountKey(base));

  std::vector<tern::v1::TlsRptCount> differing(8, base);
  differing[0].set_policy_type("tlsa");
  differing[1].add_policy_string("max_age: 86400");
  differing[2].clear_mx_host();
  differing[3].set_result_type("certificate-expired");
  differing[4].set_receiving_mx_hostname("mx1.example.com");
  differing[5].set_receiving_ip("192.0.2.1");
  differing[6].set_failure_reason_code("X509_V_ERR_CERT_HAS_EXPIRED");
  // The same bytes split differently between two lists must not collide.
  differing[7].clear_policy_string();
  differing[7].add_policy_string("version: STSv1mode: enforce");
  std::vector<std::string> keys = {TlsRptCountKey(base)};
  for (const auto& c : differing) {
    keys.push_back(TlsRptCountKey(c));
  }
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end());
}

TEST(KeyCodec, PrefixEndIsTheFirstKeyAfterThePrefix) {
  EXPECT_EQ(PrefixEnd("t"), "u");
  EXPECT_EQ(PrefixEnd(std::string("a\xff", 2)), "b");
  EXPECT_EQ(PrefixEnd(std::string("\xff", 1)), "");
  EXPECT_LT(TlsRptCountKey(Count(7, "example.com")), PrefixEnd(TlsRptDomainPrefix(7, "example.com")));
  EXPECT_LT(PrefixEnd(TlsRptDomainPrefix(7, "example.com")), TlsRptCountKey(Count(7, "example.com.")));
}

}  // namespace
}  // namespace tern::queue
