#include "services/deliverer/delivery_worker.h"

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <algorithm>
#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/experimental/as_tuple.hpp"
#include "asio/io_context.hpp"
#include "asio/ssl/context.hpp"
#include "asio/steady_timer.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/common/ids.h"
#include "lib/common/log.h"
#include "lib/metrics/metrics.h"
#include "lib/rpc/asio_grpc.h"
#include "services/deliverer/outcome.h"
#include "services/deliverer/smtp_transaction.h"
#include "tern/v1/queue.grpc.pb.h"

namespace tern::deliverer {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);

// Lease long-poll: how long the queue may hold a Lease call open.
constexpr uint32_t kLeaseWaitMs = 1000;
// Under load, reports wait at most this long to share one Report call.
constexpr auto kReportBatchWindow = std::chrono::milliseconds(5);
constexpr size_t kMaxReportsPerCall = 1000;
constexpr auto kMaxBackoff = std::chrono::seconds(10);

int64_t NowUnixMs() { return absl::ToUnixMillis(absl::Now()); }

// co_await adapters for the callback-style MxResolver. The resolver calls back
// on the executor from a posted handler, so resuming inline is safe. These are
// plain functions returning the awaitable, with named initiation types: GCC 12
// miscompiles a lambda init-capture of a coroutine parameter (double free).
struct MxInitiation {
  dns::MxResolver* resolver;
  std::string domain;
  template <typename Handler>
  void operator()(Handler handler) {
    resolver->ResolveMx(std::move(domain),
                        [h = std::move(handler)](dns::MxAnswer a) mutable { std::move(h)(std::move(a)); });
  }
};

struct HostInitiation {
  dns::MxResolver* resolver;
  std::string host;
  template <typename Handler>
  void operator()(Handler handler) {
    resolver->ResolveHost(std::move(host),
                          [h = std::move(handler)](dns::HostAnswer a) mutable { std::move(h)(std::move(a)); });
  }
};

asio::awaitable<dns::MxAnswer> AwaitMx(dns::MxResolver& resolver, std::string domain) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(dns::MxAnswer)>(
      MxInitiation{&resolver, std::move(domain)}, asio::use_awaitable);
}

asio::awaitable<dns::HostAnswer> AwaitHost(dns::MxResolver& resolver, std::string host) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(dns::HostAnswer)>(
      HostInitiation{&resolver, std::move(host)}, asio::use_awaitable);
}

v1::Outcome ToProto(OutcomeClass c) {
  switch (c) {
    case OutcomeClass::kDelivered:
      return v1::OUTCOME_DELIVERED;
    case OutcomeClass::kTransient:
      return v1::OUTCOME_TRANSIENT;
    case OutcomeClass::kPermanent:
      return v1::OUTCOME_PERMANENT;
  }
  return v1::OUTCOME_TRANSIENT;
}

struct Metrics {
  metrics::Registry& r = metrics::Registry::Global();
  metrics::Counter& delivered = r.GetCounter("tern_deliverer_recipients_total", "Recipients by outcome",
                                             {{"outcome", "delivered"}});
  metrics::Counter& transient = r.GetCounter("tern_deliverer_recipients_total", "Recipients by outcome",
                                             {{"outcome", "transient"}});
  metrics::Counter& permanent = r.GetCounter("tern_deliverer_recipients_total", "Recipients by outcome",
                                             {{"outcome", "permanent"}});
  metrics::Gauge& in_flight = r.GetGauge("tern_deliverer_deliveries_in_flight", "Deliveries being worked on");
  metrics::Counter& connection_errors =
      r.GetCounter("tern_deliverer_connection_errors_total", "SMTP sessions that failed before deciding");
  metrics::Counter& reports_sent = r.GetCounter("tern_deliverer_reports_total", "Delivery reports by result",
                                                {{"result", "applied"}});
  metrics::Counter& reports_refused = r.GetCounter("tern_deliverer_reports_total", "Delivery reports by result",
                                                   {{"result", "refused"}});
  metrics::Counter& reports_dropped = r.GetCounter("tern_deliverer_reports_total", "Delivery reports by result",
                                                   {{"result", "dropped"}});

  metrics::Counter& Dns(dns::LookupStatus s) {
    return r.GetCounter("tern_deliverer_dns_lookups_total", "MX lookups by result",
                        {{"result", dns::LookupStatusName(s)}});
  }
  metrics::Counter& Recipients(OutcomeClass c) {
    switch (c) {
      case OutcomeClass::kDelivered:
        return delivered;
      case OutcomeClass::kTransient:
        return transient;
      case OutcomeClass::kPermanent:
        return permanent;
    }
    return transient;
  }
};

}  // namespace

class DeliveryWorker::Impl : public std::enable_shared_from_this<DeliveryWorker::Impl> {
 public:
  Impl(asio::io_context& io, const DelivererConfig& config, std::shared_ptr<grpc::Channel> channel,
       dns::MxResolver& resolver, RoutePlanner planner)
      : io_(io),
        config_(config),
        stub_(v1::Queue::NewStub(channel)),
        resolver_(resolver),
        planner_(std::move(planner)),
        slot_timer_(io),
        backoff_timer_(io),
        report_wake_(io),
        tls_(std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client)),
        worker_id_(absl::StrCat(config.me, "/", NewRandomToken().substr(0, 8))) {
    asio::error_code ec;
    tls_->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                          asio::ssl::context::no_sslv3,
                      ec);
    // Only to record whether the peer verified; failures never block delivery.
    tls_->set_default_verify_paths(ec);
  }

  void Start() { asio::co_spawn(io_, Main(shared_from_this()), asio::detached); }

  void Stop(std::function<void()> on_stopped, std::chrono::milliseconds drain_timeout) {
    if (stopping_) {
      return;
    }
    stopping_ = true;
    log::Event(log::Level::kNotice, "stopping",
               {{"in_flight", absl::StrCat(in_flight_)}, {"pending_reports", absl::StrCat(pending_.size())}});
    slot_timer_.cancel();
    backoff_timer_.cancel();
    if (lease_ctx_ != nullptr) {
      lease_ctx_->TryCancel();
    }
    asio::co_spawn(io_, Drain(shared_from_this(), std::move(on_stopped), drain_timeout), asio::detached);
  }

 private:
  struct PendingReport {
    v1::DeliveryReport report;
    int64_t deadline_unix_ms = 0;
  };

  static asio::awaitable<void> Main(std::shared_ptr<Impl> self) {
    if (!self->config_.local_mx_ok && !self->config_.me.empty()) {
      // The addresses of `me` count as this host (Haraka's is_local_host).
      dns::HostAnswer me = co_await AwaitHost(self->resolver_, self->config_.me);
      std::vector<std::string> addresses = me.ipv4;
      addresses.insert(addresses.end(), me.ipv6.begin(), me.ipv6.end());
      self->planner_.AddLocalAddresses(addresses);
    }
    auto executor = co_await asio::this_coro::executor;
    asio::co_spawn(executor, ReporterLoop(self), asio::detached);
    co_await LeaseLoop(self);
  }

  static asio::awaitable<void> LeaseLoop(std::shared_ptr<Impl> self) {
    auto executor = co_await asio::this_coro::executor;
    Clock::duration backoff = std::chrono::milliseconds(100);
    bool queue_down = false;
    while (!self->stopping_) {
      const uint32_t free = self->config_.concurrency_max - std::min(self->in_flight_, self->config_.concurrency_max);
      if (free == 0) {
        self->slot_timer_.expires_at(Clock::time_point::max());
        co_await self->slot_timer_.async_wait(kNoThrow);
        continue;
      }
      v1::LeaseRequest request;
      request.set_kind(v1::JOB_KIND_DELIVERY);
      request.set_max_jobs(std::min(free, self->config_.lease_batch));
      request.set_wait_ms(kLeaseWaitMs);
      request.set_worker_id(self->worker_id_);
      v1::LeaseResponse response;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(kLeaseWaitMs) +
                       std::chrono::seconds(10));
      self->lease_ctx_ = &ctx;
      grpc::Status status = co_await rpc::AwaitGrpc(
          [&](auto done) { self->stub_->async()->Lease(&ctx, &request, &response, std::move(done)); });
      self->lease_ctx_ = nullptr;
      if (!status.ok()) {
        if (self->stopping_) {
          break;
        }
        if (!queue_down) {
          queue_down = true;
          log::Event(log::Level::kWarn, "queue_unreachable",
                     {{"queue", self->config_.queue}, {"error", status.error_message()}});
        }
        self->backoff_timer_.expires_after(backoff);
        co_await self->backoff_timer_.async_wait(kNoThrow);
        backoff = std::min<Clock::duration>(backoff * 2, kMaxBackoff);
        continue;
      }
      if (queue_down) {
        queue_down = false;
        log::Event(log::Level::kNotice, "queue_reachable", {{"queue", self->config_.queue}});
      }
      backoff = std::chrono::milliseconds(100);
      for (auto& job : *response.mutable_deliveries()) {
        ++self->in_flight_;
        self->metrics_.in_flight.Set(self->in_flight_);
        asio::co_spawn(executor, RunDelivery(self, std::move(job)), asio::detached);
      }
    }
  }

  static asio::awaitable<void> RunDelivery(std::shared_ptr<Impl> self, v1::DeliveryJob job) {
    const Clock::time_point start = Clock::now();
    std::vector<RecipientOutcome> outcomes;
    try {
      outcomes = co_await self->Deliver(job);
    } catch (const std::exception& e) {
      // Coroutine root: nothing may escape. The job is not reported and its
      // lease expiry makes it due again.
      log::Event(log::Level::kError, "delivery_crashed", {{"msg", job.message_id()}, {"error", e.what()}});
    }
    const std::string delay = absl::StrFormat("%.2f", std::chrono::duration<double>(Clock::now() - start).count());
    if (!outcomes.empty()) {
      PendingReport pending;
      pending.deadline_unix_ms = job.lease_deadline_unix_ms();
      pending.report.set_delivery_id(job.delivery_id());
      pending.report.set_lease_token(job.lease_token());
      for (int i = 0; i < job.recipients_size(); ++i) {
        const RecipientOutcome& o = outcomes[i];
        auto* r = pending.report.add_recipients();
        r->set_index(job.recipients(i).index());
        auto* res = r->mutable_result();
        res->set_outcome(ToProto(o.outcome));
        res->set_reply_code(static_cast<uint32_t>(o.reply_code));
        res->set_enhanced_status(o.enhanced_status);
        res->set_reply_text(o.reply_text);
        res->set_remote_mta(o.remote_mta);
        res->set_remote_ip(o.remote_ip);
        res->set_at_unix_ms(o.at_unix_ms);
        self->metrics_.Recipients(o.outcome).Inc();
        const std::string relay = o.remote_ip.empty()
                                      ? (o.remote_mta.empty() ? "none" : o.remote_mta)
                                      : absl::StrCat(o.remote_mta, "[", o.remote_ip, "]:", self->config_.mx_port);
        const std::string reply =
            o.reply_code != 0 ? absl::StrCat(o.reply_code, " ", o.enhanced_status, " ", o.reply_text) : o.reply_text;
        log::Event(o.outcome == OutcomeClass::kDelivered ? log::Level::kInfo : log::Level::kNotice, "delivery",
                   {{"msg", job.message_id()},
                    {"delivery", job.delivery_id()},
                    {"rcpt", job.recipients(i).spec().address()},
                    {"relay", relay},
                    {"delay", delay},
                    {"attempt", absl::StrCat(job.attempt())},
                    {"dsn", o.enhanced_status},
                    {"status", StatusWord(o.outcome)},
                    {"reply", reply}});
      }
      self->EnqueueReport(std::move(pending));
    }
    --self->in_flight_;
    self->metrics_.in_flight.Set(self->in_flight_);
    self->slot_timer_.cancel();
  }

  // One delivery: DNS, route, SMTP per address. One outcome per recipient,
  // in job order; none is ever left without one. `job` is a reference into
  // the awaiting RunDelivery frame, which co_awaits this directly (never
  // spawned), so it outlives the call.
  asio::awaitable<std::vector<RecipientOutcome>> Deliver(v1::DeliveryJob& job) {
    const size_t n = static_cast<size_t>(job.recipients_size());
    std::vector<std::optional<RecipientOutcome>> decided(n);
    auto decide_rest = [&](const RecipientOutcome& o) {
      for (auto& d : decided) {
        if (!d) {
          d = o;
        }
      }
    };
    auto finish = [&] {
      std::vector<RecipientOutcome> out;
      for (auto& d : decided) {
        out.push_back(std::move(*d));
      }
      return out;
    };

    dns::MxAnswer mx = co_await AwaitMx(resolver_, job.domain());
    metrics_.Dns(mx.status).Inc();
    switch (mx.status) {
      case dns::LookupStatus::kNullMx:
        decide_rest(LocalOutcome(OutcomeClass::kPermanent, "5.1.10", mx.detail));
        co_return finish();
      case dns::LookupStatus::kNoSuchDomain:
        decide_rest(LocalOutcome(OutcomeClass::kPermanent, "5.1.2", mx.detail));
        co_return finish();
      case dns::LookupStatus::kTempFail:
        decide_rest(LocalOutcome(OutcomeClass::kTransient, "4.4.3", mx.detail));
        co_return finish();
      case dns::LookupStatus::kOk:
        break;
    }

    RoutePlan plan = planner_.Plan(mx);
    if (plan.attempts.empty()) {
      decide_rest(LocalOutcome(OutcomeClass::kTransient, plan.dns_trouble ? "4.4.3" : "4.4.4",
                               absl::StrCat("no usable MX for ", job.domain(), ": ",
                                            plan.skipped.empty() ? "no MX host" : absl::StrJoin(plan.skipped, "; "))));
      co_return finish();
    }

    auto body = std::make_shared<const std::string>(std::move(*job.mutable_body()));
    std::vector<size_t> undecided(n);
    for (size_t i = 0; i < n; ++i) {
      undecided[i] = i;
    }
    RecipientOutcome last_failure = LocalOutcome(OutcomeClass::kTransient, "4.4.1", "no MX address was tried");
    size_t tried = 0;
    for (const Attempt& attempt : plan.attempts) {
      if (undecided.empty()) {
        break;
      }
      // Do not start a new address when the lease would end mid-session: the
      // report would be refused as stale and the recipients tried again.
      const int64_t margin_ms = 2 * std::chrono::duration_cast<std::chrono::milliseconds>(config_.connect_timeout).count();
      if (tried > 0 && NowUnixMs() + margin_ms > job.lease_deadline_unix_ms()) {
        last_failure.reply_text += " (lease time used up before the next MX address)";
        break;
      }
      ++tried;
      TransactionRequest request;
      request.helo_name = config_.me;
      request.mx_host = attempt.mx_host;
      request.ip = attempt.ip;
      request.port = attempt.port;
      request.mail_from = job.mail_from();
      for (size_t i : undecided) {
        request.recipients.push_back(job.recipients(static_cast<int>(i)).spec().address());
      }
      request.body = body;
      request.smtputf8 = job.smtputf8();
      request.body_8bit = job.body_8bit();
      request.starttls = config_.enable_tls;
      request.tls_context = tls_;
      request.timeouts.connect = config_.connect_timeout;
      request.timeouts.command = config_.connect_timeout;
      request.timeouts.final_dot = config_.dot_timeout;

      absl::StatusOr<TransactionResult> result = co_await RunSmtpTransaction(request);
      if (result.ok() && result->tls_failed) {
        // Opportunistic TLS: a broken handshake must not make the host
        // unreachable; try the same address once more in plain text.
        log::Event(log::Level::kNotice, "tls_failed_retrying_plain",
                   {{"msg", job.message_id()}, {"relay", attempt.mx_host}, {"ip", attempt.ip},
                    {"error", result->failure}});
        request.starttls = false;
        result = co_await RunSmtpTransaction(request);
      }
      if (!result.ok()) {
        last_failure = LocalOutcome(OutcomeClass::kTransient, "4.3.0", std::string(result.status().message()),
                                    attempt.mx_host, attempt.ip);
        continue;
      }
      std::vector<size_t> still;
      for (size_t j = 0; j < undecided.size(); ++j) {
        if (result->outcomes[j]) {
          decided[undecided[j]] = std::move(*result->outcomes[j]);
        } else {
          still.push_back(undecided[j]);
        }
      }
      undecided = std::move(still);
      if (!undecided.empty()) {
        metrics_.connection_errors.Inc();
        log::Event(log::Level::kInfo, "attempt_failed",
                   {{"msg", job.message_id()},
                    {"relay", absl::StrCat(attempt.mx_host, "[", attempt.ip, "]:", attempt.port)},
                    {"reason", result->failure}});
        last_failure = LocalOutcome(OutcomeClass::kTransient,
                                    result->failure_enhanced.empty() ? "4.4.2" : result->failure_enhanced,
                                    result->failure, attempt.mx_host, attempt.ip, result->failure_code);
      }
    }
    if (!undecided.empty() && tried > 1) {
      last_failure.reply_text += absl::StrCat(" (", tried, " MX addresses tried)");
    }
    decide_rest(last_failure);
    co_return finish();
  }

  void EnqueueReport(PendingReport report) {
    pending_.push_back(std::move(report));
    report_wake_.cancel();
  }

  static asio::awaitable<void> ReporterLoop(std::shared_ptr<Impl> self) {
    Clock::duration backoff = std::chrono::milliseconds(100);
    bool failing = false;
    for (;;) {
      if (self->pending_.empty()) {
        if (self->reporter_done_) {
          co_return;
        }
        self->report_wake_.expires_at(Clock::time_point::max());
        co_await self->report_wake_.async_wait(kNoThrow);
        continue;
      }
      // Reports past their lease deadline would be refused as stale: the
      // queue already made those deliveries due again.
      const int64_t now_ms = NowUnixMs();
      std::vector<PendingReport> batch;
      while (!self->pending_.empty() && batch.size() < kMaxReportsPerCall) {
        PendingReport p = std::move(self->pending_.front());
        self->pending_.pop_front();
        if (p.deadline_unix_ms > 0 && p.deadline_unix_ms < now_ms) {
          self->metrics_.reports_dropped.Inc();
          log::Event(log::Level::kWarn, "report_dropped",
                     {{"delivery", p.report.delivery_id()}, {"reason", "lease expired before the report was sent"}});
          continue;
        }
        batch.push_back(std::move(p));
      }
      if (batch.empty()) {
        continue;
      }
      v1::ReportRequest request;
      for (const auto& p : batch) {
        *request.add_reports() = p.report;
      }
      v1::ReportResponse response;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      const Clock::time_point sent_at = Clock::now();
      self->report_in_flight_ = true;
      grpc::Status status = co_await rpc::AwaitGrpc(
          [&](auto done) { self->stub_->async()->Report(&ctx, &request, &response, std::move(done)); });
      self->report_in_flight_ = false;
      if (!status.ok()) {
        if (!failing) {
          failing = true;
          log::Event(log::Level::kWarn, "report_failed",
                     {{"queue", self->config_.queue}, {"error", status.error_message()},
                      {"reports", absl::StrCat(batch.size())}});
        }
        // Put them back in front, in order, and retry after a pause.
        for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
          self->pending_.push_front(std::move(*it));
        }
        asio::steady_timer pause(co_await asio::this_coro::executor, backoff);
        co_await pause.async_wait(kNoThrow);
        backoff = std::min<Clock::duration>(backoff * 2, std::chrono::seconds(5));
        continue;
      }
      if (failing) {
        failing = false;
        log::Event(log::Level::kNotice, "report_recovered", {{"queue", self->config_.queue}});
      }
      backoff = std::chrono::milliseconds(100);
      for (int i = 0; i < response.statuses_size() && i < static_cast<int>(batch.size()); ++i) {
        if (response.statuses(i) == v1::REPORT_STATUS_APPLIED) {
          self->metrics_.reports_sent.Inc();
        } else {
          self->metrics_.reports_refused.Inc();
          log::Event(log::Level::kWarn, "report_refused",
                     {{"delivery", batch[i].report.delivery_id()},
                      {"status", v1::ReportStatus_Name(response.statuses(i))}});
        }
      }
      // Under load, give finishing deliveries a moment to join the next call.
      if (!self->pending_.empty()) {
        asio::steady_timer window(co_await asio::this_coro::executor, sent_at + kReportBatchWindow);
        co_await window.async_wait(kNoThrow);
      }
    }
  }

  static asio::awaitable<void> Drain(std::shared_ptr<Impl> self, std::function<void()> on_stopped,
                                     std::chrono::milliseconds drain_timeout) {
    auto executor = co_await asio::this_coro::executor;
    asio::steady_timer tick(executor);
    const Clock::time_point deadline = Clock::now() + drain_timeout;
    while (self->in_flight_ > 0 && Clock::now() < deadline) {
      tick.expires_after(std::chrono::milliseconds(20));
      co_await tick.async_wait(kNoThrow);
    }
    if (self->in_flight_ > 0) {
      log::Event(log::Level::kWarn, "abandoning_deliveries",
                 {{"in_flight", absl::StrCat(self->in_flight_)}, {"note", "their leases expire and they are retried"}});
    }
    // Flush what finished; bounded so an unreachable queue cannot hang exit.
    const Clock::time_point flush_deadline = Clock::now() + std::chrono::seconds(5);
    while ((!self->pending_.empty() || self->report_in_flight_) && Clock::now() < flush_deadline) {
      tick.expires_after(std::chrono::milliseconds(10));
      co_await tick.async_wait(kNoThrow);
    }
    self->reporter_done_ = true;
    self->report_wake_.cancel();
    log::Event(log::Level::kNotice, "stopped", {{"unsent_reports", absl::StrCat(self->pending_.size())}});
    on_stopped();
  }

  asio::io_context& io_;
  const DelivererConfig& config_;
  std::unique_ptr<v1::Queue::Stub> stub_;
  dns::MxResolver& resolver_;
  RoutePlanner planner_;
  asio::steady_timer slot_timer_;
  asio::steady_timer backoff_timer_;
  asio::steady_timer report_wake_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::string worker_id_;
  Metrics metrics_;
  uint32_t in_flight_ = 0;
  bool stopping_ = false;
  bool reporter_done_ = false;
  bool report_in_flight_ = false;
  grpc::ClientContext* lease_ctx_ = nullptr;
  std::deque<PendingReport> pending_;
};

DeliveryWorker::DeliveryWorker(asio::io_context& io, const DelivererConfig& config,
                               std::shared_ptr<grpc::Channel> channel, dns::MxResolver& resolver, RoutePlanner planner)
    : impl_(std::make_shared<Impl>(io, config, std::move(channel), resolver, std::move(planner))) {}

DeliveryWorker::~DeliveryWorker() = default;

void DeliveryWorker::Start() { impl_->Start(); }

void DeliveryWorker::Stop(std::function<void()> on_stopped, std::chrono::milliseconds drain_timeout) {
  impl_->Stop(std::move(on_stopped), drain_timeout);
}

}  // namespace tern::deliverer
