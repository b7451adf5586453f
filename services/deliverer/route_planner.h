// File: route_planner.h
//
// RoutePlanner turns an MX answer into the ordered list of addresses a
// delivery tries (Haraka's address list, with its bugs fixed):
//   * MX hosts in preference order (the resolver already shuffled ties);
//   * within ONE preference level, `inet_prefer` orders the families: v4 puts
//     every IPv4 address of that level first, v6 every IPv6 address, default
//     keeps each host's own order, IPv6 before IPv4 (Haraka reordered across
//     all preferences, which defeats the MX priorities);
//   * duplicate addresses are tried once;
//   * with local_mx_ok=false, loopback, link-local, unique-local (fc00::/7), unspecified, multicast and
//     this host's own addresses (and an MX named like `me`) are refused:
//     delivering there would loop mail back to ourselves;
//   * static routes (PlanRoute) keep the order they were written in.
// What was skipped and why is kept, so that "no usable MX" has a clear reason.
//
// Thread-safety: immutable after construction except AddLocalAddresses,
// which must not race with Plan (the worker calls both on its executor).
//
// Standards: RFC 5321 §5.1 (MX ordering, "loops back to myself"), RFC 6724
// is NOT applied (default order is v6 first per host, as Haraka).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/dns/mx_resolver.h"
#include "services/deliverer/static_routes.h"

namespace tern::deliverer {

enum class InetPrefer { kDefault, kV4, kV6 };

// "default", "v4" or "v6" (case-insensitive).
absl::StatusOr<InetPrefer> ParseInetPrefer(absl::string_view text);

struct Attempt {
  std::string mx_host;   // the exchange (or the domain, for an implicit MX)
  std::string ip;        // empty for a unix socket
  uint16_t port = 25;
  uint16_t preference = 0;
  bool lmtp = false;
  std::string unix_path; // LMTP over a unix socket
};

struct RoutePlan {
  std::vector<Attempt> attempts;
  // Why hosts or addresses were left out, e.g.
  // "mx.example.test[127.0.0.1]: loopback address refused (local_mx_ok=false)".
  std::vector<std::string> skipped;
  // True when some MX host could not be resolved for a temporary reason.
  bool dns_trouble = false;
};

class RoutePlanner {
 public:
  struct Options {
    InetPrefer inet_prefer = InetPrefer::kDefault;
    bool local_mx_ok = false;
    uint16_t port = 25;
    std::string me;                       // config/me, lower case
    std::vector<std::string> local_addresses;  // this host's addresses
  };

  explicit RoutePlanner(Options options);

  // Adds addresses that count as this host (e.g. what `me` resolves to).
  void AddLocalAddresses(const std::vector<std::string>& addresses);

  // A reload's outbound.ini inet_prefer and local_mx_ok, for the plans made
  // from then on.
  void SetPreferences(InetPrefer inet_prefer, bool local_mx_ok);
  bool local_mx_ok() const { return options_.local_mx_ok; }

  // The attempts for `answer` (status kOk; other statuses give no attempts).
  RoutePlan Plan(const dns::MxAnswer& answer) const;

  // The attempts for a static route: its hosts in the order written (never
  // sorted); `addresses[i]` is the A/AAAA lookup of route.hosts[i], unused
  // for IP literals and unix sockets. `inet_prefer` orders each host's own
  // addresses only, so the written order always wins. Literal IPs go through
  // the same local_mx_ok check as DNS answers. Ports: the host's own, else
  // 24 for LMTP, else the planner's port.
  RoutePlan PlanRoute(const StaticRoute& route, const std::vector<dns::HostAnswer>& addresses) const;

  // Why `ip` may not be used as an MX address when local_mx_ok=false, or ""
  // if it may. Unparseable text is refused too.
  std::string LocalReason(const std::string& ip) const;

  // This machine's interface addresses (getifaddrs), for Options.
  static std::vector<std::string> InterfaceAddresses();

 private:
  Options options_;
  std::set<std::string> local_;  // canonical text
};

}  // namespace tern::deliverer
