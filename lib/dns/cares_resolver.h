// File: cares_resolver.h
//
// CaresResolver: MxResolver on c-ares, driven entirely by an Asio executor
// (Envoy's dns_impl design). c-ares tells us through its socket-state callback
// which sockets it wants to read or write; each becomes an
// asio::posix::stream_descriptor on which we async_wait, and one steady_timer
// fires at ares_timeout(). There is no thread per lookup and no thread of its
// own: thousands of concurrent deliveries share one c-ares channel. The
// descriptors are release()d, never closed, because c-ares owns its sockets.
//
// Answers are cached for their TTL (capped by `max_ttl`; negative answers for
// the SOA minimum per RFC 2308, or `negative_ttl` when there is no SOA) in a
// map shared by every delivery of the worker, and identical queries in flight
// are coalesced into one. Temporary failures are never cached.
//
// Thread-safety: not thread-safe. Create it, call it and destroy it on its
// executor's thread (a single-threaded io_context, or a strand). Callbacks
// run on that executor, never inline from ResolveMx/ResolveHost. Callbacks
// still pending when the resolver is destroyed are dropped without running.
//
// Every query is sent with the AD bit set (RFC 6840 §5.7: a validating
// resolver then says whether it validated the answer), and the answer's AD
// bit is kept with it in the cache as `secure`.
//
// Standards: RFC 1035 (message format, TXT character-strings), RFC 2308 (negative caching),
// RFC 5321 §5.1, RFC 7505, RFC 6698 (TLSA), RFC 6840 §5.7 (AD).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "asio/any_io_executor.hpp"
#include "lib/dns/mx_resolver.h"

namespace tern::dns {

class CaresResolver : public MxResolver {
 public:
  struct Options {
    // DNS servers as "ip", "ip:port" or "[ipv6]:port". Default: empty, which
    // means the system configuration (/etc/resolv.conf).
    std::vector<std::string> servers;
    // Timeout of one try. Default: 5 s.
    std::chrono::milliseconds timeout{5000};
    // Tries per server before giving up. Default: 2.
    int tries = 2;
    // Longest time an answer is cached, whatever its TTL. Default: 1 h.
    std::chrono::seconds max_ttl{3600};
    // How long NXDOMAIN/NODATA is cached when the answer carries no SOA.
    // Default: 60 s.
    std::chrono::seconds negative_ttl{60};
    // Most cached answers; when full, expired entries are dropped and, if
    // still full, the cache is cleared. Default: 100000.
    size_t max_cache_entries = 100000;
    // The clock used for TTLs (tests replace it). Default: steady_clock::now.
    std::function<std::chrono::steady_clock::time_point()> now;
    // Seed for the tie shuffle; 0 = random. Default: 0.
    uint64_t shuffle_seed = 0;
  };

  // Creates a resolver on `executor`. Fails if c-ares cannot be initialised
  // or a server address is invalid (InvalidArgument naming it).
  static absl::StatusOr<std::unique_ptr<CaresResolver>> Create(asio::any_io_executor executor, Options options);

  ~CaresResolver() override;

  void ResolveMx(std::string domain, MxCallback done) override;
  void ResolveHost(std::string host, HostCallback done) override;
  void ResolveTxt(std::string name, TxtCallback done) override;
  void ResolveTlsa(std::string name, TlsaCallback done) override;

  // DNS queries actually sent (cache misses that were not coalesced).
  uint64_t queries_sent() const;
  size_t cache_size() const;

  class Impl;

 private:
  explicit CaresResolver(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace tern::dns
