#include "services/deliverer/route_planner.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tern::deliverer {
namespace {

// Canonical text of an IP literal ("::ffff:1.2.3.4" stays v6), or "".
std::string Canonical(const std::string& ip) {
  in_addr v4;
  in6_addr v6;
  char buf[INET6_ADDRSTRLEN];
  if (inet_pton(AF_INET, ip.c_str(), &v4) == 1) {
    return inet_ntop(AF_INET, &v4, buf, sizeof(buf));
  }
  if (inet_pton(AF_INET6, ip.c_str(), &v6) == 1) {
    return inet_ntop(AF_INET6, &v6, buf, sizeof(buf));
  }
  return "";
}

const char* SpecialV4(uint32_t a) {
  if ((a >> 24) == 127) {
    return "loopback address";
  }
  if ((a >> 24) == 0) {
    return "unspecified address";
  }
  if ((a >> 16) == 0xa9fe) {
    return "link-local address";
  }
  if ((a >> 28) == 0xe || a == 0xffffffffu) {
    return "multicast/broadcast address";
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<InetPrefer> ParseInetPrefer(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "default" || lower.empty()) {
    return InetPrefer::kDefault;
  }
  if (lower == "v4") {
    return InetPrefer::kV4;
  }
  if (lower == "v6") {
    return InetPrefer::kV6;
  }
  return absl::InvalidArgumentError(absl::StrCat("inet_prefer must be default, v4 or v6, not \"", text, "\""));
}

RoutePlanner::RoutePlanner(Options options) : options_(std::move(options)) {
  absl::AsciiStrToLower(&options_.me);
  AddLocalAddresses(options_.local_addresses);
}

void RoutePlanner::SetPreferences(InetPrefer inet_prefer, bool local_mx_ok) {
  options_.inet_prefer = inet_prefer;
  options_.local_mx_ok = local_mx_ok;
}

void RoutePlanner::AddLocalAddresses(const std::vector<std::string>& addresses) {
  for (const auto& a : addresses) {
    std::string c = Canonical(a);
    if (!c.empty()) {
      local_.insert(std::move(c));
    }
  }
}

std::string RoutePlanner::LocalReason(const std::string& ip) const {
  in_addr v4;
  in6_addr v6;
  if (inet_pton(AF_INET, ip.c_str(), &v4) == 1) {
    if (const char* why = SpecialV4(ntohl(v4.s_addr))) {
      return why;
    }
  } else if (inet_pton(AF_INET6, ip.c_str(), &v6) == 1) {
    const uint8_t* b = v6.s6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&v6)) {
      uint32_t a = (uint32_t{b[12]} << 24) | (uint32_t{b[13]} << 16) | (uint32_t{b[14]} << 8) | b[15];
      if (const char* why = SpecialV4(a)) {
        return why;
      }
    } else if (IN6_IS_ADDR_LOOPBACK(&v6)) {
      return "loopback address";
    } else if (IN6_IS_ADDR_UNSPECIFIED(&v6)) {
      return "unspecified address";
    } else if (IN6_IS_ADDR_LINKLOCAL(&v6)) {
      return "link-local address";
    } else if (IN6_IS_ADDR_MULTICAST(&v6)) {
      return "multicast address";
    } else if ((b[0] & 0xfe) == 0xfc) {
      return "unique-local address";  // fc00::/7, RFC 4193 (Haraka's is_local_host too)
    }
  } else {
    return "not an IP address";
  }
  if (local_.count(Canonical(ip)) > 0) {
    return "one of this host's own addresses";
  }
  return "";
}

RoutePlan RoutePlanner::Plan(const dns::MxAnswer& answer) const {
  RoutePlan plan;
  if (answer.status != dns::LookupStatus::kOk) {
    return plan;
  }
  std::set<std::string> seen;
  auto add = [&](const dns::MxHost& host, const std::string& ip) {
    const std::string canonical = Canonical(ip);
    if (canonical.empty() || !seen.insert(canonical).second) {
      return;
    }
    if (!options_.local_mx_ok) {
      std::string why = LocalReason(canonical);
      if (!why.empty()) {
        plan.skipped.push_back(
            absl::StrCat(host.name, "[", canonical, "]: ", why, " refused (local_mx_ok=false)"));
        return;
      }
    }
    plan.attempts.push_back(Attempt{host.name, canonical, options_.port, host.preference, false, ""});
  };
  const auto& hosts = answer.hosts;
  for (size_t first = 0; first < hosts.size();) {
    size_t last = first;
    while (last < hosts.size() && hosts[last].preference == hosts[first].preference) {
      ++last;
    }
    // One preference level: [first, last).
    std::vector<const dns::MxHost*> usable;
    for (size_t i = first; i < last; ++i) {
      const dns::MxHost& host = hosts[i];
      if (!options_.local_mx_ok && !options_.me.empty() && host.name == options_.me) {
        plan.skipped.push_back(absl::StrCat(host.name, ": MX is this host (config/me) refused (local_mx_ok=false)"));
        continue;
      }
      if (host.addresses.status == dns::LookupStatus::kTempFail) {
        plan.dns_trouble = true;
      }
      if (host.addresses.ipv4.empty() && host.addresses.ipv6.empty()) {
        plan.skipped.push_back(host.addresses.detail.empty()
                                   ? absl::StrCat(host.name, ": no A/AAAA records")
                                   : host.addresses.detail);
        continue;
      }
      usable.push_back(&host);
    }
    auto add_family = [&](const dns::MxHost& h, bool v6) {
      for (const auto& ip : v6 ? h.addresses.ipv6 : h.addresses.ipv4) {
        add(h, ip);
      }
    };
    if (options_.inet_prefer == InetPrefer::kDefault) {
      for (const auto* h : usable) {
        add_family(*h, true);
        add_family(*h, false);
      }
    } else {
      const bool v6_first = options_.inet_prefer == InetPrefer::kV6;
      for (const auto* h : usable) {
        add_family(*h, v6_first);
      }
      for (const auto* h : usable) {
        add_family(*h, !v6_first);
      }
    }
    first = last;
  }
  return plan;
}

RoutePlan RoutePlanner::PlanRoute(const StaticRoute& route, const std::vector<dns::HostAnswer>& addresses) const {
  RoutePlan plan;
  std::set<std::string> seen;
  for (size_t i = 0; i < route.hosts.size(); ++i) {
    const RouteHost& h = route.hosts[i];
    if (!h.unix_path.empty()) {
      if (seen.insert("unix:" + h.unix_path).second) {
        Attempt a;
        a.mx_host = h.unix_path;
        a.port = 0;
        a.preference = route.priority;
        a.lmtp = true;
        a.unix_path = h.unix_path;
        plan.attempts.push_back(std::move(a));
      }
      continue;
    }
    const uint16_t port = h.port != 0 ? h.port : (h.lmtp ? uint16_t{24} : options_.port);
    std::vector<std::string> ips;
    if (std::string literal = Canonical(h.host); !literal.empty()) {
      ips.push_back(literal);
    } else {
      if (!options_.local_mx_ok && !options_.me.empty() && h.host == options_.me) {
        plan.skipped.push_back(absl::StrCat(h.host, ": route host is this host (config/me) refused (local_mx_ok=false)"));
        continue;
      }
      const dns::HostAnswer empty;
      const dns::HostAnswer& answer = i < addresses.size() ? addresses[i] : empty;
      if (answer.status == dns::LookupStatus::kTempFail) {
        plan.dns_trouble = true;
      }
      const bool v4_first = options_.inet_prefer == InetPrefer::kV4;
      for (const auto* family : {v4_first ? &answer.ipv4 : &answer.ipv6, v4_first ? &answer.ipv6 : &answer.ipv4}) {
        ips.insert(ips.end(), family->begin(), family->end());
      }
      if (ips.empty()) {
        plan.skipped.push_back(answer.detail.empty() ? absl::StrCat(h.host, ": no A/AAAA records") : answer.detail);
        continue;
      }
    }
    for (const std::string& raw : ips) {
      const std::string ip = Canonical(raw);
      if (ip.empty() || !seen.insert(absl::StrCat(ip, "|", port, "|", h.lmtp)).second) {
        continue;
      }
      if (!options_.local_mx_ok) {
        if (std::string why = LocalReason(ip); !why.empty()) {
          plan.skipped.push_back(absl::StrCat(h.host, "[", ip, "]: ", why, " refused (local_mx_ok=false)"));
          continue;
        }
      }
      Attempt a;
      a.mx_host = h.host;
      a.ip = ip;
      a.port = port;
      a.preference = route.priority;
      a.lmtp = h.lmtp;
      plan.attempts.push_back(std::move(a));
    }
  }
  return plan;
}

std::vector<std::string> RoutePlanner::InterfaceAddresses() {
  std::vector<std::string> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) {
    return out;
  }
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr) {
      continue;
    }
    char buf[INET6_ADDRSTRLEN];
    if (i->ifa_addr->sa_family == AF_INET) {
      auto* sin = reinterpret_cast<sockaddr_in*>(i->ifa_addr);
      out.emplace_back(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)));
    } else if (i->ifa_addr->sa_family == AF_INET6) {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(i->ifa_addr);
      out.emplace_back(inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf)));
    }
  }
  freeifaddrs(list);
  return out;
}

}  // namespace tern::deliverer
