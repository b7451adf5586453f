// Behaviours of the queue's TLS reporting (queue_tls_reports.cc): counts
// recorded and refused, the pending list, the daily reports queued after
// midnight UTC, Admin.SendTlsReports and the purge of old counts.
#include <zlib.h>

#include <atomic>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "services/queue/queue_core_test_fixture.h"

namespace tern::queue {
namespace {

using namespace testing_support;  // NOLINT
using tern::v1::TlsRptCount;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr int64_t kDayMs = 86'400'000;
// kStart is 2023-11-14T22:13:20Z.
constexpr int64_t kToday = kStart / kDayMs;
constexpr int64_t kTomorrow = (kToday + 1) * kDayMs;
constexpr char kFrom[] = "tlsrpt@mail.tern.example";

TlsRptCount Count(const std::string& domain, uint64_t n, std::vector<std::string> rua,
                  const std::string& result_type = "", int64_t day = kToday) {
  TlsRptCount c;
  c.set_day(day);
  c.set_policy_domain(domain);
  c.set_policy_type("sts");
  c.add_policy_string("version: STSv1");
  c.add_policy_string("mode: enforce");
  c.add_policy_string("mx: mx.example.com");
  c.add_policy_string("max_age: 86400");
  c.add_mx_host("mx.example.com");
  c.set_result_type(result_type);
  if (!result_type.empty()) {
    c.set_receiving_mx_hostname("mx.example.com");
    c.set_receiving_ip("192.0.2.25");
    c.set_failure_reason_code("X509_V_ERR_CERT_HAS_EXPIRED");
  }
  c.set_count(n);
  for (auto& r : rua) {
    c.add_rua(std::move(r));
  }
  return c;
}

// Inflates a gzip stream; "" on error.
std::string Gunzip(const std::string& gz) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK) {
    return "";
  }
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  zs.avail_in = static_cast<uInt>(gz.size());
  std::string out;
  char buf[4096];
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof(buf) - zs.avail_out);
  }
  inflateEnd(&zs);
  return rc == Z_STREAM_END ? out : "";
}

// The JSON report inside a report e-mail: the base64 lines after the
// attachment's header fields, decoded and inflated.
std::string ReportJson(const std::string& mail) {
  const size_t part = mail.find("Content-Type: application/tlsrpt+gzip");
  const size_t start = part == std::string::npos ? part : mail.find("\r\n\r\n", part);
  if (start == std::string::npos) {
    return "";
  }
  const size_t end = mail.find("\r\n\r\n", start + 4);
  std::string base64 = absl::StrReplaceAll(mail.substr(start + 4, end - start - 4), {{"\r\n", ""}});
  std::string gz;
  if (!absl::Base64Unescape(base64, &gz)) {
    return "";
  }
  return Gunzip(gz);
}

class QueueTlsReportsTest : public QueueCoreTest {
 protected:
  // Opens the core and waits for the report run its first tick starts: a
  // run that began later could report (and delete) what a test records
  // before the test's own Send does. The next automatic run needs the clock
  // to move a minute, which only AdvanceToAndWaitForRun does.
  void OpenSettled() {
    Open();
    WaitForFirstRun();
  }
  void ReopenSettled() {
    Reopen();
    WaitForFirstRun();
  }
  // The report-id of this queue's n-th report of "<day>_<domain>": with the
  // database's instance token, so that shards never share one.
  std::string ReportId(const std::string& day_domain, int n = 1) {
    return absl::StrCat(day_domain, "_", core_->InstanceIdForTest(), n > 1 ? absl::StrCat("_", n) : "",
                        "@mail.tern.example");
  }
  void WaitForFirstRun() {
    ASSERT_TRUE(Eventually([&] { return core_->TlsReportRunTimeForTest() > 0; })) << "no report run at startup";
  }
  void EnableReports() {
    options_.tlsrpt.enabled = true;
    options_.tlsrpt.from = kFrom;
    options_.tlsrpt.organization = "Tern Test";
    options_.tlsrpt.contact = "postmaster@tern.example";
    options_.tlsrpt.submitter = "mail.tern.example";
  }
  absl::Status Record(std::vector<TlsRptCount> counts) {
    tern::v1::RecordTlsResultsRequest req;
    for (auto& c : counts) {
      *req.add_counts() = std::move(c);
    }
    return Sync<tern::v1::RecordTlsResultsResponse>(
               [&](auto cb) { core_->RecordTlsResults(std::move(req), std::move(cb)); })
        .status();
  }
  std::vector<tern::v1::TlsRptPending> Pending() {
    auto r = core_->ListTlsReports();
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::vector<tern::v1::TlsRptPending>(r->pending().begin(), r->pending().end())
                  : std::vector<tern::v1::TlsRptPending>();
  }
  absl::StatusOr<tern::v1::SendTlsReportsResponse> Send(bool include_today) {
    tern::v1::SendTlsReportsRequest req;
    req.set_include_today(include_today);
    return Sync<tern::v1::SendTlsReportsResponse>([&](auto cb) { core_->SendTlsReports(req, std::move(cb)); });
  }
  // Moves the clock and waits until a report run that began at that time
  // or later has finished (the tick starts one at most once a minute).
  void AdvanceToAndWaitForRun(int64_t unix_ms) {
    clock_.SetMs(unix_ms);
    ASSERT_TRUE(Eventually([&] { return core_->TlsReportRunTimeForTest() >= unix_ms; }))
        << "no report run after the clock moved";
  }
};

TEST_F(QueueTlsReportsTest, RecordTlsResultsAddsCountsAcrossCallsAndKeepsTheLatestRua) {
  OpenSettled();
  ASSERT_TRUE(Record({Count("example.com", 3, {"mailto:old@example.com"}),
                      Count("example.com", 2, {"mailto:old@example.com"}, "certificate-expired")})
                  .ok());
  // Equal counts within one call add up too; an upper-case domain is the same domain.
  ASSERT_TRUE(
      Record({Count("Example.COM", 4, {"mailto:new@example.com"}), Count("example.com", 1, {"mailto:new@example.com"}),
              Count("example.com", 5, {"mailto:new@example.com"}, "certificate-expired"),
              Count("other.example", 1, {"mailto:tlsrpt@other.example"})})
          .ok());
  ReopenSettled();  // they were durable
  std::vector<tern::v1::TlsRptPending> pending = Pending();
  ASSERT_EQ(pending.size(), 2u);
  EXPECT_EQ(pending[0].day(), kToday);
  EXPECT_EQ(pending[0].policy_domain(), "example.com");
  EXPECT_EQ(pending[0].successful(), 8u);
  EXPECT_EQ(pending[0].failed(), 7u);
  EXPECT_THAT(pending[0].rua(), ElementsAre("mailto:new@example.com"));
  EXPECT_EQ(pending[1].policy_domain(), "other.example");
  EXPECT_EQ(pending[1].successful(), 1u);
  EXPECT_EQ(pending[1].failed(), 0u);
}

TEST_F(QueueTlsReportsTest, RecordTlsResultsRefusesNonsenseAndStoresNothingOfTheCall) {
  OpenSettled();
  struct Case {
    const char* label;
    TlsRptCount count;
  };
  std::vector<Case> cases = {
      {"empty domain", Count("", 1, {"mailto:a@example.com"})},
      {"domain with a space", Count("exa mple.com", 1, {"mailto:a@example.com"})},
      {"count 0", Count("example.com", 0, {"mailto:a@example.com"})},
      {"day in the future", Count("example.com", 1, {"mailto:a@example.com"}, "", kToday + 2)},
      {"unknown result type", Count("example.com", 1, {"mailto:a@example.com"}, "Bad Type")},
  };
  cases.push_back({"unknown policy type", Count("example.com", 1, {"mailto:a@example.com"})});
  cases.back().count.set_policy_type("dane");
  cases.push_back({"overlong failure reason", Count("example.com", 1, {"mailto:a@example.com"}, "validation-failure")});
  cases.back().count.set_failure_reason_code(std::string(20000, 'x'));
  cases.push_back({"overlong policy", Count("example.com", 1, {"mailto:a@example.com"})});
  for (int i = 0; i < 5; ++i) {
    cases.back().count.add_policy_string(std::string(16000, 'a'));
  }
  cases.push_back({"overlong rua", Count("example.com", 1, {"mailto:" + std::string(3000, 'a') + "@example.com"})});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    absl::Status s = Record({Count("fine.example", 1, {"mailto:a@fine.example"}), c.count});
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  }
  std::vector<TlsRptCount> many(10'001, Count("example.com", 1, {"mailto:a@example.com"}));
  absl::Status s = Record(std::move(many));
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("10000"));
  EXPECT_THAT(Pending(), IsEmpty());
}

TEST_F(QueueTlsReportsTest, CountsOfDaysPastTheRetentionAreDroppedNotStored) {
  OpenSettled();
  ASSERT_TRUE(Record({Count("example.com", 1, {"mailto:a@example.com"}, "", kToday - kTlsRptRetentionDays - 1)}).ok());
  EXPECT_THAT(Pending(), IsEmpty());
  ASSERT_TRUE(Record({Count("example.com", 1, {"mailto:a@example.com"}, "", kToday - kTlsRptRetentionDays)}).ok());
  EXPECT_EQ(Pending().size(), 1u);
}

TEST_F(QueueTlsReportsTest, AfterMidnightOneReportIsQueuedPerRuaAndTheCountsAreDeleted) {
  EnableReports();
  OpenSettled();
  const std::vector<std::string> rua = {"mailto:tlsrpt@example.com", "https://tlsrpt.example.com/v1",
                                        "mailto:reports@other.example?subject=tlsrpt"};
  ASSERT_TRUE(Record({Count("example.com", 100, rua), Count("example.com", 3, rua, "certificate-expired")}).ok());
  // Today's counts wait for the day to end.
  AdvanceToAndWaitForRun(kStart + 61'000);
  EXPECT_EQ(Stats().enqueued_total(), 0u);
  EXPECT_EQ(Pending().size(), 1u);

  AdvanceToAndWaitForRun(kTomorrow + 30 * 60'000);
  EXPECT_THAT(Pending(), IsEmpty());
  EXPECT_EQ(Stats().enqueued_total(), 3u);
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 3);
  std::set<std::string> to;
  int posts = 0;
  for (const auto& job : lease.deliveries()) {
    SCOPED_TRACE(job.domain());
    EXPECT_EQ(job.mail_from(), kFrom);
    ASSERT_EQ(job.recipients_size(), 1);
    const std::string& rcpt = job.recipients(0).spec().address();
    if (!job.recipients(0).spec().post_url().empty()) {
      // §5.3: the https: rua gets the gzipped JSON itself, to be POSTed,
      // routed by its origin and without a DSN if it never gets through.
      ++posts;
      EXPECT_EQ(job.domain(), "https://tlsrpt.example.com");
      EXPECT_EQ(rcpt, "https://tlsrpt.example.com/v1");
      EXPECT_EQ(job.recipients(0).spec().post_url(), "https://tlsrpt.example.com/v1");
      EXPECT_EQ(job.recipients(0).spec().notify(), static_cast<uint32_t>(tern::v1::NOTIFY_NEVER));
      const std::string json = Gunzip(job.body());
      EXPECT_THAT(json, HasSubstr(absl::StrCat("\"report-id\":\"", ReportId("2023-11-14_example.com"), "\"")));
      EXPECT_THAT(json, HasSubstr("\"total-successful-session-count\":100"));
      EXPECT_THAT(json, HasSubstr("\"total-failure-session-count\":3"));
      continue;
    }
    to.insert(rcpt);
    const std::string& body = job.body();
    EXPECT_THAT(body, HasSubstr(absl::StrCat("From: ", kFrom, "\r\n")));
    EXPECT_THAT(body, HasSubstr(absl::StrCat("To: ", rcpt, "\r\n")));
    EXPECT_THAT(body, HasSubstr("TLS-Report-Domain: example.com\r\n"));
    EXPECT_THAT(body, HasSubstr("TLS-Report-Submitter: mail.tern.example\r\n"));
    EXPECT_THAT(body, HasSubstr("multipart/report; report-type=\"tlsrpt\""));
    EXPECT_THAT(body, HasSubstr(absl::StrCat("<", ReportId("2023-11-14_example.com"), ">")));
    const std::string json = ReportJson(body);
    EXPECT_THAT(json, HasSubstr(absl::StrCat("\"report-id\":\"", ReportId("2023-11-14_example.com"), "\"")));
    EXPECT_THAT(json, HasSubstr("\"start-datetime\":\"2023-11-14T00:00:00Z\""));
    EXPECT_THAT(json, HasSubstr("\"end-datetime\":\"2023-11-15T00:00:00Z\""));
    EXPECT_THAT(json, HasSubstr("\"policy-domain\":\"example.com\""));
    EXPECT_THAT(json, HasSubstr("\"total-successful-session-count\":100"));
    EXPECT_THAT(json, HasSubstr("\"total-failure-session-count\":3"));
    EXPECT_THAT(json, HasSubstr("\"organization-name\":\"Tern Test\""));
  }
  EXPECT_EQ(to, (std::set<std::string>{"tlsrpt@example.com", "reports@other.example"}));
  EXPECT_EQ(posts, 1);

  // The next run finds nothing; nor does a restart.
  AdvanceToAndWaitForRun(kTomorrow + 32 * 60'000);
  EXPECT_EQ(Stats().enqueued_total(), 3u);
  ReopenSettled();
  AdvanceToAndWaitForRun(kTomorrow + 34 * 60'000);
  EXPECT_EQ(Stats().messages(), 3u);
}

TEST_F(QueueTlsReportsTest, ReportsWaitAFewMinutesAfterMidnightForTheDaysLastCounts) {
  EnableReports();
  OpenSettled();
  ASSERT_TRUE(Record({Count("example.com", 1, {"mailto:tlsrpt@example.com"})}).ok());
  AdvanceToAndWaitForRun(kTomorrow + 60'000);
  EXPECT_EQ(Pending().size(), 1u);
  // A count of the last second of the day, sent after midnight, is in the report.
  ASSERT_TRUE(Record({Count("example.com", 1, {"mailto:tlsrpt@example.com"}, "", kToday)}).ok());
  AdvanceToAndWaitForRun(kTomorrow + 11 * 60'000);
  EXPECT_THAT(Pending(), IsEmpty());
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_THAT(ReportJson(lease.deliveries(0).body()), HasSubstr("\"total-successful-session-count\":2"));
}

TEST_F(QueueTlsReportsTest, AnUnusableHttpsRuaIsSkippedAndADomainWithoutAUsableRuaLosesItsCounts) {
  EnableReports();
  OpenSettled();
  ASSERT_TRUE(Record({Count("example.com", 5, {"https://user@tlsrpt.example.com/v1"}, "", kToday - 1)}).ok());
  auto sent = Send(/*include_today=*/false);
  ASSERT_TRUE(sent.ok()) << sent.status();
  ASSERT_EQ(sent->sent_size(), 1);
  const tern::v1::TlsRptSent& s = sent->sent(0);
  EXPECT_EQ(s.day(), kToday - 1);
  EXPECT_EQ(s.policy_domain(), "example.com");
  EXPECT_THAT(s.message_ids(), IsEmpty());
  EXPECT_EQ(s.report_id(), "");
  ASSERT_EQ(s.skipped_rua_size(), 1);
  EXPECT_THAT(s.skipped_rua(0), HasSubstr("https://user@tlsrpt.example.com/v1: "));
  EXPECT_THAT(s.skipped_rua(0), HasSubstr("user information"));
  EXPECT_THAT(Pending(), IsEmpty());
  EXPECT_EQ(Stats().enqueued_total(), 0u);
}

TEST_F(QueueTlsReportsTest, AReportToAnHttpsRuaKeepsItsIdempotencyAcrossARestart) {
  EnableReports();
  OpenSettled();
  ASSERT_TRUE(Record({Count("example.com", 4, {"https://tlsrpt.example.com:8443/r?x=1"}, "", kToday - 1)}).ok());
  auto sent = Send(/*include_today=*/false);
  ASSERT_TRUE(sent.ok()) << sent.status();
  ASSERT_EQ(sent->sent_size(), 1);
  EXPECT_THAT(sent->sent(0).skipped_rua(), IsEmpty());
  ASSERT_EQ(sent->sent(0).message_ids_size(), 1);
  ReopenSettled();
  auto again = Send(/*include_today=*/false);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT(again->sent(), IsEmpty());
  EXPECT_EQ(Stats().messages(), 1u);
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).message_id(), sent->sent(0).message_ids(0));
  EXPECT_EQ(lease.deliveries(0).domain(), "https://tlsrpt.example.com:8443");
}

TEST_F(QueueTlsReportsTest, EnqueueRefusesARecipientWithAPostUrlFromAnyClient) {
  Open();
  tern::v1::RecipientSpec rcpt;
  rcpt.set_address("someone@example.com");
  rcpt.set_post_url("https://internal.example/admin");
  const absl::Status s = EnqueueStatus(Header({rcpt}));
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("post_url"));
  EXPECT_EQ(Stats().messages(), 0u);
}

TEST_F(QueueTlsReportsTest, SendTlsReportsSendsFinishedDaysAndTodayOnlyWhenAsked) {
  EnableReports();
  OpenSettled();
  const std::vector<std::string> rua = {"mailto:tlsrpt@example.com"};
  ASSERT_TRUE(Record({Count("example.com", 7, rua, "", kToday - 1), Count("example.com", 2, rua)}).ok());
  auto sent = Send(/*include_today=*/false);
  ASSERT_TRUE(sent.ok()) << sent.status();
  ASSERT_EQ(sent->sent_size(), 1);
  EXPECT_EQ(sent->sent(0).day(), kToday - 1);
  EXPECT_EQ(sent->sent(0).report_id(), ReportId("2023-11-13_example.com"));
  EXPECT_EQ(sent->sent(0).message_ids_size(), 1);
  ASSERT_EQ(Pending().size(), 1u);
  EXPECT_EQ(Pending()[0].day(), kToday);

  sent = Send(/*include_today=*/true);
  ASSERT_TRUE(sent.ok()) << sent.status();
  ASSERT_EQ(sent->sent_size(), 1);
  EXPECT_EQ(sent->sent(0).day(), kToday);
  EXPECT_EQ(sent->sent(0).report_id(), ReportId("2023-11-14_example.com"));
  EXPECT_THAT(Pending(), IsEmpty());

  // Sessions later that day make a report of their own at midnight, with
  // its own id: the first one's idempotency keys do not swallow it.
  ASSERT_TRUE(Record({Count("example.com", 1, rua)}).ok());
  AdvanceToAndWaitForRun(kTomorrow + 30 * 60'000);
  EXPECT_THAT(Pending(), IsEmpty());
  EXPECT_EQ(Stats().enqueued_total(), 3u);
  std::vector<std::string> ids;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  for (const auto& job : lease.deliveries()) {
    const std::string json = ReportJson(job.body());
    if (absl::StrContains(json, "_2@")) {
      EXPECT_THAT(json, HasSubstr(absl::StrCat("\"report-id\":\"", ReportId("2023-11-14_example.com", 2), "\"")));
      EXPECT_THAT(json, HasSubstr("\"total-successful-session-count\":1"));
      ids.push_back(job.message_id());
    }
  }
  EXPECT_EQ(ids.size(), 1u);
}

TEST_F(QueueTlsReportsTest, TwoQueueShardsReportTheSameDayAndDomainUnderDifferentIdsThatSurviveARestart) {
  // ARCHITECTURE.md §8: each shard is a queue with its own database that
  // counts and reports its own sessions. Receivers deduplicate by report-id
  // (RFC 8460 §4.3), so the two shards' reports of one (day, domain) must not
  // share one, or one shard's counts would be dropped.
  EnableReports();
  OpenSettled();
  const std::vector<std::string> rua = {"mailto:tlsrpt@example.com"};
  ASSERT_TRUE(Record({Count("example.com", 7, rua, "", kToday - 1)}).ok());
  auto first = Send(/*include_today=*/false);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->sent_size(), 1);
  const std::string instance = core_->InstanceIdForTest();
  EXPECT_TRUE(IsInstanceId(instance)) << instance;
  const std::string id_a = first->sent(0).report_id();
  EXPECT_EQ(id_a, absl::StrCat("2023-11-13_example.com_", instance, "@mail.tern.example"));

  // A second shard: its own database, the same config and clock.
  const std::filesystem::path dir_b = dir_.string() + "_shard_b";
  CoreOptions options_b = options_;
  options_b.data_dir = dir_b.string();
  auto shard_b = QueueCore::Open(options_b);
  ASSERT_TRUE(shard_b.ok()) << shard_b.status();
  ASSERT_TRUE(Eventually([&] { return (*shard_b)->TlsReportRunTimeForTest() > 0; }));
  tern::v1::RecordTlsResultsRequest req;
  *req.add_counts() = Count("example.com", 5, rua, "", kToday - 1);
  ASSERT_TRUE(Sync<tern::v1::RecordTlsResultsResponse>(
                  [&](auto cb) { (*shard_b)->RecordTlsResults(std::move(req), std::move(cb)); })
                  .ok());
  tern::v1::SendTlsReportsRequest send;
  auto second = Sync<tern::v1::SendTlsReportsResponse>(
      [&](auto cb) { (*shard_b)->SendTlsReports(send, std::move(cb)); });
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(second->sent_size(), 1);
  const std::string instance_b = (*shard_b)->InstanceIdForTest();
  EXPECT_TRUE(IsInstanceId(instance_b)) << instance_b;
  EXPECT_NE(instance_b, instance);
  const std::string id_b = second->sent(0).report_id();
  EXPECT_EQ(id_b, absl::StrCat("2023-11-13_example.com_", instance_b, "@mail.tern.example"));
  EXPECT_NE(id_a, id_b);
  // The report e-mails' Message-IDs differ too.
  EXPECT_NE(first->sent(0).message_ids(0), second->sent(0).message_ids(0));
  shard_b->reset();
  std::filesystem::remove_all(dir_b);

  // One database keeps its token across a restart: a later report of the
  // same day from this shard has the same token, and the first report's
  // marker (keyed on its report-id) still gives it a number of its own.
  ReopenSettled();
  EXPECT_EQ(core_->InstanceIdForTest(), instance);
  ASSERT_TRUE(Record({Count("example.com", 1, rua, "", kToday - 1)}).ok());
  auto again = Send(/*include_today=*/false);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->sent_size(), 1);
  EXPECT_EQ(again->sent(0).report_id(), absl::StrCat("2023-11-13_example.com_", instance, "_2@mail.tern.example"));
  EXPECT_EQ(Stats().messages(), 2u);
}

TEST_F(QueueTlsReportsTest, ADatabaseWithoutAnInstanceTokenGetsOneAtItsNextOpenAndAnUnreadableOneIsReplaced) {
  Open();
  const std::string made = core_->InstanceIdForTest();
  ASSERT_TRUE(IsInstanceId(made)) << made;
  core_.reset();
  // A database from before instance tokens: no record at all.
  bool deleted = false;
  WithRawDb(false, [&](rocksdb::DB* db, const std::string& name, rocksdb::ColumnFamilyHandle* h) {
    if (name == kMetaCf) {
      deleted = db->Delete(rocksdb::WriteOptions(), h, InstanceKey()).ok();
    }
  });
  ASSERT_TRUE(deleted);
  Open();
  const std::string upgraded = core_->InstanceIdForTest();
  EXPECT_TRUE(IsInstanceId(upgraded)) << upgraded;
  EXPECT_NE(upgraded, made);
  Reopen();
  EXPECT_EQ(core_->InstanceIdForTest(), upgraded);  // stored at that open

  // An unreadable record is quarantined and replaced by a new token.
  core_.reset();
  PlantRaw(kMetaCf, InstanceKey(), "\xff\xff not a record");
  Open();
  const std::string replaced = core_->InstanceIdForTest();
  EXPECT_TRUE(IsInstanceId(replaced)) << replaced;
  EXPECT_NE(replaced, upgraded);
  auto corrupt = core_->ListCorrupt(0);
  ASSERT_TRUE(corrupt.ok()) << corrupt.status();
  EXPECT_EQ(corrupt->total(), 1u);
  Reopen();
  EXPECT_EQ(core_->InstanceIdForTest(), replaced);
}

TEST(QueueInstanceId, IsTenLowerCaseHexDigits) {
  EXPECT_TRUE(IsInstanceId("0123456789"));
  EXPECT_TRUE(IsInstanceId("abcdef0123"));
  EXPECT_FALSE(IsInstanceId(""));
  EXPECT_FALSE(IsInstanceId("abcdef012"));
  EXPECT_FALSE(IsInstanceId("abcdef01234"));
  EXPECT_FALSE(IsInstanceId("ABCDEF0123"));
  EXPECT_FALSE(IsInstanceId("abcdef012g"));
}

TEST_F(QueueTlsReportsTest, SendTlsReportsFailsWhileReportsAreOff) {
  OpenSettled();
  auto sent = Send(/*include_today=*/true);
  EXPECT_TRUE(absl::IsFailedPrecondition(sent.status())) << sent.status();
  EXPECT_THAT(sent.status().message(), HasSubstr("[tlsrpt]"));
}

TEST_F(QueueTlsReportsTest, CountsOlderThanSevenDaysArePurgedAlsoWhenReportsAreOff) {
  OpenSettled();
  ASSERT_TRUE(Record({Count("example.com", 1, {"mailto:tlsrpt@example.com"}),
                      Count("example.com", 1, {"mailto:tlsrpt@example.com"}, "", kToday - 3)})
                  .ok());
  // Off: nothing is sent, and counts stay while they are young enough.
  AdvanceToAndWaitForRun(kTomorrow + 2 * kDayMs);
  EXPECT_EQ(Pending().size(), 2u);
  AdvanceToAndWaitForRun(kTomorrow + 5 * kDayMs);  // kToday - 3 is 9 days back now
  std::vector<tern::v1::TlsRptPending> pending = Pending();
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0].day(), kToday);
  AdvanceToAndWaitForRun(kTomorrow + 7 * kDayMs);
  EXPECT_THAT(Pending(), IsEmpty());
  EXPECT_EQ(Stats().enqueued_total(), 0u);
}

TEST_F(QueueTlsReportsTest, CountsRecordedWhileAReportIsMadeAreReportedLaterNeverLost) {
  EnableReports();
  OpenSettled();
  const std::vector<std::string> rua = {"mailto:tlsrpt@example.com"};
  // Many recording calls for the day race with its report: whatever the
  // interleaving, every session ends up in exactly one report.
  ASSERT_TRUE(Record({Count("example.com", 1, rua, "", kToday - 1)}).ok());
  std::atomic<bool> stop{false};
  std::thread recorder([&] {
    for (int i = 0; i < 50 && !stop; ++i) {
      EXPECT_TRUE(Record({Count("example.com", 1, rua, "", kToday - 1)}).ok());
    }
  });
  for (int i = 0; i < 5; ++i) {
    auto sent = Send(false);
    EXPECT_TRUE(sent.ok()) << sent.status();
  }
  recorder.join();
  auto sent = Send(false);
  ASSERT_TRUE(sent.ok()) << sent.status();
  EXPECT_THAT(Pending(), IsEmpty());
  uint64_t sessions = 0;
  for (;;) {
    LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 1000);
    if (lease.deliveries_size() == 0) {
      break;
    }
    for (const auto& job : lease.deliveries()) {
      const std::string json = ReportJson(job.body());
      const std::string key = "\"total-successful-session-count\":";
      const size_t at = json.find(key);
      ASSERT_NE(at, std::string::npos) << json;
      sessions += std::stoull(json.substr(at + key.size()));
    }
  }
  EXPECT_EQ(sessions, 51u);
}

}  // namespace
}  // namespace tern::queue
