// File: record_cache.h
//
// RecordCache: the writer's copy of the current value of recently written
// keys in a few column families (deliveries, messages, bounces).
//
// Why. Every job is read back soon after it was written: a lease reads the
// delivery and message an enqueue just wrote, Progress and Report read them
// again. Each such read through the batch and RocksDB's memtables costs two
// skip-list searches (the batch's index, then every memtable), about a
// seventh of the queue's instructions per message in the 2 KB bench. A hash
// lookup here answers most of them.
//
// Coherence. The cache holds, for each key it has, exactly what a read
// through the batch and the database would return at that moment: Txn (the
// only writer once the queue is open) stores every Put and erases every
// Delete of a cached column family as the operation makes it, so operations
// later in the same group see earlier ones' writes as they would through the
// batch's index. What is taken back is taken out: an operation that fails
// has the keys it wrote erased; a group whose write fails clears the cache.
// A key not in the cache is read the usual way (and stored, when there is
// room), so the cache may miss, never be wrong.
//
// Size. At most `max_bytes` of keys, values and bookkeeping; a new key that
// does not fit is not stored (its reads go to RocksDB). Keys leave when they
// are deleted, which in a flowing queue is when the message is done, so the
// cache holds roughly the messages in flight.
//
// Thread-safety: none; used only by the thread holding the writer role.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"

namespace tern::queue {

class RecordCache {
 public:
  explicit RecordCache(size_t max_bytes) : max_bytes_(max_bytes) {}

  // Marks a column family (by RocksDB id) as cached. Before any other call.
  void AddColumnFamily(uint32_t cf);
  bool Caches(uint32_t cf) const { return Find(cf) != nullptr; }

  // The value held for `key`, or nullptr when the cache does not know it.
  const std::string* Lookup(uint32_t cf, absl::string_view key) const;
  // Records `value` as the key's current value. A key that is new and does
  // not fit is not stored; a stored key whose new value makes the cache
  // overflow is dropped (never left holding its old value).
  void Store(uint32_t cf, absl::string_view key, absl::string_view value);
  void Erase(uint32_t cf, absl::string_view key);
  void Clear();

  size_t bytes() const { return bytes_; }
  size_t entries() const;

 private:
  using Map = absl::flat_hash_map<std::string, std::string>;
  // What an entry costs besides its key and value: the slot and two string
  // headers, and allocator rounding.
  static constexpr size_t kEntryOverhead = 96;
  static size_t Cost(size_t key_size, size_t value_size) { return key_size + value_size + kEntryOverhead; }

  Map* Find(uint32_t cf);
  const Map* Find(uint32_t cf) const;

  const size_t max_bytes_;
  size_t bytes_ = 0;
  // Few column families: a linear search beats hashing the id.
  std::vector<std::pair<uint32_t, Map>> maps_;
};

}  // namespace tern::queue
