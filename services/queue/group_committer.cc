#include "services/queue/group_committer.h"

#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "lib/common/log.h"
#include "lib/metrics/metrics.h"

namespace tern::queue {
namespace {

struct CommitterMetrics {
  metrics::Counter& commits;
  metrics::Counter& syncs;
  metrics::Counter& ops;
  metrics::Counter& write_errors;
  metrics::Counter& led;
  metrics::Gauge& last_group_ops;
  metrics::Counter& cache_hits;
  metrics::Counter& cache_misses;
  metrics::Gauge& cache_bytes;
  metrics::Histogram& synced_write_seconds;
  metrics::Histogram& unsynced_write_seconds;
};

CommitterMetrics& Metrics() {
  static CommitterMetrics* m = [] {
    auto& r = metrics::Registry::Global();
    return new CommitterMetrics{
        r.GetCounter("tern_queue_group_commits_total", "RocksDB writes, one per group of operations"),
        r.GetCounter("tern_queue_wal_syncs_total",
                     "Group writes that were synced (every group but those made only of leases)"),
        r.GetCounter("tern_queue_group_commit_ops_total",
                     "Operations committed in groups; divided by commits it is the mean group size"),
        r.GetCounter("tern_queue_group_commit_errors_total", "Group writes that failed (disk full, I/O error)"),
        r.GetCounter("tern_queue_group_commits_led_total",
                     "Groups committed by the RPC's own thread (it found the writer role free) rather than "
                     "handed to the writer thread"),
        r.GetGauge("tern_queue_group_commit_last_size", "Operations in the most recent group"),
        r.GetCounter("tern_queue_record_cache_hits_total",
                     "Record reads (deliveries, messages, bounces) answered from the writer's cache"),
        r.GetCounter("tern_queue_record_cache_misses_total", "Record reads that went to RocksDB"),
        r.GetGauge("tern_queue_record_cache_bytes", "Bytes held by the writer's record cache"),
        r.GetHistogram("tern_queue_group_write_seconds",
                       "One group's RocksDB write, with the WAL fdatasync when synced: what every "
                       "operation of the group waits for after it is applied",
                       metrics::LatencyBuckets(), {{"synced", "true"}}),
        r.GetHistogram("tern_queue_group_write_seconds", "", metrics::LatencyBuckets(), {{"synced", "false"}}),
    };
  }();
  return *m;
}

// Finds the batch's last write of one key: the truth a cached read is
// checked against (verify_record_cache). Linear in the batch: tests only.
class LastWrite : public rocksdb::WriteBatch::Handler {
 public:
  LastWrite(uint32_t cf, absl::string_view key) : cf_(cf), key_(key) {}
  rocksdb::Status PutCF(uint32_t cf, const rocksdb::Slice& key, const rocksdb::Slice& value) override {
    if (cf == cf_ && absl::string_view(key.data(), key.size()) == key_) {
      found_ = true;
      deleted_ = false;
      value_.assign(value.data(), value.size());
    }
    return rocksdb::Status::OK();
  }
  rocksdb::Status DeleteCF(uint32_t cf, const rocksdb::Slice& key) override {
    if (cf == cf_ && absl::string_view(key.data(), key.size()) == key_) {
      found_ = true;
      deleted_ = true;
      value_.clear();
    }
    return rocksdb::Status::OK();
  }
  bool found_ = false;
  bool deleted_ = false;
  std::string value_;

 private:
  uint32_t cf_;
  absl::string_view key_;
};

void DeleteIndex(void* batch, void* /*unused*/) { delete static_cast<rocksdb::WriteBatchWithIndex*>(batch); }

}  // namespace

rocksdb::Status Txn::Get(rocksdb::ColumnFamilyHandle* cf, absl::string_view key, std::string* value) {
  const rocksdb::Slice k(key.data(), key.size());
  if (!Cached(cf)) {
    return batch_->GetFromBatchAndDB(db_, rocksdb::ReadOptions(), cf, k, value);
  }
  rocksdb::Status s;
  if (const RecordCache::Entry* e = cache_->Lookup(cf->GetID(), key)) {
    ++cache_hits_;
    if (e->deleted) {
      s = rocksdb::Status::NotFound();
    } else {
      value->assign(e->value);
    }
  } else {
    ++cache_misses_;
    s = db_->Get(rocksdb::ReadOptions(), cf, k, value);
    if (s.ok()) {
      cache_->StoreRead(cf->GetID(), key, *value);
    }
  }
  if (verify_cache_) {
    Verify(cf, key, s, *value);
  }
  return s;
}

void Txn::Verify(rocksdb::ColumnFamilyHandle* cf, absl::string_view key, const rocksdb::Status& s,
                 const std::string& value) {
  LastWrite last(cf->GetID(), key);
  rocksdb::Status scan = batch_->GetWriteBatch()->Iterate(&last);
  std::string truth;
  rocksdb::Status truth_status;
  if (last.found_) {
    truth_status = last.deleted_ ? rocksdb::Status::NotFound() : rocksdb::Status::OK();
    truth = last.value_;
  } else {
    truth_status = db_->Get(rocksdb::ReadOptions(), cf, rocksdb::Slice(key.data(), key.size()), &truth);
  }
  const bool same = scan.ok() && truth_status.code() == s.code() && (!s.ok() || truth == value);
  if (!same) {
    log::Event(log::Level::kError, "record_cache_incoherent",
               {{"cf", cf->GetName()},
                {"key", std::string(key)},
                {"read", s.ToString()},
                {"truth", truth_status.ToString()}});
    std::abort();
  }
}

void Txn::Put(rocksdb::ColumnFamilyHandle* cf, absl::string_view key, absl::string_view value) {
  const rocksdb::Slice k(key.data(), key.size());
  const rocksdb::Slice v(value.data(), value.size());
  // Put only fails for keys/values over 4 GiB, which the queue's size limits
  // rule out.
  if (Cached(cf)) {
    // Reads find it in the cache: the batch's index need not know it.
    (void)batch_->GetWriteBatch()->Put(cf, k, v);
    cache_->Write(cf->GetID(), key, value, cache_undo_);
  } else {
    (void)batch_->Put(cf, k, v);
  }
}

void Txn::Delete(rocksdb::ColumnFamilyHandle* cf, absl::string_view key) {
  const rocksdb::Slice k(key.data(), key.size());
  if (Cached(cf)) {
    (void)batch_->GetWriteBatch()->Delete(cf, k);
    cache_->Write(cf->GetID(), key, std::nullopt, cache_undo_);
  } else {
    (void)batch_->Delete(cf, k);
  }
}

void Txn::PutUnindexed(rocksdb::ColumnFamilyHandle* cf, absl::string_view key, absl::string_view value) {
  if (Cached(cf)) {
    Put(cf, key, value);  // already unindexed, and visible through the cache
    return;
  }
  // WriteBatchWithIndex::RollbackToSavePoint rolls back the underlying batch
  // and rebuilds the index from it, so entries added here roll back too.
  (void)batch_->GetWriteBatch()->Put(cf, rocksdb::Slice(key.data(), key.size()),
                                     rocksdb::Slice(value.data(), value.size()));
}

std::unique_ptr<rocksdb::Iterator> Txn::NewIterator(rocksdb::ColumnFamilyHandle* cf,
                                                    const rocksdb::Slice* upper_bound,
                                                    const rocksdb::Slice* lower_bound) {
  rocksdb::ReadOptions options;
  options.iterate_upper_bound = upper_bound;
  options.iterate_lower_bound = lower_bound;
  if (!Cached(cf)) {
    return std::unique_ptr<rocksdb::Iterator>(batch_->NewIteratorWithBase(cf, db_->NewIterator(options, cf)));
  }
  // The group's writes of this column family are in the cache, not in the
  // batch's index: index them here, for this iterator only (admin actions
  // and Stats scan these column families; leases and reports never do).
  auto* index = new rocksdb::WriteBatchWithIndex(rocksdb::BytewiseComparator(), 0, /*overwrite_key=*/true);
  cache_->ForEachWritten(cf->GetID(), [&](const std::string& key, const RecordCache::Entry& e) {
    const rocksdb::Slice k(key);
    if ((lower_bound != nullptr && k.compare(*lower_bound) < 0) ||
        (upper_bound != nullptr && k.compare(*upper_bound) >= 0)) {
      return;
    }
    if (e.deleted) {
      (void)index->Delete(cf, key);
    } else {
      (void)index->Put(cf, key, e.value);
    }
  });
  std::unique_ptr<rocksdb::Iterator> it(index->NewIteratorWithBase(cf, db_->NewIterator(options, cf)));
  // Runs after the iterator's own members (which point into the index) are
  // gone: Cleanable is its base class.
  it->RegisterCleanup(&DeleteIndex, index, nullptr);
  return it;
}

void Txn::OnUndo(absl::AnyInvocable<void()> undo) { undo_.push_back(std::move(undo)); }

void Txn::OnCommit(absl::AnyInvocable<void()> effect) { commit_.push_back(std::move(effect)); }

absl::Status StorageError(const rocksdb::Status& s, absl::string_view what) {
  const std::string message = absl::StrCat("queue storage: ", what, ": ", s.ToString());
  if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kNoSpace) {
    return absl::ResourceExhaustedError(message);
  }
  return absl::UnavailableError(message);
}

GroupCommitter::GroupCommitter(rocksdb::DB* db, Options options)
    : db_(db),
      options_(std::move(options)),
      batch_(rocksdb::BytewiseComparator(), 0, /*overwrite_key=*/true),
      cache_(MakeRecordCache(options_)),
      next_tick_(SteadyClock::now() + options_.tick_interval),
      thread_([this] { Run(); }) {}

GroupCommitter::~GroupCommitter() { Stop(); }

RecordCache GroupCommitter::MakeRecordCache(const Options& options) {
  RecordCache cache(options.record_cache_bytes);
  for (rocksdb::ColumnFamilyHandle* cf : options.cached_column_families) {
    cache.AddColumnFamily(cf->GetID());
  }
  return cache;
}

namespace {
// The committer whose writer role the current thread holds, if any.
thread_local const GroupCommitter* tls_writing = nullptr;
}  // namespace

bool GroupCommitter::HoldsWriterRole() const { return tls_writing == this; }

void GroupCommitter::Submit(GroupOp op, bool lead) {
  std::vector<GroupOp> ops;
  ops.push_back(std::move(op));
  SubmitAll(std::move(ops), lead);
}

void GroupCommitter::SubmitAll(std::vector<GroupOp> ops, bool lead) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      for (GroupOp& op : ops) {
        pending_.push_back(std::move(op));
      }
      // A caller that already holds the role (an operation's completion
      // submitting more) only queues: its current run takes them.
      if (!lead || writing_) {
        return;
      }
      writing_ = true;
      ops.clear();
    }
  }
  if (ops.empty()) {
    Metrics().led.Inc(WriteGroups(kLeaderGroups));
    return;
  }
  for (GroupOp& op : ops) {
    op.done(absl::UnavailableError("queue is shutting down"));
  }
}

void GroupCommitter::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  // From inside the role (an operation, a completion, the tick) joining
  // would wait for itself; the committer's thread only calls out from there.
  if (thread_.joinable() && !HoldsWriterRole()) {
    thread_.join();
  }
}

int GroupCommitter::WriteGroups(int max_groups) {
  tls_writing = this;
  // The tick runs on whichever thread holds the role when it is due, so that
  // callers leading one group after another cannot starve it.
  const auto now = SteadyClock::now();
  if (now >= next_tick_.load(std::memory_order_relaxed)) {
    if (options_.on_tick) {
      options_.on_tick();
    }
    next_tick_.store(SteadyClock::now() + options_.tick_interval, std::memory_order_relaxed);
  }
  std::deque<GroupOp> leftover;  // taken but not fitted into the last group
  int group = 0;
  for (; group < max_groups; ++group) {
    std::vector<GroupOp> ops;
    {
      absl::MutexLock lock(&mu_);
      while (ops.size() < options_.max_group_ops && !leftover.empty()) {
        ops.push_back(std::move(leftover.front()));
        leftover.pop_front();
      }
      while (ops.size() < options_.max_group_ops && !pending_.empty()) {
        ops.push_back(std::move(pending_.front()));
        pending_.pop_front();
      }
    }
    if (ops.empty()) {
      break;
    }
    CommitGroup(ops, leftover);
  }
  tls_writing = nullptr;
  absl::MutexLock lock(&mu_);
  // Operations that did not fit go first next time, still in order; the
  // writer thread wakes for them (and for anything else left) as soon as
  // the role is free.
  while (!leftover.empty()) {
    pending_.push_front(std::move(leftover.back()));
    leftover.pop_back();
  }
  writing_ = false;
  return group;
}

void GroupCommitter::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !writing_ && (!pending_.empty() || stopping_);
      };
      auto free = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !writing_; };
      const auto wait = next_tick_.load(std::memory_order_relaxed) - SteadyClock::now();
      if (wait > SteadyClock::duration::zero()) {
        mu_.AwaitWithTimeout(absl::Condition(&work),
                             absl::FromChrono(std::chrono::duration_cast<std::chrono::microseconds>(wait)));
      } else {
        // The tick is due: take the role when it is free (a caller holding
        // it may run the tick first; then this turn finds little to do).
        mu_.Await(absl::Condition(&free));
      }
      if (writing_) {
        continue;  // timed out while a caller writes: see again whether the tick is due
      }
      if (stopping_ && pending_.empty()) {
        break;
      }
      writing_ = true;
    }
    // One group per turn: a caller that finds the role free in between leads
    // the next one itself.
    WriteGroups(1);
  }
}

void GroupCommitter::CommitGroup(std::vector<GroupOp>& ops, std::deque<GroupOp>& leftover) {
  batch_.Clear();
  std::vector<absl::Status> results(ops.size());
  std::vector<std::vector<absl::AnyInvocable<void()>>> effects(ops.size());
  std::vector<absl::AnyInvocable<void()>> group_undo;
  size_t applied = 0;
  bool sync = false;  // some applied operation needs its write synced
  uint64_t cache_hits = 0;
  uint64_t cache_misses = 0;
  for (; applied < ops.size(); ++applied) {
    if (applied > 0 && batch_.GetWriteBatch()->GetDataSize() >= options_.max_group_bytes) {
      break;
    }
    batch_.SetSavePoint();
    Txn txn(db_, &batch_, options_.cached_column_families.empty() ? nullptr : &cache_,
            options_.verify_record_cache);
    absl::Status s = ops[applied].apply(txn);
    cache_hits += txn.cache_hits_;
    cache_misses += txn.cache_misses_;
    if (s.ok()) {
      sync = sync || ops[applied].durable;
      (void)batch_.PopSavePoint();
      for (auto& u : txn.undo_) {
        group_undo.push_back(std::move(u));
      }
      effects[applied] = std::move(txn.commit_);
    } else {
      for (auto it = txn.undo_.rbegin(); it != txn.undo_.rend(); ++it) {
        (*it)();
      }
      (void)batch_.RollbackToSavePoint();
      cache_.Undo(txn.cache_undo_);
      results[applied] = std::move(s);
    }
  }
  // Operations that did not fit wait for the next group, still in order.
  for (size_t i = ops.size(); i > applied; --i) {
    leftover.push_front(std::move(ops[i - 1]));
  }
  ops.resize(applied);

  rocksdb::Status ws;
  const bool write = batch_.GetWriteBatch()->Count() > 0;
  if (needs_resume_ && batch_.GetWriteBatch()->Count() > 0) {
    rocksdb::Status rs = db_->Resume();
    if (rs.ok()) {
      needs_resume_ = false;
      log::Event(log::Level::kNotice, "storage_resumed");
    } else {
      log::Event(log::Level::kWarn, "storage_resume_failed", {{"error", rs.ToString()}});
    }
  }
  if (write) {
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    const auto started = SteadyClock::now();
    ws = db_->Write(wo, batch_.GetWriteBatch());
    (sync ? Metrics().synced_write_seconds : Metrics().unsynced_write_seconds).ObserveSince(started);
  }
  batch_.Clear();
  if (ws.ok()) {
    cache_.GroupWritten();
  } else {
    // The cache holds the group's writes, which are not in the database.
    cache_.Clear();
  }
  Metrics().cache_hits.Inc(cache_hits);
  Metrics().cache_misses.Inc(cache_misses);
  Metrics().cache_bytes.Set(static_cast<int64_t>(cache_.bytes()));
  if (!ws.ok()) {
    for (auto it = group_undo.rbegin(); it != group_undo.rend(); ++it) {
      (*it)();
    }
    needs_resume_ = true;
    const absl::Status err = StorageError(ws, "synced write failed");
    Metrics().write_errors.Inc();
    log::Event(log::Level::kError, "commit_failed",
               {{"ops", absl::StrCat(ops.size())}, {"error", err.message()}});
    for (size_t i = 0; i < ops.size(); ++i) {
      if (results[i].ok()) {
        results[i] = err;
      }
    }
  } else {
    Metrics().commits.Inc();
    if (write && sync) {
      Metrics().syncs.Inc();
    }
    Metrics().ops.Inc(ops.size());
    Metrics().last_group_ops.Set(static_cast<int64_t>(ops.size()));
    for (auto& list : effects) {
      for (auto& effect : list) {
        effect();
      }
    }
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    ops[i].done(results[i]);
  }
}

}  // namespace tern::queue
