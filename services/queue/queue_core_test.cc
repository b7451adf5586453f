#include "services/queue/queue_core.h"

#include <algorithm>
#include <atomic>
#include <future>
#include <map>

#include "lib/metrics/metrics.h"
#include "services/queue/queue_core_test_fixture.h"

namespace tern::queue {
namespace {

using namespace testing_support;  // NOLINT

TEST_F(QueueCoreTest, EnqueueSplitsByDomainAndStoresTheBodyOnce) {
  Open();
  EnqueueResult r = Enqueue(Header({Rcpt("a@X.example"), Rcpt("b@y.example"), Rcpt("c@x.EXAMPLE")}));
  EXPECT_FALSE(r.duplicate);
  EXPECT_EQ(r.message_id.size(), 20u);

  StatsResponse s = Stats();
  EXPECT_EQ(s.messages(), 1u);
  EXPECT_EQ(s.deliveries(), 2u);
  EXPECT_EQ(s.deliveries_due(), 2u);
  EXPECT_EQ(s.recipients_pending(), 3u);
  EXPECT_EQ(s.enqueued_total(), 1u);
  EXPECT_EQ(s.oldest_message_unix_ms(), kStart);

  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 2);
  std::map<std::string, std::vector<std::string>> by_domain;
  for (const auto& job : lease.deliveries()) {
    EXPECT_EQ(job.message_id(), r.message_id);
    EXPECT_EQ(job.body(), kBody);
    EXPECT_EQ(job.mail_from(), "sender@src.example");
    EXPECT_EQ(job.attempt(), 1u);
    EXPECT_EQ(job.lease_deadline_unix_ms(), kStart + 300'000);
    for (const auto& rc : job.recipients()) {
      by_domain[job.domain()].push_back(rc.spec().address());
    }
  }
  EXPECT_EQ(by_domain["x.example"], (std::vector<std::string>{"a@X.example", "c@x.EXAMPLE"}));
  EXPECT_EQ(by_domain["y.example"], (std::vector<std::string>{"b@y.example"}));
  EXPECT_EQ(Stats().deliveries_leased(), 2u);

  core_.reset();
  auto keys = CountKeys();
  EXPECT_EQ(keys[kBodiesCf], 1);
  EXPECT_EQ(keys[kMessagesCf], 1);
  EXPECT_EQ(keys[kDeliveriesCf], 2);
  EXPECT_EQ(keys[kScheduleCf], 2);
}

TEST_F(QueueCoreTest, EnvelopeFlagsReachEveryDeliveryJob) {
  Open();
  tern::v1::EnqueueHeader header = Header({Rcpt("a@x.example"), Rcpt("b@y.example")});
  header.mutable_envelope()->set_requiretls(true);
  header.mutable_envelope()->set_smtputf8(true);
  header.mutable_envelope()->set_envid("env-1");
  Enqueue(header);
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 2);
  for (const auto& job : lease.deliveries()) {
    EXPECT_TRUE(job.requiretls()) << job.domain();
    EXPECT_TRUE(job.smtputf8()) << job.domain();
    EXPECT_EQ(job.envid(), "env-1");
  }
  Enqueue(Header({Rcpt("c@z.example")}));
  LeaseResponse plain = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(plain.deliveries_size(), 1);
  EXPECT_FALSE(plain.deliveries(0).requiretls());
}

TEST_F(QueueCoreTest, AlwaysSplitMakesOneDeliveryPerRecipient) {
  options_.always_split = true;
  Open();
  Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@x.example")}));
  EXPECT_EQ(Stats().deliveries(), 2u);
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 2);
  EXPECT_EQ(lease.deliveries(0).recipients_size(), 1);
  EXPECT_EQ(lease.deliveries(1).recipients_size(), 1);
}

TEST_F(QueueCoreTest, ULabelAndALabelSpellingsOfADomainShareOneDelivery) {
  Open();
  Enqueue(Header({Rcpt("user@BÜCHER.example"), Rcpt("other@xn--bcher-kva.example"), Rcpt("third@bücher.EXAMPLE"),
                  Rcpt("x@plain.example")}));
  EXPECT_EQ(Stats().deliveries(), 2u);
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 2);
  std::map<std::string, std::vector<std::string>> by_domain;
  for (const auto& job : lease.deliveries()) {
    for (const auto& rc : job.recipients()) {
      by_domain[job.domain()].push_back(rc.spec().address());
    }
  }
  // The delivery's domain (what the deliverer resolves) is the A-label; the
  // addresses are kept as the client wrote them (SMTPUTF8 is the
  // deliverer's business).
  EXPECT_EQ(by_domain["xn--bcher-kva.example"],
            (std::vector<std::string>{"user@BÜCHER.example", "other@xn--bcher-kva.example",
                                      "third@bücher.EXAMPLE"}));
  EXPECT_EQ(by_domain["plain.example"], (std::vector<std::string>{"x@plain.example"}));
}

TEST_F(QueueCoreTest, RefusesARecipientDomainWithoutAnALabelFormNamingTheAddress) {
  Open();
  // U+2603 SNOWMAN is not allowed in IDNA2008 domain names: no DNS name can
  // ever be built for it, so the message is refused for good.
  absl::Status s = EnqueueStatus(Header({Rcpt("ok@x.example"), Rcpt("bad@\xE2\x98\x83.example")}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bad@\xE2\x98\x83.example"), absl::string_view::npos) << s;
  EXPECT_EQ(Stats().messages(), 0u);
}

TEST_F(QueueCoreTest, IdempotentEnqueueReturnsTheFirstIdAndStoresNothing) {
  Open();
  EnqueueResult first = Enqueue(Header({Rcpt("a@x.example")}, "bounce:abc"));
  EnqueueResult second = Enqueue(Header({Rcpt("a@x.example")}, "bounce:abc"));
  EXPECT_FALSE(first.duplicate);
  EXPECT_TRUE(second.duplicate);
  EXPECT_EQ(second.message_id, first.message_id);
  EXPECT_EQ(Stats().messages(), 1u);
  EXPECT_EQ(Stats().enqueued_total(), 1u);
  // The key outlives the message.
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok"));
  EXPECT_EQ(Stats().messages(), 0u);
  EnqueueResult third = Enqueue(Header({Rcpt("a@x.example")}, "bounce:abc"));
  EXPECT_TRUE(third.duplicate);
  EXPECT_EQ(third.message_id, first.message_id);
}

uint64_t IdempotencyKeysPruned() {
  return metrics::Registry::Global()
      .GetCounter("tern_queue_idempotency_keys_pruned_total",
                  "Enqueue idempotency keys deleted after idempotency_retention")
      .value();
}

TEST_F(QueueCoreTest, ExpiredIdempotencyKeyIsPrunedWhileAFreshOneStillDeduplicates) {
  options_.idempotency_retention_ms = 3600'000;
  Open();
  const EnqueueResult old_msg = Enqueue(Header({Rcpt("a@x.example")}, "dsn:old"));
  clock_.AdvanceMs(40 * 60'000);
  const EnqueueResult fresh_msg = Enqueue(Header({Rcpt("a@x.example")}, "dsn:fresh"));
  // "dsn:old" is now 70 minutes old, "dsn:fresh" 30: the next prune (every
  // 5 s of queue time, on the tick) deletes exactly the old one.
  const uint64_t pruned_before = IdempotencyKeysPruned();
  clock_.AdvanceMs(30 * 60'000);
  ASSERT_TRUE(Eventually([&] { return IdempotencyKeysPruned() > pruned_before; }));
  EXPECT_EQ(IdempotencyKeysPruned() - pruned_before, 1u);

  core_.reset();
  auto keys = CountKeys();
  EXPECT_EQ(keys[kMetaCf], 1);  // only dsn:fresh is left
  Open();
  const EnqueueResult fresh_again = Enqueue(Header({Rcpt("a@x.example")}, "dsn:fresh"));
  EXPECT_TRUE(fresh_again.duplicate);
  EXPECT_EQ(fresh_again.message_id, fresh_msg.message_id);
  const EnqueueResult old_again = Enqueue(Header({Rcpt("a@x.example")}, "dsn:old"));
  EXPECT_FALSE(old_again.duplicate);
  EXPECT_NE(old_again.message_id, old_msg.message_id);
  EXPECT_EQ(Stats().messages(), 3u);
}

TEST_F(QueueCoreTest, IdempotencyKeyPastItsRetentionNoLongerDeduplicatesEvenBeforeItIsPruned) {
  options_.idempotency_retention_ms = 3600'000;
  options_.tick_interval = std::chrono::hours(1);  // no prune runs in this test
  Open();
  const EnqueueResult first = Enqueue(Header({Rcpt("a@x.example")}, "dsn:k"));
  clock_.AdvanceMs(3600'000 - 1);
  EXPECT_TRUE(Enqueue(Header({Rcpt("a@x.example")}, "dsn:k")).duplicate);
  clock_.AdvanceMs(2);
  const EnqueueResult late = Enqueue(Header({Rcpt("a@x.example")}, "dsn:k"));
  EXPECT_FALSE(late.duplicate);
  EXPECT_NE(late.message_id, first.message_id);
  // The key now names the new message, for its own retention.
  const EnqueueResult again = Enqueue(Header({Rcpt("a@x.example")}, "dsn:k"));
  EXPECT_TRUE(again.duplicate);
  EXPECT_EQ(again.message_id, late.message_id);
}

TEST_F(QueueCoreTest, RefusesEnvelopesWithoutUsableRecipients) {
  Open();
  EXPECT_EQ(EnqueueStatus(Header({})).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EnqueueStatus(Header({Rcpt("postmaster")})).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EnqueueStatus(Header({Rcpt("a@x.example"), Rcpt("b@")})).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Stats().messages(), 0u);
}

TEST_F(QueueCoreTest, DeliveredReportRetiresTheMessage) {
  Open();
  Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@x.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "queued")),
            std::vector{REPORT_STATUS_APPLIED});
  StatsResponse s = Stats();
  EXPECT_EQ(s.messages(), 0u);
  EXPECT_EQ(s.deliveries(), 0u);
  EXPECT_EQ(s.recipients_pending(), 0u);
  EXPECT_EQ(s.delivered_total(), 2u);
  EXPECT_EQ(s.bounces(), 0u);  // no NOTIFY=SUCCESS: no delivery report
  EXPECT_EQ(s.oldest_message_unix_ms(), 0);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  // A second report for the finished delivery is about nothing we know.
  EXPECT_EQ(ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "queued")),
            std::vector{REPORT_STATUS_UNKNOWN});

  core_.reset();
  auto keys = CountKeys();
  EXPECT_EQ(keys[kMessagesCf], 0);
  EXPECT_EQ(keys[kBodiesCf], 0);
  EXPECT_EQ(keys[kDeliveriesCf], 0);
  EXPECT_EQ(keys[kScheduleCf], 0);
}

TEST_F(QueueCoreTest, TransientFailuresFollowTheScheduleThenBounceAsPermanent) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  const auto busy = Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "try again");

  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(ReportAll(lease.deliveries(0), busy), std::vector{REPORT_STATUS_APPLIED});
  StatsResponse s = Stats();
  EXPECT_EQ(s.deliveries_deferred(), 1u);
  EXPECT_EQ(s.deliveries_due(), 0u);
  EXPECT_EQ(s.deferred_total(), 1u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);

  clock_.AdvanceMs(59'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  clock_.AdvanceMs(1'000);  // first interval: 60 s
  EXPECT_EQ(Stats().deliveries_due(), 1u);
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).attempt(), 2u);
  EXPECT_EQ(lease.deliveries(0).recipients(0).attempts(), 1u);
  ReportAll(lease.deliveries(0), busy);

  clock_.AdvanceMs(119'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  clock_.AdvanceMs(1'000);  // second interval: 120 s
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).recipients(0).attempts(), 2u);
  ReportAll(lease.deliveries(0), busy);  // third failure: intervals used up

  s = Stats();
  EXPECT_EQ(s.deliveries(), 0u);
  EXPECT_EQ(s.failed_total(), 1u);
  EXPECT_EQ(s.deferred_total(), 2u);
  EXPECT_EQ(s.bounces(), 1u);
  EXPECT_EQ(s.messages(), 1u);  // kept for the bounce

  LeaseResponse bounces = Lease(JOB_KIND_BOUNCE);
  ASSERT_EQ(bounces.bounces_size(), 1);
  const auto& b = bounces.bounces(0);
  EXPECT_EQ(b.bounce_id(), id + ".b1");
  EXPECT_EQ(b.message_id(), id);
  EXPECT_EQ(b.kind(), tern::v1::BOUNCE_KIND_FAILED);
  EXPECT_EQ(b.arrival_unix_ms(), kStart);
  EXPECT_EQ(b.envelope().mail_from(), "sender@src.example");
  ASSERT_EQ(b.recipients_size(), 1);
  EXPECT_EQ(b.recipients(0).spec().address(), "a@x.example");
  EXPECT_EQ(b.recipients(0).result().outcome(), tern::v1::OUTCOME_PERMANENT);
  EXPECT_EQ(b.recipients(0).result().enhanced_status(), "5.3.0");
  EXPECT_EQ(b.recipients(0).result().reply_code(), 451u);
  EXPECT_EQ(b.recipients(0).result().reply_text(), "Too many failures (451 4.3.0 try again)");
  EXPECT_EQ(b.recipients(0).result().remote_mta(), "mx.dest.example");
  EXPECT_FALSE(b.original_is_full());
  EXPECT_EQ(b.original(), "Subject: hi\r\nFrom: a@src.example\r\n\r\n");
  EXPECT_EQ(b.original_size(), kBody.size());

  EXPECT_EQ(Ack(b), REPORT_STATUS_APPLIED);
  s = Stats();
  EXPECT_EQ(s.bounces(), 0u);
  EXPECT_EQ(s.messages(), 0u);
  EXPECT_EQ(Ack(b), REPORT_STATUS_UNKNOWN);
}

TEST_F(QueueCoreTest, BounceOfANullSenderRequireTlsMessageCarriesItsWholeText) {
  // The bouncer redacts such a DSN from its whole text (RFC 8689 §5); any
  // other message without RET=FULL gives only its header.
  Open();
  for (const bool requiretls : {true, false}) {
    tern::v1::EnqueueHeader h = Header({Rcpt("a@x.example")});
    h.mutable_envelope()->set_mail_from("");
    h.mutable_envelope()->set_requiretls(requiretls);
    Enqueue(h);
    LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
    ASSERT_EQ(lease.deliveries_size(), 1);
    EXPECT_EQ(ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_PERMANENT, 0, "5.7.30", "no REQUIRETLS")),
              std::vector{REPORT_STATUS_APPLIED});
    LeaseResponse bounces = Lease(JOB_KIND_BOUNCE);
    ASSERT_EQ(bounces.bounces_size(), 1) << requiretls;
    EXPECT_EQ(bounces.bounces(0).original_is_full(), requiretls);
    EXPECT_EQ(bounces.bounces(0).original(), requiretls ? kBody : "Subject: hi\r\nFrom: a@src.example\r\n\r\n");
    EXPECT_EQ(Ack(bounces.bounces(0)), REPORT_STATUS_APPLIED);
  }
}

TEST_F(QueueCoreTest, PermanentFailureBouncesPerNotifyAndRet) {
  Open();
  const std::string id =
      Enqueue(Header({Rcpt("fail@x.example"), Rcpt("quiet@x.example", tern::v1::NOTIFY_NEVER),
                      Rcpt("delayonly@x.example", tern::v1::NOTIFY_DELAY),
                      Rcpt("ok@x.example", tern::v1::NOTIFY_SUCCESS | tern::v1::NOTIFY_FAILURE)},
                     "", DSN_RET_FULL))
          .message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  const auto& job = lease.deliveries(0);
  ASSERT_EQ(job.recipients_size(), 4);
  tern::v1::ReportRequest req;
  auto* rep = req.add_reports();
  rep->set_delivery_id(job.delivery_id());
  rep->set_lease_token(job.lease_token());
  for (int i = 0; i < 3; ++i) {
    auto* rr = rep->add_recipients();
    rr->set_index(job.recipients(i).index());
    *rr->mutable_result() = Result(tern::v1::OUTCOME_PERMANENT, 550, "5.1.1", "no such user");
  }
  auto* ok = rep->add_recipients();
  ok->set_index(job.recipients(3).index());
  *ok->mutable_result() = Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok");
  EXPECT_EQ(ReportStatuses(req), std::vector{REPORT_STATUS_APPLIED});

  StatsResponse s = Stats();
  EXPECT_EQ(s.failed_total(), 3u);
  EXPECT_EQ(s.delivered_total(), 1u);
  EXPECT_EQ(s.bounces(), 2u);
  LeaseResponse bounces = Lease(JOB_KIND_BOUNCE);
  ASSERT_EQ(bounces.bounces_size(), 2);
  const auto& failed = bounces.bounces(0);
  EXPECT_EQ(failed.bounce_id(), id + ".b1");
  EXPECT_EQ(failed.kind(), tern::v1::BOUNCE_KIND_FAILED);
  ASSERT_EQ(failed.recipients_size(), 1);  // NEVER and DELAY-only get no failure DSN
  EXPECT_EQ(failed.recipients(0).spec().address(), "fail@x.example");
  EXPECT_EQ(failed.recipients(0).result().enhanced_status(), "5.1.1");
  EXPECT_TRUE(failed.original_is_full());
  EXPECT_EQ(failed.original(), kBody);
  const auto& success = bounces.bounces(1);
  EXPECT_EQ(success.kind(), tern::v1::BOUNCE_KIND_DELIVERED);
  ASSERT_EQ(success.recipients_size(), 1);
  EXPECT_EQ(success.recipients(0).spec().address(), "ok@x.example");
  EXPECT_EQ(Stats().bounces_leased(), 2u);

  EXPECT_EQ(Ack(failed), REPORT_STATUS_APPLIED);
  EXPECT_EQ(Stats().messages(), 1u);
  EXPECT_EQ(Ack(success), REPORT_STATUS_APPLIED);
  EXPECT_EQ(Stats().messages(), 0u);
}

TEST_F(QueueCoreTest, RefusesStaleUnknownAndInvalidReports) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  const auto& job = lease.deliveries(0);
  const auto ok = Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok");
  EXPECT_EQ(ReportAll(job, ok, "not-the-token"), std::vector{REPORT_STATUS_STALE_LEASE});

  tern::v1::ReportRequest req;
  auto* bad_index = req.add_reports();
  bad_index->set_delivery_id(job.delivery_id());
  bad_index->set_lease_token(job.lease_token());
  auto* rr = bad_index->add_recipients();
  rr->set_index(7);
  *rr->mutable_result() = ok;
  auto* no_outcome = req.add_reports();
  *no_outcome = *bad_index;
  no_outcome->mutable_recipients(0)->set_index(0);
  no_outcome->mutable_recipients(0)->mutable_result()->set_outcome(tern::v1::OUTCOME_UNSPECIFIED);
  auto* unknown = req.add_reports();
  unknown->set_delivery_id("nope.1");
  unknown->set_lease_token(job.lease_token());
  EXPECT_EQ(ReportStatuses(req), (std::vector{REPORT_STATUS_INVALID, REPORT_STATUS_INVALID, REPORT_STATUS_UNKNOWN}));
  // Nothing was applied; the right report still is.
  EXPECT_EQ(Stats().deliveries_leased(), 1u);
  EXPECT_EQ(ReportAll(job, ok), std::vector{REPORT_STATUS_APPLIED});
}

TEST_F(QueueCoreTest, ExpiredLeaseBecomesDueAgainAndTheOldTokenGoesStale) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  LeaseResponse first = Lease(JOB_KIND_DELIVERY, 10, /*lease_seconds=*/30);
  ASSERT_EQ(first.deliveries_size(), 1);
  EXPECT_EQ(first.deliveries(0).lease_deadline_unix_ms(), kStart + 30'000);
  clock_.AdvanceMs(29'999);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  EXPECT_EQ(Stats().deliveries_leased(), 1u);
  clock_.AdvanceMs(1);
  StatsResponse s = Stats();
  EXPECT_EQ(s.deliveries_leased(), 0u);
  EXPECT_EQ(s.deliveries_due(), 1u);

  LeaseResponse second = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(second.deliveries_size(), 1);
  EXPECT_EQ(second.deliveries(0).delivery_id(), first.deliveries(0).delivery_id());
  EXPECT_NE(second.deliveries(0).lease_token(), first.deliveries(0).lease_token());
  EXPECT_EQ(second.deliveries(0).attempt(), 2u);

  const auto ok = Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok");
  EXPECT_EQ(ReportAll(first.deliveries(0), ok), std::vector{REPORT_STATUS_STALE_LEASE});
  EXPECT_EQ(ReportAll(second.deliveries(0), ok), std::vector{REPORT_STATUS_APPLIED});
  EXPECT_EQ(Stats().messages(), 0u);
}

TEST_F(QueueCoreTest, LeaseLengthIsClampedToTheMaximum) {
  options_.max_lease_seconds = 100;
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 1, /*lease_seconds=*/100000);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).lease_deadline_unix_ms(), kStart + 100'000);
}

TEST_F(QueueCoreTest, ReportLeavingRecipientsOutKeepsThemPending) {
  Open();
  Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@x.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  const auto& job = lease.deliveries(0);
  tern::v1::ReportRequest req;
  auto* rep = req.add_reports();
  rep->set_delivery_id(job.delivery_id());
  rep->set_lease_token(job.lease_token());
  auto* rr = rep->add_recipients();
  rr->set_index(job.recipients(0).index());
  *rr->mutable_result() = Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok");
  EXPECT_EQ(ReportStatuses(req), std::vector{REPORT_STATUS_APPLIED});
  StatsResponse s = Stats();
  EXPECT_EQ(s.recipients_pending(), 1u);
  EXPECT_EQ(s.deliveries_deferred(), 1u);

  clock_.AdvanceMs(60'000);
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  ASSERT_EQ(lease.deliveries(0).recipients_size(), 1);
  EXPECT_EQ(lease.deliveries(0).recipients(0).spec().address(), "b@x.example");
  EXPECT_EQ(lease.deliveries(0).recipients(0).attempts(), 0u);
}

TEST_F(QueueCoreTest, ReopenWithoutGraceRecoversCountersAndReleasesOutstandingLeases) {
  options_.recovery_lease_grace_seconds = 0;
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  Enqueue(Header({Rcpt("b@y.example")}));
  Enqueue(Header({Rcpt("c@z.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 2);
  ASSERT_EQ(lease.deliveries_size(), 2);
  // One deferred, one still out on lease when the process goes away.
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 421, "4.4.2", "bye"));
  const auto& outstanding = lease.deliveries(1);
  StatsResponse before = Stats();
  EXPECT_EQ(before.deliveries_leased(), 1u);
  EXPECT_EQ(before.deliveries_deferred(), 1u);
  EXPECT_EQ(before.deliveries_due(), 1u);

  Reopen();
  StatsResponse after = Stats();
  EXPECT_EQ(after.messages(), 3u);
  EXPECT_EQ(after.deliveries(), 3u);
  EXPECT_EQ(after.deliveries_leased(), 0u);
  EXPECT_EQ(after.deliveries_due(), 2u);  // the released lease and the untouched one
  EXPECT_EQ(after.deliveries_deferred(), 1u);
  EXPECT_EQ(after.recipients_pending(), 3u);
  EXPECT_EQ(after.oldest_message_unix_ms(), kStart);

  LeaseResponse again = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(again.deliveries_size(), 2);
  bool found = false;
  for (const auto& job : again.deliveries()) {
    if (job.delivery_id() == outstanding.delivery_id()) {
      found = true;
      EXPECT_NE(job.lease_token(), outstanding.lease_token());
      EXPECT_EQ(job.body(), kBody);
    }
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(ReportAll(outstanding, Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_STALE_LEASE});

  // The deferred delivery keeps its retry time across the restart.
  clock_.AdvanceMs(60'000);
  Reopen();
  LeaseResponse retry = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(retry.deliveries_size(), 3);  // the two leased above were released again, plus the retry
}

TEST_F(QueueCoreTest, ReopenKeepsAnOutstandingLeaseForItsGraceSoItsWorkerCanStillReport) {
  Open();  // default grace: 30 s
  Enqueue(Header({Rcpt("a@x.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  Reopen();
  StatsResponse after = Stats();
  EXPECT_EQ(after.deliveries_leased(), 1u);
  EXPECT_EQ(after.deliveries_due(), 0u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0) << "not handed out twice during the grace";
  // The worker that held it survived the queue's crash and reports now.
  EXPECT_EQ(ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  EXPECT_EQ(Stats().messages(), 0u);
}

TEST_F(QueueCoreTest, LeaseKeptAfterReopenBecomesDueWhenItsGraceRunsOut) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  Reopen();
  clock_.AdvanceMs(31'000);
  LeaseResponse again;
  ASSERT_TRUE(Eventually([&] {
    again = Lease(JOB_KIND_DELIVERY);
    return again.deliveries_size() == 1;
  }));
  EXPECT_NE(again.deliveries(0).lease_token(), lease.deliveries(0).lease_token());
  EXPECT_EQ(ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_STALE_LEASE});
}

TEST_F(QueueCoreTest, EnqueueIsRefusedRetryablyWhenTheDiskReserveWouldBeUsed) {
  // A reserve larger than any disk: every enqueue must be refused, with a
  // status ingest turns into 452 (never 250, never 5xx), and nothing stored.
  options_.min_free_bytes = uint64_t{1} << 62;
  Open();
  absl::Status s = EnqueueStatus(Header({Rcpt("a@x.example")}));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("disk almost full"), std::string::npos) << s;
  EXPECT_EQ(Stats().messages(), 0u);
  // With room again (here: no reserve), mail is accepted as usual.
  options_.min_free_bytes = 0;
  Reopen();
  EXPECT_TRUE(EnqueueStatus(Header({Rcpt("a@x.example")})).ok());
  EXPECT_EQ(Stats().messages(), 1u);
}

TEST_F(QueueCoreTest, OneBatchTogetherKeepsTheDiskReserveFree) {
  // The free space is read once per batch, so each accepted body must count
  // against it (and a refused one must not): on a disk with 3 MiB above the
  // reserve, a 1 MiB body without recipients is refused for that and takes
  // nothing, the next 1 MiB body (~2 MiB of disk: WAL and blob) is taken, the
  // one after it is refused for space, and a small last one still fits. The
  // disk is a fixed number: on the real one, other tests' WAL prefills come
  // and go in 64 MiB steps and made this flaky.
  constexpr uint64_t kBig = uint64_t{1} << 20;
  options_.min_free_bytes = uint64_t{100} << 20;
  std::atomic<int> reads{0};
  options_.free_disk_bytes = [&reads, reserve = options_.min_free_bytes](const std::string&) {
    ++reads;
    return std::optional<uint64_t>(reserve + 3 * kBig);
  };
  Open();
  std::vector<std::promise<absl::Status>> results(4);
  std::vector<QueueCore::EnqueueArgs> batch;
  const std::string big(kBig, 'x');
  for (int i = 0; i < 4; ++i) {
    std::vector<tern::v1::RecipientSpec> rcpts;
    if (i > 0) {
      rcpts.push_back(Rcpt(absl::StrCat("r", i, "@x.example")));
    }
    batch.push_back({Header(rcpts), i < 3 ? big : std::string(kBody),
                     [&results, i](absl::StatusOr<EnqueueResult> r) { results[i].set_value(r.status()); }});
  }
  core_->EnqueueMany(std::move(batch));
  std::vector<absl::Status> got;
  for (auto& r : results) {
    got.push_back(r.get_future().get());
  }
  EXPECT_EQ(got[0].code(), absl::StatusCode::kInvalidArgument) << got[0];
  EXPECT_TRUE(got[1].ok()) << got[1];
  EXPECT_EQ(got[2].code(), absl::StatusCode::kResourceExhausted) << got[2];
  EXPECT_TRUE(got[3].ok()) << got[3];
  EXPECT_EQ(Stats().messages(), 2u);
  EXPECT_EQ(reads.load(), 1) << "one look at the disk for the whole batch";
}

TEST_F(QueueCoreTest, CorruptRecordsAreQuarantinedNotFatal) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  core_.reset();
  PlantRaw(kDeliveriesCf, "garbage.1", "\xff\xff not a proto");
  Open();
  EXPECT_EQ(Stats().deliveries(), 1u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 1);
  core_.reset();
  auto keys = CountKeys();
  EXPECT_EQ(keys[kCorruptCf], 1);
  EXPECT_EQ(keys[kDeliveriesCf], 1);
}

TEST_F(QueueCoreTest, LeaseRespectsTheBodyBudgetButAlwaysReturnsOneJob) {
  Open();
  const std::string big(10'000, 'x');
  Enqueue(Header({Rcpt("a@x.example")}), big);
  Enqueue(Header({Rcpt("b@y.example")}), big);
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 10, 0, /*max_body_bytes=*/100);
  EXPECT_EQ(lease.deliveries_size(), 1);
  lease = Lease(JOB_KIND_DELIVERY, 10, 0, /*max_body_bytes=*/100);
  EXPECT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
}

TEST_F(QueueCoreTest, LongPollCompletesWhenWorkArrives) {
  Open();
  tern::v1::LeaseRequest req;
  req.set_kind(JOB_KIND_DELIVERY);
  req.set_max_jobs(5);
  req.set_wait_ms(20'000);
  auto promise = std::make_shared<std::promise<absl::StatusOr<LeaseResponse>>>();
  auto future = promise->get_future();
  core_->Lease(req, [promise](absl::StatusOr<LeaseResponse> r) { promise->set_value(std::move(r)); });
  EXPECT_EQ(future.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  Enqueue(Header({Rcpt("a@x.example")}));
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  auto r = future.get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliveries_size(), 1);
}

TEST_F(QueueCoreTest, CancelledLongPollNeverTakesTheJobThatArrivesLater) {
  Open();
  tern::v1::LeaseRequest req;
  req.set_kind(JOB_KIND_DELIVERY);
  req.set_max_jobs(5);
  req.set_wait_ms(20'000);
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  auto promise = std::make_shared<std::promise<absl::StatusOr<LeaseResponse>>>();
  auto future = promise->get_future();
  core_->Lease(
      req, [promise](absl::StatusOr<LeaseResponse> r) { promise->set_value(std::move(r)); }, cancelled);
  EXPECT_EQ(future.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  // The caller goes away (a bouncer stopping), then work arrives.
  cancelled->store(true);
  Enqueue(Header({Rcpt("a@x.example")}));
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  auto r = future.get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->deliveries_size(), 0) << "a cancelled call must not take jobs";
  // The job is still there for a live worker, at once (not after a lease).
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 1);
}

TEST_F(QueueCoreTest, LongPollTimesOutEmpty) {
  Open();
  tern::v1::LeaseRequest req;
  req.set_kind(JOB_KIND_BOUNCE);
  req.set_wait_ms(50);
  auto r = Sync<LeaseResponse>([&](auto cb) { core_->Lease(req, std::move(cb)); });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->bounces_size(), 0);
}

TEST_F(QueueCoreTest, ShutdownAnswersParkedLongPolls) {
  Open();
  tern::v1::LeaseRequest req;
  req.set_kind(JOB_KIND_DELIVERY);
  req.set_wait_ms(60'000);
  auto promise = std::make_shared<std::promise<absl::StatusOr<LeaseResponse>>>();
  auto future = promise->get_future();
  core_->Lease(req, [promise](absl::StatusOr<LeaseResponse> r) { promise->set_value(std::move(r)); });
  core_->BeginShutdown();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(future.get().ok());
}

TEST_F(QueueCoreTest, DisabledPausesDeliveriesAndFlushMakesDeferredDueNow) {
  options_.disabled = true;
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  EXPECT_EQ(Stats().messages(), 1u);  // accepted while paused
  core_->SetDisabled(false);
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 450, "4.2.0", "busy"));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);

  auto moved = Sync<uint64_t>([&](auto cb) { core_->Flush(std::move(cb)); });
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(*moved, 1u);
  EXPECT_EQ(Stats().deliveries_due(), 1u);
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).recipients(0).attempts(), 1u);
}

TEST_F(QueueCoreTest, NoRetriesMeansTheFirstTransientFailureBounces) {
  options_.retry = RetrySchedule(std::vector<int64_t>{});
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 0, "", "connection refused"));
  LeaseResponse bounces = Lease(JOB_KIND_BOUNCE);
  ASSERT_EQ(bounces.bounces_size(), 1);
  EXPECT_EQ(bounces.bounces(0).recipients(0).result().enhanced_status(), "5.0.0");
  EXPECT_EQ(bounces.bounces(0).recipients(0).result().reply_text(), "Too many failures (connection refused)");
}

TEST_F(QueueCoreTest, ManyConcurrentEnqueuesAllCommit) {
  Open();
  constexpr int kN = 200;
  std::vector<std::future<absl::StatusOr<EnqueueResult>>> futures;
  for (int i = 0; i < kN; ++i) {
    auto promise = std::make_shared<std::promise<absl::StatusOr<EnqueueResult>>>();
    futures.push_back(promise->get_future());
    core_->Enqueue(Header({Rcpt(absl::StrCat("u", i, "@d", i % 7, ".example"))}), kBody,
                   [promise](absl::StatusOr<EnqueueResult> r) { promise->set_value(std::move(r)); });
  }
  std::set<std::string> ids;
  for (auto& f : futures) {
    auto r = f.get();
    ASSERT_TRUE(r.ok()) << r.status();
    ids.insert(r->message_id);
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kN));
  Reopen();
  EXPECT_EQ(Stats().messages(), static_cast<uint64_t>(kN));
  EXPECT_EQ(Stats().deliveries_due(), static_cast<uint64_t>(kN));
}


// ---- destination_concurrency_max ---------------------------------------------

std::map<std::string, int> DomainsOf(const LeaseResponse& lease) {
  std::map<std::string, int> n;
  for (const auto& job : lease.deliveries()) {
    ++n[job.domain()];
  }
  return n;
}

// A Lease long poll for up to 10 deliveries, waiting up to 30 s; its answer
// arrives through the future.
std::future<absl::StatusOr<LeaseResponse>> LongPoll(QueueCore& core) {
  tern::v1::LeaseRequest req;
  req.set_kind(JOB_KIND_DELIVERY);
  req.set_max_jobs(10);
  req.set_wait_ms(30'000);
  auto promise = std::make_shared<std::promise<absl::StatusOr<LeaseResponse>>>();
  auto waiting = promise->get_future();
  core.Lease(req, [promise](absl::StatusOr<LeaseResponse> r) { promise->set_value(std::move(r)); });
  return waiting;
}

// The answer holds exactly one delivery, not the one `first` leased.
void ExpectTheOtherDelivery(const absl::StatusOr<LeaseResponse>& got, const LeaseResponse& first) {
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->deliveries_size(), 1);
  EXPECT_NE(got->deliveries(0).delivery_id(), first.deliveries(0).delivery_id());
}

TEST_F(QueueCoreTest, DestinationConcurrencyMaxCapsLeasesPerDomainAndAReportFreesASlot) {
  options_.shaping = DestinationShaping(2);
  Open();
  for (int i = 0; i < 4; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
  }
  Enqueue(Header({Rcpt("v@b.example")}));
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 100);
  EXPECT_EQ(DomainsOf(first), (std::map<std::string, int>{{"a.example", 2}, {"b.example", 1}}));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);  // a.example is full
  EXPECT_EQ(Stats().deliveries_due(), 2u);                          // still due, just held back

  // One a.example delivery done: exactly one more may go.
  const tern::v1::DeliveryJob* done = nullptr;
  for (const auto& job : first.deliveries()) {
    if (job.domain() == "a.example") {
      done = &job;
      break;
    }
  }
  ASSERT_NE(done, nullptr);
  ASSERT_EQ(ReportAll(*done, Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  const LeaseResponse second = Lease(JOB_KIND_DELIVERY, 100);
  EXPECT_EQ(DomainsOf(second), (std::map<std::string, int>{{"a.example", 1}}));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
}

TEST_F(QueueCoreTest, ExpiredLeaseFreesItsDestinationSlot) {
  options_.shaping = DestinationShaping(1);
  Open();
  Enqueue(Header({Rcpt("u1@a.example")}));
  Enqueue(Header({Rcpt("u2@a.example")}));
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 10, /*lease_seconds=*/30);
  ASSERT_EQ(first.deliveries_size(), 1);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 0);
  clock_.AdvanceMs(30'000);
  // The lease ran out (its delivery is due again) and its slot is free: one
  // of the two goes out, never both.
  ASSERT_TRUE(Eventually([&] { return Stats().deliveries_leased() == 0; }));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 1);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 0);
}

TEST_F(QueueCoreTest, WaitingLeaseGetsAThrottledDeliveryAsSoonAsAReportFreesItsSlot) {
  options_.shaping = DestinationShaping(1);
  options_.tick_interval = std::chrono::seconds(60);  // only the report can wake it
  Open();
  Enqueue(Header({Rcpt("u1@a.example")}));
  Enqueue(Header({Rcpt("u2@a.example")}));
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 10);
  ASSERT_EQ(first.deliveries_size(), 1);
  // A long poll that finds only a full destination waits...
  auto waiting = LongPoll(*core_);
  EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  // ...and is answered by the report that frees the slot, not by its timeout.
  ASSERT_EQ(ReportAll(first.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  ExpectTheOtherDelivery(waiting.get(), first);
}

// ---- shaping.ini rate_max ----------------------------------------------------

TEST_F(QueueCoreTest, DestinationRateMaxSpacesOneDomainsLeasesAndLeavesOthersAlone) {
  options_.shaping.Set("a.example", DestinationLimits{0, RateLimit{2, 1000}});  // 2/s: burst 2, 500 ms apart
  Open();
  for (int i = 0; i < 6; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
  }
  for (int i = 0; i < 3; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("v", i, "@b.example"))}));
  }
  EXPECT_EQ(DomainsOf(Lease(JOB_KIND_DELIVERY, 100)),
            (std::map<std::string, int>{{"a.example", 2}, {"b.example", 3}}));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
  EXPECT_EQ(Stats().deliveries_due(), 4u);  // still due, set aside in memory
  clock_.AdvanceMs(499);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
  clock_.AdvanceMs(1);
  EXPECT_EQ(DomainsOf(Lease(JOB_KIND_DELIVERY, 100)), (std::map<std::string, int>{{"a.example", 1}}));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
  // A quiet spell gives back the burst, not more.
  clock_.AdvanceMs(10'000);
  EXPECT_EQ(DomainsOf(Lease(JOB_KIND_DELIVERY, 100)), (std::map<std::string, int>{{"a.example", 2}}));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
  clock_.AdvanceMs(500);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 1);
  EXPECT_EQ(Stats().deliveries_due(), 0u);
}

TEST_F(QueueCoreTest, ARateLimitedDeliveryGoesToAWaitingLeaseWhenItsRateAllows) {
  options_.shaping.SetDefaults(DestinationLimits{0, RateLimit{1, 60'000}});  // [*] rate_max=1/m
  Open();
  Enqueue(Header({Rcpt("u1@a.example")}));
  Enqueue(Header({Rcpt("u2@a.example")}));
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 10);
  ASSERT_EQ(first.deliveries_size(), 1);
  auto waiting = LongPoll(*core_);
  EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(600)), std::future_status::timeout);
  // A minute later the tick finds the domain may start another.
  clock_.AdvanceMs(60'000);
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  ExpectTheOtherDelivery(waiting.get(), first);
}

TEST_F(QueueCoreTest, ARetrySpendsAStartOfTheRateLikeAFirstAttempt) {
  options_.shaping.Set("a.example", DestinationLimits{0, RateLimit{1, 60'000}});
  Open();
  Enqueue(Header({Rcpt("u1@a.example")}));
  Enqueue(Header({Rcpt("u2@a.example")}));
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 10);
  ASSERT_EQ(first.deliveries_size(), 1);
  ASSERT_EQ(ReportAll(first.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "later")),
            std::vector{REPORT_STATUS_APPLIED});
  // Both are due two minutes on (the retry after its 60 s interval): one start.
  clock_.AdvanceMs(120'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 1);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 0);
}

TEST_F(QueueCoreTest, ConcurrencyAndRateLimitsOfOneDomainBothHold) {
  options_.shaping.Set("a.example", DestinationLimits{1, RateLimit{10, 1000}});
  Open();
  for (int i = 0; i < 3; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
  }
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 10);
  ASSERT_EQ(first.deliveries_size(), 1);  // the rate would allow 10; one slot
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 0);
  ASSERT_EQ(ReportAll(first.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 1);
}

// ---- congestion backoff (shaping.ini backoff) ---------------------------------

const tern::v1::DeliveryJob& JobOf(const LeaseResponse& lease, const std::string& domain, int nth = 0) {
  for (const auto& job : lease.deliveries()) {
    if (job.domain() == domain && nth-- == 0) {
      return job;
    }
  }
  ADD_FAILURE() << "no delivery " << nth << " for " << domain;
  return lease.deliveries(0);
}

TEST_F(QueueCoreTest, A421HalvesWhatADomainMayHaveOutAndEachSuccessLetsOneMoreGo) {
  Open();
  for (int i = 0; i < 4; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
  }
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(first.deliveries_size(), 4);  // no limit configured
  // Four out, one comes back 421: at most two may be out from now on.
  ASSERT_EQ(ReportAll(JobOf(first, "a.example", 0),
                      Result(tern::v1::OUTCOME_TRANSIENT, 421, "4.7.0", "Too many connections, slow down")),
            std::vector{REPORT_STATUS_APPLIED});
  Enqueue(Header({Rcpt("v1@a.example")}));
  Enqueue(Header({Rcpt("v2@a.example")}));
  Enqueue(Header({Rcpt("w@b.example")}));
  EXPECT_EQ(DomainsOf(Lease(JOB_KIND_DELIVERY, 100)), (std::map<std::string, int>{{"b.example", 1}}));
  // Three still out; one succeeds: two out, and the cap rose to three.
  ASSERT_EQ(ReportAll(JobOf(first, "a.example", 1), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  EXPECT_EQ(DomainsOf(Lease(JOB_KIND_DELIVERY, 100)), (std::map<std::string, int>{{"a.example", 1}}));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
  // A minute after the 421 the backoff is lifted (at a tick): the one left
  // waiting goes, with the 421's own retry (due after the fixture's 60 s).
  clock_.AdvanceMs(60'000);
  int got = 0;
  ASSERT_TRUE(Eventually([&] {
    got += Lease(JOB_KIND_DELIVERY, 100).deliveries_size();
    return got >= 2;
  }));
  EXPECT_EQ(got, 2);
}

TEST_F(QueueCoreTest, OtherTemporaryFailuresDoNotBackOff) {
  Open();
  for (int i = 0; i < 4; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
  }
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(first.deliveries_size(), 4);
  ReportAll(first.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "try again later"));
  ReportAll(first.deliveries(1), Result(tern::v1::OUTCOME_TRANSIENT, 452, "4.5.3", "Too many recipients"));
  for (int i = 0; i < 4; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("v", i, "@a.example"))}));
  }
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 4);
}

TEST_F(QueueCoreTest, BackoffOffInShapingIgnoresA421) {
  DestinationLimits limits;
  limits.backoff = false;
  options_.shaping.SetDefaults(limits);
  Open();
  FourOutOneA421AndFourMore();
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 4);
}

TEST_F(QueueCoreTest, WithoutADestinationLimitOneDomainTakesEveryLease) {
  Open();
  for (int i = 0; i < 30; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
  }
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 30);
}

// ---- MX sites (shaping.ini [site:NAME]) ---------------------------------------

tern::v1::RecipientResult ResultFrom(const std::string& mx, tern::v1::Outcome outcome, uint32_t code,
                                     const std::string& text) {
  tern::v1::RecipientResult r = Result(outcome, code, outcome == tern::v1::OUTCOME_DELIVERED ? "2.0.0" : "4.0.0", text);
  r.set_remote_mta(mx);
  return r;
}

int CountOf(const LeaseResponse& lease, std::initializer_list<const char*> domains) {
  int n = 0;
  for (const auto& job : lease.deliveries()) {
    for (const char* d : domains) {
      n += job.domain() == d ? 1 : 0;
    }
  }
  return n;
}

int64_t MxSiteDomains() { return metrics::Registry::Global().GetGauge("tern_queue_mx_site_domains", "").value(); }

// One MX site, "shared" (hosts under shared.example), one slot.
class QueueCoreSiteTest : public QueueCoreTest {
 protected:
  void SetUp() override {
    QueueCoreTest::SetUp();
    UseSite("shared");
  }
  void UseSite(const std::string& name) {
    options_.shaping = DestinationShaping();
    ASSERT_TRUE(options_.shaping.AddSite(name, {absl::StrCat(name, ".example")}, {}, Concurrency(1)).ok());
  }
  // Enqueues one message each to a.example and b.example; nothing is known
  // of their MX hosts yet, so each is shaped on its own (no limit) and both
  // are leased. Their reports tie both domains to the site; the retries are
  // due 60 s later.
  void LearnSharedSite() {
    Enqueue(Header({Rcpt("u1@a.example")}));
    Enqueue(Header({Rcpt("v1@b.example")}));
    const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 100);
    ASSERT_EQ(first.deliveries_size(), 2);
    // Each report names a host of the site (any case, a trailing dot).
    ASSERT_EQ(
        ReportAll(JobOf(first, "a.example"), ResultFrom("mx1.shared.example", tern::v1::OUTCOME_TRANSIENT, 451, "later")),
        std::vector{REPORT_STATUS_APPLIED});
    ASSERT_EQ(ReportAll(JobOf(first, "b.example"),
                        ResultFrom("MX2.Shared.Example.", tern::v1::OUTCOME_TRANSIENT, 451, "later")),
              std::vector{REPORT_STATUS_APPLIED});
    ASSERT_EQ(MxSiteDomains(), 2);
  }
};

TEST_F(QueueCoreTest, DomainsASiteListsShareItsConcurrency) {
  ASSERT_TRUE(options_.shaping.AddSite("shared", {"mx.shared.example"}, {"a.example", "b.example"},
                                       Concurrency(1))
                  .ok());
  Open();
  Enqueue(Header({Rcpt("u1@a.example")}));
  Enqueue(Header({Rcpt("u2@a.example")}));
  Enqueue(Header({Rcpt("v1@b.example")}));
  Enqueue(Header({Rcpt("w1@c.example")}));
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 100);
  // One slot for a.example and b.example together; c.example is not in the site.
  EXPECT_EQ(CountOf(first, {"a.example", "b.example"}), 1);
  EXPECT_EQ(CountOf(first, {"c.example"}), 1);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
  for (const auto& job : first.deliveries()) {
    ASSERT_EQ(ReportAll(job, ResultFrom("mx.shared.example", tern::v1::OUTCOME_DELIVERED, 250, "ok")),
              std::vector{REPORT_STATUS_APPLIED});
  }
  EXPECT_EQ(CountOf(Lease(JOB_KIND_DELIVERY, 100), {"a.example", "b.example"}), 1);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
}

TEST_F(QueueCoreSiteTest, AReportFromASitesMxHostPutsItsDomainInTheSite) {
  Open();
  LearnSharedSite();
  // The retries now share the site's one slot.
  clock_.AdvanceMs(60'000);
  const LeaseResponse retry = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(retry.deliveries_size(), 1);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
  // Ending that lease lets the other one go.
  ASSERT_EQ(ReportAll(retry.deliveries(0), ResultFrom("mx1.shared.example", tern::v1::OUTCOME_DELIVERED, 250, "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  const LeaseResponse last = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(last.deliveries_size(), 1);
  EXPECT_NE(last.deliveries(0).domain(), retry.deliveries(0).domain());
}

TEST_F(QueueCoreSiteTest, AReportFromAnotherHostTakesADomainOutOfItsSite) {
  Open();
  LearnSharedSite();
  clock_.AdvanceMs(60'000);
  const LeaseResponse retry = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(retry.deliveries_size(), 1);
  // That domain's MX moved elsewhere: it leaves the site, and the site's
  // slot is free again for the other domain.
  ASSERT_EQ(ReportAll(retry.deliveries(0),
                      ResultFrom("mx.elsewhere.example", tern::v1::OUTCOME_TRANSIENT, 451, "later")),
            std::vector{REPORT_STATUS_APPLIED});
  EXPECT_EQ(MxSiteDomains(), 1);
  const LeaseResponse other = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(other.deliveries_size(), 1);
  EXPECT_NE(other.deliveries(0).domain(), retry.deliveries(0).domain());
  // The moved domain's next retry goes although the site's slot is taken.
  clock_.AdvanceMs(120'000);
  const LeaseResponse moved = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(moved.deliveries_size(), 1);
  EXPECT_EQ(moved.deliveries(0).domain(), retry.deliveries(0).domain());
}

TEST_F(QueueCoreSiteTest, ASitesDomainsStayInItAcrossARestart) {
  Open();
  LearnSharedSite();
  Reopen();
  EXPECT_EQ(MxSiteDomains(), 2);
  clock_.AdvanceMs(60'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 1);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);
}

TEST_F(QueueCoreSiteTest, ARestartDropsMembershipsOfASiteNoLongerConfigured) {
  Open();
  LearnSharedSite();
  // A restart whose shaping.ini has no such site deletes the memberships...
  core_.reset();
  UseSite("other");
  Open();
  EXPECT_EQ(MxSiteDomains(), 0);
  // ...so the site's return does not bring them back: both retries go.
  core_.reset();
  UseSite("shared");
  Open();
  EXPECT_EQ(MxSiteDomains(), 0);
  clock_.AdvanceMs(60'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 2);
}

TEST_F(QueueCoreSiteTest, AMembershipNoReportRenewsForADayIsForgotten) {
  Open();
  LearnSharedSite();
  clock_.AdvanceMs(24 * 3600 * 1000);
  ASSERT_TRUE(Eventually([&] { return MxSiteDomains() == 0; }));
  Reopen();
  EXPECT_EQ(MxSiteDomains(), 0);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 2);
}

TEST_F(QueueCoreTest, A421FromOneDomainOfASiteLowersTheWholeSite) {
  ASSERT_TRUE(
      options_.shaping.AddSite("shared", {"shared.example"}, {"a.example", "b.example"}, DestinationLimits{}).ok());
  Open();
  for (int i = 0; i < 2; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
    Enqueue(Header({Rcpt(absl::StrCat("v", i, "@b.example"))}));
  }
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(first.deliveries_size(), 4);  // no limit configured
  // Four out at the site; a.example gets a 421: at most two may be out.
  ASSERT_EQ(ReportAll(JobOf(first, "a.example"),
                      ResultFrom("mx.shared.example", tern::v1::OUTCOME_TRANSIENT, 421, "too busy")),
            std::vector{REPORT_STATUS_APPLIED});
  Enqueue(Header({Rcpt("v9@b.example")}));
  Enqueue(Header({Rcpt("w@c.example")}));
  // Three are still out, so b.example waits too; c.example is not in the site.
  EXPECT_EQ(DomainsOf(Lease(JOB_KIND_DELIVERY, 100)), (std::map<std::string, int>{{"c.example", 1}}));
}

TEST_F(QueueCoreTest, ADomainWithItsOwnSectionKeepsItsOwnLimitsWhateverServesIt) {
  ASSERT_TRUE(options_.shaping.AddSite("shared", {"shared.example"}, {}, Concurrency(1)).ok());
  options_.shaping.Set("a.example", Concurrency(0));
  Open();
  Enqueue(Header({Rcpt("u1@a.example")}));
  Enqueue(Header({Rcpt("u2@a.example")}));
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(first.deliveries_size(), 2);
  for (const auto& job : first.deliveries()) {
    ReportAll(job, ResultFrom("mx.shared.example", tern::v1::OUTCOME_TRANSIENT, 451, "later"));
  }
  clock_.AdvanceMs(60'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 2);
}

// The user's deferred hook (hooks.proto) names its own delay: the queue waits
// that long instead of the schedule's interval, and the attempt still counts.
TEST_F(QueueCoreTest, DeferredHookDelayReplacesTheScheduleButCountsTheAttempt) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  auto busy = Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "try again");
  busy.set_retry_in_seconds(7);
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(ReportAll(lease.deliveries(0), busy), std::vector{REPORT_STATUS_APPLIED});
  clock_.AdvanceMs(6'999);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  clock_.AdvanceMs(1);  // 7 s, not the schedule's 60 s
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).recipients(0).attempts(), 1u);
  // Without the hook's delay the schedule applies again (second interval, 120 s).
  busy.set_retry_in_seconds(0);
  ReportAll(lease.deliveries(0), busy);
  clock_.AdvanceMs(119'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  clock_.AdvanceMs(1'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 1);
}

// The deferred hook's DROP: a permanent failure without a DSN; a plain
// permanent failure in the same delivery still gets one.
TEST_F(QueueCoreTest, SuppressDsnFailsTheRecipientWithoutABounce) {
  Open();
  Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@x.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  tern::v1::ReportRequest req;
  auto* rep = req.add_reports();
  rep->set_delivery_id(lease.deliveries(0).delivery_id());
  rep->set_lease_token(lease.deliveries(0).lease_token());
  auto dropped = Result(tern::v1::OUTCOME_PERMANENT, 451, "4.3.0", "dropped by hook");
  dropped.set_suppress_dsn(true);
  auto* a = rep->add_recipients();
  a->set_index(lease.deliveries(0).recipients(0).index());
  *a->mutable_result() = dropped;
  auto* b = rep->add_recipients();
  b->set_index(lease.deliveries(0).recipients(1).index());
  *b->mutable_result() = Result(tern::v1::OUTCOME_PERMANENT, 550, "5.1.1", "no such user");
  EXPECT_EQ(ReportStatuses(req), std::vector{REPORT_STATUS_APPLIED});
  const StatsResponse s = Stats();
  EXPECT_EQ(s.failed_total(), 2u);
  EXPECT_EQ(s.bounces(), 1u);
  LeaseResponse bounces = Lease(JOB_KIND_BOUNCE);
  ASSERT_EQ(bounces.bounces_size(), 1);
  ASSERT_EQ(bounces.bounces(0).recipients_size(), 1);
  EXPECT_EQ(bounces.bounces(0).recipients(0).spec().address(), "b@x.example");
}

// The send_email hook's DELAY: the deliverer reports no recipient and names
// the wait; no attempt is counted.
TEST_F(QueueCoreTest, DelayUnreportedWaitsTheGivenTimeWithoutAnAttempt) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  tern::v1::ReportRequest req;
  auto* rep = req.add_reports();
  rep->set_delivery_id(lease.deliveries(0).delivery_id());
  rep->set_lease_token(lease.deliveries(0).lease_token());
  rep->set_delay_unreported_seconds(3);
  EXPECT_EQ(ReportStatuses(req), std::vector{REPORT_STATUS_APPLIED});
  clock_.AdvanceMs(2'999);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  clock_.AdvanceMs(1);
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).recipients(0).attempts(), 0u);
  EXPECT_EQ(Stats().deferred_total(), 0u);
}


// ---- Reconfigure (a config reload) --------------------------------------------

// Applies `next` and waits for it.
void Reconfigure(QueueCore& core, CoreOptions next) {
  std::promise<absl::Status> applied;
  core.Reconfigure(std::move(next), [&applied](absl::Status s) { applied.set_value(std::move(s)); });
  auto done = applied.get_future();
  ASSERT_EQ(done.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  ASSERT_TRUE(done.get().ok());
}

// `base` (the options the core was opened with) with other shaping.
CoreOptions WithShaping(CoreOptions base, DestinationShaping shaping) {
  base.shaping = std::move(shaping);
  return base;
}

TEST_F(QueueCoreTest, AReloadThatRaisesALimitHandsTheWaitingDeliveriesToAWaitingLeaseAtOnce) {
  options_.shaping = DestinationShaping(1);
  options_.tick_interval = std::chrono::seconds(60);  // no tick releases them
  Open();
  for (int i = 0; i < 3; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
  }
  ASSERT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 1);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 0);  // both parked
  auto waiting = LongPoll(*core_);
  EXPECT_EQ(waiting.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  Reconfigure(*core_, WithShaping(options_, DestinationShaping(3)));
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  auto got = waiting.get();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->deliveries_size(), 2);
  EXPECT_EQ(Stats().deliveries_leased(), 3u);
}

TEST_F(QueueCoreTest, AReloadThatLowersALimitHoldsNewLeasesUntilEnoughOfThoseOutEnd) {
  Open();  // no limit
  for (int i = 0; i < 3; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
  }
  const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 2);
  ASSERT_EQ(first.deliveries_size(), 2);
  Reconfigure(*core_, WithShaping(options_, DestinationShaping(1)));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 0);  // two out, limit one
  ASSERT_EQ(ReportAll(first.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 0);  // still one out
  ASSERT_EQ(ReportAll(first.deliveries(1), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 1);
}

TEST_F(QueueCoreTest, AReloadedRetryScheduleTimesTheNextTemporaryFailureAndEndsWhereItEnds) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  CoreOptions next = options_;
  next.retry = RetrySchedule({5'000});
  Reconfigure(*core_, std::move(next));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "later"));
  clock_.AdvanceMs(4'999);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  clock_.AdvanceMs(1);
  lease = Lease(JOB_KIND_DELIVERY);  // 5 s, not the 60 s it started with
  ASSERT_EQ(lease.deliveries_size(), 1);
  // The new schedule has one retry: the second temporary failure bounces.
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "later"));
  EXPECT_EQ(Lease(JOB_KIND_BOUNCE).bounces_size(), 1);
  EXPECT_EQ(Stats().deliveries(), 0u);
}

TEST_F(QueueCoreTest, AReloadedAlwaysSplitAppliesToMessagesEnqueuedAfterIt) {
  Open();
  Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@x.example")}));
  CoreOptions next = options_;
  next.always_split = true;
  Reconfigure(*core_, std::move(next));
  Enqueue(Header({Rcpt("c@x.example"), Rcpt("d@x.example")}));
  const LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 10);
  std::vector<int> recipients;
  for (const auto& job : lease.deliveries()) {
    recipients.push_back(job.recipients_size());
  }
  std::sort(recipients.begin(), recipients.end());
  EXPECT_EQ(recipients, (std::vector<int>{1, 1, 2}));
}

TEST_F(QueueCoreTest, AReloadThatTurnsBackoffOffEndsAnActiveBackoff) {
  Open();
  FourOutOneA421AndFourMore();
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 0);  // three out, backed off to two
  DestinationLimits limits;
  limits.backoff = false;
  DestinationShaping shaping;
  shaping.SetDefaults(limits);
  Reconfigure(*core_, WithShaping(options_, std::move(shaping)));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 4);
}

// Reloads a shaping.ini of one site `name` (hosts under NAME.example) with
// `concurrency` slots.
void ReloadWithSite(QueueCore& core, const CoreOptions& base, const std::string& name, uint32_t concurrency) {
  DestinationShaping shaping;
  ASSERT_TRUE(shaping.AddSite(name, {absl::StrCat(name, ".example")}, {}, Concurrency(concurrency)).ok());
  Reconfigure(core, WithShaping(base, std::move(shaping)));
}

TEST_F(QueueCoreSiteTest, AReloadKeepsTheMembershipsOfASiteStillConfiguredUnderItsNewLimits) {
  Open();
  LearnSharedSite();
  ReloadWithSite(*core_, options_, "shared", 2);
  EXPECT_EQ(MxSiteDomains(), 2);
  // Both retries share the site's two slots now (one slot before).
  clock_.AdvanceMs(60'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 2);
}

TEST_F(QueueCoreSiteTest, AReloadWithoutTheSiteDropsItsMembershipsInMemoryAndOnDisk) {
  Open();
  LearnSharedSite();
  ReloadWithSite(*core_, options_, "other", 1);
  EXPECT_EQ(MxSiteDomains(), 0);
  clock_.AdvanceMs(60'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY, 100).deliveries_size(), 2);  // each shaped on its own
  // The records went too: the site's return at a restart (the fixture's
  // options) does not revive them.
  Reopen();
  EXPECT_EQ(MxSiteDomains(), 0);
}


TEST_F(QueueCoreTest, AReloadedLeaseLengthAppliesToTheNextLease) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  CoreOptions next = options_;
  next.lease_seconds = 30;
  Reconfigure(*core_, std::move(next));
  ASSERT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 1);
  clock_.AdvanceMs(29'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  clock_.AdvanceMs(1'000);  // 30 s, not the 300 s it started with: due again
  int got = 0;
  ASSERT_TRUE(Eventually([&] {
    got += Lease(JOB_KIND_DELIVERY).deliveries_size();
    return got == 1;
  }));
}

TEST_F(QueueCoreTest, AReloadedMaxQueueAgeBouncesMailThatIsNowTooOld) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  clock_.AdvanceMs(20'000);
  CoreOptions next = options_;
  next.max_queue_age_ms = 10'000;
  Reconfigure(*core_, std::move(next));
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  const LeaseResponse bounces = Lease(JOB_KIND_BOUNCE);
  ASSERT_EQ(bounces.bounces_size(), 1);
  EXPECT_EQ(bounces.bounces(0).recipients(0).result().enhanced_status(), "5.4.7");
}

TEST_F(QueueCoreTest, AReloadedMinFreeBytesRefusesMailTheDiskCannotTakeWithItsHeadroom) {
  options_.free_disk_bytes = [](const std::string&) { return std::optional<uint64_t>(1u << 30); };
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  CoreOptions next = options_;
  next.min_free_bytes = 2u << 30;
  Reconfigure(*core_, std::move(next));
  EXPECT_EQ(EnqueueStatus(Header({Rcpt("b@x.example")})).code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace tern::queue
