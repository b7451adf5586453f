// deliverer_bench: how many deliveries per second one DeliveryWorker makes to
// a fast local SMTP sink, with and without connection reuse.
//
// The worker is the real one (lease loop, static route, SMTP client, reporter,
// progress); only the queue is a stand-in: an in-process gRPC Queue service
// that hands out pre-built jobs (one recipient, a body of --size bytes) and
// counts the reports. Everything talks over loopback gRPC and TCP as in
// production. The clock starts at the first Lease and stops when every job
// has been reported.
//
// It also reports memory: the process's peak RSS (VmHWM: the worker plus the
// fake queue and its copies of the jobs) and the most deliveries that were
// leased but not yet reported at once (the worker's sessions in flight). For
// the many-sessions run (README.md) it raises RLIMIT_NOFILE to the hard
// limit, since every session holds a socket.
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "asio/io_context.hpp"
#include "asio/post.hpp"
#include "lib/common/log.h"
#include "lib/rpc/server_setup.h"
#include "services/deliverer/delivery_worker.h"
#include "tern/v1/queue.grpc.pb.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class BenchQueue final : public tern::v1::Queue::CallbackService {
 public:
  BenchQueue(size_t jobs, size_t body_size) : total_(jobs) {
    std::string body = "From: bench@a.test\r\nTo: rcpt@bench.test\r\nSubject: bench\r\n\r\n";
    while (body.size() < body_size) {
      body += "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n";
    }
    body.resize(body_size - 2);
    body += "\r\n";
    body_ = std::move(body);
  }

  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* ctx, const tern::v1::LeaseRequest* req,
                                  tern::v1::LeaseResponse* resp) override {
    {
      absl::MutexLock lock(&mu_);
      if (!started_) {
        started_ = true;
        start_ = Clock::now();
      }
      const int64_t deadline = absl::ToUnixMillis(absl::Now()) + 600000;
      while (handed_ < total_ && resp->deliveries_size() < static_cast<int>(req->max_jobs())) {
        auto* job = resp->add_deliveries();
        const std::string id = absl::StrCat("d", handed_++);
        job->set_delivery_id(id);
        job->set_message_id(absl::StrCat("m", id));
        job->set_lease_token("t");
        job->set_lease_deadline_unix_ms(deadline);
        job->set_domain("bench.test");
        job->set_mail_from("bench@a.test");
        auto* r = job->add_recipients();
        r->set_index(0);
        r->mutable_spec()->set_address("rcpt@bench.test");
        job->set_body(body_);
        job->set_attempt(1);
      }
      peak_in_flight_ = std::max(peak_in_flight_, handed_ - reported_);
    }
    if (resp->deliveries_size() == 0) {
      std::this_thread::sleep_for(5ms);  // stands in for the long poll
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Report(grpc::CallbackServerContext* ctx, const tern::v1::ReportRequest* req,
                                   tern::v1::ReportResponse* resp) override {
    absl::MutexLock lock(&mu_);
    for (const auto& r : req->reports()) {
      resp->add_statuses(tern::v1::REPORT_STATUS_APPLIED);
      for (const auto& rr : r.recipients()) {
        if (rr.result().outcome() == tern::v1::OUTCOME_DELIVERED) {
          ++delivered_;
        } else {
          ++failed_;
          if (first_failure_.empty()) {
            first_failure_ = rr.result().reply_text();
          }
        }
      }
      ++reported_;
    }
    if (reported_ >= total_ && !finished_) {
      finished_ = true;
      end_ = Clock::now();
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Progress(grpc::CallbackServerContext* ctx, const tern::v1::ProgressRequest*,
                                     tern::v1::ProgressResponse*) override {
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  bool finished() {
    absl::MutexLock lock(&mu_);
    return finished_;
  }
  void Print(const char* label) {
    absl::MutexLock lock(&mu_);
    const double secs = std::chrono::duration<double>(end_ - start_).count();
    std::printf("%s: %zu deliveries (%zu delivered, %zu failed) in %.2f s = %.0f deliveries/s\n", label, reported_,
                delivered_, failed_, secs, static_cast<double>(reported_) / secs);
    std::printf("  most deliveries in flight at once: %zu\n", peak_in_flight_);
    if (!first_failure_.empty()) {
      std::printf("  first failure: %s\n", first_failure_.c_str());
    }
  }

 private:
  absl::Mutex mu_;
  const size_t total_;
  std::string body_;
  size_t handed_ = 0;
  size_t reported_ = 0;
  size_t delivered_ = 0;
  size_t failed_ = 0;
  size_t peak_in_flight_ = 0;
  std::string first_failure_;
  bool started_ = false;
  bool finished_ = false;
  Clock::time_point start_;
  Clock::time_point end_;
};

// Static routes answer everything; the resolver is never asked.
class NoResolver : public tern::dns::MxResolver {
 public:
  void ResolveMx(std::string, MxCallback done) override {
    tern::dns::MxAnswer a;
    a.status = tern::dns::LookupStatus::kTempFail;
    done(std::move(a));
  }
  void ResolveHost(std::string, HostCallback done) override { done(tern::dns::HostAnswer()); }
  void ResolveTxt(std::string, TxtCallback done) override { done(tern::dns::TxtAnswer()); }
  void ResolveTlsa(std::string, TlsaCallback done) override { done(tern::dns::TlsaAnswer()); }
};

// A "VmRSS:"/"VmHWM:" line of /proc/self/status, in KiB (0 if absent).
long StatusKib(const char* key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) == 0) {
      return std::strtol(line.c_str() + std::strlen(key), nullptr, 10);
    }
  }
  return 0;
}

// Every session holds a socket: allow as many as the hard limit permits.
rlim_t RaiseFileLimit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  getrlimit(RLIMIT_NOFILE, &lim);
  return lim.rlim_cur;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"deliverer_bench: one DeliveryWorker against an SMTP sink"};
  std::string sink = "127.0.0.1:2525";
  size_t messages = 20000;
  size_t size = 2048;
  uint32_t concurrency = 200;
  int pool_timeout = 50;
  int call_batch_wait_ms = 5;
  // 0, not the deliverer's default of 32: the figures below were measured
  // with one connection per delivery slot, and the 10,000-session run needs
  // them all.
  uint32_t connections_max = 0;
  app.add_option("--sink", sink, "host:port of the SMTP sink (IPv4)")->capture_default_str();
  app.add_option("--messages", messages, "deliveries to make")->capture_default_str();
  app.add_option("--size", size, "message size in bytes")->capture_default_str();
  app.add_option("--concurrency", concurrency, "concurrency_max of the worker")->capture_default_str();
  app.add_option("--pool-timeout", pool_timeout, "pool_timeout seconds; 0 = no connection reuse")
      ->capture_default_str();
  app.add_option("--call-batch-wait-ms", call_batch_wait_ms, "call_batch_wait_ms; 0 = Lease/Report unpaced")
      ->capture_default_str();
  app.add_option("--destination-connections-max", connections_max,
                 "destination_connections_max; 0 = one connection per delivery if need be")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const rlim_t files = RaiseFileLimit();
  if (files < concurrency + 256) {
    std::fprintf(stderr, "warning: RLIMIT_NOFILE is %lu, below --concurrency + 256; raise ulimit -Hn\n",
                 static_cast<unsigned long>(files));
  }

  tern::log::Init("bench", tern::log::Level::kWarn, tern::log::Format::kDefault);
  BenchQueue queue(messages, std::max<size_t>(size, 128));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&queue);
  auto server = builder.BuildAndStart();
  if (!server) {
    std::fprintf(stderr, "cannot start the fake queue\n");
    return 1;
  }

  tern::deliverer::DelivererConfig config;
  config.queues = {absl::StrCat("127.0.0.1:", port)};
  config.me = "bench.tern.test";
  config.local_mx_ok = true;
  config.concurrency_max = concurrency;
  config.lease_batch = std::min<uint32_t>(concurrency, 256);
  config.pool_timeout = std::chrono::seconds(pool_timeout);
  config.call_batch_wait = std::chrono::milliseconds(call_batch_wait_ms);
  config.pool_max_messages = 1000000;
  config.destination_connections_max = connections_max;
  config.enable_tls = false;
  auto ini = tern::config::IniFile::Parse(absl::StrCat("[bench.test]\nhost=", sink, "\n"), "bench routes");
  auto routes = ini.ok() ? tern::deliverer::StaticRoutes::Load(*ini) : ini.status();
  if (!routes.ok()) {
    std::fprintf(stderr, "bad --sink: %s\n", std::string(routes.status().message()).c_str());
    return 1;
  }
  config.routes = *routes;

  asio::io_context io(1);
  NoResolver resolver;
  tern::deliverer::RoutePlanner::Options route;
  route.local_mx_ok = true;
  tern::deliverer::DeliveryWorker worker(io, config, {tern::rpc::MakeChannel(config.queues[0])}, resolver,
                                         tern::deliverer::RoutePlanner(route));
  worker.Start();
  const Clock::time_point limit = Clock::now() + std::chrono::minutes(10);
  while (!queue.finished() && Clock::now() < limit) {
    io.run_for(50ms);
  }
  bool stopped = false;
  worker.Stop([&] { stopped = true; });
  while (!stopped) {
    io.run_for(10ms);
  }
  queue.Print(pool_timeout > 0 ? "with connection reuse" : "without connection reuse");
  std::printf("  peak RSS (VmHWM) %.1f MiB, RSS now %.1f MiB\n", StatusKib("VmHWM:") / 1024.0,
              StatusKib("VmRSS:") / 1024.0);
  server->Shutdown();
  return queue.finished() ? 0 : 1;
}
