// DeliveryWorker end to end in one process: an in-test Queue gRPC service
// hands out jobs and records reports, a fake MxResolver routes x.test to
// 127.0.0.1, and a scripted SMTP server answers there.
#include "services/deliverer/delivery_worker.h"

#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include <openssl/evp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/experimental/as_tuple.hpp"
#include "asio/io_context.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/post.hpp"
#include "asio/steady_timer.hpp"
#include "asio/use_awaitable.hpp"
#include "gtest/gtest.h"
#include "lib/metrics/metrics.h"
#include "lib/net/connection.h"
#include "services/deliverer/dkim.h"
#include "services/deliverer/test_certs.h"
#include "lib/rpc/server_setup.h"
#include "tern/v1/hooks.grpc.pb.h"
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

  // When each Lease and Report call arrived.
  std::vector<std::chrono::steady_clock::time_point> lease_times() {
    absl::MutexLock lock(&mu_);
    return lease_times_;
  }
  std::vector<std::chrono::steady_clock::time_point> report_times() {
    absl::MutexLock lock(&mu_);
    return report_times_;
  }

  // Lease calls are taken and left unanswered (a queue shard that hangs)
  // until ReleaseLeases().
  void HangLeases() {
    absl::MutexLock lock(&mu_);
    hang_leases_ = true;
  }
  // Answers the held Lease calls (UNAVAILABLE) and holds no more. Before
  // the server shuts down, which waits for every call to be answered.
  void ReleaseLeases() {
    absl::MutexLock lock(&mu_);
    hang_leases_ = false;
    for (grpc::ServerUnaryReactor* reactor : hung_leases_) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "queue shard hung"));
    }
    hung_leases_.clear();
  }
  int lease_calls() {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(lease_times_.size());
  }

  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* ctx, const v1::LeaseRequest* req,
                                  v1::LeaseResponse* resp) override {
    {
      absl::MutexLock lock(&mu_);
      lease_times_.push_back(std::chrono::steady_clock::now());
      EXPECT_EQ(req->kind(), v1::JOB_KIND_DELIVERY);
      EXPECT_GE(req->max_jobs(), 1u);
      if (hang_leases_) {
        hung_leases_.push_back(ctx->DefaultReactor());
        return hung_leases_.back();
      }
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

  // Progress and host flags are recorded only when `full` (otherwise the
  // base class answers UNIMPLEMENTED, like a queue without them).
  bool full = false;
  std::vector<v1::DeliveryProgress> progress() {
    absl::MutexLock lock(&mu_);
    return progress_;
  }
  std::vector<v1::HostFlag> put_flags() {
    absl::MutexLock lock(&mu_);
    return put_flags_;
  }
  void AddFlag(v1::HostFlag f) {
    absl::MutexLock lock(&mu_);
    flags_.push_back(std::move(f));
  }
  int get_flags_calls() {
    absl::MutexLock lock(&mu_);
    return get_flags_calls_;
  }

  // TLS report counts as RecordTlsResults received them, merged per identity.
  std::vector<v1::TlsRptCount> tls_counts() {
    absl::MutexLock lock(&mu_);
    return tls_counts_;
  }
  uint64_t tls_sessions(const std::string& policy_type, const std::string& result_type) {
    uint64_t n = 0;
    for (const v1::TlsRptCount& c : tls_counts()) {
      n += c.policy_type() == policy_type && c.result_type() == result_type ? c.count() : 0;
    }
    return n;
  }
  grpc::ServerUnaryReactor* RecordTlsResults(grpc::CallbackServerContext* ctx, const v1::RecordTlsResultsRequest* req,
                                             v1::RecordTlsResultsResponse*) override {
    {
      absl::MutexLock lock(&mu_);
      tls_counts_.insert(tls_counts_.end(), req->counts().begin(), req->counts().end());
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Progress(grpc::CallbackServerContext* ctx, const v1::ProgressRequest* req,
                                     v1::ProgressResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (!full) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no"));
      return reactor;
    }
    absl::MutexLock lock(&mu_);
    if (progress_error_ != grpc::StatusCode::OK) {
      reactor->Finish(grpc::Status(progress_error_, "queue says no"));
      return reactor;
    }
    for (const auto& p : req->items()) {
      progress_.push_back(p);
      resp->add_statuses(progress_answer_);
    }
    // A queue that predates carried reports ignores them (and answers no
    // report_statuses); with `carry` they are applied like a Report's.
    if (carry) {
      for (const auto& r : req->reports()) {
        reports_.push_back(r);
        carried_.push_back(r.delivery_id());
        resp->add_report_statuses(v1::REPORT_STATUS_APPLIED);
      }
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  bool carry = false;
  // Delivery ids of the reports that came inside Progress calls.
  std::vector<std::string> carried() {
    absl::MutexLock lock(&mu_);
    return carried_;
  }
  // Progress answers this status per item, or fails the call with `error`.
  void AnswerProgress(v1::ReportStatus answer, grpc::StatusCode error = grpc::StatusCode::OK) {
    absl::MutexLock lock(&mu_);
    progress_answer_ = answer;
    progress_error_ = error;
  }
  // Report calls fail (UNAVAILABLE, as while the queue is down) until this
  // is set back to false.
  void FailReports(bool fail) {
    absl::MutexLock lock(&mu_);
    fail_reports_ = fail;
  }
  int failed_report_calls() {
    absl::MutexLock lock(&mu_);
    return failed_report_calls_;
  }
  size_t jobs_left() {
    absl::MutexLock lock(&mu_);
    return jobs_.size();
  }

  grpc::ServerUnaryReactor* PutHostFlags(grpc::CallbackServerContext* ctx, const v1::PutHostFlagsRequest* req,
                                         v1::PutHostFlagsResponse*) override {
    auto* reactor = ctx->DefaultReactor();
    absl::MutexLock lock(&mu_);
    for (const auto& f : req->flags()) {
      put_flags_.push_back(f);
    }
    reactor->Finish(full ? grpc::Status::OK : grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no"));
    return reactor;
  }

  grpc::ServerUnaryReactor* GetHostFlags(grpc::CallbackServerContext* ctx, const v1::GetHostFlagsRequest*,
                                         v1::GetHostFlagsResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    absl::MutexLock lock(&mu_);
    ++get_flags_calls_;
    if (!full) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no"));
      return reactor;
    }
    for (const auto& f : flags_) {
      *resp->add_flags() = f;
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  // GetStsPolicy calls (MTA-STS policy store lookups), answered "none".
  int get_sts_calls() {
    absl::MutexLock lock(&mu_);
    return get_sts_calls_;
  }
  grpc::ServerUnaryReactor* GetStsPolicy(grpc::CallbackServerContext* ctx, const v1::GetStsPolicyRequest*,
                                         v1::GetStsPolicyResponse* resp) override {
    {
      absl::MutexLock lock(&mu_);
      ++get_sts_calls_;
    }
    resp->set_found(false);
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  // Each Report call is answered this much later (a busy queue).
  std::chrono::milliseconds report_delay{0};

  grpc::ServerUnaryReactor* Report(grpc::CallbackServerContext* ctx, const v1::ReportRequest* req,
                                   v1::ReportResponse* resp) override {
    std::this_thread::sleep_for(report_delay);
    absl::MutexLock lock(&mu_);
    report_times_.push_back(std::chrono::steady_clock::now());
    if (fail_reports_) {
      ++failed_report_calls_;
      auto* reactor = ctx->DefaultReactor();
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "queue down"));
      return reactor;
    }
    for (const auto& r : req->reports()) {
      reports_.push_back(r);
      const bool stale = stale_reports_ > 0;
      stale_reports_ -= stale ? 1 : 0;
      resp->add_statuses(stale ? v1::REPORT_STATUS_STALE_LEASE : v1::REPORT_STATUS_APPLIED);
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  absl::Mutex mu_;
  std::deque<v1::DeliveryJob> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::chrono::steady_clock::time_point> lease_times_ ABSL_GUARDED_BY(mu_);
  std::vector<std::chrono::steady_clock::time_point> report_times_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::DeliveryReport> reports_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::DeliveryProgress> progress_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> carried_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::HostFlag> put_flags_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::TlsRptCount> tls_counts_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::HostFlag> flags_ ABSL_GUARDED_BY(mu_);
  int get_flags_calls_ ABSL_GUARDED_BY(mu_) = 0;
  v1::ReportStatus progress_answer_ ABSL_GUARDED_BY(mu_) = v1::REPORT_STATUS_APPLIED;
  grpc::StatusCode progress_error_ ABSL_GUARDED_BY(mu_) = grpc::StatusCode::OK;
  bool fail_reports_ ABSL_GUARDED_BY(mu_) = false;
  int failed_report_calls_ ABSL_GUARDED_BY(mu_) = 0;
  bool hang_leases_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<grpc::ServerUnaryReactor*> hung_leases_ ABSL_GUARDED_BY(mu_);
  int get_sts_calls_ ABSL_GUARDED_BY(mu_) = 0;

 public:
  // The next `n` reports are refused as stale (a queue that restarted and
  // gave the jobs out again).
  void RefuseNextReports(int n) {
    absl::MutexLock lock(&mu_);
    stale_reports_ = n;
  }

 private:
  int stale_reports_ ABSL_GUARDED_BY(mu_) = 0;
};

class FakeResolver : public dns::MxResolver {
 public:
  explicit FakeResolver(asio::io_context& io) : io_(io) {}
  void ResolveMx(std::string domain, MxCallback done) override {
    ++mx_queries;
    dns::MxAnswer answer;
    if (domain == "nullmx.test" || domain == "routed.test") {
      answer.status = dns::LookupStatus::kNullMx;
      answer.detail = "Domain nullmx.test does not accept mail (null MX, RFC 7505)";
    } else {
      dns::MxHost host;
      host.name = "mx." + domain;
      host.preference = 10;
      host.addresses.ipv4 = {"127.0.0.1"};
      host.addresses.ipv4.insert(host.addresses.ipv4.end(), more_ipv4.begin(), more_ipv4.end());
      host.addresses.secure = secure_hosts;
      if (auto it = canonical.find(host.name); it != canonical.end()) {
        host.addresses.canonical_name = it->second;
      }
      answer.hosts.push_back(host);
      answer.secure = secure_domains.contains(domain);
    }
    asio::post(io_, [done = std::move(done), answer]() mutable { done(std::move(answer)); });
  }
  // TLSA answers by owner name; NODATA (not validated) for the rest.
  void ResolveTlsa(std::string name, TlsaCallback done) override {
    ++tlsa_queries;
    dns::TlsaAnswer answer;
    if (auto it = tlsa.find(name); it != tlsa.end()) {
      answer = it->second;
    }
    asio::post(io_, [done = std::move(done), answer]() mutable { done(std::move(answer)); });
  }
  void ResolveHost(std::string host, HostCallback done) override {
    dns::HostAnswer answer;
    if (host.rfind("mta-sts.", 0) == 0 || host == "reports.x.test" || host == "other.x.test") {
      answer.ipv4 = {"127.0.0.1"};  // where a test's HttpsResponder listens
    }
    asio::post(io_, [done = std::move(done), answer]() mutable { done(std::move(answer)); });
  }
  // No test domain publishes MTA-STS unless a test says so.
  void ResolveTxt(std::string name, TxtCallback done) override {
    ++txt_queries;
    dns::TxtAnswer answer;
    if (auto it = txt.find(name); it != txt.end()) {
      answer.records = it->second;
    } else {
      answer.status = dns::LookupStatus::kNoSuchDomain;
    }
    asio::post(io_, [done = std::move(done), answer]() mutable { done(std::move(answer)); });
  }

  std::map<std::string, std::vector<std::string>> txt;
  int txt_queries = 0;
  int mx_queries = 0;
  // Domains whose MX answer comes back validated (AD), and whether MX host
  // addresses do.
  std::set<std::string> secure_domains;
  bool secure_hosts = true;
  // Further addresses of every MX host, tried after 127.0.0.1 in this order.
  std::vector<std::string> more_ipv4;
  std::map<std::string, dns::TlsaAnswer> tlsa;
  int tlsa_queries = 0;
  // MX host name -> where its (validated) CNAME chain ends.
  std::map<std::string, std::string> canonical;

 private:
  asio::io_context& io_;
};

asio::awaitable<void> Say(net::Connection& c, std::string line) {
  line += "\r\n";
  (void)co_await c.Write(line, 5s);
}

struct SinkStats {
  int messages = 0;
  int connections = 0;
  int starttls = 0;
  int quits = 0;
  int rsets = 0;
  std::vector<std::string> commands;
  std::vector<size_t> probed_at_body;  // SinkOptions::probe() when a message's text began
  int body_lines = 0;                   // message text lines received, all messages
  std::vector<std::string> header_blocks;  // each message's header lines, joined with CRLF
};

struct SinkOptions {
  std::string ehlo = "250-sink\r\n250-PIPELINING\r\n250 AUTH PLAIN";
  bool break_tls = false;  // 220 to STARTTLS, then garbage instead of TLS
  // Set: a real TLS handshake after the 220 to STARTTLS, with this context.
  std::shared_ptr<asio::ssl::context> tls;
  // Called when a message's text begins, after the 354 (e.g. how many
  // progress items the queue holds). Capture only pointers (GCC 12
  // coroutine argument bug).
  std::function<size_t()> probe;
  // The reply to the final dot of a message with a recipient whose local
  // part starts with "slow" comes this much later.
  std::chrono::milliseconds slow_dot{100};
  // The first this many sessions get a 421 greeting and are hung up on.
  int refuse_first = 0;
  // BDAT gets "500 command not recognized", as from a server (or a
  // middlebox in front of it) that lists CHUNKING without taking BDAT;
  // the message text that follows is then read as commands.
  bool refuse_bdat = false;
};

asio::awaitable<void> SinkSession(asio::ip::tcp::socket socket, SinkOptions options, SinkStats* stats) {
  net::Connection c(std::move(socket));
  ++stats->connections;
  if (stats->connections <= options.refuse_first) {
    co_await Say(c, "421 4.3.2 too busy");
    co_return;
  }
  co_await Say(c, "220 sink");
  bool in_data = false;
  bool body_started = false;
  int accepted = 0;  // recipients of the open transaction
  bool slow = false;  // the open transaction has a "slow" recipient
  bool in_headers = false;
  for (;;) {
    auto line = co_await c.ReadLine(1000, 5s);
    if (!line.ok()) {
      break;
    }
    const std::string& t = line->text;
    if (in_data) {
      if (!body_started) {
        body_started = true;
        in_headers = true;
        stats->header_blocks.emplace_back();
        if (options.probe) {
          stats->probed_at_body.push_back(options.probe());
        }
      }
      if (in_headers && (t.empty() || t == ".")) {
        in_headers = false;
      } else if (in_headers) {
        absl::StrAppend(&stats->header_blocks.back(), t, "\r\n");
      }
      if (t != ".") {
        ++stats->body_lines;
      }
      if (t == ".") {
        in_data = false;
        ++stats->messages;
        if (slow) {
          asio::steady_timer wait(co_await asio::this_coro::executor, options.slow_dot);
          co_await wait.async_wait(asio::use_awaitable);
        }
        co_await Say(c, "250 2.0.0 queued");
      }
      continue;
    }
    stats->commands.push_back(t);
    if (absl::StartsWith(t, "EHLO")) {
      co_await Say(c, options.ehlo);
    } else if (t == "STARTTLS") {
      ++stats->starttls;
      co_await Say(c, "220 go ahead");
      if (options.break_tls) {
        co_await Say(c, "not tls at all");
        c.Abort();
        break;
      }
      if (options.tls && !(co_await c.StartTlsServer(options.tls, 5s)).ok()) {
        break;
      }
    } else if (absl::StartsWith(t, "AUTH")) {
      co_await Say(c, "235 2.7.0 ok");
    } else if (absl::StartsWith(t, "RCPT TO:<unknown")) {
      co_await Say(c, "550 5.1.1 no such user");
    } else if (absl::StartsWith(t, "RCPT")) {
      ++accepted;
      slow = slow || absl::StartsWith(t, "RCPT TO:<slow");
      co_await Say(c, "250 ok");
    } else if (t == "DATA") {
      if (accepted == 0) {  // as a real server answers a pipelined DATA
        co_await Say(c, "554 5.5.1 no valid recipients");
        continue;
      }
      in_data = true;
      body_started = false;
      accepted = 0;
      co_await Say(c, "354 go");
    } else if (absl::StartsWith(t, "MAIL")) {
      accepted = 0;
      slow = false;
      co_await Say(c, "250 ok");
    } else if (t == "RSET") {
      accepted = 0;
      slow = false;
      ++stats->rsets;
      co_await Say(c, "250 ok");
    } else if (t == "QUIT") {
      ++stats->quits;
      co_await Say(c, "221 bye");
      break;
    } else if (absl::StartsWith(t, "BDAT") && options.refuse_bdat) {
      co_await Say(c, "500 5.5.2 Error: command not recognized");
    } else {
      co_await Say(c, "250 ok");
    }
  }
}

// Accepts SMTP sessions until the acceptor closes: 550 for local parts
// starting "unknown".
asio::awaitable<void> SmtpSink(asio::ip::tcp::acceptor& acceptor, SinkStats* stats, SinkOptions options = {}) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::experimental::as_tuple(asio::use_awaitable));
    if (ec) {
      co_return;
    }
    asio::co_spawn(acceptor.get_executor(), SinkSession(std::move(socket), options, stats), asio::detached);
  }
}

// One channel per queue shard of `config`, in order (what main.cc makes).
std::vector<std::shared_ptr<grpc::Channel>> ChannelsTo(const DelivererConfig& config) {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (const std::string& target : config.queues) {
    channels.push_back(rpc::MakeChannel(target));
  }
  return channels;
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
  SinkStats stats;
  asio::co_spawn(io, SmtpSink(acceptor, &stats), asio::detached);

  DelivererConfig config;
  config.queues = {absl::StrCat("127.0.0.1:", queue_port)};
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
  DeliveryWorker worker(io, config, ChannelsTo(config), resolver, RoutePlanner(route));
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
  EXPECT_EQ(stats.messages, 1);
}

// One queue (AddShard: two shards), one sink, one worker; tests tweak
// `config` before Start().
struct Harness {
  explicit Harness(SinkOptions sink = {}) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &queue_port);
    builder.RegisterService(&queue);
    server = builder.BuildAndStart();
    asio::co_spawn(io, SmtpSink(acceptor, &stats, std::move(sink)), asio::detached);
    config.queues = {absl::StrCat("127.0.0.1:", queue_port)};
    config.mx_port = acceptor.local_endpoint().port();
    config.local_mx_ok = true;
    config.me = "tern.test";
    config.connect_timeout = 5s;
    config.timeouts.connect = 5s;
    config.host_flags_refresh = 1s;
  }
  ~Harness() {
    if (worker) {
      Stop();
    }
    if (server2) {
      queue2->ReleaseLeases();
      server2->Shutdown();
    }
    queue.ReleaseLeases();
    server->Shutdown();
  }
  // A second queue shard, queue2 on its own port, listed after the first.
  void AddShard() {
    queue2 = std::make_unique<FakeQueue>();
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(queue2.get());
    server2 = builder.BuildAndStart();
    ASSERT_TRUE(server2 && port > 0);
    config.queues.push_back(absl::StrCat("127.0.0.1:", port));
  }
  void Start() {
    RoutePlanner::Options route;
    route.local_mx_ok = true;
    route.port = config.mx_port;
    worker = std::make_unique<DeliveryWorker>(io, config, ChannelsTo(config), resolver, RoutePlanner(route));
    worker->Start();
  }
  // Starts with `flag` on 127.0.0.1 already in the queue's shared list (as
  // another deliverer left it there), fetched and applied before any job.
  void StartWithSharedFlag(const std::string& flag, const std::string& reason = "") {
    queue.full = true;
    v1::HostFlag f;
    f.set_host("127.0.0.1");
    f.set_flag(flag);
    f.set_reason(reason);
    f.set_expires_unix_ms(absl::ToUnixMillis(absl::Now()) + 3600000);
    queue.AddFlag(f);
    Start();
    ASSERT_TRUE(RunUntil([&] { return queue.get_flags_calls() > 0; }));
    io.run_for(100ms);  // the answer is applied on the worker's executor
  }
  bool RunUntil(const std::function<bool()>& done, std::chrono::seconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      io.run_for(10ms);
    }
    return done();
  }
  void Stop() {
    bool stopped = false;
    worker->Stop([&] { stopped = true; });
    RunUntil([&] { return stopped; });
    worker.reset();
  }
  std::map<std::string, v1::DeliveryReport> ReportsById() {
    std::map<std::string, v1::DeliveryReport> out;
    for (auto& r : queue.reports()) {
      out[r.delivery_id()] = r;
    }
    return out;
  }

  FakeQueue queue;
  int queue_port = 0;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<FakeQueue> queue2;  // AddShard
  std::unique_ptr<grpc::Server> server2;
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor{io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
  SinkStats stats;
  DelivererConfig config;
  FakeResolver resolver{io};
  std::unique_ptr<DeliveryWorker> worker;
};

TEST(DeliveryWorker, StaticRouteIsUsedInsteadOfMxAndReportsTheDeliveryFacts) {
  Harness h;
  auto ini = config::IniFile::Parse(
      absl::StrCat("[routed.test]\nhost=127.0.0.1:", h.config.mx_port, "\nauth_user=u\nauth_pass=p\n"), "routes");
  ASSERT_TRUE(ini.ok());
  auto routes = StaticRoutes::Load(*ini);
  ASSERT_TRUE(routes.ok()) << routes.status();
  h.config.routes = *routes;
  h.config.mx_port = 1;  // a DNS MX would go nowhere: the route's port must win
  h.queue.AddJob(Job("r1", "routed.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  const v1::RecipientResult res = h.queue.reports()[0].recipients(0).result();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_EQ(res.remote_ip(), "127.0.0.1");
  EXPECT_EQ(res.remote_port(), static_cast<uint32_t>(h.acceptor.local_endpoint().port()));
  EXPECT_EQ(res.mode(), "SMTP");
  EXPECT_EQ(res.auth_mechanism(), "PLAIN");
  EXPECT_FALSE(res.ambiguous());
  EXPECT_EQ(h.stats.messages, 1);
}

// SIGHUP (DeliveryWorker::Reload): a route added to outbound_routes.ini
// carries the deliveries that start after the reload.
TEST(DeliveryWorker, AReloadedConfigAppliesToDeliveriesThatStartAfterIt) {
  Harness h;
  h.queue.AddJob(Job("before", "routed.test", {"alice"}));  // null MX, no route yet
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  EXPECT_EQ(h.queue.reports()[0].recipients(0).result().outcome(), v1::OUTCOME_PERMANENT);
  EXPECT_EQ(h.stats.messages, 0);

  DelivererConfig next = h.config;
  auto ini = config::IniFile::Parse(absl::StrCat("[routed.test]\nhost=127.0.0.1:", h.config.mx_port, "\n"), "routes");
  ASSERT_TRUE(ini.ok());
  auto routes = StaticRoutes::Load(*ini);
  ASSERT_TRUE(routes.ok()) << routes.status();
  next.routes = *routes;
  next.local_mx_ok = true;  // as the harness's planner has it
  h.worker->Reload(next);
  for (const char* id : {"after1", "after2", "after3"}) {
    h.queue.AddJob(Job(id, "routed.test", {"bob"}));
  }
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 4; }));
  for (size_t i = 1; i < 4; ++i) {
    const v1::RecipientResult res = h.queue.reports()[i].recipients(0).result();
    EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
    EXPECT_EQ(res.remote_port(), static_cast<uint32_t>(h.acceptor.local_endpoint().port()));
  }
  EXPECT_EQ(h.stats.messages, 3);
}

// smtp_forward.ini with domain_selector=mail_from: the sender's route
// carries its mail whatever the recipient domain.
TEST(DeliveryWorker, ASenderRouteCarriesItsSendersMailToAnyRecipientDomain) {
  Harness h;
  auto ini = config::IniFile::Parse(absl::StrCat("[a.test]\nhost=127.0.0.1:", h.config.mx_port, "\n"), "routes");
  ASSERT_TRUE(ini.ok());
  auto routes = StaticRoutes::Load(*ini);
  ASSERT_TRUE(routes.ok()) << routes.status();
  h.config.sender_routes = *routes;  // Job's MAIL FROM is sender@a.test
  h.config.mx_port = 1;              // a DNS MX would go nowhere
  h.queue.AddJob(Job("s1", "elsewhere.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  const v1::RecipientResult res = h.queue.reports()[0].recipients(0).result();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_EQ(res.remote_port(), static_cast<uint32_t>(h.acceptor.local_endpoint().port()));
  EXPECT_EQ(h.stats.messages, 1);
}

TEST(DeliveryWorker, RouteToALoopbackLiteralIsRefusedWithoutLocalMxOk) {
  Harness h;
  auto ini = config::IniFile::Parse("[routed.test]\nhost=127.0.0.1\n", "routes");
  ASSERT_TRUE(ini.ok());
  h.config.routes = *StaticRoutes::Load(*ini);
  h.queue.AddJob(Job("r2", "routed.test", {"alice"}));
  RoutePlanner::Options strict;
  strict.local_mx_ok = false;
  h.worker = std::make_unique<DeliveryWorker>(h.io, h.config, ChannelsTo(h.config), h.resolver,
                                              RoutePlanner(strict));
  h.worker->Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  const v1::RecipientResult res = h.queue.reports()[0].recipients(0).result();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT);
  EXPECT_EQ(res.enhanced_status(), "4.4.4");
  EXPECT_NE(res.reply_text().find("local_mx_ok=false"), std::string::npos) << res.reply_text();
  EXPECT_EQ(h.stats.connections, 0);
}

// Turns DKIM signing on in `config` with a new key (Ed25519, else RSA-2048)
// for a.test, Job's MAIL FROM domain (its body has no From), selector
// "sel", signing on `threads` threads; false if OpenSSL made no key.
bool EnableDkim(DelivererConfig& config, bool ed25519, uint32_t threads) {
  DkimKey key;
  key.domain = "a.test";
  key.selector = "sel";
  key.file = "test key";
  key.ed25519 = ed25519;
  key.pkey.reset(ed25519 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")
                         : EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}),
                 EVP_PKEY_free);
  if (key.pkey == nullptr) {
    return false;
  }
  config.dkim.enabled = true;
  config.dkim.headers = DkimConfig::DefaultHeaders();
  config.dkim.keys["a.test"] = std::move(key);
  config.dkim_threads = threads;
  return true;
}

// dkim_threads makes the signatures on threads of their own, 0 on the event
// loop: either way every message leaves with its DKIM-Signature field first.
TEST(DeliveryWorker, MessagesLeaveDkimSignedWhetherSignedOnThreadsOrOnTheEventLoop) {
  for (uint32_t threads : {2u, 0u}) {
    SCOPED_TRACE(threads);
    Harness h;
    ASSERT_TRUE(EnableDkim(h.config, /*ed25519=*/true, threads));
    constexpr size_t kJobs = 6;
    for (size_t i = 0; i < kJobs; ++i) {
      h.queue.AddJob(Job(absl::StrCat("k", i), absl::StrCat("d", i % 3, ".test"), {"alice"}));
    }
    h.Start();
    ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == kJobs; }));
    for (const v1::DeliveryReport& report : h.queue.reports()) {
      EXPECT_EQ(report.recipients(0).result().outcome(), v1::OUTCOME_DELIVERED) << report.delivery_id();
    }
    ASSERT_EQ(h.stats.header_blocks.size(), kJobs);
    for (const std::string& block : h.stats.header_blocks) {
      EXPECT_TRUE(absl::StartsWith(block, "DKIM-Signature: v=1;")) << block;
      EXPECT_NE(block.find("a=ed25519-sha256;"), std::string::npos) << block;
      EXPECT_NE(block.find("d=a.test;"), std::string::npos) << block;
      EXPECT_NE(block.find("s=sel;"), std::string::npos) << block;
      EXPECT_TRUE(absl::EndsWith(block, "\r\nSubject: t\r\n")) << block;
    }
  }
}

// A message's deliveries to several domains, leased together, send one
// signature: the first delivery makes it, the others wait for it and reuse
// it; a retry later finds it kept.
TEST(DeliveryWorker, DeliveriesOfOneMessageShareOneDkimSignature) {
  for (uint32_t threads : {2u, 0u}) {
    SCOPED_TRACE(threads);
    metrics::Counter& reused =
        metrics::Registry::Global().GetCounter("tern_deliverer_dkim_reused_total", "", {});
    const uint64_t reused_before = reused.value();
    Harness h;
    ASSERT_TRUE(EnableDkim(h.config, /*ed25519=*/false, threads));
    for (int i = 0; i < 3; ++i) {
      v1::DeliveryJob job = Job(absl::StrCat("s", threads, "-", i), absl::StrCat("d", i, ".test"), {"alice"});
      job.set_message_id(absl::StrCat("msg-shared-", threads));
      h.queue.AddJob(job);
    }
    v1::DeliveryJob other = Job(absl::StrCat("o", threads), "d0.test", {"bob"});
    other.set_body("Subject: another\r\n\r\nhello\r\n");
    h.queue.AddJob(other);  // another message: a signature of its own
    h.Start();
    ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 4; }));
    // A retry of the shared message's first delivery, after the others.
    v1::DeliveryJob retry = Job(absl::StrCat("r", threads), "d0.test", {"carol"});
    retry.set_message_id(absl::StrCat("msg-shared-", threads));
    h.queue.AddJob(retry);
    ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 5; }));
    ASSERT_EQ(h.stats.header_blocks.size(), 5u);
    std::set<std::string> signatures(h.stats.header_blocks.begin(), h.stats.header_blocks.end());
    EXPECT_EQ(signatures.size(), 2u);  // one per message
    for (const std::string& block : h.stats.header_blocks) {
      EXPECT_TRUE(absl::StartsWith(block, "DKIM-Signature: v=1; a=rsa-sha256;")) << block;
    }
    EXPECT_EQ(reused.value() - reused_before, 3u);  // two of the first three, and the retry
  }
}

// SIGHUP (DeliveryWorker::ReloadDkim): a rotated key signs from then on,
// also a retry of a message signed before; signing can be turned on (its
// threads started then) and off without a restart.
TEST(DeliveryWorker, ReloadedDkimKeysSignEveryLaterMessageIncludingRetries) {
  for (uint32_t threads : {2u, 0u}) {
    SCOPED_TRACE(threads);
    Harness h;
    h.config.dkim_threads = threads;  // signing off at the start
    h.queue.AddJob(Job(absl::StrCat("u", threads), "d0.test", {"alice"}));
    h.Start();
    ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));

    DelivererConfig rsa;
    ASSERT_TRUE(EnableDkim(rsa, /*ed25519=*/false, threads));
    h.worker->ReloadDkim(rsa.dkim);
    v1::DeliveryJob first = Job(absl::StrCat("f", threads), "d0.test", {"bob"});
    first.set_message_id(absl::StrCat("msg-rotated-", threads));
    h.queue.AddJob(first);
    ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));

    DelivererConfig rotated;
    ASSERT_TRUE(EnableDkim(rotated, /*ed25519=*/true, threads));
    rotated.dkim.keys["a.test"].selector = "sel2";
    h.worker->ReloadDkim(rotated.dkim);
    v1::DeliveryJob retry = Job(absl::StrCat("r", threads), "d1.test", {"carol"});
    retry.set_message_id(absl::StrCat("msg-rotated-", threads));  // the same message, signed before
    h.queue.AddJob(retry);
    ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 3; }));

    h.worker->ReloadDkim(DkimConfig{});  // dkim.ini enabled=false
    h.queue.AddJob(Job(absl::StrCat("o", threads), "d0.test", {"dave"}));
    ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 4; }));

    ASSERT_EQ(h.stats.header_blocks.size(), 4u);
    EXPECT_FALSE(absl::StrContains(h.stats.header_blocks[0], "DKIM-Signature:"));
    EXPECT_TRUE(absl::StartsWith(h.stats.header_blocks[1], "DKIM-Signature: v=1; a=rsa-sha256;"));
    EXPECT_TRUE(absl::StrContains(h.stats.header_blocks[1], "s=sel;"));
    EXPECT_TRUE(absl::StartsWith(h.stats.header_blocks[2], "DKIM-Signature: v=1; a=ed25519-sha256;"))
        << h.stats.header_blocks[2];
    EXPECT_TRUE(absl::StrContains(h.stats.header_blocks[2], "s=sel2;"));
    EXPECT_FALSE(absl::StrContains(h.stats.header_blocks[3], "DKIM-Signature:"));
  }
}

TEST(DeliveryWorker, SendsProgressBeforeTheDotAndReusesTheConnection) {
  Harness h;
  h.queue.full = true;
  h.queue.AddJob(Job("p1", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  h.queue.AddJob(Job("p2", "x.test", {"bob"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2 && h.queue.progress().size() == 2; }));
  auto progress = h.queue.progress();
  EXPECT_EQ(progress[0].delivery_id(), "p1");
  EXPECT_EQ(progress[0].lease_token(), "token-p1");
  EXPECT_TRUE(progress[0].data_sent());
  EXPECT_EQ(h.stats.connections, 1);  // pooled
  EXPECT_EQ(h.stats.rsets, 1);
  EXPECT_EQ(h.stats.quits, 0);
  h.Stop();
  EXPECT_EQ(h.stats.quits, 1);  // the idle connection is QUIT on shutdown
}

TEST(DeliveryWorker, ADeliveryWaitsForTheDestinationsOnlyConnectionLongerThanTheConnectTimeout) {
  // One connection allowed; the first message holds it 2.5 s (a slow final
  // dot), longer than connect_timeout (1 s). The second waits for it (up to
  // half of its 60 s lease) instead of failing after 1 s, and goes out on
  // the same connection.
  SinkOptions sink;
  sink.slow_dot = 2500ms;
  Harness h(sink);
  h.config.destination_connections_max = 1;
  h.config.connect_timeout = 1s;
  h.config.timeouts.connect = 1s;
  h.queue.AddJob(Job("c1", "x.test", {"slow1"}));
  h.queue.AddJob(Job("c2", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));
  auto reports = h.ReportsById();
  for (const char* id : {"c1", "c2"}) {
    ASSERT_EQ(reports[id].recipients_size(), 1) << id;
    EXPECT_EQ(reports[id].recipients(0).result().outcome(), v1::OUTCOME_DELIVERED)
        << id << ": " << reports[id].recipients(0).result().reply_text();
  }
  EXPECT_EQ(h.stats.connections, 1);
  EXPECT_EQ(h.stats.messages, 2);
}

TEST(DeliveryWorker, PoolTimeoutZeroClosesEverySession) {
  Harness h;
  h.config.pool_timeout = 0s;
  h.queue.AddJob(Job("n1", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  h.queue.AddJob(Job("n2", "x.test", {"bob"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2 && h.stats.quits == 2; }));
  EXPECT_EQ(h.stats.connections, 2);
  EXPECT_EQ(h.stats.rsets, 0);
}

TEST(DeliveryWorker, BdatRefusedWhereChunkingIsOfferedIsSentAgainWithDataAndRemembered) {
  SinkOptions sink;
  sink.ehlo = "250-sink\r\n250-PIPELINING\r\n250 CHUNKING";
  sink.refuse_bdat = true;
  Harness h(sink);
  h.config.pool_timeout = 0s;
  h.queue.AddJob(Job("c1", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1 && !h.queue.put_flags().empty(); }));
  const v1::RecipientResult res = h.queue.reports()[0].recipients(0).result();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  auto count = [&](absl::string_view prefix) {
    return std::count_if(h.stats.commands.begin(), h.stats.commands.end(),
                         [&](const std::string& c) { return absl::StartsWith(c, prefix); });
  };
  EXPECT_EQ(count("BDAT"), 1);  // the refused try
  EXPECT_EQ(count("DATA"), 1);  // and at once the same message with DATA
  EXPECT_EQ(h.stats.messages, 1);
  EXPECT_EQ(h.stats.connections, 2);  // the refused session was closed
  auto flags = h.queue.put_flags();
  EXPECT_EQ(flags[0].host(), "127.0.0.1");
  EXPECT_EQ(flags[0].flag(), "no_chunking");
  EXPECT_NE(flags[0].reason().find("refused BDAT"), std::string::npos) << flags[0].reason();
  // The next message to that address goes with DATA straight away.
  h.queue.AddJob(Job("c2", "x.test", {"bob"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));
  EXPECT_EQ(h.queue.reports()[1].recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(count("BDAT"), 1);
  EXPECT_EQ(count("DATA"), 2);
}

TEST(DeliveryWorker, BrokenTlsIsRetriedInPlainTextAndRememberedForEveryone) {
  SinkOptions sink;
  sink.ehlo = "250-sink\r\n250 STARTTLS";
  sink.break_tls = true;
  Harness h(sink);
  h.queue.full = true;
  h.config.pool_timeout = 0s;
  h.queue.AddJob(Job("t1", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1 && !h.queue.put_flags().empty(); }));
  const v1::RecipientResult res = h.queue.reports()[0].recipients(0).result();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_EQ(res.tls(), "");
  auto flags = h.queue.put_flags();
  EXPECT_EQ(flags[0].host(), "127.0.0.1");
  EXPECT_EQ(flags[0].flag(), "broken_tls");
  const int64_t week_ms = int64_t{7} * 24 * 3600 * 1000;
  EXPECT_NEAR(static_cast<double>(flags[0].expires_unix_ms()),
              static_cast<double>(absl::ToUnixMillis(absl::Now()) + week_ms), 60000.0);
  EXPECT_NE(flags[0].reason().find("TLS"), std::string::npos);
  EXPECT_EQ(h.stats.starttls, 1);
  h.queue.AddJob(Job("t2", "x.test", {"bob"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));
  EXPECT_EQ(h.stats.starttls, 1);  // remembered: no second handshake attempt
  EXPECT_EQ(h.stats.messages, 2);
}

// TLS reports (tls_reporting.h) on, flushed every second; x.test asks for
// them with `rua`.
void CountTlsFor(Harness& h, const std::string& rua) {
  h.queue.full = true;
  h.config.tlsrpt = true;
  h.config.tlsrpt_flush = 1s;
  h.resolver.txt["_smtp._tls.x.test"] = {"v=TLSRPTv1; rua=" + rua};
}

// MTA-STS (mta_sts.h): x.test publishes a policy, served over real HTTPS by
// a responder whose certificate the worker trusts through tls.ini's `ca`.
struct StsCase {
  explicit StsCase(const std::string& policy, SinkOptions sink = {}) : h(std::move(sink)) {
    const TestCerts& certs = TestCerts::Get();
    EXPECT_TRUE(certs.ok) << "openssl could not make test certificates";
    responder = std::make_unique<HttpsResponder>(h.io, ServerTls(certs.cert, certs.key));
    responder->response = absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ",
                                       policy.size(), "\r\n\r\n", policy);
    h.resolver.txt["_mta-sts.x.test"] = {"v=STSv1; id=20261123;"};
    h.config.mta_sts_port = responder->port();
    h.config.tls.ca = certs.ca;
    h.config.pool_timeout = 0s;
  }
  v1::RecipientResult DeliverOne() {
    h.queue.AddJob(Job("s1", "x.test", {"alice"}));
    h.Start();
    EXPECT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
    return h.queue.reports().empty() ? v1::RecipientResult() : h.queue.reports()[0].recipients(0).result();
  }
  Harness h;
  std::unique_ptr<HttpsResponder> responder;
};

TEST(DeliveryWorker, AnEnforcedMtaStsPolicyKeepsMailFromMxHostsItDoesNotList) {
  StsCase c("version: STSv1\r\nmode: enforce\r\nmx: mx.other.test\r\nmax_age: 86400\r\n");
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_NE(res.reply_text().find("mx.x.test: not an MX host of the MTA-STS policy of x.test (id 20261123)"),
            std::string::npos)
      << res.reply_text();
  EXPECT_EQ(c.h.stats.connections, 0);
  ASSERT_EQ(c.responder->requests.size(), 1u);
  EXPECT_NE(c.responder->requests[0].find("Host: mta-sts.x.test"), std::string::npos);
}

TEST(DeliveryWorker, AnEnforcedMtaStsPolicyRequiresStartTlsEvenWhereTlsIniDoesNot) {
  StsCase c("version: STSv1\r\nmode: enforce\r\nmx: *.x.test\r\nmax_age: 86400\r\n");
  const v1::RecipientResult res = c.DeliverOne();  // the sink offers no STARTTLS
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_NE(res.reply_text().find("TLS is required by the MTA-STS policy of x.test, but host"), std::string::npos)
      << res.reply_text();
  EXPECT_EQ(c.h.stats.messages, 0);
}

TEST(DeliveryWorker, AnEnforcedMtaStsPolicyDeliversOverVerifiedTlsAndRefusesAnUnverifiedCertificate) {
  const TestCerts& certs = TestCerts::Get();
  SinkOptions good;
  good.ehlo = "250-sink\r\n250 STARTTLS";
  good.tls = ServerTls(certs.cert, certs.key);  // signed by the trusted CA, for mx.x.test
  StsCase ok("version: STSv1\r\nmode: enforce\r\nmx: mx.x.test\r\nmax_age: 86400\r\n", good);
  const v1::RecipientResult delivered = ok.DeliverOne();
  EXPECT_EQ(delivered.outcome(), v1::OUTCOME_DELIVERED) << delivered.reply_text();
  EXPECT_NE(delivered.tls(), "");
  EXPECT_EQ(ok.h.stats.messages, 1);

  SinkOptions bad = good;
  bad.tls = ServerTls(certs.self_signed, certs.self_signed_key);
  StsCase refused("version: STSv1\r\nmode: enforce\r\nmx: mx.x.test\r\nmax_age: 86400\r\n", bad);
  const v1::RecipientResult res = refused.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_NE(res.reply_text().find("did not verify"), std::string::npos) << res.reply_text();
  EXPECT_EQ(refused.h.stats.messages, 0);
  EXPECT_TRUE(refused.h.queue.put_flags().empty()) << "a policy failure must not mark the host broken_tls";
}

TEST(DeliveryWorker, ATestingMtaStsPolicyOnlyLogsAndAnUnreachablePolicyChangesNothing) {
  StsCase testing("version: STSv1\r\nmode: testing\r\nmx: mx.other.test\r\nmax_age: 86400\r\n");
  const v1::RecipientResult res = testing.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_EQ(testing.responder->requests.size(), 1u);

  // A record, but nothing answers on the policy port: no policy, delivered.
  StsCase down("version: STSv1\r\nmode: enforce\r\nmx: mx.other.test\r\nmax_age: 86400\r\n");
  asio::ip::tcp::acceptor closed(down.h.io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  down.h.config.mta_sts_port = closed.local_endpoint().port();
  closed.close();
  const v1::RecipientResult plain = down.DeliverOne();
  EXPECT_EQ(plain.outcome(), v1::OUTCOME_DELIVERED) << plain.reply_text();
  EXPECT_TRUE(down.responder->requests.empty());
}

TEST(DeliveryWorker, TlsReportsNameTheMtaStsPolicyAndAnUntrustedCertificate) {
  const TestCerts& certs = TestCerts::Get();
  const std::string policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.x.test\r\nmax_age: 86400\r\n";
  for (bool trusted : {true, false}) {
    SinkOptions sink;
    sink.ehlo = "250-sink\r\n250 STARTTLS";
    sink.tls = trusted ? ServerTls(certs.cert, certs.key) : ServerTls(certs.self_signed, certs.self_signed_key);
    StsCase c(policy, sink);
    CountTlsFor(c.h, "mailto:r@x.test,https://r.x.test/tlsrpt");
    c.DeliverOne();
    ASSERT_TRUE(c.h.RunUntil([&] { return !c.h.queue.tls_counts().empty(); }));
    const v1::TlsRptCount count = c.h.queue.tls_counts()[0];
    EXPECT_EQ(count.policy_type(), "sts");
    EXPECT_EQ(count.result_type(), trusted ? "" : "certificate-not-trusted") << count.failure_reason_code();
    EXPECT_EQ(std::vector<std::string>(count.policy_string().begin(), count.policy_string().end()),
              (std::vector<std::string>{"version: STSv1", "mode: enforce", "mx: mx.x.test", "max_age: 86400"}));
    EXPECT_EQ(std::vector<std::string>(count.mx_host().begin(), count.mx_host().end()),
              (std::vector<std::string>{"mx.x.test"}));
    EXPECT_EQ(count.rua_size(), 2);
  }
}

TEST(DeliveryWorker, TlsReportsSayWhatAnMtaStsPolicyInTestingModeWouldHaveRefused) {
  const TestCerts& certs = TestCerts::Get();
  SinkOptions sink;
  sink.ehlo = "250-sink\r\n250 STARTTLS";
  sink.tls = ServerTls(certs.self_signed, certs.self_signed_key);
  StsCase c("version: STSv1\r\nmode: testing\r\nmx: mx.x.test\r\nmax_age: 86400\r\n", sink);
  CountTlsFor(c.h, "mailto:r@x.test");
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();  // testing: delivered anyway
  EXPECT_NE(res.tls(), "");
  ASSERT_TRUE(c.h.RunUntil([&] { return !c.h.queue.tls_counts().empty(); }));
  const v1::TlsRptCount count = c.h.queue.tls_counts()[0];
  EXPECT_EQ(count.policy_type(), "sts");
  EXPECT_EQ(count.result_type(), "certificate-not-trusted");
  EXPECT_NE(count.failure_reason_code().find("self-signed"), std::string::npos) << count.failure_reason_code();
  EXPECT_EQ(count.receiving_mx_hostname(), "mx.x.test");
}

TEST(DeliveryWorker, MtaStsOffLooksNothingUp) {
  StsCase c("version: STSv1\r\nmode: enforce\r\nmx: mx.other.test\r\nmax_age: 86400\r\n");
  c.h.config.mta_sts = false;
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_TRUE(c.responder->requests.empty());
}

// TLS reports to an https: rua (RFC 8460 §5.3): the queue's job for one
// has a single recipient whose post_url is the rua (and whose address
// repeats it), the origin as its domain, and the gzipped JSON report as its
// body. A real HTTPS server whose certificate (for reports.x.test) the
// worker trusts through tls.ini's `ca` answers the POST with `response`.
struct ReportPostCase {
  explicit ReportPostCase(const std::string& response) {
    const TestCerts& certs = TestCerts::Get();
    EXPECT_TRUE(certs.ok) << "openssl could not make test certificates";
    responder = std::make_unique<HttpsResponder>(h.io, ServerTls(certs.cert, certs.key));
    responder->response = response;
    h.config.tls.ca = certs.ca;
  }
  std::string Url(const std::string& host = "reports.x.test") const {
    return absl::StrCat("https://", host, ":", responder->port(), "/v1/tlsrpt?k=1");
  }
  // Leases a report job for `url` and returns what the queue was told.
  v1::RecipientResult PostOne(const std::string& url) {
    v1::DeliveryJob job;
    job.set_delivery_id("rpt1");
    job.set_message_id("msg-rpt1");
    job.set_lease_token("token-rpt1");
    job.set_lease_deadline_unix_ms(absl::ToUnixMillis(absl::Now()) + 60000);
    job.set_domain(absl::StrCat("https://reports.x.test:", responder->port()));
    job.set_mail_from("tlsrpt@tern.test");
    auto* r = job.add_recipients();
    r->set_index(0);
    r->mutable_spec()->set_address(url);
    r->mutable_spec()->set_post_url(url);
    job.set_body(body);
    job.set_attempt(1);
    h.queue.AddJob(job);
    h.Start();
    EXPECT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
    return h.queue.reports().empty() ? v1::RecipientResult() : h.queue.reports()[0].recipients(0).result();
  }
  static uint64_t Posts(const char* result) {
    return metrics::Registry::Global()
        .GetCounter("tern_deliverer_tlsrpt_posts_total", "", {{"result", result}})
        .value();
  }

  // A gzip header, a CRLF-dot-CRLF (never to be dot-stuffed), a NUL.
  std::string body = std::string("\x1f\x8b\x08\x00\r\n.\r\n\0report", 15);
  Harness h;
  std::unique_ptr<HttpsResponder> responder;
};

TEST(DeliveryWorker, ATlsReportWithAPostUrlIsPostedOverVerifiedHttpsAndReportedDelivered) {
  ReportPostCase c("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
  // Sessions of mail domains are counted for TLS reports; a report POST is
  // not mail: no MX, no _smtp._tls lookup, no count.
  CountTlsFor(c.h, "mailto:r@x.test");
  const uint64_t delivered_before = ReportPostCase::Posts("delivered");
  const v1::RecipientResult res = c.PostOne(c.Url());
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_EQ(res.reply_code(), 201u);
  EXPECT_EQ(res.enhanced_status(), "2.0.0");
  EXPECT_EQ(res.reply_text(), "HTTP 201 Created");
  EXPECT_EQ(res.remote_mta(), "reports.x.test");
  EXPECT_EQ(res.remote_ip(), "127.0.0.1");
  EXPECT_EQ(res.remote_port(), c.responder->port());
  EXPECT_EQ(res.mode(), "HTTPS");
  EXPECT_NE(res.tls(), "");
  EXPECT_TRUE(res.tls_verified());
  ASSERT_EQ(c.responder->requests.size(), 1u);
  const std::string& head = c.responder->requests[0];
  EXPECT_TRUE(absl::StartsWith(head, "POST /v1/tlsrpt?k=1 HTTP/1.1\n")) << head;
  EXPECT_NE(head.find(absl::StrCat("\nHost: reports.x.test:", c.responder->port(), "\n")), std::string::npos) << head;
  EXPECT_NE(head.find("\nContent-Type: application/tlsrpt+gzip\n"), std::string::npos) << head;
  EXPECT_NE(head.find("\nContent-Length: 15\n"), std::string::npos) << head;
  EXPECT_NE(head.find("\nUser-Agent: tern-deliverer\n"), std::string::npos) << head;
  EXPECT_NE(head.find("\nConnection: close\n"), std::string::npos) << head;
  EXPECT_EQ(c.responder->bodies[0], c.body);
  EXPECT_EQ(ReportPostCase::Posts("delivered"), delivered_before + 1);
  EXPECT_EQ(c.h.stats.connections, 0);
  EXPECT_EQ(c.h.resolver.mx_queries, 0);
  EXPECT_EQ(c.h.resolver.txt_queries, 0);
  EXPECT_TRUE(c.h.queue.progress().empty()) << "no data gate for a report POST";
  c.h.Stop();  // flushes TLS report counts: there are none
  EXPECT_TRUE(c.h.queue.tls_counts().empty());
}

TEST(DeliveryWorker, ATlsReportPostAnsweredWithAnotherStatusIsTransientAndSaysWhich) {
  ReportPostCase busy("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy");
  const uint64_t rejected_before = ReportPostCase::Posts("rejected");
  const v1::RecipientResult res = busy.PostOne(busy.Url());
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_EQ(res.reply_code(), 503u);
  EXPECT_EQ(res.enhanced_status(), "4.0.0");
  EXPECT_EQ(res.reply_text(), "HTTP 503 Service Unavailable");
  EXPECT_EQ(res.mode(), "HTTPS");
  EXPECT_TRUE(res.tls_verified());
  EXPECT_EQ(busy.responder->requests.size(), 1u);
  EXPECT_EQ(ReportPostCase::Posts("rejected"), rejected_before + 1);

  // A redirect is not followed (RFC 8460 §5.3 wants a 2xx from the URI).
  ReportPostCase moved("HTTP/1.1 302 Found\r\nLocation: https://reports.x.test/elsewhere\r\n\r\n");
  const v1::RecipientResult redirected = moved.PostOne(moved.Url());
  EXPECT_EQ(redirected.outcome(), v1::OUTCOME_TRANSIENT) << redirected.reply_text();
  EXPECT_EQ(redirected.reply_text(), "HTTP 302 Found (redirects are not followed)");
  EXPECT_EQ(moved.responder->requests.size(), 1u);
}

// The user's Hooks server, in process: answers CONTINUE to send_email,
// get_mx, deferred and delivered, and records which delivery each call was
// about.
class RecordingHooks final : public v1::Hooks::CallbackService {
 public:
  grpc::ServerUnaryReactor* SendEmail(grpc::CallbackServerContext* ctx, const v1::SendEmailRequest* req,
                                      v1::SendEmailResponse*) override {
    return Note(ctx, "send_email", req->delivery());
  }
  grpc::ServerUnaryReactor* GetMx(grpc::CallbackServerContext* ctx, const v1::GetMxRequest* req,
                                  v1::GetMxResponse*) override {
    return Note(ctx, "get_mx", req->delivery());
  }
  grpc::ServerUnaryReactor* Deferred(grpc::CallbackServerContext* ctx, const v1::DeferredRequest* req,
                                     v1::DeferredResponse*) override {
    return Note(ctx, "deferred", req->delivery());
  }
  grpc::ServerUnaryReactor* Delivered(grpc::CallbackServerContext* ctx, const v1::DeliveredRequest* req,
                                      v1::DeliveredResponse*) override {
    return Note(ctx, "delivered", req->delivery());
  }
  // "hook delivery_id", in arrival order.
  std::vector<std::string> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  grpc::ServerUnaryReactor* Note(grpc::CallbackServerContext* ctx, const char* hook, const v1::HookDelivery& d) {
    {
      absl::MutexLock lock(&mu_);
      calls_.push_back(absl::StrCat(hook, " ", d.delivery_id()));
    }
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  absl::Mutex mu_;
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
};

TEST(DeliveryWorker, NoHookIsAskedAboutATlsReportPost) {
  RecordingHooks hooks;
  grpc::ServerBuilder builder;
  int hooks_port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &hooks_port);
  builder.RegisterService(&hooks);
  std::unique_ptr<grpc::Server> hooks_server = builder.BuildAndStart();
  ASSERT_TRUE(hooks_server && hooks_port > 0);
  // A 503, so that a deferred hook would be asked too.
  ReportPostCase c("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
  c.h.config.hooks.address = absl::StrCat("127.0.0.1:", hooks_port);
  c.h.config.hooks.enabled = (1u << hooks::kHookCount) - 1;
  c.h.config.hooks.timeout = 5s;
  const v1::RecipientResult res = c.PostOne(c.Url());
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_EQ(c.responder->requests.size(), 1u);
  // Mail after it does ask them: the hooks are wired up.
  c.h.queue.AddJob(Job("m1", "x.test", {"alice"}));
  ASSERT_TRUE(c.h.RunUntil([&] {
    const std::vector<std::string> calls = hooks.calls();
    return std::find(calls.begin(), calls.end(), "delivered m1") != calls.end();
  }));
  EXPECT_EQ(hooks.calls(), (std::vector<std::string>{"send_email m1", "get_mx m1", "delivered m1"}));
  c.h.Stop();
  hooks_server->Shutdown();
}

TEST(DeliveryWorker, ATlsReportPostToACertificateForAnotherNameIsTransientAndSendsNothing) {
  ReportPostCase c("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  const uint64_t failed_before = ReportPostCase::Posts("failed");
  const v1::RecipientResult res = c.PostOne(c.Url("other.x.test"));  // the certificate is for reports.x.test
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_EQ(res.reply_code(), 0u);
  EXPECT_EQ(res.enhanced_status(), "4.0.0");
  EXPECT_NE(res.reply_text().find(absl::StrCat("other.x.test[127.0.0.1]:", c.responder->port())), std::string::npos)
      << res.reply_text();
  EXPECT_EQ(res.remote_mta(), "other.x.test");
  EXPECT_FALSE(res.tls_verified());
  EXPECT_TRUE(c.responder->requests.empty()) << "the report went to an unverified server";
  EXPECT_EQ(ReportPostCase::Posts("failed"), failed_before + 1);
}

TEST(DeliveryWorker, ATlsReportPostToALoopbackAddressIsRefusedWithoutLocalMxOk) {
  ReportPostCase c("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  c.h.config.local_mx_ok = false;
  const v1::RecipientResult res = c.PostOne(c.Url());
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_NE(res.reply_text().find("reports.x.test[127.0.0.1]: loopback address refused (local_mx_ok=false)"),
            std::string::npos)
      << res.reply_text();
  EXPECT_TRUE(c.responder->requests.empty());
}

TEST(DeliveryWorker, AnUnparsablePostUrlIsAPermanentFailure) {
  ReportPostCase c("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  const uint64_t invalid_before = ReportPostCase::Posts("invalid");
  const v1::RecipientResult res = c.PostOne(absl::StrCat("https://user@reports.x.test:", c.responder->port(), "/"));
  EXPECT_EQ(res.outcome(), v1::OUTCOME_PERMANENT) << res.reply_text();
  EXPECT_EQ(res.enhanced_status(), "5.1.3");
  EXPECT_NE(res.reply_text().find("user information"), std::string::npos) << res.reply_text();
  EXPECT_TRUE(c.responder->requests.empty());
  EXPECT_EQ(c.h.stats.connections, 0);
  EXPECT_EQ(ReportPostCase::Posts("invalid"), invalid_before + 1);
}

// A sink that offers STARTTLS with the CA-signed certificate for mx.x.test,
// or the self-signed one.
SinkOptions StartTlsSink(bool self_signed = false) {
  const TestCerts& certs = TestCerts::Get();
  EXPECT_TRUE(certs.ok) << "openssl could not make test certificates";
  SinkOptions sink;
  sink.ehlo = "250-sink\r\n250 STARTTLS";
  sink.tls = self_signed ? ServerTls(certs.self_signed, certs.self_signed_key) : ServerTls(certs.cert, certs.key);
  return sink;
}

// DANE (dane.h): x.test's MX answer comes back validated, and the TLSA
// records of its MX host mx.x.test are whatever the test says. The sink
// speaks real TLS with the test certificate (signed by TestCerts' CA).
struct DaneCase {
  explicit DaneCase(SinkOptions sink = StartTlsSink()) : h(std::move(sink)) {
    h.resolver.secure_domains.insert("x.test");
    h.config.pool_timeout = 0s;
    tlsa_name = absl::StrCat("_", h.config.mx_port, "._tcp.mx.x.test");
  }
  void Publish(std::vector<dns::TlsaRecord> records, bool secure = true) {
    dns::TlsaAnswer& a = h.resolver.tlsa[tlsa_name];
    a.secure = secure;
    a.records = std::move(records);
  }
  v1::RecipientResult DeliverOne() {
    h.queue.AddJob(Job("d1", "x.test", {"alice"}));
    h.Start();
    EXPECT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
    return h.queue.reports().empty() ? v1::RecipientResult() : h.queue.reports()[0].recipients(0).result();
  }
  Harness h;
  std::string tlsa_name;
};

TEST(DeliveryWorker, DaneEeRecordMatchingTheServersKeyDeliversOverTlsAsVerified) {
  const TestCerts& certs = TestCerts::Get();
  DaneCase c;
  // 3 1 1: DANE-EE, SPKI, SHA-256. The CA is not trusted (no tls.ini ca):
  // only DANE can vouch for this certificate.
  c.Publish({{3, 1, 1, Sha256(CertDer(certs.cert, true))}});
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_NE(res.tls(), "");
  EXPECT_TRUE(res.tls_verified());
  EXPECT_EQ(c.h.stats.messages, 1);
  EXPECT_EQ(c.h.resolver.tlsa_queries, 1);
}

TEST(DeliveryWorker, DaneTaRecordOfTheIssuingCaDeliversWhenTheNameMatches) {
  const TestCerts& certs = TestCerts::Get();
  DaneCase c;
  // 2 0 0: DANE-TA, the whole certificate of the CA that signed the sink's
  // certificate for mx.x.test. The sink sends only its leaf: OpenSSL
  // completes the chain with the published CA, and checks the name, as
  // DANE-TA requires (RFC 7672 §3.1.2).
  c.Publish({{2, 0, 0, CertDer(certs.ca, false)}});
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_TRUE(res.tls_verified());
}

// RFC 7672 §2.2.2: mx.x.test is an alias of mx.hosting.test.
TEST(DeliveryWorker, DaneUsesTheTlsaRecordsAtTheEndOfTheMxHostsCnameChainFirst) {
  const TestCerts& certs = TestCerts::Get();
  DaneCase c;
  c.h.resolver.canonical["mx.x.test"] = "mx.hosting.test";
  // DANE-TA at the alias target; the sink's certificate names only
  // mx.x.test, which DANE-TA accepts as the original MX name. The records
  // at the MX name itself, which match nothing, are not consulted.
  c.Publish({{3, 1, 1, Sha256("not this key")}});
  dns::TlsaAnswer& target = c.h.resolver.tlsa[absl::StrCat("_", c.h.config.mx_port, "._tcp.mx.hosting.test")];
  target.secure = true;
  target.records = {{2, 0, 0, CertDer(certs.ca, false)}};
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_TRUE(res.tls_verified());
  EXPECT_EQ(c.h.resolver.tlsa_queries, 1);
}

TEST(DeliveryWorker, DaneFallsBackToTheMxNameWhenTheCnameTargetHasNoTlsaRecords) {
  DaneCase c;
  c.h.resolver.canonical["mx.x.test"] = "mx.hosting.test";
  c.Publish({{3, 1, 1, Sha256("not this key")}});  // at the MX name: DANE applies, and refuses the sink
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_NE(res.reply_text().find("DANE TLSA records of mx.x.test"), std::string::npos) << res.reply_text();
  EXPECT_EQ(c.h.resolver.tlsa_queries, 2);
  EXPECT_EQ(c.h.stats.messages, 0);
}

TEST(DeliveryWorker, DaneDoesNotPassOverAFailedTlsaLookupAtTheCnameTarget) {
  DaneCase c;
  c.h.resolver.canonical["mx.x.test"] = "mx.hosting.test";
  dns::TlsaAnswer& target = c.h.resolver.tlsa[absl::StrCat("_", c.h.config.mx_port, "._tcp.mx.hosting.test")];
  target.status = dns::LookupStatus::kTempFail;
  target.detail = "SERVFAIL";
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_NE(res.reply_text().find("DANE: not used until its TLSA records can be looked up"), std::string::npos)
      << res.reply_text();
  EXPECT_EQ(c.h.stats.messages, 0);
}

TEST(DeliveryWorker, DaneRecordThatMatchesNothingKeepsTheMailAndNeverFallsBackToPlainText) {
  const TestCerts& certs = TestCerts::Get();
  DaneCase c;
  c.Publish({{3, 1, 1, Sha256("not this key")}});
  c.h.config.tls.ca = certs.ca;  // the Web PKI would accept it: DANE must not
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_NE(res.reply_text().find("TLS is required by the DANE TLSA records of mx.x.test, but the certificate of "
                                  "host"),
            std::string::npos)
      << res.reply_text();
  EXPECT_NE(res.reply_text().find("did not verify"), std::string::npos) << res.reply_text();
  EXPECT_EQ(c.h.stats.messages, 0);
  EXPECT_TRUE(c.h.queue.put_flags().empty()) << "a DANE failure must not mark the host broken_tls";
}

TEST(DeliveryWorker, DaneHostWithoutStartTlsIsNotGivenTheMail) {
  const TestCerts& certs = TestCerts::Get();
  DaneCase c(SinkOptions{});  // no STARTTLS offered
  c.Publish({{3, 1, 1, Sha256(CertDer(certs.cert, true))}});
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_NE(res.reply_text().find("does not offer STARTTLS"), std::string::npos) << res.reply_text();
  EXPECT_EQ(c.h.stats.messages, 0);
}

TEST(DeliveryWorker, FailedTlsaLookupSkipsTheHostInsteadOfDowngrading) {
  DaneCase c;
  dns::TlsaAnswer& a = c.h.resolver.tlsa[c.tlsa_name];
  a.status = dns::LookupStatus::kTempFail;
  a.detail = "TLSA lookup for " + c.tlsa_name + " failed: Server failure";
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_EQ(res.enhanced_status(), "4.4.3");
  EXPECT_NE(res.reply_text().find("DANE: not used until its TLSA records can be looked up"), std::string::npos)
      << res.reply_text();
  EXPECT_EQ(c.h.stats.connections, 0);
}

TEST(DeliveryWorker, OnlyUnusableTlsaRecordsStillMakeTlsMandatoryButUnverified) {
  // 1 1 1 (PKIX-EE) is unusable for SMTP (RFC 7672 §3.1.3): TLS is
  // mandatory, the self-signed certificate is accepted.
  DaneCase tls(StartTlsSink(/*self_signed=*/true));
  tls.Publish({{1, 1, 1, Sha256("whatever")}});
  const v1::RecipientResult res = tls.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_NE(res.tls(), "");
  EXPECT_FALSE(res.tls_verified());

  DaneCase plain(SinkOptions{});
  plain.Publish({{1, 1, 1, Sha256("whatever")}});
  const v1::RecipientResult refused = plain.DeliverOne();
  EXPECT_EQ(refused.outcome(), v1::OUTCOME_TRANSIENT) << refused.reply_text();
  EXPECT_NE(refused.reply_text().find("none of them usable"), std::string::npos) << refused.reply_text();
  EXPECT_EQ(plain.h.stats.messages, 0);
}

// REQUIRETLS (requiretls.h): x.test's MX answer comes back validated; the
// sink offers STARTTLS (the test certificate for mx.x.test, signed by
// TestCerts' CA, which tls.ini trusts here) and, unless a test says
// otherwise, REQUIRETLS.
struct RequireTlsCase {
  explicit RequireTlsCase(std::string ehlo = "250-sink\r\n250-STARTTLS\r\n250 REQUIRETLS") : h(Sink(std::move(ehlo))) {
    h.resolver.secure_domains.insert("x.test");
    h.config.pool_timeout = 0s;
    h.config.tls.ca = TestCerts::Get().ca;
  }
  static SinkOptions Sink(std::string ehlo) {
    SinkOptions sink = StartTlsSink();
    sink.ehlo = std::move(ehlo);
    return sink;
  }
  v1::RecipientResult DeliverOne(bool requiretls = true, const std::string& body = "Subject: t\r\n\r\nhello\r\n") {
    v1::DeliveryJob job = Job("d1", "x.test", {"alice"});
    job.set_requiretls(requiretls);
    job.set_body(body);
    h.queue.AddJob(job);
    h.Start();
    EXPECT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
    return h.queue.reports().empty() ? v1::RecipientResult() : h.queue.reports()[0].recipients(0).result();
  }
  bool SentMailFrom(const std::string& line) const {
    return std::find(h.stats.commands.begin(), h.stats.commands.end(), line) != h.stats.commands.end();
  }
  Harness h;
};

TEST(DeliveryWorker, RequireTlsDeliversOverVerifiedTlsToAHostThatOffersIt) {
  RequireTlsCase c;
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_NE(res.tls(), "");
  EXPECT_TRUE(res.tls_verified()) << "tls.ini does not ask for verification: REQUIRETLS must";
  EXPECT_TRUE(c.SentMailFrom("MAIL FROM:<sender@a.test> REQUIRETLS"));
  EXPECT_EQ(c.h.stats.messages, 1);
}

TEST(DeliveryWorker, RequireTlsBouncesWhenTheHostDoesNotOfferIt) {
  RequireTlsCase c("250-sink\r\n250 STARTTLS");
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_PERMANENT) << res.reply_text();
  EXPECT_EQ(res.enhanced_status(), "5.7.30");
  EXPECT_NE(res.reply_text().find("REQUIRETLS is required by the sender, but was not offered by host"),
            std::string::npos)
      << res.reply_text();
  EXPECT_EQ(c.h.stats.messages, 0);
  EXPECT_FALSE(c.SentMailFrom("MAIL FROM:<sender@a.test>"));
}

// A second MX address, 127.0.0.2 on the sink's port, with its own sink
// (or none: connections there are refused).
struct SecondMxAddress {
  SecondMxAddress(Harness& h, std::optional<SinkOptions> sink) {
    h.resolver.more_ipv4 = {"127.0.0.2"};
    if (sink) {
      acceptor.emplace(h.io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.2"), h.config.mx_port));
      asio::co_spawn(h.io, SmtpSink(*acceptor, &stats, *std::move(sink)), asio::detached);
    }
  }
  std::optional<asio::ip::tcp::acceptor> acceptor;
  SinkStats stats;
};

TEST(DeliveryWorker, RequireTlsTriesTheNextMxAddressWhenOneDoesNotOfferIt) {
  // RFC 8689 §4.2.1: the first address lacks REQUIRETLS, the second has it.
  RequireTlsCase c("250-sink\r\n250 STARTTLS");
  SecondMxAddress second(c.h, RequireTlsCase::Sink("250-sink\r\n250-STARTTLS\r\n250 REQUIRETLS"));
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_EQ(res.remote_ip(), "127.0.0.2");
  EXPECT_EQ(c.h.stats.messages, 0);
  EXPECT_EQ(c.h.stats.starttls, 1) << "the first address was asked (over TLS) before it was passed over";
  EXPECT_EQ(second.stats.messages, 1);
}

TEST(DeliveryWorker, RequireTlsBouncesOnlyWhenNoMxAddressOffersIt) {
  // Both lack it: a permanent failure that names both.
  RequireTlsCase c("250-sink\r\n250 STARTTLS");
  SecondMxAddress second(c.h, RequireTlsCase::Sink("250-sink\r\n250 STARTTLS"));
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_PERMANENT) << res.reply_text();
  EXPECT_EQ(res.enhanced_status(), "5.7.30");
  EXPECT_NE(res.reply_text().find("was not offered by host mx.x.test[127.0.0.2]"), std::string::npos)
      << res.reply_text();
  EXPECT_NE(res.reply_text().find("(2 MX addresses tried)"), std::string::npos) << res.reply_text();
  EXPECT_EQ(c.h.stats.messages + second.stats.messages, 0);

  // The second refuses connections: it might offer REQUIRETLS once up, so
  // the message waits for it rather than bouncing.
  RequireTlsCase down("250-sink\r\n250 STARTTLS");
  SecondMxAddress refused(down.h, std::nullopt);
  const v1::RecipientResult res2 = down.DeliverOne();
  EXPECT_EQ(res2.outcome(), v1::OUTCOME_TRANSIENT) << res2.reply_text();
  EXPECT_NE(res2.reply_text().find("127.0.0.2"), std::string::npos) << res2.reply_text();
  EXPECT_EQ(down.h.stats.messages, 0);
}

TEST(DeliveryWorker, RequireTlsBouncesWhenTheMxAnswerWasNotValidatedAndNoStsPolicyVouches) {
  RequireTlsCase c;
  c.h.resolver.secure_domains.clear();
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_PERMANENT) << res.reply_text();
  EXPECT_EQ(res.enhanced_status(), "5.7.30");
  EXPECT_NE(res.reply_text().find("the MX hosts of x.test were not found securely"), std::string::npos)
      << res.reply_text();
  EXPECT_EQ(c.h.stats.connections, 0);
}

TEST(DeliveryWorker, RequireTlsNeverSendsToAnUnverifiedCertificateNorInPlainText) {
  // The certificate's CA is not trusted: a transient failure, nothing sent.
  RequireTlsCase untrusted;
  untrusted.h.config.tls.ca.clear();
  const v1::RecipientResult res = untrusted.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT) << res.reply_text();
  EXPECT_NE(res.reply_text().find("TLS is required by the sender (REQUIRETLS), but the certificate of host"),
            std::string::npos)
      << res.reply_text();
  EXPECT_EQ(untrusted.h.stats.messages, 0);
  EXPECT_TRUE(untrusted.h.queue.put_flags().empty()) << "a REQUIRETLS failure must not mark the host broken_tls";

  // No STARTTLS offered, although REQUIRETLS is (a broken server): no
  // plain-text fallback.
  RequireTlsCase plain("250-sink\r\n250 REQUIRETLS");
  const v1::RecipientResult res2 = plain.DeliverOne();
  EXPECT_EQ(res2.outcome(), v1::OUTCOME_TRANSIENT) << res2.reply_text();
  EXPECT_EQ(plain.h.stats.messages, 0);
  EXPECT_EQ(plain.h.stats.starttls, 0);
}

TEST(DeliveryWorker, RequireTlsOverridesNoTlsHostsInTlsIni) {
  RequireTlsCase c;
  c.h.config.tls.no_tls_hosts = *HostMatcher::Parse({"127.0.0.1"});
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_TRUE(res.tls_verified());
}

TEST(DeliveryWorker, TlsRequiredNoIgnoresDaneButRequireTlsStillHonoursIt) {
  const std::string body = "TLS-Required: No\r\nSubject: t\r\n\r\nhello\r\n";
  // TLSA records that match nothing: DANE would defer the message.
  DaneCase optional(StartTlsSink());
  optional.Publish({{3, 1, 1, Sha256("not this key")}});
  v1::DeliveryJob job = Job("d1", "x.test", {"alice"});
  job.set_body(body);
  optional.h.queue.AddJob(job);
  optional.h.Start();
  ASSERT_TRUE(optional.h.RunUntil([&] { return optional.h.queue.reports().size() == 1; }));
  const v1::RecipientResult res = optional.h.queue.reports()[0].recipients(0).result();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_FALSE(res.tls_verified());
  EXPECT_EQ(optional.h.resolver.tlsa_queries, 0) << "the TLSA records were not to be consulted";

  // With REQUIRETLS the header field is ignored (RFC 8689 §4.1).
  RequireTlsCase required;
  required.h.config.pool_timeout = 0s;
  dns::TlsaAnswer& a = required.h.resolver.tlsa[absl::StrCat("_", required.h.config.mx_port, "._tcp.mx.x.test")];
  a.secure = true;
  a.records = {{3, 1, 1, Sha256("not this key")}};
  const v1::RecipientResult res2 = required.DeliverOne(true, body);
  EXPECT_EQ(res2.outcome(), v1::OUTCOME_TRANSIENT) << res2.reply_text();
  EXPECT_NE(res2.reply_text().find("TLS is required by the DANE TLSA records of mx.x.test"), std::string::npos)
      << res2.reply_text();
  EXPECT_EQ(required.h.stats.messages, 0);
}

TEST(DeliveryWorker, DaneNeedsValidatedMxAndAddressAnswersAndCanBeTurnedOff) {
  // TLSA records that would refuse the sink, in three settings where DANE
  // must not apply: each delivers in plain text without asking for TLSA
  // (the MX answer or the host's addresses not validated) or at all.
  for (int setting = 0; setting < 3; ++setting) {
    DaneCase c(SinkOptions{});
    c.Publish({{3, 1, 1, Sha256("not this key")}});
    if (setting == 0) {
      c.h.resolver.secure_domains.clear();
    } else if (setting == 1) {
      c.h.resolver.secure_hosts = false;
    } else {
      c.h.config.dane = false;
    }
    const v1::RecipientResult res = c.DeliverOne();
    EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << setting << ": " << res.reply_text();
    EXPECT_EQ(c.h.resolver.tlsa_queries, 0) << setting;
  }
  // Records whose answer was not validated are ignored likewise.
  DaneCase c(SinkOptions{});
  c.Publish({{3, 1, 1, Sha256("not this key")}}, /*secure=*/false);
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_EQ(c.h.resolver.tlsa_queries, 1);
}

TEST(DeliveryWorker, DaneTakesPrecedenceOverMtaSts) {
  const TestCerts& certs = TestCerts::Get();
  DaneCase c;
  c.Publish({{3, 1, 1, Sha256(CertDer(certs.cert, true))}});
  // MTA-STS is on by default and x.test publishes a record: with DANE in
  // force it must not even be looked up (RFC 8461 §2).
  c.h.resolver.txt["_mta-sts.x.test"] = {"v=STSv1; id=1;"};
  const v1::RecipientResult res = c.DeliverOne();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_DELIVERED) << res.reply_text();
  EXPECT_TRUE(res.tls_verified());
  EXPECT_EQ(c.h.resolver.txt_queries, 0);
  EXPECT_EQ(c.h.resolver.tlsa_queries, 1);
}

// x.test asks for TLS reports, y.test does not.
TEST(DeliveryWorker, TlsReportsCountNewSessionsOfDomainsThatAskForThem) {
  SinkOptions sink = StartTlsSink(/*self_signed=*/true);
  Harness h(sink);
  CountTlsFor(h, "mailto:tlsrpt@x.test");
  h.config.pool_timeout = 0s;  // every delivery a new session
  h.queue.AddJob(Job("r1", "x.test", {"alice"}));
  h.queue.AddJob(Job("r2", "y.test", {"bob"}));
  v1::DeliveryJob waived = Job("r3", "x.test", {"carol"});
  waived.set_body("TLS-Required: No\r\nSubject: t\r\n\r\nhello\r\n");
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));
  h.queue.AddJob(waived);  // after r1: a new session, which must not count
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 3 && !h.queue.tls_counts().empty(); }));
  h.io.run_for(1500ms);  // one more flush, for anything counted late
  // Opportunistic TLS to a self-signed certificate is still TLS: one
  // successful session, no policy. The sessions of r3 (TLS-Required: No)
  // and of y.test (no TLSRPT record) are not counted.
  std::vector<v1::TlsRptCount> counts = h.queue.tls_counts();
  ASSERT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[0].policy_domain(), "x.test");
  EXPECT_EQ(counts[0].policy_type(), "no-policy-found");
  EXPECT_EQ(counts[0].result_type(), "");
  EXPECT_EQ(counts[0].count(), 1u);
  EXPECT_EQ(counts[0].day(), absl::ToUnixSeconds(absl::Now()) / 86400);
  ASSERT_EQ(counts[0].rua_size(), 1);
  EXPECT_EQ(counts[0].rua(0), "mailto:tlsrpt@x.test");
}

TEST(DeliveryWorker, TlsReportsCountAMissingStartTlsAndABrokenHandshakeAsFailures) {
  SinkOptions plain;
  plain.ehlo = "250-sink\r\n250 PIPELINING";
  Harness a(plain);
  CountTlsFor(a, "mailto:r@x.test");
  a.queue.AddJob(Job("f1", "x.test", {"alice"}));
  a.Start();
  ASSERT_TRUE(a.RunUntil([&] { return !a.queue.tls_counts().empty(); }));
  EXPECT_EQ(a.queue.tls_sessions("no-policy-found", "starttls-not-supported"), 1u);
  EXPECT_EQ(a.queue.tls_counts()[0].receiving_mx_hostname(), "mx.x.test");
  EXPECT_EQ(a.queue.tls_counts()[0].receiving_ip(), "127.0.0.1");

  SinkOptions broken;
  broken.ehlo = "250-sink\r\n250 STARTTLS";
  broken.break_tls = true;
  Harness b(broken);
  CountTlsFor(b, "mailto:r@x.test");
  b.queue.AddJob(Job("f2", "x.test", {"alice"}));
  b.Start();
  ASSERT_TRUE(b.RunUntil([&] { return !b.queue.tls_counts().empty(); }));
  b.io.run_for(1500ms);
  // The plain-text retry that delivered it tried no TLS: only the failure counts.
  EXPECT_EQ(b.queue.tls_sessions("no-policy-found", "validation-failure"), 1u);
  EXPECT_EQ(b.queue.tls_counts().size(), 1u);
}

TEST(DeliveryWorker, TlsReportsAreOffByDefaultAndLookNothingUp) {
  Harness h;
  h.queue.full = true;
  h.resolver.txt["_smtp._tls.x.test"] = {"v=TLSRPTv1;rua=mailto:r@x.test"};
  h.config.mta_sts = false;
  h.queue.AddJob(Job("o1", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  EXPECT_EQ(h.resolver.txt_queries, 0);
  EXPECT_TRUE(h.queue.tls_counts().empty());
}

TEST(DeliveryWorker, LearnsBrokenTlsHostsFromTheQueue) {
  SinkOptions sink;
  sink.ehlo = "250-sink\r\n250 STARTTLS";
  sink.break_tls = true;
  Harness h(sink);
  h.StartWithSharedFlag("broken_tls");
  h.queue.AddJob(Job("g1", "x.test", {"alice"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  EXPECT_EQ(h.queue.reports()[0].recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(h.stats.starttls, 0);
  EXPECT_TRUE(h.queue.put_flags().empty());
}

TEST(DeliveryWorker, AnAddressRefusingSessionsIsSuspendedForEveryoneThenTriedAgain) {
  SinkOptions sink;
  sink.refuse_first = 2;
  Harness h(sink);
  h.queue.full = true;
  h.config.unreachable_after = 2;
  h.config.unreachable_backoff = 1s;
  h.Start();
  // One at a time, so that the two refusals are two sessions in a row.
  for (const char* id : {"u1", "u2"}) {
    const size_t before = h.queue.reports().size();
    h.queue.AddJob(Job(id, "x.test", {"alice"}));
    ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == before + 1; }));
    const v1::RecipientResult res = h.queue.reports().back().recipients(0).result();
    EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT);
    EXPECT_NE(res.reply_text().find("421 4.3.2 too busy"), std::string::npos) << res.reply_text();
  }
  EXPECT_EQ(h.stats.connections, 2);
  // The second refusal in a row suspended the address, for every deliverer.
  ASSERT_TRUE(h.RunUntil([&] { return !h.queue.put_flags().empty(); }));
  const v1::HostFlag flag = h.queue.put_flags().at(0);
  EXPECT_EQ(flag.host(), "127.0.0.1");
  EXPECT_EQ(flag.flag(), "unreachable");
  EXPECT_NE(flag.reason().find("421 4.3.2 too busy"), std::string::npos) << flag.reason();
  EXPECT_NEAR(static_cast<double>(flag.expires_unix_ms()), static_cast<double>(absl::ToUnixMillis(absl::Now()) + 1000),
              900.0);
  const auto suspended_at = std::chrono::steady_clock::now();

  // Meanwhile a delivery there is deferred without a session, with why.
  h.queue.AddJob(Job("u3", "x.test", {"bob"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 3; }));
  const v1::RecipientResult deferred = h.queue.reports().back().recipients(0).result();
  EXPECT_EQ(deferred.outcome(), v1::OUTCOME_TRANSIENT);
  EXPECT_EQ(deferred.enhanced_status(), "4.4.1");
  EXPECT_NE(deferred.reply_text().find("temporarily suspended"), std::string::npos) << deferred.reply_text();
  EXPECT_NE(deferred.reply_text().find("421 4.3.2 too busy"), std::string::npos) << deferred.reply_text();
  EXPECT_EQ(h.stats.connections, 2);

  // After the pause the address is tried again, and delivers.
  ASSERT_TRUE(h.RunUntil([&] { return std::chrono::steady_clock::now() - suspended_at > 1200ms; }));
  h.queue.AddJob(Job("u4", "x.test", {"carol"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 4; }));
  EXPECT_EQ(h.queue.reports().back().recipients(0).result().outcome(), v1::OUTCOME_DELIVERED)
      << h.queue.reports().back().recipients(0).result().reply_text();
  EXPECT_EQ(h.stats.connections, 3);
  EXPECT_EQ(h.stats.messages, 1);
}

TEST(DeliveryWorker, AnAddressSuspendedByAnotherDelivererGetsNoSession) {
  Harness h;
  h.StartWithSharedFlag("unreachable", "connect to mx.x.test[127.0.0.1]:25: Connection refused");
  h.queue.AddJob(Job("s1", "x.test", {"alice"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  const v1::RecipientResult res = h.queue.reports()[0].recipients(0).result();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT);
  EXPECT_NE(res.reply_text().find("temporarily suspended: connect to mx.x.test[127.0.0.1]:25: Connection refused"),
            std::string::npos)
      << res.reply_text();
  EXPECT_EQ(h.stats.connections, 0);
}

TEST(DeliveryWorker, WorksWithAQueueWithoutProgressOrHostFlags) {
  SinkOptions sink;
  sink.ehlo = "250-sink\r\n250 STARTTLS";
  sink.break_tls = true;
  Harness h(sink);  // queue.full = false: UNIMPLEMENTED everywhere optional
  h.queue.AddJob(Job("u1", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  EXPECT_EQ(h.queue.reports()[0].recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  // Still remembered locally even though the queue could not store it.
  h.queue.AddJob(Job("u2", "x.test", {"bob"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));
  EXPECT_EQ(h.stats.starttls, 1);
}

TEST(DeliveryWorker, ReLeasedDeliveryWhoseReportWasRefusedIsNotSentTwice) {
  Harness h;
  h.queue.RefuseNextReports(1);
  h.queue.AddJob(Job("s1", "x.test", {"alice", "unknown1"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  EXPECT_EQ(h.stats.messages, 1);
  // The queue gives the same delivery out again under a new lease.
  v1::DeliveryJob again = Job("s1", "x.test", {"alice", "unknown1"});
  again.set_lease_token("token-s1-second");
  again.set_attempt(2);
  h.queue.AddJob(again);
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));
  const v1::DeliveryReport second = h.queue.reports()[1];
  EXPECT_EQ(second.lease_token(), "token-s1-second");
  ASSERT_EQ(second.recipients_size(), 2);
  EXPECT_EQ(second.recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(second.recipients(1).result().outcome(), v1::OUTCOME_PERMANENT);
  EXPECT_EQ(h.stats.messages, 1);  // not sent a second time
  EXPECT_EQ(h.stats.connections, 1);
}

TEST(DeliveryWorker, DataIsSentOnlyAfterTheQueueRecordedProgressForTheLease) {
  FakeQueue* queue = nullptr;
  SinkOptions sink;
  sink.probe = [&queue] { return queue->progress().size(); };
  Harness h(sink);
  queue = &h.queue;
  h.queue.full = true;
  h.queue.AddJob(Job("g1", "x.test", {"alice", "bob"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  // The queue held the item (durably, in the real one) before the message
  // text arrived.
  EXPECT_EQ(h.stats.probed_at_body, std::vector<size_t>{1});
  ASSERT_EQ(h.queue.progress().size(), 1u);
  EXPECT_EQ(h.queue.progress()[0].lease_token(), "token-g1");
  EXPECT_EQ(h.queue.reports()[0].recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(h.stats.messages, 1);
}

TEST(DeliveryWorker, AFinishedReportRidesOnTheNextProgressCallWhenTheQueueTakesIt) {
  Harness h;
  h.queue.full = true;
  h.queue.carry = true;
  h.queue.report_delay = 500ms;
  // One connection: c1, c2, c3 go one after another on it.
  h.config.destination_connections_max = 1;
  for (const char* id : {"c1", "c2", "c3"}) {
    h.queue.AddJob(Job(id, "x.test", {std::string("rcpt-") + id}));
  }
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 3; }));
  // c1's report left in a Report call at once; c2 finished while that call
  // was still out, so its report waited and went with c3's Progress; c3's
  // own went in the next Report call.
  EXPECT_EQ(h.queue.carried(), std::vector<std::string>{"c2"});
  EXPECT_EQ(h.queue.report_times().size(), 2u);
  auto by_id = h.ReportsById();
  EXPECT_EQ(by_id.size(), 3u);
  for (const auto& [id, report] : by_id) {
    EXPECT_EQ(report.recipients(0).result().outcome(), v1::OUTCOME_DELIVERED) << id;
  }
  EXPECT_EQ(h.stats.messages, 3);
}

TEST(DeliveryWorker, AQueueThatIgnoresCarriedReportsStillGetsEveryReportByReport) {
  Harness h;
  h.queue.full = true;  // Progress, but carry stays false: an older queue
  h.queue.report_delay = 500ms;
  h.config.destination_connections_max = 1;
  for (const char* id : {"o1", "o2", "o3"}) {
    h.queue.AddJob(Job(id, "x.test", {std::string("rcpt-") + id}));
  }
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 3; }));
  EXPECT_TRUE(h.queue.carried().empty());
  auto by_id = h.ReportsById();
  EXPECT_EQ(by_id.size(), 3u) << "each delivery reported exactly once";
  for (const auto& [id, report] : by_id) {
    EXPECT_EQ(report.recipients(0).result().outcome(), v1::OUTCOME_DELIVERED) << id;
  }
  EXPECT_EQ(h.stats.messages, 3);
  // Nothing reported twice, also after the answer that showed the queue
  // ignores them.
  h.RunUntil([] { return false; }, 1s);
  EXPECT_EQ(h.queue.reports().size(), 3u);
}

TEST(DeliveryWorker, LeaseTheQueueNoLongerHoldsStopsBeforeTheMessage) {
  Harness h;
  h.queue.full = true;
  h.queue.AnswerProgress(v1::REPORT_STATUS_STALE_LEASE);
  h.queue.AddJob(Job("s1", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  EXPECT_EQ(h.stats.messages, 0);
  EXPECT_EQ(h.stats.body_lines, 0);
  const v1::RecipientResult res = h.queue.reports()[0].recipients(0).result();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT);
  EXPECT_EQ(res.enhanced_status(), "4.3.0");
  EXPECT_NE(res.reply_text().find("no longer holds this lease"), std::string::npos) << res.reply_text();
  EXPECT_FALSE(res.ambiguous());
}

TEST(DeliveryWorker, ProgressTheQueueCouldNotRecordMeansNoMessageAndALaterRetry) {
  Harness h;
  h.queue.full = true;
  h.queue.AnswerProgress(v1::REPORT_STATUS_APPLIED, grpc::StatusCode::UNAVAILABLE);
  h.queue.AddJob(Job("u1", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  EXPECT_EQ(h.stats.messages, 0);
  const v1::RecipientResult res = h.queue.reports()[0].recipients(0).result();
  EXPECT_EQ(res.outcome(), v1::OUTCOME_TRANSIENT);
  EXPECT_NE(res.reply_text().find("did not record"), std::string::npos) << res.reply_text();
  EXPECT_EQ(h.stats.body_lines, 0);
  // DATA had been pipelined and answered 354: that session was hung up on
  // (nothing delivered without the dot) and the retry opens a new one.
  h.queue.AnswerProgress(v1::REPORT_STATUS_APPLIED);
  v1::DeliveryJob again = Job("u1", "x.test", {"alice"});
  again.set_lease_token("token-u1-second");
  h.queue.AddJob(again);
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));
  EXPECT_EQ(h.queue.reports()[1].recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(h.stats.messages, 1);
  EXPECT_EQ(h.stats.connections, 2);
}

TEST(DeliveryWorker, ReportThatFailedWhileTheQueueWasDownIsRetriedWithItsTokenEvenPastTheLease) {
  Harness h;
  h.queue.full = true;
  h.queue.FailReports(true);
  v1::DeliveryJob job = Job("r1", "x.test", {"alice"});
  // The lease ends while the queue is down; the queue, not the worker,
  // decides whether the report still counts (it does until the delivery is
  // leased again, and during recovery_lease_grace after a restart).
  job.set_lease_deadline_unix_ms(absl::ToUnixMillis(absl::Now()) + 200);
  h.queue.AddJob(job);
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.failed_report_calls() >= 3; }));
  EXPECT_EQ(h.stats.messages, 1);
  EXPECT_TRUE(h.queue.reports().empty());
  h.queue.FailReports(false);
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  EXPECT_EQ(h.queue.reports()[0].lease_token(), "token-r1");
  EXPECT_EQ(h.queue.reports()[0].recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(h.stats.messages, 1);
}

TEST(DeliveryWorker, AFinishedJobHoldsItsSlotUntilItsReportIsApplied) {
  Harness h;
  h.queue.full = true;
  h.config.concurrency_max = 1;
  h.queue.FailReports(true);
  h.queue.AddJob(Job("c1", "x.test", {"alice"}));
  h.queue.AddJob(Job("c2", "x.test", {"bob"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.stats.messages == 1 && h.queue.failed_report_calls() >= 2; }));
  // Unreported, c1 still counts against concurrency_max: c2 is not leased
  // and not delivered, so a crash now could duplicate one message, not two.
  EXPECT_EQ(h.queue.jobs_left(), 1u);
  EXPECT_EQ(h.stats.messages, 1);
  h.queue.FailReports(false);
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));
  EXPECT_EQ(h.stats.messages, 2);
}

TEST(DeliveryWorker, StopsPromptlyWhileQueueIsUnreachable) {
  uint16_t dead_port = 0;
  asio::io_context io;
  {
    asio::ip::tcp::acceptor probe(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    dead_port = probe.local_endpoint().port();
  }
  DelivererConfig config;
  config.queues = {absl::StrCat("127.0.0.1:", dead_port)};
  config.me = "tern.test";
  FakeResolver resolver(io);
  DeliveryWorker worker(io, config, ChannelsTo(config), resolver, RoutePlanner({}));
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

// Smallest gap between consecutive times.
std::chrono::steady_clock::duration MinGap(const std::vector<std::chrono::steady_clock::time_point>& times) {
  auto gap = std::chrono::steady_clock::duration::max();
  for (size_t i = 1; i < times.size(); ++i) {
    gap = std::min(gap, times[i] - times[i - 1]);
  }
  return gap;
}

TEST(DeliveryWorker, AfterALeaseThatCameBackShortTheNextWaitsTheCallBatchWait) {
  Harness h;
  h.config.call_batch_wait = 200ms;
  h.Start();
  // The fake answers an empty Lease after 20 ms; unpaced, that is a call
  // every 20 ms or so.
  h.RunUntil([&] { return h.queue.lease_times().size() >= 4; }, 5s);
  const auto times = h.queue.lease_times();
  ASSERT_GE(times.size(), 4u);
  EXPECT_GE(MinGap(times), 190ms);
}

TEST(DeliveryWorker, ReportsFinishingSoonAfterACallWaitForTheNextPacedCall) {
  Harness h;
  h.config.call_batch_wait = 400ms;
  // Leased together; "slow" is answered 100 ms after the other.
  h.queue.AddJob(Job("p1", "x.test", {"alice"}));
  h.queue.AddJob(Job("p2", "x.test", {"slow1"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2; }));
  const auto times = h.queue.report_times();
  ASSERT_EQ(times.size(), 2u);
  // The first report went at once (nothing before it to wait for), the
  // second not 100 ms later but a full wait after the first call.
  EXPECT_GE(times[1] - times[0], 390ms);
}

TEST(DeliveryWorker, AnIdleWorkersReportIsNotHeldByTheCallBatchWait) {
  Harness h;
  h.config.call_batch_wait = 1000ms;
  h.queue.AddJob(Job("i1", "x.test", {"alice"}));
  const auto start = std::chrono::steady_clock::now();
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 1; }));
  EXPECT_LT(h.queue.report_times()[0] - start, 900ms);
}

// ---- Queue shards (ARCHITECTURE.md §8) ---------------------------------------

// Delivery ids of `reports`, sorted.
std::vector<std::string> IdsOf(const std::vector<v1::DeliveryReport>& reports) {
  std::vector<std::string> ids;
  for (const v1::DeliveryReport& r : reports) {
    ids.push_back(r.delivery_id());
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

TEST(DeliveryWorker, JobsFromEveryShardAreDeliveredAndEachReportGoesToTheShardThatLeasedIt) {
  Harness h;
  ASSERT_NO_FATAL_FAILURE(h.AddShard());
  h.queue.full = true;
  h.queue2->full = true;
  h.queue.AddJob(Job("a1", "x.test", {"alice"}));
  h.queue.AddJob(Job("a2", "x.test", {"bob", "unknown1"}));
  h.queue2->AddJob(Job("b1", "x.test", {"carol"}));
  h.queue2->AddJob(Job("b2", "nullmx.test", {"dave"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 2 && h.queue2->reports().size() == 2; }));
  h.io.run_for(200ms);  // nothing more arrives anywhere
  EXPECT_EQ(IdsOf(h.queue.reports()), (std::vector<std::string>{"a1", "a2"}));
  EXPECT_EQ(IdsOf(h.queue2->reports()), (std::vector<std::string>{"b1", "b2"}));
  for (const v1::DeliveryReport& r : h.queue2->reports()) {
    EXPECT_EQ(r.lease_token(), "token-" + r.delivery_id());
  }
  const auto first = h.ReportsById();
  EXPECT_EQ(first.at("a2").recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(first.at("a2").recipients(1).result().enhanced_status(), "5.1.1");
  std::map<std::string, v1::DeliveryReport> second;
  for (const v1::DeliveryReport& r : h.queue2->reports()) {
    second[r.delivery_id()] = r;
  }
  EXPECT_EQ(second.at("b1").recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(second.at("b2").recipients(0).result().enhanced_status(), "5.1.10");
  // The data gate of each job was passed at its own shard.
  ASSERT_EQ(h.queue.progress().size(), 2u);
  for (const v1::DeliveryProgress& p : h.queue.progress()) {
    EXPECT_TRUE(p.lease_token() == "token-a1" || p.lease_token() == "token-a2") << p.lease_token();
  }
  ASSERT_EQ(h.queue2->progress().size(), 1u);
  EXPECT_EQ(h.queue2->progress()[0].lease_token(), "token-b1");
  EXPECT_EQ(h.stats.messages, 3);
}

TEST(DeliveryWorker, WhatADeliveryLearnsGoesToTheShardThatLeasedIt) {
  SinkOptions sink;
  sink.ehlo = "250-sink\r\n250 STARTTLS";
  sink.break_tls = true;
  Harness h(sink);
  ASSERT_NO_FATAL_FAILURE(h.AddShard());
  CountTlsFor(h, "mailto:r@x.test");
  h.queue2->full = true;
  h.queue2->AddJob(Job("b1", "x.test", {"alice"}));
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] {
    return h.queue2->reports().size() == 1 && !h.queue2->put_flags().empty() && !h.queue2->tls_counts().empty();
  }));
  h.io.run_for(1500ms);  // one more TLS report flush, and host flags refresh
  EXPECT_EQ(h.queue2->reports()[0].recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  // The broken TLS flag, the TLS report count and the MTA-STS store lookup
  // went to the shard of the job, and nothing about it to the other.
  EXPECT_EQ(h.queue2->put_flags()[0].flag(), "broken_tls");
  EXPECT_EQ(h.queue2->tls_sessions("no-policy-found", "validation-failure"), 1u);
  EXPECT_EQ(h.queue2->get_sts_calls(), 1);
  EXPECT_TRUE(h.queue.reports().empty());
  EXPECT_TRUE(h.queue.progress().empty());
  EXPECT_TRUE(h.queue.put_flags().empty());
  EXPECT_TRUE(h.queue.tls_counts().empty());
  EXPECT_EQ(h.queue.get_sts_calls(), 0);
  // Every shard's host flags are read.
  EXPECT_GT(h.queue.get_flags_calls(), 0);
  EXPECT_GT(h.queue2->get_flags_calls(), 0);
}

TEST(DeliveryWorker, HostFlagsOfEveryShardApplyToTheJobsOfEveryShard) {
  SinkOptions sink;
  sink.ehlo = "250-sink\r\n250 STARTTLS";
  sink.break_tls = true;
  Harness h(sink);
  ASSERT_NO_FATAL_FAILURE(h.AddShard());
  h.queue2->full = true;
  h.StartWithSharedFlag("broken_tls");  // on the first shard only
  h.queue2->AddJob(Job("b1", "x.test", {"alice"}));
  ASSERT_TRUE(h.RunUntil([&] { return h.queue2->reports().size() == 1; }));
  EXPECT_EQ(h.queue2->reports()[0].recipients(0).result().outcome(), v1::OUTCOME_DELIVERED);
  EXPECT_EQ(h.stats.starttls, 0);
}

TEST(DeliveryWorker, AShardThatIsDownHoldsUpNoOther) {
  Harness h;
  uint16_t dead_port = 0;
  {
    asio::ip::tcp::acceptor probe(h.io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    dead_port = probe.local_endpoint().port();
  }
  h.config.queues.insert(h.config.queues.begin(), absl::StrCat("127.0.0.1:", dead_port));
  h.config.concurrency_max = 2;
  for (const char* id : {"l1", "l2", "l3", "l4"}) {
    h.queue.AddJob(Job(id, "x.test", {std::string("rcpt-") + id}));
  }
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 4; }, 10s));
  EXPECT_EQ(IdsOf(h.queue.reports()), (std::vector<std::string>{"l1", "l2", "l3", "l4"}));
  EXPECT_EQ(h.stats.messages, 4);
  const auto start = std::chrono::steady_clock::now();
  h.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

TEST(DeliveryWorker, AShardThatHangsHoldsUpNoOther) {
  Harness h;
  ASSERT_NO_FATAL_FAILURE(h.AddShard());
  h.queue2->HangLeases();
  h.config.concurrency_max = 2;
  for (const char* id : {"l1", "l2", "l3", "l4"}) {
    h.queue.AddJob(Job(id, "x.test", {std::string("rcpt-") + id}));
  }
  h.Start();
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 4; }, 10s));
  EXPECT_GE(h.queue2->lease_calls(), 1);
  EXPECT_EQ(h.stats.messages, 4);
  const auto start = std::chrono::steady_clock::now();
  h.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

TEST(DeliveryWorker, AShardWithADeepBacklogDoesNotStarveTheOthers) {
  Harness h;  // each message takes 100 ms (a "slow" recipient)
  ASSERT_NO_FATAL_FAILURE(h.AddShard());
  h.config.concurrency_max = 2;
  for (int i = 0; i < 12; ++i) {
    const std::string id = absl::StrCat("a", i);
    h.queue.AddJob(Job(id, "x.test", {"slow-" + id}));
  }
  h.Start();
  // The first shard's backlog fills every slot; then work arrives on the
  // second.
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() >= 2; }));
  for (const char* id : {"b0", "b1"}) {
    h.queue2->AddJob(Job(id, "x.test", {std::string("slow-") + id}));
  }
  ASSERT_TRUE(h.RunUntil([&] { return h.queue2->reports().size() == 2; }));
  // It did not wait for that backlog to drain: slots went to both shards.
  const size_t backlog_left = h.queue.jobs_left();
  EXPECT_GE(backlog_left, 3u);
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.reports().size() == 12; }));
  EXPECT_EQ(h.stats.messages, 14);
  // One connection pool for every shard: never more sessions than slots.
  EXPECT_LE(h.stats.connections, 2);
}

TEST(DeliveryWorker, StopLetsTheDeliveriesOfEveryShardFinishAndReportsThemToTheirShards) {
  SinkOptions sink;
  sink.slow_dot = 500ms;
  Harness h(sink);
  ASSERT_NO_FATAL_FAILURE(h.AddShard());
  h.queue.AddJob(Job("a1", "x.test", {"slow-a1"}));
  h.queue2->AddJob(Job("b1", "x.test", {"slow-b1"}));
  h.Start();
  // Both leased and under way.
  ASSERT_TRUE(h.RunUntil([&] { return h.queue.jobs_left() == 0 && h.queue2->jobs_left() == 0; }));
  h.io.run_for(100ms);
  EXPECT_TRUE(h.queue.reports().empty());
  EXPECT_TRUE(h.queue2->reports().empty());
  h.Stop();
  EXPECT_EQ(IdsOf(h.queue.reports()), std::vector<std::string>{"a1"});
  EXPECT_EQ(IdsOf(h.queue2->reports()), std::vector<std::string>{"b1"});
  EXPECT_EQ(h.stats.messages, 2);
}

}  // namespace
}  // namespace tern::deliverer
