// File: queue_core_test_fixture.h
//
// The QueueCoreTest fixture (a core on a temp dir with a FakeClock) and
// small builders, shared by queue_core_test.cc and queue_admin_test.cc.
#pragma once

#include <chrono>
#include <thread>

#include "services/queue/queue_core.h"

#include <chrono>
#include <filesystem>
#include <map>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "services/queue/key_codec.h"

namespace tern::queue {
namespace testing_support {

using tern::v1::DSN_RET_FULL;
using tern::v1::JOB_KIND_BOUNCE;
using tern::v1::JOB_KIND_DELIVERY;
using tern::v1::LeaseResponse;
using tern::v1::REPORT_STATUS_APPLIED;
using tern::v1::REPORT_STATUS_INVALID;
using tern::v1::REPORT_STATUS_STALE_LEASE;
using tern::v1::REPORT_STATUS_UNKNOWN;
using tern::v1::StatsResponse;

inline constexpr int64_t kStart = 1'700'000'000'000;
inline const std::string kBody = "Subject: hi\r\nFrom: a@src.example\r\n\r\nHello\r\n.. dots stay\r\n";

// Runs one asynchronous core call and waits for its completion.
template <typename T, typename F>
absl::StatusOr<T> Sync(F&& start) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<T>>>();
  auto future = promise->get_future();
  start([promise](absl::StatusOr<T> r) { promise->set_value(std::move(r)); });
  if (future.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    ADD_FAILURE() << "core call did not complete";
    return absl::DeadlineExceededError("timeout");
  }
  return future.get();
}

inline tern::v1::RecipientSpec Rcpt(const std::string& address, uint32_t notify = 0) {
  tern::v1::RecipientSpec r;
  r.set_address(address);
  r.set_notify(notify);
  return r;
}

inline tern::v1::EnqueueHeader Header(std::vector<tern::v1::RecipientSpec> rcpts, const std::string& idem = "",
                               tern::v1::DsnRet ret = tern::v1::DSN_RET_UNSPECIFIED) {
  tern::v1::EnqueueHeader h;
  h.mutable_envelope()->set_mail_from("sender@src.example");
  h.mutable_envelope()->set_ret(ret);
  for (auto& r : rcpts) {
    *h.mutable_envelope()->add_recipients() = r;
  }
  h.set_idempotency_key(idem);
  return h;
}

// Limits with only concurrency_max set.
inline DestinationLimits Concurrency(uint32_t max) {
  DestinationLimits limits;
  limits.concurrency_max = max;
  return limits;
}

inline tern::v1::RecipientResult Result(tern::v1::Outcome outcome, uint32_t code, const std::string& status,
                                 const std::string& text) {
  tern::v1::RecipientResult r;
  r.set_outcome(outcome);
  r.set_reply_code(code);
  r.set_enhanced_status(status);
  r.set_reply_text(text);
  r.set_remote_mta("mx.dest.example");
  r.set_remote_ip("192.0.2.1");
  return r;
}

class QueueCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = std::filesystem::path(::testing::TempDir()) / absl::StrCat("queue_core_test_", getpid(), "_", rd());
    options_.data_dir = dir_.string();
    options_.clock = &clock_;
    options_.retry = RetrySchedule({60'000, 120'000});
    options_.tick_interval = std::chrono::milliseconds(20);
    // Every record read the cache answers in these tests is checked against
    // RocksDB: a stale entry aborts the test binary.
    options_.verify_record_cache = true;
  }
  void TearDown() override {
    core_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Open() {
    auto core = QueueCore::Open(options_);
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = std::move(*core);
  }
  void Reopen() {
    core_.reset();
    Open();
  }

  EnqueueResult Enqueue(tern::v1::EnqueueHeader header, std::string body = kBody) {
    auto r = Sync<EnqueueResult>([&](auto cb) { core_->Enqueue(std::move(header), std::move(body), std::move(cb)); });
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : EnqueueResult{};
  }
  absl::Status EnqueueStatus(tern::v1::EnqueueHeader header) {
    return Sync<EnqueueResult>([&](auto cb) { core_->Enqueue(std::move(header), kBody, std::move(cb)); }).status();
  }

  LeaseResponse Lease(tern::v1::JobKind kind, uint32_t max_jobs = 100, uint32_t lease_seconds = 0,
                      uint64_t max_body_bytes = 0) {
    tern::v1::LeaseRequest req;
    req.set_kind(kind);
    req.set_max_jobs(max_jobs);
    req.set_lease_seconds(lease_seconds);
    req.set_max_body_bytes(max_body_bytes);
    auto r = Sync<LeaseResponse>([&](auto cb) { core_->Lease(req, std::move(cb)); });
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : LeaseResponse{};
  }

  // Reports one outcome for every recipient of `job`.
  std::vector<tern::v1::ReportStatus> ReportAll(const tern::v1::DeliveryJob& job,
                                                const tern::v1::RecipientResult& result,
                                                const std::string& token = "") {
    tern::v1::ReportRequest req;
    auto* rep = req.add_reports();
    rep->set_delivery_id(job.delivery_id());
    rep->set_lease_token(token.empty() ? job.lease_token() : token);
    for (const auto& r : job.recipients()) {
      auto* rr = rep->add_recipients();
      rr->set_index(r.index());
      *rr->mutable_result() = result;
    }
    return ReportStatuses(req);
  }
  std::vector<tern::v1::ReportStatus> ReportStatuses(const tern::v1::ReportRequest& req) {
    auto r = Sync<tern::v1::ReportResponse>([&](auto cb) { core_->Report(req, std::move(cb)); });
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<tern::v1::ReportStatus> out;
    if (r.ok()) {
      for (int s : r->statuses()) {
        out.push_back(static_cast<tern::v1::ReportStatus>(s));
      }
    }
    return out;
  }
  tern::v1::ReportStatus Ack(const tern::v1::BounceJob& job, const std::string& token = "") {
    tern::v1::AckRequest req;
    auto* a = req.add_acks();
    a->set_bounce_id(job.bounce_id());
    a->set_lease_token(token.empty() ? job.lease_token() : token);
    a->set_dsn_message_id("dsn-1");
    auto r = Sync<tern::v1::AckResponse>([&](auto cb) { core_->Ack(req, std::move(cb)); });
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && r->statuses_size() == 1 ? static_cast<tern::v1::ReportStatus>(r->statuses(0))
                                              : tern::v1::REPORT_STATUS_UNSPECIFIED;
  }
  StatsResponse Stats() {
    auto r = Sync<StatsResponse>([&](auto cb) { core_->Stats(std::move(cb)); });
    EXPECT_TRUE(r.ok()) << r.status();
    StatsResponse s = r.ok() ? *r : StatsResponse{};
    // The per-state delivery counts always add up.
    EXPECT_EQ(s.deliveries(), s.deliveries_due() + s.deliveries_leased() + s.deliveries_deferred() + s.deliveries_held());
    return s;
  }

  // Runs f(db, name, handle) for every column family of the database,
  // opened directly (the core must be closed); false if it cannot be opened.
  template <typename F>
  bool WithRawDb(bool read_only, F f) {
    std::vector<std::string> names;
    EXPECT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), dir_.string(), &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const auto& n : names) {
      descriptors.emplace_back(n, rocksdb::ColumnFamilyOptions());
    }
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    auto s = read_only
                 ? rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(), dir_.string(), descriptors, &handles, &db)
                 : rocksdb::DB::Open(rocksdb::DBOptions(), dir_.string(), descriptors, &handles, &db);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) {
      return false;
    }
    for (size_t i = 0; i < handles.size(); ++i) {
      f(db, names[i], handles[i]);
    }
    for (auto* h : handles) {
      (void)db->DestroyColumnFamilyHandle(h);
    }
    delete db;
    return true;
  }

  // Writes `value` under `key` in column family `cf` straight into the
  // database (the core must be closed): a record the queue did not write.
  void PlantRaw(const std::string& cf, const std::string& key, const std::string& value) {
    bool written = false;
    WithRawDb(false, [&](rocksdb::DB* db, const std::string& name, rocksdb::ColumnFamilyHandle* h) {
      if (name == cf) {
        written = db->Put(rocksdb::WriteOptions(), h, key, value).ok();
      }
    });
    ASSERT_TRUE(written) << cf << " " << key;
  }

  // Opens the database directly (the core must be closed) and counts keys
  // per column family. The database's one InstanceRecord (meta, made at its
  // first open and never deleted) is left out: tests count what the queue's
  // work left behind.
  std::map<std::string, int> CountKeys() {
    std::map<std::string, int> counts;
    WithRawDb(true, [&](rocksdb::DB* db, const std::string& name, rocksdb::ColumnFamilyHandle* h) {
      std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), h));
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        if (name == kMetaCf && it->key() == InstanceKey()) {
          continue;
        }
        ++counts[name];
      }
    });
    return counts;
  }

  std::filesystem::path dir_;
  // Waits (bounded) for work the core does in follow-up operations.
  template <typename Pred>
  bool Eventually(Pred pred) {
    for (int i = 0; i < 500; ++i) {
      if (pred()) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pred();
  }

  // Four deliveries of a.example leased (no limit), a 421 reported for one
  // of them, four more of a.example enqueued.
  void FourOutOneA421AndFourMore() {
    for (int i = 0; i < 4; ++i) {
      Enqueue(Header({Rcpt(absl::StrCat("u", i, "@a.example"))}));
    }
    const LeaseResponse first = Lease(JOB_KIND_DELIVERY, 100);
    ASSERT_EQ(first.deliveries_size(), 4);
    ReportAll(first.deliveries(0), Result(tern::v1::OUTCOME_TRANSIENT, 421, "4.7.0", "busy"));
    for (int i = 0; i < 4; ++i) {
      Enqueue(Header({Rcpt(absl::StrCat("v", i, "@a.example"))}));
    }
    ASSERT_EQ(Stats().deliveries_leased(), 3u);
  }

  FakeClock clock_{kStart};
  CoreOptions options_;
  std::unique_ptr<QueueCore> core_;
};


}  // namespace testing_support
}  // namespace tern::queue
