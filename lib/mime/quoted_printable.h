// File: quoted_printable.h
//
// Quoted-printable body encoding, for the text Tern writes itself (the
// human-readable parts of a DSN) when it holds non-ASCII bytes or lines too
// long for SMTP. Encoding keeps such a part 7-bit, so a DSN can be relayed
// to a server without 8BITMIME unchanged.
//
// Thread-safety: pure functions.
// Standards: RFC 2045 §6.7 (quoted-printable rules 1-5).
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace tern::mime {

// Encodes `text`, whose lines end in CRLF (a bare LF is taken as a line end
// too), as quoted-printable: line breaks stay hard line breaks (CRLF),
// bytes outside printable ASCII, "=" and whitespace before a line end become
// "=XX", and lines longer than 76 characters are split with soft line breaks
// ("=" CRLF). The result ends with CRLF when `text` does, and decodes back to
// `text` with CRLF line ends.
std::string QuotedPrintableEncode(absl::string_view text);

// True if a line of `text` (split on LF, CR before it not counted) is longer
// than `max_length` bytes.
bool HasLineLongerThan(absl::string_view text, size_t max_length);

}  // namespace tern::mime
