// File: delivery_status.h
//
// What a delivery status notification reports, as plain values: the
// per-message facts and one RecipientStatus per recipient reported on, with
// the RFC 3464 field each member becomes. lib/dsn knows nothing of protos;
// the bouncer converts a queue BounceJob into these (services/bouncer/
// dsn_composer.h).
//
// Types: ReportKind, Action, RecipientStatus, DeliveryReport.
// Helpers: IsValidStatusCode, DeriveStatus, ActionName.
// Thread-safety: plain values and pure functions.
// Standards: RFC 3464 §2.2 (per-message fields), §2.3 (per-recipient fields);
//   RFC 3463 §3.1 (status code syntax); RFC 3461 §4.2 (ORCPT), §4.4 (ENVID).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tern::dsn {

// Why the report is sent; chooses the default Subject and the template.
enum class ReportKind { kFailed, kDelayed, kDelivered };

// RFC 3464 §2.3.3 Action.
enum class Action { kFailed, kDelayed, kDelivered, kRelayed, kExpanded };

// "failed", "delayed", ...
absl::string_view ActionName(Action action);

struct RecipientStatus {
  // Final-Recipient: the forward-path without angle brackets.
  std::string final_recipient;
  // Original-Recipient: the ORCPT as given, "addr-type;address" (decoded
  // from xtext), or a bare address (taken as rfc822), or empty when none.
  std::string original_recipient;
  Action action = Action::kFailed;
  // Status: an RFC 3463 code "c.s.d" as the remote gave it; empty or
  // malformed means "derive it" (see DeriveStatus).
  std::string status;
  // The SMTP reply: code 0 means none was received (e.g. DNS failure), in
  // which case `reply_text` may hold Tern's own explanation (Diagnostic-Code
  // "X-Tern;text" rather than "smtp;code text").
  int reply_code = 0;
  std::string reply_text;
  // Remote-MTA: the MX host name that answered, empty when unknown.
  std::string remote_mta;
  std::optional<absl::Time> last_attempt;
  // Will-Retry-Until (only reported for Action: delayed).
  std::optional<absl::Time> will_retry_until;
};

struct DeliveryReport {
  ReportKind kind = ReportKind::kFailed;
  // Reporting-MTA (dns;<me>) and the host part of the DSN's Message-Id.
  std::string reporting_mta;
  // Original-Envelope-Id: the ENVID (xtext-decoded); empty = not given, and
  // then the field is omitted.
  std::string envid;
  std::optional<absl::Time> arrival;
  // The original reverse-path without angle brackets; the DSN's recipient.
  std::string original_sender;
  std::vector<RecipientStatus> recipients;
  // The original message (CRLF line ends preferred, LF tolerated): whole when
  // `original_is_full`, else at least its header block.
  std::string original;
  bool original_is_full = false;
  // RFC 8689 §5 redaction: the report goes without a third part, neither
  // the message nor its header fields (`original` is then not read).
  bool original_withheld = false;
  // From the original's header, for References/In-Reply-To and {subject}.
  // `original_subject` is decoded (RFC 2047) UTF-8.
  std::string original_message_id;
  std::string original_subject;
};

// True for "c.s.d" with c in {2,4,5}, s and d of 1-3 digits (RFC 3463 §3.1).
bool IsValidStatusCode(absl::string_view code);

// The Status field value: `status` when it is a valid code; otherwise the
// class of the reply code (5xx -> 5.0.0, 4xx -> 4.0.0, 2xx -> 2.0.0); with
// no usable reply, the class the action implies (failed -> 5.0.0, delayed ->
// 4.0.0, otherwise 2.0.0). Never empty: RFC 3464 §2.3.4 makes Status required.
std::string DeriveStatus(const RecipientStatus& recipient);

}  // namespace tern::dsn
