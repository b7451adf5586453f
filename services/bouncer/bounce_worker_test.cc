#include "services/bouncer/bounce_worker.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

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
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
    stub_ = v1::Queue::NewStub(channel_);

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

  FakeQueue queue_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Queue::Stub> stub_;
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

TEST_F(BounceWorkerTest, SuppressedSenderDomainIsAckedWithoutDsnAndCounted) {
  uint64_t before = CounterValue("tern_bouncer_suppressed_total", {{"reason", "sender_domain"}});
  config_.suppress_sender_domains = {"example.com"};
  auto worker = MakeWorker();
  ASSERT_TRUE(worker->ProcessJob(MakeJob("b9", "alice@example.com")).ok());
  EXPECT_EQ(queue_.enqueue_calls(), 0);
  ASSERT_EQ(queue_.acks().size(), 1u);
  EXPECT_EQ(CounterValue("tern_bouncer_suppressed_total", {{"reason", "sender_domain"}}), before + 1);
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

}  // namespace
}  // namespace tern::bouncer
