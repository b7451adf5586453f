// File: bounce_worker.h
//
// A bouncer worker: leases bounce jobs from one queue shard, renders a DSN
// for each, enqueues it and acknowledges the job.
//
// One worker per shard. Past one machine the queue is sharded
// (ARCHITECTURE.md §8, tern.ini [bouncer] queue lists every shard), and
// tern-bouncer runs one worker, with its own channel and thread, per shard.
// A worker talks to its shard only: it leases there, acknowledges there (a
// lease token means something only to the shard that issued it) and
// enqueues every DSN there too. The last is required, not a convenience: the
// DSN's idempotency key ("dsn:<bounce_id>", below) is deduplicated by the
// queue that stores it, within that one RocksDB, so a DSN whose job is
// retried (the bouncer died before Ack) is recognised as a duplicate only if
// it goes to the same shard as the first try. Sent to another shard (e.g.
// one picked per message, as ingest does), the retry would be a second DSN.
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
// The bounce hook (hooks.ini, proto/tern/v1/hooks.proto Hooks.Bounce). When
// a DSN is due (not for a double bounce or a job NOTIFY or a suppression
// rule already leaves without one: there is nothing to ask), the user's
// Hooks server is asked first. SUPPRESS acknowledges the job without a DSN,
// like a suppression rule; CONTINUE, and any failure (deadline, error,
// UNIMPLEMENTED, an unknown action: logged as hook_failed), sends the DSN as
// without the hook. Either way the job is acknowledged only after its DSN is
// queued or it was deliberately suppressed, so a hook can never lose one.
// Run() starts the hook calls of a whole leased batch at once (gRPC's
// callback API) and only then works through the jobs in order, so a slow hook
// costs the batch one deadline, not one per job. Stop() cancels the pending
// calls; a job whose answer was cancelled so is left unacknowledged (its
// lease expires and it is asked about again).
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
// tern_bouncer_queue_errors_total{call}; the hook's calls are counted in
// tern_hook_calls_total{hook="bounce",result} (lib/hooks).
//
// Thread-safety: Run() on one thread; Stop() from any thread. Hook answers
// arrive on gRPC threads and only touch their own call's state. Workers of
// one process share nothing mutable: each has its own stub, renderers and
// copy of the (immutable) suppression rules; they share the metrics (atomic
// counters), the logger and the Hooks stub (gRPC stubs are thread-safe), so
// any number may run on their own threads at once.
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
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/dsn/dsn_renderer.h"
#include "lib/metrics/metrics.h"
#include "services/bouncer/bouncer_config.h"
#include "services/bouncer/dsn_composer.h"
#include "services/bouncer/suppression.h"
#include "tern/v1/hooks.grpc.pb.h"
#include "tern/v1/queue.grpc.pb.h"

namespace grpc {
class ClientContext;
}

namespace tern::bouncer {

namespace internal {
class BounceHookCall;  // one Hooks.Bounce call in flight (bounce_worker.cc)
}

class BounceWorker {
 public:
  struct Options {
    // Sent as LeaseRequest.worker_id. Default: "bouncer" (the service uses
    // "bouncer-<pid>", and "bouncer-<pid>-<shard index>" with several shards).
    std::string worker_id = "bouncer";
    // The shard's gRPC target as tern.ini names it, for the `queue=` field
    // of this worker's log lines. Default: empty.
    std::string queue_target;
    // Logs the templates' warnings (ignored header fields, an unused image)
    // at construction. The service turns it off for all workers but the
    // first, so that several shards do not repeat them. Default: true.
    bool log_config_warnings = true;
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
    // The user's Hooks server, asked before each DSN (hooks.ini calls
    // `bounce`). Not owned; must outlive the worker. Default: null, no hook.
    tern::v1::Hooks::StubInterface* hooks = nullptr;
    // Deadline of each Hooks.Bounce call (hooks.ini timeout_ms).
    // Default: 30 s (Haraka's plugin_timeout).
    absl::Duration hook_timeout = absl::Seconds(30);
  };

  // `stub` (to the shard this worker serves; `options.new_stub` must make
  // stubs to the same shard) must outlive the worker. The templates in
  // `config` must have passed BouncerConfig::Validate(). `new_token` names DSN boundaries and
  // Message-Ids (tern::NewRandomToken in the service).
  BounceWorker(tern::v1::Queue::StubInterface* stub, const BouncerConfig& config,
               dsn::DsnRenderer::TokenGenerator new_token, int64_t pid, Options options);

  // Leases and processes jobs until Stop().
  void Run();

  // Asks Run() to return after the job in progress; cancels a pending Lease.
  void Stop();

  // SIGHUP: the templates, `me`, double_bounce_recipient, suppression rules
  // and max_original_bytes of `config` (checked by LoadBouncerConfig) apply
  // from the next job on; a job in progress finishes as it began. The rest
  // (queue, listeners, hooks) is the service's to keep. Any thread.
  void Reload(const BouncerConfig& config);

  // Handles one leased job: double bounce -> Ack without DSN (or with the
  // postmaster copy's id, or the redacted DSN's for a REQUIRETLS DSN that
  // could not go with REQUIRETLS); suppressed (by a rule or the bounce hook) -> Ack
  // without DSN; otherwise render, Enqueue, Ack with the DSN's queue id. An
  // error means the job was not acknowledged (its lease will expire and it
  // will be retried). Blocks for the bounce hook's answer, if one is asked.
  absl::Status ProcessJob(const tern::v1::BounceJob& job);

 private:
  enum class HookVerdict { kSend, kSuppress, kStopping };

  // Starts Hooks.Bounce about `job` if the hook is on and a DSN is due;
  // null otherwise. The call owns copies of what it sends.
  std::unique_ptr<internal::BounceHookCall> StartBounceHook(const tern::v1::BounceJob& job);
  // Waits for `call`'s answer and turns it into what to do (logs and counts
  // it). kStopping: Stop() cancelled the call; leave the job unacknowledged.
  HookVerdict AwaitBounceHook(const tern::v1::BounceJob& job, internal::BounceHookCall& call);
  // ProcessJob with the job's hook call already started (or null: no hook).
  absl::Status ProcessJob(const tern::v1::BounceJob& job, internal::BounceHookCall* hook);
  // Logs and counts a double bounce, sends the postmaster copy when one is
  // configured and allowed, and acknowledges the job.
  absl::Status HandleDoubleBounce(const tern::v1::BounceJob& job, absl::string_view why);
  // A double bounce that is a REQUIRETLS DSN which could not go with
  // REQUIRETLS: sends the redacted report instead (ComposeRedactedReport) and
  // acknowledges the job; a double bounce as before when it cannot.
  absl::Status HandleNullSender(const tern::v1::BounceJob& job);
  // Renders `report` with the renderer of its kind and enqueues it to
  // `recipient`; returns the DSN's queue id.
  absl::StatusOr<std::string> Send(const tern::v1::BounceJob& job, const dsn::DeliveryReport& report,
                                   absl::string_view recipient, absl::string_view note);
  absl::StatusOr<std::string> Enqueue(const tern::v1::BounceJob& job, const dsn::RenderedDsn& dsn,
                                      absl::string_view recipient, absl::string_view note, bool* duplicate);
  absl::Status Ack(const tern::v1::BounceJob& job, const std::string& dsn_message_id);
  // Sleeps for `d` unless Stop() comes first.
  void SleepUnlessStopped(absl::Duration d);

  // What a worker makes of a config to render DSNs with (see Reload).
  struct Rendering {
    std::string me;
    std::string double_bounce_recipient;
    std::map<dsn::ReportKind, dsn::DsnRenderer> renderers;
    SuppressionRules suppression;
    size_t max_original_bytes = 0;
  };
  // Logs the templates' warnings when options_.log_config_warnings.
  Rendering MakeRendering(const BouncerConfig& config) const;
  // Takes `r` as the worker's; on Run()'s thread (or before it starts).
  void Apply(Rendering r);
  // Applies a Reload() that came since the last job, if any.
  void ApplyPendingReload();

  tern::v1::Queue::StubInterface* stub_;
  std::unique_ptr<tern::v1::Queue::StubInterface> owned_stub_;  // from options_.new_stub, once used
  dsn::DsnRenderer::TokenGenerator new_token_;
  int64_t pid_;
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
  metrics::Counter* redacted_;
  metrics::Counter* suppressed_notify_;
  metrics::Counter* suppressed_sender_domain_;
  metrics::Counter* suppressed_status_;
  metrics::Counter* suppressed_hook_;
  metrics::Counter* render_errors_;
  metrics::Counter* lease_errors_;
  metrics::Counter* channel_rebuilds_;
  metrics::Counter* enqueue_errors_;
  metrics::Counter* ack_errors_;

  std::atomic<bool> stopped_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  grpc::ClientContext* lease_ctx_ = nullptr;  // guarded by mu_
  // The hook calls of the batch Run() is working on, for Stop() to cancel.
  std::vector<internal::BounceHookCall*> pending_hooks_;  // guarded by mu_
  // A Reload() not yet applied; guarded by mu_.
  std::unique_ptr<Rendering> pending_rendering_;
};

}  // namespace tern::bouncer
