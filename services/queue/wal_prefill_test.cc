#include "services/queue/wal_prefill.h"

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "lib/metrics/metrics.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"

namespace tern::queue {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kSpare = 1u << 20;

uint64_t CounterValue(const std::string& name, const metrics::Labels& labels = {}) {
  return metrics::Registry::Global().GetCounter(name, "", labels).value();
}

class WalPrefillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = fs::path(::testing::TempDir()) / absl::StrCat("wal_prefill_test_", getpid(), "_", rd());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    db_.reset();
    env_.reset();
    fs::remove_all(dir_);
  }

  // Opens the DB in dir_ over a fresh prefill file system; the default
  // recovery mode (point in time) is what the queue uses.
  rocksdb::Status Open(uint64_t spare_bytes = kSpare) {
    db_.reset();
    env_ = rocksdb::NewCompositeEnv(
        NewWalPrefillFileSystem(rocksdb::FileSystem::Default(), {dir_.string(), spare_bytes}));
    rocksdb::Options options;
    options.create_if_missing = true;
    options.env = env_.get();
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(options, dir_.string(), &raw);
    db_.reset(raw);
    return s;
  }

  rocksdb::Status PutSynced(int i, size_t value_bytes = 100) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return db_->Put(wo, absl::StrCat("key", i), std::string(value_bytes, static_cast<char>('a' + i % 26)));
  }

  std::vector<fs::path> Wals() const {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(dir_)) {
      if (e.path().extension() == ".log") {
        out.push_back(e.path());
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  bool WaitForSpare(uint64_t bytes) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    std::error_code ec;
    while (std::chrono::steady_clock::now() < deadline) {
      if (fs::file_size(dir_ / kWalSpareName, ec) == bytes && !ec) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  fs::path dir_;
  std::unique_ptr<rocksdb::Env> env_;
  std::unique_ptr<rocksdb::DB> db_;
};

TEST_F(WalPrefillTest, TheWalRocksDbCreatesIsTheZeroFilledSpareAndANewSpareFollows) {
  const uint64_t prefilled_before = CounterValue("tern_queue_wal_files_total", {{"prefilled", "true"}});
  ASSERT_TRUE(Open().ok());
  const auto wals = Wals();
  ASSERT_EQ(wals.size(), 1u);
  EXPECT_EQ(fs::file_size(wals[0]), kSpare);
  std::ifstream in(wals[0], std::ios::binary);
  std::string head(4096, 'x');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  EXPECT_EQ(head, std::string(4096, '\0'));
  EXPECT_EQ(CounterValue("tern_queue_wal_files_total", {{"prefilled", "true"}}), prefilled_before + 1);
  EXPECT_TRUE(WaitForSpare(kSpare)) << "the filler did not make the next spare";
  EXPECT_FALSE(fs::exists(dir_ / absl::StrCat(kWalSpareName, ".tmp")));
}

TEST_F(WalPrefillTest, SyncedWritesOverwriteThePrefilledBlocksWithoutGrowingTheFile) {
  ASSERT_TRUE(Open().ok());
  const fs::path wal = Wals().at(0);
  struct stat before;
  ASSERT_EQ(::stat(wal.c_str(), &before), 0);
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(PutSynced(i).ok());
  }
  struct stat after;
  ASSERT_EQ(::stat(wal.c_str(), &after), 0);
  // Same size and the same blocks: the syncs had no file metadata to write.
  EXPECT_EQ(after.st_size, before.st_size);
  EXPECT_EQ(after.st_blocks, before.st_blocks);
  std::string value;
  ASSERT_TRUE(db_->Get(rocksdb::ReadOptions(), "key199", &value).ok());
}

TEST_F(WalPrefillTest, EverySyncedRecordSurvivesACrashThatLeavesTheZeroTail) {
  // Both inside the spare and past it (the WAL then grows as usual).
  for (const size_t value_bytes : {size_t{100}, size_t{12000}}) {
    SCOPED_TRACE(value_bytes);
    db_.reset();
    env_.reset();  // the child must not inherit a filler thread it would join
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const int records = 300;
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      // Dies without closing the DB, as a kill -9 would: the WAL keeps its
      // zeros after the last record.
      bool ok = Open().ok();
      for (int i = 0; ok && i < records; ++i) {
        ok = PutSynced(i, value_bytes).ok();
      }
      ::_exit(ok ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const auto wals = Wals();
    ASSERT_EQ(wals.size(), 1u);
    if (value_bytes * records < kSpare) {
      EXPECT_EQ(fs::file_size(wals[0]), kSpare) << "the crash should have left the zero tail";
    } else {
      EXPECT_GT(fs::file_size(wals[0]), kSpare);
    }

    const rocksdb::Status s = Open();
    ASSERT_TRUE(s.ok()) << s.ToString();
    for (int i = 0; i < records; ++i) {
      std::string value;
      ASSERT_TRUE(db_->Get(rocksdb::ReadOptions(), absl::StrCat("key", i), &value).ok()) << i;
      EXPECT_EQ(value, std::string(value_bytes, static_cast<char>('a' + i % 26)));
    }
  }
}

TEST_F(WalPrefillTest, ClosingTheWalDropsTheUnusedZeros) {
  ASSERT_TRUE(Open().ok());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(PutSynced(i).ok());
  }
  const fs::path wal = Wals().at(0);
  db_.reset();  // closes the WAL; nothing was flushed, so it stays
  ASSERT_TRUE(fs::exists(wal));
  EXPECT_GT(fs::file_size(wal), 10u * 100);
  EXPECT_LT(fs::file_size(wal), kSpare);
}

TEST_F(WalPrefillTest, AFillThatFailsLeavesOrdinaryWalsAndNoTemporaryFile) {
  // A directory where the filler's temporary file should go: creating the
  // spare fails the way a full disk or a bad permission would.
  fs::create_directories(dir_ / absl::StrCat(kWalSpareName, ".tmp"));
  const uint64_t failures_before = CounterValue("tern_queue_wal_prefill_failures_total");
  const uint64_t unprefilled_before = CounterValue("tern_queue_wal_files_total", {{"prefilled", "false"}});
  ASSERT_TRUE(Open().ok());
  EXPECT_GT(CounterValue("tern_queue_wal_prefill_failures_total"), failures_before);
  EXPECT_EQ(CounterValue("tern_queue_wal_files_total", {{"prefilled", "false"}}), unprefilled_before + 1);
  EXPECT_FALSE(fs::exists(dir_ / kWalSpareName));
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(PutSynced(i).ok());
  }
  ASSERT_TRUE(Open().ok());
  std::string value;
  EXPECT_TRUE(db_->Get(rocksdb::ReadOptions(), "key19", &value).ok());
}

TEST_F(WalPrefillTest, NoSpareIsMadeWhenItWouldEatIntoTheFreeSpaceToKeep) {
  const uint64_t failures_before = CounterValue("tern_queue_wal_prefill_failures_total");
  struct statvfs vfs;
  ASSERT_EQ(::statvfs(dir_.c_str(), &vfs), 0);
  const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  // Keep all but half a spare free: the spare does not fit.
  auto prefill = NewWalPrefillFileSystem(rocksdb::FileSystem::Default(),
                                         {dir_.string(), kSpare, free_bytes - kSpare / 2});
  EXPECT_FALSE(fs::exists(dir_ / kWalSpareName));
  EXPECT_FALSE(fs::exists(dir_ / absl::StrCat(kWalSpareName, ".tmp")));
  EXPECT_EQ(CounterValue("tern_queue_wal_prefill_failures_total"), failures_before + 1);
}

TEST_F(WalPrefillTest, AStartReplacesASpareOfTheWrongSizeAndRemovesAHalfWrittenOne) {
  std::ofstream(dir_ / kWalSpareName) << "short";
  std::ofstream(dir_ / absl::StrCat(kWalSpareName, ".tmp")) << "half";
  auto prefill = NewWalPrefillFileSystem(rocksdb::FileSystem::Default(), {dir_.string(), kSpare});
  EXPECT_EQ(fs::file_size(dir_ / kWalSpareName), kSpare);
  EXPECT_FALSE(fs::exists(dir_ / absl::StrCat(kWalSpareName, ".tmp")));
}

TEST_F(WalPrefillTest, ZeroBytesMeansTheWrappedFileSystemItself) {
  auto base = rocksdb::FileSystem::Default();
  EXPECT_EQ(NewWalPrefillFileSystem(base, {dir_.string(), 0}), base);
  EXPECT_FALSE(fs::exists(dir_ / kWalSpareName));
}

}  // namespace
}  // namespace tern::queue
