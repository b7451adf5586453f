// File: host_flags.h
//
// HostFlags: what this deliverer knows about remote hosts that every
// deliverer should know too:
//   "broken_tls"   the address's TLS handshake fails, so it is reached in
//                  plain text until the flag expires (tls_failure_ttl);
//   "no_chunking"  the address offered CHUNKING but refused BDAT, so it
//                  gets DATA until the flag expires (chunking_failure_ttl);
//   "unreachable"  the address refused or dropped unreachable_after sessions
//                  in a row before their greeting, so no deliverer opens
//                  another session there until the flag expires
//                  (unreachable_backoff): its deliveries go to the next
//                  address or are deferred with the last failure.
// Flags are set locally the moment a deliverer learns them, sent to the
// queue (PutHostFlags) and merged from the queue's list (GetHostFlags) every
// refresh, so a fact learnt by one deliverer reaches the others within one
// refresh period. Each flag carries an absolute expiry and why it was set.
// An operator can end a flag early (`ternctl hosts clear`): the queue then
// lists it as cleared and each deliverer drops its copy at its next refresh.
//
// FailureStreaks counts, per address, the sessions in a row that the
// address did not give (TransactionResult::unreachable).
//
// Thread-safety: not thread-safe; used on the worker's executor only.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>

namespace tern::deliverer {

inline constexpr char kBrokenTlsFlag[] = "broken_tls";
inline constexpr char kUnreachableFlag[] = "unreachable";
inline constexpr char kNoChunkingFlag[] = "no_chunking";

class HostFlags {
 public:
  // Records `flag` on `host` until `expires_unix_ms` (a later expiry wins,
  // and brings its reason).
  void Set(const std::string& host, const std::string& flag, int64_t expires_unix_ms, std::string reason = "") {
    Entry& e = flags_[{host, flag}];
    if (expires_unix_ms > e.expires_unix_ms) {
      e.expires_unix_ms = expires_unix_ms;
      e.reason = std::move(reason);
    }
  }

  bool Has(const std::string& host, const std::string& flag, int64_t now_unix_ms) const {
    auto it = flags_.find({host, flag});
    return it != flags_.end() && it->second.expires_unix_ms > now_unix_ms;
  }

  // Why `flag` was set on `host` ("" if it is not set).
  std::string Reason(const std::string& host, const std::string& flag) const {
    auto it = flags_.find({host, flag});
    return it == flags_.end() ? "" : it->second.reason;
  }

  // An operator cleared `flag` on `host` (HostFlag.cleared) when it ran
  // until `cleared_expiry_unix_ms`: drops this copy unless it runs longer (set
  // again after the clearing). True if it dropped one.
  bool Clear(const std::string& host, const std::string& flag, int64_t cleared_expiry_unix_ms) {
    auto it = flags_.find({host, flag});
    if (it == flags_.end() || it->second.expires_unix_ms > cleared_expiry_unix_ms) {
      return false;
    }
    flags_.erase(it);
    return true;
  }

  // Drops expired flags; returns how many are left.
  size_t Expire(int64_t now_unix_ms) {
    for (auto it = flags_.begin(); it != flags_.end();) {
      it = it->second.expires_unix_ms <= now_unix_ms ? flags_.erase(it) : std::next(it);
    }
    return flags_.size();
  }

  size_t size() const { return flags_.size(); }

 private:
  struct Entry {
    int64_t expires_unix_ms = 0;
    std::string reason;
  };
  std::map<std::pair<std::string, std::string>, Entry> flags_;
};

class FailureStreaks {
 public:
  // `limit` 0 never reports a streak.
  explicit FailureStreaks(uint32_t limit) : limit_(limit) {}

  // A session with `host` failed before its greeting. True when that makes
  // `limit` in a row, and for every further failure until a success: after a
  // suspension ends, one more failure suspends the address again at once
  // (as Postfix keeps a dead destination dead after a failed probe).
  bool Failed(const std::string& host) {
    if (limit_ == 0) {
      return false;
    }
    if (streaks_.size() >= kMaxHosts && !streaks_.contains(host)) {
      streaks_.clear();  // bounded memory whatever DNS hands out; streaks restart
    }
    return ++streaks_[host] >= limit_;
  }
  // The address gave a session: its streak ends.
  void Succeeded(const std::string& host) { streaks_.erase(host); }
  uint32_t streak(const std::string& host) const {
    auto it = streaks_.find(host);
    return it == streaks_.end() ? 0 : it->second;
  }

 private:
  static constexpr size_t kMaxHosts = 100000;
  uint32_t limit_;
  std::map<std::string, uint32_t> streaks_;
};

}  // namespace tern::deliverer
