// File: command_parser.h
//
// ParseCommand: one SMTP command line (without its CRLF) to a Command, or to
// the CommandError the server must answer with. Pure and stateless (no I/O,
// STYLE §4.2.4), so it can be fuzzed; the session supplies the little state
// that changes the grammar in a ParseContext.
//
// Errors, by cause:
//   500 5.5.2  unrecognised command, empty line, control characters
//   501 5.5.4  missing or bad argument; bad value of a known parameter;
//              a parameter given twice
//   555 5.5.4  a MAIL/RCPT parameter this server does not know or did not
//              advertise (RFC 5321 §4.1.1.11), or any parameter after HELO
//   553 5.1.7  MAIL FROM path syntax
//   501 5.1.3  RCPT TO path syntax
//   553 5.6.7  a non-ASCII address without SMTPUTF8 (RFC 6531 §3.5)
// Verbs are case-insensitive. "MAIL FROM: <a@b>" (a space after the colon)
// and a path without angle brackets are tolerated, as most MTAs do.
//
// Thread-safety: stateless; safe from any thread.
//
// Standards: RFC 5321 §4.1.1-4.1.2 and §4.5.3.1; RFC 1870; RFC 6152;
// RFC 6531 §3.4; RFC 3461 §4 (xtext, NOTIFY, ORCPT, RET, ENVID).
#pragma once

#include <string>
#include <variant>

#include "absl/strings/string_view.h"
#include "lib/smtp/command.h"

namespace tern::smtp {

struct ParseContext {
  // The client said EHLO (not HELO), so ESMTP parameters are allowed.
  bool esmtp = true;
  // RCPT TO: the transaction's MAIL FROM carried SMTPUTF8, so UTF-8
  // addresses are allowed.
  bool smtputf8 = false;
};

using ParseResult = std::variant<Command, CommandError>;

ParseResult ParseCommand(absl::string_view line, const ParseContext& context);

// Decodes RFC 3461 §4 xtext ("+" followed by two upper-case hex digits
// encodes an octet); false if `text` is not valid xtext.
bool DecodeXtext(absl::string_view text, std::string* out);

}  // namespace tern::smtp
