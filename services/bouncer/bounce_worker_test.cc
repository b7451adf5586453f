#include "services/bouncer/bounce_worker.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/mime/header.h"
#include "services/bouncer/default_bounce_message.h"
#include "services/bouncer/dsn_composer.h"

namespace tern::bouncer {
namespace {

namespace v1 = ::tern::v1;
using ::testing::HasSubstr;

// An in-process queue that stores what the bouncer sends. Enqueue honours
// idempotency keys like the real queue; Lease hands out the jobs given to
// AddJob and otherwise long-polls (noticing cancellation).
class FakeQueue final : public v1::Queue::Service {
 public:
  struct Stored {
    v1::EnqueueHeader header;
    std::string body;
  };

  grpc::Status Enqueue(grpc::ServerContext*, grpc::ServerReader<v1::EnqueueRequest>* reader,
                       v1::EnqueueResponse* resp) override {
    Stored stored;
    v1::EnqueueRequest req;
    while (reader->Read(&req)) {
      if (req.has_header()) {
        stored.header = req.header();
      }
      stored.body += req.body_chunk();
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++enqueue_calls_;
    if (fail_enqueue_ != grpc::StatusCode::OK) {
      return grpc::Status(fail_enqueue_, "refused");
    }
    auto it = ids_by_key_.find(stored.header.idempotency_key());
    if (it != ids_by_key_.end()) {
      resp->set_message_id(it->second);
      resp->set_duplicate(true);
      return grpc::Status::OK;
    }
    std::string id = absl::StrCat("dsn-", stored_.size() + 1);
    ids_by_key_[stored.header.idempotency_key()] = id;
    stored_.push_back(std::move(stored));
    resp->set_message_id(id);
    return grpc::Status::OK;
  }

  grpc::Status Lease(grpc::ServerContext* ctx, const v1::LeaseRequest* req, v1::LeaseResponse* resp) override {
    std::unique_lock<std::mutex> lock(mu_);
    last_lease_ = *req;
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(req->wait_ms());
    while (jobs_.empty() && std::chrono::steady_clock::now() < until && !ctx->IsCancelled()) {
      cv_.wait_for(lock, std::chrono::milliseconds(20));
    }
    while (!jobs_.empty() && resp->bounces_size() < static_cast<int>(req->max_jobs())) {
      *resp->add_bounces() = jobs_.front();
      jobs_.pop_front();
    }
    return grpc::Status::OK;
  }

  grpc::Status Ack(grpc::ServerContext*, const v1::AckRequest* req, v1::AckResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const v1::BounceAck& ack : req->acks()) {
      acks_.push_back(ack);
      resp->add_statuses(v1::REPORT_STATUS_APPLIED);
    }
    cv_.notify_all();
    return grpc::Status::OK;
  }

  void AddJob(const v1::BounceJob& job) {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(job);
    cv_.notify_all();
  }
  void FailEnqueue(grpc::StatusCode code) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_enqueue_ = code;
  }
  bool WaitForAcks(size_t n, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return acks_.size() >= n; });
  }
  std::vector<Stored> stored() {
    std::lock_guard<std::mutex> lock(mu_);
    return stored_;
  }
  std::vector<v1::BounceAck> acks() {
    std::lock_guard<std::mutex> lock(mu_);
    return acks_;
  }
  int enqueue_calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return enqueue_calls_;
  }
  v1::LeaseRequest last_lease() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_lease_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::BounceJob> jobs_;
  std::vector<Stored> stored_;
  std::map<std::string, std::string> ids_by_key_;
  std::vector<v1::BounceAck> acks_;
  v1::LeaseRequest last_lease_;
  grpc::StatusCode fail_enqueue_ = grpc::StatusCode::OK;
  int enqueue_calls_ = 0;
};

// The user's Hooks server, in process: Bounce answers `action` after
// `delay` (cut short when the caller gives up), or fails with `error`. It
// records every request and how many calls were in flight at once.
class FakeHooks final : public v1::Hooks::Service {
 public:
  grpc::Status Bounce(grpc::ServerContext* ctx, const v1::BounceRequest* req, v1::BounceResponse* resp) override {
    std::unique_lock<std::mutex> lock(mu_);
    requests_.push_back(*req);
    max_in_flight_ = std::max(max_in_flight_, ++in_flight_);
    peers_met_ = peers_met_ || in_flight_ >= wait_for_peers_;
    cv_.notify_all();
    auto until = std::chrono::steady_clock::now() + delay_;
    // With wait_for_peers, answer only once that many calls were in flight.
    while ((std::chrono::steady_clock::now() < until || !peers_met_) && !ctx->IsCancelled() &&
           std::chrono::steady_clock::now() < until + std::chrono::seconds(10)) {
      cv_.wait_for(lock, std::chrono::milliseconds(10));
    }
    --in_flight_;
    if (error_ != grpc::StatusCode::OK) {
      return grpc::Status(error_, "hook says no");
    }
    resp->set_action(action_);
    return grpc::Status::OK;
  }

  void Answer(v1::BounceAction action, std::chrono::milliseconds delay = std::chrono::milliseconds(0)) {
    std::lock_guard<std::mutex> lock(mu_);
    action_ = action;
    delay_ = delay;
  }
  void Fail(grpc::StatusCode code) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = code;
  }
  void WaitForPeers(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    wait_for_peers_ = n;
  }
  bool WaitForRequests(size_t n, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return requests_.size() >= n; });
  }
  std::vector<v1::BounceRequest> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  int max_in_flight() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_in_flight_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  v1::BounceAction action_ = v1::BOUNCE_ACTION_CONTINUE;
  std::chrono::milliseconds delay_{0};
  grpc::StatusCode error_ = grpc::StatusCode::OK;
  int wait_for_peers_ = 0;
  bool peers_met_ = false;
  int in_flight_ = 0;
  int max_in_flight_ = 0;
  std::vector<v1::BounceRequest> requests_;
};

uint64_t CounterValue(const std::string& name, const metrics::Labels& labels = {}) {
  return metrics::Registry::Global().GetCounter(name, "", labels).value();
}

v1::BounceJob MakeJob(const std::string& bounce_id, const std::string& sender) {
  v1::BounceJob job;
  job.set_bounce_id(bounce_id);
  job.set_message_id("m-" + bounce_id);
  job.set_lease_token("lease-" + bounce_id);
  job.set_kind(v1::BOUNCE_KIND_FAILED);
  job.mutable_envelope()->set_mail_from(sender);
  job.set_arrival_unix_ms(1'795'000'000'000);
  job.set_original("From: alice@example.com\r\nSubject: hello\r\nMessage-Id: <o@example.com>\r\n\r\nbody\r\n");
  v1::BouncedRecipient* r = job.add_recipients();
  r->mutable_spec()->set_address("bob@example.net");
  r->mutable_result()->set_outcome(v1::OUTCOME_PERMANENT);
  r->mutable_result()->set_reply_code(550);
  r->mutable_result()->set_enhanced_status("5.1.1");
  r->mutable_result()->set_reply_text("User unknown");
  return job;
}

class BounceWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&queue_);
    builder.RegisterService(&hooks_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
    stub_ = v1::Queue::NewStub(channel_);
    hooks_stub_ = v1::Hooks::NewStub(channel_);

    config_.me = "mx.tern.test";
    config_.failed_template = {kDefaultBounceMessage, "built-in"};
    config_.delayed_template = {kDefaultDelayedMessage, "built-in"};
    config_.delivered_template = {kDefaultDeliveredMessage, "built-in"};
    ASSERT_TRUE(config_.Validate().ok());
    options_.wait_ms = 200;
    options_.rpc_timeout = absl::Seconds(10);
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1)); }

  std::unique_ptr<BounceWorker> MakeWorker() {
    auto n = std::make_shared<int>(0);
    return std::make_unique<BounceWorker>(
        stub_.get(), config_, [n] { return absl::StrCat("t", ++*n); }, 77, options_);
  }

  // Turns the bounce hook on, answered by hooks_.
  void UseBounceHook(absl::Duration timeout = absl::Seconds(10)) {
    options_.hooks = hooks_stub_.get();
    options_.hook_timeout = timeout;
  }

  FakeQueue queue_;
  FakeHooks hooks_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Queue::Stub> stub_;
  std::unique_ptr<v1::Hooks::Stub> hooks_stub_;
  BouncerConfig config_;
  BounceWorker::Options options_;
};

TEST_F(BounceWorkerTest, EnqueuesDsnToOriginalSenderThenAcksWithItsId) {
  uint64_t sent_before = CounterValue("tern_bouncer_dsns_total", {{"kind", "failed"}});
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("b1", "alice@example.com")).ok());

  std::vector<FakeQueue::Stored> stored = queue_.stored();
  ASSERT_EQ(stored.size(), 1u);
  const v1::EnqueueHeader& h = stored[0].header;
  EXPECT_EQ(h.envelope().mail_from(), "");
  ASSERT_EQ(h.envelope().recipients_size(), 1);
  EXPECT_EQ(h.envelope().recipients(0).address(), "alice@example.com");
  EXPECT_EQ(h.idempotency_key(), "dsn:b1");
  EXPECT_EQ(h.expected_size(), stored[0].body.size());
  EXPECT_EQ(mime::GetHeader(stored[0].body, "To"), "<alice@example.com>");
  EXPECT_EQ(mime::GetHeader(stored[0].body, "Message-Id"), "<t1@mx.tern.test>");
  EXPECT_EQ(mime::GetHeader(stored[0].body, "References"), "<o@example.com>");
  EXPECT_THAT(stored[0].body, HasSubstr("\r\nFinal-Recipient: rfc822;bob@example.net\r\nAction: failed\r\n"
                                        "Status: 5.1.1\r\n"));

  std::vector<v1::BounceAck> acks = queue_.acks();
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].bounce_id(), "b1");
  EXPECT_EQ(acks[0].lease_token(), "lease-b1");
  EXPECT_EQ(acks[0].dsn_message_id(), "dsn-1");
  EXPECT_EQ(CounterValue("tern_bouncer_dsns_total", {{"kind", "failed"}}), sent_before + 1);
}

TEST_F(BounceWorkerTest, ProcessingAJobTwiceSendsOneDsn) {
  // What happens when the bouncer died between Enqueue and Ack.
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("b2", "alice@example.com")).ok());
  ASSERT_TRUE(worker->ProcessJob(MakeJob("b2", "alice@example.com")).ok());
  EXPECT_EQ(queue_.stored().size(), 1u);
  std::vector<v1::BounceAck> acks = queue_.acks();
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].dsn_message_id(), acks[1].dsn_message_id());
}

TEST_F(BounceWorkerTest, DoubleBounceIsAckedWithoutDsn) {
  uint64_t before = CounterValue("tern_bouncer_double_bounces_total");
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("b3", "")).ok());
  EXPECT_EQ(queue_.enqueue_calls(), 0);
  std::vector<v1::BounceAck> acks = queue_.acks();
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].bounce_id(), "b3");
  EXPECT_EQ(acks[0].dsn_message_id(), "");
  EXPECT_EQ(CounterValue("tern_bouncer_double_bounces_total"), before + 1);
}

TEST_F(BounceWorkerTest, NotifyNeverIsAckedWithoutDsn) {
  v1::BounceJob job = MakeJob("b4", "alice@example.com");
  job.mutable_recipients(0)->mutable_spec()->set_notify(v1::NOTIFY_NEVER);
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(job).ok());
  EXPECT_EQ(queue_.enqueue_calls(), 0);
  ASSERT_EQ(queue_.acks().size(), 1u);
  EXPECT_EQ(queue_.acks()[0].dsn_message_id(), "");
}

TEST_F(BounceWorkerTest, FailedEnqueueLeavesTheJobUnacked) {
  uint64_t before = CounterValue("tern_bouncer_queue_errors_total", {{"call", "enqueue"}});
  queue_.FailEnqueue(grpc::StatusCode::UNAVAILABLE);
  auto worker = MakeWorker();
  absl::Status s = worker->ProcessJob(MakeJob("b5", "alice@example.com"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(queue_.acks().empty());
  EXPECT_EQ(CounterValue("tern_bouncer_queue_errors_total", {{"call", "enqueue"}}), before + 1);
}

TEST_F(BounceWorkerTest, DsnTheQueueRefusesForGoodIsADoubleBounce) {
  uint64_t before = CounterValue("tern_bouncer_double_bounces_total");
  queue_.FailEnqueue(grpc::StatusCode::INVALID_ARGUMENT);
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("b6", "no-domain")).ok());
  ASSERT_EQ(queue_.acks().size(), 1u);
  EXPECT_EQ(queue_.acks()[0].dsn_message_id(), "");
  EXPECT_EQ(CounterValue("tern_bouncer_double_bounces_total"), before + 1);
}

TEST_F(BounceWorkerTest, DoubleBounceIsCopiedToThePostmasterOnce) {
  uint64_t copies = CounterValue("tern_bouncer_double_bounce_copies_total");
  config_.double_bounce_recipient = "postmaster@tern.test";
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("b7", "")).ok());
  std::vector<FakeQueue::Stored> stored = queue_.stored();
  ASSERT_EQ(stored.size(), 1u);
  const v1::Envelope& env = stored[0].header.envelope();
  EXPECT_EQ(env.mail_from(), "");
  ASSERT_EQ(env.recipients_size(), 1);
  EXPECT_EQ(env.recipients(0).address(), "postmaster@tern.test");
  EXPECT_EQ(env.notes().at(kDsnNoteKey), kDoubleBounceCopyNote);
  EXPECT_EQ(mime::GetHeader(stored[0].body, "To"), "<postmaster@tern.test>");
  EXPECT_THAT(stored[0].body, HasSubstr("Final-Recipient: rfc822;bob@example.net\r\n"));
  ASSERT_EQ(queue_.acks().size(), 1u);
  EXPECT_EQ(queue_.acks()[0].dsn_message_id(), "dsn-1");
  EXPECT_EQ(CounterValue("tern_bouncer_double_bounce_copies_total"), copies + 1);

  // The copy fails in turn: its bounce job carries the note, so no new copy.
  v1::BounceJob failed_copy = MakeJob("b8", "");
  (*failed_copy.mutable_envelope()->mutable_notes())[kDsnNoteKey] = kDoubleBounceCopyNote;
  failed_copy.mutable_recipients(0)->mutable_spec()->set_address("postmaster@tern.test");
  ASSERT_TRUE(worker->ProcessJob(failed_copy).ok());
  EXPECT_EQ(queue_.stored().size(), 1u);
  ASSERT_EQ(queue_.acks().size(), 2u);
  EXPECT_EQ(queue_.acks()[1].dsn_message_id(), "");
  EXPECT_EQ(CounterValue("tern_bouncer_double_bounce_copies_total"), copies + 1);
}

// The bounce job the queue makes when the DSN `dsn` (sent by the worker for
// a REQUIRETLS message) failed for its recipient with `status`.
v1::BounceJob FailedDsnJob(const std::string& bounce_id, const FakeQueue::Stored& dsn, const std::string& status) {
  v1::BounceJob job;
  job.set_bounce_id(bounce_id);
  job.set_message_id(absl::StrCat("m-", bounce_id));
  job.set_lease_token(absl::StrCat("lease-", bounce_id));
  job.set_kind(v1::BOUNCE_KIND_FAILED);
  *job.mutable_envelope() = dsn.header.envelope();
  job.set_original(dsn.body);
  job.set_original_is_full(true);
  v1::BouncedRecipient* r = job.add_recipients();
  *r->mutable_spec() = dsn.header.envelope().recipients(0);
  r->mutable_result()->set_outcome(status[0] == '5' ? v1::OUTCOME_PERMANENT : v1::OUTCOME_TRANSIENT);
  r->mutable_result()->set_enhanced_status(status);
  r->mutable_result()->set_reply_text(
      "REQUIRETLS is required by the sender, but was not offered by host mx.example.com");
  return job;
}

TEST_F(BounceWorkerTest, RequireTlsDsnThatCannotGoWithRequireTlsIsSentAgainRedacted) {
  // RFC 8689 §5. First the DSN about a REQUIRETLS message: with REQUIRETLS,
  // quoting the original's header.
  auto worker = MakeWorker();
  v1::BounceJob original = MakeJob("b1", "alice@example.com");
  original.mutable_envelope()->set_requiretls(true);
  original.mutable_envelope()->set_envid("env-7");
  ASSERT_TRUE(worker->ProcessJob(original).ok());
  ASSERT_EQ(queue_.stored().size(), 1u);
  const FakeQueue::Stored dsn = queue_.stored()[0];
  ASSERT_TRUE(dsn.header.envelope().requiretls());
  ASSERT_THAT(dsn.body, HasSubstr("Subject: hello"));

  // It could not reach alice with REQUIRETLS: the same report goes again,
  // without REQUIRETLS and without anything of the original's header.
  const uint64_t redacted_before = CounterValue("tern_bouncer_redacted_dsns_total");
  const uint64_t double_before = CounterValue("tern_bouncer_double_bounces_total");
  ASSERT_TRUE(worker->ProcessJob(FailedDsnJob("b2", dsn, "5.7.30")).ok());
  ASSERT_EQ(queue_.stored().size(), 2u);
  const FakeQueue::Stored redacted = queue_.stored()[1];
  const v1::Envelope& env = redacted.header.envelope();
  EXPECT_FALSE(env.requiretls());
  EXPECT_EQ(env.mail_from(), "");
  ASSERT_EQ(env.recipients_size(), 1);
  EXPECT_EQ(env.recipients(0).address(), "alice@example.com");
  EXPECT_EQ(env.notes().at(kDsnNoteKey), kRedactedNote);
  EXPECT_EQ(redacted.header.idempotency_key(), "dsn:b2");
  EXPECT_THAT(redacted.body, HasSubstr("Final-Recipient: rfc822;bob@example.net\r\nAction: failed\r\n"
                                       "Status: 5.1.1\r\n"));
  EXPECT_THAT(redacted.body, HasSubstr("Original-Envelope-Id: env-7"));
  EXPECT_THAT(redacted.body, HasSubstr("not shown: your message required TLS (REQUIRETLS)"));
  EXPECT_THAT(redacted.body, Not(HasSubstr("hello")));
  EXPECT_THAT(redacted.body, Not(HasSubstr("o@example.com")));
  EXPECT_THAT(redacted.body, Not(HasSubstr("rfc822-headers")));
  ASSERT_EQ(queue_.acks().size(), 2u);
  EXPECT_EQ(queue_.acks()[1].dsn_message_id(), "dsn-2");
  EXPECT_EQ(CounterValue("tern_bouncer_redacted_dsns_total"), redacted_before + 1);
  EXPECT_EQ(CounterValue("tern_bouncer_double_bounces_total"), double_before);

  // The redacted DSN fails in turn: no REQUIRETLS on it, so a plain double
  // bounce, never a loop.
  ASSERT_TRUE(worker->ProcessJob(FailedDsnJob("b3", redacted, "5.7.30")).ok());
  EXPECT_EQ(queue_.stored().size(), 2u);
  EXPECT_EQ(CounterValue("tern_bouncer_double_bounces_total"), double_before + 1);
}

TEST_F(BounceWorkerTest, RequireTlsDsnIsRedactedOnlyForTlsFailuresAndWhenReadable) {
  auto worker = MakeWorker();
  v1::BounceJob original = MakeJob("b1", "alice@example.com");
  original.mutable_envelope()->set_requiretls(true);
  ASSERT_TRUE(worker->ProcessJob(original).ok());
  ASSERT_EQ(queue_.stored().size(), 1u);
  const FakeQueue::Stored dsn = queue_.stored()[0];
  const uint64_t double_before = CounterValue("tern_bouncer_double_bounces_total");
  // No such user: redacting would not help.
  ASSERT_TRUE(worker->ProcessJob(FailedDsnJob("b2", dsn, "5.1.1")).ok());
  // Not readable as a report.
  v1::BounceJob garbled = FailedDsnJob("b3", dsn, "5.7.30");
  garbled.set_original("Subject: not a report\r\n\r\nhello\r\n");
  ASSERT_TRUE(worker->ProcessJob(garbled).ok());
  EXPECT_EQ(queue_.stored().size(), 1u);
  EXPECT_EQ(CounterValue("tern_bouncer_double_bounces_total"), double_before + 2);

  // Retries that ran out on a certificate that did not verify (4.7.5) are
  // a TLS failure too: redacted.
  ASSERT_TRUE(worker->ProcessJob(FailedDsnJob("b4", dsn, "4.7.5")).ok());
  ASSERT_EQ(queue_.stored().size(), 2u);
  EXPECT_FALSE(queue_.stored()[1].header.envelope().requiretls());
}

TEST_F(BounceWorkerTest, SuppressedSenderDomainIsAckedWithoutDsnAndCounted) {
  uint64_t before = CounterValue("tern_bouncer_suppressed_total", {{"reason", "sender_domain"}});
  config_.suppress_sender_domains = {"example.com"};
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("b9", "alice@example.com")).ok());
  EXPECT_EQ(queue_.enqueue_calls(), 0);
  ASSERT_EQ(queue_.acks().size(), 1u);
  EXPECT_EQ(CounterValue("tern_bouncer_suppressed_total", {{"reason", "sender_domain"}}), before + 1);
}

// SIGHUP: the next job renders with the reloaded template, name and rules.
TEST_F(BounceWorkerTest, ReloadAppliesTheNewTemplateMeAndRulesFromTheNextJob) {
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("h1", "alice@example.com")).ok());

  BouncerConfig reloaded = config_;
  reloaded.me = "bounces.tern.test";
  reloaded.failed_template = {"Subject: Undeliverable: {subject}\n\nReloaded text for {rcpt_list}.\n",
                              "outbound.bounce_message"};
  reloaded.suppress_sender_domains = {"muted.example"};
  ASSERT_TRUE(reloaded.Validate().ok()) << reloaded.Validate();
  worker->Reload(reloaded);
  ASSERT_TRUE(worker->ProcessJob(MakeJob("h2", "alice@example.com")).ok());
  ASSERT_TRUE(worker->ProcessJob(MakeJob("h3", "carol@muted.example")).ok());

  const std::vector<FakeQueue::Stored> stored = queue_.stored();
  ASSERT_EQ(stored.size(), 2u);  // h3's sender domain is suppressed now
  EXPECT_THAT(stored[0].body, ::testing::Not(HasSubstr("Reloaded text")));
  EXPECT_EQ(mime::GetHeader(stored[0].body, "Message-Id"), "<t1@mx.tern.test>");
  EXPECT_THAT(stored[1].body, HasSubstr("Reloaded text for"));
  EXPECT_THAT(mime::GetHeader(stored[1].body, "Message-Id").value_or(""), ::testing::EndsWith("@bounces.tern.test>"));
  EXPECT_EQ(queue_.acks().size(), 3u);
}

TEST_F(BounceWorkerTest, RunLeasesBounceJobsAndStopsOnRequest) {
  queue_.AddJob(MakeJob("r1", "alice@example.com"));
  queue_.AddJob(MakeJob("r2", ""));
  auto worker = MakeWorker();
  std::thread runner([&] { worker->Run(); });
  EXPECT_TRUE(queue_.WaitForAcks(2, std::chrono::seconds(20)));
  worker->Stop();
  runner.join();
  EXPECT_EQ(queue_.stored().size(), 1u);
  EXPECT_EQ(queue_.acks().size(), 2u);
  v1::LeaseRequest lease = queue_.last_lease();
  EXPECT_EQ(lease.kind(), v1::JOB_KIND_BOUNCE);
  EXPECT_EQ(lease.max_jobs(), 16u);
}

TEST_F(BounceWorkerTest, StopCancelsALongPollingLease) {
  options_.wait_ms = 60'000;
  auto worker = MakeWorker();
  std::thread runner([&] { worker->Run(); });
  // Wait until the Lease is in flight (the fake records it on arrival).
  for (int i = 0; i < 200 && queue_.last_lease().kind() != v1::JOB_KIND_BOUNCE; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto start = std::chrono::steady_clock::now();
  worker->Stop();
  runner.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(BounceWorkerTest, UnreachableQueueIsRetriedWithBackoffUntilStopped) {
  uint64_t before = CounterValue("tern_bouncer_queue_errors_total", {{"call", "lease"}});
  // Nothing listens on this channel's port once the server is gone.
  server_->Shutdown(std::chrono::system_clock::now());
  options_.wait_ms = 10;
  options_.rpc_timeout = absl::Milliseconds(100);
  options_.lease_slack = absl::Milliseconds(100);
  options_.min_backoff = absl::Milliseconds(10);
  options_.max_backoff = absl::Milliseconds(20);
  auto worker = MakeWorker();
  std::thread runner([&] { worker->Run(); });
  for (int i = 0; i < 500 && CounterValue("tern_bouncer_queue_errors_total", {{"call", "lease"}}) < before + 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  worker->Stop();
  runner.join();
  EXPECT_GE(CounterValue("tern_bouncer_queue_errors_total", {{"call", "lease"}}), before + 2);
}

TEST_F(BounceWorkerTest, QueueUnreachableForLongGetsANewStubAndWorkResumes) {
  // The first channel's queue is gone for good; a new stub reaches another.
  server_->Shutdown(std::chrono::system_clock::now());
  FakeQueue second;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&second);
  auto second_server = builder.BuildAndStart();
  ASSERT_NE(second_server, nullptr);
  second.AddJob(MakeJob("r1", "alice@example.com"));
  const uint64_t before = CounterValue("tern_bouncer_queue_channel_rebuilds_total");
  options_.wait_ms = 10;
  options_.lease_slack = absl::Milliseconds(100);
  options_.min_backoff = absl::Milliseconds(10);
  options_.max_backoff = absl::Milliseconds(20);
  options_.rebuild_after = absl::Milliseconds(200);
  options_.new_stub = [port]() -> std::unique_ptr<v1::Queue::StubInterface> {
    return v1::Queue::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  };
  auto worker = MakeWorker();
  std::thread runner([&] { worker->Run(); });
  EXPECT_TRUE(second.WaitForAcks(1, std::chrono::seconds(20)));
  worker->Stop();
  runner.join();
  EXPECT_EQ(CounterValue("tern_bouncer_queue_channel_rebuilds_total"), before + 1);
  EXPECT_EQ(second.acks().size(), 1u);
  second_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}


TEST_F(BounceWorkerTest, WorkersOfTwoShardsEachBounceTheirOwnShardsFailuresIntoThatShard) {
  // ARCHITECTURE.md §8: tern-bouncer runs one worker per queue shard, on its
  // own thread. queue_ is shard 0; `shard1` is a second queue.
  FakeQueue shard1;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&shard1);
  std::unique_ptr<grpc::Server> shard1_server = builder.BuildAndStart();
  ASSERT_NE(shard1_server, nullptr);
  std::unique_ptr<v1::Queue::Stub> shard1_stub =
      v1::Queue::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));

  // Shard 0: a failure and a double bounce. Shard 1: a failure handed out
  // twice (a bouncer died between Enqueue and Ack). Both: a sender whose
  // DSNs the (shared) suppression rules stop.
  config_.suppress_sender_domains = {"quiet.example"};
  queue_.AddJob(MakeJob("s0-a", "alice@example.com"));
  queue_.AddJob(MakeJob("s0-b", ""));
  queue_.AddJob(MakeJob("s0-c", "dan@quiet.example"));
  shard1.AddJob(MakeJob("s1-a", "carol@example.org"));
  shard1.AddJob(MakeJob("s1-a", "carol@example.org"));
  shard1.AddJob(MakeJob("s1-c", "erin@quiet.example"));

  auto make_worker = [this](v1::Queue::StubInterface* stub, int shard) {
    BounceWorker::Options options = options_;
    options.worker_id = absl::StrCat("bouncer-77-", shard);
    options.queue_target = absl::StrCat("shard-", shard);
    options.log_config_warnings = shard == 0;
    auto n = std::make_shared<int>(0);
    return std::make_unique<BounceWorker>(
        stub, config_, [n, shard] { return absl::StrCat("s", shard, "t", ++*n); }, 77, options);
  };
  std::unique_ptr<BounceWorker> worker0 = make_worker(stub_.get(), 0);
  std::unique_ptr<BounceWorker> worker1 = make_worker(shard1_stub.get(), 1);
  std::thread runner0([&] { worker0->Run(); });
  std::thread runner1([&] { worker1->Run(); });
  EXPECT_TRUE(queue_.WaitForAcks(3, std::chrono::seconds(20)));
  EXPECT_TRUE(shard1.WaitForAcks(3, std::chrono::seconds(20)));
  worker0->Stop();
  worker1->Stop();
  runner0.join();
  runner1.join();

  // Each shard leased by its own worker...
  EXPECT_EQ(queue_.last_lease().worker_id(), "bouncer-77-0");
  EXPECT_EQ(shard1.last_lease().worker_id(), "bouncer-77-1");
  // ...holds exactly the DSN about its own failure, and nothing else.
  std::vector<FakeQueue::Stored> stored0 = queue_.stored();
  ASSERT_EQ(stored0.size(), 1u);
  EXPECT_EQ(stored0[0].header.idempotency_key(), "dsn:s0-a");
  ASSERT_EQ(stored0[0].header.envelope().recipients_size(), 1);
  EXPECT_EQ(stored0[0].header.envelope().recipients(0).address(), "alice@example.com");
  EXPECT_EQ(mime::GetHeader(stored0[0].body, "Message-Id"), "<s0t1@mx.tern.test>");
  std::vector<FakeQueue::Stored> stored1 = shard1.stored();
  ASSERT_EQ(stored1.size(), 1u);
  EXPECT_EQ(stored1[0].header.idempotency_key(), "dsn:s1-a");
  ASSERT_EQ(stored1[0].header.envelope().recipients_size(), 1);
  EXPECT_EQ(stored1[0].header.envelope().recipients(0).address(), "carol@example.org");

  // Every job is acknowledged to the shard it came from. The repeated job's
  // second DSN went to the same shard, so its idempotency key found the
  // first: one DSN, both acks carry its id.
  auto by_bounce = [](const std::vector<v1::BounceAck>& acks) {
    std::multimap<std::string, std::string> out;
    for (const v1::BounceAck& ack : acks) {
      out.emplace(ack.bounce_id(), ack.dsn_message_id());
    }
    return out;
  };
  EXPECT_EQ(by_bounce(queue_.acks()),
            (std::multimap<std::string, std::string>{{"s0-a", "dsn-1"}, {"s0-b", ""}, {"s0-c", ""}}));
  EXPECT_EQ(by_bounce(shard1.acks()),
            (std::multimap<std::string, std::string>{{"s1-a", "dsn-1"}, {"s1-a", "dsn-1"}, {"s1-c", ""}}));
  shard1_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}


// ---- the bounce hook ----------------------------------------------------------

uint64_t HookCalls(const std::string& result) {
  return CounterValue("tern_hook_calls_total", {{"hook", "bounce"}, {"result", result}});
}

TEST_F(BounceWorkerTest, BounceHookIsToldWhoWouldGetTheDsnAboutWhichRecipients) {
  const uint64_t continued = HookCalls("continue");
  UseBounceHook();
  v1::BounceJob job = MakeJob("h1", "alice@example.com");
  // Delivered: not part of a failed DSN, so not part of the question either.
  v1::BouncedRecipient* ok = job.add_recipients();
  ok->mutable_spec()->set_address("carol@example.net");
  ok->mutable_result()->set_outcome(v1::OUTCOME_DELIVERED);
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(job).ok());

  std::vector<v1::BounceRequest> asked = hooks_.requests();
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].message_id(), "m-h1");
  EXPECT_EQ(asked[0].bounce_id(), "h1");
  EXPECT_EQ(asked[0].kind(), v1::BOUNCE_KIND_FAILED);
  EXPECT_EQ(asked[0].mail_from(), "alice@example.com");
  ASSERT_EQ(asked[0].recipients_size(), 1);
  EXPECT_EQ(asked[0].recipients(0), "bob@example.net");
  ASSERT_EQ(asked[0].results_size(), 1);
  EXPECT_EQ(asked[0].results(0).reply_code(), 550u);
  EXPECT_EQ(asked[0].results(0).enhanced_status(), "5.1.1");
  // CONTINUE: the DSN goes out as without the hook.
  ASSERT_EQ(queue_.stored().size(), 1u);
  ASSERT_EQ(queue_.acks().size(), 1u);
  EXPECT_EQ(queue_.acks()[0].dsn_message_id(), "dsn-1");
  EXPECT_EQ(HookCalls("continue"), continued + 1);
}

TEST_F(BounceWorkerTest, BounceHookSuppressAcksTheJobWithoutADsn) {
  const uint64_t suppressed = CounterValue("tern_bouncer_suppressed_total", {{"reason", "hook"}});
  const uint64_t applied = HookCalls("applied");
  UseBounceHook();
  hooks_.Answer(v1::BOUNCE_ACTION_SUPPRESS);
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("h2", "alice@example.com")).ok());
  EXPECT_EQ(queue_.enqueue_calls(), 0);
  std::vector<v1::BounceAck> acks = queue_.acks();
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].bounce_id(), "h2");
  EXPECT_EQ(acks[0].dsn_message_id(), "");
  EXPECT_EQ(CounterValue("tern_bouncer_suppressed_total", {{"reason", "hook"}}), suppressed + 1);
  EXPECT_EQ(HookCalls("applied"), applied + 1);
}

TEST_F(BounceWorkerTest, BounceHookThatFailsInAnyWayStillSendsTheDsn) {
  struct Case {
    const char* label;
    grpc::StatusCode error;
    int action;
    std::chrono::milliseconds delay;
  };
  const Case cases[] = {
      {"unimplemented", grpc::StatusCode::UNIMPLEMENTED, 0, std::chrono::milliseconds(0)},
      {"error", grpc::StatusCode::INTERNAL, 0, std::chrono::milliseconds(0)},
      {"past the deadline", grpc::StatusCode::OK, v1::BOUNCE_ACTION_SUPPRESS, std::chrono::milliseconds(3000)},
      {"unknown action", grpc::StatusCode::OK, 7, std::chrono::milliseconds(0)},
  };
  UseBounceHook(absl::Milliseconds(300));
  auto worker = MakeWorker();
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    const uint64_t failed = HookCalls("failed");
    hooks_.Fail(c.error);
    hooks_.Answer(static_cast<v1::BounceAction>(c.action), c.delay);
    ++n;
    ASSERT_TRUE(worker->ProcessJob(MakeJob(absl::StrCat("hf", n), "alice@example.com")).ok());
    EXPECT_EQ(queue_.stored().size(), static_cast<size_t>(n));
    ASSERT_EQ(queue_.acks().size(), static_cast<size_t>(n));
    EXPECT_EQ(queue_.acks().back().dsn_message_id(), absl::StrCat("dsn-", n));
    EXPECT_EQ(HookCalls("failed"), failed + 1);
  }
}

TEST_F(BounceWorkerTest, BounceHookIsNotAskedWhenNoDsnWouldBeSent) {
  UseBounceHook();
  hooks_.Answer(v1::BOUNCE_ACTION_SUPPRESS);
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("n1", "")).ok());  // double bounce
  v1::BounceJob never = MakeJob("n2", "alice@example.com");
  never.mutable_recipients(0)->mutable_spec()->set_notify(v1::NOTIFY_NEVER);
  ASSERT_TRUE(worker->ProcessJob(never).ok());
  EXPECT_EQ(queue_.acks().size(), 2u);
  EXPECT_TRUE(hooks_.requests().empty());
}

TEST_F(BounceWorkerTest, RunAsksTheHookAboutAWholeBatchAtOnce) {
  // The fake answers SUPPRESS only once all three calls are in flight
  // together; asked one after another, each would wait out its deadline.
  UseBounceHook(absl::Seconds(5));
  hooks_.Answer(v1::BOUNCE_ACTION_SUPPRESS);
  hooks_.WaitForPeers(3);
  for (const char* id : {"p1", "p2", "p3"}) {
    queue_.AddJob(MakeJob(id, "alice@example.com"));
  }
  options_.wait_ms = 2000;  // the three jobs come in one Lease
  auto worker = MakeWorker();
  std::thread runner([&] { worker->Run(); });
  EXPECT_TRUE(queue_.WaitForAcks(3, std::chrono::seconds(20)));
  worker->Stop();
  runner.join();
  EXPECT_EQ(hooks_.max_in_flight(), 3);
  EXPECT_EQ(queue_.enqueue_calls(), 0);
}

TEST_F(BounceWorkerTest, StopCancelsAPendingHookAndLeavesTheJobToItsLease) {
  UseBounceHook(absl::Seconds(60));
  hooks_.Answer(v1::BOUNCE_ACTION_CONTINUE, std::chrono::milliseconds(60'000));
  queue_.AddJob(MakeJob("s1", "alice@example.com"));
  auto worker = MakeWorker();
  std::thread runner([&] { worker->Run(); });
  ASSERT_TRUE(hooks_.WaitForRequests(1, std::chrono::seconds(20)));
  auto start = std::chrono::steady_clock::now();
  worker->Stop();
  runner.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  // Neither a DSN nor an Ack: the job comes back when its lease expires.
  EXPECT_EQ(queue_.enqueue_calls(), 0);
  EXPECT_TRUE(queue_.acks().empty());
}

}  // namespace
}  // namespace tern::bouncer
