// File: received_header.h
//
// The trace header ingest puts in front of every message it accepts
// (RFC 5321 §4.4 requires it of every SMTP server that accepts a message):
//
//   Received: from client.example ([192.0.2.1])
//   	by mx.example (Tern) with ESMTPS id 3f2a9c01b2d4e6f8.1
//   	(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 verify=NO);
//   	Sat, 21 Nov 2026 07:58:22 +0000
//
// The comment in the third line is there only over TLS, in the words Haraka,
// Sendmail and others write: the protocol version, the cipher and the
// client certificate's verification (OK: verified; FAIL: presented and not
// verified; NO: none presented, or none asked for).
//
// The HELO name is client input: characters that could break the header's
// grammar (";", "(", ")", controls, non-ASCII) are replaced by "_", and long
// headers are folded at spaces so no line exceeds 78 octets where possible.
//
// Thread-safety: stateless functions.
//
// Standards: RFC 5321 §4.4 (trace fields), RFC 5322 §3.3 (date-time) and
// §3.6.7, RFC 3848 and RFC 6531 §3.7.3 (the "with" protocol names).
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tern::ingest {

struct ReceivedInfo {
  std::string helo;        // as the client sent it
  std::string client_ip;   // textual, without brackets
  std::string me;
  std::string comment = "Tern";  // after "by <me>", without the parentheses
  std::string protocol;    // from ReceivedProtocol()
  std::string id;          // the transaction id
  // Over TLS (all three empty otherwise: no TLS comment): e.g. "TLSv1.3",
  // "TLS_AES_256_GCM_SHA384" and "OK", "FAIL" or "NO".
  std::string tls_version;
  std::string tls_cipher;
  std::string tls_verify;
  absl::Time time;
  absl::TimeZone zone;
};

// "SMTP" (HELO), "ESMTP", with "S" for TLS and "A" for AUTH appended
// (RFC 3848); "UTF8SMTP…" when the transaction used SMTPUTF8 (RFC 6531).
std::string ReceivedProtocol(bool esmtp, bool tls, bool authenticated, bool smtputf8);

// The whole header field, folded, ending in CRLF.
std::string BuildReceivedHeader(const ReceivedInfo& info);

// The HELO argument made safe for the "from" clause.
std::string SanitizeHelo(absl::string_view helo);

}  // namespace tern::ingest
