// Behaviours of the second half of QueueCore (queue_admin.cc): DATA-sent
// progress and ambiguous leases, host flags, hold/release/delete/bounce/
// flush, pause, max_queue_age, delay warnings, the event log and the admin
// reads (list, show/explain, qshape).
#include <map>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "services/queue/queue_core_test_fixture.h"

namespace tern::queue {
namespace {

using namespace testing_support;  // NOLINT
using ::testing::HasSubstr;
using Action = QueueCore::Action;

class QueueAdminTest : public QueueCoreTest {
 protected:
  // Returns the item's status (REPORT_STATUS_UNSPECIFIED if the call failed).
  tern::v1::ReportStatus Progress(const tern::v1::DeliveryJob& job, const std::string& token = "") {
    tern::v1::ProgressRequest req;
    auto* item = req.add_items();
    item->set_delivery_id(job.delivery_id());
    item->set_lease_token(token.empty() ? job.lease_token() : token);
    item->set_data_sent(true);
    auto r = Sync<tern::v1::ProgressResponse>([&](auto cb) { core_->Progress(req, std::move(cb)); });
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->statuses_size() != 1) {
      ADD_FAILURE() << "one status per item expected";
      return tern::v1::REPORT_STATUS_UNSPECIFIED;
    }
    return r->statuses(0);
  }
  tern::v1::ActionResponse Act(Action action, tern::v1::Selector sel, bool confirm = false,
                               const std::string& reason = "") {
    tern::v1::ActionRequest req;
    *req.mutable_selector() = std::move(sel);
    req.set_confirm(confirm);
    req.set_reason(reason);
    auto r = Sync<tern::v1::ActionResponse>([&](auto cb) { core_->Act(action, req, std::move(cb)); });
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : tern::v1::ActionResponse();
  }
  tern::v1::ActionResponse Delete(tern::v1::Selector sel, bool purge = false, bool confirm = false) {
    tern::v1::ActionRequest req;
    *req.mutable_selector() = std::move(sel);
    req.set_confirm(confirm);
    req.set_purge(purge);
    auto r = Sync<tern::v1::ActionResponse>([&](auto cb) { core_->Act(Action::kDelete, req, std::move(cb)); });
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : tern::v1::ActionResponse();
  }
  absl::StatusOr<tern::v1::UndeleteResponse> Undelete(const std::string& token, std::vector<std::string> ids = {}) {
    tern::v1::UndeleteRequest req;
    req.set_token(token);
    for (auto& id : ids) {
      req.add_message_ids(id);
    }
    return Sync<tern::v1::UndeleteResponse>([&](auto cb) { core_->Undelete(req, std::move(cb)); });
  }
  tern::v1::ListDeletedResponse Deleted() {
    auto r = core_->ListDeleted(tern::v1::ListDeletedRequest());
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : tern::v1::ListDeletedResponse();
  }
  static tern::v1::Selector Ids(std::vector<std::string> ids) {
    tern::v1::Selector s;
    for (auto& id : ids) {
      s.add_message_ids(id);
    }
    return s;
  }
  tern::v1::ShowResponse Show(const std::string& id) {
    auto r = core_->Show(id);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : tern::v1::ShowResponse();
  }
  std::vector<tern::v1::QueueEvent> Events(uint64_t after = 0) {
    std::vector<tern::v1::QueueEvent> out;
    EXPECT_TRUE(core_->ReadEvents(after, 100000, &out).ok());
    return out;
  }
  std::vector<std::string> EventTypes(const std::string& message_id) {
    std::vector<std::string> out;
    for (const auto& e : Events()) {
      if (e.message_id() == message_id) {
        out.push_back(e.type());
      }
    }
    return out;
  }
};

TEST_F(QueueAdminTest, ReportsCarriedByProgressAreAppliedAsIfReportedAlone) {
  Open();
  const std::string done_id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  const std::string next_id = Enqueue(Header({Rcpt("b@y.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 10);
  ASSERT_EQ(lease.deliveries_size(), 2);
  const auto& done = lease.deliveries(0).message_id() == done_id ? lease.deliveries(0) : lease.deliveries(1);
  const auto& next = lease.deliveries(0).message_id() == done_id ? lease.deliveries(1) : lease.deliveries(0);

  // The next delivery's progress, with the finished one's report and a
  // report for the next one under a token the queue never gave out.
  tern::v1::ProgressRequest req;
  auto* item = req.add_items();
  item->set_delivery_id(next.delivery_id());
  item->set_lease_token(next.lease_token());
  item->set_data_sent(true);
  auto* rep = req.add_reports();
  rep->set_delivery_id(done.delivery_id());
  rep->set_lease_token(done.lease_token());
  auto* rr = rep->add_recipients();
  rr->set_index(done.recipients(0).index());
  *rr->mutable_result() = Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok");
  auto* stale = req.add_reports();
  stale->set_delivery_id(next.delivery_id());
  stale->set_lease_token("not-a-token");
  *stale->add_recipients() = *rr;
  stale->mutable_recipients(0)->set_index(next.recipients(0).index());
  auto r = Sync<tern::v1::ProgressResponse>([&](auto cb) { core_->Progress(req, std::move(cb)); });
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->statuses_size(), 1);
  EXPECT_EQ(r->statuses(0), REPORT_STATUS_APPLIED);
  ASSERT_EQ(r->report_statuses_size(), 2);
  EXPECT_EQ(r->report_statuses(0), REPORT_STATUS_APPLIED);
  EXPECT_EQ(r->report_statuses(1), REPORT_STATUS_STALE_LEASE);

  // The reported message is done; the other is marked as DATA sent.
  EXPECT_EQ(Stats().messages(), 1u);
  EXPECT_EQ(Stats().delivered_total(), 1u);
  EXPECT_THAT(EventTypes(done_id), ::testing::Contains("delivered"));
  EXPECT_TRUE(Show(next_id).deliveries(0).data_sent());
}

TEST_F(QueueAdminTest, LeaseExpiringAfterDataSentIsAmbiguousAndRedeliveredByDefault) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@x.example")})).message_id;
  LeaseResponse first = Lease(JOB_KIND_DELIVERY, 10, /*lease_seconds=*/30);
  ASSERT_EQ(first.deliveries_size(), 1);
  Progress(first.deliveries(0));
  EXPECT_TRUE(Show(id).deliveries(0).data_sent());
  clock_.AdvanceMs(30'000);
  ASSERT_TRUE(Eventually([&] { return Stats().ambiguous_total() == 2; }));

  LeaseResponse again = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(again.deliveries_size(), 1);
  EXPECT_EQ(again.deliveries(0).recipients_size(), 2);
  tern::v1::ShowResponse shown = Show(id);
  EXPECT_EQ(shown.deliveries(0).recipients(0).ambiguous_count(), 1u);
  EXPECT_EQ(shown.deliveries(0).recipients(1).ambiguous_count(), 1u);
  EXPECT_FALSE(shown.deliveries(0).data_sent());  // a new lease starts clean
  EXPECT_THAT(EventTypes(id), ::testing::ElementsAre("received", "leased", "ambiguous", "leased"));
  // Counted once, not again at the new lease.
  EXPECT_EQ(Stats().ambiguous_total(), 2u);
}

TEST_F(QueueAdminTest, ReportedOrStaleProgressIsNeverAmbiguous) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  Enqueue(Header({Rcpt("b@y.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 10, /*lease_seconds=*/30);
  ASSERT_EQ(lease.deliveries_size(), 2);
  Progress(lease.deliveries(0));
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok"));
  Progress(lease.deliveries(1), "not-the-token");
  clock_.AdvanceMs(31'000);
  Stats();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(Stats().ambiguous_total(), 0u);
}

TEST_F(QueueAdminTest, HoldPolicyHoldsAnAmbiguousDeliveryUntilReleased) {
  options_.ambiguous_policy = AmbiguousPolicy::kHold;
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse first = Lease(JOB_KIND_DELIVERY, 10, /*lease_seconds=*/30);
  ASSERT_EQ(first.deliveries_size(), 1);
  Progress(first.deliveries(0));
  clock_.AdvanceMs(30'000);
  ASSERT_TRUE(Eventually([&] { return Stats().deliveries_held() == 1; }));
  EXPECT_EQ(Stats().ambiguous_total(), 1u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  tern::v1::ShowResponse shown = Show(id);
  EXPECT_EQ(shown.deliveries(0).state(), "held");
  EXPECT_EQ(shown.deliveries(0).hold_reason(), "ambiguous");
  EXPECT_THAT(shown.deliveries(0).explanation(), HasSubstr("remote may have the message"));
  // A late report for the old lease is still stale-checked against the token.
  EXPECT_EQ(ReportAll(first.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_STALE_LEASE});

  tern::v1::Selector sel;
  sel.set_state("ambiguous");
  EXPECT_EQ(Act(Action::kRelease, sel).deliveries_changed(), 1u);
  EXPECT_EQ(Stats().deliveries_held(), 0u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 1);
}

TEST_F(QueueAdminTest, AmbiguousLeaseOutstandingAtACrashIsMarkedAfterRecovery) {
  options_.ambiguous_policy = AmbiguousPolicy::kHold;
  options_.recovery_lease_grace_seconds = 0;
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse first = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(first.deliveries_size(), 1);
  Progress(first.deliveries(0));
  Reopen();
  ASSERT_TRUE(Eventually([&] { return Stats().deliveries_held() == 1; }));
  EXPECT_EQ(Show(id).deliveries(0).recipients(0).ambiguous_count(), 1u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  // Held survives another restart.
  Reopen();
  EXPECT_EQ(Stats().deliveries_held(), 1u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
}

TEST_F(QueueAdminTest, AmbiguousLeaseKeptForGraceAfterACrashIsMarkedWhenTheGraceRunsOut) {
  options_.ambiguous_policy = AmbiguousPolicy::kHold;
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse first = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(first.deliveries_size(), 1);
  Progress(first.deliveries(0));
  Reopen();
  EXPECT_EQ(Stats().deliveries_held(), 0u) << "its worker may still report during the grace";
  clock_.AdvanceMs(31'000);
  ASSERT_TRUE(Eventually([&] { return Stats().deliveries_held() == 1; }));
  EXPECT_EQ(Show(id).deliveries(0).recipients(0).ambiguous_count(), 1u);
}

TEST_F(QueueAdminTest, ProgressIsAppliedOnlyUnderALiveLease) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  Enqueue(Header({Rcpt("b@y.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 10, /*lease_seconds=*/30);
  ASSERT_EQ(lease.deliveries_size(), 2);
  EXPECT_EQ(Progress(lease.deliveries(0)), REPORT_STATUS_APPLIED);
  EXPECT_EQ(Progress(lease.deliveries(0)), REPORT_STATUS_APPLIED) << "idempotent";
  EXPECT_EQ(Progress(lease.deliveries(1), "not-the-token"), REPORT_STATUS_STALE_LEASE);
  tern::v1::DeliveryJob gone = lease.deliveries(1);
  gone.set_delivery_id("no-such-delivery");
  EXPECT_EQ(Progress(gone), REPORT_STATUS_UNKNOWN);
  // Once the lease has ended the worker is told to stop before DATA, and
  // the delivery, due again, is not marked ambiguous for a dot never sent.
  clock_.AdvanceMs(31'000);
  ASSERT_TRUE(Eventually([&] { return Stats().ambiguous_total() == 1; }));  // the first one, DATA sent
  EXPECT_EQ(Progress(lease.deliveries(1)), REPORT_STATUS_STALE_LEASE);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(Stats().ambiguous_total(), 1u);
  EXPECT_THAT(EventTypes(id), ::testing::Contains("ambiguous"));
}

TEST_F(QueueAdminTest, ReportRetriedAfterAQueueCrashWithinTheGraceIsAppliedAndNotAmbiguous) {
  Open();  // default grace: 30 s
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 10, /*lease_seconds=*/60);
  ASSERT_EQ(lease.deliveries_size(), 1);
  ASSERT_EQ(Progress(lease.deliveries(0)), REPORT_STATUS_APPLIED);
  // The queue dies after the deliverer's dot; the deliverer's report failed
  // and is retried, with the same token, once the queue is back.
  Reopen();
  EXPECT_EQ(ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  clock_.AdvanceMs(61'000);
  Stats();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(Stats().ambiguous_total(), 0u);
  EXPECT_EQ(Stats().messages(), 0u);
  EXPECT_THAT(EventTypes(id), ::testing::ElementsAre("received", "leased", "delivered"));
}

TEST_F(QueueAdminTest, DeliveryHeldWhileItsDataWasOutIsStillAmbiguousAfterACrash) {
  options_.recovery_lease_grace_seconds = 0;
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  ASSERT_EQ(Progress(lease.deliveries(0)), REPORT_STATUS_APPLIED);
  EXPECT_EQ(Act(Action::kHold, Ids({id})).deliveries_changed(), 1u);
  Reopen();  // the lease and its worker are gone, the remote may have the message
  ASSERT_TRUE(Eventually([&] { return Stats().ambiguous_total() == 1; }));
  EXPECT_EQ(Show(id).deliveries(0).recipients(0).ambiguous_count(), 1u);
  EXPECT_EQ(Stats().deliveries_held(), 1u);
  // Released, it goes out again under a clean lease: counted once.
  EXPECT_EQ(Act(Action::kRelease, Ids({id})).deliveries_changed(), 1u);
  ASSERT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 1);
  EXPECT_EQ(Stats().ambiguous_total(), 1u);
}

TEST_F(QueueAdminTest, HostFlagsAreSharedUntilTheyExpireAndThenPurged) {
  Open();
  tern::v1::PutHostFlagsRequest put;
  auto* a = put.add_flags();
  a->set_host("192.0.2.1");
  a->set_flag("broken_tls");
  a->set_expires_unix_ms(kStart + 10'000);
  a->set_reason("handshake failure");
  auto* b = put.add_flags();
  b->set_host("mx.example");
  b->set_flag("slow");
  b->set_expires_unix_ms(kStart + 60'000);
  ASSERT_TRUE(
      Sync<tern::v1::PutHostFlagsResponse>([&](auto cb) { core_->PutHostFlags(put, std::move(cb)); }).ok());

  tern::v1::GetHostFlagsRequest all;
  EXPECT_EQ(core_->GetHostFlags(all)->flags_size(), 2);
  tern::v1::GetHostFlagsRequest tls;
  tls.set_flag("broken_tls");
  auto got = core_->GetHostFlags(tls);
  ASSERT_EQ(got->flags_size(), 1);
  EXPECT_EQ(got->flags(0).host(), "192.0.2.1");
  EXPECT_EQ(got->flags(0).reason(), "handshake failure");
  tern::v1::GetHostFlagsRequest broken;
  broken.set_flag("broken");  // a prefix of the name is another flag
  EXPECT_EQ(core_->GetHostFlags(broken)->flags_size(), 0);

  clock_.AdvanceMs(10'000);
  EXPECT_EQ(core_->GetHostFlags(tls)->flags_size(), 0);
  EXPECT_EQ(core_->GetHostFlags(all)->flags_size(), 1);
  Stats();  // a later operation: the purge submitted by Get has committed
  core_.reset();
  EXPECT_EQ(CountKeys()[kMetaCf], 1);

  Open();
  tern::v1::PutHostFlagsRequest bad;
  bad.add_flags()->set_flag("x");
  EXPECT_EQ(Sync<tern::v1::PutHostFlagsResponse>([&](auto cb) { core_->PutHostFlags(bad, std::move(cb)); })
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(QueueAdminTest, StsPoliciesSurviveARestartUntilTheyExpireAndThenArePurged) {
  Open();
  auto put = [&](const std::string& domain, const std::string& id, int64_t expires) {
    tern::v1::PutStsPolicyRequest req;
    tern::v1::StsPolicyRecord* p = req.mutable_policy();
    p->set_domain(domain);
    p->set_id(id);
    p->set_policy("version: STSv1\r\nmode: enforce\r\nmx: mx.example\r\nmax_age: 86400\r\n");
    p->set_fetched_unix_ms(kStart);
    p->set_expires_unix_ms(expires);
    return Sync<tern::v1::PutStsPolicyResponse>([&](auto cb) { core_->PutStsPolicy(req, std::move(cb)); }).status();
  };
  auto get = [&](const std::string& domain) {
    tern::v1::GetStsPolicyRequest req;
    req.set_domain(domain);
    return core_->GetStsPolicy(req);
  };
  ASSERT_TRUE(put("example.com", "id1", kStart + 10'000).ok());
  ASSERT_TRUE(put("example.com", "id2", kStart + 20'000).ok());  // the last one put counts
  ASSERT_TRUE(put("already.example", "id1", kStart).ok());       // expired: accepted, not kept
  EXPECT_FALSE(get("already.example")->found());
  EXPECT_FALSE(get("other.example")->found());

  core_.reset();
  Open();  // a restarted queue still has it
  auto got = get("example.com");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->found());
  EXPECT_EQ(got->policy().id(), "id2");
  EXPECT_EQ(got->policy().expires_unix_ms(), kStart + 20'000);
  EXPECT_NE(got->policy().policy().find("mode: enforce"), std::string::npos);

  clock_.AdvanceMs(20'000);
  EXPECT_FALSE(get("example.com")->found());
  Stats();  // a later operation: the purge submitted by Get has committed
  core_.reset();
  EXPECT_EQ(CountKeys()[kMetaCf], 0);

  Open();
  EXPECT_EQ(put("", "id", kStart + 90'000'000).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(put("x.example", "", kStart + 90'000'000).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(get("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(QueueAdminTest, DeliveryFactsAreKeptAsTheLastResult) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  auto result = Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.7.0", "later");
  result.set_remote_port(2525);
  result.set_mode("LMTP");
  result.set_tls("TLSv1.3 TLS_AES_256_GCM_SHA384");
  result.set_tls_verified(true);
  result.set_auth_mechanism("PLAIN");
  ReportAll(lease.deliveries(0), result);
  const tern::v1::ShowResponse shown = Show(id);
  const auto& last = shown.deliveries(0).recipients(0).last_result();
  EXPECT_EQ(last.remote_port(), 2525u);
  EXPECT_EQ(last.mode(), "LMTP");
  EXPECT_EQ(last.tls(), "TLSv1.3 TLS_AES_256_GCM_SHA384");
  EXPECT_TRUE(last.tls_verified());
  EXPECT_EQ(last.auth_mechanism(), "PLAIN");
  EXPECT_EQ(last.reply_code(), 451u);
}

TEST_F(QueueAdminTest, ShowExplainsDeferredLeasedHeldAndPaused) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  auto shown = Show(id);
  EXPECT_EQ(shown.headers(), "Subject: hi\r\nFrom: a@src.example\r\n\r\n");
  EXPECT_EQ(shown.envelope().mail_from(), "sender@src.example");
  EXPECT_THAT(shown.deliveries(0).explanation(), HasSubstr("waiting for a deliverer"));

  tern::v1::LeaseRequest req;
  req.set_kind(JOB_KIND_DELIVERY);
  req.set_max_jobs(1);
  req.set_worker_id("deliverer-7");
  auto lease = Sync<LeaseResponse>([&](auto cb) { core_->Lease(req, std::move(cb)); });
  ASSERT_TRUE(lease.ok());
  shown = Show(id);
  EXPECT_EQ(shown.deliveries(0).state(), "leased");
  EXPECT_EQ(shown.deliveries(0).lease_holder(), "deliverer-7");
  EXPECT_EQ(shown.deliveries(0).lease_deadline_unix_ms(), kStart + 300'000);
  EXPECT_THAT(shown.deliveries(0).explanation(), HasSubstr("out on lease to deliverer-7"));

  ReportAll(lease->deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "greylisted"));
  shown = Show(id);
  EXPECT_EQ(shown.deliveries(0).state(), "deferred");
  EXPECT_THAT(shown.deliveries(0).explanation(), HasSubstr("deferred until"));
  EXPECT_THAT(shown.deliveries(0).explanation(), HasSubstr("451 4.3.0 greylisted"));
  EXPECT_THAT(shown.deliveries(0).explanation(), HasSubstr("retry 1 of 2"));

  EXPECT_EQ(Act(Action::kHold, Ids({id})).deliveries_changed(), 1u);
  EXPECT_EQ(Show(id).deliveries(0).state(), "held");
  EXPECT_EQ(Act(Action::kRelease, Ids({id})).deliveries_changed(), 1u);
  auto paused = Sync<bool>([&](auto cb) { core_->SetPaused(true, std::move(cb)); });
  ASSERT_TRUE(paused.ok());
  EXPECT_TRUE(*paused);
  EXPECT_THAT(Show(id).deliveries(0).explanation(), HasSubstr("PAUSED"));
  auto missing = core_->Show("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(QueueAdminTest, ClearingAHostsFlagsListsThemAsClearedUntilTheyWouldHaveExpired) {
  Open();
  tern::v1::PutHostFlagsRequest put;
  for (const char* flag : {"unreachable", "broken_tls"}) {
    auto* f = put.add_flags();
    f->set_host("192.0.2.8");
    f->set_flag(flag);
    f->set_expires_unix_ms(kStart + 60'000);
    f->set_reason("connection refused");
  }
  auto* other = put.add_flags();
  other->set_host("192.0.2.9");
  other->set_flag("unreachable");
  other->set_expires_unix_ms(kStart + 60'000);
  ASSERT_TRUE(
      Sync<tern::v1::PutHostFlagsResponse>([&](auto cb) { core_->PutHostFlags(put, std::move(cb)); }).ok());
  auto clear = [&](const char* host, const char* flag) {
    tern::v1::ClearHostFlagsRequest req;
    req.set_host(host);
    req.set_flag(flag);
    return Sync<tern::v1::ClearHostFlagsResponse>([&](auto cb) { core_->ClearHostFlags(req, std::move(cb)); });
  };
  auto cleared = clear("192.0.2.8", "unreachable");
  ASSERT_TRUE(cleared.ok()) << cleared.status();
  ASSERT_EQ(cleared->cleared_size(), 1);
  EXPECT_EQ(cleared->cleared(0).flag(), "unreachable");
  EXPECT_EQ(cleared->cleared(0).reason(), "connection refused");
  EXPECT_EQ(clear("192.0.2.8", "unreachable")->cleared_size(), 0);  // already cleared

  std::map<std::pair<std::string, std::string>, bool> state;  // (host, flag) -> cleared
  const auto listed = core_->GetHostFlags(tern::v1::GetHostFlagsRequest());
  ASSERT_TRUE(listed.ok()) << listed.status();
  for (const auto& f : listed->flags()) {
    state[{f.host(), f.flag()}] = f.cleared();
  }
  EXPECT_EQ(state, (std::map<std::pair<std::string, std::string>, bool>{{{"192.0.2.8", "broken_tls"}, false},
                                                                        {{"192.0.2.8", "unreachable"}, true},
                                                                        {{"192.0.2.9", "unreachable"}, false}}));
  // Without a flag name: every flag of that host, no other host's.
  EXPECT_EQ(clear("192.0.2.8", "")->cleared_size(), 1);
  // A deliverer that fails there again sets the flag anew, in force.
  put.mutable_flags()->DeleteSubrange(1, 2);
  ASSERT_TRUE(
      Sync<tern::v1::PutHostFlagsResponse>([&](auto cb) { core_->PutHostFlags(put, std::move(cb)); }).ok());
  tern::v1::GetHostFlagsRequest unreachable;
  unreachable.set_flag("unreachable");
  const auto again = core_->GetHostFlags(unreachable);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->flags_size(), 2);
  for (const auto& f : again->flags()) {
    EXPECT_FALSE(f.cleared()) << f.host();
  }
  EXPECT_EQ(clear("", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(clear("192.0.2.77", "")->cleared_size(), 0);
}

TEST_F(QueueAdminTest, ExplainSaysADeliveryWaitsForItsDestinationsConcurrencyLimit) {
  options_.shaping = DestinationShaping(1);
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  const std::string second = Enqueue(Header({Rcpt("b@x.example")})).message_id;
  const LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 10);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_THAT(Show(second).deliveries(0).explanation(),
              HasSubstr("waiting for a slot: x.example has concurrency_max=1 deliveries out on lease"));
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok"));
  EXPECT_THAT(Show(second).deliveries(0).explanation(), HasSubstr("waiting for a deliverer"));
}

TEST_F(QueueAdminTest, ExplainNamesTheMxSiteWhoseLimitADeliveryWaitsFor) {
  ASSERT_TRUE(options_.shaping.AddSite("bigmail", {"bigmail.example"}, {"x.example", "y.example"},
                                       Concurrency(1))
                  .ok());
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  const std::string second = Enqueue(Header({Rcpt("b@y.example")})).message_id;
  ASSERT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 1);
  EXPECT_THAT(Show(second).deliveries(0).explanation(),
              HasSubstr("waiting for a slot: y.example is shaped with MX site bigmail, which has concurrency_max=1 "
                        "deliveries out on lease"));
}

TEST_F(QueueAdminTest, DestinationsShowLeasesWaitingLimitsBackoffsAndSites) {
  ASSERT_TRUE(options_.shaping.AddSite("bigmail", {"bigmail.example"}, {"x.example", "y.example"}, Concurrency(1))
                  .ok());
  options_.shaping.Set("slow.example", DestinationLimits{2, RateLimit{600, 60'000}});
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  Enqueue(Header({Rcpt("b@y.example")}));
  for (int i = 0; i < 3; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("s", i, "@slow.example"))}));
  }
  Enqueue(Header({Rcpt("f@free.example")}));
  const LeaseResponse lease = Lease(JOB_KIND_DELIVERY, 100);
  ASSERT_EQ(lease.deliveries_size(), 4);  // one of x/y, two of slow, free
  auto destinations = [&] {
    auto r = Sync<tern::v1::DestinationsResponse>([&](auto cb) { core_->Destinations(std::move(cb)); });
    EXPECT_TRUE(r.ok()) << r.status();
    std::map<std::string, tern::v1::DestinationState> by_name;
    std::vector<std::string> order;
    for (const auto& d : r->destinations()) {
      by_name[d.destination()] = d;
      order.push_back(d.destination());
    }
    return std::make_pair(by_name, order);
  };
  auto [rows, order] = destinations();
  // Most out or waiting first.
  EXPECT_EQ(order, (std::vector<std::string>{"slow.example", "site:bigmail", "free.example"}));
  const auto& slow = rows["slow.example"];
  EXPECT_EQ(slow.leased(), 2u);
  EXPECT_EQ(slow.waiting(), 1u);
  EXPECT_EQ(slow.concurrency_max(), 2u);
  EXPECT_EQ(slow.concurrency_now(), 2u);
  EXPECT_EQ(slow.rate_max(), "600/m");
  const auto& site = rows["site:bigmail"];
  EXPECT_EQ(site.leased(), 1u);
  EXPECT_EQ(site.waiting(), 1u);
  EXPECT_EQ(site.concurrency_max(), 1u);
  EXPECT_EQ(site.site_domains(), 2u);
  EXPECT_EQ(site.rate_max(), "none");
  // No limit configured, but counted: a 421 backoff may apply to it.
  EXPECT_EQ(rows["free.example"].leased(), 1u);
  EXPECT_EQ(rows["free.example"].concurrency_max(), 0u);
  EXPECT_EQ(rows["free.example"].backoff_until_unix_ms(), 0);

  for (const auto& job : lease.deliveries()) {
    if (job.domain() == "free.example") {
      ReportAll(job, Result(tern::v1::OUTCOME_TRANSIENT, 421, "4.7.0", "Too many connections"));
    }
  }
  auto [after, unused] = destinations();
  EXPECT_EQ(after["free.example"].leased(), 0u);
  EXPECT_EQ(after["free.example"].concurrency_now(), 1u);
  EXPECT_EQ(after["free.example"].backoff_until_unix_ms(), clock_.NowUnixMs() + 60'000);
  EXPECT_THAT(after["free.example"].backoff_reply(), HasSubstr("Too many connections"));
}

TEST_F(QueueAdminTest, ExplainSaysADeliveryWaitsForItsDestinationsRate) {
  options_.shaping.Set("x.example", DestinationLimits{0, RateLimit{1, 60'000}});
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  const std::string second = Enqueue(Header({Rcpt("b@x.example")})).message_id;
  ASSERT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 1);
  EXPECT_THAT(Show(second).deliveries(0).explanation(),
              HasSubstr("waiting for a slot: x.example has rate_max=1/m starts used up"));
  clock_.AdvanceMs(60'000);
  ASSERT_EQ(Lease(JOB_KIND_DELIVERY, 10).deliveries_size(), 1);
  EXPECT_THAT(Show(second).deliveries(0).explanation(), HasSubstr("out on lease"));
}

TEST_F(QueueAdminTest, PauseOverridesTheFileUntilTheFileChanges) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  ASSERT_TRUE(Sync<bool>([&](auto cb) { core_->SetPaused(true, std::move(cb)); }).ok());
  EXPECT_TRUE(Stats().paused());
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  core_->SetDisabled(false);  // the file still says false: no change, the pause stays
  EXPECT_TRUE(Stats().paused());
  core_->SetDisabled(true);
  core_->SetDisabled(false);  // the file changed: it wins
  EXPECT_FALSE(Stats().paused());
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 1);
  ASSERT_TRUE(Sync<bool>([&](auto cb) { core_->SetPaused(false, std::move(cb)); }).ok());
  EXPECT_FALSE(Stats().paused());
}

TEST_F(QueueAdminTest, DomainFilterMatchesEitherSpellingOfAnInternationalDomain) {
  Open();
  const std::string a = Enqueue(Header({Rcpt("a@bücher.example")})).message_id;
  Enqueue(Header({Rcpt("b@other.example")}));
  for (const char* spelling : {"BÜCHER.example", "xn--bcher-kva.example", "XN--BCHER-KVA.EXAMPLE"}) {
    tern::v1::ListRequest req;
    req.mutable_selector()->set_domain(spelling);
    auto list = core_->List(req);
    ASSERT_TRUE(list.ok()) << list.status();
    ASSERT_EQ(list->messages_size(), 1) << spelling;
    EXPECT_EQ(list->messages(0).message_id(), a);
  }
  tern::v1::Selector sel;
  sel.set_domain("Bücher.Example");
  EXPECT_EQ(Act(Action::kHold, sel).deliveries_changed(), 1u);
  // A filter that cannot name any domain is an error, not "no match".
  tern::v1::ListRequest bad;
  bad.mutable_selector()->set_domain("\xE2\x98\x83.example");
  EXPECT_EQ(core_->List(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(QueueAdminTest, HoldKeepsDeliveriesFromLeasesAndSurvivesRestart) {
  options_.recovery_lease_grace_seconds = 0;  // the restart releases y.example's lease at once
  Open();
  const std::string a = Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@y.example")})).message_id;
  const std::string b = Enqueue(Header({Rcpt("c@x.example")})).message_id;
  tern::v1::Selector x;
  x.set_domain("X.example");
  tern::v1::ActionResponse held = Act(Action::kHold, x);
  EXPECT_EQ(held.matched(), 2u);
  EXPECT_EQ(held.deliveries_changed(), 2u);
  EXPECT_EQ(Stats().deliveries_held(), 2u);
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).domain(), "y.example");
  Reopen();
  EXPECT_EQ(Stats().deliveries_held(), 2u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 1);  // y.example, its lease released by the restart
  EXPECT_EQ(Act(Action::kRelease, Ids({b})).deliveries_changed(), 1u);
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).message_id(), b);
  EXPECT_THAT(EventTypes(a), ::testing::Contains("admin"));
}

TEST_F(QueueAdminTest, HoldOfALeasedDeliveryTakesEffectAtItsReport) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(Act(Action::kHold, Ids({id})).deliveries_changed(), 1u);
  EXPECT_EQ(Stats().deliveries_leased(), 1u);
  EXPECT_EQ(ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "later")),
            std::vector{REPORT_STATUS_APPLIED});
  StatsResponse s = Stats();
  EXPECT_EQ(s.deliveries_held(), 1u);
  EXPECT_EQ(s.deliveries_leased(), 0u);
  clock_.AdvanceMs(120'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
}

TEST_F(QueueAdminTest, DeleteAndBounceNeedConfirmationForSeveralMessages) {
  Open();
  const std::string a = Enqueue(Header({Rcpt("a@dead.example")})).message_id;
  const std::string b = Enqueue(Header({Rcpt("b@dead.example"), Rcpt("c@live.example")})).message_id;
  tern::v1::Selector dead;
  dead.set_domain("dead.example");
  tern::v1::ActionResponse r = Act(Action::kBounce, dead);
  EXPECT_TRUE(r.needs_confirmation());
  EXPECT_EQ(r.matched(), 2u);
  EXPECT_EQ(r.deliveries_changed(), 0u);
  EXPECT_EQ(Stats().bounces(), 0u);

  r = Act(Action::kBounce, dead, /*confirm=*/true, "domain gone");
  EXPECT_FALSE(r.needs_confirmation());
  EXPECT_EQ(r.deliveries_changed(), 2u);
  StatsResponse s = Stats();
  EXPECT_EQ(s.bounces(), 2u);
  EXPECT_EQ(s.deliveries(), 1u);  // live.example is untouched
  EXPECT_EQ(s.recipients_pending(), 1u);
  LeaseResponse dsn = Lease(JOB_KIND_BOUNCE);
  ASSERT_EQ(dsn.bounces_size(), 2);
  EXPECT_EQ(dsn.bounces(0).recipients(0).result().enhanced_status(), "5.0.0");
  EXPECT_THAT(dsn.bounces(0).recipients(0).result().reply_text(), HasSubstr("domain gone"));

  // Delete of one message needs no confirmation and drops its DSN jobs too.
  r = Act(Action::kDelete, Ids({a}));
  EXPECT_EQ(r.matched(), 1u);
  s = Stats();
  EXPECT_EQ(s.messages(), 1u);
  EXPECT_EQ(s.bounces(), 1u);
  tern::v1::Selector all;
  all.set_all(true);
  EXPECT_EQ(Delete(all, /*purge=*/true).matched(), 1u);
  s = Stats();
  EXPECT_EQ(s.messages(), 0u);
  EXPECT_EQ(s.deliveries(), 0u);
  EXPECT_EQ(s.bounces(), 0u);
  EXPECT_EQ(s.recipients_pending(), 0u);
  // The first delete (of `a`) is kept for undo; the purged one is not.
  EXPECT_EQ(Deleted().total(), 1u);
  core_.reset();
  auto keys = CountKeys();
  EXPECT_EQ(keys[kMessagesCf], 0);
  EXPECT_EQ(keys[kBodiesCf], 0);
  EXPECT_EQ(keys[kDeliveriesCf], 0);
  EXPECT_EQ(keys[kBouncesCf], 0);
  EXPECT_EQ(keys[kScheduleCf], 0);
  EXPECT_EQ(keys[kMetaCf], 1);  // a's kept record
  (void)b;
}

TEST_F(QueueAdminTest, DeleteIsKeptForTheUndoWindowAndUndeleteSendsTheMessageAfterAll) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@x.example")})).message_id;
  tern::v1::ActionResponse r = Delete(Ids({id}));
  ASSERT_FALSE(r.undo_token().empty());
  EXPECT_EQ(r.undo_until_unix_ms(), kStart + 3600 * 1000);
  StatsResponse s = Stats();
  EXPECT_EQ(s.messages(), 0u);
  EXPECT_EQ(s.deliveries(), 0u);
  EXPECT_EQ(s.recipients_pending(), 0u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);

  tern::v1::ListDeletedResponse kept = Deleted();
  ASSERT_EQ(kept.entries_size(), 1);
  EXPECT_EQ(kept.entries(0).token(), r.undo_token());
  EXPECT_EQ(kept.entries(0).message_id(), id);
  EXPECT_EQ(kept.entries(0).purge_at_unix_ms(), kStart + 3600 * 1000);
  EXPECT_TRUE(kept.entries(0).whole_message());
  EXPECT_THAT(kept.entries(0).recipients(), ::testing::ElementsAre("a@x.example", "b@x.example"));

  EXPECT_EQ(Undelete("no-such-token").status().code(), absl::StatusCode::kNotFound);
  auto undone = Undelete(r.undo_token());
  ASSERT_TRUE(undone.ok()) << undone.status();
  EXPECT_EQ(undone->restored(), 1u);
  EXPECT_EQ(undone->deliveries_restored(), 1u);
  EXPECT_THAT(undone->message_ids(), ::testing::ElementsAre(id));
  EXPECT_EQ(Deleted().total(), 0u);
  s = Stats();
  EXPECT_EQ(s.messages(), 1u);
  EXPECT_EQ(s.deliveries_due(), 1u);
  EXPECT_EQ(s.recipients_pending(), 2u);

  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).message_id(), id);
  EXPECT_EQ(lease.deliveries(0).body(), kBody);
  EXPECT_EQ(ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_APPLIED});
  EXPECT_EQ(Stats().messages(), 0u);
  EXPECT_THAT(EventTypes(id),
              ::testing::ElementsAre("received", "admin", "admin", "leased", "delivered", "delivered"));
  // A second undo finds nothing.
  EXPECT_EQ(Undelete(r.undo_token()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(QueueAdminTest, UndeleteAfterARestartPutsBackDeliveriesAndDsnJobs) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@y.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 2);
  for (const auto& job : lease.deliveries()) {
    if (job.domain() == "y.example") {
      ReportAll(job, Result(tern::v1::OUTCOME_PERMANENT, 550, "5.1.1", "no such user"));
    } else {
      ReportAll(job, Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "later"));
    }
  }
  ASSERT_EQ(Stats().bounces(), 1u);
  tern::v1::ActionResponse r = Delete(Ids({id}));
  ASSERT_FALSE(r.undo_token().empty());
  StatsResponse s = Stats();
  EXPECT_EQ(s.messages(), 0u);
  EXPECT_EQ(s.bounces(), 0u);

  Reopen();
  s = Stats();
  EXPECT_EQ(s.messages(), 0u);
  EXPECT_EQ(s.deliveries(), 0u);
  EXPECT_EQ(s.bounces(), 0u);
  ASSERT_EQ(Deleted().total(), 1u);
  EXPECT_EQ(Deleted().entries(0).bounces(), 1u);

  auto undone = Undelete("", {id});  // by message id this time
  ASSERT_TRUE(undone.ok()) << undone.status();
  EXPECT_EQ(undone->deliveries_restored(), 1u);
  EXPECT_EQ(undone->bounces_restored(), 1u);
  s = Stats();
  EXPECT_EQ(s.messages(), 1u);
  EXPECT_EQ(s.deliveries(), 1u);
  EXPECT_EQ(s.bounces(), 1u);
  EXPECT_EQ(s.recipients_pending(), 1u);
  // Both are due now, the deferred delivery included.
  EXPECT_EQ(Lease(JOB_KIND_BOUNCE).bounces_size(), 1);
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).domain(), "x.example");
  // What was put back survives a restart like anything else.
  Reopen();
  s = Stats();
  EXPECT_EQ(s.messages(), 1u);
  EXPECT_EQ(s.bounces(), 1u);
}

TEST_F(QueueAdminTest, DeleteAndUndeleteOfMoreMessagesThanOneChunkCountEveryChunk) {
  Open();
  constexpr int kMessages = 450;  // three chunks of at most 200
  for (int i = 0; i < kMessages; ++i) {
    Enqueue(Header({Rcpt(absl::StrCat("r", i, "@x.example"))}));
  }
  tern::v1::Selector all;
  all.set_all(true);
  tern::v1::ActionResponse r = Delete(all, /*purge=*/false, /*confirm=*/true);
  EXPECT_EQ(r.matched(), static_cast<uint64_t>(kMessages));
  EXPECT_EQ(r.deliveries_changed(), static_cast<uint64_t>(kMessages));
  ASSERT_FALSE(r.undo_token().empty());
  EXPECT_EQ(Stats().messages(), 0u);
  EXPECT_EQ(Deleted().total(), static_cast<uint64_t>(kMessages));
  auto undone = Undelete(r.undo_token());
  ASSERT_TRUE(undone.ok()) << undone.status();
  EXPECT_EQ(undone->restored(), static_cast<uint64_t>(kMessages));
  EXPECT_EQ(undone->deliveries_restored(), static_cast<uint64_t>(kMessages));
  EXPECT_EQ(undone->message_ids_size(), 100);
  StatsResponse s = Stats();
  EXPECT_EQ(s.messages(), static_cast<uint64_t>(kMessages));
  EXPECT_EQ(s.deliveries_due(), static_cast<uint64_t>(kMessages));
  EXPECT_EQ(Deleted().total(), 0u);
}

TEST_F(QueueAdminTest, DeleteOfAMessageWithOnlyADsnJobLeftCanBeUndone) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_PERMANENT, 550, "5.1.1", "no such user"));
  ASSERT_EQ(Stats().bounces(), 1u);
  tern::v1::ActionResponse r = Delete(Ids({id}));
  EXPECT_EQ(r.deliveries_changed(), 0u);
  ASSERT_FALSE(r.undo_token().empty());  // the DSN job was kept
  EXPECT_EQ(Stats().bounces(), 0u);
  auto undone = Undelete(r.undo_token());
  ASSERT_TRUE(undone.ok()) << undone.status();
  EXPECT_EQ(undone->bounces_restored(), 1u);
  EXPECT_EQ(Lease(JOB_KIND_BOUNCE).bounces_size(), 1);
}

TEST_F(QueueAdminTest, UndeleteOfOneDomainWorksAfterTheRestOfTheMessageWasDelivered) {
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@y.example")})).message_id;
  tern::v1::Selector x;
  x.set_domain("x.example");
  tern::v1::ActionResponse r = Delete(x);
  EXPECT_EQ(r.deliveries_changed(), 1u);
  ASSERT_FALSE(r.undo_token().empty());
  ASSERT_EQ(Deleted().entries_size(), 1);
  EXPECT_FALSE(Deleted().entries(0).whole_message());

  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).domain(), "y.example");
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok"));
  EXPECT_EQ(Stats().messages(), 0u);  // retired, body and all

  auto undone = Undelete(r.undo_token());
  ASSERT_TRUE(undone.ok()) << undone.status();
  EXPECT_EQ(undone->deliveries_restored(), 1u);
  EXPECT_EQ(Stats().messages(), 1u);
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).domain(), "x.example");
  EXPECT_EQ(lease.deliveries(0).body(), kBody);
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok"));
  core_.reset();
  auto keys = CountKeys();
  EXPECT_EQ(keys[kMessagesCf], 0);
  EXPECT_EQ(keys[kBodiesCf], 0);
  EXPECT_EQ(keys[kMetaCf], 0);
}

TEST_F(QueueAdminTest, KeptDeletesArePurgedWhenTheirWindowEnds) {
  options_.delete_undo_window_ms = 60'000;
  Open();
  const std::string old_id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  const std::string old_token = Delete(Ids({old_id})).undo_token();
  clock_.AdvanceMs(30'000);
  const std::string young_id = Enqueue(Header({Rcpt("b@x.example")})).message_id;
  const std::string young_token = Delete(Ids({young_id})).undo_token();
  ASSERT_EQ(Deleted().total(), 2u);
  clock_.AdvanceMs(31'000);  // the first is past its minute, the second is not
  ASSERT_TRUE(Eventually([&] { return Deleted().total() == 1u; }));
  EXPECT_EQ(Deleted().entries(0).message_id(), young_id);
  EXPECT_EQ(Undelete(old_token).status().code(), absl::StatusCode::kNotFound);
  clock_.AdvanceMs(30'000);
  ASSERT_TRUE(Eventually([&] { return Deleted().total() == 0u; }));
  EXPECT_EQ(Undelete(young_token).status().code(), absl::StatusCode::kNotFound);
  core_.reset();
  auto keys = CountKeys();
  EXPECT_EQ(keys[kMetaCf], 0);
  EXPECT_EQ(keys[kBodiesCf], 0);
}

TEST_F(QueueAdminTest, PurgeOrAZeroUndoWindowMakesADeleteFinalAtOnce) {
  Open();
  const std::string a = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  tern::v1::ActionResponse r = Delete(Ids({a}), /*purge=*/true);
  EXPECT_EQ(r.deliveries_changed(), 1u);
  EXPECT_TRUE(r.undo_token().empty());
  EXPECT_EQ(Deleted().total(), 0u);
  EXPECT_EQ(Undelete("", {a}).status().code(), absl::StatusCode::kNotFound);

  options_.delete_undo_window_ms = 0;
  Reopen();
  const std::string b = Enqueue(Header({Rcpt("b@x.example")})).message_id;
  r = Delete(Ids({b}));
  EXPECT_EQ(r.deliveries_changed(), 1u);
  EXPECT_TRUE(r.undo_token().empty());
  EXPECT_EQ(Deleted().total(), 0u);
  // Nothing matched: nothing kept, no token.
  EXPECT_TRUE(Delete(Ids({b})).undo_token().empty());
}

TEST_F(QueueAdminTest, UndeleteOfADeliveryDeletedWhileItsTextWasSentIsAmbiguous) {
  options_.ambiguous_policy = AmbiguousPolicy::kHold;
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  Progress(lease.deliveries(0));
  const std::string token = Delete(Ids({id})).undo_token();
  auto undone = Undelete(token);
  ASSERT_TRUE(undone.ok()) << undone.status();
  EXPECT_EQ(undone->ambiguous(), 1u);
  StatsResponse s = Stats();
  EXPECT_EQ(s.deliveries_held(), 1u);  // ambiguous_policy=hold
  EXPECT_EQ(s.ambiguous_total(), 1u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  // The old lease's late report is stale, not applied to what came back.
  EXPECT_EQ(ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_DELIVERED, 250, "2.0.0", "ok")),
            std::vector{REPORT_STATUS_STALE_LEASE});
  EXPECT_EQ(Act(Action::kRelease, Ids({id})).deliveries_changed(), 1u);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 1);
}

TEST_F(QueueAdminTest, AnActionWithoutASelectorIsRefused) {
  Open();
  Enqueue(Header({Rcpt("a@x.example")}));
  tern::v1::ActionRequest req;
  auto r = Sync<tern::v1::ActionResponse>([&](auto cb) { core_->Act(Action::kDelete, req, std::move(cb)); });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  tern::v1::Selector bad;
  bad.set_state("sleeping");
  req.mutable_selector()->set_state("sleeping");
  r = Sync<tern::v1::ActionResponse>([&](auto cb) { core_->Act(Action::kHold, req, std::move(cb)); });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(QueueAdminTest, FlushByDomainMakesOnlyThoseDeliveriesDue) {
  Open();
  Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@y.example")}));
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 2);
  for (const auto& job : lease.deliveries()) {
    ReportAll(job, Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "later"));
  }
  EXPECT_EQ(Stats().deliveries_deferred(), 2u);
  tern::v1::Selector y;
  y.set_domain("y.example");
  EXPECT_EQ(Act(Action::kFlush, y).deliveries_changed(), 1u);
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).domain(), "y.example");
}

TEST_F(QueueAdminTest, ListFiltersAndPagesInArrivalOrder) {
  Open();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    auto h = Header({Rcpt(absl::StrCat("u", i, "@", i % 2 ? "odd" : "even", ".example"))});
    if (i == 4) {
      h.mutable_envelope()->set_mail_from("boss@corp.example");
    }
    ids.push_back(Enqueue(h).message_id);
    clock_.AdvanceMs(60'000);
  }
  tern::v1::ListRequest req;
  req.set_limit(2);
  auto page = core_->List(req);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->messages_size(), 2);
  EXPECT_EQ(page->messages(0).message_id(), ids[0]);
  EXPECT_EQ(page->messages(0).state(), "due");
  EXPECT_EQ(page->messages(0).domains(0), "even.example");
  req.set_cursor(page->next_cursor());
  page = core_->List(req);
  ASSERT_EQ(page->messages_size(), 2);
  EXPECT_EQ(page->messages(0).message_id(), ids[2]);
  req.set_cursor(page->next_cursor());
  page = core_->List(req);
  ASSERT_EQ(page->messages_size(), 1);
  EXPECT_EQ(page->next_cursor(), "");

  tern::v1::ListRequest odd;
  odd.mutable_selector()->set_domain("odd.example");
  EXPECT_EQ(core_->List(odd)->messages_size(), 2);
  tern::v1::ListRequest sender;
  sender.mutable_selector()->set_sender("@CORP.example");
  ASSERT_EQ(core_->List(sender)->messages_size(), 1);
  EXPECT_EQ(core_->List(sender)->messages(0).message_id(), ids[4]);
  tern::v1::ListRequest rcpt;
  rcpt.mutable_selector()->set_recipient("u3@odd.example");
  EXPECT_EQ(core_->List(rcpt)->messages_size(), 1);
  tern::v1::ListRequest old;
  old.mutable_selector()->set_older_than_ms(150'000);  // now is start + 5 min
  EXPECT_EQ(core_->List(old)->messages_size(), 3);
  tern::v1::ListRequest young;
  young.mutable_selector()->set_younger_than_ms(150'000);
  EXPECT_EQ(core_->List(young)->messages_size(), 2);
  tern::v1::ListRequest deferred;
  deferred.mutable_selector()->set_state("deferred");
  EXPECT_EQ(core_->List(deferred)->messages_size(), 0);
}

TEST_F(QueueAdminTest, QshapeCountsMessagesPerDomainByAgeBucket) {
  Open();
  Enqueue(Header({Rcpt("a@x.example"), Rcpt("b@x.example")}));  // one message for x
  clock_.AdvanceMs(7 * 60'000);
  Enqueue(Header({Rcpt("c@x.example"), Rcpt("d@y.example")}));
  clock_.AdvanceMs(60 * 60'000);  // ages now: 68 min and 61 min
  Enqueue(Header({Rcpt("e@y.example")}));  // age 0
  tern::v1::QshapeRequest req;
  auto q = core_->Qshape(req);
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->bucket_minutes_size(), 10);
  ASSERT_GE(q->rows_size(), 3);
  EXPECT_EQ(q->rows(0).domain(), "TOTAL");
  EXPECT_EQ(q->rows(0).total(), 4u);
  EXPECT_EQ(q->domains(), 2u);
  // Bucket 4 is [40, 80) minutes; bucket 0 is [0, 5).
  for (int i = 1; i < 3; ++i) {
    const auto& row = q->rows(i);
    EXPECT_EQ(row.total(), 2u) << row.domain();
    if (row.domain() == "x.example") {
      EXPECT_EQ(row.counts(4), 2u);
    } else {
      EXPECT_EQ(row.domain(), "y.example");
      EXPECT_EQ(row.counts(4), 1u);
      EXPECT_EQ(row.counts(0), 1u);
    }
  }
  req.set_deferred_only(true);
  EXPECT_EQ(core_->Qshape(req)->rows(0).total(), 0u);
}

TEST_F(QueueAdminTest, MaxQueueAgeBouncesWith547) {
  options_.max_queue_age_ms = 90'000;
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "later"));
  clock_.AdvanceMs(60'000);
  lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "still later"));
  // The next retry would be 120 s later; it is capped at the expiry.
  EXPECT_EQ(Show(id).deliveries(0).due_unix_ms(), kStart + 90'000);
  clock_.AdvanceMs(30'000);
  EXPECT_EQ(Lease(JOB_KIND_DELIVERY).deliveries_size(), 0);
  StatsResponse s = Stats();
  EXPECT_EQ(s.deliveries(), 0u);
  EXPECT_EQ(s.failed_total(), 1u);
  LeaseResponse dsn = Lease(JOB_KIND_BOUNCE);
  ASSERT_EQ(dsn.bounces_size(), 1);
  EXPECT_EQ(dsn.bounces(0).recipients(0).result().enhanced_status(), "5.4.7");
  EXPECT_THAT(dsn.bounces(0).recipients(0).result().reply_text(), HasSubstr("expired"));
  EXPECT_THAT(dsn.bounces(0).recipients(0).result().reply_text(), HasSubstr("still later"));
  EXPECT_THAT(EventTypes(id), ::testing::Contains("expired"));
}

TEST_F(QueueAdminTest, DelayWarningCreatesOneDelayedDsnPerPoint) {
  options_.retry = RetrySchedule({60'000, 60'000, 60'000, 60'000});
  options_.delay_warning_ms = {100'000};
  Open();
  Enqueue(Header({Rcpt("a@x.example"), Rcpt("never@x.example", tern::v1::NOTIFY_NEVER),
                  Rcpt("fail@x.example", tern::v1::NOTIFY_FAILURE)}));
  const auto later = Result(tern::v1::OUTCOME_TRANSIENT, 451, "4.3.0", "later");
  for (int i = 0; i < 3; ++i) {
    LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
    ASSERT_EQ(lease.deliveries_size(), 1) << i;
    ReportAll(lease.deliveries(0), later);
    // Failures at ages 0 s, 60 s, 120 s: only the last one is past 100 s.
    EXPECT_EQ(Stats().bounces(), i < 2 ? 0u : 1u) << i;
    clock_.AdvanceMs(60'000);
  }
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ReportAll(lease.deliveries(0), later);
  EXPECT_EQ(Stats().bounces(), 1u);  // one warning per point
  LeaseResponse dsn = Lease(JOB_KIND_BOUNCE);
  ASSERT_EQ(dsn.bounces_size(), 1);
  EXPECT_EQ(dsn.bounces(0).kind(), tern::v1::BOUNCE_KIND_DELAYED);
  ASSERT_EQ(dsn.bounces(0).recipients_size(), 1);  // NOTIFY unset only
  EXPECT_EQ(dsn.bounces(0).recipients(0).spec().address(), "a@x.example");
  EXPECT_EQ(dsn.bounces(0).recipients(0).result().reply_code(), 451u);
  // Gives up after the 4th failure: retry 3 at +180 s, one more interval.
  EXPECT_EQ(dsn.bounces(0).will_retry_until_unix_ms(), kStart + 180'000 + 60'000);
}

TEST_F(QueueAdminTest, EveryStateChangeIsAnEventAndTheLogIsPruned) {
  options_.event_retention_count = 3;
  Open();
  const std::string id = Enqueue(Header({Rcpt("a@x.example")})).message_id;
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ReportAll(lease.deliveries(0), Result(tern::v1::OUTCOME_PERMANENT, 550, "5.1.1", "no such user"));
  LeaseResponse dsn = Lease(JOB_KIND_BOUNCE);
  Ack(dsn.bounces(0));
  std::vector<tern::v1::QueueEvent> events = Events();
  ASSERT_GE(events.size(), 1u);
  uint64_t last = core_->LastEventSeq();
  EXPECT_EQ(events.back().seq(), last);
  // Before pruning (prunes run every 5 s of the clock) all five are there.
  ASSERT_EQ(events.size(), 5u);
  EXPECT_THAT(EventTypes(id), ::testing::ElementsAre("received", "leased", "failed", "bounce_created", "dsn_done"));
  EXPECT_EQ(events[2].recipients(0), "a@x.example");
  EXPECT_EQ(events[2].detail(), "550 5.1.1 no such user");
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq(), events[i - 1].seq() + 1);
  }
  // Resuming from a cursor yields exactly what came after it.
  EXPECT_EQ(Events(events[2].seq()).size(), 2u);
  EXPECT_TRUE(core_->WaitForEvents(0, 10));
  EXPECT_FALSE(core_->WaitForEvents(last, 10));

  clock_.AdvanceMs(6'000);
  ASSERT_TRUE(Eventually([&] { return core_->OldestEventSeq() == last - 2; }));
  EXPECT_EQ(Events().size(), 3u);
  // Sequence numbers continue across a restart.
  Reopen();
  Enqueue(Header({Rcpt("b@x.example")}));
  EXPECT_EQ(core_->LastEventSeq(), last + 1);
}

// Quarantined records can be read byte for byte (a quarantined message
// with the body it left behind, to salvage the mail) and purged, which also
// removes that orphaned body, never the body of a live message.
TEST_F(QueueAdminTest, CorruptRecordsCanBeReadAndPurgedWithTheBodiesTheyOrphaned) {
  Open();
  const std::string lost_body = "Subject: salvage me\r\n\r\nThe text survives its record.\r\n";
  const std::string lost = Enqueue(Header({Rcpt("a@x.example")}), lost_body).message_id;
  const std::string live = Enqueue(Header({Rcpt("b@y.example")})).message_id;
  core_.reset();
  const std::string garbage = "\xff\xff not a message record";
  PlantRaw(kMessagesCf, lost, garbage);
  PlantRaw(kDeliveriesCf, "garbage.1", "\xfe not a delivery");
  // A quarantined record whose id is in use again: its purge must not take
  // the live message's body.
  PlantRaw(kCorruptCf, CorruptKey(kMessagesCf, live), "old garbage");
  Open();
  // Leasing finds the lost message's delivery without its message and moves
  // it aside too; the live one is leased with its body.
  LeaseResponse lease = Lease(JOB_KIND_DELIVERY);
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).message_id(), live);
  EXPECT_EQ(lease.deliveries(0).body(), kBody);

  auto list = core_->ListCorrupt(0);
  ASSERT_TRUE(list.ok()) << list.status();
  std::set<std::pair<std::string, std::string>> listed;
  for (const auto& r : list->records()) {
    listed.emplace(r.column_family(), r.key());
  }
  EXPECT_TRUE(listed.count({kMessagesCf, lost})) << list->DebugString();
  EXPECT_TRUE(listed.count({kDeliveriesCf, "garbage.1"})) << list->DebugString();
  EXPECT_TRUE(listed.count({kMessagesCf, live})) << list->DebugString();
  const uint64_t total = list->total();
  EXPECT_EQ(Stats().corrupt_records(), total);

  auto get = [&](const std::string& cf, const std::string& key) {
    tern::v1::GetCorruptRequest req;
    req.set_column_family(cf);
    req.set_key(key);
    return core_->GetCorrupt(req);
  };
  auto message = get(kMessagesCf, lost);
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->value(), garbage);
  EXPECT_TRUE(message->has_body());
  EXPECT_EQ(message->body(), lost_body);
  auto delivery = get(kDeliveriesCf, "garbage.1");
  ASSERT_TRUE(delivery.ok()) << delivery.status();
  EXPECT_EQ(delivery->value(), "\xfe not a delivery");
  EXPECT_FALSE(delivery->has_body());
  EXPECT_EQ(get(kDeliveriesCf, "garbage.2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(get("", "").status().code(), absl::StatusCode::kInvalidArgument);

  auto purge = [&](const std::string& cf, const std::string& key, bool all) {
    tern::v1::PurgeCorruptRequest req;
    req.set_column_family(cf);
    req.set_key(key);
    req.set_all(all);
    return Sync<tern::v1::PurgeCorruptResponse>([&](auto cb) { core_->PurgeCorrupt(req, std::move(cb)); });
  };
  EXPECT_EQ(purge("", "", false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(purge(kMessagesCf, "", false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(purge(kMessagesCf, lost, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(purge(kDeliveriesCf, "garbage.2", false).status().code(), absl::StatusCode::kNotFound);

  auto one = purge(kMessagesCf, lost, false);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->purged(), 1u);
  EXPECT_EQ(one->bodies_purged(), 1u);
  EXPECT_EQ(get(kMessagesCf, lost).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Stats().corrupt_records(), total - 1);

  auto reused = purge(kMessagesCf, live, false);
  ASSERT_TRUE(reused.ok()) << reused.status();
  EXPECT_EQ(reused->purged(), 1u);
  EXPECT_EQ(reused->bodies_purged(), 0u) << "the live message's body";

  auto rest = purge("", "", true);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(rest->purged(), total - 2);
  EXPECT_EQ(Stats().corrupt_records(), 0u);
  EXPECT_EQ(core_->ListCorrupt(0)->total(), 0u);

  // The live message is whole.
  EXPECT_EQ(core_->Show(live)->size(), kBody.size());
  core_.reset();
  auto keys = CountKeys();
  EXPECT_EQ(keys[kCorruptCf], 0);
  EXPECT_EQ(keys[kBodiesCf], 1) << "only the live message's body is left";
}

}  // namespace
}  // namespace tern::queue
