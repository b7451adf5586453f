// File: tls_reporting.h
//
// The deliverer's half of SMTP TLS Reporting (RFC 8460): which result type
// a TLS failure is, what policy a session ran under, and the counts of
// sessions gathered between two Queue.RecordTlsResults calls. The queue
// keeps the counts per UTC day and sends each domain its daily report
// (services/queue, lib/tlsrpt).
//
// Only domains whose "_smtp._tls" TXT record asks for reports are counted,
// only sessions to the MX hosts DNS gave for them (not static or hook
// routes, which the domain did not publish), and never a message carrying
// "TLS-Required: No": TLS reports themselves are sent so (RFC 8460 §5.3),
// and the sessions that carry them must not be counted. A reused session
// was counted when it was opened.
//
// Thread-safety: TlsRptCounter is not thread-safe; the worker uses it on
// its io_context only.
//
// Standards: RFC 8460 §4.3 (result types), §4.4 (policy types and strings).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/string_view.h"
#include "lib/net/connection.h"
#include "tern/v1/tlsrpt.pb.h"

namespace tern::deliverer {

struct StsPolicy;

// The RFC 8460 result type of a failed TLS handshake, from OpenSSL's verify
// error (net::Connection::tls_verify_error, 0 = not a certificate problem):
// expired, host mismatch, untrusted chain, else "validation-failure" (also
// every DANE mismatch: the TLSA records, not a CA, said no).
const char* TlsFailureResultType(long verify_error, bool dane);

// OpenSSL's words for a verify error, e.g. "certificate has expired".
std::string VerifyErrorText(long verify_error);

// The RFC 8460 result type of an MTA-STS lookup that found no policy to
// apply for a reason (StsLookup::problem): a policy host whose certificate
// did not verify, a policy that does not parse, else a fetch error (the
// TXT lookup failed, the host did not answer, or answered badly).
const char* StsProblemResultType(absl::string_view problem);

// The policy a session ran under, as a report names it (§4.4).
struct TlsRptPolicy {
  std::string type;                        // "sts", "tlsa" or "no-policy-found"
  std::vector<std::string> policy_string;  // the policy's directives or the TLSA records
  std::vector<std::string> mx_host;        // MTA-STS mx patterns
};

TlsRptPolicy NoPolicyForReport();
// The MTA-STS policy's directives, one per string, in the order of §3.2.
TlsRptPolicy StsPolicyForReport(const StsPolicy& policy);
// "3 1 1 <hex>" per record, as in a zone file.
TlsRptPolicy DanePolicyForReport(const std::vector<net::DaneRecord>& records);

// One session's outcome, ready to count: `result_type` "" for success.
tern::v1::TlsRptCount MakeTlsRptCount(int64_t day, absl::string_view domain, const TlsRptPolicy& policy,
                                      absl::string_view result_type, absl::string_view mx_host,
                                      absl::string_view ip, absl::string_view reason,
                                      const std::vector<std::string>& rua);

// Sessions counted since the last Take(), identical counts merged. Holds at
// most `max_entries` distinct counts: beyond that Add refuses (and the
// caller counts the loss), so a queue that stays away for a long time
// cannot make the deliverer grow without bound.
class TlsRptCounter {
 public:
  explicit TlsRptCounter(size_t max_entries) : max_entries_(max_entries) {}

  // False when the count was dropped for lack of room.
  bool Add(tern::v1::TlsRptCount count);
  // Everything counted so far; the counter is empty afterwards.
  std::vector<tern::v1::TlsRptCount> Take();
  // Counts a RecordTlsResults call did not store go back, merged with what
  // came meanwhile (within the same limit).
  void PutBack(std::vector<tern::v1::TlsRptCount> counts);

  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }

 private:
  static std::string Identity(const tern::v1::TlsRptCount& count);
  // Adds `count` to an equal one (taking its rua only if `newer`) or as a new entry.
  bool Merge(tern::v1::TlsRptCount count, bool newer);

  size_t max_entries_;
  std::unordered_map<std::string, tern::v1::TlsRptCount> entries_;
};

}  // namespace tern::deliverer
