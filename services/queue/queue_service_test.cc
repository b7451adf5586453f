#include "services/queue/queue_service_impl.h"

#include <chrono>
#include <filesystem>
#include <memory>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/rpc/server_setup.h"

namespace tern::queue {
namespace {

class QueueServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = std::filesystem::path(::testing::TempDir()) / absl::StrCat("queue_service_test_", getpid(), "_", rd());
    CoreOptions options;
    options.data_dir = dir_.string();
    options.tick_interval = std::chrono::milliseconds(20);
    auto core = QueueCore::Open(options);
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = std::move(*core);
    queue_ = std::make_unique<QueueServiceImpl>(core_.get());
    admin_ = std::make_unique<AdminServiceImpl>(core_.get());
    grpc::ServerBuilder builder;
    rpc::PrepareServerBuilder(builder);
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(queue_.get());
    builder.RegisterService(admin_.get());
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr);
    ASSERT_NE(port, 0);
    auto channel = rpc::MakeChannel(absl::StrCat("127.0.0.1:", port));
    queue_stub_ = tern::v1::Queue::NewStub(channel);
    admin_stub_ = tern::v1::Admin::NewStub(channel);
  }

  void TearDown() override {
    if (core_) {
      core_->BeginShutdown();
    }
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    }
    server_.reset();
    core_.reset();
    std::filesystem::remove_all(dir_);
  }

  static void Deadline(grpc::ClientContext& ctx) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  }

  std::filesystem::path dir_;
  std::unique_ptr<QueueCore> core_;
  std::unique_ptr<QueueServiceImpl> queue_;
  std::unique_ptr<AdminServiceImpl> admin_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<tern::v1::Queue::Stub> queue_stub_;
  std::unique_ptr<tern::v1::Admin::Stub> admin_stub_;
};

TEST_F(QueueServiceTest, EnqueueStreamLeaseReportAndStatsOverGrpc) {
  const std::string body = "Subject: t\r\n\r\nline one\r\nline two\r\n";
  tern::v1::EnqueueResponse enq;
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    auto writer = queue_stub_->Enqueue(&ctx, &enq);
    tern::v1::EnqueueRequest first;
    first.mutable_header()->mutable_envelope()->set_mail_from("s@src.example");
    first.mutable_header()->mutable_envelope()->add_recipients()->set_address("r@dest.example");
    first.mutable_header()->set_expected_size(body.size());
    ASSERT_TRUE(writer->Write(first));
    for (size_t pos = 0; pos < body.size(); pos += 10) {
      tern::v1::EnqueueRequest chunk;
      chunk.set_body_chunk(body.substr(pos, 10));
      ASSERT_TRUE(writer->Write(chunk));
    }
    ASSERT_TRUE(writer->WritesDone());
    grpc::Status s = writer->Finish();
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(enq.message_id().size(), 20u);
  EXPECT_FALSE(enq.duplicate());

  tern::v1::LeaseResponse lease;
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    tern::v1::LeaseRequest req;
    req.set_kind(tern::v1::JOB_KIND_DELIVERY);
    req.set_max_jobs(10);
    req.set_wait_ms(1000);
    grpc::Status s = queue_stub_->Lease(&ctx, req, &lease);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  ASSERT_EQ(lease.deliveries_size(), 1);
  EXPECT_EQ(lease.deliveries(0).body(), body);
  EXPECT_EQ(lease.deliveries(0).domain(), "dest.example");

  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    tern::v1::ReportRequest req;
    auto* rep = req.add_reports();
    rep->set_delivery_id(lease.deliveries(0).delivery_id());
    rep->set_lease_token(lease.deliveries(0).lease_token());
    auto* rr = rep->add_recipients();
    rr->set_index(0);
    rr->mutable_result()->set_outcome(tern::v1::OUTCOME_DELIVERED);
    rr->mutable_result()->set_reply_code(250);
    tern::v1::ReportResponse resp;
    grpc::Status s = queue_stub_->Report(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(resp.statuses_size(), 1);
    EXPECT_EQ(resp.statuses(0), tern::v1::REPORT_STATUS_APPLIED);
  }

  grpc::ClientContext ctx;
  Deadline(ctx);
  tern::v1::StatsResponse stats;
  grpc::Status s = admin_stub_->Stats(&ctx, tern::v1::StatsRequest(), &stats);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(stats.enqueued_total(), 1u);
  EXPECT_EQ(stats.delivered_total(), 1u);
  EXPECT_EQ(stats.messages(), 0u);
  EXPECT_EQ(stats.deliveries(), 0u);
}

TEST_F(QueueServiceTest, EnqueueWithoutHeaderIsInvalid) {
  tern::v1::EnqueueResponse enq;
  grpc::ClientContext ctx;
  Deadline(ctx);
  auto writer = queue_stub_->Enqueue(&ctx, &enq);
  tern::v1::EnqueueRequest chunk;
  chunk.set_body_chunk("data");
  writer->Write(chunk);
  writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(QueueServiceTest, EnqueueOfAnOversizedBodyIsRefusedEarly) {
  tern::v1::EnqueueResponse enq;
  grpc::ClientContext ctx;
  Deadline(ctx);
  auto writer = queue_stub_->Enqueue(&ctx, &enq);
  tern::v1::EnqueueRequest first;
  first.mutable_header()->mutable_envelope()->add_recipients()->set_address("r@dest.example");
  first.mutable_header()->set_expected_size(kMaxBodyBytes + 1);
  writer->Write(first);
  writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(QueueServiceTest, HostFlagsProgressAndAdminWatchOverGrpc) {
  // Queue.PutHostFlags / GetHostFlags.
  tern::v1::PutHostFlagsRequest put;
  auto* f = put.add_flags();
  f->set_host("192.0.2.9");
  f->set_flag("broken_tls");
  f->set_expires_unix_ms(SystemClock::Get()->NowUnixMs() + 60'000);
  tern::v1::PutHostFlagsResponse put_resp;
  grpc::ClientContext c1;
  Deadline(c1);
  ASSERT_TRUE(queue_stub_->PutHostFlags(&c1, put, &put_resp).ok());
  tern::v1::GetHostFlagsRequest get;
  get.set_flag("broken_tls");
  tern::v1::GetHostFlagsResponse got;
  grpc::ClientContext c2;
  Deadline(c2);
  ASSERT_TRUE(queue_stub_->GetHostFlags(&c2, get, &got).ok());
  ASSERT_EQ(got.flags_size(), 1);
  EXPECT_EQ(got.flags(0).host(), "192.0.2.9");

  // Queue.Progress is served (a stale token is simply ignored).
  tern::v1::ProgressRequest progress;
  auto* item = progress.add_items();
  item->set_delivery_id("none.1");
  item->set_lease_token("t");
  item->set_data_sent(true);
  tern::v1::ProgressResponse progress_resp;
  grpc::ClientContext c3;
  Deadline(c3);
  EXPECT_TRUE(queue_stub_->Progress(&c3, progress, &progress_resp).ok());

  // Admin (a sync service beside the callback Queue service): pause, then
  // the event log from the oldest event without following.
  tern::v1::PauseResponse paused;
  grpc::ClientContext c4;
  Deadline(c4);
  ASSERT_TRUE(admin_stub_->Pause(&c4, tern::v1::PauseRequest(), &paused).ok());
  EXPECT_TRUE(paused.paused());
  tern::v1::WatchRequest watch;
  watch.set_from_oldest(true);
  watch.set_no_follow(true);
  grpc::ClientContext c5;
  Deadline(c5);
  auto reader = admin_stub_->Watch(&c5, watch);
  tern::v1::QueueEvent ev;
  std::vector<std::string> details;
  while (reader->Read(&ev)) {
    details.push_back(ev.detail());
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(details, std::vector<std::string>{"pause"});

  // A Watch resumed from a cursor follows: it sees an event committed after
  // it started (the cursor makes this deterministic if the call is slow).
  grpc::ClientContext c6;
  Deadline(c6);
  tern::v1::WatchRequest live;
  live.set_after_seq(1);
  auto live_reader = admin_stub_->Watch(&c6, live);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  grpc::ClientContext c7;
  Deadline(c7);
  ASSERT_TRUE(admin_stub_->Resume(&c7, tern::v1::PauseRequest(), &paused).ok());
  EXPECT_FALSE(paused.paused());
  ASSERT_TRUE(live_reader->Read(&ev));
  EXPECT_EQ(ev.detail(), "resume");
  EXPECT_EQ(ev.seq(), 2u);
  c6.TryCancel();
}

TEST_F(QueueServiceTest, TlsReportCountsAndAdminListAndSendOverGrpc) {
  tern::v1::RecordTlsResultsRequest req;
  tern::v1::TlsRptCount* c = req.add_counts();
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  c->set_day(std::chrono::duration_cast<std::chrono::seconds>(now).count() / 86400);  // today, UTC
  c->set_policy_domain("example.com");
  c->set_policy_type("no-policy-found");
  c->set_count(2);
  c->add_rua("mailto:tlsrpt@example.com");
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    tern::v1::RecordTlsResultsResponse resp;
    ASSERT_TRUE(queue_stub_->RecordTlsResults(&ctx, req, &resp).ok());
  }
  {
    c->set_policy_type("dane");
    grpc::ClientContext ctx;
    Deadline(ctx);
    tern::v1::RecordTlsResultsResponse resp;
    EXPECT_EQ(queue_stub_->RecordTlsResults(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    tern::v1::ListTlsReportsResponse resp;
    ASSERT_TRUE(admin_stub_->ListTlsReports(&ctx, tern::v1::ListTlsReportsRequest(), &resp).ok());
    ASSERT_EQ(resp.pending_size(), 1);
    EXPECT_EQ(resp.pending(0).policy_domain(), "example.com");
    EXPECT_EQ(resp.pending(0).successful(), 2u);
  }
  {
    // [tlsrpt] is off in this queue.
    grpc::ClientContext ctx;
    Deadline(ctx);
    tern::v1::SendTlsReportsResponse resp;
    grpc::Status s = admin_stub_->SendTlsReports(&ctx, tern::v1::SendTlsReportsRequest(), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
}

}  // namespace
}  // namespace tern::queue
