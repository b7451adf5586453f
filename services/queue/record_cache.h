// File: record_cache.h
//
// RecordCache: the writer's view of a few column families (deliveries,
// messages, bounces): every key the group being built has written, and the
// recent values of others.
//
// Why. Every job is read back soon after it was written: a lease reads the
// delivery and message an enqueue just wrote, Progress and Report read them
// again. Through the batch and RocksDB each such read costs two skip-list
// searches (the batch's index, then the memtables); keeping the batch's own
// writes of these column families here also spares the batch's index, which
// every indexed write pays for with two more searches. A hash lookup here
// does both jobs: in the 2 KB bench the queue's instructions per message
// fell from 432,000 to 370,000 with the reads answered here, and to 342,000
// with the index spared too (bench/README.md, session 24).
//
// What it holds, per key:
// - a *written* entry for every Put and Delete the current group has made
//   (a Delete as a deletion marker), until the group's write ends; these are
//   kept whatever the size, since the batch's index does not have them;
// - a *read* entry for a value that is in the database and not written by the
//   group (a read that missed, or a write of an earlier group), kept while
//   there is room (`max_bytes`).
// So for a key it holds, it answers what a read through the batch and the
// database would; for a key it does not hold, the database alone has the
// answer. Nothing here outlives what it mirrors: an operation that fails has
// its writes taken back (Undo, with the batch's rollback to its save point);
// a group whose write fails clears the cache; after a successful write the
// written entries become read entries, or leave if they were deletions or do
// not fit. The cache is never the only copy of anything.
//
// Thread-safety: none; used only by the thread holding the writer role.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"

namespace tern::queue {

class RecordCache {
 public:
  struct Entry {
    std::string value;
    bool deleted = false;  // a deletion by the current group
    bool written = false;  // written by the current group
  };
  // What one operation changed, to take back if it fails.
  struct UndoLog {
    struct Change {
      uint32_t cf;
      std::string key;
      std::optional<Entry> before;  // none: the key was not held
    };
    std::vector<Change> changes;
  };

  explicit RecordCache(size_t max_bytes) : max_bytes_(max_bytes) {}

  // Marks a column family (by RocksDB id) as cached. Before any other call.
  void AddColumnFamily(uint32_t cf);
  bool Caches(uint32_t cf) const { return Find(cf) != nullptr; }

  // The entry held for `key`, or nullptr: then the database has the answer.
  const Entry* Lookup(uint32_t cf, absl::string_view key) const;
  // A value just read from the database, for a key the cache does not hold:
  // kept if there is room.
  void StoreRead(uint32_t cf, absl::string_view key, absl::string_view value);
  // A Put (`value`) or Delete (nullopt) of the group being built. Always
  // kept until GroupWritten() or Clear(); what it replaced goes to `undo`.
  void Write(uint32_t cf, absl::string_view key, std::optional<absl::string_view> value, UndoLog& undo);
  // Takes back an operation's writes, newest first.
  void Undo(UndoLog& undo);
  // The group's batch is in the database: deletions leave, written values
  // become read entries (and leave if the cache is over its size).
  void GroupWritten();
  // The group's write failed, or anything else that leaves the cache unsure.
  void Clear();
  // Calls f(key, entry) for each key the group being built wrote in `cf`
  // (a key may come more than once).
  template <typename F>
  void ForEachWritten(uint32_t cf, F&& f) const {
    const Family* family = Find(cf);
    if (family == nullptr) {
      return;
    }
    for (const std::string& key : family->written) {
      auto it = family->map.find(key);
      if (it != family->map.end() && it->second.written) {
        f(key, it->second);
      }
    }
  }

  size_t bytes() const { return bytes_; }
  size_t entries() const;

 private:
  using Map = absl::flat_hash_map<std::string, Entry>;
  // What an entry costs besides its key and value: the slot, two string
  // headers and the flags, and allocator rounding.
  static constexpr size_t kEntryOverhead = 96;
  static size_t Cost(size_t key_size, const Entry& e) { return key_size + e.value.size() + kEntryOverhead; }

  struct Family {
    uint32_t cf;
    Map map;
    // Keys the group being built wrote (when each first became written).
    std::vector<std::string> written;
  };
  Family* Find(uint32_t cf);
  const Family* Find(uint32_t cf) const;

  const size_t max_bytes_;
  size_t bytes_ = 0;
  // Few column families: a linear search beats hashing the id.
  std::vector<Family> families_;
};

}  // namespace tern::queue
