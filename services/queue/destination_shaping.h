// File: destination_shaping.h
//
// Per-destination limits the queue enforces when it leases deliveries, so
// they hold exactly however many deliverers run (docs/architecture.md §3
// "Shaping"): how many deliveries of one recipient domain may be out on
// lease at once, and how many may start per second, minute or hour.
//
//   * DestinationShaping: the limits of each domain, from tern.ini
//     `[queue] destination_concurrency_max` and `config/shaping.ini` (one
//     section per domain, `[*]` for every domain without one).
//   * Congestion backoff (DestinationLimits::backoff): a 421 lowers the
//     domain's concurrency for a while, as the remote asked (see IsCongestion).
//   * MX sites (`[site:NAME]` in shaping.ini): domains served by the same
//     MX hosts share one set of limits, so "20 connections to Google" holds
//     for gmail.com and for every customer domain hosted there together.
//     A domain belongs to a site by the site's `domains` list, or when a
//     delivery's report names an MX host (RecipientResult.remote_mta) that
//     matches the site's `mx` list; the queue remembers the latter for a
//     day after the last such report, across restarts (QueueCore's
//     NoteMxSite). Every limit, rate and backoff is then kept
//     under the site's shaping key "site:NAME" instead of the domain (a
//     domain name cannot contain ':', so the keys never collide).
//   * RateBuckets: one GCRA ("virtual scheduling") bucket per domain that
//     has a rate, in memory. A rate of N per period starts at most N
//     deliveries in any period and, within it, at most one second's worth at
//     once (at least one): `100/s` allows bursts of 100, `60/m` one delivery
//     a second, `10/h` one every six minutes. A domain's bucket starts full.
//
// Rates count deliveries leased (attempts started), not messages delivered:
// a retry spends a token like a first attempt. They are per queue; nothing
// is written to disk (after a restart every bucket starts full again).
//
// Thread-safety: DestinationShaping is a plain value (a reload replaces the
// queue's copy as a whole, QueueCore::Reconfigure); RateBuckets is not
// thread-safe (the queue touches it only while it holds the writer role).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/config/ini_file.h"

namespace tern::queue {

// `count` deliveries per `period_ms`; count 0 = no limit.
struct RateLimit {
  uint32_t count = 0;
  int64_t period_ms = 0;

  bool enabled() const { return count > 0; }
  // Milliseconds between two starts at the steady rate.
  double interval_ms() const { return static_cast<double>(period_ms) / count; }
  // How many may start at once after a quiet spell: one second's worth, at
  // least one, never more than `count`.
  uint32_t burst() const;
  // "100/s" (the form it was written in, normalised), or "none".
  std::string ToString() const;
};

// "100/s", "3000/m", "20000/h" (also "/sec", "/min", "/hour"); "" or "0"
// for no limit.
absl::StatusOr<RateLimit> ParseRateLimit(absl::string_view text);

struct DestinationLimits {
  // Most deliveries of the domain out on lease at once; 0 = no limit.
  uint32_t concurrency_max = 0;
  RateLimit rate;
  // Congestion backoff: when a delivery of the domain fails with a 421 or
  // a "too many connections" class reply, the domain's concurrency drops to
  // half of what was out (at least 1) and rises by one per delivery that
  // succeeds; it is lifted `backoff_ms` after the last such reply.
  bool backoff = true;
  int64_t backoff_ms = 60'000;
};

// shaping.ini `[site:NAME]`.
struct MxSite {
  std::string name;  // lower case
  std::string key;   // "site:" + name: what its domains' leases, rates and backoffs count under
  // Host names in A-labels, lower case, no trailing dot. A host matches an
  // entry when it is that name or any name under it ("google.com" matches
  // "aspmx.l.google.com"; "*.google.com" is read as "google.com").
  std::vector<std::string> mx;
  // Its `domains` list, A-labels.
  std::vector<std::string> domains;
};

class DestinationShaping {
 public:
  // No limits anywhere (Haraka's behaviour).
  DestinationShaping() = default;
  // Every domain gets `concurrency_max`, nothing else.
  explicit DestinationShaping(uint32_t concurrency_max) { defaults_.concurrency_max = concurrency_max; }

  // From shaping.ini. `[*]` sets the defaults (its concurrency_max defaults
  // to `default_concurrency`, tern.ini's destination_concurrency_max); a
  // domain's section overrides them key by key. Section names are domains
  // (U-labels are turned into A-labels, case is ignored), or `site:NAME`
  // for an MX site (its limits inherit from `[*]` too, plus `mx` and
  // `domains`). Errors name the file, the section and the key.
  static absl::StatusOr<DestinationShaping> Load(const config::IniFile& ini, uint32_t default_concurrency);

  // The limits of a shaping key: a domain as the queue stores it
  // (lower-case A-labels), or a site's key ("site:NAME").
  const DestinationLimits& For(const std::string& key) const {
    if (domains_.empty()) {
      return defaults_;
    }
    auto it = domains_.find(key);
    return it == domains_.end() ? defaults_ : it->second;
  }
  const DestinationLimits& defaults() const { return defaults_; }
  // Sets one domain's (or site key's) limits (tests and Load).
  void Set(const std::string& key, DestinationLimits limits) { domains_[key] = limits; }
  void SetDefaults(DestinationLimits limits) { defaults_ = limits; }

  bool has_sites() const { return !sites_.empty(); }
  // Whether `domain` has a section of its own: its own limits then apply,
  // whatever site serves it.
  bool HasOwnSection(const std::string& domain) const { return domains_.contains(domain); }
  // The site whose `domains` list names `domain`, or null.
  const MxSite* ListedSite(const std::string& domain) const {
    auto it = listed_.find(domain);
    return it == listed_.end() ? nullptr : &sites_[it->second];
  }
  // The first site (in file order) whose `mx` list matches `host` (any
  // case, a trailing dot ignored), or null.
  const MxSite* SiteForMx(absl::string_view host) const;
  // The site called `name` (lower case, as MxSite::name), or null.
  const MxSite* SiteNamed(absl::string_view name) const;
  // Adds a site with its limits (tests and Load). `mx` entries as in
  // shaping.ini; `domains` in A-labels.
  absl::Status AddSite(const std::string& name, const std::vector<std::string>& mx,
                       const std::vector<std::string>& domains, DestinationLimits limits);
  const std::vector<MxSite>& sites() const { return sites_; }
  // How many domains and sites have limits of their own.
  size_t sections() const { return domains_.size(); }

 private:
  DestinationLimits defaults_;
  // Domains' and sites' limits, by shaping key.
  absl::flat_hash_map<std::string, DestinationLimits> domains_;
  std::vector<MxSite> sites_;
  absl::flat_hash_map<std::string, size_t> listed_;  // domain -> index in sites_
};

// GCRA per domain: a domain may start a delivery at `now` when its
// theoretical arrival time (TAT) is at most now + (burst - 1) * interval;
// starting one moves the TAT one interval on.
// Whether a recipient's temporary failure says the remote is overloaded by
// us: reply 421 (RFC 5321 §3.8: service not available, closing), or a 4xx
// whose text says too many connections, sessions or concurrent deliveries.
// "Too many recipients" and other 4xx replies are not congestion.
bool IsCongestion(uint32_t reply_code, absl::string_view reply_text);

class RateBuckets {
 public:
  // Whether `domain` may start one delivery now.
  bool Allows(const std::string& domain, const RateLimit& rate, int64_t now_ms);
  // Spends one start (call only after Allows said yes).
  void Take(const std::string& domain, const RateLimit& rate, int64_t now_ms);
  // Undoes a Take whose operation was not committed.
  void GiveBack(const std::string& domain, const RateLimit& rate);
  // How many deliveries `domain` may start now (0 when it must wait).
  uint32_t Available(const std::string& domain, const RateLimit& rate, int64_t now_ms);
  // Forgets buckets that are full again (they behave exactly like no
  // bucket), so memory follows the domains sent to recently, not all ever.
  void Prune(int64_t now_ms);
  size_t size() const { return tat_.size(); }

 private:
  // A TAT further ahead than any Take could have put it means the wall
  // clock went back: start that bucket afresh rather than stall the domain.
  double TatOf(const std::string& domain, const RateLimit& rate, int64_t now_ms);

  absl::flat_hash_map<std::string, double> tat_;
};

}  // namespace tern::queue
