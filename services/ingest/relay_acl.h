// File: relay_acl.h
//
// RelayAcl: the client networks allowed to relay through ingest, read from
// the `relay_acl_allow` file (Haraka's relay plugin uses the same name): one
// IPv4 or IPv6 address or CIDR per line, `#` starts a comment. A client whose
// address is in no listed network gets `550 5.7.1 Relaying denied` at RCPT.
// An IPv4-mapped IPv6 client (::ffff:192.0.2.1, seen on a dual-stack
// listener) is matched as the IPv4 address it is.
//
// Thread-safety: immutable after Parse(); safe to share.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tern::ingest {

// An IPv4 or IPv6 address as bytes (IPv4 uses the first 4).
struct IpAddress {
  bool v6 = false;
  std::array<uint8_t, 16> bytes{};

  // Parses "192.0.2.1" or "2001:db8::1"; IPv4-mapped IPv6 becomes IPv4.
  static std::optional<IpAddress> Parse(absl::string_view text);
};

struct Cidr {
  IpAddress network;   // host bits cleared
  int prefix = 0;      // 0..32 or 0..128

  // "192.0.2.0/24", "2001:db8::/32", or a single address (full prefix).
  static absl::StatusOr<Cidr> Parse(absl::string_view text);
  bool Contains(const IpAddress& ip) const;
};

class RelayAcl {
 public:
  RelayAcl() = default;

  // Parses the file's text; an error names `file_name`, the line number and
  // the bad entry.
  static absl::StatusOr<RelayAcl> Parse(absl::string_view text, absl::string_view file_name);
  // What applies when the file is missing: 127.0.0.1/32 and ::1/128.
  static RelayAcl Default();

  // True if `ip` (textual) is in one of the networks; false for text that is
  // not an IP address.
  bool Allows(absl::string_view ip) const;
  bool Allows(const IpAddress& ip) const;

  const std::vector<Cidr>& networks() const { return networks_; }

 private:
  std::vector<Cidr> networks_;
};

// The TLS client certificates whose holders may relay from any address,
// read from the `relay_clientcerts` file (Postfix's relay_clientcerts with
// permit_tls_clientcerts): one SHA-256 fingerprint per line, of the
// certificate or of its public key (SubjectPublicKeyInfo, which stays the
// same when the certificate is renewed with the same key), as hex with or
// without colons; the "sha256 Fingerprint=" that `openssl x509 -noout
// -fingerprint -sha256` prints before it may stay. `#` starts a comment.
// The certificate need not chain to a trusted CA: the handshake proved the
// client holds its key, and the fingerprint is the trust.
class RelayClientCerts {
 public:
  RelayClientCerts() = default;

  // An error names `file_name`, the line number and the bad entry.
  static absl::StatusOr<RelayClientCerts> Parse(absl::string_view text, absl::string_view file_name);

  // True if either fingerprint (lower-case hex; empty = none) is listed.
  bool Allows(absl::string_view cert_sha256, absl::string_view pubkey_sha256) const;
  size_t size() const { return fingerprints_.size(); }

 private:
  absl::flat_hash_set<std::string> fingerprints_;  // lower-case hex, no colons
};

}  // namespace tern::ingest
