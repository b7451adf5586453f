#include "services/deliverer/delivery_worker.h"

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <algorithm>
#include <deque>
#include <map>
#include <unordered_map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/experimental/as_tuple.hpp"
#include "asio/io_context.hpp"
#include "asio/ip/address.hpp"
#include "asio/post.hpp"
#include "asio/ssl/context.hpp"
#include "asio/steady_timer.hpp"
#include "asio/this_coro.hpp"
#include "asio/thread_pool.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/common/ids.h"
#include "lib/common/log.h"
#include "lib/common/status_macros.h"
#include "lib/dns/resolver_await.h"
#include "lib/hooks/hooks_channel.h"
#include "lib/metrics/metrics.h"
#include "lib/net/connection.h"
#include "lib/rpc/asio_grpc.h"
#include "lib/rpc/server_setup.h"
#include "lib/rpc/status_convert.h"
#include "lib/tlsrpt/tlsrpt.h"
#include "services/deliverer/call_pacer.h"
#include "services/deliverer/connection_pool.h"
#include "services/deliverer/dane.h"
#include "services/deliverer/dkim.h"
#include "services/deliverer/host_flags.h"
#include "services/deliverer/https_client.h"
#include "services/deliverer/mta_sts.h"
#include "services/deliverer/outcome.h"
#include "services/deliverer/hook_routes.h"
#include "services/deliverer/requiretls.h"
#include "services/deliverer/smtp_transaction.h"
#include "services/deliverer/tls_reporting.h"
#include "tern/v1/hooks.grpc.pb.h"
#include "tern/v1/queue.grpc.pb.h"

namespace tern::deliverer {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);

// Lease long-poll: how long the queue may hold a Lease call open.
constexpr uint32_t kLeaseWaitMs = 1000;
// Reports and progress go out in up to this many concurrent calls each;
// what finishes while those are in flight shares the next call. One call at
// a time lets the batches grow with the load instead of the number of calls:
// with two, the 2 KB end-to-end bench made half again as many calls and
// spent 10 % more CPU per message (most of a call's cost is gRPC's thread
// hand-offs on both sides, not its size), for no gain in latency when idle.
// Lease and Report calls are also paced (CallPacer, call_batch_wait_ms):
// every delivered-but-unreported job is a duplicate if this process dies, so
// that wait is a few milliseconds, never "until the batch is full".
constexpr int kMaxCallsInFlight = 1;
constexpr size_t kMaxReportsPerCall = 1000;
constexpr auto kProgressDeadline = std::chrono::seconds(5);
// A failed Report is retried after this pause, doubling up to the maximum:
// well inside the queue's recovery_lease_grace (default 30 s).
constexpr auto kMinReportBackoff = std::chrono::milliseconds(100);
constexpr auto kMaxReportBackoff = std::chrono::seconds(1);
constexpr auto kMaxBackoff = std::chrono::seconds(10);
// A queue unreachable for this long gets a new gRPC channel (at most once per
// period). gRPC retries connections by itself, but a channel whose first DNS
// lookup of the queue's name failed (a deliverer started before the queue's
// container was known to the network's DNS) was seen to stay failed for
// minutes: a new channel asks DNS afresh.
constexpr auto kRebuildChannelAfter = std::chrono::seconds(10);
// Distinct TLS report counts held for the queue (tls_reporting.h): a
// count is one (domain, policy, failure kind, MX) per day, so even a large
// sender's day fits; beyond it counts are dropped, never memory. Shared out
// among the queue shards (each keeps its own), at least the minimum each.
constexpr size_t kMaxTlsRptEntries = 50000;
constexpr size_t kMinTlsRptEntriesPerShard = 1000;
// The most counts the queue takes in one RecordTlsResults call.
constexpr size_t kMaxTlsRptPerCall = 10000;

// The longest a send_email hook may hold a delivery back (a day) and a
// deferred hook may push a retry (a year): a typo in a hook cannot park mail
// for ever, and the queue's max_queue_age still bounces it on time.
constexpr uint32_t kMaxSendEmailDelaySeconds = 86400;
constexpr uint32_t kMaxDeferredDelaySeconds = 365 * 86400;
// Delivered notifications waiting for the hook server at once; beyond this
// they are not sent (and counted as failed): a slow hook server must not make
// the deliverer pile up requests.
constexpr int kMaxDeliveredInFlight = 256;

int64_t NowUnixMs() { return absl::ToUnixMillis(absl::Now()); }

// co_await adapter for MtaSts::Find (see lib/dns/resolver_await.h for why a
// named initiation type and a plain function).
// `store` is the queue shard whose store a policy lookup asks (MtaSts::Find).
struct StsInitiation {
  MtaSts* sts;
  std::string domain;
  size_t store;
  template <typename Handler>
  void operator()(Handler handler) {
    sts->Find(
        std::move(domain), [h = std::move(handler)](StsLookup l) mutable { std::move(h)(std::move(l)); }, store);
  }
};

asio::awaitable<StsLookup> AwaitSts(MtaSts& sts, std::string domain, size_t store) {
  return asio::async_initiate<decltype(asio::use_awaitable), void(StsLookup)>(
      StsInitiation{&sts, std::move(domain), store}, asio::use_awaitable);
}

// True for a TLS report to an RFC 8460 https: rua: the queue sets
// RecipientSpec.post_url on its one recipient, and the body is POSTed there
// instead of mailed (PostReport).
bool IsReportPost(const v1::DeliveryJob& job) {
  return std::any_of(job.recipients().begin(), job.recipients().end(),
                     [](const v1::DeliveryRecipient& r) { return !r.spec().post_url().empty(); });
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

DsnRetParam ToRet(v1::DsnRet ret) {
  switch (ret) {
    case v1::DSN_RET_FULL:
      return DsnRetParam::kFull;
    case v1::DSN_RET_HDRS:
      return DsnRetParam::kHdrs;
    default:
      return DsnRetParam::kUnspecified;
  }
}

// A recipient's outcome as the queue (and the hooks) see it.
void ToResult(const RecipientOutcome& o, v1::RecipientResult* res) {
  res->set_outcome(ToProto(o.outcome));
  res->set_reply_code(static_cast<uint32_t>(o.reply_code));
  res->set_enhanced_status(o.enhanced_status);
  res->set_reply_text(o.reply_text);
  res->set_remote_mta(o.remote_mta);
  res->set_remote_ip(o.remote_ip);
  res->set_at_unix_ms(o.at_unix_ms);
  res->set_remote_port(o.remote_port);
  res->set_mode(o.mode);
  res->set_tls(o.tls);
  res->set_tls_verified(o.tls_verified);
  res->set_auth_mechanism(o.auth_mechanism);
  res->set_ambiguous(o.ambiguous);
  res->set_retry_in_seconds(o.retry_in_seconds);
  res->set_suppress_dsn(o.suppress_dsn);
}

std::string Millis(Clock::duration d) {
  return absl::StrFormat("%.3f", std::chrono::duration<double>(d).count());
}

// "mx.example.com[192.0.2.1]:25", or the socket path for LMTP over unix.
std::string RelayOf(const std::string& mx, const std::string& ip, uint32_t port) {
  if (ip.empty()) {
    return mx.empty() ? "none" : mx;
  }
  return absl::StrCat(mx, "[", ip, "]:", port);
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
  metrics::Gauge& reports_pending = r.GetGauge("tern_deliverer_reports_pending",
                                               "Finished deliveries whose report the queue has not applied yet");
  metrics::Counter& data_gate_refused = r.GetCounter(
      "tern_deliverer_data_gate_refused_total", "Transactions stopped before DATA: the queue did not record progress");
  metrics::Counter& tls_fallbacks = r.GetCounter("tern_deliverer_tls_fallbacks_total",
                                                 "Failed TLS handshakes retried in plain text");
  metrics::Counter& chunking_fallbacks =
      r.GetCounter("tern_deliverer_chunking_fallbacks_total",
                   "Messages refused as BDAT by a host offering CHUNKING, sent again with DATA");
  metrics::Counter& suspensions = r.GetCounter(
      "tern_deliverer_suspensions_total",
      "MX addresses suspended after unreachable_after sessions in a row failed before their greeting");
  metrics::Counter& suspended_skips = r.GetCounter(
      "tern_deliverer_suspended_skips_total", "Delivery attempts not made because the MX address was suspended");
  metrics::Counter& channel_rebuilds = r.GetCounter(
      "tern_deliverer_queue_channel_rebuilds_total",
      "gRPC channels to a queue shard replaced after it stayed unreachable (see kRebuildChannelAfter)");
  metrics::Counter& ambiguous = r.GetCounter("tern_deliverer_ambiguous_total",
                                             "Recipients whose connection was lost after the final dot");
  // Latency the queue adds to each delivery: the wait at the data gate holds
  // the final dot, and a report's call holds the job's duplicate window open.
  metrics::Histogram& data_gate_seconds =
      r.GetHistogram("tern_deliverer_data_gate_seconds",
                     "Wait before the final dot for the queue to record that DATA is being sent",
                     metrics::LatencyBuckets());
  metrics::Histogram& progress_call_seconds =
      r.GetHistogram("tern_deliverer_queue_call_seconds", "Calls to the queue, send to answer",
                     metrics::LatencyBuckets(), {{"method", "Progress"}});
  metrics::Histogram& report_call_seconds =
      r.GetHistogram("tern_deliverer_queue_call_seconds", "Calls to the queue, send to answer",
                     metrics::LatencyBuckets(), {{"method", "Report"}});

  metrics::Counter& MtaStsPolicy(const StsLookup& l) {
    return r.GetCounter("tern_deliverer_mta_sts_total", "MX deliveries by the MTA-STS policy mode they ran under",
                        {{"mode", l.policy.has_value() ? StsModeName(l.policy->mode) : "absent"}});
  }
  metrics::Counter& mta_sts_stored = r.GetCounter(
      "tern_deliverer_mta_sts_stored_total",
      "MTA-STS policies taken from the queue's store, not fetched: after a restart or fetched by another deliverer");
  metrics::Counter& mta_sts_problems =
      r.GetCounter("tern_deliverer_mta_sts_problems_total",
                   "MTA-STS lookups whose TXT lookup or policy fetch failed (a cached policy may still apply)");
  metrics::Counter& mta_sts_refused_mx = r.GetCounter(
      "tern_deliverer_mta_sts_refused_mx_total", "MX hosts not tried because an enforced MTA-STS policy omits them");

  // TLS reports (RFC 8460, tls_reporting.h).
  metrics::Counter& TlsRptRecords(const char* result) {
    return r.GetCounter("tern_deliverer_tlsrpt_records_total",
                        "_smtp._tls lookups of MX domains ([tlsrpt] enabled), by what they found",
                        {{"result", result}});
  }
  metrics::Counter& TlsRptSessions(const std::string& policy, bool ok) {
    return r.GetCounter("tern_deliverer_tlsrpt_sessions_total",
                        "TLS sessions (and policy failures) counted for TLS reports, by policy type and outcome",
                        {{"policy", policy}, {"result", ok ? "successful" : "failed"}});
  }
  // TLS reports POSTed to https: rua (PostReport), by result: delivered
  // (2xx), rejected (another HTTP status), failed (no HTTP answer: DNS,
  // connect, TLS, timeout), invalid (a post_url that does not parse).
  metrics::Counter& TlsRptPosts(const char* result) {
    return r.GetCounter("tern_deliverer_tlsrpt_posts_total",
                        "TLS reports POSTed to https: rua URIs (RFC 8460 section 5.3), by result",
                        {{"result", result}});
  }
  metrics::Counter& tlsrpt_dropped = r.GetCounter(
      "tern_deliverer_tlsrpt_dropped_total",
      "TLS report counts dropped: the deliverer's buffer was full while the queue stayed away, or the queue "
      "refused them as invalid");

  metrics::Counter& Dane(DaneMode m) {
    return r.GetCounter("tern_deliverer_dane_hosts_total",
                        "TLSA lookups of MX hosts from DNSSEC-validated MX and address answers, by what they ask for",
                        {{"mode", DaneModeName(m)}});
  }

  metrics::Counter& TlsRequests(TlsRequest t) {
    return r.GetCounter("tern_deliverer_tls_requests_total",
                        "Delivery attempts of messages that ask for REQUIRETLS or say TLS-Required: No (RFC 8689)",
                        {{"request", TlsRequestName(t)}});
  }

  // DKIM signing (dkim.h): per delivery job (one message to one domain),
  // by algorithm; or left unsigned, by reason (no_domain, bad_domain,
  // no_key, error); and the deliveries that sent a signature made for
  // another delivery of the same message.
  metrics::Counter& DkimSigned(const char* algorithm) {
    return r.GetCounter("tern_deliverer_dkim_signed_total", "Deliveries whose message was DKIM-signed, by algorithm",
                        {{"algorithm", algorithm}});
  }
  metrics::Counter& dkim_reused = r.GetCounter(
      "tern_deliverer_dkim_reused_total",
      "DKIM-signed deliveries that sent the signature made for another delivery of the same message");
  metrics::Counter& DkimUnsigned(const char* reason) {
    return r.GetCounter("tern_deliverer_dkim_unsigned_total",
                        "Deliveries whose message went unsigned while DKIM signing is enabled, by reason",
                        {{"reason", reason}});
  }

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
  Impl(asio::io_context& io, const DelivererConfig& config, std::vector<std::shared_ptr<grpc::Channel>> channels,
       dns::MxResolver& resolver, RoutePlanner planner)
      : io_(io),
        config_(std::make_shared<const DelivererConfig>(config)),
        resolver_(resolver),
        planner_(std::move(planner)),
        pool_(io.get_executor(), ConnectionPool::Options{config.pool_timeout, config.pool_max_messages,
                                                         config.concurrency_max,
                                                         config.destination_connections_max}),
        streaks_(config.unreachable_after),
        worker_id_(absl::StrCat(config.me, "/", NewRandomToken().substr(0, 8))) {
    const size_t tlsrpt_max = channels.size() <= 1 ? kMaxTlsRptEntries
                                                   : std::max(kMaxTlsRptEntries / channels.size(),
                                                              kMinTlsRptEntriesPerShard);
    for (size_t i = 0; i < channels.size(); ++i) {
      shards_.push_back(std::make_unique<Shard>(io, config, i, i < config.queues.size() ? config.queues[i] : "",
                                                std::move(channels[i]), tlsrpt_max));
    }
    // DelivererConfig::Load built the contexts (and so checked the files);
    // a config that was never loaded (tests) gets tls.ini's built here.
    if (config.tls.context != nullptr) {
      tls_ = config.tls.context;
    } else if (auto ctx = config.tls.MakeContext(); ctx.ok()) {
      tls_ = *std::move(ctx);
    } else {
      log::Event(log::Level::kError, "tls_context_failed", {{"error", std::string(ctx.status().message())}});
    }
    if (config.mta_sts) {
      MtaSts::Options sts;
      sts.port = config.mta_sts_port;
      sts.timeout = config.mta_sts_timeout;
      // The queue keeps fetched policies for every deliverer and across
      // restarts (mta_sts.h), each shard those of its own deliveries: the
      // store number is the shard's index (Deliver passes it to Find). The
      // lambdas run only inside Find, called from deliveries, when this Impl
      // is owned by a shared_ptr.
      sts.load = [this](size_t store, const std::string& domain,
                        absl::AnyInvocable<void(std::optional<MtaSts::StoredPolicy>)> done) {
        if (store >= shards_.size()) {
          done(std::nullopt);
          return;
        }
        asio::co_spawn(io_, LoadStsPolicy(shared_from_this(), shards_[store].get(), domain, std::move(done)),
                       asio::detached);
      };
      sts.save = [this](size_t store, const std::string& domain, const MtaSts::StoredPolicy& policy) {
        if (store < shards_.size()) {
          asio::co_spawn(io_, SaveStsPolicy(shared_from_this(), shards_[store].get(), domain, policy),
                         asio::detached);
        }
      };
      mta_sts_ = std::make_unique<MtaSts>(io.get_executor(), resolver_, tls_, std::move(sts));
    }
    if (std::shared_ptr<grpc::Channel> hooks = hooks::MakeHooksChannel(config.hooks)) {
      hooks_ = v1::Hooks::NewStub(hooks);
    }
    dkim_ = std::make_shared<const DkimConfig>(config.dkim);
    if (config.dkim.enabled && config.dkim_threads > 0) {
      dkim_pool_ = std::make_unique<asio::thread_pool>(config.dkim_threads);
    }
  }

  void ReloadDkim(DkimConfig dkim) {
    if (dkim.enabled && config_->dkim_threads > 0 && dkim_pool_ == nullptr && !stopping_) {
      dkim_pool_ = std::make_unique<asio::thread_pool>(config_->dkim_threads);
    }
    dkim_ = std::make_shared<const DkimConfig>(std::move(dkim));
    ++dkim_generation_;
  }

  // A reload's config (its restart-only settings already the running ones,
  // KeepRestartOnlySettings): deliveries started from now on use it; those in
  // flight finish with the config they started with.
  void Reload(DelivererConfig config) {
    std::shared_ptr<asio::ssl::context> tls = config.tls.context;
    if (tls == nullptr) {  // a config not made by Load (tests)
      if (auto ctx = config.tls.MakeContext(); ctx.ok()) {
        tls = *std::move(ctx);
      } else {
        log::Event(log::Level::kError, "tls_context_failed", {{"error", std::string(ctx.status().message())}});
        tls = tls_;
      }
    }
    DkimConfig dkim = std::move(config.dkim);
    planner_.SetPreferences(config.inet_prefer, config.local_mx_ok);
    const bool raised = config.concurrency_max > config_->concurrency_max;
    config_ = std::make_shared<const DelivererConfig>(std::move(config));
    tls_ = std::move(tls);
    ReloadDkim(std::move(dkim));
    if (!planner_.local_mx_ok() && !me_resolved_) {
      asio::co_spawn(io_, ResolveMe(shared_from_this()), asio::detached);
    }
    if (raised) {
      WakeLeaseLoops();
    }
  }

  void Start() { asio::co_spawn(io_, Main(shared_from_this()), asio::detached); }

  void Stop(std::function<void()> on_stopped, std::chrono::milliseconds drain_timeout) {
    if (stopping_) {
      return;
    }
    stopping_ = true;
    log::Event(log::Level::kNotice, "stopping",
               {{"in_flight", absl::StrCat(in_flight_)}, {"pending_reports", absl::StrCat(PendingReports())}});
    for (const std::unique_ptr<Shard>& shard : shards_) {
      shard->slot_timer.cancel();
      shard->backoff_timer.cancel();
      shard->flags_timer.cancel();
      shard->tlsrpt_timer.cancel();
      if (shard->lease_ctx != nullptr) {
        shard->lease_ctx->TryCancel();
      }
      if (shard->flags_ctx != nullptr) {
        shard->flags_ctx->TryCancel();
      }
    }
    asio::co_spawn(io_, Drain(shared_from_this(), std::move(on_stopped), drain_timeout), asio::detached);
  }

 private:
  struct PendingReport {
    v1::DeliveryReport report;
  };

  struct Shard;

  // What a delivery's transactions pass before DATA; lives in Deliver's
  // frame, shared by its attempts at successive addresses.
  struct DataGate {
    Impl* self;
    Shard* shard;  // the job's: its Progress goes there
    const v1::DeliveryJob* job;
    bool recorded = false;    // the queue holds data_sent for this lease
    bool lease_gone = false;  // the queue no longer holds this lease for us
  };

  // A progress item waiting for its call's answer.
  struct ProgressWaiter {
    explicit ProgressWaiter(asio::io_context& io) : wake(io) {}
    asio::steady_timer wake;
    std::optional<absl::Status> verdict;
  };
  struct PendingProgress {
    v1::DeliveryProgress item;
    std::shared_ptr<ProgressWaiter> waiter;
  };

  // One queue shard (ARCHITECTURE.md §8; the only one of an unsharded
  // queue): its stub and the state of every kind of call to it. Each job
  // keeps a pointer to the shard it was leased from, and every call about
  // it (Progress, Report) and about what its delivery learnt (host flags,
  // MTA-STS policies, TLS report counts) goes there: the lease, its token
  // and the stored state live there. Owned by shards_ for the Impl's
  // lifetime, at a stable address; used on the executor only.
  struct Shard {
    Shard(asio::io_context& io, const DelivererConfig& config, size_t shard_index, std::string queue_target,
          std::shared_ptr<grpc::Channel> channel, size_t tlsrpt_max)
        : index(shard_index),
          target(std::move(queue_target)),
          name(target.empty() ? absl::StrCat("shard ", shard_index) : target),
          stub(v1::Queue::NewStub(channel)),
          slot_timer(io),
          backoff_timer(io),
          lease_pacer(config.call_batch_wait, config.lease_batch),
          report_pacer(config.call_batch_wait, config.lease_batch),
          report_wake(io),
          progress_wake(io),
          flags_timer(io),
          tlsrpt_timer(io),
          tlsrpt_counts(tlsrpt_max) {}

    // Competes for free slots now: neither in a Lease call nor backing off
    // after a failed one (ShareOf).
    bool Wanting() const { return !leasing && !backing_off; }

    const size_t index;        // in config.queues; also its MtaSts store number
    const std::string target;  // what a rebuilt channel dials; "" = unknown, never rebuilt
    const std::string name;    // for logs ("queue"): the target
    std::unique_ptr<v1::Queue::Stub> stub;

    // LeaseLoop.
    asio::steady_timer slot_timer;     // waits for a free slot (WakeLeaseLoops)
    asio::steady_timer backoff_timer;  // the pacer's wait, and backoff after a failure
    CallPacer lease_pacer;
    grpc::ClientContext* lease_ctx = nullptr;
    bool leasing = false;      // a Lease call is in flight, holding its max_jobs in reserved_
    bool backing_off = false;  // after a failed Lease
    uint64_t last_lease = 0;   // leases_sent_ when its last Lease went out (WakeLeaseLoops)

    // Reports (ReporterLoop, or carried by a Progress call).
    CallPacer report_pacer;
    asio::steady_timer report_wake;
    std::deque<PendingReport> pending;
    int report_calls = 0;
    // Reports ride on Progress calls until the shard shows it ignores them.
    bool carry_reports = true;
    bool report_failing = false;
    Clock::time_point report_retry_at{};
    Clock::duration report_backoff = kMinReportBackoff;

    // Progress (ProgressLoop).
    asio::steady_timer progress_wake;
    std::deque<PendingProgress> progress;
    int progress_calls = 0;
    bool progress_warned = false;
    bool progress_unimplemented_warned = false;

    // Host flags (HostFlagsLoop, PutHostFlag), MTA-STS store, TLS reports.
    asio::steady_timer flags_timer;
    grpc::ClientContext* flags_ctx = nullptr;
    bool get_flags_warned = false;
    bool put_flags_warned = false;
    bool sts_store_warned = false;  // GetStsPolicy/PutStsPolicy
    asio::steady_timer tlsrpt_timer;
    TlsRptCounter tlsrpt_counts;
    bool tlsrpt_warned = false;  // RecordTlsResults
  };

  // The addresses of `me` count as this host (Haraka's is_local_host);
  // looked up once, when local_mx_ok=false first needs them.
  static asio::awaitable<void> ResolveMe(std::shared_ptr<Impl> self) {
    if (self->me_resolved_ || self->config_->me.empty()) {
      co_return;
    }
    self->me_resolved_ = true;
    dns::HostAnswer me = co_await dns::AwaitHost(self->resolver_, self->config_->me);
    std::vector<std::string> addresses = me.ipv4;
    addresses.insert(addresses.end(), me.ipv6.begin(), me.ipv6.end());
    self->planner_.AddLocalAddresses(addresses);
  }

  static asio::awaitable<void> Main(std::shared_ptr<Impl> self) {
    if (!self->config_->local_mx_ok) {
      co_await ResolveMe(self);
    }
    auto executor = co_await asio::this_coro::executor;
    if (self->shards_.empty()) {
      log::Event(log::Level::kError, "no_queue", {{"note", "the worker was given no queue channel: nothing to lease"}});
      co_return;
    }
    for (const std::unique_ptr<Shard>& shard : self->shards_) {
      asio::co_spawn(executor, ReporterLoop(self, shard.get()), asio::detached);
      asio::co_spawn(executor, ProgressLoop(self, shard.get()), asio::detached);
      asio::co_spawn(executor, HostFlagsLoop(self, shard.get()), asio::detached);
      if (self->config_->tlsrpt) {
        asio::co_spawn(executor, TlsRptLoop(self, shard.get()), asio::detached);
      }
    }
    for (size_t i = 1; i < self->shards_.size(); ++i) {
      asio::co_spawn(executor, LeaseLoop(self, self->shards_[i].get()), asio::detached);
    }
    co_await LeaseLoop(self, self->shards_[0].get());
  }

  // ---- Leasing from the queue shards ----------------------------------------
  //
  // One LeaseLoop per shard, all drawing on one budget of concurrency_max
  // slots. A slot is held by a delivery in flight, by a finished delivery
  // whose report the queue has not settled yet, or by a Lease call in flight
  // for each job it asked for (its max_jobs, in reserved_): several calls are
  // out at once, each may come back full, and the bound stays exact.
  //
  // Fairness. A shard with a deep backlog answers each Lease at once with a
  // full batch; an idle one holds its long poll for a second. A loop that
  // took every slot it found free would let the busy shard have all of them
  // as they came free, and work arriving on the others would wait for it to
  // drain. So a loop asks for at most its share of the free slots: divided
  // among the loops that want slots now (not in a Lease call, not backing
  // off), rounded up (ShareOf). When slots come free, every loop waiting for
  // one is woken, the one whose last Lease went out longest ago first
  // (WakeLeaseLoops), so slots that come free one at a time go to the
  // shards in turn, not always to the busiest. A Lease that brings back
  // fewer jobs than it reserved wakes the others and lets them run before it
  // asks again. So an idle shard holds at most its share while it polls
  // (near saturation, about one slot), and a busy shard gets everything the
  // others leave. Fair means no shard starves, not equal counts: a shard
  // whose jobs finish sooner frees slots sooner.
  //
  // Isolation. Each loop has its own channel, backoff and channel rebuild: a
  // shard that is down fails its calls at once and backs off alone (wanting
  // no share meanwhile); one that hangs holds only its share, until the
  // call's deadline. Its reports and progress wait on their own loops.
  //
  // With one shard this is the single loop it always was: its share is every
  // free slot, and there is no one else to wake or let run first.
  static asio::awaitable<void> LeaseLoop(std::shared_ptr<Impl> self, Shard* shard) {
    auto executor = co_await asio::this_coro::executor;
    Clock::duration backoff = std::chrono::milliseconds(100);
    bool queue_down = false;
    bool reached = false;  // a Lease has got through since this worker started
    Clock::time_point down_since;
    bool last_came_back_short = false;
    while (!self->stopping_) {
      // After a Lease that found fewer jobs than it asked for, the next one
      // waits a moment so that it finds several (see CallPacer); a long poll
      // that waited for work has already waited longer than that.
      const Clock::time_point now = Clock::now();
      const Clock::time_point lease_at =
          shard->lease_pacer.ReadyAt(last_came_back_short ? 0 : self->config_->lease_batch, now);
      if (lease_at > now) {
        shard->backoff_timer.expires_at(lease_at);
        co_await shard->backoff_timer.async_wait(kNoThrow);
        continue;
      }
      // A finished job keeps its slot until the queue has applied its
      // report: a slow or unreachable queue then slows leasing instead of
      // piling up delivered-but-unreported work (each one a duplicate if
      // this process dies).
      const uint32_t free = self->FreeSlots();
      if (free == 0) {
        shard->slot_timer.expires_at(Clock::time_point::max());
        ++self->slot_waiters_;
        co_await shard->slot_timer.async_wait(kNoThrow);
        --self->slot_waiters_;
        continue;
      }
      v1::LeaseRequest request;
      request.set_kind(v1::JOB_KIND_DELIVERY);
      request.set_max_jobs(std::min(self->ShareOf(free), self->config_->lease_batch));
      shard->lease_pacer.Started(now);
      request.set_wait_ms(kLeaseWaitMs);
      request.set_worker_id(self->worker_id_);
      v1::LeaseResponse response;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(kLeaseWaitMs) +
                       std::chrono::seconds(10));
      shard->lease_ctx = &ctx;
      shard->leasing = true;
      shard->last_lease = ++self->leases_sent_;
      self->reserved_ += request.max_jobs();
      grpc::Status status = co_await rpc::AwaitGrpc(
          [&](auto done) { shard->stub->async()->Lease(&ctx, &request, &response, std::move(done)); });
      self->reserved_ -= request.max_jobs();
      shard->leasing = false;
      shard->lease_ctx = nullptr;
      if (!status.ok()) {
        if (self->stopping_) {
          break;
        }
        if (!queue_down) {
          queue_down = true;
          down_since = Clock::now();
          log::Event(log::Level::kWarn, "queue_unreachable",
                     {{"queue", shard->name}, {"error", status.error_message()}});
        } else if (Clock::now() - down_since >= kRebuildChannelAfter && !shard->target.empty()) {
          // Calls in flight on the old stub keep their own channel reference.
          shard->stub = v1::Queue::NewStub(rpc::MakeChannel(shard->target));
          down_since = Clock::now();
          self->metrics_.channel_rebuilds.Inc();
          log::Event(log::Level::kNotice, "queue_channel_rebuilt",
                     {{"queue", shard->name}, {"error", status.error_message()}});
        }
        // The slots this call held are free for the other shards meanwhile.
        shard->backing_off = true;
        if (self->shards_.size() > 1) {
          self->WakeLeaseLoops();
        }
        shard->backoff_timer.expires_after(backoff);
        co_await shard->backoff_timer.async_wait(kNoThrow);
        shard->backing_off = false;
        backoff = std::min<Clock::duration>(backoff * 2, kMaxBackoff);
        continue;
      }
      if (queue_down || !reached) {
        // Also the first time: that this deliverer talks to the queue is
        // news to an operator (or a test) waiting for it to take work.
        log::Event(log::Level::kNotice, "queue_reachable",
                   {{"queue", shard->name}, {"first", reached ? "no" : "yes"}});
        queue_down = false;
        reached = true;
      }
      backoff = std::chrono::milliseconds(100);
      last_came_back_short = response.deliveries_size() < static_cast<int>(request.max_jobs());
      for (auto& job : *response.mutable_deliveries()) {
        ++self->in_flight_;
        self->metrics_.in_flight.Set(self->in_flight_);
        asio::co_spawn(executor, RunDelivery(self, shard, std::move(job)), asio::detached);
      }
      if (last_came_back_short && self->shards_.size() > 1) {
        // The slots reserved and not filled are free again: the loops
        // waiting for slots are woken and run before this one asks again.
        self->WakeLeaseLoops();
        co_await asio::post(executor, asio::use_awaitable);
      }
    }
  }

  // Slots of concurrency_max held by nothing: no delivery, no unsettled
  // report, no Lease call in flight.
  uint32_t FreeSlots() const {
    const uint32_t busy = in_flight_ + unreported_ + reserved_;
    return config_->concurrency_max - std::min(busy, config_->concurrency_max);
  }

  // How many of `free` slots the lease loop about to call may ask for: an
  // equal part (rounded up) for each loop that wants slots now, itself
  // included; all of them when there is one shard.
  uint32_t ShareOf(uint32_t free) const {
    if (shards_.size() == 1) {
      return free;
    }
    uint32_t wanting = 0;
    for (const std::unique_ptr<Shard>& shard : shards_) {
      wanting += shard->Wanting() ? 1 : 0;
    }
    wanting = std::max<uint32_t>(wanting, 1);
    return (free + wanting - 1) / wanting;
  }

  // Slots may have come free: every lease loop waiting for one looks again,
  // in the order woken here, which is the order they run in. The loop that
  // runs first takes the most (ShareOf rounds up), so the loop whose last
  // Lease went out longest ago goes first: slots freed one at a time go
  // round the shards instead of always to the same one.
  void WakeLeaseLoops() {
    if (shards_.size() == 1) {
      shards_[0]->slot_timer.cancel();
      return;
    }
    if (slot_waiters_ == 0 || FreeSlots() == 0) {
      return;  // no one to wake, or nothing to take: the next free slot wakes them
    }
    wake_order_.clear();
    for (const std::unique_ptr<Shard>& shard : shards_) {
      wake_order_.push_back(shard.get());
    }
    std::sort(wake_order_.begin(), wake_order_.end(),
              [](const Shard* a, const Shard* b) { return a->last_lease < b->last_lease; });
    for (Shard* shard : wake_order_) {
      shard->slot_timer.cancel();
    }
  }

  // One leased job, from `shard`, which its report goes back to.
  static asio::awaitable<void> RunDelivery(std::shared_ptr<Impl> self, Shard* shard, v1::DeliveryJob job) {
    const Clock::time_point start = Clock::now();
    std::vector<RecipientOutcome> outcomes;
    uint32_t held_seconds = 0;
    try {
      outcomes = co_await self->Deliver(shard, job, &held_seconds);
      // The hooks are about mail; a TLS report POST is not (see Deliver).
      if (!outcomes.empty() && self->HookOn(hooks::Hook::kDeferred) && !IsReportPost(job)) {
        co_await self->AskDeferred(job, outcomes);
      }
    } catch (const std::exception& e) {
      // Coroutine root: nothing may escape. The job is not reported and its
      // lease expiry makes it due again.
      log::Event(log::Level::kError, "delivery_crashed", {{"msg", job.message_id()}, {"error", e.what()}});
    }
    const std::string delay = absl::StrFormat("%.2f", std::chrono::duration<double>(Clock::now() - start).count());
    if (held_seconds > 0) {
      // The send_email hook held the delivery back: a report naming no
      // recipient gives the lease back, and the queue makes them due again
      // after the hook's delay without counting an attempt.
      PendingReport pending;
      pending.report.set_delivery_id(job.delivery_id());
      pending.report.set_lease_token(job.lease_token());
      pending.report.set_delay_unreported_seconds(held_seconds);
      self->EnqueueReport(shard, std::move(pending));
    }
    if (!outcomes.empty()) {
      self->RememberFinals(job, outcomes);
      PendingReport pending;
      pending.report.set_delivery_id(job.delivery_id());
      pending.report.set_lease_token(job.lease_token());
      for (int i = 0; i < job.recipients_size(); ++i) {
        const RecipientOutcome& o = outcomes[i];
        auto* r = pending.report.add_recipients();
        r->set_index(job.recipients(i).index());
        ToResult(o, r->mutable_result());
        self->metrics_.Recipients(o.outcome).Inc();
        if (o.ambiguous) {
          self->metrics_.ambiguous.Inc();
        }
        const std::string relay = RelayOf(o.remote_mta, o.remote_ip, o.remote_port);
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
                    {"tls", o.tls.empty() ? "none" : o.tls},
                    {"ambiguous", o.ambiguous ? "yes" : "no"},
                    {"reply", reply}});
      }
      self->EnqueueReport(shard, std::move(pending));
      if (self->HookOn(hooks::Hook::kDelivered) && !IsReportPost(job)) {
        self->NotifyDelivered(job, outcomes);
      }
    }
    --self->in_flight_;
    self->metrics_.in_flight.Set(self->in_flight_);
    self->WakeLeaseLoops();
  }

  // One delivery: route (static route, get_mx hook or DNS), then SMTP/LMTP
  // per address. One outcome per recipient, in job order; none is ever left
  // without one, except when the send_email hook holds the whole delivery
  // back: then no outcome, and `*held_seconds` says for how long.
  // `job` is a reference into the awaiting RunDelivery frame, which
  // co_awaits this directly (never spawned), so it outlives the call; so
  // does `shard`, the job's, where what the delivery learns is sent.
  asio::awaitable<std::vector<RecipientOutcome>> Deliver(Shard* shard, v1::DeliveryJob& job,
                                                         uint32_t* held_seconds) {
    // The config as it is now, for the whole delivery: a reload replaces
    // config_ (Reload), and the static route this delivery goes by, its TLS
    // context and its timeouts belong to the config they came from.
    const std::shared_ptr<const DelivererConfig> config = config_;
    const DelivererConfig& cfg = *config;
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

    // A delivery this worker already finished, whose report the queue has not
    // applied (it was down, or restarted and gave the job out again): the
    // final outcomes stand, so those recipients are not sent a second time.
    if (auto it = unconfirmed_.find(job.delivery_id()); it != unconfirmed_.end()) {
      size_t reused = 0;
      for (size_t i = 0; i < n; ++i) {
        auto f = it->second.finals.find(job.recipients(static_cast<int>(i)).index());
        if (f != it->second.finals.end()) {
          decided[i] = f->second;
          ++reused;
        }
      }
      if (reused > 0) {
        log::Event(log::Level::kNotice, "unconfirmed_outcomes_reused",
                   {{"msg", job.message_id()}, {"delivery", job.delivery_id()},
                    {"rcpts", absl::StrCat(reused)}, {"note", "already delivered or failed by this worker"}});
      }
      if (reused == n) {
        co_return finish();
      }
    }
    // A TLS report for an https: rua is POSTed, not mailed: no hook is asked
    // (they are about mail), no route, MX, MTA-STS, DANE or TLS report
    // counting, no data gate, pool or host flags apply (PostReport).
    if (IsReportPost(job)) {
      RecipientOutcome posted = co_await PostReport(job);
      decide_rest(posted);
      co_return finish();
    }
    // Haraka's send_email hook; not for a delivery partly decided already
    // (its reused outcomes must be reported now).
    const bool fresh = std::none_of(decided.begin(), decided.end(), [](const auto& d) { return d.has_value(); });
    if (fresh && HookOn(hooks::Hook::kSendEmail)) {
      *held_seconds = co_await AskSendEmail(job);
      if (*held_seconds > 0) {
        co_return std::vector<RecipientOutcome>{};
      }
    }

    // RFC 8689: REQUIRETLS (the envelope) or "TLS-Required: No" (a header
    // field); read before the body moves into the shared buffer.
    const TlsRequest tls_request = MessageTlsRequest(job.requiretls(), job.body());
    if (tls_request != TlsRequest::kDefault) {
      metrics_.TlsRequests(tls_request).Inc();
    }
    const Clock::time_point dns_start = Clock::now();
    const StaticRoute* static_route = cfg.RouteFor(job.domain(), job.mail_from());
    // Routes the get_mx hook answered with (when no static route applies),
    // one per host since each host may have its own AUTH and bind.
    std::vector<StaticRoute> hook_routes;
    if (static_route == nullptr && HookOn(hooks::Hook::kGetMx)) {
      GetMxVerdict verdict = co_await AskGetMx(job);
      if (verdict.kind == GetMxVerdict::kFail) {
        decide_rest(LocalOutcome(OutcomeClass::kPermanent, "5.1.2",
                                 verdict.text.empty() ? absl::StrCat("No MX for ", job.domain()) : verdict.text, "",
                                 "", 550));
        co_return finish();
      }
      if (verdict.kind == GetMxVerdict::kDefer) {
        decide_rest(LocalOutcome(
            OutcomeClass::kTransient, "4.1.2",
            verdict.text.empty() ? absl::StrCat("Temporary failure finding MX for ", job.domain()) : verdict.text,
            "", "", 450));
        co_return finish();
      }
      hook_routes = std::move(verdict.routes);
    }
    RoutePlan plan;
    // An MTA-STS policy in enforce mode covers these MX hosts: TLS with a
    // verified certificate, whatever tls.ini says.
    bool sts_enforced = false;
    // DANE per MX host and port (TlsaName), when the MX answer was
    // validated; empty otherwise.
    std::map<std::string, DaneHost> dane_hosts;
    // The route each attempt belongs to (its AUTH, bind, HELO name and TLS
    // policy); null for MX hosts from DNS.
    std::vector<const StaticRoute*> attempt_routes;
    // TLS reports (tls_reporting.h): the rua of the domain's TLSRPT record
    // when its sessions are counted (MX from DNS only), and the policy they
    // run under where DANE does not name one per host.
    std::vector<std::string> tlsrpt_rua;
    TlsRptPolicy report_policy = NoPolicyForReport();
    std::vector<const StaticRoute*> routes;
    if (static_route != nullptr) {
      routes.push_back(static_route);
    }
    for (const StaticRoute& r : hook_routes) {
      routes.push_back(&r);
    }
    if (!routes.empty()) {
      // Haraka's get_mx answered by configuration or the hook: no MX lookup;
      // host names in the route still need their addresses.
      for (const StaticRoute* r : routes) {
        std::vector<dns::HostAnswer> answers(r->hosts.size());
        for (size_t i = 0; i < r->hosts.size(); ++i) {
          const RouteHost& h = r->hosts[i];
          if (h.unix_path.empty() && !net::IsIpLiteral(h.host)) {
            answers[i] = co_await dns::AwaitHost(resolver_, h.host);
          }
        }
        RoutePlan part = planner_.PlanRoute(*r, answers);
        attempt_routes.insert(attempt_routes.end(), part.attempts.size(), r);
        std::move(part.attempts.begin(), part.attempts.end(), std::back_inserter(plan.attempts));
        std::move(part.skipped.begin(), part.skipped.end(), std::back_inserter(plan.skipped));
        plan.dns_trouble = plan.dns_trouble || part.dns_trouble;
      }
    } else {
      dns::MxAnswer mx = co_await dns::AwaitMx(resolver_, job.domain());
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
      plan = planner_.Plan(mx);
      // RFC 8461 §2: where DANE applies, it is used instead of MTA-STS.
      // "TLS-Required: No" asks that neither be consulted (RFC 8689 §5).
      const bool recipient_policies = tls_request != TlsRequest::kTlsOptional;
      if (!recipient_policies) {
        log::Event(log::Level::kInfo, "tls_policies_ignored",
                   {{"msg", job.message_id()}, {"domain", job.domain()}, {"reason", "TLS-Required: No"}});
      }
      // RFC 8460: a domain that asks for TLS reports gets its sessions
      // counted. Not a message that waives the domain's policies, as TLS
      // reports themselves do (§5.3).
      if (cfg.tlsrpt && recipient_policies) {
        tlsrpt_rua = co_await TlsRptRua(job.domain());
      }
      bool dane_applies = false;
      if (cfg.dane && mx.secure && recipient_policies) {
        dane_applies = co_await ApplyDane(shard, job, mx, plan, dane_hosts, tlsrpt_rua);
      }
      if (mta_sts_ != nullptr && !dane_applies && recipient_policies) {
        StsLookup sts;
        sts_enforced = co_await ApplyMtaSts(shard, job, plan, &sts);
        const bool sts_applies = sts.policy.has_value() && sts.policy->mode != StsMode::kNone;
        if (!tlsrpt_rua.empty() && sts_applies) {
          report_policy = StsPolicyForReport(*sts.policy);
        } else if (!tlsrpt_rua.empty() && !sts.problem.empty()) {
          // No policy to apply because it could not be had: the domain
          // learns of it under "sts", with the reason.
          TlsRptPolicy none_fetched{tlsrpt::kPolicySts, {}, {}};
          CountTls(shard, job.domain(), none_fetched, StsProblemResultType(sts.problem), "", "", sts.problem,
                   tlsrpt_rua);
        }
      }
      if (tls_request == TlsRequest::kRequireTls) {
        if (std::string problem = RequireTlsMxProblem(job.domain(), mx.secure, sts_enforced); !problem.empty()) {
          decide_rest(LocalOutcome(OutcomeClass::kPermanent, kRequireTlsStatus, problem));
          co_return finish();
        }
      }
      attempt_routes.assign(plan.attempts.size(), nullptr);
    }
    const Clock::duration dns_delay = Clock::now() - dns_start;
    if (plan.attempts.empty()) {
      decide_rest(LocalOutcome(
          OutcomeClass::kTransient, plan.dns_trouble ? "4.4.3" : "4.4.4",
          absl::StrCat(static_route != nullptr          ? "no usable host in the static route for "
                       : !hook_routes.empty() ? "no usable host in the get_mx hook's routes for "
                                              : "no usable MX for ",
                       job.domain(), ": ", plan.skipped.empty() ? "no MX host" : absl::StrJoin(plan.skipped, "; "))));
      co_return finish();
    }

    auto body = std::make_shared<const std::string>(std::move(*job.mutable_body()));
    // Signed once: every transaction of this delivery sends the same field.
    const std::shared_ptr<const std::string> dkim_signature = co_await SignDkim(job, body);
    std::vector<size_t> undecided;
    for (size_t i = 0; i < n; ++i) {
      if (!decided[i]) {
        undecided.push_back(i);
      }
    }
    RecipientOutcome last_failure = LocalOutcome(OutcomeClass::kTransient, "4.4.1", "no MX address was tried");
    size_t tried = 0;
    // REQUIRETLS (RFC 8689 §4.2.1): each MX host is tried in turn; the
    // message bounces only when every address was reached and none offered
    // REQUIRETLS. One skipped or failing otherwise may yet offer it.
    size_t lacking_requiretls = 0;
    bool all_addresses_reached = true;
    std::optional<RecipientOutcome> requiretls_failure;
    DataGate gate{this, shard, &job};
    for (size_t a = 0; a < plan.attempts.size(); ++a) {
      const Attempt& attempt = plan.attempts[a];
      const StaticRoute* route = attempt_routes[a];
      if (undecided.empty()) {
        break;
      }
      // Do not start a new address when the lease would end mid-session: the
      // report would be refused as stale and the recipients tried again.
      const int64_t margin_ms = 2 * std::chrono::duration_cast<std::chrono::milliseconds>(cfg.connect_timeout).count();
      if (tried > 0 && NowUnixMs() + margin_ms > job.lease_deadline_unix_ms()) {
        last_failure.reply_text += " (lease time used up before the next MX address)";
        all_addresses_reached = false;
        break;
      }
      const std::string flag_host = attempt.unix_path.empty() ? attempt.ip : attempt.unix_path;
      if (host_flags_.Has(flag_host, kUnreachableFlag, NowUnixMs())) {
        // Suspended (unreachable_after): on to the next address, or this
        // failure is what the delivery is deferred with.
        metrics_.suspended_skips.Inc();
        all_addresses_reached = false;
        last_failure = LocalOutcome(OutcomeClass::kTransient, "4.4.1",
                                    absl::StrCat("delivery to ", RelayOf(attempt.mx_host, attempt.ip, attempt.port),
                                                 " temporarily suspended: ",
                                                 host_flags_.Reason(flag_host, kUnreachableFlag)),
                                    attempt.mx_host, attempt.ip);
        continue;
      }
      ++tried;
      TransactionRequest request;
      request.helo_name = route != nullptr && !route->bind_helo.empty() ? route->bind_helo : cfg.me;
      request.mx_host = attempt.mx_host;
      request.ip = attempt.ip;
      request.port = attempt.port;
      request.unix_path = attempt.unix_path;
      request.lmtp = attempt.lmtp;
      request.mail_from = job.mail_from();
      for (size_t i : undecided) {
        const v1::RecipientSpec& spec = job.recipients(static_cast<int>(i)).spec();
        RecipientRequest r(spec.address());
        r.notify = spec.notify();
        r.orcpt = spec.orcpt();
        request.recipients.push_back(std::move(r));
      }
      request.body = body;
      request.dkim_signature = dkim_signature;
      request.smtputf8 = job.smtputf8();
      request.body_8bit = job.body_8bit();
      request.ret = ToRet(job.ret());
      request.envid = job.envid();
      request.chunking = cfg.chunking && !host_flags_.Has(flag_host, kNoChunkingFlag, NowUnixMs());
      const TlsDecision tls =
          cfg.tls.Decide(cfg.enable_tls, route != nullptr ? route->tls : RouteTls::kOpportunistic,
                             host_flags_.Has(flag_host, kBrokenTlsFlag, NowUnixMs()), attempt.ip, attempt.mx_host,
                             job.domain());
      request.tls = sts_enforced ? TlsMode::kRequired : tls.mode;  // without a context: required → error
      request.verify_tls = sts_enforced || tls.verify;
      // A route's tls=implicit (port 465 by default): TLS before the banner.
      request.implicit_tls = route != nullptr && route->tls == RouteTls::kImplicit && attempt.unix_path.empty();
      if (sts_enforced) {
        request.tls_required_by = absl::StrCat("the MTA-STS policy of ", job.domain());
      }
      // What DANE asks of this host; null when it asks nothing.
      const DaneHost* dane = nullptr;
      if (auto it = dane_hosts.find(TlsaName(attempt.mx_host, attempt.port));
          it != dane_hosts.end() && it->second.mode != DaneMode::kNone) {
        dane = &it->second;
      }
      if (dane != nullptr) {
        // DANE overrides tls.ini and the broken-TLS memory for this host:
        // no plain-text fallback, and the TLSA records, not the Web PKI,
        // decide whether the certificate is the right one.
        request.tls = TlsMode::kRequired;
        request.tls_required_by = absl::StrCat("the DANE TLSA records of ",
                                               dane->base_domain.empty() ? attempt.mx_host : dane->base_domain);
        if (dane->mode == DaneMode::kAuthenticated) {
          request.dane = dane->records;
          request.dane_base = dane->base_domain;
          request.verify_tls = false;
        } else {
          request.tls_unauthenticated = true;
          request.verify_tls = tls.verify;
          absl::StrAppend(&request.tls_required_by, " (none of them usable, so the certificate is not checked)");
        }
      }
      if (tls_request == TlsRequest::kRequireTls && attempt.unix_path.empty()) {
        // RFC 8689 §4.2.1: TLS whatever tls.ini or the route says, with a
        // certificate that DANE (set above) or the Web PKI vouches for, to
        // a host that offers REQUIRETLS (RunSmtpTransaction checks). A
        // local LMTP socket is final delivery: nothing to encrypt.
        request.tls = TlsMode::kRequired;
        request.requiretls = true;
        if (request.dane.empty()) {
          request.verify_tls = true;
          request.tls_unauthenticated = false;
          request.tls_required_by = "the sender (REQUIRETLS)";
        }
      }
      request.tls_context = tls_;
      if (route != nullptr && !route->tls_cert.empty()) {
        // Never tls.ini's certificate in place of the route's: without its
        // context (DelivererConfig::Load refuses such a config; only a
        // config built by hand gets here) the route goes without TLS
        // context, which fails a required TLS and skips an opportunistic one.
        auto it = cfg.route_tls.find(route->domain);
        request.tls_context = it == cfg.route_tls.end() ? nullptr : it->second;
        request.tls_client_cert = route->tls_cert;
      }
      if (route != nullptr && route->has_auth()) {
        request.auth_user = route->auth_user;
        request.auth_pass = route->auth_pass;
        request.auth_type = route->auth_type;
        request.force_auth = route->force_auth;
      }
      request.bind_ip = route != nullptr ? route->bind : "";
      request.timeouts = cfg.timeouts;
      request.pool = &pool_;
      // Waiting for one of the destination's connections
      // (destination_connections_max) may take up to half of what is left of
      // the lease, at least connect_timeout: a delivery in line behind a
      // burst to a slow MX is not failed (and its retry spent) after 30 s,
      // and the other half leaves the transaction time before the lease ends.
      const int64_t lease_left_ms = std::max<int64_t>(0, job.lease_deadline_unix_ms() - NowUnixMs());
      request.connection_wait =
          std::max<std::chrono::steady_clock::duration>(cfg.timeouts.connect,
                                                        std::chrono::milliseconds(lease_left_ms / 2));
      // Only a pointer captured (GCC 12 coroutine argument bug); `gate`
      // lives in this frame, which outlives the transaction.
      DataGate* gate_ptr = &gate;
      request.before_data = [gate_ptr] { return gate_ptr->self->PassDataGate(gate_ptr); };

      absl::StatusOr<TransactionResult> result = co_await RunSmtpTransaction(request);
      if (result.ok() && !tlsrpt_rua.empty() && route == nullptr) {
        CountTlsSession(shard, job.domain(),
                        dane != nullptr ? DanePolicyForReport(dane->records) : report_policy,
                        !request.dane.empty(), dane != nullptr && request.dane.empty(), attempt, *result,
                        tlsrpt_rua);
      }
      if (result.ok() && result->tls_failed && request.tls == TlsMode::kOpportunistic) {
        // Opportunistic TLS: a broken handshake must not make the host
        // unreachable. Retry the same address in plain text now, and tell
        // every deliverer to skip TLS there for tls_failure_ttl.
        metrics_.tls_fallbacks.Inc();
        log::Event(log::Level::kNotice, "tls_failed_retrying_plain",
                   {{"msg", job.message_id()}, {"relay", RelayOf(attempt.mx_host, attempt.ip, attempt.port)},
                    {"error", result->failure}});
        MarkBrokenTls(shard, flag_host, result->failure);
        request.tls = TlsMode::kNone;
        result = co_await RunSmtpTransaction(request);
      }
      if (result.ok() && result->chunking_refused && request.chunking) {
        // CHUNKING offered, BDAT refused: no verdict on the message. Send
        // it again with DATA now (the data gate is already passed for this
        // lease), and tell every deliverer to use DATA there for a while.
        metrics_.chunking_fallbacks.Inc();
        log::Event(log::Level::kNotice, "bdat_refused_retrying_data",
                   {{"msg", job.message_id()}, {"relay", RelayOf(attempt.mx_host, attempt.ip, attempt.port)},
                    {"error", result->failure}});
        SetHostFlag(shard, flag_host, kNoChunkingFlag, cfg.chunking_failure_ttl, result->failure,
                    /*share=*/true);
        request.chunking = false;
        result = co_await RunSmtpTransaction(request);
      }
      if (!result.ok()) {
        last_failure = LocalOutcome(OutcomeClass::kTransient, "4.3.0", std::string(result.status().message()),
                                    attempt.mx_host, attempt.ip);
        continue;
      }
      LogAttempt(job, attempt, *result, dns_delay);
      if (result->unreachable) {
        NoteUnreachable(shard, flag_host, RelayOf(attempt.mx_host, attempt.ip, attempt.port), result->failure);
      } else if (result->connected) {
        streaks_.Succeeded(flag_host);
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
      if (result->requiretls_missing) {
        ++lacking_requiretls;
        requiretls_failure = LocalOutcome(OutcomeClass::kPermanent, kRequireTlsStatus, result->failure,
                                          attempt.mx_host, attempt.ip);
        requiretls_failure->remote_port = attempt.port;
        requiretls_failure->mode = attempt.lmtp ? "LMTP" : "SMTP";
        requiretls_failure->tls = result->tls;  // what was negotiated before the EHLO said no
        requiretls_failure->tls_verified = result->tls_verified;
      } else if (!undecided.empty()) {
        metrics_.connection_errors.Inc();
        last_failure = LocalOutcome(OutcomeClass::kTransient,
                                    result->failure_enhanced.empty() ? "4.4.2" : result->failure_enhanced,
                                    result->failure, attempt.mx_host, attempt.ip, result->failure_code);
        last_failure.remote_port = attempt.port;
        last_failure.mode = attempt.lmtp ? "LMTP" : "SMTP";
      }
      if (gate.lease_gone) {
        // The queue gave this delivery up (lease expired, or leased again
        // after a restart): every other address would be refused the same way.
        all_addresses_reached = false;
        break;
      }
    }
    if (!undecided.empty() && requiretls_failure && lacking_requiretls == tried) {
      last_failure = *std::move(requiretls_failure);
      if (!all_addresses_reached) {
        // Not every address was asked: perhaps another one offers it.
        last_failure.outcome = OutcomeClass::kTransient;
        last_failure.enhanced_status = "4.7.30";
        last_failure.reply_text += " (not every MX address could be tried)";
      }
    }
    if (!undecided.empty() && tried > 1) {
      last_failure.reply_text += absl::StrCat(" (", tried, " MX addresses tried)");
    }
    decide_rest(last_failure);
    co_return finish();
  }

  // ---- The user's gRPC Hooks (lib/hooks, proto/tern/v1/hooks.proto) ------
  // Each call has hooks.ini's deadline; whatever goes wrong, the delivery
  // goes on as it would without the hook (LogHookFailure says how).

  bool HookOn(hooks::Hook hook) const { return hooks_ != nullptr && config_->hooks.Calls(hook); }

  static void FillHookDelivery(const v1::DeliveryJob& job, v1::HookDelivery* d) {
    d->set_message_id(job.message_id());
    d->set_delivery_id(job.delivery_id());
    d->set_domain(job.domain());
    d->set_mail_from(job.mail_from());
    uint32_t failures = 0;
    for (const auto& r : job.recipients()) {
      d->add_recipients(r.spec().address());
      failures = std::max(failures, r.attempts());
    }
    // Not job.attempt(), which counts leases: a held delivery is leased again
    // without having been tried.
    d->set_attempt(failures + 1);
  }

  void SetHookDeadline(grpc::ClientContext& ctx) const {
    ctx.set_deadline(std::chrono::system_clock::now() + config_->hooks.timeout);
  }

  // send_email: the seconds to hold the delivery back, or 0 to go on.
  asio::awaitable<uint32_t> AskSendEmail(const v1::DeliveryJob& job) {
    constexpr hooks::Hook kHook = hooks::Hook::kSendEmail;
    v1::SendEmailRequest request;
    FillHookDelivery(job, request.mutable_delivery());
    v1::SendEmailResponse response;
    grpc::ClientContext ctx;
    SetHookDeadline(ctx);
    const grpc::Status status = co_await rpc::AwaitGrpc(
        [&](auto done) { hooks_->async()->SendEmail(&ctx, &request, &response, std::move(done)); });
    absl::Status problem = rpc::FromGrpc(status);
    if (problem.ok()) {
      switch (response.action()) {
        case v1::SEND_EMAIL_ACTION_CONTINUE:
          hooks::RecordHookCall(kHook, hooks::HookResult::kContinued);
          co_return 0;
        case v1::SEND_EMAIL_ACTION_DELAY:
          if (response.delay_seconds() >= 1 && response.delay_seconds() <= kMaxSendEmailDelaySeconds) {
            hooks::RecordHookCall(kHook, hooks::HookResult::kApplied);
            log::Event(log::Level::kNotice, "delivery_held",
                       {{"msg", job.message_id()}, {"delivery", job.delivery_id()}, {"domain", job.domain()},
                        {"seconds", absl::StrCat(response.delay_seconds())}, {"by", "send_email hook"}});
            co_return response.delay_seconds();
          }
          problem = absl::InvalidArgumentError(
              absl::StrCat("DELAY needs delay_seconds 1..", kMaxSendEmailDelaySeconds, ", got ",
                           response.delay_seconds()));
          break;
        default:
          problem = absl::InvalidArgumentError(absl::StrCat("unknown action ", static_cast<int>(response.action())));
          break;
      }
    }
    hooks::LogHookFailure(kHook, job.message_id(), problem, "delivering now");
    co_return 0;
  }

  struct GetMxVerdict {
    enum Kind { kDns, kRoutes, kFail, kDefer } kind = kDns;
    std::vector<StaticRoute> routes;  // kRoutes
    std::string text;                 // kFail, kDefer: the hook's reason, cleaned; may be empty
  };

  // get_mx: routes for the domain, a failure, or "look up DNS".
  asio::awaitable<GetMxVerdict> AskGetMx(const v1::DeliveryJob& job) {
    constexpr hooks::Hook kHook = hooks::Hook::kGetMx;
    v1::GetMxRequest request;
    FillHookDelivery(job, request.mutable_delivery());
    v1::GetMxResponse response;
    grpc::ClientContext ctx;
    SetHookDeadline(ctx);
    const grpc::Status status =
        co_await rpc::AwaitGrpc([&](auto done) { hooks_->async()->GetMx(&ctx, &request, &response, std::move(done)); });
    GetMxVerdict verdict;
    absl::Status problem = rpc::FromGrpc(status);
    if (problem.ok()) {
      switch (response.action()) {
        case v1::GET_MX_ACTION_CONTINUE:
          hooks::RecordHookCall(kHook, hooks::HookResult::kContinued);
          co_return verdict;
        case v1::GET_MX_ACTION_ROUTES: {
          std::vector<std::string> specs;
          for (int i = 0; i < response.routes_size() && problem.ok(); ++i) {
            absl::StatusOr<StaticRoute> r = RouteFromHook(response.routes(i), job.domain());
            if (!r.ok()) {
              problem = absl::InvalidArgumentError(absl::StrCat("route ", i + 1, ": ", r.status().message()));
              break;
            }
            specs.push_back(r->hosts[0].spec);
            verdict.routes.push_back(*std::move(r));
          }
          if (problem.ok() && verdict.routes.empty()) {
            problem = absl::InvalidArgumentError("ROUTES without a route");
          }
          if (problem.ok()) {
            hooks::RecordHookCall(kHook, hooks::HookResult::kApplied);
            // Host specs only: AUTH credentials are never logged.
            log::Event(log::Level::kInfo, "hook_routes",
                       {{"msg", job.message_id()}, {"domain", job.domain()}, {"hosts", absl::StrJoin(specs, ",")}});
            verdict.kind = GetMxVerdict::kRoutes;
            co_return verdict;
          }
          verdict.routes.clear();
          break;
        }
        case v1::GET_MX_ACTION_FAIL:
        case v1::GET_MX_ACTION_DEFER:
          hooks::RecordHookCall(kHook, hooks::HookResult::kApplied);
          verdict.kind = response.action() == v1::GET_MX_ACTION_FAIL ? GetMxVerdict::kFail : GetMxVerdict::kDefer;
          verdict.text = hooks::CleanHookText(response.reply_text());
          log::Event(log::Level::kNotice, "hook_mx_refused",
                     {{"msg", job.message_id()}, {"domain", job.domain()},
                      {"action", verdict.kind == GetMxVerdict::kFail ? "fail" : "defer"}, {"reason", verdict.text}});
          co_return verdict;
        default:
          problem = absl::InvalidArgumentError(absl::StrCat("unknown action ", static_cast<int>(response.action())));
          break;
      }
    }
    hooks::LogHookFailure(kHook, job.message_id(), problem, "looking up DNS");
    co_return verdict;
  }

  // deferred: for the recipients that failed temporarily, keep the queue's
  // schedule, retry after the hook's delay, or fail them now (with or without
  // a DSN). Recipients whose connection was lost after the final dot
  // (ambiguous) are left out: they may have been delivered, so neither a
  // bounce nor a drop is right for them.
  asio::awaitable<void> AskDeferred(const v1::DeliveryJob& job, std::vector<RecipientOutcome>& outcomes) {
    constexpr hooks::Hook kHook = hooks::Hook::kDeferred;
    std::vector<size_t> which;
    for (size_t i = 0; i < outcomes.size(); ++i) {
      if (outcomes[i].outcome == OutcomeClass::kTransient && !outcomes[i].ambiguous) {
        which.push_back(i);
      }
    }
    if (which.empty()) {
      co_return;
    }
    v1::DeferredRequest request;
    FillHookDelivery(job, request.mutable_delivery());
    for (size_t i : which) {
      request.add_recipients(job.recipients(static_cast<int>(i)).spec().address());
      ToResult(outcomes[i], request.add_results());
    }
    v1::DeferredResponse response;
    grpc::ClientContext ctx;
    SetHookDeadline(ctx);
    const grpc::Status status = co_await rpc::AwaitGrpc(
        [&](auto done) { hooks_->async()->Deferred(&ctx, &request, &response, std::move(done)); });
    absl::Status problem = rpc::FromGrpc(status);
    if (problem.ok()) {
      const std::string text = hooks::CleanHookText(response.reply_text());
      switch (response.action()) {
        case v1::DEFERRED_ACTION_CONTINUE:
          hooks::RecordHookCall(kHook, hooks::HookResult::kContinued);
          co_return;
        case v1::DEFERRED_ACTION_DELAY:
          if (response.delay_seconds() < 1 || response.delay_seconds() > kMaxDeferredDelaySeconds) {
            problem = absl::InvalidArgumentError(absl::StrCat("DELAY needs delay_seconds 1..",
                                                              kMaxDeferredDelaySeconds, ", got ",
                                                              response.delay_seconds()));
            break;
          }
          for (size_t i : which) {
            outcomes[i].retry_in_seconds = response.delay_seconds();
          }
          hooks::RecordHookCall(kHook, hooks::HookResult::kApplied);
          log::Event(log::Level::kNotice, "hook_deferred",
                     {{"msg", job.message_id()}, {"delivery", job.delivery_id()},
                      {"rcpts", absl::StrCat(which.size())}, {"action", "delay"},
                      {"seconds", absl::StrCat(response.delay_seconds())}});
          co_return;
        case v1::DEFERRED_ACTION_BOUNCE:
        case v1::DEFERRED_ACTION_DROP: {
          const bool drop = response.action() == v1::DEFERRED_ACTION_DROP;
          for (size_t i : which) {
            RecipientOutcome& o = outcomes[i];
            o.outcome = OutcomeClass::kPermanent;
            o.suppress_dsn = drop;
            // A permanent failure carries a 5.x.x status in its DSN.
            o.enhanced_status = absl::StartsWith(o.enhanced_status, "4.")
                                    ? absl::StrCat("5", o.enhanced_status.substr(1))
                                    : (o.enhanced_status.empty() ? "5.0.0" : o.enhanced_status);
            if (!text.empty()) {
              // The hook's reason replaces the remote's reply: no reply code.
              o.reply_code = 0;
              o.reply_text = text;
            }
          }
          hooks::RecordHookCall(kHook, hooks::HookResult::kApplied);
          log::Event(log::Level::kNotice, "hook_deferred",
                     {{"msg", job.message_id()}, {"delivery", job.delivery_id()},
                      {"rcpts", absl::StrCat(which.size())}, {"action", drop ? "drop" : "bounce"},
                      {"reason", text}});
          co_return;
        }
        default:
          problem = absl::InvalidArgumentError(absl::StrCat("unknown action ", static_cast<int>(response.action())));
          break;
      }
    }
    hooks::LogHookFailure(kHook, job.message_id(), problem, "the retry schedule applies");
  }

  // delivered: a notification, sent without waiting for its answer; at most
  // kMaxDeliveredInFlight wait at once.
  void NotifyDelivered(const v1::DeliveryJob& job, const std::vector<RecipientOutcome>& outcomes) {
    v1::DeliveredRequest request;
    for (size_t i = 0; i < outcomes.size(); ++i) {
      if (outcomes[i].outcome == OutcomeClass::kDelivered) {
        request.add_recipients(job.recipients(static_cast<int>(i)).spec().address());
        ToResult(outcomes[i], request.add_results());
      }
    }
    if (request.recipients_size() == 0) {
      return;
    }
    if (delivered_in_flight_ >= kMaxDeliveredInFlight) {
      hooks::LogHookFailure(hooks::Hook::kDelivered, job.message_id(),
                            absl::ResourceExhaustedError(absl::StrCat(
                                kMaxDeliveredInFlight, " delivered notifications already wait for the hook server")),
                            "notification not sent");
      return;
    }
    FillHookDelivery(job, request.mutable_delivery());
    ++delivered_in_flight_;
    asio::co_spawn(io_, SendDelivered(shared_from_this(), std::move(request)), asio::detached);
  }

  static asio::awaitable<void> SendDelivered(std::shared_ptr<Impl> self, v1::DeliveredRequest request) {
    v1::DeliveredResponse response;
    grpc::ClientContext ctx;
    self->SetHookDeadline(ctx);
    const grpc::Status status = co_await rpc::AwaitGrpc(
        [&](auto done) { self->hooks_->async()->Delivered(&ctx, &request, &response, std::move(done)); });
    --self->delivered_in_flight_;
    if (status.ok()) {
      hooks::RecordHookCall(hooks::Hook::kDelivered, hooks::HookResult::kContinued);
    } else {
      hooks::LogHookFailure(hooks::Hook::kDelivered, request.delivery().message_id(), rpc::FromGrpc(status),
                            "none (a notification)");
    }
  }

  // DkimSign on a dkim_pool_ thread. Only copies and shared, immutable
  // things (the keys in use when it started, the body) reach that thread,
  // so a delivery whose frame is destroyed meanwhile, or a reload, leaves
  // it nothing dangling. A function, not a lambda: with GCC 12, a coroutine
  // lambda capturing the string crashed freeing it.
  static asio::awaitable<absl::StatusOr<DkimResult>> SignDkimOnPool(std::shared_ptr<const DkimConfig> dkim,
                                                                    std::shared_ptr<const std::string> body,
                                                                    std::string mail_from, int64_t now) {
    co_return DkimSign(*dkim, *body, mail_from, now);
  }

  // The DKIM-Signature field for `job`'s message (dkim.h), or null: signing
  // is off, the message names no domain with a key (counted; logged at
  // debug), or signing failed (counted; logged, and the message goes
  // unsigned rather than not at all). Never logs key material.
  asio::awaitable<std::shared_ptr<const std::string>> SignDkim(const v1::DeliveryJob& job,
                                                               std::shared_ptr<const std::string> body) {
    // The keys this signing uses to its end, whatever a reload does.
    const std::shared_ptr<const DkimConfig> dkim = dkim_;
    if (!dkim->enabled) {
      co_return nullptr;
    }
    const std::string& id = job.message_id();
    // A signature from before a reload is not reused: its key may be the
    // one taken out of use.
    if (auto it = dkim_signatures_.find(id);
        it != dkim_signatures_.end() && it->second.generation == dkim_generation_) {
      if (it->second.header == nullptr) {
        // Another delivery of this message is signing it: wait for that.
        const std::shared_ptr<asio::steady_timer> made = it->second.made;
        co_await made->async_wait(asio::experimental::as_tuple(asio::use_awaitable));
        it = dkim_signatures_.find(id);
      }
      if (it != dkim_signatures_.end() && it->second.header != nullptr &&
          it->second.generation == dkim_generation_) {
        metrics_.DkimSigned(it->second.algorithm).Inc();
        metrics_.dkim_reused.Inc();
        co_return it->second.header;
      }
      // That delivery's message went unsigned (or failed): decide anew.
    }
    // Deliveries of this message that start meanwhile wait on `made`; it is
    // cancelled however this ends, even if the entry was evicted meanwhile.
    auto made = std::make_shared<asio::steady_timer>(io_, asio::steady_timer::time_point::max());
    RememberDkimSigning(id, made);
    struct Wake {
      std::shared_ptr<asio::steady_timer> timer;
      ~Wake() { timer->cancel(); }
    } wake{made};
    const int64_t now = NowUnixMs() / 1000;
    absl::StatusOr<DkimResult> result;
    if (dkim_pool_ == nullptr) {
      result = DkimSign(*dkim, *body, job.mail_from(), now);
    } else {
      // co_spawn resumes this coroutine on its own executor with the
      // answer.
      result = co_await asio::co_spawn(dkim_pool_->get_executor(), SignDkimOnPool(dkim, body, job.mail_from(), now),
                                       asio::use_awaitable);
    }
    auto entry = dkim_signatures_.find(id);
    if (entry != dkim_signatures_.end() && entry->second.made == made &&
        (!result.ok() || result->header.empty())) {
      dkim_signatures_.erase(entry);  // only signatures are kept
      entry = dkim_signatures_.end();
    }
    if (!result.ok()) {
      metrics_.DkimUnsigned("error").Inc();
      log::Event(log::Level::kWarn, "dkim_sign_failed",
                 {{"msg", job.message_id()}, {"error", result.status().message()}});
      co_return nullptr;
    }
    if (result->header.empty()) {
      metrics_.DkimUnsigned(result->unsigned_reason).Inc();
      if (log::Enabled(log::Level::kDebug)) {
        log::Event(log::Level::kDebug, "dkim_unsigned",
                   {{"msg", job.message_id()}, {"domain", result->domain}, {"reason", result->unsigned_reason}});
      }
      co_return nullptr;
    }
    metrics_.DkimSigned(result->algorithm).Inc();
    if (log::Enabled(log::Level::kDebug)) {
      log::Event(log::Level::kDebug, "dkim_signed",
                 {{"msg", job.message_id()}, {"d", result->domain}, {"s", result->selector},
                  {"a", result->algorithm}});
    }
    auto header = std::make_shared<const std::string>(std::move(result->header));
    if (entry != dkim_signatures_.end() && entry->second.made == made) {
      entry->second.header = header;
      entry->second.algorithm = result->algorithm;
    }
    co_return header;
  }

  // Enters a signature being made for message `id`, evicting the oldest
  // entries beyond kDkimSignaturesKept.
  void RememberDkimSigning(const std::string& id, std::shared_ptr<asio::steady_timer> made) {
    DkimSignature& entry = dkim_signatures_[id];
    entry = DkimSignature{nullptr, "", std::move(made), dkim_generation_};
    dkim_signature_order_.push_back(id);
    while (dkim_signatures_.size() > kDkimSignaturesKept && !dkim_signature_order_.empty()) {
      dkim_signatures_.erase(dkim_signature_order_.front());
      dkim_signature_order_.pop_front();
    }
    // An id entered again (its first try went unsigned) is in the order
    // twice; the queue is trimmed so it cannot grow without bound.
    while (dkim_signature_order_.size() > 2 * kDkimSignaturesKept) {
      dkim_signature_order_.pop_front();
    }
  }

  // A TLS report to an RFC 8460 https: rua (RecipientSpec.post_url, set
  // only by the queue): the message body, which is the gzipped JSON report
  // itself and not an e-mail, is POSTed to the URI as
  // application/tlsrpt+gzip (§5.3), as the bytes it is (no dot-stuffing),
  // with a certificate verified for the URI's host against tls_ (the
  // context MTA-STS fetches use; a failed verification is a failure), within
  // mta_sts_timeout: the deliverer's knob for one HTTPS exchange. dot_timeout
  // (10 minutes, for SMTP bodies up to the message size limit) would let a
  // stalled report server hold a delivery slot that long, for a body of a
  // few KiB. One outcome for all of the job's recipients (the queue gives a
  // report one): a 2xx is delivered; every other status, redirects included
  // (never followed), and no answer at all are transient, so the queue's
  // schedule retries with backoff (§5.3: "Other codes could indicate a
  // delivery failure and may be retried"; §5.4: for up to 24 hours); a URI
  // that does not parse is permanent.
  // There is no data gate (Progress) before the body, unlike SMTP: a report
  // POSTed twice (a crash between the POST and the queue's Report) is
  // harmless, receivers deduplicate by the report-id every report carries.
  // `job` is Deliver's (its body moves into the request).
  asio::awaitable<RecipientOutcome> PostReport(v1::DeliveryJob& job) {
    const Clock::time_point start = Clock::now();
    const std::string url = job.recipients(0).spec().post_url();
    const size_t bytes = job.body().size();
    // One URI for the whole job, or it is not a report the queue made.
    bool one_url = true;
    for (const v1::DeliveryRecipient& r : job.recipients()) {
      one_url = one_url && r.spec().post_url() == url;
    }
    absl::StatusOr<tlsrpt::HttpsRua> rua =
        one_url ? tlsrpt::ParseHttpsRua(url)
                : absl::StatusOr<tlsrpt::HttpsRua>(absl::InvalidArgumentError(
                      "the recipients of one report delivery name different post_url URIs"));
    if (!rua.ok()) {
      metrics_.TlsRptPosts("invalid").Inc();
      RecipientOutcome o = LocalOutcome(OutcomeClass::kPermanent, "5.1.3", std::string(rua.status().message()));
      LogPost(job, url, bytes, o, start);
      co_return o;
    }
    HttpsRequest request;
    request.host = rua->host;
    request.port = rua->port;
    request.method = "POST";
    request.target = rua->target;
    request.headers = {{"Content-Type", "application/tlsrpt+gzip"}};
    request.body = std::move(*job.mutable_body());
    request.timeout = config_->mta_sts_timeout;
    request.read_body = false;  // the status is the answer
    if (!config_->local_mx_ok) {
      // The URI comes from the policy domain's DNS: like an MX, it may not
      // steer the deliverer to this host or to loopback services.
      const RoutePlanner* planner = &planner_;
      request.refuse_address = [planner](const std::string& ip) {
        const std::string why = planner->LocalReason(ip);
        return why.empty() ? why : absl::StrCat(why, " refused (local_mx_ok=false)");
      };
    }
    absl::StatusOr<HttpsResponse> response = co_await AwaitHttps(resolver_, tls_, std::move(request));
    RecipientOutcome o;
    if (!response.ok()) {
      metrics_.TlsRptPosts("failed").Inc();
      o = LocalOutcome(OutcomeClass::kTransient, "4.0.0", std::string(response.status().message()), rua->host);
    } else {
      const int status = response->status;
      const bool ok = status >= 200 && status <= 299;
      std::string text = absl::StrCat("HTTP ", status, response->reason.empty() ? "" : " ", response->reason);
      if (status >= 300 && status <= 399) {
        absl::StrAppend(&text, " (redirects are not followed)");
      }
      metrics_.TlsRptPosts(ok ? "delivered" : "rejected").Inc();
      o = LocalOutcome(ok ? OutcomeClass::kDelivered : OutcomeClass::kTransient, ok ? "2.0.0" : "4.0.0",
                       std::move(text), rua->host, response->ip, status);
      o.tls = response->tls;
      o.tls_verified = response->tls_verified;
    }
    o.remote_port = rua->port;
    o.mode = "HTTPS";
    LogPost(job, url, bytes, o, start);
    co_return o;
  }

  // One line per report POST, in the form of the SMTP attempt line (never
  // the body).
  void LogPost(const v1::DeliveryJob& job, const std::string& url, size_t bytes, const RecipientOutcome& o,
               Clock::time_point start) {
    const bool failed = o.outcome != OutcomeClass::kDelivered;
    log::Event(failed ? log::Level::kNotice : log::Level::kInfo, "attempt",
               {{"msg", job.message_id()},
                {"delivery", job.delivery_id()},
                {"rcpts", absl::StrCat(job.recipients_size())},
                {"decided", absl::StrCat(o.outcome == OutcomeClass::kTransient ? 0 : job.recipients_size())},
                {"relay", RelayOf(o.remote_mta, o.remote_ip, o.remote_port)},
                {"mode", "HTTPS"},
                {"url", url},
                {"bytes", absl::StrCat(bytes)},
                {"tls", o.tls.empty() ? "none" : o.tls},
                {"tls_verified", o.tls_verified ? "yes" : "no"},
                {"http", o.reply_code != 0 ? absl::StrCat(o.reply_code) : "none"},
                {"delays", Millis(Clock::now() - start)},
                {"failure", failed ? o.reply_text : ""}});
  }

  // One line per SMTP/LMTP attempt (Postfix's per-delivery line, per session).
  void LogAttempt(const v1::DeliveryJob& job, const Attempt& attempt, const TransactionResult& r,
                  Clock::duration dns_delay) {
    size_t decided = 0;
    for (const auto& o : r.outcomes) {
      decided += o ? 1 : 0;
    }
    if (!r.warning.empty()) {
      log::Event(log::Level::kWarn, "auth_skipped", {{"msg", job.message_id()}, {"warning", r.warning}});
    }
    log::Event(r.failure.empty() ? log::Level::kInfo : log::Level::kNotice, "attempt",
               {{"msg", job.message_id()},
                {"delivery", job.delivery_id()},
                {"rcpts", absl::StrCat(r.outcomes.size())},
                {"decided", absl::StrCat(decided)},
                {"relay", RelayOf(attempt.mx_host, attempt.ip, attempt.port)},
                {"mode", attempt.lmtp ? "LMTP" : "SMTP"},
                {"tls", r.tls.empty() ? "none" : r.tls},
                {"tls_verified", r.tls_verified ? "yes" : "no"},
                {"dane", r.dane.empty() ? "none" : r.dane},
                {"auth", r.auth_mechanism.empty() ? "none" : r.auth_mechanism},
                {"reused", r.reused ? "yes" : "no"},
                {"sent_with", !r.data_sent ? "none" : r.chunked ? "BDAT" : "DATA"},
                {"delays", absl::StrCat(Millis(dns_delay), "/", Millis(r.connect_time), "/",
                                        Millis(r.transaction_time))},
                {"failure", r.failure}});
  }

  // DANE (dane.h) for an MX plan whose MX answer was validated: looks up
  // the TLSA records of each MX host whose addresses were validated too,
  // records what each asks for in `hosts`, and drops the hosts whose lookup
  // failed (with the reason in plan.skipped). True when some host has TLSA
  // records, i.e. DANE governs this domain.
  // A host whose lookup failed counts as a "dnssec-invalid" failure in the
  // domain's TLS report when `tlsrpt_rua` is set.
  asio::awaitable<bool> ApplyDane(Shard* shard, const v1::DeliveryJob& job, const dns::MxAnswer& mx,
                                  RoutePlan& plan, std::map<std::string, DaneHost>& hosts,
                                  const std::vector<std::string>& tlsrpt_rua) {
    bool applies = false;
    for (const Attempt& a : plan.attempts) {
      std::string name = TlsaName(a.mx_host, a.port);
      if (!a.unix_path.empty() || hosts.contains(name)) {
        continue;
      }
      auto host = std::find_if(mx.hosts.begin(), mx.hosts.end(),
                               [&](const dns::MxHost& h) { return h.name == a.mx_host; });
      if (host == mx.hosts.end() || !host->addresses.secure) {
        // RFC 7672 §2.2.2: an address nobody validated could be anyone's,
        // so its TLSA records would prove nothing.
        hosts.emplace(std::move(name), DaneHost{});
        continue;
      }
      // RFC 7672 §2.2.2: an MX host name that is an alias (through a
      // validated CNAME chain, which `secure` covers) has its TLSA records
      // looked up at the chain's end first; only when none are there, at
      // the MX name itself. A failed lookup there is not passed over.
      DaneHost dane;
      bool decided = false;
      const std::string& canonical = host->addresses.canonical_name;
      if (!canonical.empty() && canonical != a.mx_host) {
        std::string expanded_name = TlsaName(canonical, a.port);
        dns::TlsaAnswer expanded = co_await dns::AwaitTlsa(resolver_, expanded_name);
        dane = DaneForHost(expanded);
        decided = dane.mode != DaneMode::kNone;
        if (decided) {
          dane.base_domain = canonical;
        }
      }
      if (!decided) {
        dns::TlsaAnswer answer = co_await dns::AwaitTlsa(resolver_, name);
        dane = DaneForHost(answer);
      }
      metrics_.Dane(dane.mode).Inc();
      if (dane.mode == DaneMode::kLookupFailed) {
        log::Event(log::Level::kWarn, "dane_tlsa_lookup_failed",
                   {{"msg", job.message_id()}, {"domain", job.domain()}, {"mx", a.mx_host},
                    {"error", dane.detail}});
        if (!tlsrpt_rua.empty()) {
          CountTls(shard, job.domain(), DanePolicyForReport({}), tlsrpt::kDnssecInvalid, a.mx_host, "",
                   dane.detail, tlsrpt_rua);
        }
      }
      applies = applies || dane.mode != DaneMode::kNone;
      hosts.emplace(std::move(name), std::move(dane));
    }
    std::vector<Attempt> kept;
    std::set<std::string> noted;
    for (Attempt& a : plan.attempts) {
      auto it = hosts.find(TlsaName(a.mx_host, a.port));
      if (it == hosts.end() || it->second.mode != DaneMode::kLookupFailed) {
        kept.push_back(std::move(a));
      } else if (noted.insert(it->first).second) {
        plan.skipped.push_back(absl::StrCat(a.mx_host, ": ", it->second.detail,
                                            " (DANE: not used until its TLSA records can be looked up)"));
        plan.dns_trouble = true;
      }
    }
    plan.attempts = std::move(kept);
    co_return applies;
  }

  // Looks up the recipient domain's MTA-STS policy and applies it to an MX
  // plan (mta_sts.h): in enforce mode MX hosts the policy does not list are
  // dropped (with the reason in plan.skipped) and true is returned, so every
  // remaining attempt requires verified TLS; in testing mode they are only
  // logged.
  // The lookup is left in `*found` (for TLS reports). The policy store
  // asked and saved to is the job's shard's.
  asio::awaitable<bool> ApplyMtaSts(Shard* shard, const v1::DeliveryJob& job, RoutePlan& plan, StsLookup* found) {
    *found = co_await AwaitSts(*mta_sts_, job.domain(), shard->index);
    const StsLookup& sts = *found;
    metrics_.MtaStsPolicy(sts).Inc();
    if (sts.source == "stored") {
      metrics_.mta_sts_stored.Inc();
    }
    if (!sts.problem.empty()) {
      metrics_.mta_sts_problems.Inc();
      log::Event(log::Level::kWarn, "mta_sts_problem",
                 {{"msg", job.message_id()}, {"domain", job.domain()}, {"problem", sts.problem},
                  {"policy", sts.policy.has_value() ? absl::StrCat(StsModeName(sts.policy->mode), " id ", sts.id,
                                                                   " (", sts.source, ")")
                                                    : "none"}});
    }
    if (!sts.policy.has_value() || sts.policy->mode == StsMode::kNone) {
      co_return false;
    }
    const bool enforce = sts.policy->mode == StsMode::kEnforce;
    std::vector<Attempt> kept;
    std::set<std::string> refused;
    for (const Attempt& a : plan.attempts) {
      if (sts.policy->MatchesMx(a.mx_host)) {
        if (enforce) {
          kept.push_back(a);
        }
      } else if (refused.insert(a.mx_host).second) {
        if (enforce) {
          metrics_.mta_sts_refused_mx.Inc();
          plan.skipped.push_back(
              absl::StrCat(a.mx_host, ": not an MX host of the MTA-STS policy of ", job.domain(), " (id ", sts.id,
                           ")"));
        }
        log::Event(enforce ? log::Level::kNotice : log::Level::kWarn,
                   enforce ? "mta_sts_mx_refused" : "mta_sts_testing_mismatch",
                   {{"msg", job.message_id()}, {"domain", job.domain()}, {"mx", a.mx_host}, {"id", sts.id}});
      }
    }
    if (!enforce) {
      co_return false;
    }
    plan.attempts = std::move(kept);
    co_return true;
  }

  // Remembers `host` as broken_tls locally and tells the queue (`shard`,
  // the job's), so every deliverer reaches it in plain text until the TTL ends.
  void MarkBrokenTls(Shard* shard, const std::string& host, const std::string& reason) {
    SetHostFlag(shard, host, kBrokenTlsFlag, config_->tls_failure_ttl, reason, /*share=*/true);
  }

  // A session attempt with `host` failed before its greeting. The
  // unreachable_after-th in a row suspends the address for every deliverer
  // (HostFlags, shared through the queue) for unreachable_backoff.
  void NoteUnreachable(Shard* shard, const std::string& host, const std::string& relay, const std::string& failure) {
    if (!streaks_.Failed(host)) {
      return;
    }
    // A session that was already under way when the address was suspended
    // extends the pause here; the others learnt of it already.
    const bool already = host_flags_.Has(host, kUnreachableFlag, NowUnixMs());
    SetHostFlag(shard, host, kUnreachableFlag, config_->unreachable_backoff, failure, /*share=*/!already);
    if (already) {
      return;
    }
    metrics_.suspensions.Inc();
    log::Event(log::Level::kWarn, "address_suspended",
               {{"relay", relay}, {"failures_in_a_row", absl::StrCat(streaks_.streak(host))},
                {"seconds", absl::StrCat(config_->unreachable_backoff.count())},
                {"failure", host_flags_.Reason(host, kUnreachableFlag)}});
  }

  // Records `flag` on `host` for `ttl` (0: not at all), with `reason` (at most 500 bytes),
  // and with `share` tells the queue too (fire and forget): `shard`, the
  // shard of the job that learnt it, from which every deliverer (they all
  // read every shard's flags) has it within one host_flags_refresh.
  void SetHostFlag(Shard* shard, const std::string& host, const char* flag, std::chrono::seconds ttl,
                   const std::string& reason, bool share) {
    if (ttl.count() == 0) {
      return;  // a TTL of 0 is the operator turning this flag off
    }
    const int64_t expires = NowUnixMs() + std::chrono::duration_cast<std::chrono::milliseconds>(ttl).count();
    std::string cut = reason.substr(0, 500);
    host_flags_.Set(host, flag, expires, cut);
    if (!share) {
      return;
    }
    v1::HostFlag shared;
    shared.set_host(host);
    shared.set_flag(flag);
    shared.set_expires_unix_ms(expires);
    shared.set_reason(std::move(cut));
    asio::co_spawn(io_, PutHostFlag(shared_from_this(), shard, std::move(shared)), asio::detached);
  }

  static asio::awaitable<void> PutHostFlag(std::shared_ptr<Impl> self, Shard* shard, v1::HostFlag flag) {
    v1::PutHostFlagsRequest request;
    *request.add_flags() = std::move(flag);
    v1::PutHostFlagsResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status status = co_await rpc::AwaitGrpc(
        [&](auto done) { shard->stub->async()->PutHostFlags(&ctx, &request, &response, std::move(done)); });
    self->NoteOptionalRpc(*shard, "PutHostFlags", status, &shard->put_flags_warned);
  }

  static asio::awaitable<void> LoadStsPolicy(std::shared_ptr<Impl> self, Shard* shard, std::string domain,
                                             absl::AnyInvocable<void(std::optional<MtaSts::StoredPolicy>)> done) {
    v1::GetStsPolicyRequest request;
    request.set_domain(domain);
    v1::GetStsPolicyResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status status = co_await rpc::AwaitGrpc(
        [&](auto cb) { shard->stub->async()->GetStsPolicy(&ctx, &request, &response, std::move(cb)); });
    self->NoteOptionalRpc(*shard, "GetStsPolicy", status, &shard->sts_store_warned);
    std::optional<MtaSts::StoredPolicy> found;
    if (status.ok() && response.found() && response.policy().domain() == domain) {
      found = MtaSts::StoredPolicy{response.policy().id(), response.policy().policy(),
                                   response.policy().expires_unix_ms()};
    }
    done(std::move(found));
  }

  static asio::awaitable<void> SaveStsPolicy(std::shared_ptr<Impl> self, Shard* shard, std::string domain,
                                             MtaSts::StoredPolicy policy) {
    v1::PutStsPolicyRequest request;
    v1::StsPolicyRecord* record = request.mutable_policy();
    record->set_domain(std::move(domain));
    record->set_id(std::move(policy.id));
    record->set_policy(std::move(policy.text));
    record->set_fetched_unix_ms(NowUnixMs());
    record->set_expires_unix_ms(policy.expires_unix_ms);
    v1::PutStsPolicyResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Status status = co_await rpc::AwaitGrpc(
        [&](auto cb) { shard->stub->async()->PutStsPolicy(&ctx, &request, &response, std::move(cb)); });
    self->NoteOptionalRpc(*shard, "PutStsPolicy", status, &shard->sts_store_warned);
  }

  // Logs an optional RPC's failure to `shard` once per kind of failure: a
  // queue without Progress/HostFlags (UNIMPLEMENTED) must not flood the log.
  void NoteOptionalRpc(const Shard& shard, const char* rpc, const grpc::Status& status, bool* warned) {
    if (status.ok()) {
      *warned = false;
      return;
    }
    if (*warned) {
      return;
    }
    *warned = true;
    log::Event(log::Level::kWarn, status.error_code() == grpc::StatusCode::UNIMPLEMENTED ? "queue_rpc_unimplemented"
                                                                                          : "queue_rpc_failed",
               {{"rpc", rpc}, {"queue", shard.name}, {"error", status.error_message()},
                {"note", "best effort; delivery goes on without it"}});
  }

  // Sends the TLS report counts of `shard`'s deliveries to it every
  // [tlsrpt] flush_seconds, and once more when the deliverer stops. Counts
  // the queue did not take wait for the next call; what a crash holds is
  // lost (reports are statistics: a few seconds of them, never a message).
  static asio::awaitable<void> TlsRptLoop(std::shared_ptr<Impl> self, Shard* shard) {
    for (;;) {
      if (!self->stopping_) {
        shard->tlsrpt_timer.expires_after(self->config_->tlsrpt_flush);
        co_await shard->tlsrpt_timer.async_wait(kNoThrow);
      }
      std::vector<v1::TlsRptCount> all = shard->tlsrpt_counts.Take();
      for (size_t from = 0; from < all.size(); from += kMaxTlsRptPerCall) {
        v1::RecordTlsResultsRequest request;
        const size_t to = std::min(all.size(), from + kMaxTlsRptPerCall);
        for (size_t i = from; i < to; ++i) {
          *request.add_counts() = std::move(all[i]);
        }
        v1::RecordTlsResultsResponse response;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        grpc::Status status = co_await rpc::AwaitGrpc(
            [&](auto done) { shard->stub->async()->RecordTlsResults(&ctx, &request, &response, std::move(done)); });
        self->NoteOptionalRpc(*shard, "RecordTlsResults", status, &shard->tlsrpt_warned);
        if (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
          // Sending them again would be refused again: counted as lost.
          self->metrics_.tlsrpt_dropped.Inc(static_cast<uint64_t>(request.counts_size()));
        } else if (!status.ok()) {
          std::vector<v1::TlsRptCount> back(std::make_move_iterator(request.mutable_counts()->begin()),
                                            std::make_move_iterator(request.mutable_counts()->end()));
          shard->tlsrpt_counts.PutBack(std::move(back));
        }
      }
      if (self->stopping_) {
        break;
      }
    }
  }

  // The rua of `domain`'s TLSRPT record (RFC 8460 §3), or none: the domain
  // asks for no reports, its record is unusable, or DNS failed (its
  // sessions then go uncounted rather than delay the delivery).
  asio::awaitable<std::vector<std::string>> TlsRptRua(const std::string& domain) {
    dns::TxtAnswer txt = co_await dns::AwaitTxt(resolver_, absl::StrCat("_smtp._tls.", domain));
    if (txt.status == dns::LookupStatus::kTempFail) {
      metrics_.TlsRptRecords("dns_error").Inc();
      co_return std::vector<std::string>{};
    }
    absl::StatusOr<tlsrpt::Record> record = tlsrpt::ParseRecord(txt.records);
    if (!record.ok()) {
      metrics_.TlsRptRecords(absl::IsNotFound(record.status()) ? "absent" : "invalid").Inc();
      co_return std::vector<std::string>{};
    }
    metrics_.TlsRptRecords("found").Inc();
    co_return std::move(record->rua);
  }

  // Counts one session (or policy failure) for `domain`'s TLS report, to
  // be sent to `shard` (the job's).
  void CountTls(Shard* shard, const std::string& domain, const TlsRptPolicy& policy, absl::string_view result_type,
                absl::string_view mx_host, absl::string_view ip, absl::string_view reason,
                const std::vector<std::string>& rua) {
    metrics_.TlsRptSessions(policy.type, result_type.empty()).Inc();
    if (!shard->tlsrpt_counts.Add(MakeTlsRptCount(tlsrpt::UtcDay(NowUnixMs()), domain, policy, result_type, mx_host,
                                                  ip, reason, rua))) {
      metrics_.tlsrpt_dropped.Inc();
    }
  }

  // Counts a new session's TLS outcome under `policy`; reused sessions and
  // sessions that did not try TLS count nothing. `dane_unusable`: DANE made
  // TLS mandatory but none of the host's TLSA records could be used.
  void CountTlsSession(Shard* shard, const std::string& domain, const TlsRptPolicy& policy, bool dane,
                       bool dane_unusable, const Attempt& attempt, const TransactionResult& result,
                       const std::vector<std::string>& rua) {
    std::string type;
    std::string reason = result.tls_problem;
    switch (result.tls_attempt) {
      case TlsAttempt::kNone:
        return;
      case TlsAttempt::kEstablished:
        if (dane_unusable) {
          type = tlsrpt::kTlsaInvalid;
          reason = "no usable TLSA record";
        } else if (policy.type == tlsrpt::kPolicySts && result.tls_verify_error != 0) {
          // Under an MTA-STS policy in testing mode the certificate did not
          // have to verify, but the report says that it would not have:
          // telling the domain before it enforces is what testing is for.
          type = TlsFailureResultType(result.tls_verify_error, false);
          reason = VerifyErrorText(result.tls_verify_error);
        }
        break;
      case TlsAttempt::kNotOffered:
        type = tlsrpt::kStartTlsNotSupported;
        break;
      case TlsAttempt::kHandshakeFailed:
        type = TlsFailureResultType(result.tls_verify_error, dane);
        break;
    }
    CountTls(shard, domain, policy, type, attempt.mx_host, attempt.ip, reason, rua);
  }

  // Fetches the shared host flags (broken TLS, unreachable) that `shard`
  // holds now and every host_flags_refresh, into the one HostFlags of the
  // worker: a deliverer puts a flag into the shard of the job that learnt
  // it, so every shard's are read.
  static asio::awaitable<void> HostFlagsLoop(std::shared_ptr<Impl> self, Shard* shard) {
    while (!self->stopping_) {
      v1::GetHostFlagsRequest request;  // every flag
      v1::GetHostFlagsResponse response;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      shard->flags_ctx = &ctx;
      grpc::Status status = co_await rpc::AwaitGrpc(
          [&](auto done) { shard->stub->async()->GetHostFlags(&ctx, &request, &response, std::move(done)); });
      shard->flags_ctx = nullptr;
      if (self->stopping_) {
        break;
      }
      self->NoteOptionalRpc(*shard, "GetHostFlags", status, &shard->get_flags_warned);
      if (status.ok()) {
        for (const auto& f : response.flags()) {
          if (!f.cleared()) {
            self->host_flags_.Set(f.host(), f.flag(), f.expires_unix_ms(), f.reason());
          } else if (self->host_flags_.Clear(f.host(), f.flag(), f.expires_unix_ms())) {
            if (f.flag() == kUnreachableFlag) {
              self->streaks_.Succeeded(f.host());  // the operator says it is back: count afresh
            }
            log::Event(log::Level::kNotice, "host_flag_cleared", {{"host", f.host()}, {"flag", f.flag()}});
          }
        }
      }
      self->host_flags_.Expire(NowUnixMs());
      shard->flags_timer.expires_after(self->config_->host_flags_refresh);
      co_await shard->flags_timer.async_wait(kNoThrow);
    }
  }

  // Before DATA: the queue must have recorded, durably and under this
  // lease, that the final dot may go out. Then a crash of this process or of
  // the queue from here to the report leaves the delivery *ambiguous* (the
  // queue counts it and applies ambiguous_policy), never silently sent twice.
  // Transactions that reach DATA together share one Progress call (to the
  // job's shard, which holds the lease).
  asio::awaitable<absl::Status> PassDataGate(DataGate* gate) {
    if (gate->recorded) {
      co_return absl::OkStatus();  // an earlier address of this lease got it
    }
    const auto waited_from = Clock::now();
    auto waiter = std::make_shared<ProgressWaiter>(io_);
    PendingProgress pending;
    pending.item.set_delivery_id(gate->job->delivery_id());
    pending.item.set_lease_token(gate->job->lease_token());
    pending.item.set_data_sent(true);
    pending.waiter = waiter;
    gate->shard->progress.push_back(std::move(pending));
    gate->shard->progress_wake.cancel();
    while (!waiter->verdict.has_value()) {
      waiter->wake.expires_at(Clock::time_point::max());
      co_await waiter->wake.async_wait(kNoThrow);
    }
    metrics_.data_gate_seconds.ObserveSince(waited_from);
    absl::Status verdict = *waiter->verdict;
    if (verdict.ok()) {
      gate->recorded = true;
    } else {
      gate->lease_gone = verdict.code() == absl::StatusCode::kFailedPrecondition;
      metrics_.data_gate_refused.Inc();
    }
    co_return verdict;
  }

  // Sends `shard`'s waiting progress items as soon as a call slot is free.
  static asio::awaitable<void> ProgressLoop(std::shared_ptr<Impl> self, Shard* shard) {
    auto executor = co_await asio::this_coro::executor;
    for (;;) {
      if (shard->progress.empty() || shard->progress_calls >= kMaxCallsInFlight) {
        if (self->reporter_done_ && shard->progress_calls == 0) {
          co_return;
        }
        shard->progress_wake.expires_at(Clock::time_point::max());
        co_await shard->progress_wake.async_wait(kNoThrow);
        continue;
      }
      std::vector<PendingProgress> batch;
      while (!shard->progress.empty() && batch.size() < kMaxReportsPerCall) {
        batch.push_back(std::move(shard->progress.front()));
        shard->progress.pop_front();
      }
      ++shard->progress_calls;
      asio::co_spawn(executor, SendProgress(self, shard, std::move(batch), self->TakeReportsToCarry(shard)),
                     asio::detached);
    }
  }

  // One Progress call; every waiter gets its verdict. Not retried: a
  // transaction whose progress could not be recorded stops before DATA and
  // its recipients are tried again later, which costs a retry, not a
  // duplicate nobody knows about.
  static asio::awaitable<void> SendProgress(std::shared_ptr<Impl> self, Shard* shard,
                                            std::vector<PendingProgress> batch, std::vector<PendingReport> reports) {
    v1::ProgressRequest request;
    for (const PendingProgress& p : batch) {
      *request.add_items() = p.item;
    }
    for (const PendingReport& r : reports) {
      *request.add_reports() = r.report;
    }
    v1::ProgressResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kProgressDeadline);
    const auto sent = Clock::now();
    grpc::Status status = co_await rpc::AwaitGrpc(
        [&](auto done) { shard->stub->async()->Progress(&ctx, &request, &response, std::move(done)); });
    self->metrics_.progress_call_seconds.ObserveSince(sent);
    self->NoteProgressRpc(*shard, status);
    for (size_t i = 0; i < batch.size(); ++i) {
      absl::Status verdict;
      if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
        // A queue without Progress cannot record ambiguity at all; deliver
        // as before rather than never.
      } else if (!status.ok()) {
        verdict = absl::UnavailableError(absl::StrCat("the queue did not record that DATA is being sent (",
                                                      status.error_message(), "); message not sent"));
      } else if (i < static_cast<size_t>(response.statuses_size()) &&
                 response.statuses(static_cast<int>(i)) != v1::REPORT_STATUS_APPLIED) {
        // An empty list is a queue older than the statuses: recorded.
        verdict = absl::FailedPreconditionError(
            absl::StrCat("the queue no longer holds this lease (",
                         v1::ReportStatus_Name(response.statuses(static_cast<int>(i))), "); message not sent"));
      }
      batch[i].waiter->verdict = std::move(verdict);
      batch[i].waiter->wake.cancel();
    }
    --shard->progress_calls;
    shard->progress_wake.cancel();
    if (!reports.empty()) {
      self->CarriedReportsAnswered(shard, std::move(reports), status, response);
    }
  }

  // Reports that may ride on the Progress call about to go out: all that
  // wait (for the pacer, or for a Report call in flight), unless the queue
  // does not take them there or calls with reports are backing off after a
  // failure. The call then counts in report_calls until it is answered, so
  // the ReporterLoop waits for it and a drain flushes it. Only `shard`'s
  // reports: the call goes to `shard`.
  std::vector<PendingReport> TakeReportsToCarry(Shard* shard) {
    std::vector<PendingReport> carried;
    const Clock::time_point now = Clock::now();
    if (!shard->carry_reports || shard->pending.empty() || shard->report_retry_at > now) {
      return carried;
    }
    shard->report_pacer.Started(now);
    while (!shard->pending.empty() && carried.size() < kMaxReportsPerCall) {
      carried.push_back(std::move(shard->pending.front()));
      shard->pending.pop_front();
    }
    ++shard->report_calls;
    return carried;
  }

  // The answer for reports a Progress call carried. A queue that does not
  // know the field (no statuses for them, or no Progress at all) applied
  // nothing: they go back for a Report call, and no more are carried.
  void CarriedReportsAnswered(Shard* shard, std::vector<PendingReport> reports, const grpc::Status& status,
                              const v1::ProgressResponse& response) {
    --shard->report_calls;
    shard->report_wake.cancel();
    const bool ignored = status.error_code() == grpc::StatusCode::UNIMPLEMENTED ||
                         (status.ok() && static_cast<size_t>(response.report_statuses_size()) != reports.size());
    if (ignored) {
      shard->carry_reports = false;
      log::Event(log::Level::kNotice, "reports_not_carried",
                 {{"queue", shard->name}, {"note", "this queue takes reports only in Report calls"}});
      for (auto it = reports.rbegin(); it != reports.rend(); ++it) {
        shard->pending.push_front(std::move(*it));
      }
      return;
    }
    if (!status.ok()) {
      ReportsFailed(shard, std::move(reports), status);
      return;
    }
    ReportsAnswered(shard, reports, response.report_statuses());
  }

  // Logs the first Progress failure of an outage of `shard` and the recovery.
  void NoteProgressRpc(Shard& shard, const grpc::Status& status) {
    if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      NoteOptionalRpc(shard, "Progress", status, &shard.progress_unimplemented_warned);
      return;
    }
    if (status.ok()) {
      if (shard.progress_warned) {
        log::Event(log::Level::kNotice, "progress_recovered", {{"queue", shard.name}});
      }
      shard.progress_warned = false;
      return;
    }
    if (!shard.progress_warned) {
      shard.progress_warned = true;
      log::Event(log::Level::kWarn, "progress_failed",
                 {{"queue", shard.name}, {"error", status.error_message()},
                  {"note", "transactions stop before DATA and are retried until the queue answers"}});
    }
  }

  // Keeps the delivered/permanent outcomes of `job` until the queue applies
  // its report (or for kUnconfirmedTtl), so a re-lease of the same delivery
  // after a queue outage does not send the message twice.
  void RememberFinals(const v1::DeliveryJob& job, const std::vector<RecipientOutcome>& outcomes) {
    const int64_t now = NowUnixMs();
    Unconfirmed u;
    u.expires_unix_ms = now + kUnconfirmedTtlMs;
    for (int i = 0; i < job.recipients_size(); ++i) {
      if (outcomes[i].outcome != OutcomeClass::kTransient) {
        u.finals[job.recipients(i).index()] = outcomes[i];
      }
    }
    if (u.finals.empty()) {
      return;
    }
    if (unconfirmed_.size() >= kMaxUnconfirmed) {
      for (auto it = unconfirmed_.begin(); it != unconfirmed_.end();) {
        it = it->second.expires_unix_ms < now ? unconfirmed_.erase(it) : std::next(it);
      }
      if (unconfirmed_.size() >= kMaxUnconfirmed) {
        unconfirmed_.clear();  // bounded memory beats perfect recall
      }
    }
    unconfirmed_[job.delivery_id()] = std::move(u);
  }

  // A finished job's report, for `shard`, the job's.
  void EnqueueReport(Shard* shard, PendingReport report) {
    shard->pending.push_back(std::move(report));
    ++unreported_;
    metrics_.reports_pending.Set(unreported_);
    shard->report_wake.cancel();
  }

  // A report left our hands (applied, refused, or given up at shutdown):
  // its job's slot is free for a new lease.
  void ReportSettled() {
    --unreported_;
    metrics_.reports_pending.Set(unreported_);
    WakeLeaseLoops();
  }

  // Reports waiting to be sent, on every shard.
  size_t PendingReports() const {
    size_t n = 0;
    for (const std::unique_ptr<Shard>& shard : shards_) {
      n += shard->pending.size();
    }
    return n;
  }

  // Sends reports as soon as they exist (up to kMaxCallsInFlight calls at
  // once; what finishes meanwhile shares the next call). A failed call is
  // retried with the same lease tokens after a short pause: a queue that
  // restarted keeps outstanding leases for recovery_lease_grace and applies
  // them, and a report that arrives after a lease expired is still applied
  // unless the delivery was leased again (then the queue answers stale).
  // One per shard, with `shard`'s reports, each to the shard that leased it.
  static asio::awaitable<void> ReporterLoop(std::shared_ptr<Impl> self, Shard* shard) {
    auto executor = co_await asio::this_coro::executor;
    for (;;) {
      const Clock::time_point now = Clock::now();
      // Paced (CallPacer) except while stopping, when what is left goes now.
      const Clock::time_point paced = self->stopping_ ? now : shard->report_pacer.ReadyAt(shard->pending.size(), now);
      const Clock::time_point ready_at = std::max(shard->report_retry_at, paced);
      if (shard->pending.empty() || shard->report_calls >= kMaxCallsInFlight || ready_at > now) {
        if (self->reporter_done_ && shard->report_calls == 0) {
          co_return;
        }
        // A free slot with reports waiting sleeps until they may go; a new
        // report or a finished call wakes the loop earlier to look again.
        const bool timed = !shard->pending.empty() && shard->report_calls < kMaxCallsInFlight;
        shard->report_wake.expires_at(timed ? ready_at : Clock::time_point::max());
        co_await shard->report_wake.async_wait(kNoThrow);
        continue;
      }
      shard->report_pacer.Started(now);
      std::vector<PendingReport> batch;
      while (!shard->pending.empty() && batch.size() < kMaxReportsPerCall) {
        batch.push_back(std::move(shard->pending.front()));
        shard->pending.pop_front();
      }
      ++shard->report_calls;
      asio::co_spawn(executor, SendReports(self, shard, std::move(batch)), asio::detached);
    }
  }

  static asio::awaitable<void> SendReports(std::shared_ptr<Impl> self, Shard* shard,
                                           std::vector<PendingReport> batch) {
    v1::ReportRequest request;
    for (const auto& p : batch) {
      *request.add_reports() = p.report;
    }
    v1::ReportResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const auto sent = Clock::now();
    grpc::Status status = co_await rpc::AwaitGrpc(
        [&](auto done) { shard->stub->async()->Report(&ctx, &request, &response, std::move(done)); });
    self->metrics_.report_call_seconds.ObserveSince(sent);
    --shard->report_calls;
    shard->report_wake.cancel();
    if (!status.ok()) {
      self->ReportsFailed(shard, std::move(batch), status);
      co_return;
    }
    self->ReportsAnswered(shard, batch, response.statuses());
  }

  // A call with reports to `shard` failed: they go back in front, in order,
  // and are retried there with the same lease tokens after a growing pause.
  void ReportsFailed(Shard* shard, std::vector<PendingReport> batch, const grpc::Status& status) {
    if (!shard->report_failing) {
      shard->report_failing = true;
      log::Event(log::Level::kWarn, "report_failed",
                 {{"queue", shard->name}, {"error", status.error_message()},
                  {"reports", absl::StrCat(batch.size())}, {"note", "retried with the same lease tokens"}});
    }
    for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
      shard->pending.push_front(std::move(*it));
    }
    shard->report_retry_at = Clock::now() + shard->report_backoff;
    shard->report_backoff = std::min<Clock::duration>(shard->report_backoff * 2, kMaxReportBackoff);
  }

  // `shard` answered for `batch`, one status each (a missing one counts
  // as refused).
  void ReportsAnswered(Shard* shard, const std::vector<PendingReport>& batch,
                       const google::protobuf::RepeatedField<int>& statuses) {
    if (shard->report_failing) {
      shard->report_failing = false;
      log::Event(log::Level::kNotice, "report_recovered", {{"queue", shard->name}});
    }
    shard->report_backoff = kMinReportBackoff;
    for (size_t i = 0; i < batch.size(); ++i) {
      const auto s = i < static_cast<size_t>(statuses.size()) ? static_cast<v1::ReportStatus>(statuses[static_cast<int>(i)])
                                                               : v1::REPORT_STATUS_UNSPECIFIED;
      if (s == v1::REPORT_STATUS_APPLIED) {
        metrics_.reports_sent.Inc();
        unconfirmed_.erase(batch[i].report.delivery_id());
      } else {
        metrics_.reports_refused.Inc();
        log::Event(log::Level::kWarn, "report_refused",
                   {{"delivery", batch[i].report.delivery_id()}, {"status", v1::ReportStatus_Name(s)}});
      }
      ReportSettled();
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
    // Flush what finished, to every shard at once; bounded so an
    // unreachable shard cannot hang exit.
    const Clock::time_point flush_deadline = Clock::now() + std::chrono::seconds(5);
    while (self->ReportsOutstanding() && Clock::now() < flush_deadline) {
      tick.expires_after(std::chrono::milliseconds(10));
      co_await tick.async_wait(kNoThrow);
    }
    self->reporter_done_ = true;
    for (const std::unique_ptr<Shard>& shard : self->shards_) {
      shard->report_wake.cancel();
      shard->progress_wake.cancel();
    }
    const size_t unsent = self->PendingReports();
    if (unsent > 0) {
      self->metrics_.reports_dropped.Inc(unsent);
    }
    // Idle pooled connections get their QUIT.
    co_await self->pool_.Shutdown(std::chrono::seconds(2));
    if (self->dkim_pool_ != nullptr) {
      // Signatures still being made finish (a few milliseconds at most);
      // none starts after the event loop stops.
      self->dkim_pool_->join();
    }
    log::Event(log::Level::kNotice, "stopped", {{"unsent_reports", absl::StrCat(unsent)}});
    on_stopped();
  }

  // Some shard has reports waiting or a call with reports in flight.
  bool ReportsOutstanding() const {
    return std::any_of(shards_.begin(), shards_.end(), [](const std::unique_ptr<Shard>& shard) {
      return !shard->pending.empty() || shard->report_calls > 0;
    });
  }

  asio::io_context& io_;
  // The running config; Reload replaces it. A delivery keeps the one it
  // started with (Deliver).
  std::shared_ptr<const DelivererConfig> config_;
  // The queue shards, in config.queues order; never resized after the
  // constructor (jobs and loops hold Shard pointers).
  std::vector<std::unique_ptr<Shard>> shards_;
  uint32_t reserved_ = 0;      // slots held by Lease calls in flight, all shards (FreeSlots)
  uint64_t leases_sent_ = 0;   // Lease calls sent, all shards
  uint32_t slot_waiters_ = 0;  // lease loops waiting on their slot_timer
  std::vector<Shard*> wake_order_;  // WakeLeaseLoops' scratch
  std::unique_ptr<v1::Hooks::Stub> hooks_;  // null: no hook is called
  int delivered_in_flight_ = 0;             // SendDelivered calls waiting
  dns::MxResolver& resolver_;
  RoutePlanner planner_;
  bool me_resolved_ = false;  // ResolveMe ran (or is running)
  // tls.ini's context for SMTP sessions; Reload replaces it (MtaSts keeps
  // the one it was made with).
  std::shared_ptr<asio::ssl::context> tls_;
  std::unique_ptr<MtaSts> mta_sts_;  // null: mta_sts=false
  ConnectionPool pool_;
  HostFlags host_flags_;
  FailureStreaks streaks_;
  struct Unconfirmed {
    std::map<uint32_t, RecipientOutcome> finals;  // recipient index → outcome
    int64_t expires_unix_ms = 0;
  };
  static constexpr int64_t kUnconfirmedTtlMs = 3600 * 1000;
  static constexpr size_t kMaxUnconfirmed = 100000;
  // By delivery id, which is unique across shards (it names the message,
  // whose id is).
  std::unordered_map<std::string, Unconfirmed> unconfirmed_;
  std::string worker_id_;
  Metrics metrics_;
  uint32_t in_flight_ = 0;
  bool stopping_ = false;
  bool reporter_done_ = false;
  uint32_t unreported_ = 0;  // reports enqueued and not yet settled, all shards
  // DKIM signatures by message id, so that the message's deliveries to
  // other domains (leased together, as they mostly are) and its retries
  // send the field made for the first instead of signing again: an RSA
  // signature is the dearest step of a delivery. `header` is null while
  // the signature is being made; unsigned outcomes are not kept. Oldest
  // out first beyond kDkimSignaturesKept (a few MB).
  struct DkimSignature {
    std::shared_ptr<const std::string> header;
    const char* algorithm = "";
    std::shared_ptr<asio::steady_timer> made;  // cancelled when settled
    uint64_t generation = 0;                   // dkim_generation_ when made
  };
  // dkim.ini and the keys: the config's until ReloadDkim replaces them.
  std::shared_ptr<const DkimConfig> dkim_;
  uint64_t dkim_generation_ = 0;
  static constexpr size_t kDkimSignaturesKept = 4096;
  std::unordered_map<std::string, DkimSignature> dkim_signatures_;
  std::deque<std::string> dkim_signature_order_;
  // Threads that make DKIM signatures (tern.ini dkim_threads); null when
  // signing is off or is done on the event loop. Last, so it is joined
  // before anything its work could read goes away.
  std::unique_ptr<asio::thread_pool> dkim_pool_;
};

DeliveryWorker::DeliveryWorker(asio::io_context& io, const DelivererConfig& config,
                               std::vector<std::shared_ptr<grpc::Channel>> channels, dns::MxResolver& resolver,
                               RoutePlanner planner)
    : impl_(std::make_shared<Impl>(io, config, std::move(channels), resolver, std::move(planner))) {}

DeliveryWorker::~DeliveryWorker() = default;

void DeliveryWorker::Start() { impl_->Start(); }

void DeliveryWorker::Stop(std::function<void()> on_stopped, std::chrono::milliseconds drain_timeout) {
  impl_->Stop(std::move(on_stopped), drain_timeout);
}

void DeliveryWorker::ReloadDkim(DkimConfig dkim) { impl_->ReloadDkim(std::move(dkim)); }

void DeliveryWorker::Reload(DelivererConfig config) { impl_->Reload(std::move(config)); }

}  // namespace tern::deliverer
