// File: dane.h
//
// DANE for SMTP (RFC 7672): what the TLSA answer of one MX host means for
// the sessions to it. The deliverer asks only when the domain's MX lookup
// and the host's address lookups were DNSSEC-validated (§2.2.1, §2.2.2);
// then, for `_<port>._tcp.<mx host>`:
//
//   validated records, some usable    kAuthenticated: STARTTLS, and the
//                                     certificate must match one of them
//   validated records, none usable    kUnauthenticated: STARTTLS is still
//                                     mandatory, nothing verifies it (§2.2)
//   lookup failed (SERVFAIL - a       kLookupFailed: the host is not used
//   bogus answer - or a timeout)      (§2.2: treating it as "no TLSA" is the
//                                     downgrade DANE exists to stop)
//   not validated, NODATA, NXDOMAIN   kNone: the usual TLS rules
//
// An MX host name that is an alias is asked at its CNAME chain's end first
// (`_<port>._tcp.<target>`), and at its own name only when that answer is
// kNone (§2.2.2); DaneHost::base_domain then says where the records were.
//
// Usable (RFC 7672 §3.1.3, RFC 7671 §5): usage DANE-TA(2) or DANE-EE(3);
// PKIX-TA(0) and PKIX-EE(1) are not, since MX hosts need not have Web PKI
// certificates; selector 0 or 1; matching type 0, or 1 with 32 octets, or 2
// with 64.
//
// Thread-safety: pure functions.
//
// Standards: RFC 6698, RFC 7671, RFC 7672.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "lib/dns/mx_resolver.h"
#include "lib/net/connection.h"

namespace tern::deliverer {

enum class DaneMode { kNone, kAuthenticated, kUnauthenticated, kLookupFailed };

// "none", "authenticated", "unauthenticated", "lookup_failed" (logs, metric labels).
const char* DaneModeName(DaneMode mode);

struct DaneHost {
  DaneMode mode = DaneMode::kNone;
  std::vector<net::DaneRecord> records;  // the usable ones, for kAuthenticated
  std::string detail;                    // the lookup's failure, for kLookupFailed
  // Where the records were found when not at the MX host name itself: its
  // CNAME-expanded name (RFC 7672 §2.2.2); "" otherwise.
  std::string base_domain;
};

// The TLSA owner name of an SMTP server: "_25._tcp.mx.example.com".
std::string TlsaName(absl::string_view host, uint16_t port);

// What `answer` (the TLSA lookup of one MX host) asks of its sessions.
DaneHost DaneForHost(const dns::TlsaAnswer& answer);

}  // namespace tern::deliverer
