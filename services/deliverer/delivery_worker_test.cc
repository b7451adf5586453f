// DeliveryWorker end to end in one process: an in-test Queue gRPC service
// hands out jobs and records reports, a fake MxResolver routes x.test to
// 127.0.0.1, and a scripted SMTP server answers there.
#include "services/deliverer/delivery_worker.h"

#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <atomic>
#include <deque>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/io_context.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/post.hpp"
#include "asio/use_awaitable.hpp"
#include "gtest/gtest.h"
#include "lib/net/connection.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/queue.grpc.pb.h"

// GCC 12 false positive on Asio coroutine frames (GCC bug 109224).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace tern::deliverer {
namespace {

using namespace std::chrono_literals;

class FakeQueue final : public v1::Queue::CallbackService {
 public:
  void AddJob(v1::DeliveryJob job) {
    absl::MutexLock lock(&mu_);
    jobs_.push_back(std::move(job));
  }
  std::vector<v1::DeliveryReport> reports() {
    absl::MutexLock lock(&mu_);
    return reports_;
  }

  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* ctx, const v1::LeaseRequest* req,
                                  v1::LeaseResponse* resp) override {
    {
      absl::MutexLock lock(&mu_);
      EXPECT_EQ(req->kind(), v1::JOB_KIND_DELIVERY);
      EXPECT_GE(req->max_jobs(), 1u);
      while (!jobs_.empty() && resp->deliveries_size() < static_cast<int>(req->max_jobs())) {
        *resp->add_deliveries() = std::move(jobs_.front());
        jobs_.pop_front();
      }
    }
    if (resp->deliveries_size() == 0) {
      std::this_thread::sleep_for(20ms);  // a short stand-in for the long poll
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Report(grpc::CallbackServerContext* ctx, const v1::ReportRequest* req,
                                   v1::ReportResponse* resp) override {
    absl::MutexLock lock(&mu_);
    for (const auto& r : req->reports()) {
      reports_.push_back(r);
      resp->add_statuses(v1::REPORT_STATUS_APPLIED);
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  absl::Mutex mu_;
  std::deque<v1::DeliveryJob> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::DeliveryReport> reports_ ABSL_GUARDED_BY(mu_);
};

class FakeResolver : public dns::MxResolver {
 public:
  explicit FakeResolver(asio::io_context& io) : io_(io) {}
  void ResolveMx(std::string domain, MxCallback done) override {
    dns::MxAnswer answer;
    if (domain == "nullmx.test") {
      answer.status = dns::LookupStatus::kNullMx;
      answer.detail = "Domain nullmx.test does not accept mail (null MX, RFC 7505)";
    } else {
      dns::MxHost host;
      host.name = "mx." + domain;
      host.preference = 10;
      host.addresses.ipv4 = {"127.0.0.1"};
      answer.hosts.push_back(host);
    }
    asio::post(io_, [done = std::move(done), answer]() mutable { done(std::move(answer)); });
  }
  void ResolveHost(std::string, HostCallback done) override {
    asio::post(io_, [done = std::move(done)]() mutable { done(dns::HostAnswer()); });
  }

 private:
  asio::io_context& io_;
};

asio::awaitable<void> Say(net::Connection& c, std::string line) {
  line += "\r\n";
  (void)co_await c.Write(line, 5s);
}

// Accepts SMTP sessions forever: 550 for local parts starting "unknown".
asio::awaitable<void> SmtpSink(asio::ip::tcp::acceptor& acceptor, int* messages) {
  for (;;) {
    auto socket = co_await acceptor.async_accept(asio::use_awaitable);
    net::Connection c(std::move(socket));
    co_await Say(c, "220 sink");
    bool in_data = false;
    for (;;) {
      auto line = co_await c.ReadLine(1000, 5s);
      if (!line.ok()) {
        break;
      }
      const std::string& t = line->text;
      if (in_data) {
        if (t == ".") {
          in_data = false;
          ++*messages;
          co_await Say(c, "250 2.0.0 queued");
        }
      } else if (absl::StartsWith(t, "EHLO")) {
        co_await Say(c, "250-sink\r\n250 PIPELINING");
      } else if (absl::StartsWith(t, "RCPT TO:<unknown")) {
        co_await Say(c, "550 5.1.1 no such user");
      } else if (t == "DATA") {
        in_data = true;
        co_await Say(c, "354 go");
      } else if (t == "QUIT") {
        co_await Say(c, "221 bye");
        break;
      } else {
        co_await Say(c, "250 ok");
      }
    }
  }
}

v1::DeliveryJob Job(std::string id, std::string domain, std::vector<std::string> rcpts) {
  v1::DeliveryJob job;
  job.set_delivery_id(id);
  job.set_message_id("msg-" + id);
  job.set_lease_token("token-" + id);
  job.set_lease_deadline_unix_ms(absl::ToUnixMillis(absl::Now()) + 60000);
  job.set_domain(domain);
  job.set_mail_from("sender@a.test");
  for (size_t i = 0; i < rcpts.size(); ++i) {
    auto* r = job.add_recipients();
    r->set_index(static_cast<uint32_t>(i + 3));  // indices need not start at 0
    r->mutable_spec()->set_address(rcpts[i] + "@" + domain);
  }
  job.set_body("Subject: t\r\n\r\nhello\r\n");
  job.set_attempt(1);
  return job;
}

TEST(DeliveryWorker, LeasesDeliversAndReportsEveryRecipient) {
  FakeQueue queue;
  grpc::ServerBuilder builder;
  int queue_port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &queue_port);
  builder.RegisterService(&queue);
  auto server = builder.BuildAndStart();
  ASSERT_TRUE(server && queue_port > 0);

  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  int messages = 0;
  asio::co_spawn(io, SmtpSink(acceptor, &messages), asio::detached);

  DelivererConfig config;
  config.queue = absl::StrCat("127.0.0.1:", queue_port);
  config.mx_port = acceptor.local_endpoint().port();
  config.local_mx_ok = true;
  config.me = "tern.test";
  config.connect_timeout = 5s;
  queue.AddJob(Job("d1", "x.test", {"alice", "unknown1"}));
  queue.AddJob(Job("d2", "nullmx.test", {"bob"}));

  FakeResolver resolver(io);
  RoutePlanner::Options route;
  route.local_mx_ok = true;
  route.port = config.mx_port;
  DeliveryWorker worker(io, config, rpc::MakeChannel(config.queue), resolver, RoutePlanner(route));
  worker.Start();
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (queue.reports().size() < 2 && std::chrono::steady_clock::now() < deadline) {
    io.run_for(10ms);
  }
  bool stopped = false;
  worker.Stop([&] { stopped = true; });
  while (!stopped && std::chrono::steady_clock::now() < deadline) {
    io.run_for(10ms);
  }
  EXPECT_TRUE(stopped);
  server->Shutdown();

  auto reports = queue.reports();
  ASSERT_EQ(reports.size(), 2u);
  std::map<std::string, v1::DeliveryReport> by_id;
  for (auto& r : reports) {
    by_id[r.delivery_id()] = r;
  }
  const auto& d1 = by_id["d1"];
  EXPECT_EQ(d1.lease_token(), "token-d1");
  ASSERT_EQ(d1.recipients_size(), 2);
  EXPECT_EQ(d1.recipients(0).index(), 3u);
  EXPECT_EQ(d1.recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(d1.recipients(0).result().reply_code(), 250u);
  EXPECT_EQ(d1.recipients(0).result().remote_mta(), "mx.x.test");
  EXPECT_EQ(d1.recipients(0).result().remote_ip(), "127.0.0.1");
  EXPECT_EQ(d1.recipients(1).index(), 4u);
  EXPECT_EQ(d1.recipients(1).result().outcome(), v1::OUTCOME_PERMANENT);
  EXPECT_EQ(d1.recipients(1).result().enhanced_status(), "5.1.1");
  const auto& d2 = by_id["d2"];
  ASSERT_EQ(d2.recipients_size(), 1);
  EXPECT_EQ(d2.recipients(0).result().outcome(), v1::OUTCOME_PERMANENT);
  EXPECT_EQ(d2.recipients(0).result().enhanced_status(), "5.1.10");
  EXPECT_EQ(messages, 1);
}

TEST(DeliveryWorker, StopsPromptlyWhileQueueIsUnreachable) {
  uint16_t dead_port = 0;
  asio::io_context io;
  {
    asio::ip::tcp::acceptor probe(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    dead_port = probe.local_endpoint().port();
  }
  DelivererConfig config;
  config.queue = absl::StrCat("127.0.0.1:", dead_port);
  config.me = "tern.test";
  FakeResolver resolver(io);
  DeliveryWorker worker(io, config, rpc::MakeChannel(config.queue), resolver, RoutePlanner({}));
  worker.Start();
  io.run_for(500ms);
  bool stopped = false;
  const auto start = std::chrono::steady_clock::now();
  worker.Stop([&] { stopped = true; });
  while (!stopped && std::chrono::steady_clock::now() - start < 10s) {
    io.run_for(10ms);
  }
  EXPECT_TRUE(stopped);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

}  // namespace
}  // namespace tern::deliverer
