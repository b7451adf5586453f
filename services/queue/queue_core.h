// File: queue_core.h
//
// QueueCore: the durable queue without its RPC skin. It owns the RocksDB
// database, the GroupCommitter and the in-memory scheduling state, and offers
// the Queue and Admin operations as an asynchronous API whose completions run
// on the thread holding the writer role (see group_committer.h) after the
// operation's synced commit. QueueServiceImpl (queue_service_impl.h) is the gRPC front end; tests
// use this class directly with a FakeClock.
//
// What lives where:
//   * RocksDB (key layout in key_codec.h, records in queue_records.proto):
//     messages, bodies (once per message), deliveries, bounce jobs, the
//     schedule, idempotency keys, and records that failed to parse.
//   * Memory, owned by the writer role and bounded by work in flight, not by
//     the backlog: per job kind a ready window (at most `ready_window` ids of
//     due jobs, refilled by scanning the schedule), a lease table (jobs out on
//     lease, by deadline), parked long-poll Lease calls, and exact counters
//     for Stats. Deliveries waiting for their time are counted per second of
//     due time, so the memory for that is bounded by the schedule's span.
//
// Lease expiry. A lease moves the job's schedule key to the lease deadline and
// stores the token in the job record, in the same synced batch. A job whose
// lease runs out is therefore already "due" on disk, with no write at expiry
// and nothing to repair after a crash; the token changes when the job is
// leased again, which is what makes a late report stale. A report whose token
// still matches (the lease ran out but nobody took the job since) is applied:
// the work was done, and redoing it would send the mail twice.
//
// TLS reports (RFC 8460). Deliverers record session counts per UTC day and
// policy domain (RecordTlsResults, meta records); a thread of the core's own
// turns each finished day's counts of a domain into one report e-mail per
// mailto: rua and queues them through the ordinary enqueue path, in the same
// write that deletes the counts (queue_tls_reports.cc explains why).
//
// Thread-safety: every public method may be called from any thread. The
// worker-facing ones (Enqueue, EnqueueMany, Lease, Report, Ack, Progress)
// commit on the calling thread when the writer role is free: they then block
// for the group's synced write and have run their completions before they
// return (call them holding no lock a completion might take). The others
// never block on I/O. Completions run on the role's holder and must not
// block.
//
// Standards: RFC 3461 (NOTIFY, RET: which outcomes become DSN jobs and what of
// the original they carry), RFC 3463 (enhanced status codes: 4.x.x becomes
// 5.x.x when retries run out, as in Haraka), RFC 8460 (TLS reports: daily,
// per policy domain, one e-mail per mailto: rua, §3 and §5.3).
#pragma once

#include <atomic>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/queue/destination_shaping.h"
#include "services/queue/queue_clock.h"
#include "services/queue/retry_schedule.h"
#include "tern/v1/admin.pb.h"
#include "tern/v1/queue.pb.h"

namespace tern::queue {

// What happens to the pending recipients of a delivery whose lease expired
// after the deliverer said DATA was sent (Queue.Progress) but before it
// reported: the remote may or may not have the message.
enum class AmbiguousPolicy {
  kRedeliver,  // due again at once: maybe a duplicate, never a loss (default)
  kHold,       // held for an operator (ternctl explain / release / delete)
};

// Largest body the queue accepts: a Lease response must carry it in one gRPC
// message (lib/rpc kMaxMessageBytes is 256 MiB), with room for the envelope.
inline constexpr uint64_t kMaxBodyBytes = 250ull << 20;

// SMTP TLS Reporting (RFC 8460), tern.ini [tlsrpt]: the daily reports the
// queue sends from the session counts deliverers record (RecordTlsResults).
struct TlsRptOptions {
  // Send the reports (deliverers read the same key to decide whether to
  // count at all). Counts older than kTlsRptRetentionDays are deleted either
  // way. Default: false
  bool enabled = false;
  // The reports' envelope sender and From: address; required when enabled.
  // Default: empty
  std::string from;
  // The report's organization-name. Default: the domain of `from`.
  std::string organization;
  // The report's contact-info. Default: `from`.
  std::string contact;
  // The TLS-Report-Submitter header field, the domain in report ids and
  // Message-IDs. Default: the domain of `from`.
  std::string submitter;
};

// Length of a queue database's instance token: lower-case hex, 40 random
// bits, made when the database is first opened and kept in it. It makes the
// report-ids of TLS reports unique across queue shards (queue_tls_reports.cc).
inline constexpr size_t kInstanceIdLength = 10;
// True if `id` looks like an instance token.
bool IsInstanceId(absl::string_view id);

// Counts of days older than this many days before today (UTC) are deleted,
// sent or not, so nothing grows without bound.
inline constexpr int64_t kTlsRptRetentionDays = 7;

struct CoreOptions {
  // RocksDB directory; created if missing. Default: var/queue
  std::string data_dir = "var/queue";
  // Lease length when the caller asks for none, and the longest granted.
  // Default: 300 and 3600 seconds.
  int64_t lease_seconds = 300;
  int64_t max_lease_seconds = 3600;
  // Enqueue is refused (RESOURCE_EXHAUSTED, which ingest answers with 452)
  // while the data directory's file system has less than this many bytes
  // free after the message, so the queue never runs into ENOSPC itself:
  // leases, reports and acks, which drain the queue, keep this headroom.
  // 0 disables the check. Default: 100 MiB.
  uint64_t min_free_bytes = 100u << 20;
  // How that free space is read: bytes free to this process on the file
  // system of the given directory, nullopt when unknown. Default (empty):
  // statvfs of data_dir (AvailableDiskBytes). Tests give a disk of fixed
  // size here, which other writers on the real one cannot move.
  std::function<std::optional<uint64_t>(const std::string& dir)> free_disk_bytes;
  // Each RocksDB write-ahead log starts as a file of this many zero bytes,
  // written and synced ahead of time in the background (wal_prefill.h), so
  // the fdatasync behind every acknowledged message writes only data, not
  // the file's size or block map. Costs this much disk for the spare. 0 =
  // WALs grow as they are written. Default: 64 MiB.
  uint64_t wal_prefill_bytes = 64u << 20;
  // After a restart, a lease that was out keeps its token for at most this
  // long (or until its own deadline, if sooner) before the job is due again:
  // its worker usually survived the queue's crash and is retrying its report,
  // which then applies instead of the job being redone. 0 = release at once.
  // Default: 30.
  int64_t recovery_lease_grace_seconds = 30;
  // Soft cap on the body bytes in one Lease response (one job always fits).
  // Default: 16 MiB.
  uint64_t max_lease_body_bytes = 16u << 20;
  // Pause leasing deliveries (bounce jobs still go out). Default: false
  bool disabled = false;
  // One delivery per recipient instead of per domain; messages enqueued
  // after a Reconfigure follow its value. Default: false
  bool always_split = false;
  // Per recipient domain, across all deliverers: the most deliveries out on
  // lease at once (tern.ini destination_concurrency_max, Postfix's
  // default_destination_concurrency_limit, 20 there) and the most started
  // per second, minute or hour (shaping.ini rate_max). Further due
  // deliveries of a domain at its limit wait in the queue, in memory, until
  // a lease of it ends or its rate allows another. Reconfigure replaces it.
  // Default: no limits, as in Haraka.
  DestinationShaping shaping;
  // Reconfigure replaces it: each temporary failure from then on is
  // scheduled by the new one. Default: Haraka's, 12 retries from 64 s
  // doubling.
  RetrySchedule retry;
  // Most due job ids kept in memory per kind. Default: 10000
  size_t ready_window = 10000;
  // Period of lease expiry, schedule scans and long-poll timeouts.
  // Default: 250 ms.
  std::chrono::milliseconds tick_interval{250};
  // Longest long poll a Lease may ask for. Default: 60000 ms.
  uint32_t max_wait_ms = 60000;
  // Default: kRedeliver (tern.ini [queue] ambiguous_policy).
  AmbiguousPolicy ambiguous_policy = AmbiguousPolicy::kRedeliver;
  // Recipients still pending this long after arrival fail with 5.4.7
  // (Postfix's maximal_queue_lifetime). 0 = no limit. Default: 0
  int64_t max_queue_age_ms = 0;
  // Ages after arrival at which a recipient still waiting after a temporary
  // failure gets a delay DSN (RFC 3464 Action: delayed), ascending. Empty =
  // never. Default: empty
  std::vector<int64_t> delay_warning_ms;
  // Events older than this, or beyond the newest `event_retention_count`,
  // are pruned. Default: 24 h and 1000000 events.
  int64_t event_retention_ms = 24 * 3600 * 1000LL;
  uint64_t event_retention_count = 1000000;
  // An Enqueue idempotency key dedupes retries for this long after its
  // message was stored; older keys are ignored and pruned in the background.
  // Must outlast any retry of a client that uses keys (the bouncer retries a
  // DSN after its bounce lease runs out). 0 = keep forever. Default: 7 days.
  int64_t idempotency_retention_ms = 7 * 24 * 3600 * 1000LL;
  // What an admin Delete removes is kept this long (records and body, in
  // the meta CF) so that Undelete can put it back; then it is purged in the
  // background. A Delete with `purge` skips this. 0 = deletes are final at
  // once. Default: 1 hour.
  int64_t delete_undo_window_ms = 3600 * 1000LL;
  // Default: off (see TlsRptOptions).
  TlsRptOptions tlsrpt;
  // Memory for the writer's copy of recent delivery, message and bounce
  // records (record_cache.h), which saves a RocksDB read on most leases and
  // reports and keeps those records' writes out of the batch's index. The
  // group being written is held whatever this says. 0 = no cache.
  // Default: 32 MiB.
  size_t record_cache_bytes = 32u << 20;
  // Check every read of those records against the batch and RocksDB, and
  // abort on a difference: for tests. Default: false.
  bool verify_record_cache = false;
  // Not owned; must outlive the core. Default: the system clock.
  const Clock* clock = SystemClock::Get();
};

struct EnqueueResult {
  std::string message_id;
  bool duplicate = false;
};

class QueueCore {
 public:
  template <typename T>
  using Callback = absl::AnyInvocable<void(absl::StatusOr<T>)>;

  // Opens (or creates) the database, recovers (outstanding leases become due
  // now, unparseable records move to the `corrupt` column family, counters
  // are rebuilt) and starts the writer thread.
  static absl::StatusOr<std::unique_ptr<QueueCore>> Open(CoreOptions options);

  // Completes parked long polls, lets every submitted operation finish, stops
  // the writer thread and closes the database.
  ~QueueCore();

  QueueCore(const QueueCore&) = delete;
  QueueCore& operator=(const QueueCore&) = delete;

  // Stores a message and its deliveries durably. `body` is moved in (never
  // copied into another buffer before the write batch). Errors:
  // InvalidArgument (no recipient, address without '@domain', no header),
  // ResourceExhausted (too big, or disk full), Unavailable (storage failure).
  void Enqueue(tern::v1::EnqueueHeader header, std::string body, Callback<EnqueueResult> done);
  // Enqueues several messages as Enqueue does each, submitted together so
  // they share one group (one write, one sync) in the common case.
  struct EnqueueArgs {
    tern::v1::EnqueueHeader header;
    std::string body;
    Callback<EnqueueResult> done;
  };
  void EnqueueMany(std::vector<EnqueueArgs> items);

  // Leases due jobs of one kind; with wait_ms, waits for work (up to
  // `max_wait_ms`) and completes with an empty response on timeout.
  // `cancelled`, when given, is set by the transport when the caller goes
  // away; a parked long poll then ends without taking any job, so no job is
  // ever leased to a caller that can no longer receive it. Default: none.
  void Lease(tern::v1::LeaseRequest request, Callback<tern::v1::LeaseResponse> done,
             std::shared_ptr<const std::atomic<bool>> cancelled = nullptr);

  void Report(tern::v1::ReportRequest request, Callback<tern::v1::ReportResponse> done);
  void Ack(tern::v1::AckRequest request, Callback<tern::v1::AckResponse> done);
  void Stats(Callback<tern::v1::StatsResponse> done);
  // Shaping state per destination (Admin.Destinations), read in the writer
  // role like Stats.
  void Destinations(Callback<tern::v1::DestinationsResponse> done);

  // Marks deliveries whose DATA was sent under the given lease (see
  // AmbiguousPolicy). Items with a stale token are ignored.
  void Progress(tern::v1::ProgressRequest request, Callback<tern::v1::ProgressResponse> done);
  // Stores host flags (meta CF) until their expiry; an entry for the same
  // (flag, host) is replaced. Flags already expired are refused.
  void PutHostFlags(tern::v1::PutHostFlagsRequest request, Callback<tern::v1::PutHostFlagsResponse> done);
  // Unexpired flags (all, or of one name), read from committed state on the
  // calling thread; expired ones found on the way are purged in the background.
  absl::StatusOr<tern::v1::GetHostFlagsResponse> GetHostFlags(const tern::v1::GetHostFlagsRequest& request);

  // MTA-STS policies shared by the deliverers (queue.proto PutStsPolicy):
  // one per domain, the last one put; an expired one is never returned and
  // is deleted when asked for.
  void PutStsPolicy(tern::v1::PutStsPolicyRequest request, Callback<tern::v1::PutStsPolicyResponse> done);
  absl::StatusOr<tern::v1::GetStsPolicyResponse> GetStsPolicy(const tern::v1::GetStsPolicyRequest& request);
  // Admin: marks the host's unexpired flags (all, or the one named) cleared,
  // keeping each until its expiry so every deliverer's refresh sees the
  // clearing (HostFlag.cleared). Completes with the flags that were in force.
  void ClearHostFlags(tern::v1::ClearHostFlagsRequest request, Callback<tern::v1::ClearHostFlagsResponse> done);

  // TLS report counts (queue.proto RecordTlsResults), each added to the
  // stored count of the same (day, domain, identity) in one synced write;
  // the latest rua wins. InvalidArgument, storing nothing, for an empty
  // domain, an unknown policy_type, a count of 0, more than 10,000 counts,
  // or an overlong string. Counts of days past the retention are dropped.
  void RecordTlsResults(tern::v1::RecordTlsResultsRequest request,
                        Callback<tern::v1::RecordTlsResultsResponse> done);
  // Admin: the stored counts per (day, domain), read from committed state on
  // the calling thread.
  absl::StatusOr<tern::v1::ListTlsReportsResponse> ListTlsReports();
  // Admin: queues now the reports of every finished day (and today's so far
  // with include_today), as the queue does by itself after midnight UTC.
  // Runs on the queue's TLS report thread, one run at a time; completes there.
  // FailedPrecondition when [tlsrpt] is off.
  void SendTlsReports(tern::v1::SendTlsReportsRequest request, Callback<tern::v1::SendTlsReportsResponse> done);
  // The clock (Unix ms) when the last finished report run (automatic or
  // SendTlsReports) began; 0 before the first. A test that moved the clock
  // to T waits for a value >= T to know a run saw T.
  int64_t TlsReportRunTimeForTest() const;
  // This database's instance token (kInstanceIdLength hex characters), made
  // at its first open and the same at every later one.
  std::string InstanceIdForTest() const;

  // outbound.ini `disabled` as (re)read from the file. A change of it also
  // ends a Pause/Resume override.
  void SetDisabled(bool disabled);
  // A configuration reload: takes from `next` what may change while the
  // queue runs, in the writer role, and completes once it applies. That is
  // always_split, retry, shaping, lease_seconds, max_lease_seconds,
  // max_lease_body_bytes, min_free_bytes (the WAL spare's headroom stays
  // until a restart), ambiguous_policy, max_queue_age_ms, delay_warning_ms,
  // event_retention_ms/_count, idempotency_retention_ms and
  // delete_undo_window_ms; the other fields of `next` are ignored (data_dir,
  // wal_prefill_bytes, the recovery grace, which only a start uses, TLS
  // reports, the clock: the config layer names them as needing a restart,
  // queue_config.h RestartOnlyChanges). `disabled` has its own SetDisabled.
  // From then on: messages enqueued split by the new always_split;
  // a temporary failure is scheduled by the new retry schedule (a retry
  // already scheduled keeps its time; a delivery whose attempts are past
  // the new schedule's end bounces at its next temporary failure); leases
  // are judged by the new limits. Deliveries waiting for a destination's
  // limit all go back to the ready window and are judged again, so a
  // raised or removed limit lets them go at once. Leases out keep counting
  // under the key they were made under; a lowered limit holds new leases
  // until enough of them end. A congestion backoff of a destination whose
  // new limits turn `backoff` off ends. MX site memberships learned from
  // reports are dropped (in memory and on disk) for a site that is gone,
  // and for a domain that now has a section of its own or is listed by a
  // site. Leases, ambiguity, expiry (max_queue_age), delay warnings, the
  // pruning of events, idempotency keys and deleted messages, deletes and
  // the disk check all use the new values from then on; a lease already
  // granted keeps its deadline, a delete already made its undo window.
  void Reconfigure(CoreOptions next, absl::AnyInvocable<void(absl::Status)> done);
  // Admin pause/resume: overrides `disabled` until the file's value changes
  // or the process restarts. Completes with the effective paused state.
  void SetPaused(bool paused, Callback<bool> done);

  // Admin reads: committed state, on the calling thread (they block on
  // RocksDB reads, never on the writer).
  absl::StatusOr<tern::v1::ListResponse> List(const tern::v1::ListRequest& request);
  absl::StatusOr<tern::v1::ShowResponse> Show(const std::string& message_id);
  absl::StatusOr<tern::v1::QshapeResponse> Qshape(const tern::v1::QshapeRequest& request);
  absl::StatusOr<tern::v1::ListCorruptResponse> ListCorrupt(uint32_t limit);
  // One quarantined record (NotFound if there is none), with the body of a
  // quarantined message when it is still stored.
  absl::StatusOr<tern::v1::GetCorruptResponse> GetCorrupt(const tern::v1::GetCorruptRequest& request);
  // Admin write: deletes quarantined records (admin.proto PurgeCorrupt).
  void PurgeCorrupt(tern::v1::PurgeCorruptRequest request, Callback<tern::v1::PurgeCorruptResponse> done);

  // Admin actions on the messages a selector picks (see admin.proto).
  enum class Action { kFlush, kHold, kRelease, kDelete, kBounce };
  void Act(Action action, tern::v1::ActionRequest request, Callback<tern::v1::ActionResponse> done);
  // Undo of Delete while its window lasts (admin.proto Undelete, ListDeleted).
  void Undelete(tern::v1::UndeleteRequest request, Callback<tern::v1::UndeleteResponse> done);
  absl::StatusOr<tern::v1::ListDeletedResponse> ListDeleted(const tern::v1::ListDeletedRequest& request);

  // The event log. ReadEvents appends up to `max` events with seq > after
  // to `out`. LastEventSeq is the newest committed event (0 if none),
  // OldestEventSeq the oldest kept. WaitForEvents blocks until an event
  // after `after` is committed or `timeout_ms` passes; true if there is one.
  absl::Status ReadEvents(uint64_t after, size_t max, std::vector<tern::v1::QueueEvent>* out);
  uint64_t LastEventSeq() const;
  uint64_t OldestEventSeq();
  bool WaitForEvents(uint64_t after, int64_t timeout_ms);

  // Makes every waiting (not leased) delivery due now, as Haraka's SIGHUP
  // does. Completes with the number of deliveries moved. `done` may be null.
  void Flush(Callback<uint64_t> done);

  // Completes every parked long poll with an empty response and makes later
  // Lease calls return at once. Call before shutting the gRPC server down.
  void BeginShutdown();

 private:
  class Impl;
  explicit QueueCore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tern::queue
