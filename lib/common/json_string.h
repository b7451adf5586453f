// File: json_string.h
//
// AppendJsonString: a string as a JSON string literal (RFC 8259 §7), for
// the few places that write JSON by hand (TLS reports, ternctl stats):
// '"' and '\' escaped, control characters as the short escapes or \u00XX,
// valid UTF-8 passed through. RFC 8259 §8.1 wants UTF-8, and some inputs
// are what remote servers said, so a byte that does not start a valid
// sequence (mime::ToValidUtf8: RFC 3629, no overlong forms, no surrogates)
// becomes U+FFFD instead of making the whole document unparsable.
//
// Thread-safety: a free function on values.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace tern {

void AppendJsonString(std::string& out, absl::string_view s);

}  // namespace tern
