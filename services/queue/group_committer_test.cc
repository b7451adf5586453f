#include "services/queue/group_committer.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/metrics/metrics.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"

namespace tern::queue {
namespace {

// Makes WAL appends and syncs fail with "no space" while `fail` is set.
class WalFailingFileSystem : public rocksdb::FileSystemWrapper {
 public:
  explicit WalFailingFileSystem(const std::shared_ptr<rocksdb::FileSystem>& target) : FileSystemWrapper(target) {}
  const char* Name() const override { return "WalFailingFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewWritableFile(name, options, result, dbg);
    if (s.ok() && name.size() > 4 && name.compare(name.size() - 4, 4, ".log") == 0) {
      *result = std::make_unique<File>(std::move(*result), &fail);
    }
    return s;
  }

  std::atomic<bool> fail{false};

 private:
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile>&& target, std::atomic<bool>* fail)
        : FSWritableFileOwnerWrapper(std::move(target)), fail_(fail) {}
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override {
      return *fail_ ? Injected() : target()->Append(data, options, dbg);
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                             const rocksdb::DataVerificationInfo& info, rocksdb::IODebugContext* dbg) override {
      return *fail_ ? Injected() : target()->Append(data, options, info, dbg);
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& options, rocksdb::IODebugContext* dbg) override {
      return *fail_ ? Injected() : target()->Sync(options, dbg);
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options, rocksdb::IODebugContext* dbg) override {
      return *fail_ ? Injected() : target()->Fsync(options, dbg);
    }

   private:
    static rocksdb::IOStatus Injected() { return rocksdb::IOStatus::NoSpace("injected"); }
    std::atomic<bool>* fail_;
  };
};

class GroupCommitterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = std::filesystem::path(::testing::TempDir()) / absl::StrCat("group_committer_test_", getpid(), "_", rd());
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir_.string(), &db).ok());
    db_.reset(db);
    cf_ = db_->DefaultColumnFamily();
    committer_ = std::make_unique<GroupCommitter>(db_.get(), GroupCommitter::Options{});
  }
  void TearDown() override {
    committer_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Submits an op and returns a future for its completion status.
  std::future<absl::Status> Submit(absl::AnyInvocable<absl::Status(Txn&)> apply, bool durable = true) {
    auto promise = std::make_shared<std::promise<absl::Status>>();
    auto future = promise->get_future();
    committer_->Submit(
        GroupOp{std::move(apply), [promise](const absl::Status& s) { promise->set_value(s); }, durable});
    return future;
  }

  // Holds the writer thread inside an operation until the returned promise
  // is fulfilled, so that everything submitted meanwhile forms one group.
  std::shared_ptr<std::promise<void>> BlockWriter() {
    auto release = std::make_shared<std::promise<void>>();
    auto entered = std::make_shared<std::promise<void>>();
    auto released = release->get_future().share();
    Submit([entered, released](Txn&) {
      entered->set_value();
      released.wait();
      return absl::OkStatus();
    });
    entered->get_future().wait();
    return release;
  }

  // Reopens the database on a file system whose WAL writes can be made to
  // fail as a full disk would; `env` must outlive the database. Null if the
  // database did not open.
  std::shared_ptr<WalFailingFileSystem> ReopenOnFailingDisk(std::unique_ptr<rocksdb::Env>& env) {
    committer_.reset();
    db_.reset();
    auto fs = std::make_shared<WalFailingFileSystem>(rocksdb::FileSystem::Default());
    env = rocksdb::NewCompositeEnv(fs);
    rocksdb::Options options;
    options.env = env.get();
    rocksdb::DB* db = nullptr;
    if (!rocksdb::DB::Open(options, dir_.string(), &db).ok()) {
      return nullptr;
    }
    db_.reset(db);
    cf_ = db_->DefaultColumnFamily();
    return fs;
  }

  // Submits `apply` until its group is written (RocksDB's own recovery from
  // a failed write runs in the background; until it is done, writes keep
  // failing retryably), for at most 20 s. Returns the last result.
  absl::Status SubmitUntilWritable(std::function<absl::Status(Txn&)> apply) {
    absl::Status s;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    do {
      s = Submit(apply).get();
      if (!s.ok()) {
        EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    } while (!s.ok() && std::chrono::steady_clock::now() < give_up);
    return s;
  }

  std::string Value(const std::string& key) {
    std::string v;
    return db_->Get(rocksdb::ReadOptions(), key, &v).ok() ? v : "<none>";
  }

  std::filesystem::path dir_;
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyHandle* cf_ = nullptr;
  std::unique_ptr<GroupCommitter> committer_;
};

TEST_F(GroupCommitterTest, GroupOfOnlyNonDurableOpsIsWrittenWithoutSyncAndAnyDurableOpSyncsItsGroup) {
  auto& commits = metrics::Registry::Global().GetCounter("tern_queue_group_commits_total", "");
  auto& syncs = metrics::Registry::Global().GetCounter("tern_queue_wal_syncs_total", "");
  const uint64_t commits0 = commits.value();
  const uint64_t syncs0 = syncs.value();
  auto put = [this](std::string key) {
    return [this, key](Txn& txn) {
      txn.Put(cf_, key, "v");
      return absl::OkStatus();
    };
  };
  ASSERT_TRUE(Submit(put("lease-only"), /*durable=*/false).get().ok());
  EXPECT_EQ(Value("lease-only"), "v");  // written all the same
  EXPECT_EQ(commits.value(), commits0 + 1);
  EXPECT_EQ(syncs.value(), syncs0);

  // One durable operation makes the whole group synced.
  auto release = BlockWriter();
  auto a = Submit(put("mixed-lease"), /*durable=*/false);
  auto b = Submit(put("mixed-report"));
  release->set_value();
  ASSERT_TRUE(a.get().ok());
  ASSERT_TRUE(b.get().ok());
  EXPECT_EQ(syncs.value(), syncs0 + 1);

  // A durable operation that failed wrote nothing, so it needs no sync.
  const uint64_t syncs1 = syncs.value();
  release = BlockWriter();
  auto c = Submit(put("alone-lease"), /*durable=*/false);
  auto d = Submit([this](Txn& txn) {
    txn.Put(cf_, "rolled-back", "v");
    return absl::FailedPreconditionError("refused");
  });
  release->set_value();
  ASSERT_TRUE(c.get().ok());
  EXPECT_EQ(d.get().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Value("rolled-back"), "<none>");
  EXPECT_EQ(syncs.value(), syncs1);
}

TEST_F(GroupCommitterTest, OperationsInOneGroupSeeEarlierWritesAndShareOneCommit) {
  auto& commits = metrics::Registry::Global().GetCounter("tern_queue_group_commits_total", "");
  const uint64_t before = commits.value();
  auto release = BlockWriter();
  auto first = Submit([this](Txn& txn) {
    txn.Put(cf_, "k", "1");
    return absl::OkStatus();
  });
  std::string seen;
  auto second = Submit([this, &seen](Txn& txn) {
    EXPECT_TRUE(txn.Get(cf_, "k", &seen).ok());
    txn.Put(cf_, "k", seen + "2");
    return absl::OkStatus();
  });
  release->set_value();
  EXPECT_TRUE(first.get().ok());
  EXPECT_TRUE(second.get().ok());
  EXPECT_EQ(seen, "1");
  EXPECT_EQ(Value("k"), "12");
  // The blocking op's group, then one group for both writes.
  EXPECT_EQ(commits.value() - before, 2u);
}

TEST_F(GroupCommitterTest, FailedOperationIsRolledBackAloneWithItsUndo) {
  int memory = 0;
  bool committed_effect = false;
  auto release = BlockWriter();
  auto good = Submit([this](Txn& txn) {
    txn.Put(cf_, "a", "kept");
    return absl::OkStatus();
  });
  auto bad = Submit([this, &memory, &committed_effect](Txn& txn) {
    txn.Put(cf_, "b", "dropped");
    memory += 5;
    txn.OnUndo([&memory] { memory -= 5; });
    txn.OnCommit([&committed_effect] { committed_effect = true; });
    return absl::InternalError("boom");
  });
  std::string after;
  auto later = Submit([this, &after](Txn& txn) {
    EXPECT_TRUE(txn.Get(cf_, "b", &after).IsNotFound());
    return absl::OkStatus();
  });
  release->set_value();
  EXPECT_TRUE(good.get().ok());
  EXPECT_EQ(bad.get().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(later.get().ok());
  EXPECT_EQ(memory, 0);
  EXPECT_FALSE(committed_effect);
  EXPECT_EQ(Value("a"), "kept");
  EXPECT_EQ(Value("b"), "<none>");
}

TEST_F(GroupCommitterTest, UnindexedPutsCommitWithTheGroupAndRollBackWithTheirOperation) {
  auto release = BlockWriter();
  auto good = Submit([this](Txn& txn) {
    txn.PutUnindexed(cf_, "log-1", "kept");
    txn.Put(cf_, "x", "1");
    return absl::OkStatus();
  });
  auto bad = Submit([this](Txn& txn) {
    txn.Put(cf_, "y", "dropped");
    txn.PutUnindexed(cf_, "log-2", "dropped");
    return absl::InternalError("boom");
  });
  // After the rollback the batch's index is rebuilt from the batch: the
  // indexed and unindexed writes of the good operation are both still there.
  std::string x;
  std::string y;
  auto after = Submit([this, &x, &y](Txn& txn) {
    EXPECT_TRUE(txn.Get(cf_, "x", &x).ok());
    EXPECT_TRUE(txn.Get(cf_, "y", &y).IsNotFound());
    txn.PutUnindexed(cf_, "log-3", "kept too");
    return absl::OkStatus();
  });
  release->set_value();
  EXPECT_TRUE(good.get().ok());
  EXPECT_EQ(bad.get().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(after.get().ok());
  EXPECT_EQ(x, "1");
  EXPECT_EQ(Value("log-1"), "kept");
  EXPECT_EQ(Value("log-2"), "<none>");
  EXPECT_EQ(Value("log-3"), "kept too");
  EXPECT_EQ(Value("y"), "<none>");
}

TEST_F(GroupCommitterTest, FailedWriteFailsTheWholeGroupAndUndoesMemory) {
  std::unique_ptr<rocksdb::Env> env;
  auto fs = ReopenOnFailingDisk(env);
  ASSERT_NE(fs, nullptr);
  committer_ = std::make_unique<GroupCommitter>(db_.get(), GroupCommitter::Options{});
  ASSERT_TRUE(Submit([this](Txn& txn) {
                txn.Put(cf_, "before", "1");
                return absl::OkStatus();
              }).get().ok());

  fs->fail = true;
  int memory = 0;
  bool committed_effect = false;
  auto release = BlockWriter();
  auto first = Submit([this, &memory](Txn& txn) {
    txn.Put(cf_, "x", "1");
    memory += 1;
    txn.OnUndo([&memory] { memory -= 1; });
    return absl::OkStatus();
  });
  auto second = Submit([this, &committed_effect](Txn& txn) {
    txn.Put(cf_, "y", "1");
    txn.OnCommit([&committed_effect] { committed_effect = true; });
    return absl::OkStatus();
  });
  release->set_value();
  EXPECT_EQ(first.get().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(second.get().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(memory, 0);
  EXPECT_FALSE(committed_effect);
  EXPECT_EQ(Value("before"), "1");
  EXPECT_EQ(Value("x"), "<none>");
  EXPECT_EQ(Value("y"), "<none>");

  // Once the disk has room again the queue writes again, without a restart
  // (RocksDB's own no-space recovery runs in the background; until it is done
  // writes keep failing, retryably).
  fs->fail = false;
  absl::Status s = SubmitUntilWritable([this](Txn& txn) {
    txn.Put(cf_, "after", "1");
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(Value("after"), "1");
  committer_.reset();
  db_.reset();  // before the Env it uses
}

// A committer that caches the default column family's records. With
// `verify`, every cache hit is also read through RocksDB and a difference
// aborts the test; the tests below run without it to see what the cache
// itself answers.
void UseRecordCache(std::unique_ptr<GroupCommitter>& committer, rocksdb::DB* db, bool verify) {
  committer.reset();
  GroupCommitter::Options options;
  options.cached_column_families = {db->DefaultColumnFamily()};
  options.verify_record_cache = verify;
  committer = std::make_unique<GroupCommitter>(db, std::move(options));
}

TEST_F(GroupCommitterTest, CachedRecordsReadBackWhatTheGroupWroteAndDeleted) {
  UseRecordCache(committer_, db_.get(), /*verify=*/false);
  auto& hits = metrics::Registry::Global().GetCounter("tern_queue_record_cache_hits_total", "");
  const uint64_t hits0 = hits.value();
  ASSERT_TRUE(db_->Put(rocksdb::WriteOptions(), "old", "from-db").ok());  // written before the committer
  auto release = BlockWriter();
  std::string seen_old;
  std::string seen_new;
  rocksdb::Status after_delete;
  auto op = Submit([&](Txn& txn) {
    EXPECT_TRUE(txn.Get(cf_, "old", &seen_old).ok());  // a miss, read from RocksDB
    txn.Put(cf_, "new", "v1");
    txn.Put(cf_, "new", "v2");
    EXPECT_TRUE(txn.Get(cf_, "new", &seen_new).ok());
    txn.Delete(cf_, "old");
    std::string ignored;
    after_delete = txn.Get(cf_, "old", &ignored);
    return absl::OkStatus();
  });
  std::string again;
  auto later = Submit([&](Txn& txn) {
    EXPECT_TRUE(txn.Get(cf_, "new", &again).ok());
    return absl::OkStatus();
  });
  release->set_value();
  ASSERT_TRUE(op.get().ok());
  ASSERT_TRUE(later.get().ok());
  EXPECT_EQ(seen_old, "from-db");
  EXPECT_EQ(seen_new, "v2");
  EXPECT_TRUE(after_delete.IsNotFound()) << after_delete.ToString();
  EXPECT_EQ(again, "v2");
  EXPECT_EQ(hits.value() - hits0, 3u);  // "new" twice, and "old" once deleted
  EXPECT_EQ(Value("new"), "v2");
  EXPECT_EQ(Value("old"), "<none>");
}

TEST_F(GroupCommitterTest, IteratorsOverCachedRecordsSeeTheGroupsWritesMergedOverTheDatabase) {
  UseRecordCache(committer_, db_.get(), /*verify=*/false);
  ASSERT_TRUE(db_->Put(rocksdb::WriteOptions(), "a", "db").ok());
  ASSERT_TRUE(db_->Put(rocksdb::WriteOptions(), "c", "db").ok());
  ASSERT_TRUE(db_->Put(rocksdb::WriteOptions(), "e", "db").ok());
  auto scan = [this](Txn& txn) {
    std::string seen;
    std::unique_ptr<rocksdb::Iterator> it = txn.NewIterator(cf_);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      absl::StrAppend(&seen, it->key().ToString(), "=", it->value().ToString(), " ");
    }
    EXPECT_TRUE(it->status().ok()) << it->status().ToString();
    return seen;
  };
  auto release = BlockWriter();
  auto writer = Submit([this](Txn& txn) {
    txn.Put(cf_, "b", "group");
    txn.Put(cf_, "c", "group");
    txn.Delete(cf_, "e");
    return absl::OkStatus();
  });
  std::string in_group;
  auto reader = Submit([&](Txn& txn) {
    in_group = scan(txn);
    return absl::OkStatus();
  });
  release->set_value();
  ASSERT_TRUE(writer.get().ok());
  ASSERT_TRUE(reader.get().ok());
  EXPECT_EQ(in_group, "a=db b=group c=group ");

  // An operation that failed earlier in the group is not seen.
  release = BlockWriter();
  auto failed = Submit([this](Txn& txn) {
    txn.Put(cf_, "d", "rolled-back");
    txn.Delete(cf_, "a");
    return absl::InternalError("refused");
  });
  std::string after_rollback;
  reader = Submit([&](Txn& txn) {
    txn.Put(cf_, "f", "group");
    after_rollback = scan(txn);
    return absl::OkStatus();
  });
  release->set_value();
  EXPECT_FALSE(failed.get().ok());
  ASSERT_TRUE(reader.get().ok());
  EXPECT_EQ(after_rollback, "a=db b=group c=group f=group ");
}

TEST_F(GroupCommitterTest, BoundedIteratorsOverCachedRecordsSeeOnlyTheGroupsWritesInRange) {
  UseRecordCache(committer_, db_.get(), /*verify=*/false);
  ASSERT_TRUE(db_->Put(rocksdb::WriteOptions(), "m1.1", "db").ok());
  ASSERT_TRUE(db_->Put(rocksdb::WriteOptions(), "m2.1", "db").ok());
  std::string seen;
  ASSERT_TRUE(Submit([&](Txn& txn) {
                txn.Put(cf_, "m1.2", "group");
                txn.Put(cf_, "m10.1", "group");  // shares the text "m1" but not the prefix "m1."
                txn.Put(cf_, "m2.2", "group");
                txn.Delete(cf_, "m2.1");
                const rocksdb::Slice lower("m1.");
                const rocksdb::Slice upper("m1/");
                std::unique_ptr<rocksdb::Iterator> it = txn.NewIterator(cf_, &upper, &lower);
                for (it->SeekToFirst(); it->Valid(); it->Next()) {
                  absl::StrAppend(&seen, it->key().ToString(), "=", it->value().ToString(), " ");
                }
                return it->status().ok() ? absl::OkStatus() : absl::InternalError(it->status().ToString());
              }).get().ok());
  EXPECT_EQ(seen, "m1.1=db m1.2=group ");
}

TEST_F(GroupCommitterTest, RolledBackOperationLeavesNothingOfItsWritesInTheRecordCache) {
  UseRecordCache(committer_, db_.get(), /*verify=*/false);
  ASSERT_TRUE(Submit([this](Txn& txn) {
                txn.Put(cf_, "k", "committed");
                return absl::OkStatus();
              }).get().ok());
  auto release = BlockWriter();
  auto same_group = Submit([this](Txn& txn) {
    txn.Put(cf_, "k", "earlier-in-group");
    return absl::OkStatus();
  });
  auto failing = Submit([this](Txn& txn) {
    txn.Put(cf_, "k", "rolled-back");
    txn.Put(cf_, "fresh", "rolled-back");
    return absl::InternalError("refused");
  });
  std::string k;
  rocksdb::Status fresh;
  auto reader = Submit([&](Txn& txn) {
    EXPECT_TRUE(txn.Get(cf_, "k", &k).ok());
    std::string ignored;
    fresh = txn.Get(cf_, "fresh", &ignored);
    return absl::OkStatus();
  });
  release->set_value();
  ASSERT_TRUE(same_group.get().ok());
  EXPECT_FALSE(failing.get().ok());
  ASSERT_TRUE(reader.get().ok());
  EXPECT_EQ(k, "earlier-in-group");
  EXPECT_TRUE(fresh.IsNotFound()) << fresh.ToString();
}

TEST_F(GroupCommitterTest, FailedGroupWriteLeavesNothingOfTheGroupInTheRecordCache) {
  std::unique_ptr<rocksdb::Env> env;
  auto fs = ReopenOnFailingDisk(env);
  ASSERT_NE(fs, nullptr);
  UseRecordCache(committer_, db_.get(), /*verify=*/false);
  ASSERT_TRUE(Submit([this](Txn& txn) {
                txn.Put(cf_, "k", "durable");
                return absl::OkStatus();
              }).get().ok());
  fs->fail = true;
  EXPECT_FALSE(Submit([this](Txn& txn) {
                 txn.Put(cf_, "k", "lost");
                 txn.Put(cf_, "new", "lost");
                 return absl::OkStatus();
               }).get().ok());
  fs->fail = false;
  std::string k;
  rocksdb::Status fresh;
  absl::Status s = SubmitUntilWritable([&](Txn& txn) {
    EXPECT_TRUE(txn.Get(cf_, "k", &k).ok());
    std::string ignored;
    fresh = txn.Get(cf_, "new", &ignored);
    txn.Put(cf_, "probe", "1");
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(k, "durable");
  EXPECT_TRUE(fresh.IsNotFound()) << fresh.ToString();
  committer_.reset();
  db_.reset();  // before the Env it uses
}

TEST_F(GroupCommitterTest, LeadingSubmitCommitsOnTheCallingThreadWhenNoOneWrites) {
  auto& led = metrics::Registry::Global().GetCounter("tern_queue_group_commits_led_total", "");
  const uint64_t led0 = led.value();
  std::thread::id applied_on;
  bool done = false;
  committer_->Submit(GroupOp{[this, &applied_on](Txn& txn) {
                               applied_on = std::this_thread::get_id();
                               txn.Put(cf_, "led", "1");
                               return absl::OkStatus();
                             },
                             [&done](const absl::Status& s) { done = s.ok(); }},
                     /*lead=*/true);
  EXPECT_TRUE(done);  // committed and answered before Submit returned
  EXPECT_EQ(applied_on, std::this_thread::get_id());
  EXPECT_EQ(Value("led"), "1");
  EXPECT_EQ(led.value(), led0 + 1);
}

TEST_F(GroupCommitterTest, LeadingSubmitOnlyQueuesWhileAnotherThreadWrites) {
  auto release = BlockWriter();  // the writer thread holds the role
  auto promise = std::make_shared<std::promise<std::thread::id>>();
  auto applied_on = promise->get_future();
  committer_->Submit(GroupOp{[promise](Txn&) {
                               promise->set_value(std::this_thread::get_id());
                               return absl::OkStatus();
                             },
                             [](const absl::Status&) {}},
                     /*lead=*/true);
  // Returned at once, not waiting for the role, and nothing ran here.
  EXPECT_EQ(applied_on.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  release->set_value();
  EXPECT_NE(applied_on.get(), std::this_thread::get_id());
}

TEST_F(GroupCommitterTest, SubmitAllPutsItsOperationsInOneGroup) {
  auto& commits = metrics::Registry::Global().GetCounter("tern_queue_group_commits_total", "");
  const uint64_t before = commits.value();
  int done = 0;
  std::vector<GroupOp> ops;
  for (int i = 0; i < 3; ++i) {
    ops.push_back(GroupOp{[this, i](Txn& txn) {
                            txn.Put(cf_, absl::StrCat("batch", i), "v");
                            return absl::OkStatus();
                          },
                          [&done](const absl::Status& s) { done += s.ok() ? 1 : 0; }});
  }
  committer_->SubmitAll(std::move(ops), /*lead=*/true);
  EXPECT_EQ(done, 3);
  EXPECT_EQ(commits.value() - before, 1u);
  EXPECT_EQ(Value("batch2"), "v");
}

TEST_F(GroupCommitterTest, LeaderCommitsAtMostItsShareOfGroupsThenTheWriterThreadTakesOver) {
  // Each operation's completion submits the next (as a Report that frees a
  // slot submits a parked Lease): the leader takes the first
  // kLeaderGroups, the writer thread the rest.
  constexpr int kChain = GroupCommitter::kLeaderGroups + 2;
  std::vector<std::thread::id> applied_on(kChain);
  auto all_done = std::make_shared<std::promise<void>>();
  std::function<GroupOp(int)> make = [&](int i) {
    return GroupOp{[&applied_on, i](Txn&) {
                     applied_on[i] = std::this_thread::get_id();
                     return absl::OkStatus();
                   },
                   [&, i](const absl::Status&) {
                     if (i + 1 < kChain) {
                       committer_->Submit(make(i + 1), /*lead=*/true);  // inside the role: only queues
                     } else {
                       all_done->set_value();
                     }
                   }};
  };
  committer_->Submit(make(0), /*lead=*/true);
  all_done->get_future().wait();
  for (int i = 0; i < kChain; ++i) {
    if (i < GroupCommitter::kLeaderGroups) {
      EXPECT_EQ(applied_on[i], std::this_thread::get_id()) << i;
    } else {
      EXPECT_NE(applied_on[i], std::this_thread::get_id()) << i;
    }
  }
}

TEST_F(GroupCommitterTest, TickKeepsItsPaceWhileCallersLeadOneGroupAfterAnother) {
  // A queue under steady load: some caller almost always holds the role.
  // The tick (lease expiry, refills) must not wait for a quiet moment.
  std::atomic<int> ticks{0};
  std::mutex mu;
  std::vector<std::thread::id> tick_threads;
  GroupCommitter::Options options;
  options.tick_interval = std::chrono::milliseconds(20);
  options.on_tick = [&] {
    ticks.fetch_add(1);
    std::lock_guard<std::mutex> lock(mu);
    tick_threads.push_back(std::this_thread::get_id());
  };
  committer_ = std::make_unique<GroupCommitter>(db_.get(), std::move(options));
  // Two callers with up to 32 operations each in flight (as a busy RPC
  // server has), bounded by count and by time.
  auto busy = [this](int id) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(400);
    auto in_flight = std::make_shared<std::atomic<int>>(0);
    for (int i = 0; i < 1'000'000 && std::chrono::steady_clock::now() < until; ++i) {
      while (in_flight->load() >= 32) {
        std::this_thread::yield();
      }
      in_flight->fetch_add(1);
      committer_->Submit(GroupOp{[this, id, i](Txn& txn) {
                                   txn.Put(cf_, absl::StrCat("busy", id, ".", i % 8), "v");
                                   return absl::OkStatus();
                                 },
                                 [in_flight](const absl::Status&) { in_flight->fetch_sub(1); }, /*durable=*/false},
                         /*lead=*/true);
    }
    while (in_flight->load() > 0) {
      std::this_thread::yield();
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::thread a(busy, 1);
  std::thread b(busy, 2);
  const std::thread::id callers[] = {a.get_id(), b.get_id()};
  a.join();
  b.join();
  const auto elapsed =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  // One tick per 20 ms would be elapsed / 20 (about 20); a starved tick
  // kept far fewer (8 in 400 ms when only the writer thread ticked). Two
  // thirds of the pace is the bar, for a busy test machine.
  EXPECT_GE(ticks.load(), elapsed / 30) << elapsed << " ms";
  // And it is the role's holder that runs a due tick: mostly the callers.
  std::lock_guard<std::mutex> lock(mu);
  const auto by_callers = std::count_if(tick_threads.begin(), tick_threads.end(), [&](std::thread::id id) {
    return id == callers[0] || id == callers[1];
  });
  EXPECT_GT(by_callers, 0) << "of " << tick_threads.size() << " ticks";
}

TEST_F(GroupCommitterTest, SubmitAfterStopFailsWithoutRunning) {
  committer_->Stop();
  bool ran = false;
  auto f = Submit([&ran](Txn&) {
    ran = true;
    return absl::OkStatus();
  });
  EXPECT_EQ(f.get().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace tern::queue
