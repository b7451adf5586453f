// File: outcome.h
//
// RecipientOutcome: what one delivery attempt decided for one recipient -
// delivered, transient or permanent - with the reply that decided it and where
// it came from (the RFC 3464 per-recipient fields). A remote 4xx/5xx is an
// outcome (data), never an error. Converted to tern.v1.RecipientResult only at
// the queue edge (delivery_worker.cc).
//
// Thread-safety: plain values.
//
// Standards: RFC 3463 (enhanced status codes; x.0.0 derived from the reply
// class when the server gave none), RFC 3464 §2.3 (Status, Remote-MTA,
// Diagnostic-Code), RFC 5321 §4.2.1 (251/252 are positive: delivered).
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/clock.h"
#include "lib/smtp/reply.h"
#include "lib/smtp/reply_parser.h"

namespace tern::deliverer {

enum class OutcomeClass { kDelivered, kTransient, kPermanent };

// Postfix's words for the log's status= field.
inline const char* StatusWord(OutcomeClass c) {
  switch (c) {
    case OutcomeClass::kDelivered:
      return "sent";
    case OutcomeClass::kTransient:
      return "deferred";
    case OutcomeClass::kPermanent:
      return "bounced";
  }
  return "?";
}

// Metric label.
inline const char* OutcomeLabel(OutcomeClass c) {
  switch (c) {
    case OutcomeClass::kDelivered:
      return "delivered";
    case OutcomeClass::kTransient:
      return "transient";
    case OutcomeClass::kPermanent:
      return "permanent";
  }
  return "?";
}

struct RecipientOutcome {
  OutcomeClass outcome = OutcomeClass::kTransient;
  int reply_code = 0;            // 0 when no reply decided it (DNS, connection)
  std::string enhanced_status;   // always set, "x.y.z"
  std::string reply_text;        // one line
  std::string remote_mta;        // MX host name, empty if none was reached
  std::string remote_ip;
  int64_t at_unix_ms = 0;
  // Delivery facts (tern.v1.RecipientResult) of the session that decided it.
  uint16_t remote_port = 0;
  std::string mode;            // "SMTP" or "LMTP"; empty if no session
  std::string tls;             // "TLSv1.3 TLS_AES_256_GCM_SHA384"; empty = plain text
  bool tls_verified = false;
  std::string auth_mechanism;  // empty = no AUTH
  // The connection was lost after the final dot: the remote may have the
  // message (always with kTransient).
  bool ambiguous = false;
  // What the user's deferred hook decided (0 / false without one): retry
  // after this many seconds instead of the queue's schedule (kTransient), or
  // fail without a DSN (kPermanent).
  uint32_t retry_in_seconds = 0;
  bool suppress_dsn = false;
};

// The outcome a reply decides: 2xx delivered, 4xx transient, 5xx permanent.
// Any other class (a 3xx where none belongs) is a transient protocol problem.
inline RecipientOutcome OutcomeFromReply(const smtp::SmtpReply& reply, const std::string& mx,
                                         const std::string& ip) {
  RecipientOutcome o;
  switch (reply.klass()) {
    case 2:
      o.outcome = OutcomeClass::kDelivered;
      break;
    case 5:
      o.outcome = OutcomeClass::kPermanent;
      break;
    default:
      o.outcome = OutcomeClass::kTransient;
      break;
  }
  o.reply_code = reply.code;
  if (reply.enhanced) {
    o.enhanced_status = reply.enhanced->ToString();
  } else if (reply.klass() == 2 || reply.klass() == 4 || reply.klass() == 5) {
    o.enhanced_status = smtp::DefaultEnhancedStatus(reply.code).ToString();
  } else {
    o.enhanced_status = "4.5.0";  // other or undefined protocol status
  }
  o.reply_text = reply.Text();
  o.remote_mta = mx;
  o.remote_ip = ip;
  o.at_unix_ms = absl::ToUnixMillis(absl::Now());
  return o;
}

// An outcome decided without a (usable) reply: DNS, routing, connections.
inline RecipientOutcome LocalOutcome(OutcomeClass outcome, std::string enhanced, std::string text,
                                     std::string mx = "", std::string ip = "", int reply_code = 0) {
  RecipientOutcome o;
  o.outcome = outcome;
  o.reply_code = reply_code;
  o.enhanced_status = std::move(enhanced);
  o.reply_text = std::move(text);
  o.remote_mta = std::move(mx);
  o.remote_ip = std::move(ip);
  o.at_unix_ms = absl::ToUnixMillis(absl::Now());
  return o;
}

}  // namespace tern::deliverer
