// QueueCore::Impl, third part: SMTP TLS Reporting (RFC 8460). The counts of
// TLS sessions deliverers record (Queue.RecordTlsResults), the daily report
// e-mails made from them, and the admin calls behind `ternctl tlsrpt`.
//
// Design. Counts arrive every few seconds from every deliverer. Each
// RecordTlsResults call is one operation of the group committer that adds
// its counts to the stored records, read-modify-write through the batch (so
// calls in one group add up), in one synced write. It touches none of the
// scheduling state and reads one key per distinct count.
//
// Reports are made on a thread of their own (TlsReportLoop), never on the
// writer role: reading a day's counts, rendering JSON, gzip and MIME take
// time that Enqueue, Lease and Report must not wait for. The tick only wakes
// the thread, at most once a minute. The thread reads the counts of one
// (day, policy domain) from committed state, builds the report, one e-mail
// per mailto: rua and one POST per https: rua, and then submits ONE
// operation that
//   1. fails with ALREADY_EXISTS if the report's number is taken (below);
//   2. applies the e-mails' enqueues (PrepareEnqueue + ApplyEnqueue: the
//      ordinary enqueue path, each with an idempotency key);
//   3. takes the reported counts off the stored ones, through the batch:
//      a count that reached zero is deleted, one that grew meanwhile (a
//      RecordTlsResults for that day went in after the read) keeps the
//      difference, for a later report.
// A POST is queued as a message too: its one recipient carries the https:
// URI as post_url (which only this path may set), its body is the gzipped
// JSON itself, and deliverers POST it (RFC 8460 §5.3) with the queue's
// ordinary retry schedule for failures (§5.4 asks for up to 24 hours, with
// backoff). NOTIFY=NEVER: a report that could not be posted is not worth a
// DSN to the report sender's mailbox; it is logged like any final failure.
// So the reports are stored exactly when their counts are gone: a crash at
// any instant neither reports a session twice nor loses it, and the
// operation never has to be redone because counts keep arriving. Two steps
// (enqueue, then delete) with idempotency keys alone would not do: counts
// that came between the read and the delete would be deleted unreported,
// and a second report of the same day (late counts, or `ternctl tlsrpt send
// --include-today` earlier that day) would be swallowed by the first one's
// keys. Instead the n-th report of a (day, domain) has its own report-id,
// "<YYYY-MM-DD>_<domain>_<instance>[_<n>]@<submitter>", and its own keys: a
// marker key per report-id and an Enqueue key per rua, derived from the
// report-id. An operation that finds the marker or a key of its n taken
// fails, and the thread tries n+1; an Enqueue key that deduplicated silently
// would delete counts whose report was never queued.
//
// <instance> is this database's instance token (queue_core.cc
// LoadInstanceId: random, made at its first open, stored in it). Past one
// machine the queue is sharded (ARCHITECTURE.md §8) and every shard counts
// and reports its own sessions, so two shards report the same (day, domain)
// with the same submitter; receivers deduplicate by report-id (RFC 8460
// §4.3: it must be unique), and without the token they would keep one
// shard's report and drop the other's counts. The token is in the local
// part, so the report e-mails' Message-IDs (report-id's local part, ".<i>")
// differ between shards too. The markers and keys above live in the
// shard's own database, so n counts per shard.
//
// Automatic runs report a day kTlsRptGraceMs after it ended, so counts of
// its last seconds, which deliverers send a few seconds later, are in it.
// Counts of days before today - kTlsRptRetentionDays are deleted whatever
// happens (also with [tlsrpt] enabled=false: a deliverer may count with a
// different config), so nothing grows without bound.
//
// Standards: RFC 8460 §3 (rua: mailto: and https:), §4 (report), §5.3
// (e-mail and HTTPS POST), §5.4 (retries).
#include <future>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "lib/address/idna.h"
#include "lib/address/mailbox.h"
#include "lib/tlsrpt/tlsrpt.h"
#include "services/queue/queue_core_internal.h"

namespace tern::queue {
namespace {

using tern::v1::TlsRptCount;

// How long after a day's end an automatic run reports it.
constexpr int64_t kTlsRptGraceMs = 10 * 60'000;
// Limits on what RecordTlsResults accepts. A deliverer sends the distinct
// counts of a few seconds; a policy_string may be a TLSA record with a
// whole certificate in hex.
constexpr int kMaxCountsPerCall = 10'000;
constexpr size_t kMaxDomainBytes = 253;  // RFC 1035 §2.3.4, as text
constexpr size_t kMaxResultTypeBytes = 64;
constexpr size_t kMaxStringBytes = 16 * 1024;
// The key holds the count's identity: RocksDB keys should stay small.
constexpr size_t kMaxKeyBytes = 64 * 1024;
constexpr int kMaxListEntries = 100;
constexpr int kMaxRua = 32;
constexpr size_t kMaxRuaBytes = 2048;
// 2^40 sessions of one kind a day is nonsense; it also keeps every sum of
// counts far from overflowing.
constexpr uint64_t kMaxCount = 1ull << 40;
// Most count records one purge operation deletes.
constexpr size_t kPurgeChunk = 10'000;
// Tries per (day, domain) and run: a report number found taken, or counts
// found lower than read (neither should happen), costs one.
constexpr int kReportAttempts = 5;

struct TlsRptMetrics {
  metrics::Counter& counts_recorded;
  metrics::Counter& reports_queued;
  metrics::Counter& rua_skipped;
};

TlsRptMetrics& TlsMetrics() {
  static TlsRptMetrics* m = [] {
    auto& r = metrics::Registry::Global();
    return new TlsRptMetrics{
        r.GetCounter("tern_queue_tlsrpt_counts_recorded_total",
                     "TLS session counts (RecordTlsResults items) added to the stored ones"),
        r.GetCounter("tern_queue_tlsrpt_reports_queued_total", "TLS reports queued, one per mailto: or https: rua"),
        r.GetCounter("tern_queue_tlsrpt_rua_skipped_total",
                     "rua URIs a TLS report was not sent to (not a usable address or https: URI)"),
    };
  }();
  return *m;
}

std::string DayText(int64_t day) {
  return absl::FormatTime("%Y-%m-%d", absl::FromUnixSeconds(day * 86'400), absl::UTCTimeZone());
}

// For error messages: at most 64 bytes of untrusted text, escaped.
std::string Shown(absl::string_view s) { return absl::CHexEscape(s.substr(0, 64)); }

template <typename Repeated>
absl::Status CheckList(const Repeated& list, const char* field) {
  if (list.size() > kMaxListEntries) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": more than ", kMaxListEntries, " entries"));
  }
  for (const std::string& s : list) {
    if (s.size() > kMaxStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": an entry over ", kMaxStringBytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

// Checks one count (its domain already lower-cased); `today` is the UTC day now.
absl::Status CheckCount(const TlsRptCount& c, int64_t today) {
  const std::string& domain = c.policy_domain();
  if (domain.empty()) {
    return absl::InvalidArgumentError("a TLS report count needs a policy_domain");
  }
  auto bad = [&domain](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("TLS report count for '", Shown(domain), "': ", why));
  };
  if (domain.size() > kMaxDomainBytes || !address::IsValidDomain(domain, /*smtputf8=*/false)) {
    return bad("policy_domain is not a domain name in A-labels");
  }
  if (c.policy_type() != tlsrpt::kPolicySts && c.policy_type() != tlsrpt::kPolicyTlsa &&
      c.policy_type() != tlsrpt::kPolicyNone) {
    return bad(absl::StrCat("unknown policy_type '", Shown(c.policy_type()), "' (sts, tlsa or no-policy-found)"));
  }
  if (c.count() == 0 || c.count() > kMaxCount) {
    return bad(absl::StrCat("count ", c.count(), " is not in [1, 2^40]"));
  }
  if (c.day() < 0 || c.day() > today + 1) {
    return bad(absl::StrCat("day ", c.day(), " is not a UTC day up to today (", today, ")"));
  }
  const std::string& type = c.result_type();
  if (type.size() > kMaxResultTypeBytes || !std::all_of(type.begin(), type.end(), [](char ch) {
        return absl::ascii_islower(static_cast<unsigned char>(ch)) || ch == '-';
      })) {
    return bad(absl::StrCat("result_type '", Shown(type), "' is not an RFC 8460 result type"));
  }
  for (const std::string* s : {&c.receiving_mx_hostname(), &c.receiving_ip(), &c.failure_reason_code()}) {
    if (s->size() > kMaxStringBytes) {
      return bad(absl::StrCat("a string over ", kMaxStringBytes, " bytes"));
    }
  }
  if (absl::Status s = CheckList(c.policy_string(), "policy_string"); !s.ok()) {
    return bad(s.message());
  }
  if (absl::Status s = CheckList(c.mx_host(), "mx_host"); !s.ok()) {
    return bad(s.message());
  }
  if (c.rua_size() > kMaxRua) {
    return bad(absl::StrCat("more than ", kMaxRua, " rua"));
  }
  for (const std::string& rua : c.rua()) {
    if (rua.empty() || rua.size() > kMaxRuaBytes) {
      return bad(absl::StrCat("a rua that is empty or over ", kMaxRuaBytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

tlsrpt::SessionCount ToSessionCount(const TlsRptCount& c) {
  tlsrpt::SessionCount s;
  s.policy_type = c.policy_type();
  s.policy_string.assign(c.policy_string().begin(), c.policy_string().end());
  s.mx_host.assign(c.mx_host().begin(), c.mx_host().end());
  s.result_type = c.result_type();
  s.receiving_mx_hostname = c.receiving_mx_hostname();
  s.receiving_ip = c.receiving_ip();
  s.failure_reason_code = c.failure_reason_code();
  s.count = c.count();
  return s;
}

// The rua of a (day, domain): every URI any of its counts carries, first
// seen first. A domain that changed its record during the day gets the
// report at each address it published that day.
std::vector<std::string> RuaUnion(const std::vector<TlsRptCount>& counts) {
  std::vector<std::string> out;
  for (const TlsRptCount& c : counts) {
    for (const std::string& rua : c.rua()) {
      if (std::find(out.begin(), out.end(), rua) == out.end()) {
        out.push_back(rua);
      }
    }
  }
  return out;
}

// Where a rua sends the report: the address (for https: the URI itself),
// or why not (the text of TlsRptSent.skipped_rua, after the URI).
struct RuaTarget {
  std::string address;  // empty: skipped
  std::string why_not;
  bool post = false;    // an https: URI: POSTed by a deliverer
};

RuaTarget TargetOf(absl::string_view rua) {
  if (absl::StartsWithIgnoreCase(rua, "https:")) {
    absl::StatusOr<tlsrpt::HttpsRua> https = tlsrpt::ParseHttpsRua(rua);
    if (!https.ok()) {
      return {"", std::string(https.status().message())};
    }
    return {std::string(rua), "", true};
  }
  if (!absl::StartsWithIgnoreCase(rua, "mailto:")) {
    return {"", "not a mailto: or https: URI"};
  }
  // RFC 6068: "mailto:" addr-spec [ "?" hfields ]; the record parser already
  // percent-decoded the address.
  absl::string_view addr = rua.substr(7);
  addr = addr.substr(0, addr.find('?'));
  absl::StatusOr<address::Mailbox> mailbox = address::ParseMailbox(addr, /*smtputf8=*/false);
  if (!mailbox.ok() || mailbox->is_address_literal() || !address::DomainToAscii(mailbox->domain).ok()) {
    return {"", absl::StrCat("not a usable address",
                             mailbox.ok() ? "" : absl::StrCat(" (", mailbox.status().message(), ")"))};
  }
  return {mailbox->ToString(), ""};
}

// "<YYYY-MM-DD>_<domain>_<instance>" for this queue's first report of a
// (day, domain), with "_<n>" for the n-th. A dot-atom (RFC 5322 §3.4.1):
// the domain is an ASCII domain name and the instance token hex.
std::string ReportLocalPart(int64_t day, absl::string_view domain, absl::string_view instance, int n) {
  return n <= 1 ? absl::StrCat(DayText(day), "_", domain, "_", instance)
                : absl::StrCat(DayText(day), "_", domain, "_", instance, "_", n);
}

// Keys in the idempotency range (pruned after idempotency_retention): the
// report's marker, and each e-mail's Enqueue key.
std::string ReportMarker(absl::string_view report_id) { return absl::StrCat("tlsrpt-report:", report_id); }
std::string ReportMailKey(absl::string_view report_id, absl::string_view rua) {
  return absl::StrCat("tlsrpt:", report_id, ":", rua);
}

}  // namespace

// ---------------------------------------------------------------------------
// RecordTlsResults and ListTlsReports.

void QueueCore::Impl::RecordTlsResults(tern::v1::RecordTlsResultsRequest request,
                                       Callback<tern::v1::RecordTlsResultsResponse> done) {
  if (request.counts_size() > kMaxCountsPerCall) {
    done(absl::InvalidArgumentError(
        absl::StrCat("RecordTlsResults: ", request.counts_size(), " counts; at most ", kMaxCountsPerCall, " a call")));
    return;
  }
  const int64_t today = tlsrpt::UtcDay(clock_->NowUnixMs());
  // Equal counts of the call are merged here, on the caller's thread, so the
  // writer reads and writes each key once.
  struct Merged {
    std::string key;
    TlsRptCount count;
  };
  auto merged = std::make_shared<std::vector<Merged>>();
  absl::flat_hash_map<std::string, size_t> index;
  for (TlsRptCount& c : *request.mutable_counts()) {
    absl::AsciiStrToLower(c.mutable_policy_domain());
    if (absl::Status s = CheckCount(c, today); !s.ok()) {
      done(s);
      return;
    }
    if (c.day() < today - kTlsRptRetentionDays) {
      continue;  // would be purged at once: a deliverer that was cut off for a week
    }
    std::string key = TlsRptCountKey(c);
    if (key.size() > kMaxKeyBytes) {
      done(absl::InvalidArgumentError(absl::StrCat("TLS report count for '", Shown(c.policy_domain()),
                                                   "': its policy and failure strings are over ", kMaxKeyBytes,
                                                   " bytes together")));
      return;
    }
    auto [it, inserted] = index.try_emplace(key, merged->size());
    if (inserted) {
      merged->push_back(Merged{std::move(key), std::move(c)});
      continue;
    }
    TlsRptCount& into = (*merged)[it->second].count;
    into.set_count(tlsrpt::AddCounts(into.count(), c.count()));
    if (c.rua_size() > 0) {
      *into.mutable_rua() = std::move(*c.mutable_rua());
    }
  }
  if (merged->empty()) {
    done(tern::v1::RecordTlsResultsResponse());
    return;
  }
  committer_->Submit(GroupOp{
      [this, merged](Txn& txn) -> absl::Status {
        for (const Merged& m : *merged) {
          TERN_ASSIGN_OR_RETURN(std::optional<TlsRptCount> stored, Read<TlsRptCount>(txn, meta_, kMetaCf, m.key));
          TlsRptCount out = m.count;
          if (stored.has_value()) {
            out.set_count(tlsrpt::AddCounts(stored->count(), out.count()));
            if (out.rua().empty()) {
              *out.mutable_rua() = std::move(*stored->mutable_rua());
            }
          }
          PutRecord(txn, meta_, m.key, out);
        }
        txn.OnCommit([n = merged->size()] { TlsMetrics().counts_recorded.Inc(n); });
        return absl::OkStatus();
      },
      [done = std::move(done)](const absl::Status& s) mutable {
        if (s.ok()) {
          done(tern::v1::RecordTlsResultsResponse());
        } else {
          done(s);
        }
      },
  });
}

absl::StatusOr<tern::v1::ListTlsReportsResponse> QueueCore::Impl::ListTlsReports() {
  tern::v1::ListTlsReportsResponse out;
  const std::string end = PrefixEnd(TlsRptPrefix());
  const rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, meta_));
  std::optional<TlsRptKey> current;
  tern::v1::TlsRptPending* pending = nullptr;
  for (it->Seek(TlsRptPrefix()); it->Valid(); it->Next()) {
    std::optional<TlsRptKey> key = DecodeTlsRptKey(absl::string_view(it->key().data(), it->key().size()));
    TlsRptCount c;
    if (!key.has_value() || !c.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      continue;  // a report run quarantines it
    }
    if (!current.has_value() || *key != *current) {
      current = std::move(key);
      pending = out.add_pending();
      pending->set_day(current->day);
      pending->set_policy_domain(current->policy_domain);
    }
    if (c.result_type().empty()) {
      pending->set_successful(tlsrpt::AddCounts(pending->successful(), c.count()));
    } else {
      pending->set_failed(tlsrpt::AddCounts(pending->failed(), c.count()));
    }
    for (const std::string& rua : c.rua()) {
      if (std::find(pending->rua().begin(), pending->rua().end(), rua) == pending->rua().end()) {
        pending->add_rua(rua);
      }
    }
  }
  if (!it->status().ok()) {
    return StorageError(it->status(), "read TLS report counts");
  }
  return out;
}

// ---------------------------------------------------------------------------
// The report thread.

void QueueCore::Impl::StartTlsReporter() {
  (void)TlsMetrics();  // exported as 0 from the start, not from the first report
  tlsrpt_thread_ = std::thread([this] { TlsReportLoop(); });
}

void QueueCore::Impl::StopTlsReporter() {
  tlsrpt_stopping_.store(true, std::memory_order_relaxed);
  {
    absl::MutexLock lock(&tlsrpt_mu_);
    tlsrpt_stop_ = true;
  }
  if (tlsrpt_thread_.joinable()) {
    tlsrpt_thread_.join();
  }
}

void QueueCore::Impl::WakeTlsReporter() {
  absl::MutexLock lock(&tlsrpt_mu_);
  tlsrpt_auto_ = true;
}

void QueueCore::Impl::SendTlsReports(tern::v1::SendTlsReportsRequest request,
                                     Callback<tern::v1::SendTlsReportsResponse> done) {
  if (!opt_.tlsrpt.enabled) {
    done(absl::FailedPreconditionError(
        "TLS reports are off (tern.ini [tlsrpt] enabled=false): nothing is sent, and counts older than 7 days are "
        "deleted"));
    return;
  }
  {
    absl::MutexLock lock(&tlsrpt_mu_);
    if (!tlsrpt_stop_) {
      tlsrpt_jobs_.push_back(TlsReportJob{request.include_today(), std::move(done)});
      return;
    }
  }
  done(absl::UnavailableError("the queue is shutting down"));
}

void QueueCore::Impl::TlsReportLoop() {
  for (;;) {
    std::optional<TlsReportJob> job;
    {
      absl::MutexLock lock(&tlsrpt_mu_);
      tlsrpt_mu_.Await(absl::Condition(this, &Impl::TlsReporterHasWork));
      if (tlsrpt_stop_) {
        break;
      }
      if (!tlsrpt_jobs_.empty()) {
        job = std::move(tlsrpt_jobs_.front());
        tlsrpt_jobs_.pop_front();
      } else {
        tlsrpt_auto_ = false;
      }
    }
    const int64_t began = clock_->NowUnixMs();
    if (job.has_value()) {
      job->done(RunTlsReports(/*manual=*/true, job->include_today));
    } else if (absl::StatusOr<tern::v1::SendTlsReportsResponse> r = RunTlsReports(false, false); !r.ok()) {
      log::Event(log::Level::kError, "tlsrpt_run_failed", {{"error", r.status().message()}});
    }
    tlsrpt_last_run_ms_.store(began, std::memory_order_release);
  }
  // Admin calls still waiting get their answer.
  std::deque<TlsReportJob> left;
  {
    absl::MutexLock lock(&tlsrpt_mu_);
    left.swap(tlsrpt_jobs_);
  }
  for (TlsReportJob& job : left) {
    job.done(absl::UnavailableError("the queue is shutting down"));
  }
}

absl::Status QueueCore::Impl::SubmitAndWait(GroupOp op) {
  auto promise = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> future = promise->get_future();
  op.done = [promise, done = std::move(op.done)](const absl::Status& s) mutable {
    if (done) {
      done(s);
    }
    promise->set_value(s);
  };
  committer_->Submit(std::move(op));
  return future.get();
}

absl::StatusOr<tern::v1::SendTlsReportsResponse> QueueCore::Impl::RunTlsReports(bool manual, bool include_today) {
  tern::v1::SendTlsReportsResponse out;
  const int64_t now = clock_->NowUnixMs();
  const int64_t today = tlsrpt::UtcDay(now);
  const int64_t keep_from = today - kTlsRptRetentionDays;
  TERN_RETURN_IF_ERROR(PurgeTlsCounts(keep_from));
  if (!opt_.tlsrpt.enabled) {
    return out;
  }
  // The days to report: before end_day.
  const int64_t end_day = include_today ? today + 1 : manual ? today : tlsrpt::UtcDay(now - kTlsRptGraceMs);
  TERN_ASSIGN_OR_RETURN(std::vector<TlsRptKey> groups, ListTlsCountGroups(keep_from, end_day));
  for (const TlsRptKey& group : groups) {
    if (tlsrpt_stopping_.load(std::memory_order_relaxed)) {
      return absl::UnavailableError("the queue is shutting down");
    }
    absl::StatusOr<tern::v1::TlsRptSent> sent = ReportTlsCountGroup(group.day, group.policy_domain, now);
    if (!sent.ok()) {
      log::Event(log::Level::kError, "tlsrpt_report_failed",
                 {{"day", DayText(group.day)}, {"domain", group.policy_domain}, {"error", sent.status().message()}});
      if (manual) {
        return absl::Status(sent.status().code(),
                            absl::StrCat("TLS report of ", group.policy_domain, " for ", DayText(group.day), ": ",
                                         sent.status().message(), " (", out.sent_size(), " queued before it)"));
      }
      continue;  // the next run tries again; the others go out now
    }
    if (!sent->policy_domain().empty()) {
      *out.add_sent() = *std::move(sent);
    }
  }
  return out;
}

absl::Status QueueCore::Impl::PurgeTlsCounts(int64_t before_day) {
  if (before_day <= 0) {
    return absl::OkStatus();
  }
  const std::string end = TlsRptDayPrefix(before_day);
  for (;;) {
    std::vector<std::string> keys;
    {
      const rocksdb::Slice upper(end);
      rocksdb::ReadOptions ro;
      ro.iterate_upper_bound = &upper;
      std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, meta_));
      for (it->Seek(TlsRptPrefix()); it->Valid() && keys.size() < kPurgeChunk; it->Next()) {
        keys.push_back(it->key().ToString());
      }
      if (!it->status().ok()) {
        return StorageError(it->status(), "read old TLS report counts");
      }
    }
    if (keys.empty()) {
      return absl::OkStatus();
    }
    const size_t n = keys.size();
    const std::optional<TlsRptKey> oldest = DecodeTlsRptKey(keys.front());
    // Blind deletes: RecordTlsResults stores nothing this old.
    TERN_RETURN_IF_ERROR(SubmitAndWait(GroupOp{
        [this, keys = std::move(keys)](Txn& txn) {
          for (const std::string& key : keys) {
            txn.Delete(meta_, key);
          }
          return absl::OkStatus();
        },
        nullptr,
    }));
    log::Event(log::Level::kNotice, "tlsrpt_counts_purged",
               {{"records", absl::StrCat(n)},
                {"oldest_day", oldest.has_value() ? DayText(oldest->day) : "?"},
                {"reason", absl::StrCat("older than ", kTlsRptRetentionDays, " days, not reported")}});
    if (n < kPurgeChunk) {
      return absl::OkStatus();
    }
  }
}

absl::StatusOr<std::vector<TlsRptKey>> QueueCore::Impl::ListTlsCountGroups(int64_t from_day, int64_t end_day) {
  std::vector<TlsRptKey> out;
  if (end_day <= from_day) {
    return out;
  }
  const std::string end = TlsRptDayPrefix(end_day);
  const rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, meta_));
  it->Seek(TlsRptDayPrefix(from_day));
  while (it->Valid()) {
    std::optional<TlsRptKey> key = DecodeTlsRptKey(absl::string_view(it->key().data(), it->key().size()));
    if (!key.has_value()) {
      it->Next();
      continue;
    }
    // One entry per (day, domain): jump over the rest of its keys.
    it->Seek(PrefixEnd(TlsRptDomainPrefix(key->day, key->policy_domain)));
    out.push_back(*std::move(key));
  }
  if (!it->status().ok()) {
    return StorageError(it->status(), "list TLS report counts");
  }
  return out;
}

absl::StatusOr<QueueCore::Impl::TlsCountGroup> QueueCore::Impl::ReadTlsCountGroup(int64_t day,
                                                                                  const std::string& domain) {
  TlsCountGroup group;
  const std::string prefix = TlsRptDomainPrefix(day, domain);
  const std::string end = PrefixEnd(prefix);
  const rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, meta_));
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    group.records.emplace_back(it->key().ToString(), it->value().ToString());
    TlsRptCount c;
    const bool parsed = c.ParseFromString(group.records.back().second);
    group.corrupt.push_back(!parsed);
    if (parsed) {
      group.counts.push_back(std::move(c));
    }
  }
  if (!it->status().ok()) {
    return StorageError(it->status(), "read TLS report counts");
  }
  return group;
}

absl::StatusOr<tern::v1::TlsRptSent> QueueCore::Impl::ReportTlsCountGroup(int64_t day, const std::string& domain,
                                                                          int64_t now) {
  const TlsRptOptions& cfg = opt_.tlsrpt;
  int n = 1;
  for (int attempt = 0; attempt < kReportAttempts; ++attempt) {
    TERN_ASSIGN_OR_RETURN(TlsCountGroup group, ReadTlsCountGroup(day, domain));
    tern::v1::TlsRptSent sent;
    if (group.records.empty()) {
      return sent;  // purged meanwhile, or a corrupt record quarantined
    }
    sent.set_day(day);
    sent.set_policy_domain(domain);

    // Where the report goes.
    std::vector<std::pair<std::string, RuaTarget>> targets;  // rua, where
    for (const std::string& rua : RuaUnion(group.counts)) {
      RuaTarget t = TargetOf(rua);
      if (t.address.empty()) {
        sent.add_skipped_rua(absl::StrCat(rua, ": ", t.why_not));
      } else {
        targets.emplace_back(rua, std::move(t));
      }
    }

    // The report number: the first whose marker is free in committed state
    // (the operation checks again).
    for (;; ++n) {
      std::string raw;
      rocksdb::Status s = db_->Get(
          rocksdb::ReadOptions(), meta_,
          IdempotencyKey(ReportMarker(absl::StrCat(ReportLocalPart(day, domain, instance_id_, n), "@", cfg.submitter))),
          &raw);
      IdempotencyRecord rec;
      if (s.IsNotFound() || (s.ok() && rec.ParseFromString(raw) && IdempotencyExpired(rec, now))) {
        break;
      }
      if (!s.ok()) {
        return StorageError(s, "read a TLS report marker");
      }
    }
    const std::string local = ReportLocalPart(day, domain, instance_id_, n);
    const std::string report_id = absl::StrCat(local, "@", cfg.submitter);

    // The e-mails and POSTs, built here, off the writer.
    struct Mail {
      std::string rua;  // cleared when the queue refused the address
      std::string address;
      bool post = false;       // an https: rua: `address` is the URI, `body` the gzipped JSON
      std::string body;
      std::string message_id;  // set when queued
      absl::Status refused;    // set when PrepareEnqueue refused it at once
    };
    auto mails = std::make_shared<std::vector<Mail>>();
    if (!targets.empty()) {
      std::vector<tlsrpt::SessionCount> sessions;
      sessions.reserve(group.counts.size());
      for (const TlsRptCount& c : group.counts) {
        sessions.push_back(ToSessionCount(c));
      }
      tlsrpt::Report report;
      report.organization_name = cfg.organization;
      report.start = absl::FromUnixSeconds(day * 86'400);
      report.end = absl::FromUnixSeconds((day + 1) * 86'400);
      report.contact_info = cfg.contact;
      report.report_id = report_id;
      report.policies = tlsrpt::Aggregate(domain, sessions);
      // §5.3: the POST's body is the gzipped JSON, made once for every https: rua.
      std::optional<absl::StatusOr<std::string>> gzipped;
      for (size_t i = 0; i < targets.size(); ++i) {
        const RuaTarget& target = targets[i].second;
        if (target.post) {
          if (!gzipped.has_value()) {
            gzipped = tlsrpt::Gzip(tlsrpt::RenderJson(report));
          }
          if (!gzipped->ok()) {
            return gzipped->status();  // zlib failed: the next run tries again
          }
          mails->push_back(Mail{targets[i].first, target.address, true, **gzipped, "", absl::OkStatus()});
          continue;
        }
        tlsrpt::MailOptions mo;
        mo.from = cfg.from;
        mo.to = target.address;
        mo.submitter = cfg.submitter;
        mo.policy_domain = domain;
        mo.message_id = absl::StrCat(local, ".", i + 1, "@", cfg.submitter);
        mo.date = absl::FromUnixMillis(now);
        absl::StatusOr<std::string> body = tlsrpt::ComposeMail(report, mo);
        if (!body.ok()) {
          // Config was checked at start-up, so it is this domain or address,
          // and trying again would fail again: skipped, and said so.
          sent.add_skipped_rua(
              absl::StrCat(targets[i].first, ": the report cannot be composed (", body.status().message(), ")"));
          continue;
        }
        mails->push_back(Mail{targets[i].first, target.address, false, *std::move(body), "", absl::OkStatus()});
      }
    }

    // The enqueues, checked as any other (a refusal: disk full, or an
    // address the queue cannot route, which skips that rua).
    std::vector<GroupOp> enqueues;
    std::optional<uint64_t> free_bytes = FreeDiskBytes();
    for (size_t i = 0; i < mails->size(); ++i) {
      Mail& mail = (*mails)[i];
      tern::v1::EnqueueHeader header;
      header.mutable_envelope()->set_mail_from(cfg.from);
      tern::v1::RecipientSpec* rcpt = header.mutable_envelope()->add_recipients();
      rcpt->set_address(mail.address);
      if (mail.post) {
        rcpt->set_post_url(mail.address);
        rcpt->set_notify(tern::v1::NOTIFY_NEVER);
      }
      header.set_idempotency_key(ReportMailKey(report_id, mail.rua));
      header.set_expected_size(mail.body.size());
      // Called at once when refused, else after the operation's commit
      // (with its error if it failed: the next attempt builds anew).
      std::optional<GroupOp> op = PrepareEnqueue(
          std::move(header), std::move(mail.body),
          [mails, i](absl::StatusOr<EnqueueResult> r) {
            if (r.ok()) {
              (*mails)[i].message_id = r->message_id;
            } else {
              (*mails)[i].refused = r.status();
            }
          },
          free_bytes, /*queue_report=*/true);
      if (op.has_value()) {
        enqueues.push_back(*std::move(op));
      } else if (absl::IsInvalidArgument(mail.refused)) {
        sent.add_skipped_rua(absl::StrCat(mail.rua, ": ", mail.refused.message()));
        mail.rua.clear();
      } else {
        return mail.refused.ok() ? absl::InternalError("enqueue refused without a reason") : mail.refused;
      }
    }
    std::vector<std::string> mail_keys;
    for (const Mail& mail : *mails) {
      if (!mail.rua.empty()) {
        mail_keys.push_back(IdempotencyKey(ReportMailKey(report_id, mail.rua)));
      }
    }
    const bool reporting = !enqueues.empty();

    // The one operation: report number free, enqueue, take the reported
    // counts off the stored ones.
    auto ops = std::make_shared<std::vector<GroupOp>>(std::move(enqueues));
    auto records = std::make_shared<TlsCountGroup>(std::move(group));
    const std::string marker = reporting ? IdempotencyKey(ReportMarker(report_id)) : "";
    absl::Status committed = SubmitAndWait(GroupOp{
        [this, ops, records, marker, mail_keys](Txn& txn) -> absl::Status {
          const int64_t at = clock_->NowUnixMs();
          if (!marker.empty()) {
            std::vector<std::string> taken = mail_keys;
            taken.push_back(marker);
            for (const std::string& key : taken) {
              TERN_ASSIGN_OR_RETURN(std::optional<IdempotencyRecord> seen,
                                    Read<IdempotencyRecord>(txn, meta_, kMetaCf, key));
              if (seen.has_value() && !IdempotencyExpired(*seen, at)) {
                return absl::AlreadyExistsError("TLS report number taken");
              }
            }
            for (GroupOp& op : *ops) {
              TERN_RETURN_IF_ERROR(op.apply(txn));
            }
            IdempotencyRecord rec;
            rec.set_created_unix_ms(at);
            PutRecord(txn, meta_, marker, rec);
          }
          // Counts only grow while a report is made (one report thread; the
          // purge runs on it too), so each stored count is at least the
          // reported one; what came meanwhile stays for a later report.
          size_t parsed = 0;
          for (size_t i = 0; i < records->records.size(); ++i) {
            const auto& [key, raw] = records->records[i];
            if (records->corrupt[i]) {
              std::string now_raw;
              if (txn.Get(meta_, key, &now_raw).ok() && now_raw == raw) {
                Quarantine(txn, meta_, kMetaCf, key, raw);
              }
              continue;
            }
            const uint64_t reported = records->counts[parsed++].count();
            TERN_ASSIGN_OR_RETURN(std::optional<TlsRptCount> stored, Read<TlsRptCount>(txn, meta_, kMetaCf, key));
            if (!stored.has_value() || stored->count() < reported) {
              return absl::AbortedError("TLS report counts went down while the report was made");
            }
            if (stored->count() == reported) {
              txn.Delete(meta_, key);
            } else {
              stored->set_count(stored->count() - reported);
              PutRecord(txn, meta_, key, *stored);
            }
          }
          return absl::OkStatus();
        },
        [ops](const absl::Status& s) {
          for (GroupOp& op : *ops) {
            op.done(s);
          }
        },
    });
    if (absl::IsAborted(committed)) {
      continue;  // read them again
    }
    if (absl::IsAlreadyExists(committed)) {
      ++n;
      continue;
    }
    TERN_RETURN_IF_ERROR(committed);

    const std::string day_text = DayText(day);
    if (reporting) {
      sent.set_report_id(report_id);
    }
    for (const Mail& mail : *mails) {
      if (mail.rua.empty()) {
        continue;
      }
      sent.add_message_ids(mail.message_id);
      TlsMetrics().reports_queued.Inc();
      log::Event(log::Level::kInfo, "tlsrpt_queued",
                 {{"day", day_text},
                  {"domain", domain},
                  {"rua", mail.rua},
                  {"msg", mail.message_id},
                  {"report_id", report_id}});
    }
    for (const std::string& skipped : sent.skipped_rua()) {
      TlsMetrics().rua_skipped.Inc();
      log::Event(log::Level::kNotice, "tlsrpt_rua_skipped", {{"day", day_text}, {"domain", domain}, {"rua", skipped}});
    }
    if (!reporting) {
      log::Event(log::Level::kNotice, "tlsrpt_not_sent",
                 {{"day", day_text}, {"domain", domain}, {"reason", "no usable rua; its counts are deleted"}});
    }
    return sent;
  }
  return absl::AbortedError(
      absl::StrCat("no free report number or stable counts in ", kReportAttempts, " tries; the next run tries again"));
}

}  // namespace tern::queue
