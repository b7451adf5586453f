// File: host_flags.h
//
// HostFlags: what this deliverer knows about remote hosts that every
// deliverer should know too - today only "broken_tls" (the MX's TLS handshake
// fails, so it is reached in plain text until the flag expires). Flags are
// set locally the moment a deliverer learns them, sent to the queue
// (PutHostFlags) and merged from the queue's list (GetHostFlags) every
// refresh, so a fact learnt by one deliverer reaches the others within one
// refresh period. Each flag carries an absolute expiry (tls_failure_ttl).
//
// Thread-safety: not thread-safe; used on the worker's executor only.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>

namespace tern::deliverer {

inline constexpr char kBrokenTlsFlag[] = "broken_tls";

class HostFlags {
 public:
  // Records `flag` on `host` until `expires_unix_ms` (a later expiry wins).
  void Set(const std::string& host, const std::string& flag, int64_t expires_unix_ms) {
    int64_t& e = flags_[{host, flag}];
    e = std::max(e, expires_unix_ms);
  }

  bool Has(const std::string& host, const std::string& flag, int64_t now_unix_ms) const {
    auto it = flags_.find({host, flag});
    return it != flags_.end() && it->second > now_unix_ms;
  }

  // Drops expired flags; returns how many are left.
  size_t Expire(int64_t now_unix_ms) {
    for (auto it = flags_.begin(); it != flags_.end();) {
      it = it->second <= now_unix_ms ? flags_.erase(it) : std::next(it);
    }
    return flags_.size();
  }

  size_t size() const { return flags_.size(); }

 private:
  std::map<std::pair<std::string, std::string>, int64_t> flags_;
};

}  // namespace tern::deliverer
