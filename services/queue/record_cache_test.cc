#include "services/queue/record_cache.h"

#include <string>

#include "gtest/gtest.h"

namespace tern::queue {
namespace {

TEST(RecordCacheTest, HoldsTheLastValueStoredUntilErased) {
  RecordCache cache(1 << 20);
  cache.AddColumnFamily(3);
  EXPECT_EQ(cache.Lookup(3, "d1"), nullptr);
  cache.Store(3, "d1", "first");
  cache.Store(3, "d1", "second");
  ASSERT_NE(cache.Lookup(3, "d1"), nullptr);
  EXPECT_EQ(*cache.Lookup(3, "d1"), "second");
  EXPECT_EQ(cache.entries(), 1u);
  cache.Erase(3, "d1");
  EXPECT_EQ(cache.Lookup(3, "d1"), nullptr);
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
}

TEST(RecordCacheTest, KeysOfColumnFamiliesItDoesNotCacheAreNeverHeld) {
  RecordCache cache(1 << 20);
  cache.AddColumnFamily(3);
  EXPECT_TRUE(cache.Caches(3));
  EXPECT_FALSE(cache.Caches(4));
  cache.Store(4, "k", "v");
  EXPECT_EQ(cache.Lookup(4, "k"), nullptr);
  EXPECT_EQ(cache.entries(), 0u);
  // The same key in two cached column families are two entries.
  cache.AddColumnFamily(5);
  cache.Store(3, "k", "three");
  cache.Store(5, "k", "five");
  EXPECT_EQ(*cache.Lookup(3, "k"), "three");
  EXPECT_EQ(*cache.Lookup(5, "k"), "five");
}

TEST(RecordCacheTest, NewKeysThatDoNotFitAreNotStoredAndOverflowingUpdatesDropTheKey) {
  // Room for two small entries, not three.
  RecordCache cache(2 * (2 + 10 + 96) + 50);
  cache.AddColumnFamily(1);
  cache.Store(1, "k1", std::string(10, 'a'));
  cache.Store(1, "k2", std::string(10, 'b'));
  cache.Store(1, "k3", std::string(10, 'c'));
  EXPECT_NE(cache.Lookup(1, "k1"), nullptr);
  EXPECT_NE(cache.Lookup(1, "k2"), nullptr);
  EXPECT_EQ(cache.Lookup(1, "k3"), nullptr);
  // A larger value for k2 no longer fits: k2 must not keep its old value.
  cache.Store(1, "k2", std::string(100, 'B'));
  EXPECT_EQ(cache.Lookup(1, "k2"), nullptr);
  EXPECT_EQ(*cache.Lookup(1, "k1"), std::string(10, 'a'));
  // The room k2 left is used again.
  cache.Store(1, "k3", std::string(10, 'c'));
  EXPECT_NE(cache.Lookup(1, "k3"), nullptr);
  cache.Clear();
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
  EXPECT_EQ(cache.Lookup(1, "k1"), nullptr);
}

}  // namespace
}  // namespace tern::queue
