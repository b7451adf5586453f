#include "services/queue/destination_shaping.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::queue {
namespace {

using ::testing::HasSubstr;

RateLimit Rate(const char* text) {
  absl::StatusOr<RateLimit> r = ParseRateLimit(text);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : RateLimit{};
}

std::string ErrorOf(const char* text) {
  absl::StatusOr<RateLimit> r = ParseRateLimit(text);
  return r.ok() ? "ok" : std::string(r.status().message());
}

TEST(ParseRateLimit, ReadsCountsPerSecondMinuteAndHour) {
  EXPECT_EQ(Rate("100/s").count, 100u);
  EXPECT_EQ(Rate("100/s").period_ms, 1000);
  EXPECT_EQ(Rate("600/m").period_ms, 60000);
  EXPECT_EQ(Rate(" 20 / hour ").period_ms, 3600000);
  EXPECT_EQ(Rate("20/hour").count, 20u);
  EXPECT_EQ(Rate("5/MIN").ToString(), "5/m");
  EXPECT_EQ(Rate("7/sec").ToString(), "7/s");
}

TEST(ParseRateLimit, EmptyZeroAndNoneMeanNoLimit) {
  EXPECT_FALSE(Rate("").enabled());
  EXPECT_FALSE(Rate("0").enabled());
  EXPECT_FALSE(Rate("none").enabled());
  EXPECT_EQ(Rate("").ToString(), "none");
}

TEST(ParseRateLimit, RefusesWhatIsNotARate) {
  EXPECT_THAT(ErrorOf("100"), HasSubstr("not a rate like 100/s"));
  EXPECT_THAT(ErrorOf("100/d"), HasSubstr("period must be s, m or h"));
  EXPECT_THAT(ErrorOf("x/s"), HasSubstr("not a rate"));
  EXPECT_THAT(ErrorOf("-1/s"), HasSubstr("not a rate"));
  EXPECT_THAT(ErrorOf("0/s"), HasSubstr("count must be in [1, 1000000]"));
  EXPECT_THAT(ErrorOf("1000001/s"), HasSubstr("count must be in [1, 1000000]"));
}

TEST(RateLimit, BurstIsOneSecondsWorthAtLeastOne) {
  EXPECT_EQ(Rate("100/s").burst(), 100u);
  EXPECT_EQ(Rate("600/m").burst(), 10u);
  EXPECT_EQ(Rate("60/m").burst(), 1u);
  EXPECT_EQ(Rate("10/h").burst(), 1u);
}

TEST(RateBuckets, AFreshDomainMayBurstThenWaitsOneIntervalPerStart) {
  RateBuckets b;
  const RateLimit r = Rate("4/s");  // burst 4, one start every 250 ms
  int64_t now = 1'000'000;
  EXPECT_EQ(b.Available("a.example", r, now), 4u);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(b.Allows("a.example", r, now)) << i;
    b.Take("a.example", r, now);
  }
  EXPECT_FALSE(b.Allows("a.example", r, now));
  EXPECT_EQ(b.Available("a.example", r, now), 0u);
  EXPECT_FALSE(b.Allows("a.example", r, now + 249));
  EXPECT_TRUE(b.Allows("a.example", r, now + 250));
  EXPECT_EQ(b.Available("a.example", r, now + 500), 2u);
  // Another domain has its own bucket.
  EXPECT_EQ(b.Available("b.example", r, now), 4u);
  // A quiet spell refills to the burst, never beyond.
  EXPECT_EQ(b.Available("a.example", r, now + 60'000), 4u);
}

TEST(RateBuckets, FractionalIntervalsNeitherDriftNorStall) {
  RateBuckets b;
  const RateLimit r = Rate("3/s");  // 333.33 ms apart, burst 3
  int64_t now = 5'000;
  int started = 0;
  // Ten seconds, asked every millisecond: 3 at once, then one per interval.
  for (int64_t t = now; t < now + 10'000; ++t) {
    while (b.Allows("d", r, t)) {
      b.Take("d", r, t);
      ++started;
    }
  }
  EXPECT_EQ(started, 3 + 29);  // the burst, then 30 intervals less the last
}

TEST(RateBuckets, GiveBackUndoesATake) {
  RateBuckets b;
  const RateLimit r = Rate("1/m");
  b.Take("d", r, 0);
  EXPECT_FALSE(b.Allows("d", r, 1000));
  b.GiveBack("d", r);
  EXPECT_TRUE(b.Allows("d", r, 1000));
}

TEST(RateBuckets, AClockThatWentBackDoesNotStallADomain) {
  RateBuckets b;
  const RateLimit r = Rate("1/m");
  b.Take("d", r, 10'000'000);
  // The wall clock is set back an hour: the bucket starts afresh instead of
  // refusing the domain for an hour.
  EXPECT_TRUE(b.Allows("d", r, 10'000'000 - 3'600'000));
}

TEST(RateBuckets, PruneForgetsOnlyFullBuckets) {
  RateBuckets b;
  const RateLimit r = Rate("1/s");
  b.Take("busy", r, 1000);
  b.Take("idle", r, 0);
  b.Prune(1000);
  EXPECT_EQ(b.size(), 1u);
  EXPECT_FALSE(b.Allows("busy", r, 1500));
}

TEST(IsCongestion, A421OrTooManyConnectionsButNotTooManyRecipients) {
  EXPECT_TRUE(IsCongestion(421, "4.7.0 Try again later, closing connection"));
  EXPECT_TRUE(IsCongestion(450, "4.7.1 Too many concurrent SMTP connections from this IP"));
  EXPECT_TRUE(IsCongestion(451, "Too many sessions"));
  EXPECT_FALSE(IsCongestion(452, "4.5.3 Too many recipients"));
  EXPECT_FALSE(IsCongestion(451, "4.3.0 Local error"));
  EXPECT_FALSE(IsCongestion(550, "5.7.1 Too many connections"));  // permanent: not a pacing request
  EXPECT_FALSE(IsCongestion(0, "connection refused"));
}

absl::StatusOr<DestinationShaping> Load(const char* text, uint32_t default_concurrency = 0) {
  absl::StatusOr<config::IniFile> ini = config::IniFile::Parse(text, "shaping.ini");
  if (!ini.ok()) {
    return ini.status();
  }
  return DestinationShaping::Load(*ini, default_concurrency);
}

TEST(DestinationShaping, WithoutAFileEveryDomainGetsTernIniConcurrencyAndNoRate) {
  auto s = Load("", 20);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->For("any.example").concurrency_max, 20u);
  EXPECT_FALSE(s->For("any.example").rate.enabled());
}

TEST(DestinationShaping, DomainsInheritTheStarSectionKeyByKey) {
  auto s = Load(
      "[*]\nrate_max=50/s\nbackoff_seconds=300\n"
      "[quiet.example]\nbackoff=no\n"
      "[Gmail.com]\nconcurrency_max=5\n"
      "[bücher.example]\nrate_max=10/m\n"
      "[bulk.example]\nrate_max=0\n",
      20);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->For("other.example").concurrency_max, 20u);
  EXPECT_EQ(s->For("other.example").rate.ToString(), "50/s");
  EXPECT_EQ(s->For("gmail.com").concurrency_max, 5u);
  EXPECT_EQ(s->For("gmail.com").rate.ToString(), "50/s");
  EXPECT_EQ(s->For("xn--bcher-kva.example").rate.ToString(), "10/m");
  EXPECT_EQ(s->For("xn--bcher-kva.example").concurrency_max, 20u);
  EXPECT_FALSE(s->For("bulk.example").rate.enabled());
  EXPECT_TRUE(s->For("other.example").backoff);
  EXPECT_EQ(s->For("other.example").backoff_ms, 300'000);
  EXPECT_FALSE(s->For("quiet.example").backoff);
  EXPECT_EQ(s->For("quiet.example").backoff_ms, 300'000);
}

TEST(DestinationShaping, StarConcurrencyOverridesTernIni) {
  auto s = Load("[*]\nconcurrency_max=3\n", 20);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->For("x.example").concurrency_max, 3u);
}

TEST(DestinationShaping, BadEntriesNameTheSectionAndKey) {
  EXPECT_THAT(std::string(Load("[a.example]\nrate_max=fast\n").status().message()),
              HasSubstr("shaping.ini: [a.example] rate_max: 'fast' is not a rate"));
  EXPECT_THAT(std::string(Load("[a.example]\nconcurrency_max=-2\n").status().message()),
              HasSubstr("[a.example] concurrency_max: '-2' is not in [0, 1000000]"));
  EXPECT_THAT(std::string(Load("[a.example]\nbackoff=maybe\n").status().message()),
              HasSubstr("[a.example] backoff: 'maybe' is not a boolean"));
  EXPECT_THAT(std::string(Load("[a.example]\nbackoff_seconds=0\n").status().message()),
              HasSubstr("[a.example] backoff_seconds: '0' is not in [1, 86400]"));
  EXPECT_THAT(std::string(Load("[a.example]\nrate=5/s\n").status().message()),
              HasSubstr("[a.example] rate: unknown key"));
  EXPECT_THAT(std::string(Load("rate_max=5/s\n[a.example]\n").status().message()),
              HasSubstr("keys belong in a [domain] or [*] section"));
  EXPECT_THAT(std::string(Load("[A.example]\nrate_max=1/s\n[a.EXAMPLE]\nrate_max=2/s\n").status().message()),
              HasSubstr("a second section for a.example"));
  EXPECT_THAT(std::string(Load("[bad\xff.example]\nrate_max=1/s\n").status().message()),
              HasSubstr("not a mail domain"));
}

}  // namespace
}  // namespace tern::queue
