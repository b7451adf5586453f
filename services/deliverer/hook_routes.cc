// File: hook_routes.cc
#include "services/deliverer/hook_routes.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/address/authority.h"
#include "lib/common/status_macros.h"

namespace tern::deliverer {

absl::StatusOr<StaticRoute> RouteFromHook(const tern::v1::MxRoute& m, const std::string& domain) {
  std::string spec;
  if (!m.unix_path().empty()) {
    if (!m.host().empty() || m.unix_path()[0] != '/') {
      return absl::InvalidArgumentError("a unix_path route needs an absolute path and no host");
    }
    spec = m.unix_path();
  } else {
    if (m.port() > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("port ", m.port(), " is out of range"));
    }
    // IPv6 literals come without brackets; ParseRouteHost wants them with.
    spec = absl::StrCat(m.lmtp() ? "lmtp://" : "", address::HostAuthority(m.host(), m.port(), 0));
  }
  TERN_ASSIGN_OR_RETURN(RouteHost host, ParseRouteHost(spec));
  StaticRoute r;
  r.domain = domain;
  r.hosts.push_back(std::move(host));
  r.auth_user = m.auth_user();
  r.auth_pass = m.auth_pass();
  r.auth_type = m.auth_type();
  r.bind = m.bind();
  r.bind_helo = m.bind_helo();
  const RouteHost& h = r.hosts[0];
  switch (m.tls()) {
    case tern::v1::MX_ROUTE_TLS_DEFAULT:
      // As outbound_routes.ini without tls=: port 465 is implicit TLS.
      r.tls = h.unix_path.empty() && h.port == kImplicitTlsPort ? RouteTls::kImplicit : RouteTls::kOpportunistic;
      break;
    case tern::v1::MX_ROUTE_TLS_OPPORTUNISTIC:
      r.tls = RouteTls::kOpportunistic;
      break;
    case tern::v1::MX_ROUTE_TLS_REQUIRED:
      r.tls = RouteTls::kRequired;
      break;
    case tern::v1::MX_ROUTE_TLS_NONE:
      r.tls = RouteTls::kNone;
      break;
    case tern::v1::MX_ROUTE_TLS_IMPLICIT:
      if (!h.unix_path.empty()) {
        return absl::InvalidArgumentError("tls: implicit TLS needs a TCP host, not a unix socket");
      }
      r.tls = RouteTls::kImplicit;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("tls: unknown value ", static_cast<int>(m.tls())));
  }
  if (std::optional<RouteProblem> problem = CheckRoute(r)) {
    return absl::InvalidArgumentError(absl::StrCat(problem->key, ": ", problem->message));
  }
  for (char c : r.bind_helo) {
    // The HELO name goes on the wire as one word.
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      return absl::InvalidArgumentError("bind_helo: must be one word");
    }
  }
  return r;
}

}  // namespace tern::deliverer
