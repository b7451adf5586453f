#include "services/queue/queue_core_internal.h"

#include <thread>
#include <utility>

#include "lib/address/idna.h"
#include "lib/tlsrpt/tlsrpt.h"
#include "rocksdb/file_system.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/slice_transform.h"
#include "rocksdb/table.h"
#include "services/queue/wal_prefill.h"

namespace tern::queue {

// ---------------------------------------------------------------------------
// Opening and recovery.

absl::Status QueueCore::Impl::Open() {
  std::error_code ec;
  std::filesystem::create_directories(opt_.data_dir, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot create data_dir ", opt_.data_dir, ": ", ec.message()));
  }
  rocksdb::DBOptions db_options;
  // Each WAL starts as a zero-filled, synced file (wal_prefill.h): a commit's
  // fdatasync then writes its data and no file metadata.
  WalPrefillOptions prefill;
  prefill.dir = opt_.data_dir;
  prefill.spare_bytes = opt_.wal_prefill_bytes;
  prefill.keep_free_bytes = opt_.min_free_bytes;  // the spare's headroom: fixed until a restart
  env_ = rocksdb::NewCompositeEnv(NewWalPrefillFileSystem(rocksdb::FileSystem::Default(), std::move(prefill)));
  db_options.env = env_.get();
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.keep_log_file_num = 10;
  // Memory and restart time follow the work in flight, not the backlog: the
  // memtables of all column families share one budget (the biggest is
  // flushed when it is used up), and the WAL is capped, so a restart after a
  // crash replays at most this much (RocksDB flushes the column families
  // that keep older WAL files alive). Without the cap, the small column
  // families' memtables kept every WAL file since their last flush, and a
  // restart with 1,000,000 queued messages replayed 2 GB of WAL.
  db_options.db_write_buffer_size = 64u << 20;
  db_options.max_total_wal_size = 128u << 20;

  rocksdb::ColumnFamilyOptions base;
  // The queue writes mostly in key order within each column family (ids and
  // event numbers grow with time, schedule keys with their due time), so a
  // remembered insert position makes most memtable inserts a few compares
  // instead of a walk down the skiplist (a profile of the Lease+Report cycle
  // had a fifth of the CPU there). One hint per first key byte.
  base.memtable_insert_with_hint_prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(1));
  // A bloom filter over each memtable's keys: a Get for a record that was
  // written long ago (a backlog) skips the memtables without a search.
  base.memtable_prefix_bloom_size_ratio = 0.02;
  base.memtable_whole_key_filtering = true;
  // Bloom filters in the table files: a Lease or Report reads its delivery,
  // message and body by key, and without filters every such Get searched
  // every level-0 file's index (a tenth of the cycle's CPU). ~1.25 bytes per
  // key of memory. The block cache stays RocksDB's default (8 MB).
  rocksdb::BlockBasedTableOptions table;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  base.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::ColumnFamilyOptions bodies = base;
  // Bodies are written once and read a few times: keep them out of the LSM
  // tree so compactions do not rewrite them (integrated BlobDB).
  bodies.enable_blob_files = true;
  bodies.min_blob_size = 4096;
  bodies.enable_blob_garbage_collection = true;
  rocksdb::ColumnFamilyOptions schedule = base;
  // Every lease and report deletes a schedule key; compact files that fill
  // up with tombstones so due scans stay short.
  schedule.table_properties_collector_factories.emplace_back(
      rocksdb::NewCompactOnDeletionCollectorFactory(/*sliding_window_size=*/16384, /*deletion_trigger=*/8192));

  std::vector<std::string> names = {rocksdb::kDefaultColumnFamilyName, kMessagesCf, kBodiesCf, kDeliveriesCf,
                                    kScheduleCf, kBouncesCf, kMetaCf, kCorruptCf, kEventsCf};
  std::vector<std::string> existing;
  if (rocksdb::DB::ListColumnFamilies(db_options, opt_.data_dir, &existing).ok()) {
    for (const auto& name : existing) {
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        names.push_back(name);  // opened, never used: RocksDB insists on all
      }
    }
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const auto& name : names) {
    descriptors.emplace_back(name, name == kBodiesCf ? bodies : name == kScheduleCf ? schedule : base);
  }
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, opt_.data_dir, descriptors, &handles_, &raw);
  if (!s.ok()) {
    return StorageError(s, absl::StrCat("open ", opt_.data_dir));
  }
  db_.reset(raw);
  messages_ = handles_[1];
  bodies_ = handles_[2];
  deliveries_ = handles_[3];
  schedule_ = handles_[4];
  bounces_ = handles_[5];
  meta_ = handles_[6];
  corrupt_ = handles_[7];
  events_ = handles_[8];

  TERN_RETURN_IF_ERROR(LoadInstanceId());
  TERN_RETURN_IF_ERROR(Recover());

  GroupCommitter::Options copt;
  copt.tick_interval = opt_.tick_interval;
  copt.on_tick = [this] { OnTick(); };
  if (opt_.record_cache_bytes > 0) {
    copt.cached_column_families = {deliveries_, messages_, bounces_};
    copt.record_cache_bytes = opt_.record_cache_bytes;
    copt.verify_record_cache = opt_.verify_record_cache;
  }
  committer_ = std::make_unique<GroupCommitter>(db_.get(), std::move(copt));
  // Leases that were out with DATA sent when the old process died.
  for (const std::string& id : recovered_data_sent_) {
    committer_->Submit(GroupOp{[this, id](Txn& txn) { return ApplyMarkAmbiguous(txn, id); },
                               [](const absl::Status&) {}});
  }
  recovered_data_sent_.clear();
  StartTlsReporter();
  return absl::OkStatus();
}

bool IsInstanceId(absl::string_view id) {
  return id.size() == kInstanceIdLength &&
         std::all_of(id.begin(), id.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// The instance token. Two queue shards aggregate TLS session counts of
// their own and each reports them; the report-id (RFC 8460 §4.3) must differ
// between them, or a receiver deduplicating by report-id keeps one shard's
// counts and drops the other's. Config cannot tell shards apart reliably (a
// StatefulSet gives every pod the same tern.ini), but each shard has a
// database of its own: the token is made at random the first time a
// database is opened (also an existing one, from before tokens) and stored
// in it with a synced write, so it stays the same for the life of that
// database, across restarts, and another database gets another one. A copy
// of a database's files (a restored backup used as a second shard) shares
// its token; the README says so. An unreadable record is quarantined and
// replaced: that changes this database's later report-ids, and never makes
// two reports share one.
absl::Status QueueCore::Impl::LoadInstanceId() {
  const std::string key = InstanceKey();
  std::string raw;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), meta_, key, &raw);
  if (!s.ok() && !s.IsNotFound()) {
    return StorageError(s, "read the instance id");
  }
  rocksdb::WriteBatch batch;
  if (s.ok()) {
    InstanceRecord rec;
    if (rec.ParseFromString(raw) && IsInstanceId(rec.id())) {
      instance_id_ = rec.id();
      log::Event(log::Level::kInfo, "queue_instance", {{"instance", instance_id_}, {"created", "false"}});
      return absl::OkStatus();
    }
    (void)batch.Put(corrupt_, CorruptKey(kMetaCf, key), raw);
    LogCorrupt(kMetaCf, key);
  }
  InstanceRecord rec;
  rec.set_id(NewRandomToken().substr(0, kInstanceIdLength));
  rec.set_created_unix_ms(clock_->NowUnixMs());
  (void)batch.Put(meta_, key, rec.SerializeAsString());
  rocksdb::WriteOptions wo;
  wo.sync = true;
  if (rocksdb::Status w = db_->Write(wo, &batch); !w.ok()) {
    return StorageError(w, "write the instance id");
  }
  instance_id_ = rec.id();
  log::Event(log::Level::kNotice, "queue_instance", {{"instance", instance_id_}, {"created", "true"}});
  return absl::OkStatus();
}

// Rebuilds the counters from the records. A job that was out on lease keeps
// its lease for a short grace (recovery_lease_grace) and then becomes due the
// usual way: the lease table that would time it out was in memory.
absl::Status QueueCore::Impl::LoadMxSites(int64_t now, rocksdb::WriteBatch& batch) {
  const std::string prefix = MxSitePrefix();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    const std::string domain = it->key().ToString().substr(prefix.size());
    MxSiteRecord record;
    const MxSite* site = nullptr;
    if (record.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())) &&
        record.expires_unix_ms() > now && !opt_.shaping.HasOwnSection(domain) &&
        opt_.shaping.ListedSite(domain) == nullptr && learned_sites_.size() < kMaxLearnedSites) {
      site = opt_.shaping.SiteNamed(record.site());
    }
    if (site == nullptr) {
      (void)batch.Delete(meta_, it->key());
      continue;
    }
    absl::MutexLock lock(&site_mu_);
    learned_sites_[domain] = LearnedSite{site, record.expires_unix_ms(), record.expires_unix_ms()};
  }
  if (!it->status().ok()) {
    return StorageError(it->status(), "read MX site memberships");
  }
  Metrics().mx_site_domains.Set(static_cast<int64_t>(learned_sites_.size()));
  return absl::OkStatus();
}

absl::Status QueueCore::Impl::Recover() {
  const int64_t now = clock_->NowUnixMs();
  rocksdb::WriteBatch batch;
  // Before the deliveries' leases are counted, each under its shaping key.
  TERN_RETURN_IF_ERROR(LoadMxSites(now, batch));
  int64_t corrupt = 0;
  int64_t released = 0;
  int64_t kept_leases = 0;
  auto quarantine = [&](rocksdb::ColumnFamilyHandle* cf, const char* cf_name, const rocksdb::Slice& key,
                        const rocksdb::Slice& value) {
    (void)batch.Put(corrupt_, CorruptKey(cf_name, absl::string_view(key.data(), key.size())), value);
    (void)batch.Delete(cf, key);
    LogCorrupt(cf_name, key.ToString());
    ++corrupt;
  };

  // Visits every record of `cf` that parses; one that does not is moved to
  // `corrupt` (logged, counted) and recovery goes on. One record object is
  // reused (parsing into it reuses its memory), the scan reads ahead and
  // does not churn the block cache: with a million records this scan is
  // most of a restart.
  auto scan = [&](auto prototype, rocksdb::ColumnFamilyHandle* cf, const char* cf_name,
                  auto&& visit) -> absl::Status {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(RecoveryScanOptions(), cf));
    decltype(prototype) rec;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (!rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        quarantine(cf, cf_name, it->key(), it->value());
        continue;
      }
      visit(rec, it->key());
    }
    if (!it->status().ok()) {
      return StorageError(it->status(), absl::StrCat("recovery scan of ", cf_name));
    }
    return absl::OkStatus();
  };

  // Messages are only counted (and checked): on a thread of their own, in
  // parallel with the deliveries, into a batch of their own.
  rocksdb::WriteBatch message_batch;
  int64_t message_corrupt = 0;
  absl::Status message_scan;
  std::thread messages_thread([&] {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(RecoveryScanOptions(), messages_));
    MessageRecord rec;
    int64_t n = 0;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (rec.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
        ++n;
        continue;
      }
      (void)message_batch.Put(corrupt_, CorruptKey(kMessagesCf, absl::string_view(it->key().data(), it->key().size())),
                              it->value());
      (void)message_batch.Delete(messages_, it->key());
      LogCorrupt(kMessagesCf, it->key().ToString());
      ++message_corrupt;
    }
    if (!it->status().ok()) {
      message_scan = StorageError(it->status(), absl::StrCat("recovery scan of ", kMessagesCf));
    }
    counters_.messages = n;
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) {
        t.join();
      }
    }
  } joiner{messages_thread};
  // Deliveries: most are simply waiting. Those are counted from a view that
  // skips their recipients' specs and results; only a record out on lease or
  // held is parsed whole and visited. (The view checks the record's wire
  // structure, so a truncated or garbled record is still quarantined here;
  // a string field the view skips is checked when the record is next read.)
  auto scan_deliveries = [&](auto&& visit) -> absl::Status {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(RecoveryScanOptions(), deliveries_));
    DeliveryRecoveryView view;
    DeliveryRecord rec;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const char* data = it->value().data();
      const int size = static_cast<int>(it->value().size());
      if (!view.ParseFromArray(data, size)) {
        quarantine(deliveries_, kDeliveriesCf, it->key(), it->value());
        continue;
      }
      if (view.lease_token().empty() && !view.held()) {
        ++counters_.deliveries;
        for (const RecipientStateView& r : view.recipients()) {
          counters_.recipients_pending +=
              r.state() == RECIPIENT_STATE_PENDING || r.state() == RECIPIENT_STATE_DEFERRED ? 1 : 0;
        }
        due_.Add(view.due_unix_ms(), 1);
        continue;
      }
      if (!rec.ParseFromArray(data, size)) {
        quarantine(deliveries_, kDeliveriesCf, it->key(), it->value());
        continue;
      }
      visit(rec, it->key());
    }
    if (!it->status().ok()) {
      return StorageError(it->status(), absl::StrCat("recovery scan of ", kDeliveriesCf));
    }
    return absl::OkStatus();
  };
  TERN_RETURN_IF_ERROR(scan_deliveries([&](DeliveryRecord& rec,
                                                                            const rocksdb::Slice& key) {
    ++counters_.deliveries;
    counters_.recipients_pending += PendingCount(rec);
    if (rec.held()) {
      // Held: no schedule key, whatever lease it had is over.
      if (!rec.lease_token().empty()) {
        if (rec.data_sent_token() == rec.lease_token()) {
          // Held while out on a lease that had sent DATA: still ambiguous
          // (ApplyMarkAmbiguous counts it; data_sent_token stays for that).
          recovered_data_sent_.push_back(rec.delivery_id());
        }
        (void)batch.Delete(schedule_, EncodeScheduleKey(JobType::kDelivery, rec.due_unix_ms(), rec.delivery_id()));
        rec.clear_lease_token();
        rec.set_lease_deadline_unix_ms(0);
        (void)batch.Put(deliveries_, key, rec.SerializeAsString());
      }
      ++counters_.held;
      return;
    }
    const int64_t grace_deadline =
        std::min(rec.lease_deadline_unix_ms(), now + opt_.recovery_lease_grace_seconds * 1000);
    if (!rec.lease_token().empty() && grace_deadline > now) {
      // Keep the lease (and its token) for a short grace instead of
      // releasing it: the worker holding it most likely outlived the queue
      // and will report under this token. If it does not, the lease expires
      // the usual way (ExpireLeases), which also decides ambiguity.
      (void)batch.Delete(schedule_, EncodeScheduleKey(JobType::kDelivery, rec.due_unix_ms(), rec.delivery_id()));
      rec.set_lease_deadline_unix_ms(grace_deadline);
      rec.set_due_unix_ms(grace_deadline);
      (void)batch.Put(schedule_, EncodeScheduleKey(JobType::kDelivery, grace_deadline, rec.delivery_id()), "");
      (void)batch.Put(deliveries_, key, rec.SerializeAsString());
      State(tern::v1::JOB_KIND_DELIVERY)
          .leases.Insert(rec.delivery_id(), grace_deadline, LeaseDomain(ShapingKey(rec.domain())));
      if (rec.data_sent_token() == rec.lease_token()) {
        data_sent_.insert(rec.delivery_id());
      }
      ++kept_leases;
      return;
    }
    if (!rec.lease_token().empty() && rec.data_sent_token() == rec.lease_token()) {
      // DATA was sent under this lease: keep the token (the ambiguity
      // check needs it) and let ApplyMarkAmbiguous decide, once started.
      (void)batch.Delete(schedule_, EncodeScheduleKey(JobType::kDelivery, rec.due_unix_ms(), rec.delivery_id()));
      rec.set_due_unix_ms(now);
      (void)batch.Put(schedule_, EncodeScheduleKey(JobType::kDelivery, now, rec.delivery_id()), "");
      (void)batch.Put(deliveries_, key, rec.SerializeAsString());
      recovered_data_sent_.push_back(rec.delivery_id());
      ++released;
    } else if (!rec.lease_token().empty()) {
      (void)batch.Delete(schedule_, EncodeScheduleKey(JobType::kDelivery, rec.due_unix_ms(), rec.delivery_id()));
      rec.clear_lease_token();
      rec.set_lease_deadline_unix_ms(0);
      rec.set_due_unix_ms(now);
      (void)batch.Put(schedule_, EncodeScheduleKey(JobType::kDelivery, now, rec.delivery_id()), "");
      (void)batch.Put(deliveries_, key, rec.SerializeAsString());
      log::Event(log::Level::kInfo, "lease_expired",
                 {{"delivery", rec.delivery_id()}, {"reason", "restart"}, {"now", "due"}});
      ++released;
    }
    due_.Add(rec.due_unix_ms(), 1);
  }));
  messages_thread.join();
  TERN_RETURN_IF_ERROR(message_scan);
  corrupt += message_corrupt;
  if (message_batch.Count() > 0) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    if (rocksdb::Status s = db_->Write(wo, &message_batch); !s.ok()) {
      return StorageError(s, "recovery write");
    }
  }
  TERN_RETURN_IF_ERROR(scan(BounceRecord{}, bounces_, kBouncesCf, [&](BounceRecord& rec, const rocksdb::Slice& key) {
    if (!rec.lease_token().empty()) {
      (void)batch.Delete(schedule_, EncodeScheduleKey(JobType::kBounce, rec.due_unix_ms(), rec.bounce_id()));
      rec.clear_lease_token();
      rec.set_lease_deadline_unix_ms(0);
      rec.set_due_unix_ms(now);
      (void)batch.Put(schedule_, EncodeScheduleKey(JobType::kBounce, now, rec.bounce_id()), "");
      (void)batch.Put(bounces_, key, rec.SerializeAsString());
      log::Event(log::Level::kInfo, "lease_expired",
                 {{"bounce", rec.bounce_id()}, {"reason", "restart"}, {"now", "due"}});
      ++released;
    }
    ++counters_.bounces;
  }));
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), corrupt_));
    int64_t kept = 0;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      ++kept;
    }
    // `kept` already holds the messages quarantined above (their batch is
    // written); the deliveries' and bounces' batch is written below.
    corrupt_count_ = kept + corrupt - message_corrupt;
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), events_));
    it->SeekToLast();
    if (it->Valid()) {
      event_seq_ = DecodeEventKey(absl::string_view(it->key().data(), it->key().size())).value_or(0);
    }
    it->SeekToFirst();
    if (it->Valid()) {
      first_event_seq_ = DecodeEventKey(absl::string_view(it->key().data(), it->key().size())).value_or(1);
    } else {
      first_event_seq_ = event_seq_ + 1;
    }
    committed_event_seq_ = event_seq_;
  }
  if (batch.Count() > 0) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = db_->Write(wo, &batch);
    if (!s.ok()) {
      return StorageError(s, "recovery write");
    }
  }
  due_.Advance(now);
  last_prune_ms_ = now;
  log::Event(log::Level::kNotice, "recovered",
             {{"messages", absl::StrCat(counters_.messages)},
              {"deliveries", absl::StrCat(counters_.deliveries)},
              {"bounces", absl::StrCat(counters_.bounces)},
              {"leases_released", absl::StrCat(released)},
              {"leases_kept_for_grace", absl::StrCat(kept_leases)},
              {"held", absl::StrCat(counters_.held)},
              {"last_event", absl::StrCat(event_seq_)},
              {"corrupt", absl::StrCat(corrupt)}});
  PublishGauges();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Enqueue.

void QueueCore::Impl::Enqueue(EnqueueHeader header, std::string body, Callback<EnqueueResult> done) {
  std::optional<uint64_t> free_bytes = FreeDiskBytes();
  std::optional<GroupOp> op = PrepareEnqueue(std::move(header), std::move(body), std::move(done), free_bytes);
  if (op) {
    Lead(*std::move(op));
  }
}

void QueueCore::Impl::EnqueueMany(std::vector<EnqueueArgs> items) {
  std::vector<GroupOp> ops;
  ops.reserve(items.size());
  // One look at the disk for the whole batch (statvfs per message was ~1 %
  // of the queue's CPU); each accepted body is subtracted from it, so the
  // batch as a whole keeps min_free_bytes free.
  std::optional<uint64_t> free_bytes = FreeDiskBytes();
  for (EnqueueArgs& item : items) {
    std::optional<GroupOp> op =
        PrepareEnqueue(std::move(item.header), std::move(item.body), std::move(item.done), free_bytes);
    if (op) {
      ops.push_back(*std::move(op));
    }
  }
  if (!ops.empty()) {
    committer_->SubmitAll(std::move(ops), /*lead=*/true);
  }
}

std::optional<uint64_t> QueueCore::Impl::FreeDiskBytes() const {
  if (min_free_bytes() == 0) {
    return std::nullopt;
  }
  // Unknown (nullopt): RocksDB's own out-of-space errors still refuse.
  return opt_.free_disk_bytes ? opt_.free_disk_bytes(opt_.data_dir) : AvailableDiskBytes(opt_.data_dir);
}

std::optional<GroupOp> QueueCore::Impl::PrepareEnqueue(EnqueueHeader header, std::string body,
                                                       Callback<EnqueueResult> done,
                                                       std::optional<uint64_t>& free_bytes, bool queue_report) {
  if (body.size() > kMaxBodyBytes) {
    done(absl::ResourceExhaustedError(absl::StrCat("message body over ", kMaxBodyBytes, " bytes")));
    return std::nullopt;
  }
  // The body goes to disk about twice (WAL, then blob or SST file).
  const uint64_t disk_bytes = 2 * body.size();
  if (free_bytes.has_value()) {
    if (*free_bytes < min_free_bytes() + disk_bytes) {
      Metrics().disk_full_refusals.Inc();
      done(absl::ResourceExhaustedError(absl::StrCat("queue disk almost full: ", *free_bytes,
                                                     " bytes free, keeping ", min_free_bytes())));
      return std::nullopt;
    }
  }
  const auto& rcpts = header.envelope().recipients();
  if (rcpts.empty()) {
    done(absl::InvalidArgumentError("the envelope has no recipient"));
    return std::nullopt;
  }
  auto call = std::make_shared<EnqueueCall>();
  absl::flat_hash_map<std::string, size_t> by_domain;
  for (int i = 0; i < rcpts.size(); ++i) {
    if (!rcpts[i].post_url().empty()) {
      // A POST goes wherever the URI says: only the queue's own TLS reports
      // may ask for one, never a client of the Enqueue RPCs.
      if (!queue_report) {
        done(absl::InvalidArgumentError("recipient post_url is set only by the queue itself"));
        return std::nullopt;
      }
      absl::StatusOr<tlsrpt::HttpsRua> rua = tlsrpt::ParseHttpsRua(rcpts[i].post_url());
      if (!rua.ok()) {
        done(rua.status());
        return std::nullopt;
      }
      // The origin ("https://host:port") is never a mail domain, so the
      // report's delivery shares no shaping or MX site with mail.
      call->splits.push_back({rua->Origin(), {i}});
      continue;
    }
    const std::string& addr = rcpts[i].address();
    const size_t at = addr.rfind('@');
    if (at == std::string::npos || at + 1 == addr.size()) {
      done(absl::InvalidArgumentError(absl::StrCat("recipient '", addr, "' has no @domain")));
      return std::nullopt;
    }
    // The grouping key (and the domain deliverers resolve) is the A-label
    // form, so U-label and A-label spellings of one domain share a delivery.
    // A domain without one can never be resolved: refused here, for good
    // (the bouncer treats INVALID_ARGUMENT as a double bounce).
    absl::StatusOr<std::string> ascii = address::DomainToAscii(absl::string_view(addr).substr(at + 1));
    if (!ascii.ok()) {
      done(absl::InvalidArgumentError(absl::StrCat("recipient '", addr, "': ", ascii.status().message())));
      return std::nullopt;
    }
    std::string domain = *std::move(ascii);
    if (always_split_.load(std::memory_order_relaxed)) {
      call->splits.push_back({std::move(domain), {i}});
      continue;
    }
    auto [it, inserted] = by_domain.try_emplace(domain, call->splits.size());
    if (inserted) {
      call->splits.push_back({std::move(domain), {}});
    }
    call->splits[it->second].second.push_back(i);
  }
  if (free_bytes.has_value()) {
    *free_bytes -= disk_bytes;  // taken: the next item of the batch has that much less
  }
  call->header = std::move(header);
  call->body = std::move(body);
  call->done = std::move(done);
  return GroupOp{
      [this, call](Txn& txn) { return ApplyEnqueue(txn, *call); },
      [call](const absl::Status& s) {
        if (s.ok()) {
          call->done(std::move(call->result));
        } else {
          call->done(s);
        }
      },
  };
}

absl::Status QueueCore::Impl::ApplyEnqueue(Txn& txn, EnqueueCall& call) {
  const int64_t now = clock_->NowUnixMs();
  const std::string idem = call.header.idempotency_key();
  if (!idem.empty()) {
    TERN_ASSIGN_OR_RETURN(std::optional<IdempotencyRecord> seen,
                          Read<IdempotencyRecord>(txn, meta_, kMetaCf, IdempotencyKey(idem)));
    // A key past its retention is as good as gone (the sweep may not have
    // reached it yet): the message is stored anew and the key rewritten.
    if (seen.has_value() && !seen->message_id().empty() && !IdempotencyExpired(*seen, now)) {
      call.result = EnqueueResult{seen->message_id(), true};
      txn.OnCommit([id = seen->message_id()] {
        Metrics().duplicates.Inc();
        log::Event(log::Level::kInfo, "enqueue_duplicate", {{"msg", id}});
      });
      return absl::OkStatus();
    }
  }

  const std::string id = NewMessageId();
  MessageRecord msg;
  msg.set_message_id(id);
  *msg.mutable_envelope() = std::move(*call.header.mutable_envelope());
  msg.set_arrival_unix_ms(now);
  msg.set_body_size(call.body.size());
  msg.set_open_jobs(static_cast<uint32_t>(call.splits.size()));
  msg.set_next_bounce_seq(1);
  msg.set_idempotency_key(idem);

  txn.Put(bodies_, id, call.body);
  const uint64_t size = call.body.size();
  std::string().swap(call.body);  // the batch holds the bytes now

  int64_t rcpt_count = 0;
  for (size_t n = 0; n < call.splits.size(); ++n) {
    DeliveryRecord d;
    d.set_delivery_id(DeliveryId(id, static_cast<uint32_t>(n + 1)));
    d.set_message_id(id);
    d.set_domain(call.splits[n].first);
    uint32_t index = 0;
    for (int pos : call.splits[n].second) {
      RecipientRecord* r = d.add_recipients();
      r->set_index(index++);
      *r->mutable_spec() = msg.envelope().recipients(pos);
      r->set_state(RECIPIENT_STATE_PENDING);
      r->set_next_attempt_unix_ms(now);
      ++rcpt_count;
    }
    d.set_due_unix_ms(now);
    d.set_arrival_unix_ms(now);
    PutRecord(txn, deliveries_, d.delivery_id(), d);
    ScheduleAt(txn, tern::v1::JOB_KIND_DELIVERY, d.delivery_id(), now, now);
  }
  PutRecord(txn, messages_, id, msg);
  if (!idem.empty()) {
    IdempotencyRecord rec;
    rec.set_message_id(id);
    rec.set_created_unix_ms(now);
    PutRecord(txn, meta_, IdempotencyKey(idem), rec);
  }
  Adjust(txn, counters_.messages, 1);
  Adjust(txn, counters_.deliveries, static_cast<int64_t>(call.splits.size()));
  Adjust(txn, counters_.recipients_pending, rcpt_count);
  Adjust(txn, counters_.enqueued, 1);
  {
    std::vector<std::string> rcpts;
    for (const auto& r : msg.envelope().recipients()) {
      rcpts.push_back(r.address());
    }
    AppendEvent(txn, "received", id, "", std::move(rcpts),
                absl::StrCat("from=<", msg.envelope().mail_from(), "> size=", size,
                             msg.envelope().client().ip().empty() ? "" : " client=", msg.envelope().client().ip()));
  }
  call.result = EnqueueResult{id, false};
  txn.OnCommit([this, id, from = msg.envelope().mail_from(), rcpt_count, size, n = call.splits.size()] {
    Metrics().enqueued.Inc();
    log::Event(log::Level::kInfo, "enqueued",
               {{"msg", id},
                {"from", from},
                {"rcpts", absl::StrCat(rcpt_count)},
                {"deliveries", absl::StrCat(n)},
                {"size", absl::StrCat(size)}});
    WakeWaiters(tern::v1::JOB_KIND_DELIVERY);
  });
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Lease.

void QueueCore::Impl::Lease(LeaseRequest request, Callback<LeaseResponse> done,
                            std::shared_ptr<const std::atomic<bool>> cancelled) {
  if (request.kind() != tern::v1::JOB_KIND_DELIVERY && request.kind() != tern::v1::JOB_KIND_BOUNCE) {
    done(absl::InvalidArgumentError("lease: kind must be JOB_KIND_DELIVERY or JOB_KIND_BOUNCE"));
    return;
  }
  auto call = std::make_shared<LeaseCall>();
  const uint32_t wait_ms = std::min(request.wait_ms(), opt_.max_wait_ms);
  call->wait_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  call->request = std::move(request);
  call->done = std::move(done);
  call->cancelled = std::move(cancelled);
  SubmitLease(std::move(call));
}

void QueueCore::Impl::SubmitLease(std::shared_ptr<LeaseCall> call) {
  Lead(GroupOp{
      [this, call](Txn& txn) { return ApplyLease(txn, *call); },
      [this, call](const absl::Status& s) {
        if (!s.ok()) {
          call->done(s);
        } else if (call->parked) {
          // Work committed in this same group woke nobody (this call was not
          // parked yet), so look again at once if anything is in the window.
          State(call->request.kind()).waiters.push_back(call);
          WakeWaiters(call->request.kind());
        } else {
          call->done(std::move(call->response));
        }
      },
      // A lease need not outlive a power loss: see GroupOp::durable.
      /*durable=*/false,
  });
}

absl::Status QueueCore::Impl::ApplyLease(Txn& txn, LeaseCall& call) {
  const int64_t now = clock_->NowUnixMs();
  const JobKind kind = call.request.kind();
  KindState& ks = State(kind);
  call.response.Clear();
  call.parked = false;
  if (call.Cancelled()) {
    // The caller left (e.g. a deliverer or bouncer stopping mid long poll):
    // answer empty rather than lease jobs nobody will receive.
    return absl::OkStatus();
  }
  ExpireLeases(kind, now);

  if (!(kind == tern::v1::JOB_KIND_DELIVERY && disabled_)) {
    if (kind == tern::v1::JOB_KIND_DELIVERY) {
      ReleaseParked();
    }
    if (ks.window.size() <= opt_.ready_window / 2) {
      Refill(kind, now, &txn);
    }
    const uint64_t budget = call.request.max_body_bytes() > 0
                                ? std::min<uint64_t>(call.request.max_body_bytes(), opt_.max_lease_body_bytes)
                                : opt_.max_lease_body_bytes;
    const uint32_t max_jobs = std::clamp<uint32_t>(call.request.max_jobs(), 1, kMaxJobsPerLease);
    const int64_t seconds = call.request.lease_seconds() > 0
                                ? std::min<int64_t>(call.request.lease_seconds(), opt_.max_lease_seconds)
                                : std::min<int64_t>(opt_.lease_seconds, opt_.max_lease_seconds);
    const int64_t lease_ms = std::max<int64_t>(seconds, 1) * 1000;
    uint64_t bytes = 0;
    uint32_t leased = 0;
    // Candidates taken from the window go back to it if this operation fails.
    auto popped = std::make_shared<std::vector<std::pair<std::string, int64_t>>>();
    txn.OnUndo([&ks, popped] {
      for (auto it = popped->rbegin(); it != popped->rend(); ++it) {
        ks.window.PushFront(it->first, it->second);
      }
    });
    while (leased < max_jobs) {
      auto candidate = ks.window.Pop();
      if (!candidate.has_value()) {
        break;
      }
      popped->push_back(*candidate);
      if (kind == tern::v1::JOB_KIND_DELIVERY) {
        NoteTakenFromWindow(candidate->first);
      }
      auto step = kind == tern::v1::JOB_KIND_DELIVERY
                      ? LeaseDelivery(txn, candidate->first, candidate->second, now, lease_ms, budget, &bytes,
                                      call.response, call.request.worker_id())
                      : LeaseBounce(txn, candidate->first, candidate->second, now, lease_ms, budget, &bytes,
                                    call.response);
      if (!step.ok()) {
        return step.status();
      }
      if (*step == LeaseStep::kOverBudget) {
        popped->pop_back();
        ks.window.PushFront(candidate->first, candidate->second);
        break;
      }
      if (*step == LeaseStep::kLeased) {
        ++leased;
      }
    }
  }
  const bool empty = call.response.deliveries().empty() && call.response.bounces().empty();
  if (empty && !shutting_down_ && std::chrono::steady_clock::now() < call.wait_until) {
    call.parked = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<LeaseStep> QueueCore::Impl::LeaseDelivery(Txn& txn, const std::string& id, int64_t key_due,
                                                         int64_t now, int64_t lease_ms, uint64_t budget,
                                                         uint64_t* bytes, LeaseResponse& resp,
                                                         const std::string& worker) {
  const JobKind kind = tern::v1::JOB_KIND_DELIVERY;
  TERN_ASSIGN_OR_RETURN(std::optional<DeliveryRecord> rec, Read<DeliveryRecord>(txn, deliveries_, kDeliveriesCf, id));
  if (!rec.has_value() || rec->due_unix_ms() != key_due) {
    // A schedule key without its record, or left behind: remove it.
    txn.Delete(schedule_, EncodeScheduleKey(JobType::kDelivery, key_due, id));
    if (!rec.has_value()) {
      return LeaseStep::kSkipped;
    }
  }
  if (rec->due_unix_ms() > now || State(kind).leases.Contains(id)) {
    return LeaseStep::kSkipped;
  }
  if (rec->held()) {
    // Held while its lease was out; the lease is over: take it out.
    Detach(txn, *rec);
    rec->clear_lease_token();
    rec->set_lease_deadline_unix_ms(0);
    Adjust(txn, counters_.held, 1);
    PutRecord(txn, deliveries_, id, *rec);
    return LeaseStep::kSkipped;
  }
  if (!rec->data_sent_token().empty() && rec->data_sent_token() == rec->lease_token()) {
    const bool held = ApplyAmbiguity(txn, *rec, kLeaseExpiredAfterData);
    PutRecord(txn, deliveries_, id, *rec);
    if (held) {
      return LeaseStep::kSkipped;
    }
  }
  const std::string& shaping_key = ShapingKey(rec->domain());
  if (const Throttle why = ThrottleFor(shaping_key, now); why != Throttle::kNone) {
    ParkDelivery(txn, why, shaping_key, id, rec->due_unix_ms());
    return LeaseStep::kSkipped;
  }
  TERN_ASSIGN_OR_RETURN(std::optional<MessageRecord> msg,
                        Read<MessageRecord>(txn, messages_, kMessagesCf, rec->message_id()));
  if (!msg.has_value()) {
    DropDelivery(txn, *rec, std::nullopt, "message record missing");
    return LeaseStep::kSkipped;
  }
  if (max_queue_age_ms() > 0 && now - ArrivalOf(*rec) >= max_queue_age_ms()) {
    TERN_RETURN_IF_ERROR(ExpireDelivery(txn, *rec, *msg, now));
    SaveOrRetireMessage(txn, *msg);
    return LeaseStep::kSkipped;
  }
  const bool first = resp.deliveries().empty();
  if (!first && *bytes + msg->body_size() > budget) {
    return LeaseStep::kOverBudget;
  }
  std::string body;
  rocksdb::Status s = txn.Get(bodies_, rec->message_id(), &body);
  if (s.IsNotFound()) {
    DropDelivery(txn, *rec, std::move(msg), "message body missing");
    return LeaseStep::kSkipped;
  }
  if (!s.ok()) {
    return StorageError(s, "read body");
  }

  const std::string token = NewRandomToken();
  const int64_t deadline = now + lease_ms;
  const bool expired = !rec->lease_token().empty();
  Unschedule(txn, kind, id, rec->due_unix_ms());
  MarkLeased(txn, kind, id, deadline, LeaseDomain(shaping_key));
  TakeRate(txn, shaping_key, now);
  rec->set_lease_token(token);
  rec->set_lease_deadline_unix_ms(deadline);
  rec->set_due_unix_ms(deadline);
  rec->set_tries(rec->tries() + 1);
  rec->set_lease_holder(worker);
  rec->clear_data_sent_token();
  data_sent_.erase(id);
  PutRecord(txn, deliveries_, id, *rec);
  AppendEvent(txn, "leased", rec->message_id(), id, {},
              absl::StrCat("worker=", worker.empty() ? "-" : worker, " attempt=", rec->tries(),
                           expired ? " after_expiry" : ""));

  DeliveryJob* job = resp.add_deliveries();
  job->set_delivery_id(id);
  job->set_message_id(rec->message_id());
  job->set_lease_token(token);
  job->set_lease_deadline_unix_ms(deadline);
  job->set_domain(rec->domain());
  const auto& env = msg->envelope();
  job->set_mail_from(env.mail_from());
  for (const RecipientRecord& r : rec->recipients()) {
    if (IsPending(r)) {
      tern::v1::DeliveryRecipient* out = job->add_recipients();
      out->set_index(r.index());
      *out->mutable_spec() = r.spec();
      out->set_attempts(r.attempts());
    }
  }
  job->set_body(std::move(body));
  job->set_smtputf8(env.smtputf8());
  job->set_requiretls(env.requiretls());
  job->set_body_8bit(env.body_8bit());
  job->set_ret(env.ret());
  job->set_envid(env.envid());
  job->set_attempt(rec->tries());
  *bytes += msg->body_size();
  txn.OnCommit([id, tries = rec->tries(), expired] {
    log::Event(log::Level::kDebug, "leased",
               {{"delivery", id}, {"attempt", absl::StrCat(tries)}, {"after_expiry", expired ? "yes" : "no"}});
  });
  return LeaseStep::kLeased;
}

absl::StatusOr<LeaseStep> QueueCore::Impl::LeaseBounce(Txn& txn, const std::string& id, int64_t key_due,
                                                       int64_t now, int64_t lease_ms, uint64_t budget,
                                                       uint64_t* bytes, LeaseResponse& resp) {
  const JobKind kind = tern::v1::JOB_KIND_BOUNCE;
  TERN_ASSIGN_OR_RETURN(std::optional<BounceRecord> rec, Read<BounceRecord>(txn, bounces_, kBouncesCf, id));
  if (!rec.has_value() || rec->due_unix_ms() != key_due) {
    txn.Delete(schedule_, EncodeScheduleKey(JobType::kBounce, key_due, id));
    if (!rec.has_value()) {
      return LeaseStep::kSkipped;
    }
  }
  if (rec->due_unix_ms() > now || State(kind).leases.Contains(id)) {
    return LeaseStep::kSkipped;
  }
  TERN_ASSIGN_OR_RETURN(std::optional<MessageRecord> msg,
                        Read<MessageRecord>(txn, messages_, kMessagesCf, rec->message_id()));
  std::string body;
  rocksdb::Status s = msg.has_value() ? txn.Get(bodies_, rec->message_id(), &body) : rocksdb::Status::NotFound();
  if (!s.ok() && !s.IsNotFound()) {
    return StorageError(s, "read body");
  }
  if (!msg.has_value() || s.IsNotFound()) {
    // Without the original there is no DSN to write; keep the job for an
    // operator in the corrupt CF rather than lose it silently.
    Unschedule(txn, kind, id, rec->due_unix_ms());
    txn.Put(corrupt_, CorruptKey(kBouncesCf, id), rec->SerializeAsString());
    txn.Delete(bounces_, id);
    Adjust(txn, counters_.bounces, -1);
    if (msg.has_value()) {
      msg->set_open_jobs(msg->open_jobs() > 0 ? msg->open_jobs() - 1 : 0);
      SaveOrRetireMessage(txn, *msg);
    }
    txn.OnCommit([id] {
      Metrics().corrupt_records.Inc();
      log::Event(log::Level::kError, "bounce_dropped",
                 {{"bounce", id}, {"reason", "original message missing"}, {"moved_to", kCorruptCf}});
    });
    return LeaseStep::kSkipped;
  }
  // A REQUIRETLS message from <> is (nearly always) a DSN: if it cannot go
  // with REQUIRETLS, the bouncer sends its report again redacted, and reads
  // that report from the whole text (RFC 8689 §5; a DSN is small).
  const bool full = msg->envelope().ret() == tern::v1::DSN_RET_FULL ||
                    (msg->envelope().requiretls() && msg->envelope().mail_from().empty());
  const uint64_t original_size = body.size();
  std::string original = full ? std::move(body) : HeadersOf(body);
  const bool first = resp.bounces().empty();
  if (!first && *bytes + original.size() > budget) {
    return LeaseStep::kOverBudget;
  }

  const std::string token = NewRandomToken();
  const int64_t deadline = now + lease_ms;
  Unschedule(txn, kind, id, rec->due_unix_ms());
  MarkLeased(txn, kind, id, deadline);
  rec->set_lease_token(token);
  rec->set_lease_deadline_unix_ms(deadline);
  rec->set_due_unix_ms(deadline);
  rec->set_tries(rec->tries() + 1);
  PutRecord(txn, bounces_, id, *rec);

  BounceJob* job = resp.add_bounces();
  job->set_bounce_id(id);
  job->set_message_id(rec->message_id());
  job->set_lease_token(token);
  job->set_lease_deadline_unix_ms(deadline);
  job->set_kind(rec->kind());
  *job->mutable_envelope() = msg->envelope();
  job->set_arrival_unix_ms(msg->arrival_unix_ms());
  *job->mutable_recipients() = rec->recipients();
  *bytes += original.size();
  job->set_original(std::move(original));
  job->set_original_is_full(full);
  job->set_original_size(original_size);
  job->set_will_retry_until_unix_ms(rec->will_retry_until_unix_ms());
  return LeaseStep::kLeased;
}

void QueueCore::Impl::ExpireLeases(JobKind kind, int64_t now) {
  KindState& ks = State(kind);
  while (auto first = ks.leases.FirstExpired(now)) {
    int64_t deadline = 0;
    ks.leases.Erase(first->second, &deadline);
    if (kind == tern::v1::JOB_KIND_DELIVERY) {
      due_.Add(deadline, 1);
      if (data_sent_.erase(first->second) > 0) {
        // Decide about ambiguity now, not at the next lease: with
        // ambiguous_policy=hold it must be held even while paused.
        committer_->Submit(GroupOp{[this, id = first->second](Txn& txn) { return ApplyMarkAmbiguous(txn, id); },
                                   [](const absl::Status&) {}});
      }
    }
    Offer(kind, first->second, deadline);
    Metrics().leases_expired.Inc();
    log::Event(log::Level::kNotice, "lease_expired",
               {{KindName(kind), first->second}, {"deadline_ms", absl::StrCat(deadline)}, {"now", "due"}});
  }
}

// Tops the ready window up from the schedule: keys of `kind` due at or
// before `now`, from the scan cursor on. Inside an operation `txn` is given and
// the scan sees the group's uncommitted writes too, so the cursor never moves
// past a key that an earlier operation of the same group wrote.
void QueueCore::Impl::Refill(JobKind kind, int64_t now, Txn* txn) {
  KindState& ks = State(kind);
  if (now < ks.scan_cursor) {
    ks.scan_cursor = 0;  // the clock went back
  }
  const std::string start = EncodeScheduleKey(TypeOf(kind), ks.scan_cursor, "");
  const std::string limit = ScheduleScanLimit(TypeOf(kind), now);
  const rocksdb::Slice limit_slice(limit);
  rocksdb::ReadOptions bounded;
  bounded.iterate_upper_bound = &limit_slice;
  std::unique_ptr<rocksdb::Iterator> it =
      txn != nullptr ? txn->NewIterator(schedule_, &limit_slice)
                     : std::unique_ptr<rocksdb::Iterator>(db_->NewIterator(bounded, schedule_));
  int64_t last_due = ks.scan_cursor;
  bool full = false;
  for (it->Seek(start); it->Valid() && it->key().compare(limit_slice) < 0; it->Next()) {
    if (ks.window.size() >= opt_.ready_window) {
      full = true;
      break;
    }
    auto key = DecodeScheduleKey(absl::string_view(it->key().data(), it->key().size()));
    if (!key.has_value()) {
      continue;
    }
    last_due = key->due_unix_ms;
    ks.window.Insert(key->job_id, key->due_unix_ms, opt_.ready_window);
  }
  if (!it->status().ok()) {
    log::Event(log::Level::kError, "schedule_scan_failed", {{"error", it->status().ToString()}});
    return;
  }
  ks.scan_cursor = full ? last_due : now;
}

void QueueCore::Impl::WakeWaiters(JobKind kind) {
  KindState& ks = State(kind);
  if (kind == tern::v1::JOB_KIND_DELIVERY && disabled_) {
    return;
  }
  size_t n = std::min(ks.waiters.size(), ks.window.size());
  while (n-- > 0) {
    auto call = std::move(ks.waiters.front());
    ks.waiters.pop_front();
    SubmitLease(std::move(call));
  }
}

void QueueCore::Impl::OnTick() {
  const int64_t now = clock_->NowUnixMs();
  const auto steady_now = std::chrono::steady_clock::now();
  for (JobKind kind : {tern::v1::JOB_KIND_DELIVERY, tern::v1::JOB_KIND_BOUNCE}) {
    KindState& ks = State(kind);
    ExpireLeases(kind, now);
    if (kind == tern::v1::JOB_KIND_DELIVERY) {
      ReleaseParked();  // leases that expired, or ended by an admin action
      if (!backoff_.empty()) {
        EndBackoffs(now);
      }
    }
    if (ks.window.size() <= opt_.ready_window / 2) {
      Refill(kind, now, nullptr);
    }
    // Long polls that waited long enough get their empty answer.
    for (auto it = ks.waiters.begin(); it != ks.waiters.end();) {
      if ((*it)->wait_until <= steady_now || (*it)->Cancelled()) {
        (*it)->done(LeaseResponse());
        it = ks.waiters.erase(it);
      } else {
        ++it;
      }
    }
    WakeWaiters(kind);
  }
  due_.Advance(now);
  PublishGauges();
  if (now - last_prune_ms_ >= 5000 || now < last_prune_ms_) {
    last_prune_ms_ = now;
    PruneEvents();
    PruneIdempotencyKeys();
    PruneDeleted();
    rate_.Prune(now);
    PruneMxSites(now);
  }
  // TLS reports: the report thread looks for finished days (and counts past
  // their retention) at most once a minute; the tick only wakes it.
  if (tlsrpt_wake_ms_ == 0 || now - tlsrpt_wake_ms_ >= 60'000 || now < tlsrpt_wake_ms_) {
    tlsrpt_wake_ms_ = now;
    WakeTlsReporter();
  }
}

void QueueCore::Impl::PublishGauges() {
  CoreMetrics& m = Metrics();
  const int64_t leased = static_cast<int64_t>(State(tern::v1::JOB_KIND_DELIVERY).leases.size());
  m.messages.Set(counters_.messages);
  m.deliveries_due.Set(due_.due());
  m.deliveries_leased.Set(leased);
  m.deliveries_deferred.Set(due_.total() - due_.due());
  m.bounces.Set(counters_.bounces);
  m.bounces_leased.Set(static_cast<int64_t>(State(tern::v1::JOB_KIND_BOUNCE).leases.size()));
  m.recipients_pending.Set(counters_.recipients_pending);
  m.deliveries_held.Set(counters_.held);
  m.deliveries_throttled.Set(static_cast<int64_t>(State(tern::v1::JOB_KIND_DELIVERY).parked.size()));
}

// ---------------------------------------------------------------------------
// Report.

void QueueCore::Impl::Report(ReportRequest request, Callback<ReportResponse> done) {
  struct Call {
    ReportRequest request;
    ReportResponse response;
    Callback<ReportResponse> done;
  };
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  call->done = std::move(done);
  Lead(GroupOp{
      [this, call](Txn& txn) -> absl::Status {
        call->response.Clear();
        return ApplyReports(txn, call->request.reports(), call->response.mutable_statuses());
      },
      [this, call](const absl::Status& s) {
        if (s.ok()) {
          AfterReports();
          call->done(std::move(call->response));
        } else {
          call->done(s);
        }
      },
  });
}

absl::Status QueueCore::Impl::ApplyReports(Txn& txn,
                                           const google::protobuf::RepeatedPtrField<tern::v1::DeliveryReport>& reports,
                                           google::protobuf::RepeatedField<int>* statuses) {
  const int64_t now = clock_->NowUnixMs();
  for (const auto& report : reports) {
    TERN_ASSIGN_OR_RETURN(ReportStatus status, ApplyOneReport(txn, report, now));
    statuses->Add(status);
  }
  return absl::OkStatus();
}

void QueueCore::Impl::AfterReports() {
  // Ended leases may have freed a full destination's slots: hand its waiting
  // deliveries to a long poll now, not at the next tick (before the reply,
  // so the reporter sees the new state).
  if (ReleaseParked() > 0) {
    WakeWaiters(tern::v1::JOB_KIND_DELIVERY);
  }
}

// The longest delay a hook may ask for (a year): a typo in a hook cannot
// park mail for centuries; max_queue_age still bounces it on time.
constexpr int64_t kMaxHookDelaySeconds = 365LL * 24 * 3600;

int64_t QueueCore::Impl::DelayForUnreported(uint32_t attempts) const {
  const auto& intervals = opt_.retry.intervals_ms();
  if (intervals.empty()) {
    return 64000;  // Haraka's first default interval
  }
  const size_t i = attempts == 0 ? 0 : std::min<size_t>(attempts - 1, intervals.size() - 1);
  return intervals[i];
}

absl::StatusOr<ReportStatus> QueueCore::Impl::ApplyOneReport(Txn& txn, const tern::v1::DeliveryReport& report,
                                                             int64_t now) {
  const JobKind kind = tern::v1::JOB_KIND_DELIVERY;
  const std::string& id = report.delivery_id();
  TERN_ASSIGN_OR_RETURN(std::optional<DeliveryRecord> rec, Read<DeliveryRecord>(txn, deliveries_, kDeliveriesCf, id));
  if (!rec.has_value()) {
    return tern::v1::REPORT_STATUS_UNKNOWN;
  }
  if (report.lease_token().empty() || rec->lease_token() != report.lease_token()) {
    txn.OnCommit([id] {
      Metrics().stale_reports.Inc();
      log::Event(log::Level::kNotice, "stale_report", {{"delivery", id}});
    });
    return tern::v1::REPORT_STATUS_STALE_LEASE;
  }
  // Validate the whole report before changing anything.
  absl::flat_hash_map<uint32_t, int> position;  // index -> position in rec
  for (int i = 0; i < rec->recipients_size(); ++i) {
    position[rec->recipients(i).index()] = i;
  }
  absl::flat_hash_set<uint32_t> seen;
  for (const auto& rr : report.recipients()) {
    auto it = position.find(rr.index());
    const Outcome outcome = rr.result().outcome();
    if (it == position.end() || !IsPending(rec->recipients(it->second)) || !seen.insert(rr.index()).second ||
        (outcome != tern::v1::OUTCOME_DELIVERED && outcome != tern::v1::OUTCOME_TRANSIENT &&
         outcome != tern::v1::OUTCOME_PERMANENT)) {
      return tern::v1::REPORT_STATUS_INVALID;
    }
  }
  TERN_ASSIGN_OR_RETURN(std::optional<MessageRecord> msg,
                        Read<MessageRecord>(txn, messages_, kMessagesCf, rec->message_id()));
  if (!msg.has_value()) {
    DropDelivery(txn, *rec, std::nullopt, "message record missing");
    return tern::v1::REPORT_STATUS_UNKNOWN;
  }

  const int64_t pending_before = PendingCount(*rec);
  const int64_t arrival = ArrivalOf(*rec);
  rec->clear_data_sent_token();
  data_sent_.erase(id);
  std::vector<BouncedRecipient> failed;
  std::vector<BouncedRecipient> delivered_notify;
  const std::string& msg_id = rec->message_id();
  {
    // Feedback for the destination's congestion backoff, from the replies
    // as the deliverer got them; in memory, once the report is committed.
    // The MX host that answered also tells which MX site, if any, serves
    // the domain (NoteMxSite).
    bool congested = false;
    bool delivered = false;
    std::string reply;
    std::string remote_mta;
    for (const auto& rr : report.recipients()) {
      const tern::v1::RecipientResult& res = rr.result();
      if (remote_mta.empty() && opt_.shaping.has_sites()) {
        remote_mta = res.remote_mta();
      }
      if (res.outcome() == tern::v1::OUTCOME_DELIVERED) {
        delivered = true;
      } else if (res.outcome() == tern::v1::OUTCOME_TRANSIENT && !congested &&
                 IsCongestion(res.reply_code(), res.reply_text())) {
        congested = true;
        reply = ReplySummary(res);
      }
    }
    if (!remote_mta.empty()) {
      NoteMxSite(txn, rec->domain(), remote_mta, now);
    }
    if (congested || (delivered && !backoff_.empty())) {
      // After NoteMxSite's own commit effect: a 421 from a site's host
      // lowers the site the report just tied the domain to.
      txn.OnCommit([this, domain = rec->domain(), congested, delivered, reply = std::move(reply), now] {
        NoteDestinationFeedback(ShapingKey(domain), congested, delivered, reply, now);
      });
    }
  }
  for (const auto& rr : report.recipients()) {
    RecipientRecord& r = *rec->mutable_recipients(position[rr.index()]);
    tern::v1::RecipientResult result = rr.result();
    if (result.at_unix_ms() == 0) {
      result.set_at_unix_ms(now);
    }
    const uint32_t notify = r.spec().notify();
    const bool never = (notify & tern::v1::NOTIFY_NEVER) != 0;
    const char* event = nullptr;
    std::string delay;
    switch (result.outcome()) {
      case tern::v1::OUTCOME_DELIVERED:
        r.set_state(RECIPIENT_STATE_DELIVERED);
        Adjust(txn, counters_.delivered, 1);
        event = "delivered";
        if (!never && (notify & tern::v1::NOTIFY_SUCCESS) != 0) {
          BouncedRecipient b;
          *b.mutable_spec() = r.spec();
          *b.mutable_result() = result;
          delivered_notify.push_back(std::move(b));
        }
        break;
      case tern::v1::OUTCOME_TRANSIENT: {
        r.set_attempts(r.attempts() + 1);
        const std::optional<int64_t> wait = opt_.retry.DelayAfterFailureMs(r.attempts());
        const int64_t expiry = max_queue_age_ms() > 0 ? arrival + max_queue_age_ms() : INT64_MAX;
        if (wait.has_value() && now < expiry) {
          // The user's deferred hook may name its own delay; the attempt still
          // counted above, so a hook that always delays cannot keep mail forever.
          const int64_t hook_wait = std::min<int64_t>(result.retry_in_seconds(), kMaxHookDelaySeconds) * 1000;
          const int64_t chosen = hook_wait > 0 ? hook_wait : *wait;
          r.set_state(RECIPIENT_STATE_DEFERRED);
          // Never wait past the message's expiry: it bounces on time.
          r.set_next_attempt_unix_ms(std::min(now + chosen, expiry));
          Adjust(txn, counters_.deferred, 1);
          event = "deferred";
          delay = absl::StrCat(chosen / 1000);
          break;
        }
        // Retries used up: a permanent failure, as Haraka words it; or the
        // message is older than max_queue_age (RFC 3463 5.4.7).
        const std::string last = ReplySummary(result);
        std::string status = result.enhanced_status();
        if (now >= expiry) {
          status = "5.4.7";
        } else if (status.empty()) {
          status = "5.0.0";
        } else if (status[0] == '4') {
          status[0] = '5';
        }
        result.set_enhanced_status(status);
        result.set_reply_text(now >= expiry ? absl::StrCat("Message expired after ", (now - arrival) / 1000,
                                                           " s in the queue (", last, ")")
                                            : absl::StrCat("Too many failures (", last, ")"));
        result.set_outcome(tern::v1::OUTCOME_PERMANENT);
        [[fallthrough]];
      }
      case tern::v1::OUTCOME_PERMANENT:
        r.set_state(RECIPIENT_STATE_FAILED);
        Adjust(txn, counters_.failed, 1);
        event = "failed";
        // suppress_dsn: the user's deferred hook dropped the recipient (only
        // honoured on a failure the deliverer reported as permanent).
        if (!never && (notify == 0 || (notify & tern::v1::NOTIFY_FAILURE) != 0) &&
            !(rr.result().outcome() == tern::v1::OUTCOME_PERMANENT && rr.result().suppress_dsn())) {
          BouncedRecipient b;
          *b.mutable_spec() = r.spec();
          *b.mutable_result() = result;
          failed.push_back(std::move(b));
        }
        break;
      default:
        break;
    }
    *r.mutable_last_result() = result;
    AppendEvent(txn, event, msg_id, id, {r.spec().address()},
                delay.empty() ? ReplySummary(result) : absl::StrCat(ReplySummary(result), " retry_in_s=", delay));
    txn.OnCommit([event, msg_id, id, rcpt = r.spec().address(), relay = Relay(result), dsn = result.enhanced_status(),
                  reply = ReplySummary(result), attempts = r.attempts(), delay] {
      if (std::string_view(event) == "delivered") {
        Metrics().delivered.Inc();
      } else if (std::string_view(event) == "deferred") {
        Metrics().deferred.Inc();
      } else {
        Metrics().failed.Inc();
      }
      const log::Level level = std::string_view(event) == "delivered" ? log::Level::kInfo : log::Level::kNotice;
      if (delay.empty()) {
        log::Event(level, event,
                   {{"msg", msg_id},
                    {"delivery", id},
                    {"rcpt", rcpt},
                    {"relay", relay},
                    {"dsn", dsn},
                    {"attempts", absl::StrCat(attempts)},
                    {"reply", reply}});
      } else {
        log::Event(level, event,
                   {{"msg", msg_id},
                    {"delivery", id},
                    {"rcpt", rcpt},
                    {"relay", relay},
                    {"dsn", dsn},
                    {"attempts", absl::StrCat(attempts)},
                    {"retry_in_s", delay},
                    {"reply", reply}});
      }
    });
  }
  // Recipients the report left out were not tried: they wait for the retry
  // interval their attempt count gives, or what the send_email hook asked
  // for, without counting an attempt (so a deliverer that keeps leaving one
  // out cannot make the queue spin).
  const int64_t unreported_wait =
      report.delay_unreported_seconds() > 0
          ? std::min<int64_t>(report.delay_unreported_seconds(), kMaxHookDelaySeconds) * 1000
          : -1;
  for (RecipientRecord& r : *rec->mutable_recipients()) {
    if (IsPending(r) && !seen.contains(r.index())) {
      r.set_next_attempt_unix_ms(now + (unreported_wait >= 0 ? unreported_wait : DelayForUnreported(r.attempts())));
    }
  }

  MaybeWarnDelay(txn, *rec, *msg, now);
  const int64_t pending_after = PendingCount(*rec);
  Adjust(txn, counters_.recipients_pending, pending_after - pending_before);
  Unschedule(txn, kind, id, rec->due_unix_ms());
  rec->clear_lease_token();
  rec->set_lease_deadline_unix_ms(0);
  if (pending_after > 0) {
    int64_t next = INT64_MAX;
    for (const RecipientRecord& r : rec->recipients()) {
      if (IsPending(r)) {
        next = std::min(next, r.next_attempt_unix_ms());
      }
    }
    rec->set_due_unix_ms(next);
    PutRecord(txn, deliveries_, id, *rec);
    if (rec->held()) {
      Adjust(txn, counters_.held, 1);  // held during the lease: now out of the schedule
    } else {
      ScheduleAt(txn, kind, id, next, now);
    }
  } else {
    txn.Delete(deliveries_, id);
    Adjust(txn, counters_.deliveries, -1);
    msg->set_open_jobs(msg->open_jobs() > 0 ? msg->open_jobs() - 1 : 0);
  }
  if (!failed.empty()) {
    CreateBounce(txn, *msg, tern::v1::BOUNCE_KIND_FAILED, std::move(failed), id, now);
  }
  if (!delivered_notify.empty()) {
    CreateBounce(txn, *msg, tern::v1::BOUNCE_KIND_DELIVERED, std::move(delivered_notify), id, now);
  }
  SaveOrRetireMessage(txn, *msg);
  return tern::v1::REPORT_STATUS_APPLIED;
}

void QueueCore::Impl::CreateBounce(Txn& txn, MessageRecord& msg, BounceKind kind, std::vector<BouncedRecipient> rcpts,
                                   const std::string& delivery_id, int64_t now, int64_t will_retry_until) {
  BounceRecord b;
  b.set_bounce_id(BounceId(msg.message_id(), std::max<uint32_t>(msg.next_bounce_seq(), 1)));
  msg.set_next_bounce_seq(std::max<uint32_t>(msg.next_bounce_seq(), 1) + 1);
  msg.set_open_jobs(msg.open_jobs() + 1);
  b.set_message_id(msg.message_id());
  b.set_kind(kind);
  for (auto& r : rcpts) {
    *b.add_recipients() = std::move(r);
  }
  b.set_created_unix_ms(now);
  b.set_due_unix_ms(now);
  b.set_will_retry_until_unix_ms(will_retry_until);
  PutRecord(txn, bounces_, b.bounce_id(), b);
  {
    std::vector<std::string> addrs;
    for (const auto& r : b.recipients()) {
      addrs.push_back(r.spec().address());
    }
    AppendEvent(txn, "bounce_created", msg.message_id(), b.bounce_id(), std::move(addrs),
                absl::StrCat("kind=", BounceKindName(kind), " delivery=", delivery_id));
  }
  ScheduleAt(txn, tern::v1::JOB_KIND_BOUNCE, b.bounce_id(), now, now);
  Adjust(txn, counters_.bounces, 1);
  txn.OnCommit([this, id = b.bounce_id(), msg_id = msg.message_id(), delivery_id, kind,
                n = b.recipients_size()] {
    Metrics().bounces_created.Inc();
    log::Event(log::Level::kInfo, "bounce_created",
               {{"msg", msg_id},
                {"bounce", id},
                {"delivery", delivery_id},
                {"kind", BounceKindName(kind)},
                {"rcpts", absl::StrCat(n)}});
    WakeWaiters(tern::v1::JOB_KIND_BOUNCE);
  });
}

// ---------------------------------------------------------------------------
// Ack.

void QueueCore::Impl::Ack(AckRequest request, Callback<AckResponse> done) {
  struct Call {
    AckRequest request;
    AckResponse response;
    Callback<AckResponse> done;
  };
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  call->done = std::move(done);
  Lead(GroupOp{
      [this, call](Txn& txn) -> absl::Status {
        call->response.Clear();
        for (const auto& ack : call->request.acks()) {
          TERN_ASSIGN_OR_RETURN(ReportStatus status, ApplyOneAck(txn, ack));
          call->response.add_statuses(status);
        }
        return absl::OkStatus();
      },
      [call](const absl::Status& s) {
        if (s.ok()) {
          call->done(std::move(call->response));
        } else {
          call->done(s);
        }
      },
  });
}

absl::StatusOr<ReportStatus> QueueCore::Impl::ApplyOneAck(Txn& txn, const tern::v1::BounceAck& ack) {
  const std::string& id = ack.bounce_id();
  TERN_ASSIGN_OR_RETURN(std::optional<BounceRecord> rec, Read<BounceRecord>(txn, bounces_, kBouncesCf, id));
  if (!rec.has_value()) {
    return tern::v1::REPORT_STATUS_UNKNOWN;
  }
  if (ack.lease_token().empty() || rec->lease_token() != ack.lease_token()) {
    txn.OnCommit([id] {
      Metrics().stale_reports.Inc();
      log::Event(log::Level::kNotice, "stale_ack", {{"bounce", id}});
    });
    return tern::v1::REPORT_STATUS_STALE_LEASE;
  }
  Unschedule(txn, tern::v1::JOB_KIND_BOUNCE, id, rec->due_unix_ms());
  txn.Delete(bounces_, id);
  Adjust(txn, counters_.bounces, -1);
  TERN_ASSIGN_OR_RETURN(std::optional<MessageRecord> msg,
                        Read<MessageRecord>(txn, messages_, kMessagesCf, rec->message_id()));
  if (msg.has_value()) {
    msg->set_open_jobs(msg->open_jobs() > 0 ? msg->open_jobs() - 1 : 0);
    SaveOrRetireMessage(txn, *msg);
  }
  AppendEvent(txn, "dsn_done", rec->message_id(), id, {},
              ack.dsn_message_id().empty() ? "no DSN sent" : absl::StrCat("dsn=", ack.dsn_message_id()));
  txn.OnCommit([id, dsn = ack.dsn_message_id()] {
    log::Event(log::Level::kInfo, "bounce_done", {{"bounce", id}, {"dsn_msg", dsn.empty() ? "none" : dsn}});
  });
  return tern::v1::REPORT_STATUS_APPLIED;
}

// ---------------------------------------------------------------------------
// Stats, flush, disabled, shutdown.

void QueueCore::Impl::Stats(Callback<StatsResponse> done) {
  AnswerFromWriter<StatsResponse>([this](Txn& txn, StatsResponse& out) { FillStats(txn, out); }, std::move(done));
}

void QueueCore::Impl::FillStats(Txn& txn, StatsResponse& out) {
  const int64_t now = clock_->NowUnixMs();
  ExpireLeases(tern::v1::JOB_KIND_DELIVERY, now);
  ExpireLeases(tern::v1::JOB_KIND_BOUNCE, now);
  due_.Advance(now);
  out.set_messages(counters_.messages);
  out.set_deliveries(counters_.deliveries);
  out.set_deliveries_due(due_.due());
  out.set_deliveries_leased(State(tern::v1::JOB_KIND_DELIVERY).leases.size());
  out.set_deliveries_deferred(due_.total() - due_.due());
  out.set_bounces(counters_.bounces);
  out.set_bounces_leased(State(tern::v1::JOB_KIND_BOUNCE).leases.size());
  out.set_recipients_pending(counters_.recipients_pending);
  out.set_enqueued_total(counters_.enqueued);
  out.set_delivered_total(counters_.delivered);
  out.set_deferred_total(counters_.deferred);
  out.set_failed_total(counters_.failed);
  out.set_ambiguous_total(counters_.ambiguous);
  out.set_deliveries_held(counters_.held);
  out.set_paused(disabled_);
  out.set_corrupt_records(corrupt_count_.load(std::memory_order_relaxed));
  // Ids are time-ordered, so the first message key is the oldest message.
  std::unique_ptr<rocksdb::Iterator> it = txn.NewIterator(messages_);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    MessageRecord msg;
    if (msg.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      out.set_oldest_message_unix_ms(msg.arrival_unix_ms());
      break;
    }
  }
  PublishGauges();
}

void QueueCore::Impl::Flush(Callback<uint64_t> done) {
  SubmitFlush(std::make_shared<Callback<uint64_t>>(std::move(done)), 0);
}

void QueueCore::Impl::SubmitFlush(std::shared_ptr<Callback<uint64_t>> done, uint64_t moved_so_far) {
  auto moved = std::make_shared<uint64_t>(0);
  auto more = std::make_shared<bool>(false);
  committer_->Submit(GroupOp{
      [this, moved, more](Txn& txn) -> absl::Status {
        TERN_ASSIGN_OR_RETURN(*moved, ApplyFlushChunk(txn, more.get()));
        return absl::OkStatus();
      },
      [this, done, moved, more, moved_so_far](const absl::Status& s) {
        const uint64_t total = moved_so_far + *moved;
        if (s.ok() && *more) {
          SubmitFlush(done, total);
          return;
        }
        if (s.ok()) {
          log::Event(log::Level::kNotice, "flushed", {{"deliveries", absl::StrCat(total)}});
          WakeWaiters(tern::v1::JOB_KIND_DELIVERY);
        }
        if (*done) {
          if (s.ok()) {
            (*done)(total);
          } else {
            (*done)(s);
          }
        }
      },
  });
}

absl::StatusOr<uint64_t> QueueCore::Impl::ApplyFlushChunk(Txn& txn, bool* more) {
  const JobKind kind = tern::v1::JOB_KIND_DELIVERY;
  const int64_t now = clock_->NowUnixMs();
  const std::string start = ScheduleScanLimit(JobType::kDelivery, now);
  const std::string limit = ScheduleScanStart(JobType::kBounce);
  const rocksdb::Slice limit_slice(limit);
  std::unique_ptr<rocksdb::Iterator> it = txn.NewIterator(schedule_, &limit_slice);
  uint64_t moved = 0;
  *more = false;
  // Keys written while iterating land at `now`, before `start`: the scan
  // never meets its own writes.
  for (it->Seek(start); it->Valid() && it->key().compare(limit_slice) < 0; it->Next()) {
    if (moved >= kFlushChunk) {
      *more = true;
      break;
    }
    auto key = DecodeScheduleKey(absl::string_view(it->key().data(), it->key().size()));
    if (!key.has_value()) {
      continue;
    }
    TERN_ASSIGN_OR_RETURN(std::optional<DeliveryRecord> rec,
                          Read<DeliveryRecord>(txn, deliveries_, kDeliveriesCf, key->job_id));
    if (!rec.has_value() || rec->due_unix_ms() != key->due_unix_ms || rec->due_unix_ms() <= now ||
        State(kind).leases.Contains(key->job_id)) {
      continue;  // gone, stale key, already due, or out on lease
    }
    Unschedule(txn, kind, key->job_id, rec->due_unix_ms());
    for (RecipientRecord& r : *rec->mutable_recipients()) {
      if (IsPending(r)) {
        r.set_next_attempt_unix_ms(now);
      }
    }
    rec->set_due_unix_ms(now);
    PutRecord(txn, deliveries_, key->job_id, *rec);
    ScheduleAt(txn, kind, key->job_id, now, now);
    ++moved;
  }
  if (!it->status().ok()) {
    return StorageError(it->status(), "flush scan");
  }
  return moved;
}

void QueueCore::Impl::SetDisabled(bool disabled) {
  committer_->Submit(GroupOp{
      [this, disabled](Txn& txn) {
        if (file_disabled_ == disabled) {
          return absl::OkStatus();  // unchanged: an admin override stays
        }
        const bool was = disabled_;
        txn.OnUndo([this, was, before = pause_override_] {
          file_disabled_ = !file_disabled_;
          pause_override_ = before;
          disabled_ = was;
        });
        file_disabled_ = disabled;
        pause_override_.reset();
        disabled_ = disabled;
        if (was != disabled_) {
          AppendEvent(txn, "admin", "", "", {}, disabled ? "pause (outbound.ini disabled=true)"
                                                         : "resume (outbound.ini disabled=false)");
          txn.OnCommit([this, was] { ApplyEffectiveDisabled(was); });
        }
        return absl::OkStatus();
      },
      [](const absl::Status&) {},
  });
}

void QueueCore::Impl::Reconfigure(CoreOptions next, absl::AnyInvocable<void(absl::Status)> done) {
  auto settings = std::make_shared<CoreOptions>(std::move(next));
  auto cb = std::make_shared<absl::AnyInvocable<void(absl::Status)>>(std::move(done));
  committer_->Submit(GroupOp{
      [this, settings](Txn& txn) {
        AppendEvent(txn, "admin", "", "", {}, "configuration reloaded (outbound.ini, shaping.ini, tern.ini [queue])");
        // After the commit, when no undo of this group can run any more:
        // the in-memory state below (parked deliveries, backoffs, site
        // memberships) is rebuilt for the new settings, not rolled back.
        txn.OnCommit([this, settings] { ApplyReloadable(std::move(*settings)); });
        return absl::OkStatus();
      },
      [cb](const absl::Status& s) { (*cb)(s); },
  });
}

void QueueCore::Impl::ApplyReloadable(CoreOptions next) {
  always_split_.store(next.always_split, std::memory_order_relaxed);
  max_queue_age_ms_.store(next.max_queue_age_ms, std::memory_order_relaxed);
  delete_undo_window_ms_.store(next.delete_undo_window_ms, std::memory_order_relaxed);
  idempotency_retention_ms_.store(next.idempotency_retention_ms, std::memory_order_relaxed);
  min_free_bytes_.store(next.min_free_bytes, std::memory_order_relaxed);
  // Read by the writer role only, which this runs in.
  opt_.lease_seconds = next.lease_seconds;
  opt_.max_lease_seconds = next.max_lease_seconds;
  opt_.max_lease_body_bytes = next.max_lease_body_bytes;
  opt_.ambiguous_policy = next.ambiguous_policy;
  opt_.delay_warning_ms = std::move(next.delay_warning_ms);
  opt_.event_retention_ms = next.event_retention_ms;
  opt_.event_retention_count = next.event_retention_count;
  {
    absl::MutexLock lock(&retry_mu_);
    opt_.retry = std::move(next.retry);
  }
  // Site memberships point into the shaping being replaced: each moves to
  // the new site of the same name, or goes when the new file no longer lets
  // the domain join one.
  std::vector<std::string> dropped;
  DestinationShaping old;  // alive until the memberships have moved
  {
    absl::MutexLock lock(&site_mu_);
    old = std::exchange(opt_.shaping, std::move(next.shaping));
    for (auto it = learned_sites_.begin(); it != learned_sites_.end();) {
      const std::string& domain = it->first;
      const MxSite* site = opt_.shaping.SiteNamed(it->second.site->name);
      if (site == nullptr || opt_.shaping.HasOwnSection(domain) || opt_.shaping.ListedSite(domain) != nullptr) {
        dropped.push_back(domain);
        learned_sites_.erase(it++);
      } else {
        it->second.site = site;
        ++it;
      }
    }
  }
  Metrics().mx_site_domains.Set(static_cast<int64_t>(learned_sites_.size()));
  if (!dropped.empty()) {
    log::Event(log::Level::kInfo, "mx_site_memberships_dropped",
               {{"domains", absl::StrCat(dropped.size())}, {"reason", "site gone or domain configured on its own"}});
    PurgeMxSiteRecords(std::move(dropped));
  }
  // A backoff the new limits do not allow ends now.
  EndBackoffsIf([this](const std::string& key, const Backoff&) { return !opt_.shaping.For(key).backoff; });
  // Every delivery waiting for a limit is judged again by the new ones when
  // next leased (one still over its limit is parked again).
  KindState& ks = State(tern::v1::JOB_KIND_DELIVERY);
  std::vector<std::string> keys;
  ks.parked.ForEachCount([&keys](const std::string& key, uint32_t) { keys.push_back(key); });
  size_t released = 0;
  for (const std::string& key : keys) {
    released += ReleaseToWindow(key, UINT32_MAX);
  }
  {
    absl::MutexLock lock(&throttled_mu_);
    throttled_view_.clear();
  }
  rate_waiting_.clear();
  if (released > 0) {
    WakeWaiters(tern::v1::JOB_KIND_DELIVERY);
  }
}

void QueueCore::Impl::SetPaused(bool paused, Callback<bool> done) {
  auto cb = std::make_shared<Callback<bool>>(std::move(done));
  committer_->Submit(GroupOp{
      [this, paused](Txn& txn) {
        const bool was = disabled_;
        txn.OnUndo([this, was, before = pause_override_] {
          pause_override_ = before;
          disabled_ = was;
        });
        pause_override_ = paused;
        disabled_ = paused;
        AppendEvent(txn, "admin", "", "", {}, paused ? "pause" : "resume");
        txn.OnCommit([this, was] { ApplyEffectiveDisabled(was); });
        return absl::OkStatus();
      },
      [this, cb](const absl::Status& s) {
        if (s.ok()) {
          (*cb)(disabled_);
        } else {
          (*cb)(s);
        }
      },
  });
}

void QueueCore::Impl::ApplyEffectiveDisabled(bool was) {
  paused_view_ = disabled_;
  if (was == disabled_) {
    return;
  }
  log::Event(log::Level::kNotice, disabled_ ? "delivery_paused" : "delivery_resumed",
             {{"by", pause_override_.has_value() ? "admin" : "outbound.ini"}});
  if (!disabled_) {
    Refill(tern::v1::JOB_KIND_DELIVERY, clock_->NowUnixMs(), nullptr);
    WakeWaiters(tern::v1::JOB_KIND_DELIVERY);
  }
}

void QueueCore::Impl::BeginShutdown() {
  committer_->Submit(GroupOp{
      [this](Txn&) {
        shutting_down_ = true;
        return absl::OkStatus();
      },
      [this](const absl::Status&) {
        shutting_down_ = true;
        for (KindState& ks : kinds_) {
          for (auto& call : ks.waiters) {
            call->done(LeaseResponse());
          }
          ks.waiters.clear();
        }
      },
  });
}

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<QueueCore>> QueueCore::Open(CoreOptions options) {
  if (options.clock == nullptr) {
    options.clock = SystemClock::Get();
  }
  if (options.ready_window == 0) {
    return absl::InvalidArgumentError("ready_window must be at least 1");
  }
  auto impl = std::make_unique<Impl>(std::move(options));
  TERN_RETURN_IF_ERROR(impl->Open());
  return std::unique_ptr<QueueCore>(new QueueCore(std::move(impl)));
}

QueueCore::QueueCore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
QueueCore::~QueueCore() = default;

void QueueCore::Enqueue(EnqueueHeader header, std::string body, Callback<EnqueueResult> done) {
  impl_->Enqueue(std::move(header), std::move(body), std::move(done));
}
void QueueCore::EnqueueMany(std::vector<EnqueueArgs> items) { impl_->EnqueueMany(std::move(items)); }
void QueueCore::Lease(LeaseRequest request, Callback<LeaseResponse> done,
                      std::shared_ptr<const std::atomic<bool>> cancelled) {
  impl_->Lease(std::move(request), std::move(done), std::move(cancelled));
}
void QueueCore::Report(ReportRequest request, Callback<ReportResponse> done) {
  impl_->Report(std::move(request), std::move(done));
}
void QueueCore::Ack(AckRequest request, Callback<AckResponse> done) { impl_->Ack(std::move(request), std::move(done)); }
void QueueCore::Stats(Callback<StatsResponse> done) { impl_->Stats(std::move(done)); }
void QueueCore::Destinations(Callback<tern::v1::DestinationsResponse> done) {
  impl_->Destinations(std::move(done));
}
void QueueCore::SetDisabled(bool disabled) { impl_->SetDisabled(disabled); }
void QueueCore::Reconfigure(CoreOptions next, absl::AnyInvocable<void(absl::Status)> done) {
  impl_->Reconfigure(std::move(next), std::move(done));
}
void QueueCore::SetPaused(bool paused, Callback<bool> done) { impl_->SetPaused(paused, std::move(done)); }
void QueueCore::Progress(tern::v1::ProgressRequest request, Callback<tern::v1::ProgressResponse> done) {
  impl_->Progress(std::move(request), std::move(done));
}
void QueueCore::PutHostFlags(tern::v1::PutHostFlagsRequest request, Callback<tern::v1::PutHostFlagsResponse> done) {
  impl_->PutHostFlags(std::move(request), std::move(done));
}
absl::StatusOr<tern::v1::GetHostFlagsResponse> QueueCore::GetHostFlags(const tern::v1::GetHostFlagsRequest& request) {
  return impl_->GetHostFlags(request);
}
void QueueCore::PutStsPolicy(tern::v1::PutStsPolicyRequest request, Callback<tern::v1::PutStsPolicyResponse> done) {
  impl_->PutStsPolicy(std::move(request), std::move(done));
}
absl::StatusOr<tern::v1::GetStsPolicyResponse> QueueCore::GetStsPolicy(const tern::v1::GetStsPolicyRequest& request) {
  return impl_->GetStsPolicy(request);
}
absl::StatusOr<tern::v1::ListResponse> QueueCore::List(const tern::v1::ListRequest& request) {
  return impl_->List(request);
}
absl::StatusOr<tern::v1::ShowResponse> QueueCore::Show(const std::string& message_id) {
  return impl_->Show(message_id);
}
absl::StatusOr<tern::v1::QshapeResponse> QueueCore::Qshape(const tern::v1::QshapeRequest& request) {
  return impl_->Qshape(request);
}
void QueueCore::ClearHostFlags(tern::v1::ClearHostFlagsRequest request,
                               Callback<tern::v1::ClearHostFlagsResponse> done) {
  impl_->ClearHostFlags(std::move(request), std::move(done));
}
absl::StatusOr<tern::v1::ListCorruptResponse> QueueCore::ListCorrupt(uint32_t limit) {
  return impl_->ListCorrupt(limit);
}
absl::StatusOr<tern::v1::GetCorruptResponse> QueueCore::GetCorrupt(const tern::v1::GetCorruptRequest& request) {
  return impl_->GetCorrupt(request);
}
void QueueCore::PurgeCorrupt(tern::v1::PurgeCorruptRequest request, Callback<tern::v1::PurgeCorruptResponse> done) {
  impl_->PurgeCorrupt(std::move(request), std::move(done));
}
void QueueCore::Act(Action action, tern::v1::ActionRequest request, Callback<tern::v1::ActionResponse> done) {
  impl_->Act(action, std::move(request), std::move(done));
}
void QueueCore::Undelete(tern::v1::UndeleteRequest request, Callback<tern::v1::UndeleteResponse> done) {
  impl_->Undelete(std::move(request), std::move(done));
}
absl::StatusOr<tern::v1::ListDeletedResponse> QueueCore::ListDeleted(const tern::v1::ListDeletedRequest& request) {
  return impl_->ListDeleted(request);
}
absl::Status QueueCore::ReadEvents(uint64_t after, size_t max, std::vector<tern::v1::QueueEvent>* out) {
  return impl_->ReadEvents(after, max, out);
}
uint64_t QueueCore::LastEventSeq() const { return impl_->LastEventSeq(); }
uint64_t QueueCore::OldestEventSeq() { return impl_->OldestEventSeq(); }
bool QueueCore::WaitForEvents(uint64_t after, int64_t timeout_ms) { return impl_->WaitForEvents(after, timeout_ms); }
void QueueCore::Flush(Callback<uint64_t> done) { impl_->Flush(std::move(done)); }
void QueueCore::RecordTlsResults(tern::v1::RecordTlsResultsRequest request,
                                 Callback<tern::v1::RecordTlsResultsResponse> done) {
  impl_->RecordTlsResults(std::move(request), std::move(done));
}
absl::StatusOr<tern::v1::ListTlsReportsResponse> QueueCore::ListTlsReports() { return impl_->ListTlsReports(); }
void QueueCore::SendTlsReports(tern::v1::SendTlsReportsRequest request,
                               Callback<tern::v1::SendTlsReportsResponse> done) {
  impl_->SendTlsReports(std::move(request), std::move(done));
}
int64_t QueueCore::TlsReportRunTimeForTest() const { return impl_->TlsReportRunTimeForTest(); }
std::string QueueCore::InstanceIdForTest() const { return impl_->instance_id(); }
void QueueCore::BeginShutdown() { impl_->BeginShutdown(); }

const Clock* SystemClock::Get() {
  static const SystemClock* clock = new SystemClock;
  return clock;
}

int64_t SystemClock::NowUnixMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace tern::queue
