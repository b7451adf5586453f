#include "services/queue/key_codec.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tern::queue {
namespace {

void AppendBigEndian64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

uint64_t ClampDue(int64_t due_unix_ms) { return due_unix_ms < 0 ? 0 : static_cast<uint64_t>(due_unix_ms); }

void AppendBigEndian32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

// A length-prefixed string: no two sequences of them encode alike.
void AppendField(std::string* out, absl::string_view s) {
  AppendBigEndian32(out, static_cast<uint32_t>(s.size()));
  out->append(s.data(), s.size());
}

template <typename Repeated>
void AppendList(std::string* out, const Repeated& list) {
  AppendBigEndian32(out, static_cast<uint32_t>(list.size()));
  for (const auto& s : list) {
    AppendField(out, s);
  }
}

}  // namespace

std::string EncodeScheduleKey(JobType type, int64_t due_unix_ms, absl::string_view job_id) {
  std::string key;
  key.reserve(1 + 8 + job_id.size());
  key.push_back(static_cast<char>(type));
  AppendBigEndian64(&key, ClampDue(due_unix_ms));
  key.append(job_id.data(), job_id.size());
  return key;
}

std::string ScheduleScanLimit(JobType type, int64_t due_unix_ms) {
  // Every key due at `due_unix_ms` has the 9-byte prefix for that time and
  // sorts before the bare 9-byte prefix of the next millisecond.
  std::string key;
  key.push_back(static_cast<char>(type));
  AppendBigEndian64(&key, ClampDue(due_unix_ms) + 1);
  return key;
}

std::string ScheduleScanStart(JobType type) { return std::string(1, static_cast<char>(type)); }

std::optional<ScheduleKey> DecodeScheduleKey(absl::string_view key) {
  if (key.size() < 9) {
    return std::nullopt;
  }
  const auto type = static_cast<uint8_t>(key[0]);
  if (type != static_cast<uint8_t>(JobType::kDelivery) && type != static_cast<uint8_t>(JobType::kBounce)) {
    return std::nullopt;
  }
  uint64_t due = 0;
  for (int i = 1; i <= 8; ++i) {
    due = (due << 8) | static_cast<uint8_t>(key[i]);
  }
  if (due > static_cast<uint64_t>(INT64_MAX)) {
    return std::nullopt;
  }
  ScheduleKey out;
  out.type = static_cast<JobType>(type);
  out.due_unix_ms = static_cast<int64_t>(due);
  out.job_id = std::string(key.substr(9));
  return out;
}

std::string DeliveryId(absl::string_view message_id, uint32_t n) { return absl::StrCat(message_id, ".", n); }

std::string BounceId(absl::string_view message_id, uint32_t n) { return absl::StrCat(message_id, ".b", n); }

std::string IdempotencyKey(absl::string_view key) { return absl::StrCat("i", key); }

std::string HostFlagKey(absl::string_view flag, absl::string_view host) {
  std::string out = HostFlagPrefix(flag);
  out.append(host.data(), host.size());
  return out;
}

std::string StsPolicyKey(absl::string_view domain) { return absl::StrCat("s", domain); }

std::string MxSitePrefix() { return "m"; }

std::string MxSiteKey(absl::string_view domain) { return absl::StrCat(MxSitePrefix(), domain); }

std::string InstanceKey() { return "n"; }

std::string DeletedPrefix() { return "d"; }

std::string DeletedKey(int64_t deleted_unix_ms, absl::string_view token, absl::string_view message_id) {
  std::string key = DeletedPrefix();
  AppendBigEndian64(&key, ClampDue(deleted_unix_ms));
  key.append(token.data(), token.size());
  key.push_back('\0');
  key.append(message_id.data(), message_id.size());
  return key;
}

std::optional<DeletedKeyParts> DecodeDeletedKey(absl::string_view key) {
  const std::string prefix = DeletedPrefix();
  if (key.size() < prefix.size() + 8 || !absl::StartsWith(key, prefix)) {
    return std::nullopt;
  }
  uint64_t ms = 0;
  for (size_t i = 0; i < 8; ++i) {
    ms = (ms << 8) | static_cast<uint8_t>(key[prefix.size() + i]);
  }
  const absl::string_view rest = key.substr(prefix.size() + 8);
  const size_t nul = rest.find('\0');
  if (nul == absl::string_view::npos || nul == 0 || nul + 1 == rest.size()) {
    return std::nullopt;
  }
  DeletedKeyParts parts;
  parts.deleted_unix_ms = static_cast<int64_t>(ms);
  parts.token = std::string(rest.substr(0, nul));
  parts.message_id = std::string(rest.substr(nul + 1));
  return parts;
}

std::string TlsRptPrefix() { return "t"; }

std::string TlsRptDayPrefix(int64_t day) {
  std::string key = TlsRptPrefix();
  AppendBigEndian64(&key, day < 0 ? 0 : static_cast<uint64_t>(day));
  return key;
}

std::string TlsRptDomainPrefix(int64_t day, absl::string_view domain) {
  std::string key = TlsRptDayPrefix(day);
  key.append(domain.data(), domain.size());
  key.push_back('\0');
  return key;
}

std::string TlsRptCountKey(const tern::v1::TlsRptCount& count) {
  std::string key = TlsRptDomainPrefix(count.day(), count.policy_domain());
  AppendField(&key, count.policy_type());
  AppendList(&key, count.policy_string());
  AppendList(&key, count.mx_host());
  AppendField(&key, count.result_type());
  AppendField(&key, count.receiving_mx_hostname());
  AppendField(&key, count.receiving_ip());
  AppendField(&key, count.failure_reason_code());
  return key;
}

std::string PrefixEnd(absl::string_view prefix) {
  std::string end(prefix);
  while (!end.empty() && static_cast<uint8_t>(end.back()) == 0xff) {
    end.pop_back();
  }
  if (!end.empty()) {
    end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
  }
  return end;
}

std::optional<TlsRptKey> DecodeTlsRptKey(absl::string_view key) {
  if (key.size() < 10 || key[0] != 't') {
    return std::nullopt;
  }
  uint64_t day = 0;
  for (int i = 1; i <= 8; ++i) {
    day = (day << 8) | static_cast<uint8_t>(key[i]);
  }
  const size_t nul = key.find('\0', 9);
  if (day > static_cast<uint64_t>(INT64_MAX) || nul == absl::string_view::npos) {
    return std::nullopt;
  }
  return TlsRptKey{static_cast<int64_t>(day), std::string(key.substr(9, nul - 9))};
}

std::string HostFlagPrefix(absl::string_view flag) {
  std::string out = "h";
  if (!flag.empty()) {
    out.append(flag.data(), flag.size());
    out.push_back('\0');
  }
  return out;
}

std::string EventKey(uint64_t seq) {
  std::string key;
  AppendBigEndian64(&key, seq);
  return key;
}

std::optional<uint64_t> DecodeEventKey(absl::string_view key) {
  if (key.size() != 8) {
    return std::nullopt;
  }
  uint64_t seq = 0;
  for (char c : key) {
    seq = (seq << 8) | static_cast<uint8_t>(c);
  }
  return seq;
}

std::string CorruptKey(absl::string_view source_cf, absl::string_view key) {
  std::string out = absl::StrCat(source_cf);
  out.push_back('\0');
  out.append(key.data(), key.size());
  return out;
}

}  // namespace tern::queue
