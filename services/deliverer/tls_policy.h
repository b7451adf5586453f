// File: tls_policy.h
//
// TlsPolicy: how the deliverer uses STARTTLS, from Haraka's config/tls.ini
// [outbound] section (unset keys inherit from [main], except the host lists):
//
//   [outbound]
//   ciphers=               OpenSSL cipher list for TLS <= 1.2. Default: OpenSSL's
//   minVersion=            TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3. Default: OpenSSL's (TLSv1.2 on Debian)
//   key=                   client certificate's private key (PEM), relative to
//   cert=                  the config dir unless absolute; both or neither. Default: none
//   ca=                    extra trusted CA file (PEM) besides the system store. Default: none
//   rejectUnauthorized=false   verify the server's certificate (chain against
//                          the system CAs and `ca`, and the MX name); an
//                          unverified certificate then fails this address
//                          (transient, next MX) instead of being used. Default: false
//   no_tls_hosts[]=        never STARTTLS to these. Default: none
//   force_tls_hosts[]=     STARTTLS with a verified certificate or a
//                          transient failure. Default: none
//
// Host list entries are IP addresses, CIDR blocks (192.0.2.0/24,
// 2001:db8::/32), host names (compared with the MX host name and the
// recipient domain, case-insensitively), or ".example.com" for every name
// under example.com. As in Haraka, an exchange "1.2.3.4" or domain
// "hit.example.com" matches ['1.2.3.4', 'hit.example.com'], "1.2.3.5" does not.
//
// Decide() combines that with outbound.ini enable_tls, the route's tls= and
// the broken-TLS memory: forced TLS (force_tls_hosts or tls=required) wins
// over everything else (even enable_tls=false: the narrower rule is the
// deliberate one); then no TLS for enable_tls=false, no_tls_hosts, tls=none
// or a host remembered as broken; otherwise opportunistic.
//
// Thread-safety: immutable after Load; the ssl::context is shared by every
// connection of the worker (OpenSSL contexts are safe to share once set up).
//
// Standards: RFC 3207 (STARTTLS), RFC 6125 (name checks). Implicit TLS
// (RFC 8314, port 465) is a route's tls=implicit (static_routes.h), not
// decided here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/config_dir.h"
#include "services/deliverer/static_routes.h"

namespace asio::ssl {
class context;
}

namespace tern::deliverer {

// A list of IPs, CIDR blocks, host names and ".domain" suffixes.
class HostMatcher {
 public:
  // InvalidArgument naming the bad entry.
  static absl::StatusOr<HostMatcher> Parse(const std::vector<std::string>& entries);

  // True if `ip` is in a listed address/CIDR, or `mx_host` or `domain`
  // equals a listed name or lies under a listed ".suffix". Empty arguments
  // never match.
  bool Matches(absl::string_view ip, absl::string_view mx_host, absl::string_view domain) const;

  bool empty() const { return nets_.empty() && names_.empty() && suffixes_.empty(); }
  bool operator==(const HostMatcher&) const = default;

 private:
  struct Net {
    bool v6 = false;
    unsigned char bytes[16] = {};
    int prefix = 0;
    bool operator==(const Net&) const = default;
  };
  std::vector<Net> nets_;
  std::vector<std::string> names_;
  std::vector<std::string> suffixes_;  // with the leading dot
};

enum class TlsMode {
  kNone,           // plain text
  kOpportunistic,  // STARTTLS when offered; handshake failure → plain retry
  kRequired,       // STARTTLS with a verified certificate, or transient failure
};

const char* TlsModeName(TlsMode mode);

struct TlsDecision {
  TlsMode mode = TlsMode::kOpportunistic;
  // Fail the address when the certificate does not verify.
  bool verify = false;
  // Why TLS is off or forced, for logs ("no_tls_hosts", "broken_tls", ...).
  std::string why;
};

struct TlsOutboundConfig {
  std::string ciphers;
  std::string min_version;
  std::string key;   // path
  std::string cert;  // path
  std::string ca;    // path
  bool reject_unauthorized = false;
  HostMatcher no_tls_hosts;
  HostMatcher force_tls_hosts;
  // The client context Load built from these settings (loading the system
  // CA store takes ~0.1 s, so the deliverer uses this one rather than build
  // it again); null for a config built by hand: call MakeContext().
  std::shared_ptr<asio::ssl::context> context;

  // Reads tls.ini from `dir` ([outbound], falling back to [main] per key).
  // Errors name the file and key.
  static absl::StatusOr<TlsOutboundConfig> Load(const config::ConfigDir& dir);

  // The client context: system CAs (+ `ca`), client certificate, ciphers,
  // minimum version. InvalidArgument naming the key for a bad file or value.
  absl::StatusOr<std::shared_ptr<asio::ssl::context>> MakeContext() const;
  // The same context presenting another client certificate (a route's
  // tls_cert / tls_key); errors start with `where` (e.g.
  // "outbound_routes.ini [example.com]") and name tls_cert or tls_key.
  absl::StatusOr<std::shared_ptr<asio::ssl::context>> MakeContextWithClientCert(const std::string& client_cert,
                                                                                const std::string& client_key,
                                                                                const std::string& where) const;

  TlsDecision Decide(bool enable_tls, RouteTls route_tls, bool broken_tls, absl::string_view ip,
                     absl::string_view mx_host, absl::string_view domain) const;

 private:
  // The context with `client_cert`/`client_key` (none when empty); errors
  // about those files start with `cert_name` / `key_name`.
  absl::StatusOr<std::shared_ptr<asio::ssl::context>> BuildContext(const std::string& client_cert,
                                                                   const std::string& client_key,
                                                                   const std::string& cert_name,
                                                                   const std::string& key_name) const;
};

}  // namespace tern::deliverer
