// File: idna.h
//
// The canonical ASCII form of a mail domain, for comparing and grouping
// domains (the queue's per-domain delivery key, admin filters) and for DNS:
// `BÜCHER.example`, `bücher.example` and `xn--bcher-kva.example` are one
// domain, `xn--bcher-kva.example`.
//
//   * All-ASCII domains (A-labels and LDH labels) are lower-cased, nothing
//     else; they are not re-validated (the SMTP parser already checked them).
//   * Address literals ("[192.0.2.1]", "[IPv6:...]") are lower-cased.
//   * Domains with non-ASCII octets (U-labels, RFC 6531) go through libidn2:
//     UTS #46 non-transitional mapping (so upper case and full-width forms
//     map to the IDNA2008 form), NFC, then IDNA2008 ToASCII with the
//     A-label round-trip check.
//
// Errors: InvalidArgument for a domain that has no A-label form (invalid
// UTF-8, a code point IDNA2008 disallows, a label that gets too long); the
// message names the domain and libidn2's reason.
//
// Thread-safety: stateless; safe from any thread.
//
// Standards: RFC 5890/5891 (IDNA2008: U-labels, A-labels, ToASCII), Unicode
// UTS #46 (mapping), RFC 6531 (UTF-8 domains in SMTP).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::address {

// "BÜCHER.Example" -> "xn--bcher-kva.example"; "Example.COM" -> "example.com".
absl::StatusOr<std::string> DomainToAscii(absl::string_view domain);

}  // namespace tern::address
