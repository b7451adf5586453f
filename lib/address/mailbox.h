// File: mailbox.h
//
// RFC 5321 envelope paths: the reverse-path of MAIL FROM and the forward-path
// of RCPT TO, parsed into a Mailbox {local, domain}. Pure code (no I/O); the
// SMTP command parser calls it, so everything here sees untrusted client input.
//
// What is accepted:
//   <>                          the null reverse-path (only with allow_null)
//   <user@example.com>          Dot-string local part, domain of LDH labels
//   <"john doe"@example.com>    Quoted-string local part (kept in quoted form)
//   <user@[192.0.2.1]>          IPv4 address literal
//   <user@[IPv6:2001:db8::1]>   IPv6 address literal
//   <@a.example,@b.example:user@example.com>
//                               a source route: accepted and dropped, as
//                               RFC 5321 §3.3 and Appendix C tell servers to
//   <Postmaster>                only with allow_postmaster (RCPT TO, §4.5.1)
//   UTF-8 in local parts and domains only with smtputf8 (RFC 6531 §3.3).
// Limits (RFC 5321 §4.5.3.1): local part 64 octets, domain 255 octets, the
// whole path 256 octets including the angle brackets.
//
// Errors are absl::Status values whose message is a short reason fit to
// follow an SMTP reply code ("501 5.1.3 Bad recipient address syntax: ..."):
//   InvalidArgument     - syntax error or a limit exceeded
//   FailedPrecondition  - non-ASCII octets without smtputf8 (RFC 6531 wants
//                         553 5.6.7 for that)
//
// Thread-safety: stateless functions; safe from any thread.
//
// Standards: RFC 5321 §4.1.2 (grammar), §4.1.3 (address literals), §4.5.3.1
// (size limits), Appendix C (source routes); RFC 6531 §3.3 (UTF-8 syntax).
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::address {

struct Mailbox {
  // The local part in its wire form: a Dot-string as given, or a
  // Quoted-string including its quotes and backslashes. Empty for <>.
  std::string local;
  // The domain as given (case kept), or an address literal with its
  // brackets, e.g. "[192.0.2.1]" or "[IPv6:2001:db8::1]". Empty for <> and
  // for <Postmaster>.
  std::string domain;

  bool null() const { return local.empty() && domain.empty(); }
  bool is_address_literal() const { return !domain.empty() && domain.front() == '['; }
  // "local@domain", "" for the null path, "Postmaster" for <Postmaster>:
  // the path without angle brackets, ready to be put back between them.
  std::string ToString() const;

  friend bool operator==(const Mailbox&, const Mailbox&) = default;
};

struct PathOptions {
  // Accept <> (MAIL FROM only).
  bool allow_null = false;
  // Accept <Postmaster> without a domain (RCPT TO only, RFC 5321 §4.5.1).
  bool allow_postmaster = false;
  // Accept UTF-8 in the local part and the domain (the transaction used the
  // SMTPUTF8 parameter, RFC 6531).
  bool smtputf8 = false;
  // Accept a mailbox without the angle brackets ("MAIL FROM:user@example.com"),
  // which old clients send. The mailbox then ends at the first space.
  bool allow_missing_brackets = false;
};

inline constexpr size_t kMaxLocalPartOctets = 64;
inline constexpr size_t kMaxDomainOctets = 255;
inline constexpr size_t kMaxPathOctets = 256;

struct ParsedPath {
  Mailbox mailbox;
  // Octets of the input the path took, including its brackets.
  size_t consumed = 0;
  // True if the path contained any octet >= 0x80.
  bool non_ascii = false;
};

// Parses the path at the start of `input`; anything after it is left for the
// caller (ESMTP parameters). Example: "<a@b.example> SIZE=10" gives
// {local "a", domain "b.example"} and consumed = 13.
absl::StatusOr<ParsedPath> ParsePathPrefix(absl::string_view input, const PathOptions& options);

// Parses a whole path: `input` must be exactly one path.
absl::StatusOr<Mailbox> ParsePath(absl::string_view input, const PathOptions& options);

// Parses a bare mailbox "local@domain" (no brackets, no source route), e.g.
// the address inside an ORCPT rfc822 value. smtputf8 as in PathOptions.
absl::StatusOr<Mailbox> ParseMailbox(absl::string_view input, bool smtputf8);

// True if `domain` is a syntactically valid Domain (RFC 5321 §4.1.2: LDH
// labels of at most 63 octets; U-labels with smtputf8), at most 255 octets.
bool IsValidDomain(absl::string_view domain, bool smtputf8);

// A host name as DNS compares it: ASCII lower case, without trailing dots
// ("MX.Example.COM." -> "mx.example.com"). Nothing is validated.
std::string CanonicalHostName(absl::string_view name);

}  // namespace tern::address
