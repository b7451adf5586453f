#include "services/queue/record_cache.h"

#include <string>

#include "gtest/gtest.h"

namespace tern::queue {
namespace {

std::string ValueOf(const RecordCache& cache, uint32_t cf, const std::string& key) {
  const RecordCache::Entry* e = cache.Lookup(cf, key);
  if (e == nullptr) {
    return "<not held>";
  }
  return e->deleted ? "<deleted>" : e->value;
}

TEST(RecordCacheTest, GroupWritesAreHeldUntilWrittenThenDeletionsLeave) {
  RecordCache cache(1 << 20);
  cache.AddColumnFamily(3);
  RecordCache::UndoLog undo;
  cache.Write(3, "d1", "first", undo);
  cache.Write(3, "d1", "second", undo);
  cache.Write(3, "d2", std::nullopt, undo);
  EXPECT_EQ(ValueOf(cache, 3, "d1"), "second");
  EXPECT_EQ(ValueOf(cache, 3, "d2"), "<deleted>");
  int written = 0;
  cache.ForEachWritten(3, [&](const std::string&, const RecordCache::Entry&) { ++written; });
  EXPECT_EQ(written, 2);
  cache.GroupWritten();
  EXPECT_EQ(ValueOf(cache, 3, "d1"), "second");
  EXPECT_FALSE(cache.Lookup(3, "d1")->written);
  EXPECT_EQ(ValueOf(cache, 3, "d2"), "<not held>");
  EXPECT_EQ(cache.entries(), 1u);
  written = 0;
  cache.ForEachWritten(3, [&](const std::string&, const RecordCache::Entry&) { ++written; });
  EXPECT_EQ(written, 0);
}

TEST(RecordCacheTest, UndoRestoresWhatTheOperationFoundNewestFirst) {
  RecordCache cache(1 << 20);
  cache.AddColumnFamily(3);
  cache.StoreRead(3, "read", "from-db");
  RecordCache::UndoLog earlier;
  cache.Write(3, "k", "earlier-op", earlier);
  RecordCache::UndoLog failing;
  cache.Write(3, "k", "one", failing);
  cache.Write(3, "k", "two", failing);
  cache.Write(3, "read", std::nullopt, failing);
  cache.Write(3, "new", "x", failing);
  const size_t bytes_before_undo = cache.bytes();
  cache.Undo(failing);
  EXPECT_LT(cache.bytes(), bytes_before_undo);
  EXPECT_EQ(ValueOf(cache, 3, "k"), "earlier-op");
  EXPECT_TRUE(cache.Lookup(3, "k")->written);
  EXPECT_EQ(ValueOf(cache, 3, "read"), "from-db");
  EXPECT_FALSE(cache.Lookup(3, "read")->written);
  EXPECT_EQ(ValueOf(cache, 3, "new"), "<not held>");
  cache.GroupWritten();
  EXPECT_EQ(ValueOf(cache, 3, "k"), "earlier-op");
  EXPECT_EQ(cache.entries(), 2u);
  cache.Clear();
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
}

TEST(RecordCacheTest, KeysOfColumnFamiliesItDoesNotCacheAreNeverHeld) {
  RecordCache cache(1 << 20);
  cache.AddColumnFamily(3);
  EXPECT_TRUE(cache.Caches(3));
  EXPECT_FALSE(cache.Caches(4));
  RecordCache::UndoLog undo;
  cache.StoreRead(4, "k", "v");
  cache.Write(4, "k", "v", undo);
  EXPECT_EQ(cache.Lookup(4, "k"), nullptr);
  EXPECT_EQ(cache.entries(), 0u);
  // The same key in two cached column families are two entries.
  cache.AddColumnFamily(5);
  cache.StoreRead(3, "k", "three");
  cache.StoreRead(5, "k", "five");
  EXPECT_EQ(ValueOf(cache, 3, "k"), "three");
  EXPECT_EQ(ValueOf(cache, 5, "k"), "five");
}

TEST(RecordCacheTest, ReadsAreKeptOnlyWithRoomButGroupWritesAlwaysUntilWritten) {
  // Room for two small entries, not three.
  RecordCache cache(2 * (2 + 10 + 96) + 50);
  cache.AddColumnFamily(1);
  cache.StoreRead(1, "k1", std::string(10, 'a'));
  cache.StoreRead(1, "k2", std::string(10, 'b'));
  cache.StoreRead(1, "k3", std::string(10, 'c'));
  EXPECT_EQ(ValueOf(cache, 1, "k3"), "<not held>");
  // A write must be held whatever the size: the batch's index does not have it.
  RecordCache::UndoLog undo;
  cache.Write(1, "k4", std::string(500, 'd'), undo);
  EXPECT_EQ(ValueOf(cache, 1, "k4"), std::string(500, 'd'));
  // Once in the database, what does not fit leaves; older reads stay.
  cache.GroupWritten();
  EXPECT_EQ(ValueOf(cache, 1, "k4"), "<not held>");
  EXPECT_EQ(ValueOf(cache, 1, "k1"), std::string(10, 'a'));
  EXPECT_EQ(ValueOf(cache, 1, "k2"), std::string(10, 'b'));
}

}  // namespace
}  // namespace tern::queue
