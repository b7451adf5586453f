// File: requiretls.h
//
// RFC 8689 for the deliverer: what a message asks of the TLS on its way out.
//
//   REQUIRETLS (MAIL FROM parameter, kept in the envelope): every hop must
//   be TLS with an authenticated peer that offers REQUIRETLS in turn. For
//   MX delivery the MX hosts must come from a secure lookup: a
//   DNSSEC-validated MX answer or an MTA-STS policy in enforce mode (§4.2.1);
//   the certificate must then match the host's TLSA records (DANE) or
//   verify against the Web PKI for the MX host name; the session must offer
//   REQUIRETLS (else the next MX address is tried), and the message is
//   sent with it. A route the operator
//   configured (outbound_routes.ini, the get_mx hook) counts as a secure
//   lookup: its certificate must verify for the route's host name. LMTP to
//   a local unix socket is final delivery on this machine: no TLS to ask
//   for, and the LMTP server need not offer REQUIRETLS.
//   What cannot be met is a permanent failure with 5.7.30 ("REQUIRETLS
//   support required", RFC 8689 §6): the sender asked for a bounce rather
//   than delivery without it. For missing REQUIRETLS that takes every MX
//   address reached and none offering it (delivery_worker.cc).
//
//   "TLS-Required: No" (header field, §5; ignored under REQUIRETLS): the
//   sender asks that recipient-side TLS policies (MTA-STS, DANE) be
//   ignored for this message. TLS stays opportunistic, and tls.ini (the
//   operator's own rules) still applies.
//
// Thread-safety: pure functions.
//
// Standards: RFC 8689.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace tern::deliverer {

enum class TlsRequest {
  kDefault,     // neither: the usual rules
  kRequireTls,  // REQUIRETLS
  kTlsOptional  // TLS-Required: No
};

// "default", "requiretls", "tls_optional" (logs).
const char* TlsRequestName(TlsRequest request);

// What the message asks for: REQUIRETLS from the envelope wins; otherwise
// the first TLS-Required header field of `message` (RFC 5322 text), when its
// value is "No" in any case.
TlsRequest MessageTlsRequest(bool requiretls, absl::string_view message);

// For MX delivery under REQUIRETLS: "" when the MX hosts came from a
// secure lookup (`mx_secure`: DNSSEC-validated; `sts_enforced`: an MTA-STS
// policy in enforce mode lists them), else why not, for the bounce.
std::string RequireTlsMxProblem(absl::string_view domain, bool mx_secure, bool sts_enforced);

// The enhanced status of a REQUIRETLS failure (RFC 8689 §6).
inline constexpr char kRequireTlsStatus[] = "5.7.30";

}  // namespace tern::deliverer
