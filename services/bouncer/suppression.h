// File: suppression.h
//
// The bouncer's suppression rules: when a DSN that would be due is not sent.
// Haraka users write these as a `bounce` hook plugin; Tern reads them from
// tern.ini [bouncer] (see services/bouncer/README.md):
//
//   suppress_sender_domains[]=example.com   ; no DSN to senders @example.com
//   suppress_sender_domains[]=.example.org  ; ...nor @<anything>.example.org
//   suppress_status[]=5.7.*                 ; don't report recipients whose
//   suppress_status[]=55x                   ; status / reply code matches
//
// A sender domain entry without a leading dot matches that domain exactly;
// with one, any subdomain of it (not the domain itself). Comparison ignores
// case. A status pattern is either an RFC 3463 code whose parts may be "*"
// ("5.7.1", "5.7.*", "4.*.*"), matched against the Status the DSN would
// carry (derived from the reply class when the remote gave none), or a
// three-character reply code whose last two characters may be "x" ("550",
// "55x", "4xx"), matched against the remote's reply code.
//
// Thread-safety: immutable after Create(); share by const reference.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::bouncer {

class SuppressionRules {
 public:
  SuppressionRules() = default;

  // Validates the entries; an error names `origin` (e.g. "tern.ini [bouncer]
  // suppress_status") and the bad entry. Empty entries are ignored.
  static absl::StatusOr<SuppressionRules> Create(const std::vector<std::string>& sender_domains,
                                                 const std::vector<std::string>& status_patterns,
                                                 absl::string_view domains_origin, absl::string_view status_origin);

  // True if a DSN to `sender` (an address, no angle brackets) is suppressed.
  bool SuppressesSender(absl::string_view sender) const;

  // True if a recipient whose DSN Status would be `status` ("c.s.d") and
  // whose reply code was `reply_code` (0: no reply) is left out of DSNs.
  bool SuppressesRecipient(absl::string_view status, int reply_code) const;

  bool empty() const { return domains_.empty() && statuses_.empty() && reply_codes_.empty(); }

 private:
  std::vector<std::string> domains_;      // lower case, ".x" = subdomains of x
  std::vector<std::string> statuses_;     // "5.7.*" as given
  std::vector<std::string> reply_codes_;  // "55x", lower case
};

}  // namespace tern::bouncer
