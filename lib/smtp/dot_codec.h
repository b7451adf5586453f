// File: dot_codec.h
//
// DotCodec prepares a message body for the SMTP DATA phase: every line that
// starts with '.' gets another '.', every line ends in CRLF, and the
// terminating ".\r\n" is appended. Bare LF and bare CR are both turned into
// CRLF: a receiver that treats either as a line end could otherwise see an
// early end of data ("\n.\r\n", the SMTP smuggling pattern), so after encoding
// the only "<CRLF>.<CRLF>" is the terminator we add.
//
// One pass over the body, appending into one pre-sized string: no per-line
// allocation, so multi-megabyte bodies cost one copy.
//
// Thread-safety: stateless functions.
//
// Standards: RFC 5321 §4.5.2 (transparency), §4.1.1.4 (end of data),
// §2.3.8 (lines end in CRLF only); RFC 3030 §2 (BDAT data is sent as is).
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace tern::smtp {

class DotCodec {
 public:
  // Appends the encoded `body` plus ".\r\n" to *out. A body that does not end
  // in a line end gets a CRLF first; an empty body becomes just ".\r\n".
  static void AppendEncoded(absl::string_view body, std::string* out);

  // The same, as a new string.
  static std::string Encode(absl::string_view body);

  // For BDAT (RFC 3030), where the length is counted and nothing is
  // stuffed: true when `body` can go as it is, i.e. every line ends in CRLF
  // (no bare CR or LF, and a final CRLF unless the body is empty). A scan,
  // no copy: the common case sends the stored bytes themselves.
  static bool IsCrlfCanonical(absl::string_view body);

  // Appends `body` with every line end made CRLF (bare CR and bare LF
  // included) and a final CRLF if it lacks one; no dot is stuffed and no
  // terminator added. For BDAT when IsCrlfCanonical() is false.
  static void AppendCrlfCanonical(absl::string_view body, std::string* out);
};

}  // namespace tern::smtp
