#include "tools/ternctl/destinations_command.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tools/ternctl/admin_call.h"
#include "tools/ternctl/admin_client.h"
#include "tools/ternctl/queue_shards.h"

namespace tern::ternctl {
namespace {

// "0" reads as a limit of nothing; the queue's 0 means no limit.
std::string Limit(uint32_t n) { return n == 0 ? "-" : absl::StrCat(n); }

std::vector<std::string> DestinationRow(const tern::v1::DestinationState& d) {
  std::vector<std::string> row = {d.destination(), absl::StrCat(d.leased()), absl::StrCat(d.waiting()),
                                  Limit(d.concurrency_now()), Limit(d.concurrency_max()),
                                  d.rate_max() == "none" ? "-" : d.rate_max()};
  if (absl::StartsWith(d.destination(), "site:")) {
    row.push_back(absl::StrCat(d.site_domains()));
  }
  return row;
}

std::string Backoff(const tern::v1::DestinationState& d, int64_t now_unix_ms) {
  return absl::StrCat("backed off to ", d.concurrency_now(), " until ", FormatTime(d.backoff_until_unix_ms()), " (",
                      FormatAge(d.backoff_until_unix_ms() - now_unix_ms), " more) after '", d.backoff_reply(), "'\n");
}

constexpr const char* kNoDestinations = "no destination has deliveries out or waiting, a backoff, or an MX site\n";

}  // namespace

std::string FormatDestinations(const tern::v1::DestinationsResponse& resp, int64_t now_unix_ms) {
  if (resp.destinations().empty()) {
    return kNoDestinations;
  }
  std::vector<std::vector<std::string>> rows = {
      {"DESTINATION", "LEASED", "WAITING", "CONCURRENCY", "MAX", "RATE", "DOMAINS"}};
  std::string backoffs;
  for (const auto& d : resp.destinations()) {
    rows.push_back(DestinationRow(d));
    if (d.backoff_until_unix_ms() > now_unix_ms) {
      absl::StrAppend(&backoffs, d.destination(), ": ", Backoff(d, now_unix_ms));
    }
  }
  return FormatTable(rows) + backoffs;
}

std::string FormatDestinationsOnShards(
    const std::vector<std::pair<std::string, tern::v1::DestinationsResponse>>& shards, int64_t now_unix_ms) {
  struct Entry {
    const std::string* queue;
    const tern::v1::DestinationState* d;
  };
  std::vector<Entry> entries;
  for (const auto& [queue, resp] : shards) {
    for (const auto& d : resp.destinations()) {
      entries.push_back({&queue, &d});
    }
  }
  if (entries.empty()) {
    return kNoDestinations;
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return uint64_t{a.d->leased()} + a.d->waiting() > uint64_t{b.d->leased()} + b.d->waiting();
  });
  std::vector<std::vector<std::string>> rows = {
      {"QUEUE", "DESTINATION", "LEASED", "WAITING", "CONCURRENCY", "MAX", "RATE", "DOMAINS"}};
  std::string backoffs;
  for (const Entry& e : entries) {
    std::vector<std::string> row = {*e.queue};
    std::vector<std::string> rest = DestinationRow(*e.d);
    row.insert(row.end(), rest.begin(), rest.end());
    rows.push_back(std::move(row));
    if (e.d->backoff_until_unix_ms() > now_unix_ms) {
      absl::StrAppend(&backoffs, e.d->destination(), " (queue ", *e.queue, "): ", Backoff(*e.d, now_unix_ms));
    }
  }
  return FormatTable(rows) + backoffs;
}

namespace {

int RunDestinations(const GlobalOptions& g, bool json, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  if (shards->size() == 1) {
    return CallAndPrint(OneShard(g, shards->front()), &tern::v1::Admin::Stub::Destinations,
                        tern::v1::DestinationsRequest(), "destinations", json, io,
                        [](const tern::v1::DestinationsResponse& r) {
                          return FormatDestinations(r, absl::ToUnixMillis(absl::Now()));
                        });
  }
  auto answers = AskEveryShard(g, *shards, &tern::v1::Admin::Stub::Destinations, tern::v1::DestinationsRequest());
  const bool failed = ReportFailedShards(answers, "destinations", io);
  const auto ok = OkAnswers(answers);
  if (ok.empty()) {
    return 1;
  }
  std::vector<std::pair<std::string, tern::v1::DestinationsResponse>> named;
  std::vector<std::string> items;
  for (const auto* a : ok) {
    named.emplace_back(a->queue, a->resp);
    for (const auto& d : a->resp.destinations()) {
      items.push_back(JsonWithQueue(ToJson(d), a->queue));
    }
  }
  io.out << (json ? JsonFillArray(ToJson(tern::v1::DestinationsResponse()), "destinations", items) + "\n"
                  : FormatDestinationsOnShards(named, absl::ToUnixMillis(absl::Now())));
  return failed ? 1 : 0;
}

}  // namespace

void AddDestinationsCommand(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  auto json = std::make_shared<bool>(false);
  CLI::App* c = app.add_subcommand(
      "destinations", "Destination shaping now: leases out and deliveries waiting per domain or MX site");
  c->add_flag("--json", *json, "Print the Admin.Destinations answer as JSON");
  c->callback([&globals, io, &exit_code, json] { exit_code = RunDestinations(globals, *json, io); });
}

}  // namespace tern::ternctl
