// File: report_parser.h
//
// Reads a delivery status notification back into a DeliveryReport: the
// message/delivery-status part of a multipart/report (RFC 3464, RFC 6522).
// Tern renders DSNs with dsn_renderer.h; this is the way back, for the one
// place that needs it: a DSN about a REQUIRETLS message that could not be
// delivered with REQUIRETLS is sent again redacted (RFC 8689 §5), with the
// same report but without the original's header fields, and the report is
// what this parser recovers from the failed DSN.
//
// What is recovered: Original-Envelope-Id, Reporting-MTA (without "dns;"),
// Arrival-Date; per recipient Original-Recipient, Final-Recipient (address
// only; utf-8 typed addresses decoded from RFC 6533 \x{HEX}), Action,
// Status, Remote-MTA (name only), Diagnostic-Code (of type smtp: reply code
// and text; of any other type, such as X-Tern or X-Postfix: the text),
// Last-Attempt-Date, Will-Retry-Until. The kind is failed when any
// recipient failed, else delayed when any was delayed, else delivered. The
// original message (the report's third part) is never read: `original`,
// `original_message_id` and `original_subject` stay empty, as does
// `original_sender` (the DSN's recipient, which the caller knows).
//
// Tolerant where RFC 3464 readers must be (unknown fields skipped, field
// names in any case, LF or CRLF, folded values), strict where the result
// would be wrong: no multipart/report, no delivery-status part, no recipient
// group, a group without Final-Recipient or with an unknown Action → error.
//
// Thread-safety: pure function.
// Standards: RFC 3464 §2 (fields), RFC 6522 (multipart/report), RFC 2046
//   §5.1 (boundaries), RFC 6533 §3 (utf-8 addresses), RFC 5322 §3.3 (dates).
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/dsn/delivery_status.h"

namespace tern::dsn {

// The report in `message`, a whole RFC 5322 message (headers and body).
absl::StatusOr<DeliveryReport> ParseDeliveryReport(absl::string_view message);

}  // namespace tern::dsn
