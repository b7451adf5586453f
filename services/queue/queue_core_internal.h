// File: queue_core_internal.h
//
// PRIVATE to tern-queue's core: the definition of QueueCore::Impl and its
// helpers, shared by the .cc files that implement it (queue_core.cc: queue
// operations and recovery; queue_admin.cc: the admin operations and events;
// queue_tls_reports.cc: TLS report counts and the daily reports).
// Nothing outside services/queue/queue_*.cc includes this.
//
// Thread-safety: see queue_core.h; everything here belongs to the writer
// thread unless a member says otherwise.
#pragma once

#include "lib/rpc/reply_summary.h"
#include "services/queue/queue_core.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <filesystem>
#include <optional>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "lib/common/ids.h"
#include "lib/common/log.h"
#include "lib/common/status_macros.h"
#include "lib/metrics/metrics.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/utilities/table_properties_collectors.h"
#include "services/queue/group_committer.h"
#include "services/queue/key_codec.h"
#include "services/queue/queue_records.pb.h"

namespace tern::queue {
namespace internal {

using tern::v1::AckRequest;
using tern::v1::AckResponse;
using tern::v1::BounceJob;
using tern::v1::BounceKind;
using tern::v1::BouncedRecipient;
using tern::v1::DeliveryJob;
using tern::v1::EnqueueHeader;
using tern::v1::JobKind;
using tern::v1::LeaseRequest;
using tern::v1::LeaseResponse;
using tern::v1::Outcome;
using tern::v1::ReportRequest;
using tern::v1::ReportResponse;
using tern::v1::ReportStatus;
using tern::v1::StatsResponse;

inline constexpr int kKinds = 2;
// Most deliveries one Flush operation moves; a bigger flush continues in
// further operations so one group never grows without bound.
inline constexpr size_t kFlushChunk = 10000;
inline constexpr uint32_t kMaxJobsPerLease = 1000;
// The deliverer reads at most 64 KiB of a policy (mta_sts.h); a little more
// leaves room, anything larger is not a policy.
inline constexpr size_t kMaxStsPolicyBytes = 128 * 1024;

inline int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0)) ? 1 : 0); }

inline JobType TypeOf(JobKind kind) { return kind == tern::v1::JOB_KIND_BOUNCE ? JobType::kBounce : JobType::kDelivery; }
inline int KindIndex(JobKind kind) { return kind == tern::v1::JOB_KIND_BOUNCE ? 1 : 0; }
inline const char* KindName(JobKind kind) { return kind == tern::v1::JOB_KIND_BOUNCE ? "bounce" : "delivery"; }

inline bool IsPending(const RecipientRecord& r) {
  return r.state() == RECIPIENT_STATE_PENDING || r.state() == RECIPIENT_STATE_DEFERRED;
}

// ApplyAmbiguity's cause when a lease ran out after DATA was sent.
inline constexpr char kLeaseExpiredAfterData[] = "lease expired after DATA was sent";

inline int64_t PendingCount(const DeliveryRecord& d) {
  return std::count_if(d.recipients().begin(), d.recipients().end(), IsPending);
}

inline const char* BounceKindName(tern::v1::BounceKind kind) {
  switch (kind) {
    case tern::v1::BOUNCE_KIND_DELIVERED:
      return "delivered";
    case tern::v1::BOUNCE_KIND_DELAYED:
      return "delayed";
    default:
      return "failed";
  }
}

inline std::string Relay(const tern::v1::RecipientResult& r) {
  if (r.remote_mta().empty() && r.remote_ip().empty()) {
    return "";
  }
  return absl::StrCat(r.remote_mta(), "[", r.remote_ip(), "]");
}

using rpc::ReplySummary;

// Read options for a scan of a whole column family (recovery, qshape): reads
// ahead, and does not push the blocks of a million records through the block
// cache (evicting what the hot path uses, for blocks read once).
inline rocksdb::ReadOptions RecoveryScanOptions() {
  rocksdb::ReadOptions o;
  o.fill_cache = false;
  o.readahead_size = 2u << 20;
  return o;
}

// The original message a DSN carries: all of it, or the header section (the
// bytes up to and including the first empty line; all of it if none).
inline std::string HeadersOf(const std::string& body) {
  size_t crlf = body.find("\r\n\r\n");
  size_t lf = body.find("\n\n");
  size_t end = body.size();
  if (crlf != std::string::npos) {
    end = crlf + 4;
  }
  if (lf != std::string::npos && lf + 2 < end) {
    end = lf + 2;
  }
  return body.substr(0, end);
}

struct CoreMetrics {
  metrics::Counter& enqueued;
  metrics::Counter& duplicates;
  metrics::Counter& delivered;
  metrics::Counter& deferred;
  metrics::Counter& failed;
  metrics::Counter& stale_reports;
  metrics::Counter& bounces_created;
  metrics::Counter& leases_expired;
  metrics::Counter& disk_full_refusals;
  metrics::Counter& corrupt_records;
  metrics::Gauge& messages;
  metrics::Gauge& deliveries_due;
  metrics::Gauge& deliveries_leased;
  metrics::Gauge& deliveries_deferred;
  metrics::Gauge& bounces;
  metrics::Gauge& bounces_leased;
  metrics::Gauge& recipients_pending;
  metrics::Counter& ambiguous;
  metrics::Counter& expired;
  metrics::Counter& delay_warnings;
  metrics::Gauge& deliveries_held;
  metrics::Counter& events;
  metrics::Counter& idempotency_pruned;
  metrics::Gauge& deliveries_throttled;
  metrics::Counter& throttled_concurrency;
  metrics::Counter& throttled_rate;
  metrics::Counter& backoffs;
  metrics::Gauge& backed_off;
  metrics::Gauge& mx_site_domains;
};

inline CoreMetrics& Metrics() {
  static CoreMetrics* m = [] {
    auto& r = metrics::Registry::Global();
    const std::string deliveries_help = "Deliveries not yet final, by state";
    const std::string throttled_help =
        "Times a due delivery was set aside because its domain was at a shaping limit, by limit";
    return new CoreMetrics{
        r.GetCounter("tern_queue_enqueued_total", "Messages stored"),
        r.GetCounter("tern_queue_enqueue_duplicates_total", "Enqueues answered from an idempotency key"),
        r.GetCounter("tern_queue_delivered_total", "Recipients delivered"),
        r.GetCounter("tern_queue_deferred_total", "Recipients deferred (temporary failure, retry scheduled)"),
        r.GetCounter("tern_queue_failed_total", "Recipients failed (permanent, or retries used up)"),
        r.GetCounter("tern_queue_stale_reports_total", "Reports and acks refused for a stale lease token"),
        r.GetCounter("tern_queue_bounces_created_total", "Bounce (DSN) jobs created"),
        r.GetCounter("tern_queue_leases_expired_total", "Leases that ran out before a report"),
        r.GetCounter("tern_queue_disk_full_refusals_total", "Enqueues refused to keep min_free_bytes free"),
        r.GetCounter("tern_queue_corrupt_records_total", "Records that failed to parse, moved to the corrupt CF"),
        r.GetGauge("tern_queue_messages", "Messages stored"),
        r.GetGauge("tern_queue_deliveries", deliveries_help, {{"state", "due"}}),
        r.GetGauge("tern_queue_deliveries", deliveries_help, {{"state", "leased"}}),
        r.GetGauge("tern_queue_deliveries", deliveries_help, {{"state", "deferred"}}),
        r.GetGauge("tern_queue_bounces", "Bounce jobs not yet acknowledged"),
        r.GetGauge("tern_queue_bounces_leased", "Bounce jobs out on lease"),
        r.GetGauge("tern_queue_recipients_pending", "Recipients not yet final"),
        r.GetCounter("tern_queue_ambiguous_total",
                     "Recipients whose lease expired after DATA was sent, without a report"),
        r.GetCounter("tern_queue_expired_total", "Recipients failed for exceeding max_queue_age"),
        r.GetCounter("tern_queue_delay_warnings_total", "Delay DSN jobs created (delay_warning)"),
        r.GetGauge("tern_queue_deliveries", deliveries_help, {{"state", "held"}}),
        r.GetCounter("tern_queue_events_total", "Events appended to the event log"),
        r.GetCounter("tern_queue_idempotency_keys_pruned_total",
                     "Enqueue idempotency keys deleted after idempotency_retention"),
        r.GetGauge("tern_queue_deliveries_throttled",
                   "Due deliveries waiting because their domain is at a shaping limit (concurrency or rate)"),
        r.GetCounter("tern_queue_throttled_total", throttled_help, {{"reason", "concurrency"}}),
        r.GetCounter("tern_queue_throttled_total", throttled_help, {{"reason", "rate"}}),
        r.GetCounter("tern_queue_destination_backoffs_total",
                     "421 / too-many-connections replies that lowered a domain's concurrency"),
        r.GetGauge("tern_queue_destinations_backed_off", "Domains whose concurrency is lowered by a backoff now"),
        r.GetGauge("tern_queue_mx_site_domains",
                   "Domains shaped under an MX site because a report named one of its MX hosts"),
    };
  }();
  return *m;
}

// Deliveries that wait (not leased), counted per second of due time, so that
// "due now" versus "deferred" is exact to the second at any moment without an
// entry per delivery: the map has at most one entry per distinct second in
// the schedule's span. due() is the sum of the buckets at or before the last
// Advance(); Advance walks forward incrementally.
class DueIndex {
 public:
  void Add(int64_t due_ms, int64_t n) {
    const int64_t sec = FloorDiv(due_ms, 1000);
    auto it = buckets_.try_emplace(sec, 0).first;
    it->second += n;
    if (it->second == 0) {
      buckets_.erase(it);
    }
    total_ += n;
    if (sec <= boundary_) {
      due_ += n;
    }
  }

  void Advance(int64_t now_ms) {
    const int64_t sec = FloorDiv(now_ms, 1000);
    if (sec < boundary_) {  // the clock went back: recount
      due_ = 0;
      for (auto it = buckets_.begin(); it != buckets_.end() && it->first <= sec; ++it) {
        due_ += it->second;
      }
    } else {
      for (auto it = buckets_.upper_bound(boundary_); it != buckets_.end() && it->first <= sec; ++it) {
        due_ += it->second;
      }
    }
    boundary_ = sec;
  }

  int64_t due() const { return due_; }
  int64_t total() const { return total_; }

 private:
  absl::btree_map<int64_t, int64_t> buckets_;
  int64_t boundary_ = INT64_MIN;
  int64_t due_ = 0;
  int64_t total_ = 0;
};

// Ids of jobs believed due, in scan order. A hint only: every candidate is
// checked against its record (through the batch) before it is leased.
class ReadyWindow {
 public:
  bool Insert(const std::string& id, int64_t due, size_t cap) {
    if (members_.size() >= cap || !members_.insert(id).second) {
      return members_.contains(id);
    }
    ids_.emplace_back(id, due);
    return true;
  }
  void PushFront(const std::string& id, int64_t due) {
    if (members_.insert(id).second) {
      ids_.emplace_front(id, due);
    }
  }
  std::optional<std::pair<std::string, int64_t>> Pop() {
    if (ids_.empty()) {
      return std::nullopt;
    }
    auto front = std::move(ids_.front());
    ids_.pop_front();
    members_.erase(front.first);
    return front;
  }
  size_t size() const { return ids_.size(); }

 private:
  std::deque<std::pair<std::string, int64_t>> ids_;
  absl::flat_hash_set<std::string> members_;
};

// Outstanding leases by deadline, and how many of them each destination
// domain holds (deliveries; bounce jobs have no domain).
class LeaseTable {
 public:
  void Insert(const std::string& id, int64_t deadline, const std::string& domain = "") {
    leases_.insert_or_assign(id, Lease{deadline, domain});
    by_deadline_.emplace(deadline, id);
    if (!domain.empty()) {
      ++per_domain_[domain];
    }
  }
  // `domain` (optional) gets the domain the lease was counted under.
  bool Erase(const std::string& id, int64_t* deadline, std::string* domain = nullptr) {
    auto it = leases_.find(id);
    if (it == leases_.end()) {
      return false;
    }
    *deadline = it->second.deadline;
    by_deadline_.erase({it->second.deadline, id});
    if (!it->second.domain.empty()) {
      auto d = per_domain_.find(it->second.domain);
      if (d != per_domain_.end() && --d->second == 0) {
        per_domain_.erase(d);
      }
      ++ended_[it->second.domain];
    }
    if (domain != nullptr) {
      *domain = std::move(it->second.domain);
    }
    leases_.erase(it);
    return true;
  }
  bool Contains(const std::string& id) const { return leases_.contains(id); }
  size_t size() const { return leases_.size(); }
  uint32_t CountFor(const std::string& domain) const {
    auto it = per_domain_.find(domain);
    return it == per_domain_.end() ? 0 : it->second;
  }
  // Calls f(domain, n) for each shaping key with leases counted under it.
  template <typename F>
  void ForEachCount(F f) const {
    for (const auto& [domain, n] : per_domain_) {
      f(domain, n);
    }
  }
  // Calls f(domain, n) for the leases of each domain that ended since the
  // last call (each is a slot a parked delivery may take), and forgets them.
  template <typename F>
  void TakeEnded(F f) {
    for (const auto& [domain, n] : ended_) {
      f(domain, n);
    }
    ended_.clear();
  }
  // The first lease with deadline <= now, if any.
  std::optional<std::pair<int64_t, std::string>> FirstExpired(int64_t now) const {
    if (by_deadline_.empty() || by_deadline_.begin()->first > now) {
      return std::nullopt;
    }
    return *by_deadline_.begin();
  }

 private:
  struct Lease {
    int64_t deadline;
    std::string domain;
  };
  absl::btree_set<std::pair<int64_t, std::string>> by_deadline_;
  absl::flat_hash_map<std::string, Lease> leases_;
  absl::flat_hash_map<std::string, uint32_t> per_domain_;
  absl::flat_hash_map<std::string, uint32_t> ended_;
};

// Due deliveries held back because their domain is at a shaping limit (its
// concurrency_max of leases out, or no start left in its rate): they leave
// the ready window (so a throttled domain's backlog is not read again on
// every Lease) and go back to it when a lease of their domain ends or its
// rate allows more. Memory only: after a restart the schedule scan finds
// them again.
class ParkedDeliveries {
 public:
  // False if `id` is parked already.
  bool Park(const std::string& domain, const std::string& id, int64_t due) {
    if (!ids_.insert(id).second) {
      return false;
    }
    by_domain_[domain].emplace_back(id, due);
    return true;
  }
  void Unpark(const std::string& domain, const std::string& id) {
    if (ids_.erase(id) == 0) {
      return;
    }
    auto it = by_domain_.find(domain);
    if (it == by_domain_.end()) {
      return;
    }
    auto& q = it->second;
    q.erase(std::remove_if(q.begin(), q.end(), [&](const auto& e) { return e.first == id; }), q.end());
    if (q.empty()) {
      by_domain_.erase(it);
    }
  }
  // Takes up to `n` of `domain`'s entries, oldest first, into sink(id, due).
  template <typename Sink>
  size_t Release(const std::string& domain, uint32_t n, Sink sink) {
    auto it = by_domain_.find(domain);
    if (it == by_domain_.end()) {
      return 0;
    }
    auto& q = it->second;
    size_t moved = 0;
    for (; n > 0 && !q.empty(); --n) {
      ids_.erase(q.front().first);
      sink(q.front().first, q.front().second);
      q.pop_front();
      ++moved;
    }
    if (q.empty()) {
      by_domain_.erase(it);
    }
    return moved;
  }
  bool empty() const { return ids_.empty(); }
  size_t size() const { return ids_.size(); }
  bool Has(const std::string& domain) const { return by_domain_.contains(domain); }
  // Calls f(domain, n) for each shaping key with deliveries parked under it.
  template <typename F>
  void ForEachCount(F f) const {
    for (const auto& [domain, q] : by_domain_) {
      f(domain, static_cast<uint32_t>(q.size()));
    }
  }

 private:
  absl::flat_hash_map<std::string, std::deque<std::pair<std::string, int64_t>>> by_domain_;
  absl::flat_hash_set<std::string> ids_;
};

struct LeaseCall {
  LeaseRequest request;
  QueueCore::Callback<LeaseResponse> done;
  std::chrono::steady_clock::time_point wait_until;
  LeaseResponse response;
  bool parked = false;
  std::shared_ptr<const std::atomic<bool>> cancelled;  // null: cannot be cancelled
  bool Cancelled() const { return cancelled && cancelled->load(std::memory_order_relaxed); }
};

struct EnqueueCall {
  EnqueueHeader header;
  std::string body;
  // Recipient positions in the envelope, one list per delivery.
  std::vector<std::pair<std::string, std::vector<int>>> splits;
  QueueCore::Callback<EnqueueResult> done;
  EnqueueResult result;
};

enum class LeaseStep { kSkipped, kLeased, kOverBudget };

}  // namespace internal

using namespace internal;  // NOLINT: the core's own helpers

class QueueCore::Impl {
 public:
  explicit Impl(CoreOptions options)
      : opt_(std::move(options)),
        clock_(opt_.clock),
        disabled_(opt_.disabled),
        file_disabled_(opt_.disabled),
        always_split_(opt_.always_split),
        max_queue_age_ms_(opt_.max_queue_age_ms),
        delete_undo_window_ms_(opt_.delete_undo_window_ms),
        idempotency_retention_ms_(opt_.idempotency_retention_ms),
        min_free_bytes_(opt_.min_free_bytes) {
    paused_view_ = disabled_;
  }

  ~Impl() {
    StopTlsReporter();
    if (committer_) {
      BeginShutdown();
      committer_->Stop();
      committer_.reset();
    }
    if (db_ && !handles_.empty()) {
      // A clean stop leaves nothing in the WAL to replay at the next start.
      rocksdb::FlushOptions flush;
      flush.wait = true;
      (void)db_->Flush(flush, handles_);
    }
    for (auto* h : handles_) {
      (void)db_->DestroyColumnFamilyHandle(h);
    }
    handles_.clear();
    if (db_) {
      (void)db_->Close();
    }
  }

  absl::Status Open();

  void Enqueue(EnqueueHeader header, std::string body, Callback<EnqueueResult> done);
  void EnqueueMany(std::vector<EnqueueArgs> items);
  void Lease(LeaseRequest request, Callback<LeaseResponse> done, std::shared_ptr<const std::atomic<bool>> cancelled);
  void Report(ReportRequest request, Callback<ReportResponse> done);
  void Ack(AckRequest request, Callback<AckResponse> done);
  void Stats(Callback<StatsResponse> done);
  void Destinations(Callback<tern::v1::DestinationsResponse> done);
  void SetDisabled(bool disabled);
  void Reconfigure(CoreOptions next, absl::AnyInvocable<void(absl::Status)> done);
  void Flush(Callback<uint64_t> done);
  void BeginShutdown();

  void Progress(tern::v1::ProgressRequest request, Callback<tern::v1::ProgressResponse> done);
  void PutHostFlags(tern::v1::PutHostFlagsRequest request, Callback<tern::v1::PutHostFlagsResponse> done);
  absl::StatusOr<tern::v1::GetHostFlagsResponse> GetHostFlags(const tern::v1::GetHostFlagsRequest& request);
  void PutStsPolicy(tern::v1::PutStsPolicyRequest request, Callback<tern::v1::PutStsPolicyResponse> done);
  absl::StatusOr<tern::v1::GetStsPolicyResponse> GetStsPolicy(const tern::v1::GetStsPolicyRequest& request);
  void ClearHostFlags(tern::v1::ClearHostFlagsRequest request, Callback<tern::v1::ClearHostFlagsResponse> done);
  // Calls f(key, flag) for every host flag record of `flag` (all flags when
  // empty) in committed state that parses; a storage error stops the scan.
  absl::Status ForEachHostFlag(const std::string& flag,
                               const std::function<void(const rocksdb::Slice&, tern::v1::HostFlag)>& f);
  // Deletes each of `keys` (meta) whose Record (a proto with
  // expires_unix_ms: host flags, MTA-STS policies) is still expired when its
  // group runs: a Put may have renewed it since the reader saw it. Best
  // effort: a key left behind is tried again by the next reader.
  template <typename Record>
  void PurgeExpiredMeta(std::vector<std::string> keys) {
    committer_->Submit(GroupOp{
        [this, keys = std::move(keys)](Txn& txn) -> absl::Status {
          const int64_t now = clock_->NowUnixMs();
          for (const std::string& key : keys) {
            std::string raw;
            Record record;
            if (txn.Get(meta_, key, &raw).ok() && record.ParseFromString(raw) && record.expires_unix_ms() <= now) {
              txn.Delete(meta_, key);
            }
          }
          return absl::OkStatus();
        },
        [](const absl::Status&) {},
    });
  }
  void SetPaused(bool paused, Callback<bool> done);
  // Answers `done` with what `fill(txn, response)` reads in the writer role
  // (the in-memory state only that role may touch), once the group it joins
  // is committed. Reads write nothing, so the group needs no fsync for them.
  template <typename Response, typename Fill>
  void AnswerFromWriter(Fill fill, Callback<Response> done) {
    auto call = std::make_shared<std::pair<Response, Callback<Response>>>();
    call->second = std::move(done);
    committer_->Submit(GroupOp{
        [call, fill = std::move(fill)](Txn& txn) mutable {
          fill(txn, call->first);
          return absl::OkStatus();
        },
        [call](const absl::Status& s) {
          if (s.ok()) {
            call->second(std::move(call->first));
          } else {
            call->second(s);
          }
        },
        /*durable=*/false,
    });
  }
  absl::StatusOr<tern::v1::ListResponse> List(const tern::v1::ListRequest& request);
  absl::StatusOr<tern::v1::ShowResponse> Show(const std::string& message_id);
  absl::StatusOr<tern::v1::QshapeResponse> Qshape(const tern::v1::QshapeRequest& request);
  absl::StatusOr<tern::v1::ListCorruptResponse> ListCorrupt(uint32_t limit);
  absl::StatusOr<tern::v1::GetCorruptResponse> GetCorrupt(const tern::v1::GetCorruptRequest& request);
  void PurgeCorrupt(tern::v1::PurgeCorruptRequest request, Callback<tern::v1::PurgeCorruptResponse> done);
  void Act(QueueCore::Action action, tern::v1::ActionRequest request, Callback<tern::v1::ActionResponse> done);
  void Undelete(tern::v1::UndeleteRequest request, Callback<tern::v1::UndeleteResponse> done);
  absl::StatusOr<tern::v1::ListDeletedResponse> ListDeleted(const tern::v1::ListDeletedRequest& request);
  absl::Status ReadEvents(uint64_t after, size_t max, std::vector<tern::v1::QueueEvent>* out);
  uint64_t LastEventSeq() const { return committed_event_seq_.load(std::memory_order_acquire); }
  uint64_t OldestEventSeq();
  bool WaitForEvents(uint64_t after, int64_t timeout_ms);

  // TLS reports (queue_tls_reports.cc).
  void RecordTlsResults(tern::v1::RecordTlsResultsRequest request,
                        Callback<tern::v1::RecordTlsResultsResponse> done);
  absl::StatusOr<tern::v1::ListTlsReportsResponse> ListTlsReports();
  void SendTlsReports(tern::v1::SendTlsReportsRequest request, Callback<tern::v1::SendTlsReportsResponse> done);
  int64_t TlsReportRunTimeForTest() const { return tlsrpt_last_run_ms_.load(std::memory_order_acquire); }
  // This database's instance token (LoadInstanceId); set by Open() before
  // any other thread starts, never changed afterwards, so any thread reads it.
  const std::string& instance_id() const { return instance_id_; }

 private:
  struct KindState {
    ReadyWindow window;
    LeaseTable leases;
    ParkedDeliveries parked;  // deliveries only
    std::deque<std::shared_ptr<LeaseCall>> waiters;
    // Every schedule key of this kind due before this time is in the window
    // (or has moved on); scans start here instead of at the first key, so
    // they do not wade through the tombstones of jobs already done.
    int64_t scan_cursor = 0;
  };

  struct Counters {
    int64_t messages = 0;
    int64_t deliveries = 0;
    int64_t bounces = 0;
    int64_t recipients_pending = 0;
    int64_t enqueued = 0;
    int64_t delivered = 0;
    int64_t deferred = 0;
    int64_t failed = 0;
    int64_t ambiguous = 0;
    // Held deliveries without a schedule key (see DeliveryRecord.held).
    int64_t held = 0;
  };

  KindState& State(JobKind kind) { return kinds_[KindIndex(kind)]; }

  // Reconfigure's work once its group committed (writer role).
  void ApplyReloadable(CoreOptions next);

  // In-memory changes made inside an operation, each with its undo.
  void Adjust(Txn& txn, int64_t& field, int64_t delta) {
    field += delta;
    txn.OnUndo([&field, delta] { field -= delta; });
  }
  void AddDue(Txn& txn, int64_t due_ms, int64_t n) {
    due_.Add(due_ms, n);
    txn.OnUndo([this, due_ms, n] { due_.Add(due_ms, -n); });
  }

  // Shaping keys. Every limit below is kept per shaping key: the recipient
  // domain, or the key of the MX site that serves it ("site:NAME",
  // destination_shaping.h). A domain's key can change while some of its
  // deliveries are out or parked; each lease, park and backoff keeps the
  // key it was made under, so what it frees or releases is what it took.
  //
  // The key for `domain` now. Writer role only (it reads learned_sites_
  // without the lock: only the writer role changes it).
  const std::string& ShapingKey(const std::string& domain) const {
    if (!opt_.shaping.has_sites() || opt_.shaping.HasOwnSection(domain)) {
      return domain;
    }
    if (const MxSite* site = opt_.shaping.ListedSite(domain)) {
      return site->key;
    }
    auto it = learned_sites_.find(domain);
    return it == learned_sites_.end() ? domain : it->second.site->key;
  }
  // The same from any thread (the admin API).
  std::string ShapingKeyAnyThread(const std::string& domain) const {
    absl::MutexLock lock(&site_mu_);
    return ShapingKey(domain);
  }
  // While applying a report of `domain` whose delivery reached `remote_mta`
  // (the MX host that answered): a host in a site's `mx` list makes the
  // domain part of that site for kSiteMemoryMs, renewed by every such
  // report; a host in none takes it out at once (its MX moved). Domains
  // with a section of their own or listed by a site are left alone. The
  // membership is written with the report (meta CF, MxSiteRecord, so a
  // restart keeps it; rewritten once an hour of it is used up, not on every
  // report) and changes in memory once the report is committed.
  void NoteMxSite(Txn& txn, const std::string& domain, const std::string& remote_mta, int64_t now) {
    if (opt_.shaping.HasOwnSection(domain) || opt_.shaping.ListedSite(domain) != nullptr) {
      return;
    }
    const MxSite* site = opt_.shaping.SiteForMx(remote_mta);
    auto it = learned_sites_.find(domain);
    const LearnedSite* was = it == learned_sites_.end() ? nullptr : &it->second;
    if (site == nullptr) {
      if (was != nullptr) {
        txn.Delete(meta_, MxSiteKey(domain));
        txn.OnCommit([this, domain, remote_mta] { ForgetMxSite(domain, remote_mta); });
      }
      return;
    }
    if (was == nullptr && learned_sites_.size() >= kMaxLearnedSites) {
      return;  // shaped on its own, as before any report
    }
    const int64_t until = now + kSiteMemoryMs;
    const bool write = was == nullptr || was->site != site || was->stored_until_ms < until - kSiteRewriteMs;
    if (write) {
      MxSiteRecord record;
      record.set_site(site->name);
      record.set_expires_unix_ms(until);
      PutRecord(txn, meta_, MxSiteKey(domain), record);
    }
    // By name: a Reconfigure earlier in this group may have replaced the
    // sites by the time this runs (the site then counts only if it is still
    // configured).
    txn.OnCommit([this, domain, name = site->name, until, write, remote_mta] {
      const MxSite* current = opt_.shaping.SiteNamed(name);
      if (current == nullptr || opt_.shaping.HasOwnSection(domain) || opt_.shaping.ListedSite(domain) != nullptr) {
        if (write) {
          PurgeMxSiteRecords({domain});
        }
        return;
      }
      const MxSite* site = current;
      auto it = learned_sites_.find(domain);
      if (it == learned_sites_.end() || it->second.site != site) {
        log::Event(log::Level::kInfo, "mx_site_joined", {{"domain", domain}, {"site", site->name}, {"mx", remote_mta}});
      }
      {
        absl::MutexLock lock(&site_mu_);
        LearnedSite& e = learned_sites_[domain];
        e.site = site;
        e.until_ms = until;
        if (write) {
          e.stored_until_ms = until;
        }
      }
      Metrics().mx_site_domains.Set(static_cast<int64_t>(learned_sites_.size()));
    });
  }
  void ForgetMxSite(const std::string& domain, const std::string& remote_mta) {
    auto it = learned_sites_.find(domain);
    if (it == learned_sites_.end()) {
      return;
    }
    log::Event(log::Level::kInfo, "mx_site_left",
               {{"domain", domain}, {"site", it->second.site->name}, {"mx", remote_mta}});
    {
      absl::MutexLock lock(&site_mu_);
      learned_sites_.erase(it);
    }
    Metrics().mx_site_domains.Set(static_cast<int64_t>(learned_sites_.size()));
  }
  // Forgets domains no report has tied to their site for kSiteMemoryMs,
  // in memory and on disk.
  void PruneMxSites(int64_t now) {
    if (learned_sites_.empty()) {
      return;
    }
    std::vector<std::string> keys;
    {
      absl::MutexLock lock(&site_mu_);
      for (auto it = learned_sites_.begin(); it != learned_sites_.end();) {
        if (it->second.until_ms <= now) {
          keys.push_back(MxSiteKey(it->first));
          learned_sites_.erase(it++);
        } else {
          ++it;
        }
      }
    }
    Metrics().mx_site_domains.Set(static_cast<int64_t>(learned_sites_.size()));
    if (!keys.empty()) {
      PurgeExpiredMeta<MxSiteRecord>(std::move(keys));
    }
  }
  // Deletes the MxSiteRecords of `domains` that have no membership in
  // memory when the deletion's group runs (one may have been learned again
  // meanwhile).
  void PurgeMxSiteRecords(std::vector<std::string> domains) {
    committer_->Submit(GroupOp{
        [this, domains = std::move(domains)](Txn& txn) -> absl::Status {
          for (const std::string& domain : domains) {
            if (!learned_sites_.contains(domain)) {
              txn.Delete(meta_, MxSiteKey(domain));
            }
          }
          return absl::OkStatus();
        },
        [](const absl::Status&) {},
        /*durable=*/false,  // a record left behind is dropped at the next start
    });
  }
  // At startup, before leases are counted: the memberships written by
  // NoteMxSite. Expired ones, and those the configuration no longer allows
  // (the site is gone, or the domain has its own section or is listed),
  // are deleted through `batch`.
  absl::Status LoadMxSites(int64_t now, rocksdb::WriteBatch& batch);

  // Why a due delivery shaped under `domain` (a shaping key) may not be
  // leased now, if it may not.
  enum class Throttle { kNone, kConcurrency, kRate };
  Throttle ThrottleFor(const std::string& domain, int64_t now) {
    const DestinationLimits& limits = opt_.shaping.For(domain);
    const uint32_t concurrency = ConcurrencyFor(domain, limits, now);
    if (concurrency > 0 && State(tern::v1::JOB_KIND_DELIVERY).leases.CountFor(domain) >= concurrency) {
      return Throttle::kConcurrency;
    }
    if (limits.rate.enabled() && !rate_.Allows(domain, limits.rate, now)) {
      return Throttle::kRate;
    }
    return Throttle::kNone;
  }
  // The domain's concurrency limit now (0 = none): the configured one, or
  // lower while a congestion backoff lasts.
  uint32_t ConcurrencyFor(const std::string& domain, const DestinationLimits& limits, int64_t now) const {
    if (backoff_.empty()) {
      return limits.concurrency_max;
    }
    auto it = backoff_.find(domain);
    if (it == backoff_.end() || it->second.until_ms <= now) {
      return limits.concurrency_max;
    }
    return limits.concurrency_max == 0 ? it->second.cap : std::min(limits.concurrency_max, it->second.cap);
  }
  // After a committed report shaped under `domain` (a shaping key): a
  // congestion reply (IsCongestion) halves what may be out (at least 1) for
  // backoff_ms from now; while that lasts, each delivery that succeeded lets
  // one more go out again.
  void NoteDestinationFeedback(const std::string& domain, bool congested, bool delivered, const std::string& reply,
                               int64_t now) {
    const DestinationLimits& limits = opt_.shaping.For(domain);
    if (!limits.backoff) {
      return;
    }
    KindState& ks = State(tern::v1::JOB_KIND_DELIVERY);
    auto it = backoff_.find(domain);
    const bool active = it != backoff_.end() && it->second.until_ms > now;
    if (congested) {
      // What was out when the reply came, this report's lease included.
      const uint32_t out = ks.leases.CountFor(domain) + 1;
      const uint32_t cap = std::max<uint32_t>(1, (active ? std::min(it->second.cap, out) : out) / 2);
      backoff_.insert_or_assign(domain, Backoff{cap, now + limits.backoff_ms, reply});
      Metrics().backoffs.Inc();
      log::Event(log::Level::kWarn, "destination_backoff",
                 {{"domain", domain}, {"concurrency", absl::StrCat(cap)}, {"was_out", absl::StrCat(out)},
                  {"seconds", absl::StrCat(limits.backoff_ms / 1000)}, {"reply", reply}});
    } else if (delivered && active) {
      ++it->second.cap;
      // One more may go: hand a waiting one back now rather than at the
      // next lease end.
      ReleaseToWindow(domain, 1);
    }
  }
  // Lifts backoffs whose time is up; their domains' waiting deliveries go
  // back to the window (any over the configured limit are parked again).
  void EndBackoffs(int64_t now) {
    EndBackoffsIf([now](const std::string&, const Backoff& b) { return b.until_ms <= now; });
  }
  // The same for the backoffs `ends(key, backoff)` picks (also a reload's:
  // those the new limits turn off).
  template <typename Ends>
  void EndBackoffsIf(Ends ends) {
    for (auto it = backoff_.begin(); it != backoff_.end();) {
      if (!ends(it->first, it->second)) {
        ++it;
        continue;
      }
      ReleaseToWindow(it->first, UINT32_MAX);
      {
        absl::MutexLock lock(&throttled_mu_);
        throttled_view_.erase(it->first);
      }
      log::Event(log::Level::kNotice, "destination_backoff_ended",
                 {{"domain", it->first}, {"concurrency", absl::StrCat(it->second.cap)}});
      backoff_.erase(it++);
    }
    Metrics().backed_off.Set(static_cast<int64_t>(backoff_.size()));
  }
  // A delivery of `domain` is being leased: spends a start of its rate.
  void TakeRate(Txn& txn, const std::string& domain, int64_t now) {
    const RateLimit& rate = opt_.shaping.For(domain).rate;
    if (rate.enabled()) {
      rate_.Take(domain, rate, now);
      txn.OnUndo([this, domain, rate] { rate_.GiveBack(domain, rate); });
    }
  }
  // Sets a due delivery of a throttled destination aside until a lease of
  // that destination ends or its rate allows a start (see ParkedDeliveries).
  void ParkDelivery(Txn& txn, Throttle why, const std::string& domain, const std::string& id, int64_t due) {
    ParkedDeliveries& parked = State(tern::v1::JOB_KIND_DELIVERY).parked;
    if (!parked.Park(domain, id, due)) {
      return;
    }
    txn.OnUndo([&parked, domain, id] { parked.Unpark(domain, id); });
    if (why == Throttle::kRate) {
      rate_waiting_.insert(domain);  // a hint: ReleaseParked drops it when nothing waits
    }
    txn.OnCommit([domain, id, why, this] {
      const DestinationLimits& limits = opt_.shaping.For(domain);
      const bool rate = why == Throttle::kRate;
      (rate ? Metrics().throttled_rate : Metrics().throttled_concurrency).Inc();
      const int64_t now = clock_->NowUnixMs();
      std::string text;
      // Read after the delivery's domain in `ternctl explain`.
      if (absl::StartsWith(domain, "site:")) {
        absl::StrAppend(&text, "is shaped with MX site ", absl::string_view(domain).substr(5), ", which has ");
      } else {
        text = "has ";
      }
      if (rate) {
        absl::StrAppend(&text, "rate_max=", limits.rate.ToString(), " starts used up");
      } else if (auto b = backoff_.find(domain); b != backoff_.end() && b->second.until_ms > now) {
        absl::StrAppend(&text, "its concurrency lowered to ", ConcurrencyFor(domain, limits, now),
                            " deliveries out on lease after the reply '", b->second.reply,
                            "' (backoff, lifted ", limits.backoff_ms / 1000, " s after the last such reply)");
      } else {
        absl::StrAppend(&text, "concurrency_max=", limits.concurrency_max, " deliveries out on lease");
      }
      {
        absl::MutexLock lock(&throttled_mu_);
        throttled_view_.insert_or_assign(domain, std::move(text));
      }
      log::Event(log::Level::kDebug, "delivery_throttled",
                 {{"delivery", id},
                  {"domain", domain},
                  {"limit", rate ? "rate" : "concurrency"},
                  {"leased", absl::StrCat(State(tern::v1::JOB_KIND_DELIVERY).leases.CountFor(domain))},
                  {"concurrency_max", absl::StrCat(limits.concurrency_max)},
                  {"rate_max", limits.rate.ToString()}});
    });
  }
  // Moves up to `n` of `domain`'s parked deliveries, oldest first, to the
  // back of the ready window; returns how many.
  size_t ReleaseToWindow(const std::string& domain, uint32_t n) {
    return State(tern::v1::JOB_KIND_DELIVERY).parked.Release(domain, n, [this](const std::string& id, int64_t due) {
      Offer(tern::v1::JOB_KIND_DELIVERY, id, due);
    });
  }
  // Puts parked deliveries back into the ready window: for a concurrency
  // limit one for each lease of their destination that ended since the last
  // call (a slot each: releasing by free slots instead would hand the same
  // slots out again on every call until the released ones were leased); for
  // a rate as many as it allows now, less those released earlier and not yet
  // taken from the window, at the window's front. Returns the number moved.
  // A released one whose slot or start was meanwhile taken is simply parked
  // again when leased.
  size_t ReleaseParked() {
    KindState& ks = State(tern::v1::JOB_KIND_DELIVERY);
    size_t moved = 0;
    auto done_waiting = [&](const std::string& domain) {
      if (!ks.parked.Has(domain)) {
        absl::MutexLock lock(&throttled_mu_);
        throttled_view_.erase(domain);
      }
    };
    ks.leases.TakeEnded([&](const std::string& domain, uint32_t n) {
      const size_t released = ReleaseToWindow(domain, n);
      if (released > 0) {
        done_waiting(domain);
      }
      moved += released;
    });
    if (rate_waiting_.empty()) {
      return moved;
    }
    const int64_t now = clock_->NowUnixMs();
    std::vector<std::pair<std::string, int64_t>> out;
    for (auto it = rate_waiting_.begin(); it != rate_waiting_.end();) {
      const std::string& domain = *it;
      const RateLimit& rate = opt_.shaping.For(domain).rate;
      if (ks.parked.Has(domain)) {
        uint32_t room = rate.enabled() ? rate_.Available(domain, rate, now) : UINT32_MAX;
        auto in_window = rate_in_window_.find(domain);
        const uint32_t pending = in_window == rate_in_window_.end() ? 0 : in_window->second;
        room = room > pending ? room - pending : 0;
        out.clear();
        ks.parked.Release(domain, room, [&out](const std::string& id, int64_t due) { out.emplace_back(id, due); });
        for (auto e = out.rbegin(); e != out.rend(); ++e) {  // oldest ends up first
          ks.window.PushFront(e->first, e->second);
          rate_released_.insert_or_assign(e->first, domain);
        }
        if (!out.empty()) {
          rate_in_window_[domain] += static_cast<uint32_t>(out.size());
          moved += out.size();
          done_waiting(domain);
        }
      }
      if (!ks.parked.Has(domain)) {
        rate_waiting_.erase(it++);
      } else {
        ++it;
      }
    }
    return moved;
  }
  // A job id left the delivery window: if a rate released it, it no longer
  // counts against its domain's next release.
  void NoteTakenFromWindow(const std::string& id) {
    if (rate_released_.empty()) {
      return;
    }
    auto it = rate_released_.find(id);
    if (it == rate_released_.end()) {
      return;
    }
    auto n = rate_in_window_.find(it->second);
    if (n != rate_in_window_.end() && --n->second == 0) {
      rate_in_window_.erase(n);
    }
    rate_released_.erase(it);
  }
  // Why deliveries of `domain` are waiting (for `ternctl explain`), if they
  // are. Any thread.
  std::optional<std::string> ThrottleReason(const std::string& domain) const {
    const std::string key = ShapingKeyAnyThread(domain);
    absl::MutexLock lock(&throttled_mu_);
    auto it = throttled_view_.find(key);
    return it == throttled_view_.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
  // The domain a delivery's lease is counted under: none unless the domain
  // has a concurrency limit or may get one by a backoff.
  std::string LeaseDomain(const std::string& domain) const {
    const DestinationLimits& limits = opt_.shaping.For(domain);
    return limits.concurrency_max > 0 || limits.backoff ? domain : std::string();
  }

  // Puts a job id into the ready window; when the window is full the scan
  // cursor moves back so the next scan finds the job.
  void Offer(JobKind kind, const std::string& id, int64_t due) {
    KindState& ks = State(kind);
    if (!ks.window.Insert(id, due, opt_.ready_window)) {
      ks.scan_cursor = std::min(ks.scan_cursor, due);
    }
  }

  // Writes the job's schedule key at `due` and counts it as waiting.
  void ScheduleAt(Txn& txn, JobKind kind, const std::string& id, int64_t due, int64_t now) {
    txn.Put(schedule_, EncodeScheduleKey(TypeOf(kind), due, id), "");
    if (kind == tern::v1::JOB_KIND_DELIVERY) {
      AddDue(txn, due, 1);
    }
    if (due <= now) {
      Offer(kind, id, due);
    }
  }

  // Deletes the job's schedule key at `due` and stops counting it where it is
  // counted: in the lease table, or (deliveries) as waiting at `due`.
  void Unschedule(Txn& txn, JobKind kind, const std::string& id, int64_t due) {
    txn.Delete(schedule_, EncodeScheduleKey(TypeOf(kind), due, id));
    KindState& ks = State(kind);
    int64_t deadline = 0;
    std::string domain;
    if (ks.leases.Erase(id, &deadline, &domain)) {
      txn.OnUndo([&ks, id, deadline, domain] { ks.leases.Insert(id, deadline, domain); });
    } else if (kind == tern::v1::JOB_KIND_DELIVERY) {
      AddDue(txn, due, -1);
    }
  }

  // Writes the job's schedule key at the lease deadline and counts it leased
  // (under `domain` for deliveries, for their concurrency limit).
  void MarkLeased(Txn& txn, JobKind kind, const std::string& id, int64_t deadline, const std::string& domain = "") {
    txn.Put(schedule_, EncodeScheduleKey(TypeOf(kind), deadline, id), "");
    KindState& ks = State(kind);
    ks.leases.Insert(id, deadline, domain);
    txn.OnUndo([this, kind, &ks, id] {
      int64_t d = 0;
      if (!ks.leases.Erase(id, &d) && kind == tern::v1::JOB_KIND_DELIVERY) {
        // It expired meanwhile and was counted as waiting at its deadline.
        due_.Add(d, -1);
      }
    });
  }

  // Appends an event to the log in this operation's batch: it exists exactly
  // when the state change it describes does.
  void AppendEvent(Txn& txn, absl::string_view type, absl::string_view message_id, absl::string_view job_id,
                   std::vector<std::string> recipients, absl::string_view detail);

  // A held delivery without a lease has no schedule key (see DeliveryRecord.held).
  static bool Detached(const DeliveryRecord& rec) { return rec.held() && rec.lease_token().empty(); }
  // Removes the delivery from wherever it is counted: the held count, the
  // lease table or the due index (and its schedule key).
  void Detach(Txn& txn, const DeliveryRecord& rec) {
    if (Detached(rec)) {
      Adjust(txn, counters_.held, -1);
    } else {
      Unschedule(txn, tern::v1::JOB_KIND_DELIVERY, rec.delivery_id(), rec.due_unix_ms());
    }
  }
  // Holds a delivery (the caller writes the record). One out on a live lease
  // keeps its lease; the report (or the lease's end) takes it out.
  void HoldDelivery(Txn& txn, DeliveryRecord& rec, absl::string_view reason);
  // Releases a held delivery: due now. The caller writes the record.
  void ReleaseDelivery(Txn& txn, DeliveryRecord& rec, int64_t now);
  // DATA was sent under a lease that is over (it ran out, or the delivery
  // was deleted and is put back): marks the pending recipients of `rec`
  // ambiguous and applies the policy; `cause` opens the event's text.
  // Returns true if it was held. `rec` must be scheduled or leased (a hold
  // takes it out). The caller writes the record.
  bool ApplyAmbiguity(Txn& txn, DeliveryRecord& rec, absl::string_view cause);
  // Fails every pending recipient of `rec` because the message is older
  // than max_queue_age; the delivery is final afterwards and removed.
  absl::Status ExpireDelivery(Txn& txn, DeliveryRecord& rec, MessageRecord& msg, int64_t now);
  // Fails the given pending recipients with `result` (outcome PERMANENT),
  // creating the bounce job per NOTIFY. Returns how many failed.
  int FailRecipients(Txn& txn, DeliveryRecord& rec, MessageRecord& msg, const std::vector<int>& positions,
                     const tern::v1::RecipientResult& result, const char* event, int64_t now);
  // Creates delay DSN jobs for recipients of `rec` that passed a delay_warning point.
  void MaybeWarnDelay(Txn& txn, DeliveryRecord& rec, MessageRecord& msg, int64_t now);
  int64_t ArrivalOf(const DeliveryRecord& rec) const;
  // Removes a delivery record that has no pending recipient left (or is
  // dropped): counters, message open_jobs. The caller saves the message.
  void RemoveDelivery(Txn& txn, const DeliveryRecord& rec, MessageRecord& msg);
  absl::StatusOr<ReportStatus> ApplyProgressItem(Txn& txn, const tern::v1::DeliveryProgress& item);
  absl::Status ApplyMarkAmbiguous(Txn& txn, const std::string& id);
  // Runs `apply(txn, begin, end)` over items [0, n) in chunks, each chunk a
  // group of its own submitted after the previous one committed, so a big
  // admin action never makes one huge group. `committed` runs after each
  // chunk's commit; `finished` once, with the first failure or OK. n > 0.
  void RunInChunks(size_t n, std::function<absl::Status(Txn&, size_t, size_t)> apply,
                   std::function<void()> committed, std::function<void(const absl::Status&)> finished);
  // `undo_token` non-empty (Delete only): what is removed is kept for the
  // undo window under that token, and `*kept_count` counts the message.
  absl::StatusOr<uint64_t> ApplyAction(Txn& txn, QueueCore::Action action, const tern::v1::ActionRequest& request,
                                       const std::string& message_id, const std::string& undo_token,
                                       uint64_t* kept_count);
  // Stores what a Delete removed of `msg` (the deliveries and bounce jobs
  // in `kept`), before the message is saved or retired: when no job of it
  // remains, the message record and its body are kept too.
  absl::Status KeepDeleted(Txn& txn, const std::string& token, const std::string& reason, const MessageRecord& msg,
                           DeletedRecord kept);
  // Puts back one DeletedRecord (stored under `key`) and deletes it; adds
  // what it did to `response`.
  absl::Status ApplyUndelete(Txn& txn, const std::string& key, tern::v1::UndeleteResponse& response);
  // Purges deleted-for-undo records whose window has passed, oldest first,
  // one chunk per call.
  void PruneDeleted();
  void PruneEvents();
  // Deletes idempotency keys older than idempotency_retention: one chunk of
  // the key range per call, resuming where the last call stopped.
  void PruneIdempotencyKeys();
  bool IdempotencyExpired(const IdempotencyRecord& rec, int64_t now) const {
    return idempotency_retention_ms() > 0 && rec.created_unix_ms() < now - idempotency_retention_ms();
  }
  void ApplyEffectiveDisabled(bool was);
  // Evaluates the selector on committed state; ids in arrival order.
  absl::StatusOr<std::vector<std::string>> Select(const tern::v1::Selector& selector, size_t limit,
                                                  const std::string& after, std::string* next_cursor);

  template <typename T>
  absl::StatusOr<std::optional<T>> Read(Txn& txn, rocksdb::ColumnFamilyHandle* cf, const char* cf_name,
                                        const std::string& key) {
    std::string raw;
    rocksdb::Status s = txn.Get(cf, key, &raw);
    if (s.IsNotFound()) {
      return std::optional<T>();
    }
    if (!s.ok()) {
      return StorageError(s, absl::StrCat("read ", cf_name));
    }
    T record;
    if (!record.ParseFromString(raw)) {
      Quarantine(txn, cf, cf_name, key, raw);
      return std::optional<T>();
    }
    return std::optional<T>(std::move(record));
  }

  void Quarantine(Txn& txn, rocksdb::ColumnFamilyHandle* cf, const char* cf_name, const std::string& key,
                  const std::string& raw) {
    txn.Put(corrupt_, CorruptKey(cf_name, key), raw);
    txn.Delete(cf, key);
    txn.OnCommit([this, cf_name, key] { LogCorrupt(cf_name, key); });
  }

  void LogCorrupt(const char* cf_name, const std::string& key) {
    corrupt_count_.fetch_add(1, std::memory_order_relaxed);
    Metrics().corrupt_records.Inc();
    log::Event(log::Level::kError, "corrupt_record", {{"cf", cf_name}, {"key", key}, {"moved_to", kCorruptCf}});
  }

  void PutRecord(Txn& txn, rocksdb::ColumnFamilyHandle* cf, const std::string& key,
                 const google::protobuf::MessageLite& record) {
    txn.Put(cf, key, record.SerializeAsString());
  }

  // Writes the message back, or deletes it (record and body) when no job of
  // it remains. The idempotency key stays, so a client retrying after the
  // message is long gone still gets "duplicate".
  void SaveOrRetireMessage(Txn& txn, const MessageRecord& msg) {
    if (msg.open_jobs() > 0) {
      PutRecord(txn, messages_, msg.message_id(), msg);
      return;
    }
    txn.Delete(messages_, msg.message_id());
    txn.Delete(bodies_, msg.message_id());
    Adjust(txn, counters_.messages, -1);
    txn.OnCommit([id = msg.message_id()] { log::Event(log::Level::kInfo, "message_done", {{"msg", id}}); });
  }

  // Removes a delivery that cannot be worked on (its message or body is
  // gone): the record moves to the corrupt CF for an operator to look at.
  void DropDelivery(Txn& txn, const DeliveryRecord& rec, std::optional<MessageRecord> msg, const char* why) {
    Detach(txn, rec);
    txn.Put(corrupt_, CorruptKey(kDeliveriesCf, rec.delivery_id()), rec.SerializeAsString());
    txn.Delete(deliveries_, rec.delivery_id());
    Adjust(txn, counters_.deliveries, -1);
    Adjust(txn, counters_.recipients_pending, -PendingCount(rec));
    if (msg.has_value()) {
      msg->set_open_jobs(msg->open_jobs() > 0 ? msg->open_jobs() - 1 : 0);
      SaveOrRetireMessage(txn, *msg);
    }
    txn.OnCommit([this, id = rec.delivery_id(), why] {
      corrupt_count_.fetch_add(1, std::memory_order_relaxed);
      Metrics().corrupt_records.Inc();
      log::Event(log::Level::kError, "delivery_dropped", {{"delivery", id}, {"reason", why}, {"moved_to", kCorruptCf}});
    });
  }

  absl::Status ApplyEnqueue(Txn& txn, EnqueueCall& call);
  absl::Status ApplyLease(Txn& txn, LeaseCall& call);
  absl::StatusOr<LeaseStep> LeaseDelivery(Txn& txn, const std::string& id, int64_t key_due, int64_t now,
                                          int64_t lease_ms, uint64_t budget, uint64_t* bytes, LeaseResponse& resp,
                                          const std::string& worker);
  absl::StatusOr<LeaseStep> LeaseBounce(Txn& txn, const std::string& id, int64_t key_due, int64_t now,
                                        int64_t lease_ms, uint64_t budget, uint64_t* bytes, LeaseResponse& resp);
  absl::StatusOr<ReportStatus> ApplyOneReport(Txn& txn, const tern::v1::DeliveryReport& report, int64_t now);
  // Applies `reports` in order at one `now`, a status each into `statuses`:
  // a Report call, or the reports a Progress call carries.
  absl::Status ApplyReports(Txn& txn, const google::protobuf::RepeatedPtrField<tern::v1::DeliveryReport>& reports,
                            google::protobuf::RepeatedField<int>* statuses);
  // After committed reports (a Report call, or reports carried by Progress).
  void AfterReports();
  absl::StatusOr<ReportStatus> ApplyOneAck(Txn& txn, const tern::v1::BounceAck& ack);
  void CreateBounce(Txn& txn, MessageRecord& msg, BounceKind kind, std::vector<BouncedRecipient> rcpts,
                    const std::string& delivery_id, int64_t now, int64_t will_retry_until = 0);
  absl::StatusOr<uint64_t> ApplyFlushChunk(Txn& txn, bool* more);
  void FillStats(Txn& txn, StatsResponse& out);
  void FillDestinations(tern::v1::DestinationsResponse& out);

  void SubmitLease(std::shared_ptr<LeaseCall> call);
  // Checks an enqueue and builds its operation; a refusal is answered
  // through `done` at once and yields nothing.
  // `free_bytes`: the disk's free space as last seen (nullopt: no check); an
  // accepted body is taken off it, for the next item of the same batch.
  // `queue_report`: the queue's own TLS report (queue_tls_reports.cc), the
  // only enqueue whose recipients may carry a post_url (an https: rua,
  // routed by its origin); every other caller's post_url is refused.
  std::optional<GroupOp> PrepareEnqueue(EnqueueHeader header, std::string body, Callback<EnqueueResult> done,
                                        std::optional<uint64_t>& free_bytes, bool queue_report = false);
  // Free bytes on the data directory's file system; nullopt when
  // min_free_bytes is 0 or the file system cannot say.
  std::optional<uint64_t> FreeDiskBytes() const;
  // Submits an operation of the RPC hot path so that the calling (RPC)
  // thread commits it itself when the writer role is free (see
  // GroupCommitter). Only for calls made without any lock held.
  void Lead(GroupOp op) { committer_->Submit(std::move(op), /*lead=*/true); }
  void SubmitFlush(std::shared_ptr<Callback<uint64_t>> done, uint64_t moved_so_far);
  void ExpireLeases(JobKind kind, int64_t now);
  void Refill(JobKind kind, int64_t now, Txn* txn);
  void WakeWaiters(JobKind kind);
  void OnTick();
  void PublishGauges();

  // TLS reports (queue_tls_reports.cc): the report thread, started by Open
  // after the committer and stopped before it.
  struct TlsReportJob {
    bool include_today = false;
    Callback<tern::v1::SendTlsReportsResponse> done;
  };
  // The counts of one (day, policy domain) as committed: keys and raw values
  // in key order, and the counts that parse.
  struct TlsCountGroup {
    std::vector<std::pair<std::string, std::string>> records;
    std::vector<bool> corrupt;
    std::vector<tern::v1::TlsRptCount> counts;
  };
  void StartTlsReporter();
  void StopTlsReporter();
  // Asks the report thread for an automatic run (from the tick).
  void WakeTlsReporter();
  bool TlsReporterHasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(tlsrpt_mu_) {
    return tlsrpt_stop_ || tlsrpt_auto_ || !tlsrpt_jobs_.empty();
  }
  void TlsReportLoop();
  // One run: deletes counts past the retention, then (when enabled) queues
  // the reports of the days before `end_day` (see the .cc). `manual`: an
  // admin run, which stops at the first error and returns it.
  absl::StatusOr<tern::v1::SendTlsReportsResponse> RunTlsReports(bool manual, bool include_today);
  absl::Status PurgeTlsCounts(int64_t before_day);
  absl::StatusOr<std::vector<TlsRptKey>> ListTlsCountGroups(int64_t from_day, int64_t end_day);
  absl::StatusOr<TlsCountGroup> ReadTlsCountGroup(int64_t day, const std::string& domain);
  // Builds and queues the report(s) of one (day, domain) and deletes its
  // counts; an empty TlsRptSent (no domain) if there were none left.
  absl::StatusOr<tern::v1::TlsRptSent> ReportTlsCountGroup(int64_t day, const std::string& domain, int64_t now);
  // Submits `op` to the committer and waits for its completion (report
  // thread only: never from the writer role).
  absl::Status SubmitAndWait(GroupOp op);
  absl::Status Recover();
  // Reads this database's instance token, or makes and stores one (queue_core.cc).
  absl::Status LoadInstanceId();
  int64_t DelayForUnreported(uint32_t attempts) const;

  CoreOptions opt_;
  const Clock* clock_;

  // The file system under the DB (WAL prefill); declared before db_ so it
  // outlives it.
  std::unique_ptr<rocksdb::Env> env_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* messages_ = nullptr;
  rocksdb::ColumnFamilyHandle* bodies_ = nullptr;
  rocksdb::ColumnFamilyHandle* deliveries_ = nullptr;
  rocksdb::ColumnFamilyHandle* schedule_ = nullptr;
  rocksdb::ColumnFamilyHandle* bounces_ = nullptr;
  rocksdb::ColumnFamilyHandle* meta_ = nullptr;
  rocksdb::ColumnFamilyHandle* corrupt_ = nullptr;
  rocksdb::ColumnFamilyHandle* events_ = nullptr;

  // Set by Open() before any thread starts; read-only afterwards.
  std::string instance_id_;

  // Owned by the writer role (and by Open before the committer starts).
  // disabled_ is the effective pause: the admin override if set, else the file's value.
  bool disabled_;
  bool file_disabled_;
  std::optional<bool> pause_override_;
  uint64_t event_seq_ = 0;         // last event seq handed out (maybe uncommitted)
  uint64_t first_event_seq_ = 1;   // oldest event kept (pruning starts here)
  int64_t last_prune_ms_ = 0;
  // Where the idempotency key sweep goes on (a meta key; empty: the start).
  std::string idempotency_sweep_cursor_;
  // Deliveries whose current lease reported DATA sent, so an expiry must
  // check for ambiguity (a hint; the record is the truth).
  absl::flat_hash_set<std::string> data_sent_;
  std::vector<std::string> recovered_data_sent_;  // Open() only
  bool shutting_down_ = false;
  KindState kinds_[kKinds];
  DueIndex due_;
  // Shaping by rate: each limited domain's bucket; the domains with
  // deliveries parked for their rate; and the ids a rate released into the
  // delivery window that no Lease has taken yet (per domain, so a release
  // does not hand out the same starts twice).
  RateBuckets rate_;
  absl::flat_hash_set<std::string> rate_waiting_;
  absl::flat_hash_map<std::string, std::string> rate_released_;
  absl::flat_hash_map<std::string, uint32_t> rate_in_window_;
  // Congestion backoffs by domain (DestinationLimits::backoff): the lowered
  // concurrency, until when, and the reply that started it.
  struct Backoff {
    uint32_t cap;
    int64_t until_ms;
    std::string reply;
  };
  absl::flat_hash_map<std::string, Backoff> backoff_;
  // Domains a report tied to an MX site (NoteMxSite), until when. Changed
  // only by the writer role, under site_mu_; read by the writer without it
  // and by other threads with it. Kept on disk too (MxSiteRecord).
  struct LearnedSite {
    // Points into opt_.shaping; a Reconfigure points it into the new one
    // (by site name) or drops the entry.
    const MxSite* site = nullptr;
    int64_t until_ms = 0;
    int64_t stored_until_ms = 0;  // the expiry its MxSiteRecord says
  };
  static constexpr int64_t kSiteMemoryMs = 24 * 3600 * 1000;
  static constexpr int64_t kSiteRewriteMs = 3600 * 1000;
  static constexpr size_t kMaxLearnedSites = 1'000'000;
  mutable absl::Mutex site_mu_;
  absl::flat_hash_map<std::string, LearnedSite> learned_sites_;
  Counters counters_;

  // Read from other threads.
  std::atomic<bool> paused_view_{false};
  // The reloadable options that threads other than the writer role read
  // (PrepareEnqueue on the calling RPC's thread, admin reads, the TLS report
  // thread), as Reconfigure last set them; the writer role reads the other
  // reloadable options from opt_, which only it changes.
  std::atomic<bool> always_split_;
  std::atomic<int64_t> max_queue_age_ms_;
  std::atomic<int64_t> delete_undo_window_ms_;
  std::atomic<int64_t> idempotency_retention_ms_;
  std::atomic<uint64_t> min_free_bytes_;
  int64_t max_queue_age_ms() const { return max_queue_age_ms_.load(std::memory_order_relaxed); }
  int64_t delete_undo_window_ms() const { return delete_undo_window_ms_.load(std::memory_order_relaxed); }
  int64_t idempotency_retention_ms() const { return idempotency_retention_ms_.load(std::memory_order_relaxed); }
  uint64_t min_free_bytes() const { return min_free_bytes_.load(std::memory_order_relaxed); }
  // Held by the writer role while Reconfigure replaces opt_.retry, and by
  // other threads reading it (Show); the writer reads it without.
  mutable absl::Mutex retry_mu_;
  // Domains with deliveries waiting for a shaping limit, and which, for
  // `ternctl explain`; written only on the throttling path.
  mutable absl::Mutex throttled_mu_;
  absl::flat_hash_map<std::string, std::string> throttled_view_ ABSL_GUARDED_BY(throttled_mu_);
  std::atomic<int64_t> corrupt_count_{0};
  std::atomic<uint64_t> committed_event_seq_{0};
  absl::Mutex event_mu_;
  absl::CondVar event_cv_;

  // Writer role: when the tick last woke the report thread (0: never).
  int64_t tlsrpt_wake_ms_ = 0;
  // The report thread's inbox.
  mutable absl::Mutex tlsrpt_mu_;
  bool tlsrpt_stop_ ABSL_GUARDED_BY(tlsrpt_mu_) = false;
  bool tlsrpt_auto_ ABSL_GUARDED_BY(tlsrpt_mu_) = false;
  std::deque<TlsReportJob> tlsrpt_jobs_ ABSL_GUARDED_BY(tlsrpt_mu_);
  std::atomic<bool> tlsrpt_stopping_{false};
  // The clock when the last finished run began (0: none yet).
  std::atomic<int64_t> tlsrpt_last_run_ms_{0};

  // Last: its thread uses everything above.
  std::unique_ptr<GroupCommitter> committer_;
  // Uses the committer; joined (StopTlsReporter) before the committer stops.
  std::thread tlsrpt_thread_;
};

}  // namespace tern::queue
