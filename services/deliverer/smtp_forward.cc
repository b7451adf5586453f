// File: smtp_forward.cc
#include "services/deliverer/smtp_forward.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "lib/common/status_macros.h"
#include "lib/config/haraka_plugins.h"

namespace tern::deliverer {
namespace {

constexpr char kFile[] = "smtp_forward.ini";
constexpr uint16_t kDefaultPort = 25;  // Haraka's, not Tern's mx_port

// The section's value of `key`, else [main]'s (Haraka falls back to [main]
// for host and port only).
std::string HostOrMain(const config::IniFile& ini, const std::string& section, const char* key) {
  std::string value(absl::StripAsciiWhitespace(ini.GetString(section, key, "")));
  if (value.empty() && section != "main") {
    value = std::string(absl::StripAsciiWhitespace(ini.GetString("main", key, "")));
  }
  return value;
}

// One route from `section`: hosts (forwarding_host_pool for [main], else
// host and port), AUTH and TLS.
absl::StatusOr<StaticRoute> RouteFrom(const config::IniFile& ini, const std::string& section, std::string domain,
                                      bool verify_tls) {
  StaticRoute r;
  r.domain = std::move(domain);
  std::optional<uint16_t> port;
  if (const std::string p = HostOrMain(ini, section, "port"); !p.empty()) {
    uint32_t n = 0;
    if (!absl::SimpleAtoi(p, &n) || n == 0 || n > 65535) {
      return ini.KeyError(section, "port", absl::StrCat("'", p, "' is not a port (1..65535)"));
    }
    port = static_cast<uint16_t>(n);
  }
  std::vector<std::string> specs;
  if (const std::string pool = ini.GetString(section, "forwarding_host_pool", ""); !pool.empty()) {
    for (absl::string_view item : absl::StrSplit(pool, ',', absl::SkipWhitespace())) {
      specs.emplace_back(absl::StripAsciiWhitespace(item));
    }
  } else if (const std::string host = HostOrMain(ini, section, "host"); !host.empty()) {
    specs.push_back(host);
  }
  if (specs.empty()) {
    return ini.KeyError(section, "host", "no host to forward to (set host here or in [main])");
  }
  for (const std::string& spec : specs) {
    absl::StatusOr<RouteHost> h = ParseRouteHost(spec);
    if (!h.ok()) {
      return ini.KeyError(section, "host", h.status().message());
    }
    if (!h->unix_path.empty() || h->lmtp) {
      return ini.KeyError(section, "host", absl::StrCat("\"", spec, "\": smtp_forward speaks SMTP over TCP"));
    }
    if (h->port == 0) {
      h->port = port.value_or(kDefaultPort);
    }
    r.hosts.push_back(*std::move(h));
  }
  r.auth_type = absl::AsciiStrToLower(absl::StripAsciiWhitespace(ini.GetString(section, "auth_type", "")));
  r.auth_user = ini.GetString(section, "auth_user", "");
  r.auth_pass = ini.GetString(section, "auth_pass", "");
  // Haraka sends AUTH only with auth_type plain or login; with an auth_user
  // and no type it sends none, and Tern then picks the strongest offered.
  TERN_ASSIGN_OR_RETURN(const bool tls, ini.GetBool(section, "enable_tls", true));
  r.tls = !tls ? RouteTls::kNone : verify_tls ? RouteTls::kRequired : RouteTls::kOpportunistic;
  if (std::optional<RouteProblem> problem = CheckRoute(r)) {
    return ini.KeyError(section, problem->key, problem->message);
  }
  return r;
}

}  // namespace

absl::StatusOr<SmtpForwardRoutes> LoadSmtpForwardRoutes(const config::ConfigDir& dir) {
  SmtpForwardRoutes routes;
  TERN_ASSIGN_OR_RETURN(const bool enabled, config::HarakaPluginListed(dir, {"queue/smtp_forward", "smtp_forward"}));
  if (!enabled) {
    return routes;
  }
  TERN_ASSIGN_OR_RETURN(config::IniFile ini, dir.Ini(kFile));
  TERN_ASSIGN_OR_RETURN(const bool verify_tls, ini.GetBool("tls", "rejectUnauthorized", false));
  const std::string selector =
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(ini.GetString("main", "domain_selector", "rcpt_to")));
  if (selector != "rcpt_to" && selector != "mail_from") {
    return ini.KeyError("main", "domain_selector", "must be rcpt_to or mail_from");
  }
  TERN_ASSIGN_OR_RETURN(const bool outbound, ini.GetBool("main", "enable_outbound", false));
  for (const std::string& section : ini.Sections()) {
    if (section == "main" || section == "tls") {
      continue;
    }
    const bool by_address = absl::StrContains(section, '@');
    // An address section counts only where Haraka reads one: the forward
    // by sender, which enable_outbound turns on for relayed mail.
    if (by_address && !(selector == "mail_from" && outbound)) {
      continue;
    }
    TERN_ASSIGN_OR_RETURN(StaticRoute r, RouteFrom(ini, section, absl::AsciiStrToLower(section), verify_tls));
    if (selector == "mail_from") {
      routes.by_sender.AddIfAbsent(std::move(r));
    } else {
      routes.by_domain.push_back(std::move(r));
    }
  }
  if (outbound) {
    TERN_ASSIGN_OR_RETURN(StaticRoute r, RouteFrom(ini, "main", "*", verify_tls));
    routes.by_domain.push_back(std::move(r));
  }
  return routes;
}

}  // namespace tern::deliverer
