// File: tlsrpt.h
//
// SMTP TLS Reporting (RFC 8460) from plain structs, no protos, no I/O:
//
//  * ParseRecord reads the TXT records at "_smtp._tls.<domain>" (§3).
//  * Aggregate groups per-session counts (what the deliverers saw, kept by
//    the queue) into the report's "policies" (§4.4).
//  * RenderJson writes the report (§4) as JSON; Gzip compresses it.
//  * ComposeMail builds the report e-mail (§5.3): multipart/report;
//    report-type="tlsrpt", a short text part and the gzipped JSON as an
//    application/tlsrpt+gzip attachment named per §5.1, with the
//    TLS-Report-Domain and TLS-Report-Submitter header fields.
//
// Thread-safety: free functions on values; safe from any thread.
//
// Standards: RFC 8460 (TLS-RPT), RFC 6522 (multipart/report), RFC 1952
// (gzip), RFC 8259 (JSON), RFC 3339 (date-time), RFC 5322, RFC 2045.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tern::tlsrpt {

// RFC 8460 §4.3 result types, and "" for a successful session.
inline constexpr char kStartTlsNotSupported[] = "starttls-not-supported";
inline constexpr char kCertificateHostMismatch[] = "certificate-host-mismatch";
inline constexpr char kCertificateExpired[] = "certificate-expired";
inline constexpr char kCertificateNotTrusted[] = "certificate-not-trusted";
inline constexpr char kValidationFailure[] = "validation-failure";
inline constexpr char kTlsaInvalid[] = "tlsa-invalid";
inline constexpr char kDnssecInvalid[] = "dnssec-invalid";
inline constexpr char kDaneRequired[] = "dane-required";
inline constexpr char kStsPolicyFetchError[] = "sts-policy-fetch-error";
inline constexpr char kStsPolicyInvalid[] = "sts-policy-invalid";
inline constexpr char kStsWebpkiInvalid[] = "sts-webpki-invalid";

// §4.4 policy types.
inline constexpr char kPolicySts[] = "sts";
inline constexpr char kPolicyTlsa[] = "tlsa";
inline constexpr char kPolicyNone[] = "no-policy-found";

// A domain's TLSRPT record (§3).
struct Record {
  // The rua URIs in record order, each "mailto:addr" or "https://...".
  // Never empty.
  std::vector<std::string> rua;
};

// `txt` holds one string per TXT record at _smtp._tls.<domain> (a record's
// character-strings already joined). Records not starting with
// "v=TLSRPTv1" are ignored. NotFoundError when none is left;
// InvalidArgumentError (saying why) when more than one is, or the one left
// is malformed: no rua, or a rua with no mailto: or https: URI. URIs of
// other schemes are skipped, not fatal; mailto: addresses are
// percent-decoded.
//
// The §3 ABNF is followed as written: "v=TLSRPTv1" must open the record
// and be followed by ";", whitespace or the end ("v=TLSRPTv10" is another
// version, ignored); names are case-sensitive ("RUA=" is an unknown field);
// whitespace is allowed only around ";" and ","; an empty field (";;"),
// whitespace after the last field without a ";", an extension outside the
// ext-name/ext-value grammar, or a URI with a character RFC 3986 wants
// percent-encoded (also "," and "!", which §3 wants encoded) make the
// record malformed. A rua field given twice adds both lists.
// A mailto: URI loses its "?..." header fields; an encoded "," in it
// separates addresses (RFC 6068), each its own "mailto:addr" entry; an
// address that is not an ASCII addr-spec once decoded (control bytes,
// no "@", UTF-8) is skipped like an unsupported scheme, so every mailto:
// entry is one ComposeMail accepts as `to`. An https: URI is kept as
// written, its scheme in lower case.
absl::StatusOr<Record> ParseRecord(const std::vector<std::string>& txt);

// An https: rua, split for the POST that delivers a report to it (§3, §5.3).
struct HttpsRua {
  std::string host;    // lower case: a DNS name, an IPv4 address, or an IPv6 address without brackets
  uint16_t port = 443;
  std::string target;  // the request target: the path (at least "/") and "?query" when given
  // "https://host" or "https://host:port" (IPv6 in brackets): the queue's
  // routing key for the report's delivery, never a mail domain (it has ":").
  std::string Origin() const;
};

// Splits an https: URI as ParseRecord keeps it. InvalidArgument (saying
// why) for another scheme, user information ("user@host"), an empty or
// malformed host (not LDH labels of 1-63 bytes, at most 253 in all; an IPv6
// literal that does not parse), a port that is not 1-65535, or bytes that
// cannot go into a request line (controls, spaces, non-ASCII). A fragment
// ("#...") is dropped: it is never sent to the server (RFC 9110 §4.2.4).
absl::StatusOr<HttpsRua> ParseHttpsRua(absl::string_view uri);

// The UTC day of a Unix time in milliseconds, as days since 1970-01-01
// (rounded down, so before 1970 too): the day a session is counted for and
// reported in.
int64_t UtcDay(int64_t unix_ms);

// a + b, or the largest count when that would overflow: session counts add
// up across deliverers and days and must never wrap.
uint64_t AddCounts(uint64_t a, uint64_t b);

// What was counted for one policy domain: sessions of one kind (see
// tern.v1.TlsRptCount, from which the queue fills it).
struct SessionCount {
  std::string policy_type;                 // kPolicy*
  std::vector<std::string> policy_string;  // STS policy lines or TLSA records
  std::vector<std::string> mx_host;        // STS mx patterns
  std::string result_type;                 // "" = successful
  std::string receiving_mx_hostname;
  std::string receiving_ip;
  std::string failure_reason_code;
  uint64_t count = 0;
};

struct FailureDetail {
  std::string result_type;
  std::string receiving_mx_hostname;       // "" = not given
  std::string receiving_ip;                // "" = not given
  std::string failure_reason_code;         // "" = not given
  uint64_t failed_session_count = 0;
};

// One entry of the report's "policies" array (§4.4).
struct PolicyResult {
  std::string policy_type;
  std::vector<std::string> policy_string;
  std::string policy_domain;
  std::vector<std::string> mx_host;
  uint64_t total_successful_session_count = 0;
  uint64_t total_failure_session_count = 0;
  std::vector<FailureDetail> failure_details;
};

// Groups `counts` of `policy_domain` by (policy_type, policy_string,
// mx_host); within a group, successes add up and failures add up per
// (result_type, receiving_mx_hostname, receiving_ip, failure_reason_code).
// The order is deterministic (sorted), so the same counts give the same
// report: policies by (policy_type, policy_string, mx_host), details by
// (result_type, receiving_mx_hostname, receiving_ip, failure_reason_code);
// the lines inside policy_string and mx_host keep their order. Counts of 0
// are ignored (a policy only they mention is left out); sums saturate.
std::vector<PolicyResult> Aggregate(absl::string_view policy_domain, const std::vector<SessionCount>& counts);

struct Report {
  std::string organization_name;
  absl::Time start;                        // date-range start-datetime
  absl::Time end;                          // date-range end-datetime
  std::string contact_info;                // e-mail address or URI
  std::string report_id;
  std::vector<PolicyResult> policies;
};

// The §4 JSON document (UTF-8, no trailing newline). Date-times are RFC 3339
// in UTC ("2026-11-22T00:00:00Z"); empty optional fields are left out.
// Compact (no whitespace between tokens), members in the order of §4.4.
// The required members are always written, even when empty. Strings are
// escaped per RFC 8259 §7; bytes that are not valid UTF-8 become U+FFFD.
// Times are written in whole seconds and clamped to years 0000-9999.
std::string RenderJson(const Report& report);

// gzip (RFC 1952) of `data`; Internal only if zlib fails. The gzip header
// carries no time stamp, so equal input gives equal output.
absl::StatusOr<std::string> Gzip(absl::string_view data);

// §5.1: sender "!" policy-domain "!" begin "!" end [ "!" unique-id ] ".json.gz",
// timestamps in seconds since the epoch; unique_id must be alphanumeric
// ("" = none). Characters of unique_id that are not alphanumeric are
// dropped (all of them: no "!" part); times before the epoch are written
// as 0. The domains are written as given: callers pass A-labels, and
// ComposeMail checks its own.
std::string ReportFilename(absl::string_view sender_domain, absl::string_view policy_domain, absl::Time begin,
                           absl::Time end, absl::string_view unique_id);

struct MailOptions {
  std::string from;            // addr-spec, e.g. "tlsrpt@mail.example.com"
  std::string to;              // addr-spec from the mailto: rua
  std::string submitter;       // the sending domain (§5.3 TLS-Report-Submitter), e.g. "mail.example.com"
  std::string policy_domain;   // §5.3 TLS-Report-Domain
  std::string message_id;      // without angle brackets, e.g. "abc@mail.example.com"
  absl::Time date;             // Date: header field
};

// The whole RFC 5322 message with CRLF line ends, ready to queue; the
// attachment is the gzipped RenderJson(report), base64 with lines of 76.
// InvalidArgument for an address or domain with CR, LF or other bytes that
// do not belong in a header field.
//
// Header fields: From, To, Date (UTC), Message-ID, Subject ("Report
// Domain: <policy_domain> Submitter: <submitter> Report-ID: <report_id>",
// §5.3, folded at its spaces), TLS-Report-Domain, TLS-Report-Submitter,
// "TLS-Required: No" (RFC 8689 §5: a report must get through despite the
// TLS failures it may describe, §3 and §5.3; Tern's deliverer then ignores
// MTA-STS and DANE for it), "Auto-Submitted: auto-generated" (RFC 3834),
// MIME-Version and Content-Type: multipart/report; report-type="tlsrpt".
// Parts: a short us-ascii text/plain, then application/tlsrpt+gzip with
// Content-Disposition: attachment; filename=ReportFilename(submitter,
// policy_domain, report.start, report.end, "").
// Checked: from and to are ASCII addr-specs (dot-atom or quoted local
// part, host name or address literal; no display name, no angle
// brackets); submitter and policy_domain are LDH host names;
// message_id is printable ASCII with an "@" and without spaces or angle
// brackets; report.report_id (it appears in the Subject as a msg-id) is
// printable ASCII without spaces or angle brackets. Ids are at most 900
// bytes. The output depends only on the arguments.
absl::StatusOr<std::string> ComposeMail(const Report& report, const MailOptions& options);

}  // namespace tern::tlsrpt
