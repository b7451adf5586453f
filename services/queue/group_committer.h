// File: group_committer.h
//
// GroupCommitter: the queue's single writer. Every state change of the queue
// (enqueue, lease, report, ack, flush) is an operation submitted here; one
// thread at a time (the one holding the writer role, below) applies them in
// submission order and commits them in groups.
//
// Design. A durable queue pays one fsync per commit, and an fsync costs
// milliseconds, so committing each RPC on its own caps the queue at a few
// hundred operations per second however fast everything else is. Postfix and
// every database with a write-ahead log answer this the same way: let the
// requests that arrive while one fsync is in progress share the next one.
// Here that is literal: the writer takes every pending operation (up
// to a cap), applies each into ONE rocksdb::WriteBatchWithIndex, issues ONE
// db->Write(sync=true), and only then runs the operations' completions, which
// send the gRPC replies. Under load a group holds many operations and the
// cost of the fsync is shared; when idle a group is a single operation and
// nothing waits for company (no timer, no added latency).
//
// The single writer is also the queue's concurrency control. Operations
// never race: an operation reads the state that all earlier operations left,
// including those earlier in the same, not yet committed, group, because reads
// go through the batch's index first (GetFromBatchAndDB), or for delivery,
// message and bounce records through the record cache, which holds the
// group's writes of those (record_cache.h). So "lease this job"
// and "report on this job" need no locks and no retry loops, and the in-memory
// scheduling state (ready window, lease table, counters) is owned by the
// writer role alone.
//
// Failure atomicity. Each operation runs between batch save points: an
// operation that returns an error is rolled back (its writes vanish from the
// batch, its undo actions restore the in-memory state) and only it fails. If
// the group's write fails (disk full, I/O error) nothing of the group is in
// the database, every in-memory change of the group is undone in reverse
// order, and every operation in the group fails with RESOURCE_EXHAUSTED (no
// space) or UNAVAILABLE, both retryable. A reply is therefore never sent for
// a state that is not durable, and nothing is ever half-applied.
//
// Who writes. One thread at a time holds the writer role. The committer's
// own thread takes it when operations wait and nobody holds it, or when the
// tick is due; whoever holds the role runs a due tick first, so a steady
// stream of leading callers cannot starve it. A caller may also lead
// (Submit(op, /*lead=*/true)): if the role is free, the calling thread takes
// it and commits the group itself, its own operation and whatever else
// waits, before returning. The RPC handlers of
// the hot path lead: handing each call to the writer thread cost a thread
// wake-up and, on a busy machine, a wait for a CPU before the group could
// even start (the queue made 4.5 context switches per message). A leader
// commits at most kLeaderGroups groups and then leaves the rest to the
// writer thread, so no caller is held long by other callers' work.
//
// Thread-safety: Submit() may be called from any thread. Everything an
// operation touches (Txn, and whatever its closures capture) runs on the
// thread holding the writer role, one at a time (the role is taken and given
// back under a mutex, which orders each holder's work after the previous
// one's). Completions run there too and must not block. Only lead from a
// thread that holds no lock a completion might take.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "rocksdb/db.h"
#include "rocksdb/utilities/write_batch_with_index.h"
#include "services/queue/record_cache.h"

namespace tern::queue {

// One operation's view of the current group. Valid only inside the
// operation's `apply` call, on the thread holding the writer role.
class Txn {
 public:
  // Reads `key` as the batch so far would leave it (NotFound if absent).
  // For a column family the record cache covers, from the cache, or the
  // database when the cache does not hold the key (the batch's writes of
  // those column families are all in the cache, and not in its index);
  // otherwise through the batch's index and the database.
  rocksdb::Status Get(rocksdb::ColumnFamilyHandle* cf, absl::string_view key, std::string* value);
  void Put(rocksdb::ColumnFamilyHandle* cf, absl::string_view key, absl::string_view value);
  void Delete(rocksdb::ColumnFamilyHandle* cf, absl::string_view key);
  // Puts a key that no operation ever reads back through a Txn (the event
  // log, written once and read only from the database). It goes into the
  // group's write but not into the batch's index: indexing costs two
  // skip-list searches per key, a quarter of the writer's work in the
  // Lease+Report bench. A rollback still removes it (save points cover the
  // whole batch); Get and NewIterator do not see it until the group commits.
  // In a column family the record cache covers it is an ordinary Put.
  void PutUnindexed(rocksdb::ColumnFamilyHandle* cf, absl::string_view key, absl::string_view value);
  // An iterator over `cf` as the batch so far would leave it (the batch's
  // writes merged over the database). Valid only inside this operation.
  //
  // `upper_bound` (optional, must outlive the iterator) stops the database
  // side at that key. Give it for every bounded scan: without it RocksDB
  // walks every deletion marker past the last live key in range before it
  // can say "no next key", and a queue deletes keys all the time (a
  // profile showed the lease scan spending most of the queue's CPU there).
  // Keys written in the batch itself are not bounded: still check the bound
  // while iterating. `lower_bound` (optional, likewise) is where the scan
  // starts at the earliest; give both for a prefix scan of a column family
  // the record cache covers, whose iterator indexes the group's writes in
  // that range for itself (all of them without bounds).
  std::unique_ptr<rocksdb::Iterator> NewIterator(rocksdb::ColumnFamilyHandle* cf,
                                                 const rocksdb::Slice* upper_bound = nullptr,
                                                 const rocksdb::Slice* lower_bound = nullptr);

  // Registers the inverse of an in-memory change this operation just made; it
  // runs if the operation or its group fails (in reverse registration order).
  void OnUndo(absl::AnyInvocable<void()> undo);
  // Registers an effect for after a successful commit (log lines, waking
  // long polls): things that must not happen for a write that did not last.
  void OnCommit(absl::AnyInvocable<void()> effect);

  rocksdb::DB* db() const { return db_; }

 private:
  friend class GroupCommitter;
  Txn(rocksdb::DB* db, rocksdb::WriteBatchWithIndex* batch, RecordCache* cache, bool verify_cache)
      : db_(db), batch_(batch), cache_(cache), verify_cache_(verify_cache) {}
  bool Cached(rocksdb::ColumnFamilyHandle* cf) const { return cache_ != nullptr && cache_->Caches(cf->GetID()); }
  // Aborts the process if what a read of a cached column family returned
  // (`s`, `value`) differs from the truth: the batch's last write of the
  // key, else the database (GroupCommitter::Options::verify_record_cache).
  void Verify(rocksdb::ColumnFamilyHandle* cf, absl::string_view key, const rocksdb::Status& s,
              const std::string& value);

  rocksdb::DB* db_;
  rocksdb::WriteBatchWithIndex* batch_;
  RecordCache* cache_;  // null: no column family is cached
  bool verify_cache_;
  // This operation's writes to cached column families: taken back if it
  // fails.
  RecordCache::UndoLog cache_undo_;
  uint64_t cache_hits_ = 0;
  uint64_t cache_misses_ = 0;
  std::vector<absl::AnyInvocable<void()>> undo_;
  std::vector<absl::AnyInvocable<void()>> commit_;
};

struct GroupOp {
  // Applies the operation. A non-OK result rolls this operation back.
  absl::AnyInvocable<absl::Status(Txn&)> apply;
  // Called once by the writer after the group's commit: OK, the
  // operation's own error, or the commit error.
  absl::AnyInvocable<void(const absl::Status&)> done;
  // Whether the reply must wait for the write to be synced. False only for
  // operations whose effect may vanish in a power loss without harm, because
  // recovery would redo or void it anyway: a Lease (every lease outstanding
  // at a restart is void, and the Progress call that gates DATA is durable
  // and, the WAL being one ordered log, makes the lease durable with it).
  // A group made only of such operations is written without an fsync (still
  // in the operating system's cache, so a crash of the queue process alone
  // loses nothing), which in the end-to-end bench saved a third of the syncs.
  bool durable = true;
};

class GroupCommitter {
 public:
  struct Options {
    // How often `on_tick` runs (on whichever thread holds the writer role
    // when it is due). Default: 250 ms.
    std::chrono::milliseconds tick_interval{250};
    // Periodic work of the writer (lease expiry, window refill). It
    // may Submit() operations; they join the next group.
    std::function<void()> on_tick;
    // Caps on one group. Default: 1024 operations, 64 MiB of batch data.
    size_t max_group_ops = 1024;
    size_t max_group_bytes = 64u << 20;
    // Column families whose records the writer keeps in memory: the group's
    // writes of them (kept out of the batch's index) and recent values, for
    // reads (record_cache.h). Default: none.
    std::vector<rocksdb::ColumnFamilyHandle*> cached_column_families;
    // Most bytes of recent values that cache holds (the group being built
    // is held whatever this says). Default: 32 MiB.
    size_t record_cache_bytes = 32u << 20;
    // Also check every read of those column families against the batch and
    // the database, and abort the process if they differ: for tests.
    // Default: false.
    bool verify_record_cache = false;
  };

  // `db` must outlive this object. The thread starts at once.
  GroupCommitter(rocksdb::DB* db, Options options);
  // Stops and joins (see Stop).
  ~GroupCommitter();

  GroupCommitter(const GroupCommitter&) = delete;
  GroupCommitter& operator=(const GroupCommitter&) = delete;

  // Queues an operation. After Stop() began, `done` is called at once (on
  // the calling thread) with UNAVAILABLE and `apply` never runs. With
  // `lead`, commits on the calling thread if no thread holds the writer role
  // (see above); `done` has then run before Submit returns.
  void Submit(GroupOp op, bool lead = false);
  // Queues operations together (never split by the writer thread taking the
  // first alone), then leads as Submit does.
  void SubmitAll(std::vector<GroupOp> ops, bool lead);

  // Lets every operation already submitted complete, then joins the thread.
  // Idempotent.
  void Stop();

  // Whether the calling thread holds the writer role (inside an operation,
  // a completion or the tick).
  bool HoldsWriterRole() const;

  // Groups a leading caller commits at most before it leaves what still
  // waits to the writer thread.
  static constexpr int kLeaderGroups = 3;

 private:
  void Run();
  // Commits up to `max_groups` groups of what waits and returns how many it
  // committed. The caller holds the role on entry; it is given back on return.
  int WriteGroups(int max_groups);
  void CommitGroup(std::vector<GroupOp>& ops, std::deque<GroupOp>& leftover);
  static RecordCache MakeRecordCache(const Options& options);

  rocksdb::DB* const db_;
  const Options options_;
  rocksdb::WriteBatchWithIndex batch_;
  RecordCache cache_;  // writer role only

  absl::Mutex mu_;
  std::deque<GroupOp> pending_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // some thread holds the writer role

  using SteadyClock = std::chrono::steady_clock;
  // When the tick is next due. Written by the role holder, read by the
  // writer thread to know how long it may sleep.
  std::atomic<SteadyClock::time_point> next_tick_;

  // Set after a failed write: RocksDB then refuses every write (its
  // background error state) until Resume(), which the next group tries, so
  // the queue takes mail again by itself once the disk has room.
  bool needs_resume_ = false;  // writer role only

  std::thread thread_;
};

// RESOURCE_EXHAUSTED for "no space", UNAVAILABLE for every other storage
// failure: both tell the caller to retry later, and ingest to answer 451/452.
absl::Status StorageError(const rocksdb::Status& s, absl::string_view what);

}  // namespace tern::queue
