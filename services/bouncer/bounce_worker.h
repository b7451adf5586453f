// File: bounce_worker.h
//
// The bouncer's one worker: leases bounce jobs from the queue, renders a DSN
// for each, enqueues it and acknowledges the job.
//
// Why this order is safe. A job is acknowledged only after the queue has
// durably stored its DSN, and the DSN is enqueued with the idempotency key
// "dsn:<bounce_id>". If the bouncer dies between Enqueue and Ack, the lease
// expires, the job is leased again, and the second Enqueue returns the first
// DSN's id without storing anything: the sender gets exactly one DSN. A job
// whose Enqueue or render fails is not acknowledged; its lease expires and
// it is retried later. A double bounce (original sender <>, or a DSN the
// queue refuses for good, e.g. an unusable sender address) is logged,
// counted and acknowledged without a DSN (RFC 5321 §4.5.5); with
// double_bounce_recipient set, a DSN copy goes there instead (marked in its
// envelope notes, so a failed copy is never copied again: no loop).
// Suppression rules (suppression.h) and NOTIFY can also leave a job without
// a DSN; it is then acknowledged and counted.
//
// The synchronous gRPC API is used on purpose: bounces are rare, one thread
// is plenty, and a blocking loop is the easiest code to get right. Lease
// long-polls with wait_for_ready, so a queue that is down or restarting just
// makes the call wait; on errors the loop backs off exponentially (100 ms up
// to 5 s). Stop() cancels a pending Lease and lets the job in progress
// finish.
//
// Metrics: tern_bouncer_dsns_total{kind}, tern_bouncer_double_bounces_total,
// tern_bouncer_double_bounce_copies_total,
// tern_bouncer_suppressed_total{reason}, tern_bouncer_render_errors_total,
// tern_bouncer_queue_errors_total{call}.
//
// Thread-safety: Run() on one thread; Stop() from any thread.
// Include from .cc files only (pulls in gRPC headers).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/dsn/dsn_renderer.h"
#include "lib/metrics/metrics.h"
#include "services/bouncer/bouncer_config.h"
#include "services/bouncer/dsn_composer.h"
#include "services/bouncer/suppression.h"
#include "tern/v1/queue.grpc.pb.h"

namespace grpc {
class ClientContext;
}

namespace tern::bouncer {

class BounceWorker {
 public:
  struct Options {
    std::string worker_id = "bouncer";
    uint32_t max_jobs = 16;          // per Lease call
    uint32_t wait_ms = 2000;         // Lease long-poll
    absl::Duration rpc_timeout = absl::Seconds(30);  // Enqueue and Ack
    // Lease deadline beyond wait_ms: how long an unreachable queue goes
    // unnoticed (and unlogged) before the loop backs off and retries.
    absl::Duration lease_slack = absl::Seconds(10);
    absl::Duration min_backoff = absl::Milliseconds(100);
    absl::Duration max_backoff = absl::Seconds(5);
    // Makes a stub on a new gRPC channel to the queue; empty = never. After
    // Leases have failed for `rebuild_after`, the worker switches to a new
    // stub (at most once per period): a channel whose first DNS lookup of the
    // queue's name failed was seen to stay failed for over a minute, and a
    // new channel looks the name up afresh.
    std::function<std::unique_ptr<tern::v1::Queue::StubInterface>()> new_stub;
    absl::Duration rebuild_after = absl::Seconds(10);
  };

  // `stub` must outlive the worker. The templates in `config` must have
  // passed BouncerConfig::Validate(). `new_token` names DSN boundaries and
  // Message-Ids (tern::NewRandomToken in the service).
  BounceWorker(tern::v1::Queue::StubInterface* stub, const BouncerConfig& config,
               dsn::DsnRenderer::TokenGenerator new_token, int64_t pid, Options options);

  // Leases and processes jobs until Stop().
  void Run();

  // Asks Run() to return after the job in progress; cancels a pending Lease.
  void Stop();

  // Handles one leased job: double bounce -> Ack without DSN (or with the
  // postmaster copy's id); suppressed -> Ack without DSN; otherwise render,
  // Enqueue, Ack with the DSN's queue id. An error means the job was not
  // acknowledged (its lease will expire and it will be retried).
  absl::Status ProcessJob(const tern::v1::BounceJob& job);

 private:
  // Logs and counts a double bounce, sends the postmaster copy when one is
  // configured and allowed, and acknowledges the job.
  absl::Status HandleDoubleBounce(const tern::v1::BounceJob& job, absl::string_view why);
  // Renders `report` with the renderer of its kind and enqueues it to
  // `recipient`; returns the DSN's queue id.
  absl::StatusOr<std::string> Send(const tern::v1::BounceJob& job, const dsn::DeliveryReport& report,
                                   absl::string_view recipient, absl::string_view note);
  absl::StatusOr<std::string> Enqueue(const tern::v1::BounceJob& job, const dsn::RenderedDsn& dsn,
                                      absl::string_view recipient, absl::string_view note, bool* duplicate);
  absl::Status Ack(const tern::v1::BounceJob& job, const std::string& dsn_message_id);
  // Sleeps for `d` unless Stop() comes first.
  void SleepUnlessStopped(absl::Duration d);

  tern::v1::Queue::StubInterface* stub_;
  std::unique_ptr<tern::v1::Queue::StubInterface> owned_stub_;  // from options_.new_stub, once used
  std::string me_;
  std::string double_bounce_recipient_;
  std::map<dsn::ReportKind, dsn::DsnRenderer> renderers_;
  SuppressionRules suppression_;
  ComposeOptions compose_options_;
  Options options_;

  metrics::Counter* dsns_failed_;
  metrics::Counter* dsns_delayed_;
  metrics::Counter* dsns_delivered_;
  metrics::Counter* double_bounces_;
  metrics::Counter* double_bounce_copies_;
  metrics::Counter* suppressed_notify_;
  metrics::Counter* suppressed_sender_domain_;
  metrics::Counter* suppressed_status_;
  metrics::Counter* render_errors_;
  metrics::Counter* lease_errors_;
  metrics::Counter* channel_rebuilds_;
  metrics::Counter* enqueue_errors_;
  metrics::Counter* ack_errors_;

  std::atomic<bool> stopped_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  grpc::ClientContext* lease_ctx_ = nullptr;  // guarded by mu_
};

}  // namespace tern::bouncer
