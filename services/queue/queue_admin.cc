// QueueCore::Impl, second half: the event log, DATA-sent progress and
// ambiguous leases, hold/release, max_queue_age and delay warnings, host
// flags, and the admin reads and actions behind tern.v1.Admin. The queue
// operations themselves and recovery are in queue_core.cc.
#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "lib/address/idna.h"
#include "services/queue/queue_core_internal.h"

namespace tern::queue {
namespace {

// Most messages one admin action changes per operation (one group).
constexpr size_t kActionChunk = 200;
// Most expired events one prune operation deletes.
constexpr size_t kPruneChunk = 10000;
// Most idempotency keys one sweep operation looks at: a million keys are all
// checked within ~8 minutes of 5 s ticks, at a few thousand reads a second.
constexpr size_t kIdempotencySweepChunk = 10000;
constexpr uint32_t kDefaultListLimit = 100;
constexpr uint32_t kMaxListLimit = 10000;

std::string FormatTime(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

std::string FormatIn(int64_t ms) {
  return absl::FormatDuration(absl::Trunc(absl::Milliseconds(std::max<int64_t>(ms, 0)), absl::Seconds(1)));
}

// The `done` of a write whose answer carries nothing: an empty Response once
// the group committed, or the error.
template <typename Response>
absl::AnyInvocable<void(const absl::Status&)> EmptyAnswerOnCommit(QueueCore::Callback<Response> done) {
  return [done = std::move(done)](const absl::Status& s) mutable {
    if (s.ok()) {
      done(Response());
    } else {
      done(s);
    }
  };
}

const char* RecipientStateName(RecipientState s) {
  switch (s) {
    case RECIPIENT_STATE_DELIVERED:
      return "delivered";
    case RECIPIENT_STATE_DEFERRED:
      return "deferred";
    case RECIPIENT_STATE_FAILED:
      return "failed";
    default:
      return "pending";
  }
}

// The state an operator sees, from the record alone (committed state).
std::string DeliveryStateName(const DeliveryRecord& rec, int64_t now) {
  if (!rec.lease_token().empty() && rec.lease_deadline_unix_ms() > now) {
    return "leased";
  }
  if (rec.held()) {
    return "held";
  }
  return rec.due_unix_ms() <= now ? "due" : "deferred";
}

// "user@example.com" matches exactly, "@example.com" any address there, "<>"
// the null sender; case-insensitive.
bool AddressMatches(absl::string_view address, absl::string_view pattern) {
  if (pattern == "<>") {
    return address.empty();
  }
  if (!pattern.empty() && pattern[0] == '@') {
    return absl::EndsWithIgnoreCase(address, pattern);
  }
  return absl::EqualsIgnoreCase(address, pattern);
}

bool HasDeliveryFilter(const tern::v1::Selector& sel) {
  return !sel.domain().empty() || !sel.recipient().empty() || !sel.state().empty();
}

bool DeliveryMatches(const DeliveryRecord& rec, const tern::v1::Selector& sel, int64_t now) {
  if (!sel.domain().empty() && !absl::EqualsIgnoreCase(rec.domain(), sel.domain())) {
    return false;
  }
  if (!sel.recipient().empty()) {
    bool any = false;
    for (const auto& r : rec.recipients()) {
      any = any || (IsPending(r) && AddressMatches(r.spec().address(), sel.recipient()));
    }
    if (!any) {
      return false;
    }
  }
  if (sel.state() == "ambiguous") {
    bool any = false;
    for (const auto& r : rec.recipients()) {
      any = any || (IsPending(r) && r.ambiguous_count() > 0);
    }
    return any;
  }
  return sel.state().empty() || DeliveryStateName(rec, now) == sel.state();
}

bool MessageMatches(const MessageRecord& msg, const tern::v1::Selector& sel, int64_t now) {
  if (!sel.sender().empty() && !AddressMatches(msg.envelope().mail_from(), sel.sender())) {
    return false;
  }
  const int64_t age = now - msg.arrival_unix_ms();
  if (sel.older_than_ms() > 0 && age <= sel.older_than_ms()) {
    return false;
  }
  if (sel.younger_than_ms() > 0 && age >= sel.younger_than_ms()) {
    return false;
  }
  return true;
}

// The domain filter in the form deliveries are keyed by (lower-case A-label),
// so `--domain BÜCHER.example` finds the deliveries to xn--bcher-kva.example.
absl::Status NormalizeSelector(tern::v1::Selector* sel) {
  if (!sel->domain().empty()) {
    TERN_ASSIGN_OR_RETURN(std::string ascii, address::DomainToAscii(sel->domain()));
    sel->set_domain(std::move(ascii));
  }
  return absl::OkStatus();
}

absl::Status ValidateSelector(const tern::v1::Selector& sel) {
  static const std::set<std::string> kStates = {"", "due", "deferred", "leased", "held", "ambiguous"};
  if (!kStates.contains(sel.state())) {
    return absl::InvalidArgumentError(absl::StrCat("unknown state '", sel.state(),
                                                   "' (due, deferred, leased, held, ambiguous)"));
  }
  return absl::OkStatus();
}

bool SelectorIsEmpty(const tern::v1::Selector& sel) {
  return sel.message_ids().empty() && sel.domain().empty() && sel.sender().empty() && sel.recipient().empty() &&
         sel.state().empty() && sel.older_than_ms() == 0 && sel.younger_than_ms() == 0;
}

// Reads every record of `cf` whose key starts with `prefix` (committed state).
template <typename T>
std::vector<T> ReadPrefix(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, const std::string& prefix) {
  std::vector<T> out;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    T rec;
    if (rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      out.push_back(std::move(rec));
    }
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Events.

void QueueCore::Impl::AppendEvent(Txn& txn, absl::string_view type, absl::string_view message_id,
                                  absl::string_view job_id, std::vector<std::string> recipients,
                                  absl::string_view detail) {
  const uint64_t seq = ++event_seq_;
  txn.OnUndo([this] { --event_seq_; });
  tern::v1::QueueEvent ev;
  ev.set_seq(seq);
  ev.set_at_unix_ms(clock_->NowUnixMs());
  ev.set_type(std::string(type));
  ev.set_message_id(std::string(message_id));
  ev.set_job_id(std::string(job_id));
  for (auto& r : recipients) {
    ev.add_recipients(std::move(r));
  }
  ev.set_detail(std::string(detail));
  txn.PutUnindexed(events_, EventKey(seq), ev.SerializeAsString());
  txn.OnCommit([this, seq] {
    Metrics().events.Inc();
    if (seq > committed_event_seq_.load(std::memory_order_relaxed)) {
      committed_event_seq_.store(seq, std::memory_order_release);
    }
    absl::MutexLock lock(&event_mu_);
    event_cv_.SignalAll();
  });
}

void QueueCore::Impl::PruneEvents() {
  committer_->Submit(GroupOp{
      [this](Txn& txn) -> absl::Status {
        const int64_t now = clock_->NowUnixMs();
        const uint64_t last = event_seq_;
        uint64_t first = first_event_seq_;
        size_t deleted = 0;
        std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), events_));
        for (it->Seek(EventKey(first)); it->Valid() && deleted < kPruneChunk; it->Next()) {
          auto seq = DecodeEventKey(absl::string_view(it->key().data(), it->key().size()));
          if (!seq.has_value()) {
            continue;
          }
          const bool over_count = opt_.event_retention_count > 0 && last - *seq >= opt_.event_retention_count;
          if (!over_count) {
            tern::v1::QueueEvent ev;
            const bool parsed = ev.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()));
            if (parsed && (opt_.event_retention_ms <= 0 || ev.at_unix_ms() >= now - opt_.event_retention_ms)) {
              break;
            }
          }
          txn.Delete(events_, absl::string_view(it->key().data(), it->key().size()));
          first = *seq + 1;
          ++deleted;
        }
        if (!it->status().ok()) {
          return StorageError(it->status(), "event prune scan");
        }
        if (deleted > 0) {
          const uint64_t before = first_event_seq_;
          first_event_seq_ = first;
          txn.OnUndo([this, before] { first_event_seq_ = before; });
          txn.OnCommit([deleted] {
            log::Event(log::Level::kDebug, "events_pruned", {{"events", absl::StrCat(deleted)}});
          });
        }
        return absl::OkStatus();
      },
      [](const absl::Status&) {},
  });
}

void QueueCore::Impl::PruneIdempotencyKeys() {
  if (idempotency_retention_ms() <= 0) {
    return;
  }
  committer_->Submit(GroupOp{
      [this](Txn& txn) -> absl::Status {
        const int64_t now = clock_->NowUnixMs();
        // Keys are sorted by the client's key, not by age, so the range is
        // swept in chunks. Through the batch: an Enqueue earlier in this
        // group may just have rewritten an expired key.
        const std::string prefix = IdempotencyKey("");
        const std::string end = PrefixEnd(prefix);
        const rocksdb::Slice end_slice(end);
        std::unique_ptr<rocksdb::Iterator> it = txn.NewIterator(meta_, &end_slice);
        size_t looked = 0;
        // Changed after the scan: writing the batch at the iterator's own key
        // would invalidate the iterator.
        std::vector<std::string> expired;
        std::vector<std::pair<std::string, std::string>> corrupt;
        it->Seek(idempotency_sweep_cursor_.empty() ? prefix : idempotency_sweep_cursor_);
        for (; it->Valid() && it->key().compare(end_slice) < 0 && looked < kIdempotencySweepChunk;
             it->Next(), ++looked) {
          IdempotencyRecord rec;
          if (!rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
            corrupt.emplace_back(it->key().ToString(), it->value().ToString());
          } else if (IdempotencyExpired(rec, now)) {
            expired.push_back(it->key().ToString());
          }
        }
        if (!it->status().ok()) {
          return StorageError(it->status(), "idempotency key sweep");
        }
        const std::string before = idempotency_sweep_cursor_;
        txn.OnUndo([this, before] { idempotency_sweep_cursor_ = before; });
        idempotency_sweep_cursor_ = it->Valid() && it->key().compare(end_slice) < 0 ? it->key().ToString() : "";
        it.reset();
        for (const auto& [key, value] : corrupt) {
          Quarantine(txn, meta_, kMetaCf, key, value);
        }
        for (const std::string& key : expired) {
          txn.Delete(meta_, key);
        }
        const size_t deleted = expired.size();
        if (deleted > 0) {
          txn.OnCommit([deleted] {
            Metrics().idempotency_pruned.Inc(deleted);
            log::Event(log::Level::kDebug, "idempotency_keys_pruned", {{"keys", absl::StrCat(deleted)}});
          });
        }
        return absl::OkStatus();
      },
      [](const absl::Status&) {},
  });
}

absl::Status QueueCore::Impl::ReadEvents(uint64_t after, size_t max, std::vector<tern::v1::QueueEvent>* out) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), events_));
  size_t n = 0;
  for (it->Seek(EventKey(after + 1)); it->Valid() && n < max; it->Next()) {
    tern::v1::QueueEvent ev;
    if (!ev.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      continue;
    }
    out->push_back(std::move(ev));
    ++n;
  }
  if (!it->status().ok()) {
    return StorageError(it->status(), "read events");
  }
  return absl::OkStatus();
}

uint64_t QueueCore::Impl::OldestEventSeq() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), events_));
  it->SeekToFirst();
  if (!it->Valid()) {
    return LastEventSeq() + 1;
  }
  return DecodeEventKey(absl::string_view(it->key().data(), it->key().size())).value_or(0);
}

bool QueueCore::Impl::WaitForEvents(uint64_t after, int64_t timeout_ms) {
  const absl::Time deadline = absl::Now() + absl::Milliseconds(timeout_ms);
  absl::MutexLock lock(&event_mu_);
  while (LastEventSeq() <= after) {
    if (event_cv_.WaitWithDeadline(&event_mu_, deadline)) {
      break;
    }
  }
  return LastEventSeq() > after;
}

// ---------------------------------------------------------------------------
// Progress and ambiguous leases.

void QueueCore::Impl::Progress(tern::v1::ProgressRequest request, Callback<tern::v1::ProgressResponse> done) {
  struct Call {
    tern::v1::ProgressRequest request;
    tern::v1::ProgressResponse response;
    Callback<tern::v1::ProgressResponse> done;
  };
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  call->done = std::move(done);
  Lead(GroupOp{
      [this, call](Txn& txn) -> absl::Status {
        call->response.Clear();
        for (const auto& item : call->request.items()) {
          TERN_ASSIGN_OR_RETURN(ReportStatus status, ApplyProgressItem(txn, item));
          call->response.add_statuses(status);
        }
        // Reports riding along (the worker's next Report, saved): applied
        // after the items, as if they had come in their own call.
        return ApplyReports(txn, call->request.reports(), call->response.mutable_report_statuses());
      },
      [this, call](const absl::Status& s) {
        if (s.ok()) {
          if (call->request.reports_size() > 0) {
            AfterReports();
          }
          call->done(std::move(call->response));
        } else {
          call->done(s);
        }
      },
  });
}

// The deliverer awaits this before DATA, so APPLIED must mean "durable and
// tied to a live lease": from then on a crash of either side leaves the
// delivery ambiguous, never silently redelivered. A lease that is no longer
// live gets STALE_LEASE and nothing is recorded: the deliverer stops before
// DATA, and the delivery, already due again, is not marked for nothing.
absl::StatusOr<ReportStatus> QueueCore::Impl::ApplyProgressItem(Txn& txn,
                                                                const tern::v1::DeliveryProgress& item) {
  if (item.lease_token().empty()) {
    return tern::v1::REPORT_STATUS_STALE_LEASE;
  }
  const std::string& id = item.delivery_id();
  TERN_ASSIGN_OR_RETURN(std::optional<DeliveryRecord> rec, Read<DeliveryRecord>(txn, deliveries_, kDeliveriesCf, id));
  if (!rec.has_value()) {
    return tern::v1::REPORT_STATUS_UNKNOWN;
  }
  if (rec->lease_token() != item.lease_token() || !State(tern::v1::JOB_KIND_DELIVERY).leases.Contains(id)) {
    return tern::v1::REPORT_STATUS_STALE_LEASE;
  }
  if (!item.data_sent() || rec->data_sent_token() == item.lease_token()) {
    return tern::v1::REPORT_STATUS_APPLIED;  // nothing to record, or already known
  }
  rec->set_data_sent_token(item.lease_token());
  PutRecord(txn, deliveries_, id, *rec);
  txn.OnCommit([this, id] {
    if (State(tern::v1::JOB_KIND_DELIVERY).leases.Contains(id)) {
      data_sent_.insert(id);  // ExpireLeases decides at the lease's end
    } else {
      // The lease ran out between this write and its commit: decide now.
      committer_->Submit(GroupOp{[this, id](Txn& t) { return ApplyMarkAmbiguous(t, id); },
                                 [](const absl::Status&) {}});
    }
  });
  return tern::v1::REPORT_STATUS_APPLIED;
}

absl::Status QueueCore::Impl::ApplyMarkAmbiguous(Txn& txn, const std::string& id) {
  TERN_ASSIGN_OR_RETURN(std::optional<DeliveryRecord> rec, Read<DeliveryRecord>(txn, deliveries_, kDeliveriesCf, id));
  // Either the lease DATA was sent under has ended unreported, or (after a
  // restart) the delivery was held while that lease was out and recovery
  // took the lease away: both leave the remote possibly holding the message.
  if (!rec.has_value() || rec->data_sent_token().empty() ||
      (rec->data_sent_token() != rec->lease_token() && !Detached(*rec))) {
    return absl::OkStatus();  // reported or leased again meanwhile
  }
  if (State(tern::v1::JOB_KIND_DELIVERY).leases.Contains(id)) {
    data_sent_.insert(id);  // still live (e.g. a stray call): check at its end
    return absl::OkStatus();
  }
  ApplyAmbiguity(txn, *rec, kLeaseExpiredAfterData);
  PutRecord(txn, deliveries_, id, *rec);
  return absl::OkStatus();
}

bool QueueCore::Impl::ApplyAmbiguity(Txn& txn, DeliveryRecord& rec, absl::string_view cause) {
  std::vector<std::string> addrs;
  for (RecipientRecord& r : *rec.mutable_recipients()) {
    if (IsPending(r)) {
      r.set_ambiguous_count(r.ambiguous_count() + 1);
      addrs.push_back(r.spec().address());
    }
  }
  rec.clear_data_sent_token();
  const int64_t n = static_cast<int64_t>(addrs.size());
  Adjust(txn, counters_.ambiguous, n);
  const bool hold = opt_.ambiguous_policy == AmbiguousPolicy::kHold;
  AppendEvent(txn, "ambiguous", rec.message_id(), rec.delivery_id(), addrs,
              absl::StrCat(cause, hold ? "; held (ambiguous_policy=hold)"
                                       : "; due again (ambiguous_policy=redeliver)"));
  txn.OnCommit([id = rec.delivery_id(), n, hold] {
    Metrics().ambiguous.Inc(n);
    log::Event(log::Level::kWarn, "ambiguous",
               {{"delivery", id}, {"rcpts", absl::StrCat(n)}, {"policy", hold ? "hold" : "redeliver"}});
  });
  if (hold) {
    HoldDelivery(txn, rec, "ambiguous");
  }
  return hold;
}

// ---------------------------------------------------------------------------
// Hold and release.

void QueueCore::Impl::HoldDelivery(Txn& txn, DeliveryRecord& rec, absl::string_view reason) {
  if (rec.held()) {
    return;
  }
  rec.set_held(true);
  rec.set_hold_reason(std::string(reason));
  if (State(tern::v1::JOB_KIND_DELIVERY).leases.Contains(rec.delivery_id())) {
    return;  // out on a live lease: its report or its end takes it out
  }
  Unschedule(txn, tern::v1::JOB_KIND_DELIVERY, rec.delivery_id(), rec.due_unix_ms());
  rec.clear_lease_token();
  rec.set_lease_deadline_unix_ms(0);
  Adjust(txn, counters_.held, 1);
}

void QueueCore::Impl::ReleaseDelivery(Txn& txn, DeliveryRecord& rec, int64_t now) {
  if (!rec.held()) {
    return;
  }
  const bool detached = Detached(rec);
  rec.set_held(false);
  rec.clear_hold_reason();
  if (!detached) {
    return;  // still has its schedule key (lease)
  }
  Adjust(txn, counters_.held, -1);
  for (RecipientRecord& r : *rec.mutable_recipients()) {
    if (IsPending(r)) {
      r.set_next_attempt_unix_ms(now);
    }
  }
  rec.set_due_unix_ms(now);
  ScheduleAt(txn, tern::v1::JOB_KIND_DELIVERY, rec.delivery_id(), now, now);
}

// ---------------------------------------------------------------------------
// Failing recipients: max_queue_age, admin bounce, delay warnings.

int64_t QueueCore::Impl::ArrivalOf(const DeliveryRecord& rec) const {
  if (rec.arrival_unix_ms() > 0) {
    return rec.arrival_unix_ms();
  }
  const int64_t from_id = MessageIdUnixMs(rec.message_id());  // records written before the field existed
  return from_id > 0 ? from_id : clock_->NowUnixMs();
}

void QueueCore::Impl::RemoveDelivery(Txn& txn, const DeliveryRecord& rec, MessageRecord& msg) {
  Detach(txn, rec);
  txn.Delete(deliveries_, rec.delivery_id());
  Adjust(txn, counters_.deliveries, -1);
  data_sent_.erase(rec.delivery_id());
  msg.set_open_jobs(msg.open_jobs() > 0 ? msg.open_jobs() - 1 : 0);
}

int QueueCore::Impl::FailRecipients(Txn& txn, DeliveryRecord& rec, MessageRecord& msg,
                                    const std::vector<int>& positions, const tern::v1::RecipientResult& base,
                                    const char* event, int64_t now) {
  std::vector<BouncedRecipient> bounced;
  int n = 0;
  for (int pos : positions) {
    RecipientRecord& r = *rec.mutable_recipients(pos);
    if (!IsPending(r)) {
      continue;
    }
    tern::v1::RecipientResult result = base;
    result.set_at_unix_ms(now);
    if (r.has_last_result()) {
      // Keep what the remote said last: the DSN should show it.
      const std::string last = ReplySummary(r.last_result());
      if (!last.empty()) {
        result.set_reply_text(absl::StrCat(base.reply_text(), " (last reply: ", last, ")"));
      }
      result.set_remote_mta(r.last_result().remote_mta());
      result.set_remote_ip(r.last_result().remote_ip());
    }
    r.set_state(RECIPIENT_STATE_FAILED);
    *r.mutable_last_result() = result;
    ++n;
    const uint32_t notify = r.spec().notify();
    if ((notify & tern::v1::NOTIFY_NEVER) == 0 && (notify == 0 || (notify & tern::v1::NOTIFY_FAILURE) != 0)) {
      BouncedRecipient b;
      *b.mutable_spec() = r.spec();
      *b.mutable_result() = result;
      bounced.push_back(std::move(b));
    }
    AppendEvent(txn, event, rec.message_id(), rec.delivery_id(), {r.spec().address()}, ReplySummary(result));
    txn.OnCommit([event, msg_id = rec.message_id(), id = rec.delivery_id(), rcpt = r.spec().address(),
                  reply = ReplySummary(result)] {
      Metrics().failed.Inc();
      log::Event(log::Level::kNotice, event, {{"msg", msg_id}, {"delivery", id}, {"rcpt", rcpt}, {"reply", reply}});
    });
  }
  Adjust(txn, counters_.failed, n);
  Adjust(txn, counters_.recipients_pending, -n);
  if (!bounced.empty()) {
    CreateBounce(txn, msg, tern::v1::BOUNCE_KIND_FAILED, std::move(bounced), rec.delivery_id(), now);
  }
  return n;
}

absl::Status QueueCore::Impl::ExpireDelivery(Txn& txn, DeliveryRecord& rec, MessageRecord& msg, int64_t now) {
  std::vector<int> positions;
  for (int i = 0; i < rec.recipients_size(); ++i) {
    if (IsPending(rec.recipients(i))) {
      positions.push_back(i);
    }
  }
  tern::v1::RecipientResult result;
  result.set_outcome(tern::v1::OUTCOME_PERMANENT);
  result.set_enhanced_status("5.4.7");
  result.set_reply_text(absl::StrCat("Message expired after ", FormatIn(now - ArrivalOf(rec)),
                                     " in the queue (max_queue_age)"));
  const int n = FailRecipients(txn, rec, msg, positions, result, "expired", now);
  txn.OnCommit([n] { Metrics().expired.Inc(n); });
  RemoveDelivery(txn, rec, msg);
  return absl::OkStatus();
}

void QueueCore::Impl::MaybeWarnDelay(Txn& txn, DeliveryRecord& rec, MessageRecord& msg, int64_t now) {
  if (opt_.delay_warning_ms.empty()) {
    return;
  }
  const int64_t arrival = ArrivalOf(rec);
  const int64_t age = now - arrival;
  const uint32_t passed = static_cast<uint32_t>(
      std::upper_bound(opt_.delay_warning_ms.begin(), opt_.delay_warning_ms.end(), age) -
      opt_.delay_warning_ms.begin());
  std::vector<BouncedRecipient> warn;
  int64_t until = 0;
  for (RecipientRecord& r : *rec.mutable_recipients()) {
    if (r.state() != RECIPIENT_STATE_DEFERRED || r.delay_warnings_sent() >= passed) {
      continue;
    }
    r.set_delay_warnings_sent(passed);
    const uint32_t notify = r.spec().notify();
    // RFC 3461 §4.1: without NOTIFY, DELAY is at the MTA's discretion; like
    // Postfix, Tern sends one when delay_warning is configured at all.
    if ((notify & tern::v1::NOTIFY_NEVER) != 0 || (notify != 0 && (notify & tern::v1::NOTIFY_DELAY) == 0)) {
      continue;
    }
    BouncedRecipient b;
    *b.mutable_spec() = r.spec();
    *b.mutable_result() = r.last_result();
    warn.push_back(std::move(b));
    // When the queue gives up: max_queue_age, or the end of the retry schedule.
    int64_t gives_up = 0;
    if (max_queue_age_ms() > 0) {
      gives_up = arrival + max_queue_age_ms();
    } else {
      gives_up = r.next_attempt_unix_ms();
      const auto& iv = opt_.retry.intervals_ms();
      for (size_t i = r.attempts(); i < iv.size(); ++i) {
        gives_up += iv[i];
      }
    }
    until = std::max(until, gives_up);
  }
  if (warn.empty()) {
    return;
  }
  txn.OnCommit([] { Metrics().delay_warnings.Inc(); });
  CreateBounce(txn, msg, tern::v1::BOUNCE_KIND_DELAYED, std::move(warn), rec.delivery_id(), now, until);
}

// ---------------------------------------------------------------------------
// Destination shaping, as it stands.

void QueueCore::Impl::Destinations(Callback<tern::v1::DestinationsResponse> done) {
  AnswerFromWriter<tern::v1::DestinationsResponse>(
      [this](Txn&, tern::v1::DestinationsResponse& out) { FillDestinations(out); }, std::move(done));
}

void QueueCore::Impl::FillDestinations(tern::v1::DestinationsResponse& out) {
  const int64_t now = clock_->NowUnixMs();
  ExpireLeases(tern::v1::JOB_KIND_DELIVERY, now);
  absl::btree_map<std::string, tern::v1::DestinationState> by_key;
  auto entry = [&](const std::string& key) -> tern::v1::DestinationState& {
    tern::v1::DestinationState& e = by_key[key];
    e.set_destination(key);
    return e;
  };
  const KindState& ks = State(tern::v1::JOB_KIND_DELIVERY);
  ks.leases.ForEachCount([&](const std::string& key, uint32_t n) { entry(key).set_leased(n); });
  ks.parked.ForEachCount([&](const std::string& key, uint32_t n) { entry(key).set_waiting(n); });
  for (const auto& [key, backoff] : backoff_) {
    if (backoff.until_ms > now) {
      tern::v1::DestinationState& e = entry(key);
      e.set_backoff_until_unix_ms(backoff.until_ms);
      e.set_backoff_reply(backoff.reply);
    }
  }
  absl::flat_hash_map<const MxSite*, uint32_t> joined;
  for (const auto& [domain, learned] : learned_sites_) {
    ++joined[learned.site];
  }
  for (const MxSite& site : opt_.shaping.sites()) {
    entry(site.key).set_site_domains(static_cast<uint32_t>(site.domains.size()) + joined[&site]);
  }
  std::vector<tern::v1::DestinationState> rows;
  rows.reserve(by_key.size());
  for (auto& [key, e] : by_key) {
    const DestinationLimits& limits = opt_.shaping.For(key);
    e.set_concurrency_max(limits.concurrency_max);
    e.set_concurrency_now(ConcurrencyFor(key, limits, now));
    e.set_rate_max(limits.rate.ToString());
    rows.push_back(std::move(e));
  }
  std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    return a.leased() + a.waiting() > b.leased() + b.waiting();
  });
  for (auto& row : rows) {
    *out.add_destinations() = std::move(row);
  }
}

// ---------------------------------------------------------------------------
// Host flags.

void QueueCore::Impl::PutHostFlags(tern::v1::PutHostFlagsRequest request,
                                   Callback<tern::v1::PutHostFlagsResponse> done) {
  for (const auto& f : request.flags()) {
    if (f.host().empty() || f.flag().empty() || absl::StrContains(f.flag(), '\0')) {
      done(absl::InvalidArgumentError("host flags need a host and a flag name (without NUL)"));
      return;
    }
  }
  committer_->Submit(GroupOp{
      [this, request = std::move(request)](Txn& txn) {
        const int64_t now = clock_->NowUnixMs();
        for (const auto& f : request.flags()) {
          if (f.expires_unix_ms() > now) {
            PutRecord(txn, meta_, HostFlagKey(f.flag(), f.host()), f);
          }
        }
        return absl::OkStatus();
      },
      EmptyAnswerOnCommit(std::move(done)),
  });
}

absl::StatusOr<tern::v1::GetHostFlagsResponse> QueueCore::Impl::GetHostFlags(
    const tern::v1::GetHostFlagsRequest& request) {
  const int64_t now = clock_->NowUnixMs();
  tern::v1::GetHostFlagsResponse out;
  std::vector<std::string> expired;
  TERN_RETURN_IF_ERROR(ForEachHostFlag(request.flag(), [&](const rocksdb::Slice& key, tern::v1::HostFlag f) {
    if (f.expires_unix_ms() > now) {
      *out.add_flags() = std::move(f);
    } else {
      expired.push_back(key.ToString());
    }
  }));
  if (!expired.empty()) {
    PurgeExpiredMeta<tern::v1::HostFlag>(std::move(expired));
  }
  return out;
}

// ---------------------------------------------------------------------------
// MTA-STS policies.

void QueueCore::Impl::PutStsPolicy(tern::v1::PutStsPolicyRequest request,
                                   Callback<tern::v1::PutStsPolicyResponse> done) {
  const tern::v1::StsPolicyRecord& p = request.policy();
  if (p.domain().empty() || p.id().empty() || p.policy().empty() || absl::StrContains(p.domain(), '\0')) {
    done(absl::InvalidArgumentError("an MTA-STS policy needs a domain (without NUL), an id and the policy text"));
    return;
  }
  if (p.policy().size() > kMaxStsPolicyBytes) {
    done(absl::InvalidArgumentError(absl::StrCat("an MTA-STS policy is at most ", kMaxStsPolicyBytes, " bytes")));
    return;
  }
  committer_->Submit(GroupOp{
      [this, request = std::move(request)](Txn& txn) {
        const tern::v1::StsPolicyRecord& policy = request.policy();
        if (policy.expires_unix_ms() > clock_->NowUnixMs()) {
          PutRecord(txn, meta_, StsPolicyKey(policy.domain()), policy);
        }
        return absl::OkStatus();
      },
      EmptyAnswerOnCommit(std::move(done)),
  });
}

absl::StatusOr<tern::v1::GetStsPolicyResponse> QueueCore::Impl::GetStsPolicy(
    const tern::v1::GetStsPolicyRequest& request) {
  tern::v1::GetStsPolicyResponse out;
  if (request.domain().empty()) {
    return absl::InvalidArgumentError("GetStsPolicy needs a domain");
  }
  const std::string key = StsPolicyKey(request.domain());
  std::string raw;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), meta_, key, &raw);
  if (s.IsNotFound()) {
    return out;
  }
  if (!s.ok()) {
    return StorageError(s, "read an MTA-STS policy");
  }
  tern::v1::StsPolicyRecord policy;
  // A record that does not parse is as good as none: the deliverer fetches
  // the policy again and its Put replaces it.
  if (!policy.ParseFromString(raw)) {
    return out;
  }
  if (policy.expires_unix_ms() > clock_->NowUnixMs()) {
    out.set_found(true);
    *out.mutable_policy() = std::move(policy);
    return out;
  }
  PurgeExpiredMeta<tern::v1::StsPolicyRecord>({key});
  return out;
}

absl::Status QueueCore::Impl::ForEachHostFlag(
    const std::string& flag, const std::function<void(const rocksdb::Slice&, tern::v1::HostFlag)>& f) {
  const std::string prefix = HostFlagPrefix(flag);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    tern::v1::HostFlag parsed;
    if (parsed.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      f(it->key(), std::move(parsed));
    }
  }
  return it->status().ok() ? absl::OkStatus() : StorageError(it->status(), "read host flags");
}

void QueueCore::Impl::ClearHostFlags(tern::v1::ClearHostFlagsRequest request,
                                     Callback<tern::v1::ClearHostFlagsResponse> done) {
  if (request.host().empty()) {
    done(absl::InvalidArgumentError("clear host flags: a host is required"));
    return;
  }
  struct Call {
    tern::v1::ClearHostFlagsRequest request;
    tern::v1::ClearHostFlagsResponse response;
    Callback<tern::v1::ClearHostFlagsResponse> done;
  };
  auto call = std::make_shared<Call>(Call{std::move(request), {}, std::move(done)});
  committer_->Submit(GroupOp{
      [this, call](Txn& txn) -> absl::Status {
        call->response.Clear();
        const int64_t now = clock_->NowUnixMs();
        // Flags are keyed by flag, then host: look at every flag's key for
        // this host (a handful of flag names exist).
        std::vector<std::string> keys;
        const std::string& host = call->request.host();
        TERN_RETURN_IF_ERROR(ForEachHostFlag(call->request.flag(), [&](const rocksdb::Slice& key, const auto& f) {
          if (f.host() == host) {
            keys.push_back(key.ToString());
          }
        }));
        for (const std::string& key : keys) {
          // Read through the batch: a flag put earlier in this group counts.
          TERN_ASSIGN_OR_RETURN(std::optional<tern::v1::HostFlag> current,
                                Read<tern::v1::HostFlag>(txn, meta_, kMetaCf, key));
          if (!current.has_value() || current->cleared() || current->expires_unix_ms() <= now) {
            continue;
          }
          *call->response.add_cleared() = *current;
          current->set_cleared(true);
          PutRecord(txn, meta_, key, *current);
        }
        return absl::OkStatus();
      },
      [call](const absl::Status& s) {
        if (!s.ok()) {
          call->done(s);
          return;
        }
        for (const auto& f : call->response.cleared()) {
          log::Event(log::Level::kNotice, "host_flag_cleared",
                     {{"host", f.host()}, {"flag", f.flag()}, {"was_until_unix_ms", absl::StrCat(f.expires_unix_ms())},
                      {"reason", f.reason()}});
        }
        call->done(std::move(call->response));
      },
  });
}

// ---------------------------------------------------------------------------
// Admin reads.

absl::StatusOr<std::vector<std::string>> QueueCore::Impl::Select(const tern::v1::Selector& sel, size_t limit,
                                                                 const std::string& after,
                                                                 std::string* next_cursor) {
  TERN_RETURN_IF_ERROR(ValidateSelector(sel));
  const int64_t now = clock_->NowUnixMs();
  std::vector<std::string> out;
  auto consider = [&](const std::string& id, absl::string_view value) {
    MessageRecord msg;
    if (!msg.ParseFromArray(value.data(), static_cast<int>(value.size())) || !MessageMatches(msg, sel, now)) {
      return;
    }
    if (HasDeliveryFilter(sel)) {
      bool any = false;
      for (const auto& d : ReadPrefix<DeliveryRecord>(db_.get(), deliveries_, absl::StrCat(id, "."))) {
        any = any || DeliveryMatches(d, sel, now);
      }
      if (!any) {
        return;
      }
    }
    out.push_back(id);
  };
  if (!sel.message_ids().empty()) {
    std::vector<std::string> ids(sel.message_ids().begin(), sel.message_ids().end());
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    for (const std::string& id : ids) {
      if (id <= after && !after.empty()) {
        continue;
      }
      if (out.size() >= limit) {
        *next_cursor = out.back();
        break;
      }
      std::string raw;
      rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), messages_, id, &raw);
      if (s.ok()) {
        consider(id, raw);
      } else if (!s.IsNotFound()) {
        return StorageError(s, "read message");
      }
    }
    return out;
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), messages_));
  if (after.empty()) {
    it->SeekToFirst();
  } else {
    it->Seek(after);
    if (it->Valid() && it->key() == rocksdb::Slice(after)) {
      it->Next();
    }
  }
  for (; it->Valid(); it->Next()) {
    if (out.size() >= limit) {
      *next_cursor = out.back();
      break;
    }
    consider(it->key().ToString(), absl::string_view(it->value().data(), it->value().size()));
  }
  if (!it->status().ok()) {
    return StorageError(it->status(), "scan messages");
  }
  return out;
}

absl::StatusOr<tern::v1::ListResponse> QueueCore::Impl::List(const tern::v1::ListRequest& request) {
  const uint32_t limit =
      request.limit() == 0 ? kDefaultListLimit : std::min<uint32_t>(request.limit(), kMaxListLimit);
  std::string next;
  tern::v1::Selector sel = request.selector();
  TERN_RETURN_IF_ERROR(NormalizeSelector(&sel));
  TERN_ASSIGN_OR_RETURN(std::vector<std::string> ids, Select(sel, limit, request.cursor(), &next));
  const int64_t now = clock_->NowUnixMs();
  tern::v1::ListResponse out;
  out.set_next_cursor(next);
  for (const std::string& id : ids) {
    std::string raw;
    MessageRecord msg;
    if (!db_->Get(rocksdb::ReadOptions(), messages_, id, &raw).ok() || !msg.ParseFromString(raw)) {
      continue;
    }
    tern::v1::MessageSummary* m = out.add_messages();
    m->set_message_id(id);
    m->set_arrival_unix_ms(msg.arrival_unix_ms());
    m->set_mail_from(msg.envelope().mail_from());
    m->set_size(msg.body_size());
    m->set_recipients(msg.envelope().recipients_size());
    static const std::map<std::string, int> kRank = {{"held", 4}, {"leased", 3}, {"due", 2}, {"deferred", 1}};
    int rank = 0;
    int64_t last_at = -1;
    for (const auto& d : ReadPrefix<DeliveryRecord>(db_.get(), deliveries_, absl::StrCat(id, "."))) {
      const std::string state = DeliveryStateName(d, now);
      if (kRank.at(state) > rank) {
        rank = kRank.at(state);
        m->set_state(state);
      }
      if (std::find(m->domains().begin(), m->domains().end(), d.domain()) == m->domains().end()) {
        m->add_domains(d.domain());
      }
      if (state == "deferred" && (m->next_attempt_unix_ms() == 0 || d.due_unix_ms() < m->next_attempt_unix_ms())) {
        m->set_next_attempt_unix_ms(d.due_unix_ms());
      }
      for (const auto& r : d.recipients()) {
        if (!IsPending(r)) {
          continue;
        }
        m->set_recipients_pending(m->recipients_pending() + 1);
        m->set_max_attempts(std::max(m->max_attempts(), r.attempts()));
        if (r.has_last_result() && r.last_result().at_unix_ms() > last_at) {
          last_at = r.last_result().at_unix_ms();
          m->set_last_reply(ReplySummary(r.last_result()));
        }
      }
    }
    if (rank == 0) {
      m->set_state("bounce");  // only DSN jobs left
    }
  }
  return out;
}

absl::StatusOr<tern::v1::ShowResponse> QueueCore::Impl::Show(const std::string& message_id) {
  const int64_t now = clock_->NowUnixMs();
  std::string raw;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), messages_, message_id, &raw);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("no message ", message_id, " in the queue"));
  }
  if (!s.ok()) {
    return StorageError(s, "read message");
  }
  MessageRecord msg;
  if (!msg.ParseFromString(raw)) {
    return absl::DataLossError(absl::StrCat("message record ", message_id, " does not parse"));
  }
  const bool paused = paused_view_.load();
  tern::v1::ShowResponse out;
  out.set_message_id(message_id);
  *out.mutable_envelope() = msg.envelope();
  out.set_arrival_unix_ms(msg.arrival_unix_ms());
  out.set_size(msg.body_size());
  out.set_paused(paused);
  out.set_now_unix_ms(now);
  if (max_queue_age_ms() > 0) {
    out.set_expires_unix_ms(msg.arrival_unix_ms() + max_queue_age_ms());
  }
  std::string body;
  if (db_->Get(rocksdb::ReadOptions(), bodies_, message_id, &body).ok()) {
    out.set_headers(HeadersOf(body));
  }
  size_t retries = 0;
  {
    absl::MutexLock lock(&retry_mu_);  // a reload may be replacing it
    retries = opt_.retry.intervals_ms().size();
  }
  for (const auto& d : ReadPrefix<DeliveryRecord>(db_.get(), deliveries_, absl::StrCat(message_id, "."))) {
    tern::v1::DeliveryDetail* dd = out.add_deliveries();
    const std::string state = DeliveryStateName(d, now);
    dd->set_delivery_id(d.delivery_id());
    dd->set_domain(d.domain());
    dd->set_state(state);
    dd->set_due_unix_ms(d.due_unix_ms());
    dd->set_lease_holder(d.lease_holder());
    dd->set_lease_deadline_unix_ms(d.lease_token().empty() ? 0 : d.lease_deadline_unix_ms());
    dd->set_tries(d.tries());
    dd->set_held(d.held());
    dd->set_hold_reason(d.hold_reason());
    dd->set_data_sent(!d.data_sent_token().empty() && d.data_sent_token() == d.lease_token());
    const RecipientRecord* cause = nullptr;  // the pending recipient due first
    for (const auto& r : d.recipients()) {
      tern::v1::RecipientDetail* rd = dd->add_recipients();
      rd->set_index(r.index());
      *rd->mutable_spec() = r.spec();
      rd->set_state(RecipientStateName(r.state()));
      rd->set_attempts(r.attempts());
      if (r.has_last_result()) {
        *rd->mutable_last_result() = r.last_result();
      }
      rd->set_next_attempt_unix_ms(IsPending(r) ? r.next_attempt_unix_ms() : 0);
      rd->set_ambiguous_count(r.ambiguous_count());
      rd->set_delay_warnings_sent(r.delay_warnings_sent());
      if (IsPending(r) && (cause == nullptr || r.next_attempt_unix_ms() < cause->next_attempt_unix_ms())) {
        cause = &r;
      }
    }
    std::string why;
    if (state == "leased") {
      why = absl::StrCat("out on lease to ", d.lease_holder().empty() ? "a deliverer" : d.lease_holder(), " until ",
                         FormatTime(d.lease_deadline_unix_ms()), " (in ", FormatIn(d.lease_deadline_unix_ms() - now),
                         "), attempt ", d.tries(), dd->data_sent() ? "; DATA was sent" : "",
                         d.held() ? "; held once the lease ends" : "");
    } else if (state == "held") {
      why = absl::StrCat("held (", d.hold_reason().empty() ? "admin" : d.hold_reason(),
                         d.hold_reason() == "ambiguous"
                             ? ": a lease expired after DATA was sent, the remote may have the message"
                             : "",
                         "); never leased until `ternctl release`");
    } else if (state == "due") {
      const std::optional<std::string> throttle = ThrottleReason(d.domain());
      why = absl::StrCat("due since ", FormatTime(d.due_unix_ms()),
                         !d.lease_token().empty() ? " (its lease expired without a report)" : "",
                         paused              ? "; delivery is PAUSED (outbound.ini disabled or `ternctl pause`)"
                         : throttle.has_value() ? absl::StrCat("; waiting for a slot: ", d.domain(), " ", *throttle)
                                                : "; waiting for a deliverer to lease it");
    } else {
      why = absl::StrCat("deferred until ", FormatTime(d.due_unix_ms()), " (in ", FormatIn(d.due_unix_ms() - now),
                         ")");
      if (cause != nullptr && cause->attempts() > 0) {
        absl::StrAppend(&why, ": ", cause->spec().address(), " failed temporarily ", cause->attempts(),
                        cause->attempts() == 1 ? " time" : " times", ", last reply '",
                        ReplySummary(cause->last_result()), "'; retry ", cause->attempts(), " of ", retries);
      } else if (cause != nullptr) {
        absl::StrAppend(&why, ": ", cause->spec().address(),
                        " was not tried in the last attempt (the deliverer's report left it out)");
      }
      if (paused) {
        absl::StrAppend(&why, "; delivery is PAUSED");
      }
    }
    dd->set_explanation(why);
  }
  for (const auto& b : ReadPrefix<BounceRecord>(db_.get(), bounces_, absl::StrCat(message_id, ".b"))) {
    tern::v1::BounceDetail* bd = out.add_bounces();
    bd->set_bounce_id(b.bounce_id());
    bd->set_kind(b.kind());
    bd->set_due_unix_ms(b.due_unix_ms());
    bd->set_leased(!b.lease_token().empty() && b.lease_deadline_unix_ms() > now);
    bd->set_tries(b.tries());
    for (const auto& r : b.recipients()) {
      bd->add_recipients(r.spec().address());
    }
  }
  return out;
}

absl::StatusOr<tern::v1::QshapeResponse> QueueCore::Impl::Qshape(const tern::v1::QshapeRequest& request) {
  const int64_t now = clock_->NowUnixMs();
  // The first bucket always starts at 0 minutes. (Built by appending: g++ 12
  // misreports a free of a non-heap object for the insert-at-front form.)
  std::vector<uint32_t> buckets = {0};
  if (request.bucket_minutes().empty()) {
    buckets = {0, 5, 10, 20, 40, 80, 160, 320, 640, 1280};
  }
  for (uint32_t b : request.bucket_minutes()) {
    buckets.push_back(b);
  }
  std::sort(buckets.begin(), buckets.end());
  buckets.erase(std::unique(buckets.begin(), buckets.end()), buckets.end());
  struct Row {
    uint64_t total = 0;
    std::vector<uint64_t> counts;
  };
  // One pass over every delivery: with a million queued it must stay well
  // under a second or two, so one record object is reused, the scan bypasses
  // the block cache, and rows are hashed.
  absl::flat_hash_map<std::string, Row> rows;
  Row sum;
  sum.counts.assign(buckets.size(), 0);
  // Deliveries of one message are adjacent ("<msgid>.<n>"); count each
  // (message, domain) once, as Postfix's qshape counts messages per domain.
  std::string current_msg;
  std::vector<std::string> seen_domains;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(RecoveryScanOptions(), deliveries_));
  DeliveryShapeView d;  // the fields qshape needs; recipients are skipped
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (!d.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      continue;
    }
    if (request.deferred_only()) {
      // DeliveryStateName(d, now) == "deferred", without building a string.
      const bool leased = !d.lease_token().empty() && d.lease_deadline_unix_ms() > now;
      if (leased || d.held() || d.due_unix_ms() <= now) {
        continue;
      }
    }
    if (d.message_id() != current_msg) {
      current_msg = d.message_id();
      seen_domains.clear();
    }
    if (std::find(seen_domains.begin(), seen_domains.end(), d.domain()) != seen_domains.end()) {
      continue;
    }
    seen_domains.push_back(d.domain());
    int64_t arrival = d.arrival_unix_ms();
    if (arrival <= 0) {  // as ArrivalOf: records written before the field existed
      const int64_t from_id = MessageIdUnixMs(d.message_id());
      arrival = from_id > 0 ? from_id : now;
    }
    const int64_t age_min = std::max<int64_t>(0, (now - arrival) / 60000);
    size_t b = std::upper_bound(buckets.begin(), buckets.end(), static_cast<uint64_t>(age_min)) - buckets.begin();
    b = b == 0 ? 0 : b - 1;
    Row& row = rows[d.domain()];
    if (row.counts.empty()) {
      row.counts.assign(buckets.size(), 0);
    }
    ++row.total;
    ++row.counts[b];
    ++sum.total;
    ++sum.counts[b];
  }
  if (!it->status().ok()) {
    return StorageError(it->status(), "qshape scan");
  }
  std::vector<std::pair<std::string, Row*>> order;
  for (auto& [domain, row] : rows) {
    order.emplace_back(domain, &row);
  }
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.second->total != b.second->total ? a.second->total > b.second->total : a.first < b.first;
  });
  const size_t top = request.top() == 0 ? 20 : request.top();
  tern::v1::QshapeResponse out;
  for (uint32_t b : buckets) {
    out.add_bucket_minutes(b);
  }
  out.set_domains(static_cast<uint32_t>(rows.size()));
  auto add = [&out](const std::string& name, const Row& row) {
    tern::v1::QshapeRow* r = out.add_rows();
    r->set_domain(name);
    r->set_total(row.total);
    for (uint64_t c : row.counts) {
      r->add_counts(c);
    }
  };
  add("TOTAL", sum);
  for (size_t i = 0; i < order.size() && i < top; ++i) {
    add(order[i].first, *order[i].second);
  }
  return out;
}

absl::StatusOr<tern::v1::ListCorruptResponse> QueueCore::Impl::ListCorrupt(uint32_t limit) {
  if (limit == 0) {
    limit = kDefaultListLimit;
  }
  tern::v1::ListCorruptResponse out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), corrupt_));
  uint64_t total = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ++total;
    if (out.records_size() >= static_cast<int>(limit)) {
      continue;
    }
    const std::string key = it->key().ToString();
    const size_t nul = key.find('\0');
    tern::v1::CorruptRecord* r = out.add_records();
    r->set_column_family(nul == std::string::npos ? "" : key.substr(0, nul));
    r->set_key(nul == std::string::npos ? key : key.substr(nul + 1));
    r->set_size(it->value().size());
  }
  out.set_total(total);
  return out;
}

absl::StatusOr<tern::v1::GetCorruptResponse> QueueCore::Impl::GetCorrupt(const tern::v1::GetCorruptRequest& request) {
  if (request.column_family().empty() || request.key().empty()) {
    return absl::InvalidArgumentError("name a corrupt record: its column family and key (ternctl corrupt lists them)");
  }
  tern::v1::GetCorruptResponse out;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), corrupt_, CorruptKey(request.column_family(), request.key()),
               out.mutable_value());
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("no corrupt record ", request.column_family(), " ", request.key(),
                                            " (ternctl corrupt lists them)"));
  }
  if (!s.ok()) {
    return StorageError(s, "read corrupt record");
  }
  if (request.column_family() == kMessagesCf) {
    // A quarantined message record leaves its body behind (same key): the
    // text of the mail, which the operator can send again.
    s = db_->Get(rocksdb::ReadOptions(), bodies_, request.key(), out.mutable_body());
    if (s.ok()) {
      out.set_has_body(true);
    } else if (!s.IsNotFound()) {
      return StorageError(s, "read body");
    }
  }
  return out;
}

void QueueCore::Impl::PurgeCorrupt(tern::v1::PurgeCorruptRequest request,
                                   Callback<tern::v1::PurgeCorruptResponse> done) {
  const bool named = !request.column_family().empty() && !request.key().empty();
  const bool partly_named = !request.column_family().empty() || !request.key().empty();
  if (request.all() ? partly_named : !named) {
    done(absl::InvalidArgumentError("purge one corrupt record (column family and key) or all of them, not both"));
    return;
  }
  struct Call {
    tern::v1::PurgeCorruptRequest request;
    tern::v1::PurgeCorruptResponse response;
    bool found = false;
    Callback<tern::v1::PurgeCorruptResponse> done;
  };
  auto call = std::make_shared<Call>(Call{std::move(request), {}, false, std::move(done)});
  committer_->Submit(GroupOp{
      [this, call](Txn& txn) -> absl::Status {
        call->response.Clear();
        std::vector<std::string> keys;  // corrupt-CF keys
        if (call->request.all()) {
          // Every record in one group: quarantine is rare (each one was
          // logged as an error), so the column family stays small.
          std::unique_ptr<rocksdb::Iterator> it = txn.NewIterator(corrupt_);
          for (it->SeekToFirst(); it->Valid(); it->Next()) {
            keys.push_back(it->key().ToString());
          }
          if (!it->status().ok()) {
            return StorageError(it->status(), "scan corrupt records");
          }
        } else {
          std::string key = CorruptKey(call->request.column_family(), call->request.key());
          std::string unused;
          rocksdb::Status s = txn.Get(corrupt_, key, &unused);
          if (!s.ok() && !s.IsNotFound()) {
            return StorageError(s, "read corrupt record");
          }
          if (s.ok()) {
            keys.push_back(std::move(key));
          }
        }
        call->found = !keys.empty() || call->request.all();
        std::string unused;
        for (const std::string& key : keys) {
          txn.Delete(corrupt_, key);
          call->response.set_purged(call->response.purged() + 1);
          const size_t nul = key.find('\0');
          if (nul == std::string::npos || absl::string_view(key).substr(0, nul) != kMessagesCf) {
            continue;
          }
          // The body is the quarantined message's only if no live message
          // of that id is stored.
          const std::string id = key.substr(nul + 1);
          rocksdb::Status live = txn.Get(messages_, id, &unused);
          if (!live.ok() && !live.IsNotFound()) {
            return StorageError(live, "read message of a corrupt record");
          }
          if (live.ok()) {
            continue;
          }
          rocksdb::Status body = txn.Get(bodies_, id, &unused);
          if (!body.ok() && !body.IsNotFound()) {
            return StorageError(body, "read body of a corrupt record");
          }
          if (body.ok()) {
            txn.Delete(bodies_, id);
            call->response.set_bodies_purged(call->response.bodies_purged() + 1);
          }
        }
        return absl::OkStatus();
      },
      [this, call](const absl::Status& s) {
        if (!s.ok()) {
          call->done(s);
          return;
        }
        if (!call->found) {
          call->done(absl::NotFoundError(absl::StrCat("no corrupt record ", call->request.column_family(), " ",
                                                      call->request.key(), " (ternctl corrupt lists them)")));
          return;
        }
        const auto purged = static_cast<int64_t>(call->response.purged());
        corrupt_count_.fetch_sub(purged, std::memory_order_relaxed);
        log::Event(log::Level::kNotice, "corrupt_purged",
                   {{"cf", call->request.all() ? std::string("*") : call->request.column_family()},
                    {"key", call->request.all() ? std::string("*") : call->request.key()},
                    {"records", absl::StrCat(purged)},
                    {"bodies", absl::StrCat(call->response.bodies_purged())}});
        call->done(std::move(call->response));
      },
  });
}

// ---------------------------------------------------------------------------
// Admin actions.

void QueueCore::Impl::RunInChunks(size_t n, std::function<absl::Status(Txn&, size_t, size_t)> apply,
                                  std::function<void()> committed,
                                  std::function<void(const absl::Status&)> finished) {
  struct State {
    size_t n;
    size_t next = 0;
    std::function<absl::Status(Txn&, size_t, size_t)> apply;
    std::function<void()> committed;
    std::function<void(const absl::Status&)> finished;
  };
  auto st = std::make_shared<State>(State{n, 0, std::move(apply), std::move(committed), std::move(finished)});
  // Each chunk's completion submits the next; the step holds itself until
  // the last completion breaks the cycle.
  auto step = std::make_shared<std::function<void()>>();
  *step = [this, st, step] {
    const size_t begin = st->next;
    const size_t end = std::min(st->n, begin + kActionChunk);
    st->next = end;
    committer_->Submit(GroupOp{
        [st, begin, end](Txn& txn) { return st->apply(txn, begin, end); },
        [st, step](const absl::Status& s) {
          if (!s.ok()) {
            *step = nullptr;
            st->finished(s);
            return;
          }
          st->committed();
          if (st->next < st->n) {
            (*step)();
            return;
          }
          *step = nullptr;
          st->finished(absl::OkStatus());
        },
    });
  };
  (*step)();
}

void QueueCore::Impl::Act(QueueCore::Action action, tern::v1::ActionRequest request,
                          Callback<tern::v1::ActionResponse> done) {
  if (SelectorIsEmpty(request.selector()) && !request.selector().all()) {
    done(absl::InvalidArgumentError("select messages (ids, domain, sender, recipient, state, age) or ask for all"));
    return;
  }
  if (absl::Status s = NormalizeSelector(request.mutable_selector()); !s.ok()) {
    done(s);
    return;
  }
  std::string unused;
  auto ids = Select(request.selector(), SIZE_MAX, "", &unused);
  if (!ids.ok()) {
    done(ids.status());
    return;
  }
  struct Run {
    QueueCore::Action action;
    tern::v1::ActionRequest request;
    std::vector<std::string> ids;
    std::string undo_token;  // Delete kept for undo
    uint64_t kept = 0;       // messages kept under it (committed chunks)
    // The chunk being applied; added to the totals when it commits.
    uint64_t chunk_changed = 0;
    uint64_t chunk_kept = 0;
    tern::v1::ActionResponse response;
    Callback<tern::v1::ActionResponse> done;
  };
  auto run = std::make_shared<Run>();
  run->action = action;
  if (action == QueueCore::Action::kDelete && !request.purge() && delete_undo_window_ms() > 0) {
    // Short enough to type, random enough never to meet another Delete's
    // within a window.
    run->undo_token = NewRandomToken().substr(0, 12);
  }
  run->request = std::move(request);
  run->ids = std::move(*ids);
  run->done = std::move(done);
  run->response.set_matched(run->ids.size());
  for (size_t i = 0; i < run->ids.size() && i < 100; ++i) {
    run->response.add_message_ids(run->ids[i]);
  }
  const bool destructive = action == QueueCore::Action::kDelete || action == QueueCore::Action::kBounce;
  if (destructive && run->ids.size() > 1 && !run->request.confirm()) {
    run->response.set_needs_confirmation(true);
    run->done(std::move(run->response));
    return;
  }
  if (run->ids.empty()) {
    run->done(std::move(run->response));
    return;
  }
  RunInChunks(
      run->ids.size(),
      [this, run](Txn& txn, size_t begin, size_t end) -> absl::Status {
        run->chunk_changed = 0;
        run->chunk_kept = 0;
        for (size_t i = begin; i < end; ++i) {
          TERN_ASSIGN_OR_RETURN(uint64_t n, ApplyAction(txn, run->action, run->request, run->ids[i],
                                                        run->undo_token, &run->chunk_kept));
          run->chunk_changed += n;
        }
        return absl::OkStatus();
      },
      [run] {
        run->response.set_deliveries_changed(run->response.deliveries_changed() + run->chunk_changed);
        run->kept += run->chunk_kept;
      },
      [this, run](const absl::Status& s) {
        if (!s.ok()) {
          if (!run->undo_token.empty() && absl::IsResourceExhausted(s)) {
            // Keeping a copy for undo takes space that a full disk lacks.
            run->done(absl::ResourceExhaustedError(
                absl::StrCat(s.message(), " (ternctl delete --purge deletes without keeping a copy for undo)")));
            return;
          }
          run->done(s);
          return;
        }
        WakeWaiters(tern::v1::JOB_KIND_DELIVERY);
        if (run->kept > 0) {
          run->response.set_undo_token(run->undo_token);
          run->response.set_undo_until_unix_ms(clock_->NowUnixMs() + delete_undo_window_ms());
        }
        run->done(std::move(run->response));
      });
}

absl::StatusOr<uint64_t> QueueCore::Impl::ApplyAction(Txn& txn, QueueCore::Action action,
                                                      const tern::v1::ActionRequest& request,
                                                      const std::string& message_id,
                                                      const std::string& undo_token, uint64_t* kept_count) {
  const int64_t now = clock_->NowUnixMs();
  const tern::v1::Selector& sel = request.selector();
  TERN_ASSIGN_OR_RETURN(std::optional<MessageRecord> msg,
                        Read<MessageRecord>(txn, messages_, kMessagesCf, message_id));
  if (!msg.has_value()) {
    return 0;  // retired since it was selected
  }
  std::vector<DeliveryRecord> deliveries;
  {
    const std::string prefix = absl::StrCat(message_id, ".");
    const std::string end = PrefixEnd(prefix);
    const rocksdb::Slice lower(prefix);
    const rocksdb::Slice upper(end);
    std::unique_ptr<rocksdb::Iterator> it = txn.NewIterator(deliveries_, &upper, &lower);
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      DeliveryRecord d;
      if (d.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        deliveries.push_back(std::move(d));
      }
    }
    if (!it->status().ok()) {
      return StorageError(it->status(), "scan deliveries");
    }
  }
  const char* name = "";
  uint64_t changed = 0;
  KindState& ks = State(tern::v1::JOB_KIND_DELIVERY);
  // Delete with undo: the records as they were, kept under the token.
  const bool keep = action == QueueCore::Action::kDelete && !undo_token.empty();
  DeletedRecord kept;
  for (DeliveryRecord& d : deliveries) {
    if (HasDeliveryFilter(sel) && !DeliveryMatches(d, sel, now)) {
      continue;
    }
    const std::string& id = d.delivery_id();
    switch (action) {
      case QueueCore::Action::kFlush:
        name = "flush";
        if (d.held() || ks.leases.Contains(id) || d.due_unix_ms() <= now) {
          break;
        }
        Unschedule(txn, tern::v1::JOB_KIND_DELIVERY, id, d.due_unix_ms());
        for (RecipientRecord& r : *d.mutable_recipients()) {
          if (IsPending(r)) {
            r.set_next_attempt_unix_ms(now);
          }
        }
        d.set_due_unix_ms(now);
        PutRecord(txn, deliveries_, id, d);
        ScheduleAt(txn, tern::v1::JOB_KIND_DELIVERY, id, now, now);
        ++changed;
        break;
      case QueueCore::Action::kHold:
        name = "hold";
        if (!d.held()) {
          HoldDelivery(txn, d, "admin");
          PutRecord(txn, deliveries_, id, d);
          ++changed;
        }
        break;
      case QueueCore::Action::kRelease:
        name = "release";
        if (d.held()) {
          ReleaseDelivery(txn, d, now);
          PutRecord(txn, deliveries_, id, d);
          ++changed;
        }
        break;
      case QueueCore::Action::kDelete:
        name = "delete";
        if (keep) {
          *kept.add_deliveries() = d;
        }
        Adjust(txn, counters_.recipients_pending, -PendingCount(d));
        RemoveDelivery(txn, d, *msg);
        ++changed;
        break;
      case QueueCore::Action::kBounce: {
        name = "bounce";
        std::vector<int> positions;
        for (int i = 0; i < d.recipients_size(); ++i) {
          positions.push_back(i);
        }
        tern::v1::RecipientResult result;
        result.set_outcome(tern::v1::OUTCOME_PERMANENT);
        result.set_enhanced_status("5.0.0");
        result.set_reply_text(request.reason().empty()
                                  ? std::string("Removed from the queue by the administrator")
                                  : absl::StrCat("Removed from the queue by the administrator: ", request.reason()));
        FailRecipients(txn, d, *msg, positions, result, "failed", now);
        RemoveDelivery(txn, d, *msg);
        ++changed;
        break;
      }
    }
  }
  uint64_t bounces_dropped = 0;
  if (action == QueueCore::Action::kDelete && !HasDeliveryFilter(sel)) {
    // The whole message goes, pending DSN jobs included ("drop silently").
    const std::string prefix = absl::StrCat(message_id, ".b");
    const std::string end = PrefixEnd(prefix);
    const rocksdb::Slice lower(prefix);
    const rocksdb::Slice upper(end);
    std::vector<BounceRecord> jobs;
    std::unique_ptr<rocksdb::Iterator> it = txn.NewIterator(bounces_, &upper, &lower);
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      BounceRecord b;
      if (b.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        jobs.push_back(std::move(b));
      }
    }
    for (const BounceRecord& b : jobs) {
      if (keep) {
        *kept.add_bounces() = b;
      }
      Unschedule(txn, tern::v1::JOB_KIND_BOUNCE, b.bounce_id(), b.due_unix_ms());
      txn.Delete(bounces_, b.bounce_id());
      Adjust(txn, counters_.bounces, -1);
      msg->set_open_jobs(msg->open_jobs() > 0 ? msg->open_jobs() - 1 : 0);
      ++bounces_dropped;
    }
  }
  if (changed > 0 || bounces_dropped > 0) {
    std::string detail = absl::StrCat(name, " deliveries=", changed);
    if (bounces_dropped > 0) {
      absl::StrAppend(&detail, " dsn_jobs=", bounces_dropped);
    }
    if (!request.reason().empty()) {
      absl::StrAppend(&detail, " reason=", request.reason());
    }
    if (keep) {
      TERN_RETURN_IF_ERROR(KeepDeleted(txn, undo_token, request.reason(), *msg, std::move(kept)));
      absl::StrAppend(&detail, " undo=", undo_token);
      ++*kept_count;
    }
    AppendEvent(txn, "admin", message_id, "", {}, detail);
    txn.OnCommit([message_id, detail] {
      log::Event(log::Level::kNotice, "admin_action", {{"msg", message_id}, {"action", detail}});
    });
    if (action == QueueCore::Action::kDelete || action == QueueCore::Action::kBounce) {
      SaveOrRetireMessage(txn, *msg);
    }
  }
  return changed;
}

// ---------------------------------------------------------------------------
// Undo of Delete. What a Delete removes of a message goes into one
// DeletedRecord in the meta CF, in the same batch as the removal, so a crash
// can never leave a message both gone and not kept. The queue does not see
// those records otherwise (recovery, counters, leases and ternctl list skip
// the meta CF), and PruneDeleted drops them when the window has passed.

absl::Status QueueCore::Impl::KeepDeleted(Txn& txn, const std::string& token, const std::string& reason,
                                          const MessageRecord& msg, DeletedRecord kept) {
  const int64_t now = clock_->NowUnixMs();
  kept.set_token(token);
  kept.set_deleted_unix_ms(now);
  kept.set_reason(reason);
  *kept.mutable_message() = msg;
  kept.set_whole_message(msg.open_jobs() == 0);
  // The body is kept even when the message stays (one domain of it was
  // deleted): the rest may be delivered and the message retired before the
  // undo, and then the body would be gone.
  rocksdb::Status s = txn.Get(bodies_, msg.message_id(), kept.mutable_body());
  if (!s.ok() && !s.IsNotFound()) {
    return StorageError(s, "read body to keep for undo");
  }
  PutRecord(txn, meta_, DeletedKey(now, token, msg.message_id()), kept);
  return absl::OkStatus();
}

absl::Status QueueCore::Impl::ApplyUndelete(Txn& txn, const std::string& key, tern::v1::UndeleteResponse& response) {
  TERN_ASSIGN_OR_RETURN(std::optional<DeletedRecord> kept, Read<DeletedRecord>(txn, meta_, kMetaCf, key));
  if (!kept.has_value()) {
    return absl::OkStatus();  // purged (or put back) since it was listed
  }
  const int64_t now = clock_->NowUnixMs();
  const std::string& id = kept->message().message_id();
  TERN_ASSIGN_OR_RETURN(std::optional<MessageRecord> live, Read<MessageRecord>(txn, messages_, kMessagesCf, id));
  MessageRecord msg;
  if (live.has_value()) {
    msg = *std::move(live);
  } else {
    std::string body;
    rocksdb::Status s = txn.Get(bodies_, id, &body);
    if (!s.ok() && !s.IsNotFound()) {
      return StorageError(s, "read body");
    }
    if (s.IsNotFound() && kept->body().empty() && kept->message().body_size() > 0) {
      response.set_not_restorable(response.not_restorable() + 1);
      return absl::OkStatus();  // nothing to send: stays listed until its window ends
    }
    msg = kept->message();
    msg.set_open_jobs(0);
    if (s.IsNotFound()) {
      txn.Put(bodies_, id, kept->body());
    }
    Adjust(txn, counters_.messages, 1);
  }
  uint32_t deliveries = 0;
  uint32_t bounces = 0;
  std::vector<std::string> rcpts;
  for (DeliveryRecord d : kept->deliveries()) {
    TERN_ASSIGN_OR_RETURN(std::optional<DeliveryRecord> clash,
                          Read<DeliveryRecord>(txn, deliveries_, kDeliveriesCf, d.delivery_id()));
    if (clash.has_value()) {
      continue;  // cannot happen (ids are never reused); never overwrite a live delivery
    }
    // The lease it had is over: a late report for it is stale. If its
    // message text was on the way, the remote may have it: ambiguous, as
    // when a lease runs out after DATA (ApplyAmbiguity, once it is back in
    // the schedule, so that a hold takes it out again the usual way).
    const bool data_sent = !d.data_sent_token().empty() && d.data_sent_token() == d.lease_token();
    d.clear_lease_token();
    d.set_lease_deadline_unix_ms(0);
    std::vector<std::string> pending;
    for (RecipientRecord& r : *d.mutable_recipients()) {
      if (IsPending(r)) {
        pending.push_back(r.spec().address());
        r.set_next_attempt_unix_ms(now);
      }
    }
    if (d.held()) {
      Adjust(txn, counters_.held, 1);  // held without a schedule key, as Detached() counts it
    } else {
      d.set_due_unix_ms(now);
      ScheduleAt(txn, tern::v1::JOB_KIND_DELIVERY, d.delivery_id(), now, now);
    }
    if (data_sent) {
      ApplyAmbiguity(txn, d, "deleted while DATA was sent, then undeleted");
      response.set_ambiguous(response.ambiguous() + 1);
    }
    d.clear_data_sent_token();
    PutRecord(txn, deliveries_, d.delivery_id(), d);
    Adjust(txn, counters_.deliveries, 1);
    Adjust(txn, counters_.recipients_pending, PendingCount(d));
    msg.set_open_jobs(msg.open_jobs() + 1);
    rcpts.insert(rcpts.end(), pending.begin(), pending.end());
    ++deliveries;
  }
  for (BounceRecord b : kept->bounces()) {
    TERN_ASSIGN_OR_RETURN(std::optional<BounceRecord> clash,
                          Read<BounceRecord>(txn, bounces_, kBouncesCf, b.bounce_id()));
    if (clash.has_value()) {
      continue;
    }
    b.clear_lease_token();
    b.set_lease_deadline_unix_ms(0);
    b.set_due_unix_ms(now);
    PutRecord(txn, bounces_, b.bounce_id(), b);
    ScheduleAt(txn, tern::v1::JOB_KIND_BOUNCE, b.bounce_id(), now, now);
    Adjust(txn, counters_.bounces, 1);
    msg.set_open_jobs(msg.open_jobs() + 1);
    ++bounces;
  }
  txn.Delete(meta_, key);
  if (msg.open_jobs() == 0) {
    // Nothing of it came back (every job clashed): leave no message behind.
    SaveOrRetireMessage(txn, msg);
    return absl::OkStatus();
  }
  PutRecord(txn, messages_, id, msg);
  const std::string detail =
      absl::StrCat("undelete deliveries=", deliveries, bounces > 0 ? absl::StrCat(" dsn_jobs=", bounces) : "",
                   " undo=", kept->token());
  AppendEvent(txn, "admin", id, "", std::move(rcpts), detail);
  txn.OnCommit([id, detail] {
    log::Event(log::Level::kNotice, "admin_action", {{"msg", id}, {"action", detail}});
  });
  response.set_restored(response.restored() + 1);
  response.set_deliveries_restored(response.deliveries_restored() + deliveries);
  response.set_bounces_restored(response.bounces_restored() + bounces);
  if (response.message_ids_size() < 100) {
    response.add_message_ids(id);
  }
  return absl::OkStatus();
}

namespace {

// Visits every deleted-for-undo record in committed state, oldest first,
// with its decoded key (keys that do not decode are skipped; the purge
// quarantines them).
template <typename Visit>
absl::Status ScanDeleted(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* meta, const char* what, Visit visit) {
  const std::string prefix = DeletedPrefix();
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), meta));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto parts = DecodeDeletedKey(absl::string_view(it->key().data(), it->key().size()));
    if (parts.has_value()) {
      visit(*parts, *it);
    }
  }
  if (!it->status().ok()) {
    return StorageError(it->status(), what);
  }
  return absl::OkStatus();
}

// The deleted-for-undo keys that `request` names: the token's, or the
// listed messages'.
absl::StatusOr<std::vector<std::string>> MatchDeleted(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* meta,
                                                      const tern::v1::UndeleteRequest& request) {
  const std::set<std::string> ids(request.message_ids().begin(), request.message_ids().end());
  std::vector<std::string> keys;
  TERN_RETURN_IF_ERROR(ScanDeleted(db, meta, "scan deleted messages",
                                   [&](const DeletedKeyParts& parts, const rocksdb::Iterator& it) {
                                     if ((!request.token().empty() && parts.token == request.token()) ||
                                         ids.contains(parts.message_id)) {
                                       keys.push_back(it.key().ToString());
                                     }
                                   }));
  return keys;
}

}  // namespace

void QueueCore::Impl::Undelete(tern::v1::UndeleteRequest request, Callback<tern::v1::UndeleteResponse> done) {
  if (request.token().empty() && request.message_ids().empty()) {
    done(absl::InvalidArgumentError(
        "undelete: give the delete's undo token or message ids (ternctl deleted lists them)"));
    return;
  }
  auto keys = MatchDeleted(db_.get(), meta_, request);
  if (!keys.ok()) {
    done(keys.status());
    return;
  }
  if (keys->empty()) {
    done(absl::NotFoundError("undelete: nothing deleted matches (its undo window may have ended)"));
    return;
  }
  struct Run {
    std::vector<std::string> keys;
    tern::v1::UndeleteResponse response;  // committed chunks
    tern::v1::UndeleteResponse chunk;     // the chunk being applied: the totals with it
    Callback<tern::v1::UndeleteResponse> done;
  };
  auto run = std::make_shared<Run>();
  run->keys = *std::move(keys);
  run->done = std::move(done);
  RunInChunks(
      run->keys.size(),
      [this, run](Txn& txn, size_t begin, size_t end) -> absl::Status {
        run->chunk = run->response;
        for (size_t i = begin; i < end; ++i) {
          TERN_RETURN_IF_ERROR(ApplyUndelete(txn, run->keys[i], run->chunk));
        }
        return absl::OkStatus();
      },
      [run] { run->response = run->chunk; },
      [this, run](const absl::Status& s) {
        if (!s.ok()) {
          run->done(s);
          return;
        }
        WakeWaiters(tern::v1::JOB_KIND_DELIVERY);
        WakeWaiters(tern::v1::JOB_KIND_BOUNCE);
        run->done(std::move(run->response));
      });
}

absl::StatusOr<tern::v1::ListDeletedResponse> QueueCore::Impl::ListDeleted(
    const tern::v1::ListDeletedRequest& request) {
  const uint32_t limit = request.limit() == 0 ? 100 : request.limit();
  tern::v1::ListDeletedResponse out;
  auto visit = [&](const DeletedKeyParts& parts, const rocksdb::Iterator& it) {
    if (!request.token().empty() && parts.token != request.token()) {
      return;
    }
    out.set_total(out.total() + 1);
    DeletedRecord rec;
    if (static_cast<uint32_t>(out.entries_size()) >= limit ||
        !rec.ParseFromArray(it.value().data(), static_cast<int>(it.value().size()))) {
      return;  // beyond the limit, or unparseable (the purge moves it to the corrupt CF)
    }
    tern::v1::DeletedEntry* e = out.add_entries();
    e->set_token(rec.token());
    e->set_message_id(rec.message().message_id());
    e->set_deleted_unix_ms(rec.deleted_unix_ms());
    e->set_purge_at_unix_ms(rec.deleted_unix_ms() + delete_undo_window_ms());
    e->set_reason(rec.reason());
    e->set_mail_from(rec.message().envelope().mail_from());
    for (const DeliveryRecord& d : rec.deliveries()) {
      for (const RecipientRecord& r : d.recipients()) {
        if (IsPending(r)) {
          e->add_recipients(r.spec().address());
        }
      }
    }
    e->set_deliveries(static_cast<uint32_t>(rec.deliveries_size()));
    e->set_bounces(static_cast<uint32_t>(rec.bounces_size()));
    e->set_whole_message(rec.whole_message());
  };
  TERN_RETURN_IF_ERROR(ScanDeleted(db_.get(), meta_, "list deleted messages", visit));
  return out;
}

void QueueCore::Impl::PruneDeleted() {
  committer_->Submit(GroupOp{
      [this](Txn& txn) -> absl::Status {
        // A window of 0 (deletes final at once) purges what an earlier
        // configuration kept.
        const int64_t cutoff = clock_->NowUnixMs() - delete_undo_window_ms();
        const std::string prefix = DeletedPrefix();
        const std::string end = PrefixEnd(prefix);
        const rocksdb::Slice lower(prefix);
        const rocksdb::Slice upper(end);
        std::unique_ptr<rocksdb::Iterator> it = txn.NewIterator(meta_, &upper, &lower);
        // Changed after the scan: writing at the iterator's own key would
        // invalidate it.
        std::vector<std::string> expired;
        std::vector<std::pair<std::string, std::string>> corrupt;
        for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix) && expired.size() < kPruneChunk;
             it->Next()) {
          auto parts = DecodeDeletedKey(absl::string_view(it->key().data(), it->key().size()));
          if (parts.has_value() && parts->deleted_unix_ms > cutoff) {
            break;  // oldest first: the rest are younger
          }
          DeletedRecord rec;
          if (!parts.has_value() || !rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
            corrupt.emplace_back(it->key().ToString(), it->value().ToString());
          } else {
            expired.push_back(it->key().ToString());
          }
        }
        if (!it->status().ok()) {
          return StorageError(it->status(), "deleted messages purge");
        }
        it.reset();
        for (const auto& [key, value] : corrupt) {
          Quarantine(txn, meta_, kMetaCf, key, value);
        }
        for (const std::string& key : expired) {
          txn.Delete(meta_, key);
        }
        if (!expired.empty()) {
          txn.OnCommit([n = expired.size()] {
            log::Event(log::Level::kInfo, "deleted_purged", {{"records", absl::StrCat(n)}});
          });
        }
        return absl::OkStatus();
      },
      [](const absl::Status&) {},
  });
}

}  // namespace tern::queue
