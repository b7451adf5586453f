// File: sts_policy.h
//
// The two MTA-STS texts a recipient domain publishes, parsed (RFC 8461): the
// TXT record at _mta-sts.<domain> and the policy served over HTTPS. Both
// come from whoever runs the domain, so both parsers take any bytes and
// answer with a value or an error (fuzzed: fuzz/sts_policy_fuzz.cc). What
// the deliverer does with a policy is in mta_sts.h.
//
// Pure (no I/O).
//
// Thread-safety: stateless functions and plain values.
//
// Standards: RFC 8461 §3.1 (the TXT record), §3.2 (the policy), §4.1 (MX
// host matching).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::deliverer {

enum class StsMode { kNone, kTesting, kEnforce };

// "none", "testing", "enforce".
const char* StsModeName(StsMode mode);

struct StsPolicy {
  StsMode mode = StsMode::kNone;
  // address::CanonicalHostName form: "mx.example.com" or "*.example.com".
  std::vector<std::string> mx;
  std::chrono::seconds max_age{0};

  // True if the MX host name `host` matches a pattern: exactly, or a
  // "*.suffix" pattern whose `*` stands for exactly one left-most label
  // (RFC 8461 §4.1). Case and a trailing dot are ignored.
  bool MatchesMx(absl::string_view host) const;
};

// Parses a policy body (RFC 8461 §3.2): "key: value" lines ending in CRLF
// (a bare LF is accepted); version STSv1, mode and max_age (at most
// 31557600) are required, at least one mx unless the mode is none; unknown
// keys are ignored, and for a key given twice the first counts.
// InvalidArgument says what is wrong.
absl::StatusOr<StsPolicy> ParseStsPolicy(absl::string_view text);

// The `id` of the single TXT record that starts with "v=STSv1" (RFC 8461
// §3.1), or nullopt: no such record, more than one, or a malformed one.
std::optional<std::string> ParseStsRecord(const std::vector<std::string>& records);

}  // namespace tern::deliverer
