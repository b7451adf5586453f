#include "tools/ternctl/destinations_command.h"

#include <memory>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_call.h"
#include "tools/ternctl/admin_client.h"

namespace tern::ternctl {
namespace {

// "0" reads as a limit of nothing; the queue's 0 means no limit.
std::string Limit(uint32_t n) { return n == 0 ? "-" : absl::StrCat(n); }

}  // namespace

std::string FormatDestinations(const tern::v1::DestinationsResponse& resp, int64_t now_unix_ms) {
  if (resp.destinations().empty()) {
    return "no destination has deliveries out or waiting, a backoff, or an MX site\n";
  }
  std::vector<std::vector<std::string>> rows = {
      {"DESTINATION", "LEASED", "WAITING", "CONCURRENCY", "MAX", "RATE", "DOMAINS"}};
  std::string backoffs;
  for (const auto& d : resp.destinations()) {
    const bool site = absl::StartsWith(d.destination(), "site:");
    rows.push_back({d.destination(), absl::StrCat(d.leased()), absl::StrCat(d.waiting()), Limit(d.concurrency_now()),
                    Limit(d.concurrency_max()), d.rate_max() == "none" ? "-" : d.rate_max()});
    if (site) {
      rows.back().push_back(absl::StrCat(d.site_domains()));
    }
    if (d.backoff_until_unix_ms() > now_unix_ms) {
      absl::StrAppend(&backoffs, d.destination(), ": backed off to ", d.concurrency_now(), " until ",
                      FormatTime(d.backoff_until_unix_ms()), " (", FormatAge(d.backoff_until_unix_ms() - now_unix_ms),
                      " more) after '", d.backoff_reply(), "'\n");
    }
  }
  return FormatTable(rows) + backoffs;
}

void AddDestinationsCommand(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  auto json = std::make_shared<bool>(false);
  CLI::App* c = app.add_subcommand(
      "destinations", "Destination shaping now: leases out and deliveries waiting per domain or MX site");
  c->add_flag("--json", *json, "Print the Admin.Destinations answer as JSON");
  c->callback([&globals, io, &exit_code, json] {
    exit_code = CallAndPrint(globals, &tern::v1::Admin::Stub::Destinations, tern::v1::DestinationsRequest(),
                             "destinations", *json, io, [](const tern::v1::DestinationsResponse& r) {
                               return FormatDestinations(r, absl::ToUnixMillis(absl::Now()));
                             });
  });
}

}  // namespace tern::ternctl
