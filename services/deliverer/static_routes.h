// File: static_routes.h
//
// StaticRoutes: Haraka's `get_mx` answer given by configuration instead of a
// plugin - config/outbound_routes.ini, one section per recipient domain plus
// `*` for every other domain. A domain with a route is never looked up in DNS
// for MX records; its hosts are tried in the order written (not sorted by
// priority, as Haraka does).
//
//   [example.com]
//   host[]=smarthost.example.net          ; port 25 (mx_port)
//   host[]=10.0.0.7:2525
//   host[]=[2001:db8::7]:587
//   host[]=lmtp://127.0.0.1:24            ; LMTP over TCP (default port 24)
//   host[]=/run/dovecot/lmtp              ; LMTP over a unix socket
//   host[]=lmtp:///run/dovecot/lmtp       ; the same
//   priority=10            ; the MX preference reported for these hosts. Default: 0
//   auth_user=relay        ; AUTH when set together with auth_pass. Default: none
//   auth_pass=secret       ; never logged. Default: none
//   auth_type=plain        ; preferred mechanism if offered. Default: strongest offered
//   force_auth=false       ; AUTH not possible → transient failure instead of
//                          ; sending unauthenticated. Default: false
//   bind=192.0.2.10        ; source IP of the connection. Default: the system's choice
//   bind_helo=out1.example.org ; EHLO name for this route. Default: config/me
//   tls=opportunistic      ; opportunistic (tls.ini policy), required (like
//                          ; force_tls_hosts: STARTTLS with a verified
//                          ; certificate or a transient failure), implicit
//                          ; (TLS from the first byte, RFC 8314, with a
//                          ; verified certificate: a smarthost's port 465)
//                          ; or none. Default: implicit when every host is
//                          ; on port 465, else opportunistic
//   tls_cert=relay.pem     ; client certificate (chain, PEM) this route
//   tls_key=relay.key      ; presents in TLS instead of tls.ini's cert/key,
//                          ; e.g. for a smarthost that admits relays by
//                          ; certificate. Set both or neither; paths relative
//                          ; to the config directory. Default: tls.ini's
//
// Host names are resolved (A/AAAA) at delivery time; literal IPs are used as
// they are. Either way local_mx_ok=false refuses local addresses (Haraka let
// plugin IP literals through). Unix-socket hosts are always LMTP and are not
// subject to local_mx_ok (a socket path is local by definition and can only
// be configured by the operator).
//
// Thread-safety: immutable after Load; share freely.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/ini_file.h"

namespace tern::deliverer {

enum class RouteTls { kOpportunistic, kRequired, kNone, kImplicit };

// The submissions port: implicit TLS (RFC 8314 §7.3).
inline constexpr uint16_t kImplicitTlsPort = 465;

struct RouteHost {
  std::string host;        // name or IP literal (no brackets); empty for unix
  uint16_t port = 0;       // 0 = the default for the protocol
  bool lmtp = false;
  std::string unix_path;   // LMTP over a unix socket when set
  std::string spec;        // as written, for logs

  bool operator==(const RouteHost&) const = default;
};

struct StaticRoute {
  std::string domain;      // section name, lower case ("*" = default)
  std::vector<RouteHost> hosts;
  uint16_t priority = 0;
  std::string auth_user;
  std::string auth_pass;
  std::string auth_type;
  bool force_auth = false;
  std::string bind;
  std::string bind_helo;
  RouteTls tls = RouteTls::kOpportunistic;
  std::string tls_cert;    // resolved paths; both empty = tls.ini's
  std::string tls_key;

  bool has_auth() const { return !auth_user.empty() && !auth_pass.empty(); }
  bool operator==(const StaticRoute&) const = default;
};

// Parses one host entry (see the file comment). `spec` errors say what is
// wrong without echoing anything but the entry.
absl::StatusOr<RouteHost> ParseRouteHost(absl::string_view spec);

class StaticRoutes {
 public:
  StaticRoutes() = default;

  // Every section of `ini` is a route; a bad key names the file, section and
  // key. A section without hosts is an error. `resolve_path` turns a file
  // name as written (tls_cert, tls_key) into the path to open; none = as is.
  static absl::StatusOr<StaticRoutes> Load(
      const config::IniFile& ini, const std::function<std::string(const std::string&)>& resolve_path = nullptr);

  // Adds `route` unless a route for its domain (or `*`) is there already;
  // true when added. For routes from other files (smtp_forward.h), which
  // outbound_routes.ini overrides.
  bool AddIfAbsent(StaticRoute route);

  // The route for `domain` (any case): its own section, else `*`, else null.
  const StaticRoute* Find(absl::string_view domain) const;
  // Only `key`'s own section (any case), never `*`; null if none.
  const StaticRoute* FindExact(absl::string_view key) const;
  // Routes keyed by sender (smtp_forward.ini with domain_selector=mail_from):
  // the section of the envelope sender's address (any case), else of its
  // domain; null for the null sender or when neither has one.
  const StaticRoute* FindSender(absl::string_view mail_from) const;
  bool empty() const { return routes_.empty(); }

  size_t size() const { return routes_.size(); }
  // Every route, by section name (lower case).
  const std::map<std::string, StaticRoute, std::less<>>& all() const { return routes_; }
  bool operator==(const StaticRoutes&) const = default;

 private:
  std::map<std::string, StaticRoute, std::less<>> routes_;
};

const char* RouteTlsName(RouteTls tls);

// What is wrong with a route's AUTH or bind settings, by key (auth_type,
// auth_user, auth_pass, force_auth, bind), or nothing. Shared by
// outbound_routes.ini and the routes a get_mx hook answers with.
struct RouteProblem {
  const char* key;
  std::string message;
};
std::optional<RouteProblem> CheckRoute(const StaticRoute& route);

}  // namespace tern::deliverer
