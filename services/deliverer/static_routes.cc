#include "services/deliverer/static_routes.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "asio/ip/address.hpp"
#include "lib/common/status_macros.h"

namespace tern::deliverer {
namespace {

absl::StatusOr<uint16_t> ParsePort(absl::string_view text, absl::string_view spec) {
  uint32_t port = 0;
  if (!absl::SimpleAtoi(text, &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port in host \"", spec, "\""));
  }
  return static_cast<uint16_t>(port);
}

bool IsIp(absl::string_view text) {
  asio::error_code ec;
  asio::ip::make_address(std::string(text), ec);
  return !ec;
}

}  // namespace

const char* RouteTlsName(RouteTls tls) {
  switch (tls) {
    case RouteTls::kOpportunistic:
      return "opportunistic";
    case RouteTls::kRequired:
      return "required";
    case RouteTls::kNone:
      return "none";
    case RouteTls::kImplicit:
      return "implicit";
  }
  return "?";
}

absl::StatusOr<RouteHost> ParseRouteHost(absl::string_view spec_in) {
  const absl::string_view spec = absl::StripAsciiWhitespace(spec_in);
  RouteHost h;
  h.spec = std::string(spec);
  absl::string_view rest = spec;
  if (absl::ConsumePrefix(&rest, "lmtp://")) {
    h.lmtp = true;
  } else if (absl::ConsumePrefix(&rest, "smtp://")) {
    h.lmtp = false;
  }
  if (absl::StartsWith(rest, "/")) {
    // A unix socket only makes sense for LMTP (Haraka's `path`).
    h.lmtp = true;
    h.unix_path = std::string(rest);
    return h;
  }
  if (rest.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("empty host in \"", spec, "\""));
  }
  if (absl::StartsWith(rest, "[")) {
    const size_t close = rest.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("missing ] in host \"", spec, "\""));
    }
    h.host = std::string(rest.substr(1, close - 1));
    absl::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (!absl::ConsumePrefix(&after, ":")) {
        return absl::InvalidArgumentError(absl::StrCat("expected :port after ] in host \"", spec, "\""));
      }
      TERN_ASSIGN_OR_RETURN(h.port, ParsePort(after, spec));
    }
    if (!IsIp(h.host)) {
      return absl::InvalidArgumentError(absl::StrCat("not an IP address in [] in host \"", spec, "\""));
    }
    return h;
  }
  const size_t colon = rest.find(':');
  if (colon != absl::string_view::npos && rest.find(':', colon + 1) != absl::string_view::npos) {
    // A bare IPv6 literal (several colons, no port).
    if (!IsIp(rest)) {
      return absl::InvalidArgumentError(absl::StrCat("bad host \"", spec, "\" (write IPv6 as [addr]:port)"));
    }
    h.host = std::string(rest);
    return h;
  }
  if (colon != absl::string_view::npos) {
    h.host = std::string(rest.substr(0, colon));
    TERN_ASSIGN_OR_RETURN(h.port, ParsePort(rest.substr(colon + 1), spec));
  } else {
    h.host = std::string(rest);
  }
  if (h.host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("empty host in \"", spec, "\""));
  }
  for (char c : h.host) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') {
      return absl::InvalidArgumentError(absl::StrCat("bad character in host \"", spec, "\""));
    }
  }
  absl::AsciiStrToLower(&h.host);
  return h;
}

std::optional<RouteProblem> CheckRoute(const StaticRoute& r) {
  if (!r.auth_type.empty() && absl::AsciiStrToUpper(r.auth_type) != "PLAIN" &&
      absl::AsciiStrToUpper(r.auth_type) != "LOGIN" && absl::AsciiStrToUpper(r.auth_type) != "CRAM-MD5") {
    return RouteProblem{"auth_type", "must be plain, login or cram-md5"};
  }
  if (r.auth_user.empty() != r.auth_pass.empty()) {
    // Name the key that is missing, never the value of the other.
    return RouteProblem{r.auth_user.empty() ? "auth_user" : "auth_pass", "auth_user and auth_pass must be set together"};
  }
  if (r.force_auth && !r.has_auth()) {
    return RouteProblem{"force_auth", "needs auth_user and auth_pass"};
  }
  if (!r.bind.empty() && !IsIp(r.bind)) {
    return RouteProblem{"bind", "must be an IP address of this host"};
  }
  if (r.tls_cert.empty() != r.tls_key.empty()) {
    return RouteProblem{r.tls_cert.empty() ? "tls_cert" : "tls_key", "tls_cert and tls_key must be set together"};
  }
  if (!r.tls_cert.empty() && r.tls == RouteTls::kNone) {
    return RouteProblem{"tls_cert", "a client certificate needs TLS, and this route has tls=none"};
  }
  return std::nullopt;
}

absl::StatusOr<StaticRoutes> StaticRoutes::Load(const config::IniFile& ini,
                                                 const std::function<std::string(const std::string&)>& resolve_path) {
  StaticRoutes routes;
  for (const std::string& section : ini.Sections()) {
    StaticRoute r;
    r.domain = absl::AsciiStrToLower(section);
    for (const std::string& spec : ini.GetList(section, "host")) {
      if (absl::StripAsciiWhitespace(spec).empty()) {
        continue;
      }
      absl::StatusOr<RouteHost> host = ParseRouteHost(spec);
      if (!host.ok()) {
        return ini.KeyError(section, "host", host.status().message());
      }
      r.hosts.push_back(*std::move(host));
    }
    if (r.hosts.empty()) {
      return ini.KeyError(section, "host", "a route needs at least one host[]= entry");
    }
    TERN_ASSIGN_OR_RETURN(int64_t priority, ini.GetInt(section, "priority", 0));
    if (priority < 0 || priority > 65535) {
      return ini.KeyError(section, "priority", "must be between 0 and 65535");
    }
    r.priority = static_cast<uint16_t>(priority);
    r.auth_user = ini.GetString(section, "auth_user", "");
    r.auth_pass = ini.GetString(section, "auth_pass", "");
    r.auth_type = ini.GetString(section, "auth_type", "");
    TERN_ASSIGN_OR_RETURN(r.force_auth, ini.GetBool(section, "force_auth", false));
    r.bind = std::string(absl::StripAsciiWhitespace(ini.GetString(section, "bind", "")));
    r.bind_helo = std::string(absl::StripAsciiWhitespace(ini.GetString(section, "bind_helo", "")));
    const std::string tls =
        absl::AsciiStrToLower(absl::StripAsciiWhitespace(ini.GetString(section, "tls", "")));
    // Port 465 is implicit TLS (RFC 8314 §7.3): STARTTLS there would wait
    // for a banner while the server waits for a ClientHello.
    const bool all_465 = std::all_of(r.hosts.begin(), r.hosts.end(), [](const RouteHost& h) {
      return h.unix_path.empty() && h.port == kImplicitTlsPort;
    });
    if (tls.empty()) {
      r.tls = all_465 ? RouteTls::kImplicit : RouteTls::kOpportunistic;
    } else if (tls == "opportunistic") {
      r.tls = RouteTls::kOpportunistic;
    } else if (tls == "required") {
      r.tls = RouteTls::kRequired;
    } else if (tls == "none") {
      r.tls = RouteTls::kNone;
    } else if (tls == "implicit") {
      r.tls = RouteTls::kImplicit;
      for (const RouteHost& h : r.hosts) {
        if (!h.unix_path.empty()) {
          return ini.KeyError(section, "tls",
                              absl::StrCat("implicit TLS needs TCP hosts; ", h.spec, " is a unix socket"));
        }
      }
    } else {
      return ini.KeyError(section, "tls", "must be opportunistic, required, implicit or none");
    }
    for (auto [key, path] : {std::pair{"tls_cert", &r.tls_cert}, std::pair{"tls_key", &r.tls_key}}) {
      *path = std::string(absl::StripAsciiWhitespace(ini.GetString(section, key, "")));
      if (!path->empty() && resolve_path) {
        *path = resolve_path(*path);
      }
    }
    if (std::optional<RouteProblem> problem = CheckRoute(r)) {
      return ini.KeyError(section, problem->key, problem->message);
    }
    routes.routes_[r.domain] = std::move(r);
  }
  return routes;
}

bool StaticRoutes::AddIfAbsent(StaticRoute route) {
  std::string key = route.domain;
  return routes_.emplace(std::move(key), std::move(route)).second;
}

const StaticRoute* StaticRoutes::Find(absl::string_view domain) const {
  if (const StaticRoute* own = FindExact(domain)) {
    return own;
  }
  if (auto it = routes_.find("*"); it != routes_.end()) {
    return &it->second;
  }
  return nullptr;
}

const StaticRoute* StaticRoutes::FindExact(absl::string_view key) const {
  if (routes_.empty()) {
    return nullptr;
  }
  auto it = routes_.find(absl::AsciiStrToLower(key));
  return it == routes_.end() ? nullptr : &it->second;
}

const StaticRoute* StaticRoutes::FindSender(absl::string_view mail_from) const {
  const size_t at = mail_from.rfind('@');
  if (at == absl::string_view::npos) {
    return nullptr;  // the null sender (DSNs) has no section
  }
  if (const StaticRoute* by_address = FindExact(mail_from)) {
    return by_address;
  }
  return FindExact(mail_from.substr(at + 1));
}

}  // namespace tern::deliverer
