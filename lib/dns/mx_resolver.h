// File: mx_resolver.h
//
// MxResolver: the deliverer's view of DNS. ResolveMx(domain) answers "where
// does mail for this domain go": the MX hosts sorted by preference (equal
// preferences in random order), each with its IPv4 and IPv6 addresses, or one
// of the DNS outcomes that decide a delivery without any SMTP:
//   kNullMx        - the domain publishes a null MX (RFC 7505): permanent 5.1.10
//   kNoSuchDomain  - NXDOMAIN, or no MX and no address records: permanent 5.1.2
//   kTempFail      - SERVFAIL, REFUSED, timeout, network error: transient 4.4.3
// With no MX records (NODATA) the domain itself is the implicit MX (RFC 5321
// §5.1), reported with `implicit_mx` set.
//
// ResolveHost(name) gives a name's A and AAAA addresses (for `me`, and for
// static routes). ResolveTxt(name) gives its TXT records (MTA-STS discovery).
// ResolveTlsa(name) gives its TLSA records (DANE, RFC 7672).
//
// `secure` on an answer says the resolver vouched for it with the AD bit
// (RFC 4035 §3.2.3, RFC 6840 §5.7): every query behind it came back
// DNSSEC-validated. It is only as trustworthy as the path to the resolver,
// so DANE wants a validating resolver on the same host (see the deliverer
// README). A non-validating resolver never sets AD: everything is insecure.
//
// DNS answers are data, not errors: a failed lookup is an MxAnswer with a
// status and a human-readable `detail` that ends up in the delivery's reply
// text. Callbacks are always invoked later on the resolver's executor, never
// inline from the call.
//
// Implementations: CaresResolver (lib/dns/cares_resolver.h).
//
// Thread-safety: see the implementation; CaresResolver must be used from its
// executor only.
//
// Standards: RFC 5321 §5.1 (locating the target host), RFC 7505 (null MX),
// RFC 2308 (negative caching), RFC 6698 (TLSA), RFC 6840 §5.7 (AD bit).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"

namespace tern::dns {

enum class LookupStatus {
  kOk,
  kNullMx,
  kNoSuchDomain,
  kTempFail,
};

// "ok", "null_mx", "nxdomain", "tempfail" (for logs and metric labels).
inline const char* LookupStatusName(LookupStatus status) {
  switch (status) {
    case LookupStatus::kOk:
      return "ok";
    case LookupStatus::kNullMx:
      return "null_mx";
    case LookupStatus::kNoSuchDomain:
      return "nxdomain";
    case LookupStatus::kTempFail:
      return "tempfail";
  }
  return "unknown";
}

struct HostAnswer {
  // kOk (possibly with no addresses: the name exists but has no A/AAAA),
  // kNoSuchDomain (NXDOMAIN) or kTempFail.
  LookupStatus status = LookupStatus::kOk;
  std::string detail;              // why, when not kOk or when one family failed
  std::vector<std::string> ipv4;   // dotted quads, in answer order
  std::vector<std::string> ipv6;   // RFC 5952 text
  // Both address lookups that answered (records, NODATA or NXDOMAIN) were
  // validated, and at least one answered.
  bool secure = false;
  // The name is an alias: where its CNAME chain ends (lower case, no
  // trailing dot); "" when it is not one. DANE looks up TLSA records there
  // first (RFC 7672 §2.2.2).
  std::string canonical_name;
};

struct TxtAnswer {
  // kOk (possibly with no records: the name exists but has no TXT),
  // kNoSuchDomain (NXDOMAIN) or kTempFail.
  LookupStatus status = LookupStatus::kOk;
  std::string detail;                // why, when not kOk
  // One string per TXT record: its character-strings joined with nothing in
  // between (RFC 7208 §3.3, RFC 8461 §3.1), in answer order.
  std::vector<std::string> records;
};

// One TLSA record (RFC 6698 §2.1): the fields as published; whether a
// usage is usable is the caller's policy (RFC 7672 §3.1.3 drops 0 and 1).
struct TlsaRecord {
  uint8_t usage = 0;          // 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE
  uint8_t selector = 0;       // 0 full certificate, 1 SubjectPublicKeyInfo
  uint8_t matching_type = 0;  // 0 exact, 1 SHA-256, 2 SHA-512
  std::string data;           // binary

  bool operator==(const TlsaRecord&) const = default;
};

struct TlsaAnswer {
  // kOk (possibly with no records: NODATA), kNoSuchDomain (NXDOMAIN) or
  // kTempFail (SERVFAIL, which is also how a validating resolver reports a
  // bogus answer; timeout; a malformed record).
  LookupStatus status = LookupStatus::kOk;
  std::string detail;                // why, when not kOk
  bool secure = false;               // validated (records or the denial)
  std::vector<TlsaRecord> records;   // in answer order
};

struct MxHost {
  std::string name;         // exchange, lower case, no trailing dot
  uint16_t preference = 0;
  // Address lookups of this host; status kTempFail means it could not be
  // resolved now (the host is still listed so the caller can say why).
  HostAnswer addresses;
};

struct MxAnswer {
  LookupStatus status = LookupStatus::kOk;
  std::string detail;
  bool implicit_mx = false;
  // The MX lookup was validated (for an implicit MX: its NODATA was). Each
  // host's addresses say their own.
  bool secure = false;
  // Sorted by preference; hosts of equal preference in uniformly random order.
  std::vector<MxHost> hosts;
};

class MxResolver {
 public:
  using MxCallback = absl::AnyInvocable<void(MxAnswer)>;
  using HostCallback = absl::AnyInvocable<void(HostAnswer)>;
  using TxtCallback = absl::AnyInvocable<void(TxtAnswer)>;
  using TlsaCallback = absl::AnyInvocable<void(TlsaAnswer)>;

  virtual ~MxResolver() = default;

  // Resolves the mail exchangers of `domain` (an A-label, any case) and their
  // addresses. `done` runs once, on the resolver's executor.
  virtual void ResolveMx(std::string domain, MxCallback done) = 0;

  // Resolves `host` to its A and AAAA addresses. `done` runs once, on the
  // resolver's executor.
  virtual void ResolveHost(std::string host, HostCallback done) = 0;

  // Resolves the TXT records of `name` (e.g. "_mta-sts.example.com"). `done`
  // runs once, on the resolver's executor.
  virtual void ResolveTxt(std::string name, TxtCallback done) = 0;

  // Resolves the TLSA records of `name` (e.g. "_25._tcp.mx.example.com").
  // `done` runs once, on the resolver's executor.
  virtual void ResolveTlsa(std::string name, TlsaCallback done) = 0;
};

}  // namespace tern::dns
