// File: dsn_composer.h
//
// The bouncer's edge between the queue's protos and lib/dsn: turns a leased
// BounceJob into a dsn::DeliveryReport (or decides that no DSN is due), and
// builds the Enqueue header that sends the rendered DSN. A DSN that cannot
// travel with REQUIRETLS is sent again redacted (ComposeRedactedReport).
//
// Which recipients a DSN reports on. The queue puts the recipients a bounce
// job is about into it; the composer still checks each one, because a DSN
// must honour the sender's NOTIFY (RFC 3461 §4.1) and must never report a
// recipient under the wrong Action:
//   * NOTIFY=NEVER: never reported.
//   * failed DSN:    reported if NOTIFY has FAILURE or was not given, and the
//                    recipient was not delivered (a permanent failure, or a
//                    transient one whose retries ran out).
//   * delayed DSN:   reported if NOTIFY has DELAY or was not given (RFC 3461
//                    leaves delay DSNs to the MTA then) and the recipient's
//                    last outcome was transient.
//   * delivered DSN: reported only if NOTIFY has SUCCESS and it was delivered.
// If nobody is left, no DSN is sent (kNothingToReport). A job whose original
// sender is the null sender is a double bounce: never answered with a DSN;
// the worker may send a copy to the postmaster (ComposeDoubleBounceCopy),
// marked in the envelope notes so that a failed copy is never copied again.
//
// Then the suppression rules (suppression.h): a sender domain rule drops the
// whole DSN, a status rule drops the recipients it matches (kSuppressed when
// that leaves nobody). RET=FULL attaches the whole original only up to
// ComposeOptions::max_original_bytes; a larger one is attached as headers.
//
// Thread-safety: pure functions.
// Standards: RFC 3461 §4.1 (NOTIFY), §4.3 (RET), §6.2 (null reverse-path
//   for DSNs); RFC 3464 §2.3; RFC 5321 §4.5.5 (no bounce to a bounce);
//   RFC 8689 §5 (REQUIRETLS DSNs, redaction).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "lib/dsn/delivery_status.h"
#include "lib/dsn/dsn_renderer.h"
#include "services/bouncer/suppression.h"
#include "tern/v1/queue.pb.h"

namespace tern::bouncer {

enum class Disposition {
  kSend,             // render `report` and enqueue it
  kDoubleBounce,     // the original sender is <>: log, count, ack, no DSN
  kNothingToReport,  // NOTIFY or outcomes leave no recipient: ack, no DSN
  kSuppressed,       // a suppression rule: ack, no DSN
};

// The envelope note (Envelope.notes) Tern puts on every DSN it enqueues:
// its kind, or kDoubleBounceCopyNote on a postmaster copy.
inline constexpr char kDsnNoteKey[] = "tern.dsn";
inline constexpr char kDoubleBounceCopyNote[] = "double-bounce-copy";
// The note on a redacted DSN (ComposeRedactedReport); such a DSN is queued
// without REQUIRETLS.
inline constexpr char kRedactedNote[] = "redacted";

struct ComposeOptions {
  // RET=FULL attaches the whole original up to this size (bytes), else the
  // header block only. tern.ini [bouncer] max_original_bytes.
  size_t max_original_bytes = 1024 * 1024;
  // Not owned; null = no rules.
  const SuppressionRules* suppression = nullptr;
};

struct ComposedReport {
  Disposition disposition = Disposition::kNothingToReport;
  dsn::DeliveryReport report;  // meaningful for kSend
  // For kNothingToReport / kSuppressed: "notify", "sender_domain", "status".
  std::string why;
  // Recipients a status rule left out (also with kSend: partial).
  std::vector<std::string> suppressed_recipients;
  // RET=FULL was asked but the original exceeded max_original_bytes.
  bool original_trimmed = false;
};

// An unspecified kind is treated as failed: a job the queue made without a
// kind is a bounce, and dropping it would lose the notification.
dsn::ReportKind KindOf(tern::v1::BounceKind kind);

// "failed", "delayed" or "delivered" (metric labels and logs).
absl::string_view KindName(dsn::ReportKind kind);

// Maps `job` to a report as seen by the reporting MTA `me`. The original's
// Message-Id and (RFC 2047-decoded) Subject are read from `job.original`.
// With RET=HDRS only the header block is attached even if the queue sent the
// whole message.
ComposedReport ComposeReport(const tern::v1::BounceJob& job, absl::string_view me,
                             const ComposeOptions& options = {});

// True if `job` is about a postmaster copy of a double bounce that Tern sent
// itself: such a failure is logged and counted but never copied again (no
// loop between two unreachable postmasters).
bool IsDoubleBounceCopy(const tern::v1::BounceJob& job);

// For a double bounce (`job`'s sender is <>): a failed-DSN report to
// `postmaster` about the recipients of the bounce that could not be reached.
// kNothingToReport when the job has no failed recipient. NOTIFY and the
// suppression rules do not apply: the postmaster asked for every copy.
ComposedReport ComposeDoubleBounceCopy(const tern::v1::BounceJob& job, absl::string_view me,
                                       absl::string_view postmaster, const ComposeOptions& options = {});

// RFC 8689 §5: a DSN about a REQUIRETLS message travels with REQUIRETLS,
// unless it is redacted. When `job` says that such a DSN (sender <>,
// REQUIRETLS) failed for its one recipient because TLS or REQUIRETLS could
// not be had on the way (status x.7.4, x.7.5, x.7.10 or x.7.30), the same
// report is read back from the failed DSN (job.original) and returned as
// kSend with original_withheld set: no header field of the original
// message, no Subject, no Message-Id. `*recipient` is where it goes (the
// failed DSN's recipient, the original sender); the caller queues it
// without REQUIRETLS under kRedactedNote. Otherwise kNothingToReport and
// `why` says why not ("not_requiretls", "not_tls_failure", "recipients",
// "unreadable: ..."), and the job stays a double bounce.
ComposedReport ComposeRedactedReport(const tern::v1::BounceJob& job, absl::string_view me, std::string* recipient);

// "dsn:" + bounce_id: the queue stores a second Enqueue with the same key
// only once, so re-processing a job after a crash never sends two DSNs.
std::string IdempotencyKey(const tern::v1::BounceJob& job);

// The first Enqueue request for `dsn`: null reverse-path, `recipient` (the
// original sender, or the postmaster for a double-bounce copy) as the only
// recipient, the idempotency key, the kDsnNoteKey note `note`, BODY=8BITMIME
// when the DSN has 8-bit bytes and SMTPUTF8 when the address needs it.
tern::v1::EnqueueHeader MakeDsnEnqueueHeader(const tern::v1::BounceJob& job, const dsn::RenderedDsn& dsn,
                                             absl::string_view recipient, absl::string_view note);

}  // namespace tern::bouncer
