#include "services/queue/destination_shaping.h"

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
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

TEST(DestinationShaping, ASiteSharesItsLimitsWithTheDomainsItListsAndThoseItsMxHostsServe) {
  auto s = Load(
      "[*]\nrate_max=50/s\n"
      "[site:Google]\nmx=*.google.com, googlemail.com.\ndomains=gmail.com, Bücher.example\nconcurrency_max=5\n"
      "[other.example]\nrate_max=1/s\n",
      20);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(s->has_sites());
  ASSERT_EQ(s->sites().size(), 1u);
  const MxSite& google = s->sites()[0];
  EXPECT_EQ(google.name, "google");
  EXPECT_EQ(google.key, "site:google");
  EXPECT_EQ(google.mx, (std::vector<std::string>{"google.com", "googlemail.com"}));
  // Its limits inherit from [*] like a domain's.
  EXPECT_EQ(s->For("site:google").concurrency_max, 5u);
  EXPECT_EQ(s->For("site:google").rate.ToString(), "50/s");
  EXPECT_EQ(s->ListedSite("gmail.com"), &google);
  EXPECT_EQ(s->ListedSite("xn--bcher-kva.example"), &google);
  EXPECT_EQ(s->ListedSite("other.example"), nullptr);
  EXPECT_TRUE(s->HasOwnSection("other.example"));
  EXPECT_FALSE(s->HasOwnSection("gmail.com"));
  // A host matches an mx entry by name or as any host under it; case and a
  // trailing dot do not matter; a mere suffix of the text does not match.
  EXPECT_EQ(s->SiteForMx("ASPMX.L.Google.COM."), &google);
  EXPECT_EQ(s->SiteForMx("google.com"), &google);
  EXPECT_EQ(s->SiteForMx("mx.googlemail.com"), &google);
  EXPECT_EQ(s->SiteForMx("notgoogle.com"), nullptr);
  EXPECT_EQ(s->SiteForMx("google.com.evil.example"), nullptr);
  EXPECT_EQ(s->SiteForMx(""), nullptr);
}

TEST(DestinationShaping, WithoutSitesNoDomainHasOne) {
  auto s = Load("[a.example]\nconcurrency_max=1\n", 20);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->has_sites());
  EXPECT_EQ(s->SiteForMx("mx.a.example"), nullptr);
  EXPECT_EQ(s->ListedSite("a.example"), nullptr);
}

TEST(DestinationShaping, TheFirstSiteInTheFileWhoseMxMatchesWins) {
  auto s = Load("[site:specific]\nmx=eu.mx.example\n[site:broad]\nmx=mx.example\n", 0);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_NE(s->SiteForMx("a.eu.mx.example"), nullptr);
  EXPECT_EQ(s->SiteForMx("a.eu.mx.example")->name, "specific");
  ASSERT_NE(s->SiteForMx("a.us.mx.example"), nullptr);
  EXPECT_EQ(s->SiteForMx("a.us.mx.example")->name, "broad");
}

TEST(DestinationShaping, BadSiteSectionsNameTheSectionAndKey) {
  EXPECT_THAT(std::string(Load("[site:g]\nconcurrency_max=1\n").status().message()),
              HasSubstr("shaping.ini: [site:g] mx: a site needs the MX host names"));
  EXPECT_THAT(std::string(Load("[site:g]\nmx=not a host\n").status().message()),
              HasSubstr("[site:g] mx: 'not a host' is not a host name"));
  EXPECT_THAT(std::string(Load("[site:g]\nmx=mx.g.example\ndomains=[192.0.2.1]\n").status().message()),
              HasSubstr("[site:g] domains: '[192.0.2.1]' is not a mail domain"));
  EXPECT_THAT(std::string(Load("[site:g]\nmx=mx.g.example\ndomains=x.example\n[x.example]\nrate_max=1/s\n")
                              .status()
                              .message()),
              HasSubstr("[site:g] domains: x.example has a section of its own"));
  EXPECT_THAT(
      std::string(
          Load("[site:a]\nmx=a.example\ndomains=x.example\n[site:b]\nmx=b.example\ndomains=X.example\n")
              .status()
              .message()),
      HasSubstr("[site:b] domains: x.example is listed in [site:a] already"));
  EXPECT_THAT(std::string(Load("[site:G]\nmx=a.example\n[site:g]\nmx=b.example\n").status().message()),
              HasSubstr("a second section for site g"));
  EXPECT_THAT(std::string(Load("[site:]\nmx=a.example\n").status().message()),
              HasSubstr("the site name must be letters, digits"));
  EXPECT_THAT(std::string(Load("[site:g]\nmx=a.example\nmx_rollup=yes\n").status().message()),
              HasSubstr("[site:g] mx_rollup: unknown key (a [site:NAME] section knows mx, domains"));
  // mx and domains belong in site sections only.
  EXPECT_THAT(std::string(Load("[a.example]\nmx=mx.example\n").status().message()),
              HasSubstr("[a.example] mx: unknown key (shaping.ini knows"));
}

// The example at the end of the shipped shaping.ini, uncommented, is a
// valid file.
TEST(DestinationShaping, TheShippedExampleLoads) {
  std::ifstream in(std::string(TERN_SOURCE_DIR) + "/deploy/config/shaping.ini");
  ASSERT_TRUE(in) << "deploy/config/shaping.ini";
  std::string line;
  std::string example;
  bool in_example = false;
  while (std::getline(in, line)) {
    if (in_example) {
      absl::string_view l = line;
      absl::ConsumePrefix(&l, ";");
      absl::ConsumePrefix(&l, " ");
      absl::StrAppend(&example, l, "\n");
    } else if (line == "; Example:") {
      in_example = true;
    }
  }
  ASSERT_FALSE(example.empty());
  auto s = Load(example.c_str(), 0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->sites().size(), 1u);
  EXPECT_EQ(s->For("small-isp.example").concurrency_max, 2u);
}

}  // namespace
}  // namespace tern::queue
