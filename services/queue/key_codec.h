// File: key_codec.h
//
// The one place that knows how the queue lays out its RocksDB keys. Every
// other file asks this one for a key and never builds or slices keys itself,
// so a change of layout is a change here (and a test here).
//
// Column families and their keys:
//   messages    message id                     -> MessageRecord (queue_records.proto)
//   bodies      message id                     -> the body bytes, once per message
//   deliveries  delivery id "<msgid>.<n>"      -> DeliveryRecord
//   bounces     bounce id "<msgid>.b<n>"       -> BounceRecord
//   schedule    kind(1) | due_ms(8, big-endian) | job id -> ""  (a range scan
//               of one kind up to "now" yields exactly the jobs that are due,
//               oldest first, because big-endian integers sort like numbers)
//   meta        'i' | idempotency key          -> IdempotencyRecord (message id, time)
//               'h' | flag | 0x00 | host       -> tern.v1.HostFlag (shared host facts)
//               's' | domain                   -> tern.v1.StsPolicyRecord (MTA-STS policies)
//               't' | day(8, big-endian) | policy domain | 0x00 | identity
//                                              -> tern.v1.TlsRptCount (RFC 8460 session counts; the
//               identity is every field but count and rua, so equal sessions share a key, and one
//               (day, domain) is one key range, days in order)
//               'd' | deleted_ms(8, big-endian) | token | 0x00 | message id
//                                              -> DeletedRecord (what one Delete removed of one message,
//               kept for the undo window; oldest first, so the purge stops at the first young one)
//               'n'                            -> InstanceRecord (this database's random instance token,
//               made at its first open; one key)
//   events      seq(8, big-endian)             -> tern.v1.QueueEvent (the event log)
//   corrupt     source CF name | 0x00 | key    -> the unparseable value as found
//
// Message ids are time-ordered (lib/common/ids.h), so the messages CF is in
// arrival order and its first key is the oldest message.
//
// Thread-safety: pure functions; safe from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "tern/v1/tlsrpt.pb.h"

namespace tern::queue {

// Column family names, also used in logs and as the prefix of corrupt keys.
inline constexpr char kMessagesCf[] = "messages";
inline constexpr char kBodiesCf[] = "bodies";
inline constexpr char kDeliveriesCf[] = "deliveries";
inline constexpr char kScheduleCf[] = "schedule";
inline constexpr char kBouncesCf[] = "bounces";
inline constexpr char kMetaCf[] = "meta";
inline constexpr char kCorruptCf[] = "corrupt";
inline constexpr char kEventsCf[] = "events";

// The first byte of a schedule key. Values are stable on disk.
enum class JobType : uint8_t {
  kDelivery = 1,
  kBounce = 2,
};

struct ScheduleKey {
  JobType type = JobType::kDelivery;
  int64_t due_unix_ms = 0;
  std::string job_id;

  friend bool operator==(const ScheduleKey&, const ScheduleKey&) = default;
};

// Encodes a schedule key. Due times before the epoch are stored as 0 (they
// are simply "due"), so the unsigned big-endian order is the numeric order.
std::string EncodeScheduleKey(JobType type, int64_t due_unix_ms, absl::string_view job_id);
// The smallest key of `type` that is strictly after every key due at or
// before `due_unix_ms`: use as an exclusive upper bound for a due scan.
std::string ScheduleScanLimit(JobType type, int64_t due_unix_ms);
// The smallest possible key of `type` (the start of a scan).
std::string ScheduleScanStart(JobType type);
// nullopt if `key` is not a schedule key this codec wrote.
std::optional<ScheduleKey> DecodeScheduleKey(absl::string_view key);

// Delivery ids are "<msgid>.<n>" (n from 1), bounce ids "<msgid>.b<n>".
std::string DeliveryId(absl::string_view message_id, uint32_t n);
std::string BounceId(absl::string_view message_id, uint32_t n);

// The meta key for an idempotency key.
std::string IdempotencyKey(absl::string_view key);

// Host flag keys, and the prefix of every key of one flag (or of all host
// flags when `flag` is empty).
std::string HostFlagKey(absl::string_view flag, absl::string_view host);
std::string HostFlagPrefix(absl::string_view flag);
std::string StsPolicyKey(absl::string_view domain);
// MX site membership (MxSiteRecord) of a recipient domain, and the prefix of
// every such key.
std::string MxSiteKey(absl::string_view domain);
std::string MxSitePrefix();

// The one key of this database's InstanceRecord.
std::string InstanceKey();

// Deleted-for-undo records (DeletedRecord). The token must not contain
// NUL. A negative time is stored as 0.
std::string DeletedKey(int64_t deleted_unix_ms, absl::string_view token, absl::string_view message_id);
std::string DeletedPrefix();
struct DeletedKeyParts {
  int64_t deleted_unix_ms = 0;
  std::string token;
  std::string message_id;

  friend bool operator==(const DeletedKeyParts&, const DeletedKeyParts&) = default;
};
// nullopt if `key` is not a key DeletedKey wrote.
std::optional<DeletedKeyParts> DecodeDeletedKey(absl::string_view key);

// TLS report counts (tern.v1.TlsRptCount). The key of `count`: its day, its
// policy domain and its identity: policy_type, policy_string, mx_host,
// result_type, receiving_mx_hostname, receiving_ip and failure_reason_code,
// each length-prefixed, so two counts share a key exactly when they differ
// only in count and rua. A negative day is stored as 0 (callers refuse
// them). The domain must not contain NUL.
std::string TlsRptCountKey(const tern::v1::TlsRptCount& count);
// The prefix of every count key ("t"), of one day's, and of one (day,
// domain)'s.
std::string TlsRptPrefix();
std::string TlsRptDayPrefix(int64_t day);
std::string TlsRptDomainPrefix(int64_t day, absl::string_view domain);
// The smallest key after every key that starts with `prefix` (an exclusive
// upper bound for a prefix scan); "" if there is none (all bytes 0xff).
std::string PrefixEnd(absl::string_view prefix);
struct TlsRptKey {
  int64_t day = 0;
  std::string policy_domain;

  friend bool operator==(const TlsRptKey&, const TlsRptKey&) = default;
};
// The day and domain of a count key; nullopt if `key` is not one.
std::optional<TlsRptKey> DecodeTlsRptKey(absl::string_view key);

// Event keys sort by sequence number.
std::string EventKey(uint64_t seq);
// nullopt if `key` is not 8 bytes.
std::optional<uint64_t> DecodeEventKey(absl::string_view key);

// Where a record that failed to parse is kept for an operator to inspect.
std::string CorruptKey(absl::string_view source_cf, absl::string_view key);

}  // namespace tern::queue
