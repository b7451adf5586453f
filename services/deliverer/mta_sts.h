// File: mta_sts.h
//
// MTA-STS (RFC 8461): a recipient domain publishes, over DNS and HTTPS, that
// its MX hosts speak TLS with certificates a sender can verify, so a network
// attacker can no longer strip STARTTLS or send mail to a host of its own.
//
// Discovery, per recipient domain D (MtaSts::Find):
//   1. TXT "_mta-sts.D": exactly one record starting "v=STSv1" with an `id`
//      (ParseStsRecord); none, several or a malformed one mean "no record".
//   2. A cached policy whose id equals the record's is used as it is, until
//      the second half of its max_age; then it is fetched again (a failed
//      refresh keeps it), so a policy in use does not lapse (§5.1).
//   3. Otherwise the policy is fetched from
//      https://mta-sts.D/.well-known/mta-sts.txt (FetchStsPolicyText): the
//      certificate must verify for mta-sts.D, only a 200 with text/plain
//      counts, redirects are not followed, at most 64 KiB, all within
//      `timeout`. It is parsed (ParseStsPolicy) and cached for its max_age.
//   4. No record, a failed TXT lookup or a failed fetch keep a cached policy
//      that has not expired (§5.1: an attacker who blocks DNS or HTTPS must
//      not switch the protection off); without one the domain has no policy.
// A failed fetch is not tried again for the same id for kFetchRetry, so a
// broken policy host costs one fetch per few minutes, not one per message.
// Behind the in-memory cache there may be a store (Options::load/save; the
// worker uses the queue's GetStsPolicy/PutStsPolicy): every fetched policy
// is saved there until it expires, and a domain not in memory is looked up
// there first (again after kStoreRecheck), so a restarted deliverer, or
// another one, keeps applying a policy whose DNS record or HTTPS host an
// attacker now blocks (§5.1), and does not fetch it again while its id is
// unchanged. There may be several stores (the worker has one per queue
// shard, ARCHITECTURE.md §8): each Find names the one its delivery belongs
// to, which is the one asked and saved to; lookups that join a discovery in
// progress share its store. A domain is looked up again in each store after
// kStoreRecheck, so a policy kept in one shard's store is found by the first
// delivery from that shard even when another shard's store had none.
// Concurrent lookups of one domain share one discovery.
//
// What the deliverer does with a policy (delivery_worker.cc):
//   enforce  only MX hosts matching a policy `mx` pattern are tried, each with
//            STARTTLS and a certificate verified for the MX host name (a
//            failure there is transient: next MX, then deferral); with no
//            matching MX the delivery is deferred.
//   testing  delivery as without a policy; an MX the policy would refuse is
//            logged (mta_sts_testing_mismatch).
//   none     nothing changes.
// Static routes and get_mx hook routes are not MX delivery: no MTA-STS.
//
// Not done: TLS-RPT reports (RFC 8460), and a refresh of policies no mail
// asks for (a policy is refreshed when a delivery looks it up).
//
// Thread-safety: MtaSts is not thread-safe; call it on its executor (the
// worker's io_context), where its callbacks run too, never inline.
//
// Standards: RFC 8461 (MTA-STS), RFC 6125 (certificate names, via
// net::Connection), RFC 9110 / 9112 (the HTTP/1.1 GET).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "asio/any_io_executor.hpp"
#include "lib/dns/mx_resolver.h"
#include "services/deliverer/sts_policy.h"

namespace asio::ssl {
class context;
}

namespace tern::deliverer {

// What Find() decided for a domain.
struct StsLookup {
  std::optional<StsPolicy> policy;  // nullopt: deliver as without MTA-STS
  std::string id;                   // the policy's id, when there is one
  // "fetched", "cached", "stored" (from the store) or "none", for logs.
  std::string source = "none";
  // Why a policy could not be fetched or renewed ("" when nothing failed);
  // a cached policy may still be in use.
  std::string problem;
};

class MtaSts {
 public:
  // Fetches the policy text of `domain`; `done` runs once on the executor.
  using Fetcher =
      std::function<void(const std::string& domain, absl::AnyInvocable<void(absl::StatusOr<std::string>)> done)>;

  // A policy as the store keeps it: the text as served, so that what a
  // store returns is parsed with today's rules like a fetched one.
  struct StoredPolicy {
    std::string id;
    std::string text;
    int64_t expires_unix_ms = 0;  // wall clock: it outlives processes
  };
  // Looks `domain` up in store number `store` (Find's); `done` (nullopt:
  // none, or the store could not answer) runs once, on the executor.
  using StoreLoad = std::function<void(size_t store, const std::string& domain,
                                       absl::AnyInvocable<void(std::optional<StoredPolicy>)> done)>;
  // Keeps a freshly fetched policy in store number `store` (fire and forget).
  using StoreSave = std::function<void(size_t store, const std::string& domain, const StoredPolicy& policy)>;

  struct Options {
    // Port of https://mta-sts.<domain>/ (tests use another). Default: 443.
    uint16_t port = 443;
    // Whole fetch (connect, TLS, request, response). Default: 10 s.
    std::chrono::milliseconds timeout{10000};
    // Most cached policies; when full the cache is cleared. Default: 100000.
    size_t max_entries = 100000;
    // Replaces the HTTPS fetch (tests). Default: FetchStsPolicyText.
    Fetcher fetch;
    // The clock for max_age (tests). Default: steady_clock::now.
    std::function<std::chrono::steady_clock::time_point()> now;
    // The store behind the cache; unset: none. Default: none.
    StoreLoad load;
    StoreSave save;
    // Wall-clock milliseconds for stored expiry times (tests). Default: now.
    std::function<int64_t()> wall_ms;
  };

  // How long a failed fetch of one policy id is not tried again.
  static constexpr std::chrono::minutes kFetchRetry{5};
  // How long a domain the store did not have is not asked for again.
  static constexpr std::chrono::minutes kStoreRecheck{10};

  // `resolver` and `tls` (system CAs plus tls.ini's `ca`) must outlive this.
  MtaSts(asio::any_io_executor executor, dns::MxResolver& resolver, std::shared_ptr<asio::ssl::context> tls,
         Options options);
  ~MtaSts();
  MtaSts(const MtaSts&) = delete;
  MtaSts& operator=(const MtaSts&) = delete;

  // The policy to apply to mail for `domain` (an A-label); `done` runs on
  // the executor, never inline. `store` says which store (Options::load
  // and save) a discovery this call starts uses: the worker's queue shard.
  void Find(std::string domain, absl::AnyInvocable<void(StsLookup)> done, size_t store = 0);

  size_t cache_size() const;
  uint64_t fetches() const;
  uint64_t store_loads() const;

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// GETs https://mta-sts.<domain>:<port>/.well-known/mta-sts.txt with a
// verified certificate for mta-sts.<domain> (SendHttps, https_client.h);
// `done` gets the body, or why not. Runs on `executor`; `resolver` and
// `tls` must outlive the call.
void FetchStsPolicyText(asio::any_io_executor executor, dns::MxResolver& resolver,
                        std::shared_ptr<asio::ssl::context> tls, std::string domain, uint16_t port,
                        std::chrono::milliseconds timeout, absl::AnyInvocable<void(absl::StatusOr<std::string>)> done);

}  // namespace tern::deliverer
