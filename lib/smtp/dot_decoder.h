// File: dot_decoder.h
//
// DotDecoder: the server side of the DATA phase, one line at a time as a line
// reader framed it (net::Connection::ReadLine: a line's text, whether it was
// cut at the length limit, whether it ended in a bare LF). It removes the
// transparency dot (RFC 5321 §4.5.2) and recognises the end of data.
//
// Only "." followed by CRLF at the start of a line ends DATA. A "." line that
// ends in a bare LF stays message text, so "<LF>.<LF>" can never end a
// message early (SMTP smuggling). The pieces of a line that was cut at the
// length limit are continuations: none of them can end DATA or lose a dot.
//
// Pure (no I/O); fuzzed together with MessageAssembler.
//
// Thread-safety: one decoder per DATA phase; not shared.
//
// Standards: RFC 5321 §4.1.1.4 (end of data), §4.5.2 (transparency).
#pragma once

#include "absl/strings/string_view.h"

namespace tern::smtp {

class DotDecoder {
 public:
  struct Result {
    // The line was the end-of-data marker; `text` is empty.
    bool end = false;
    // Message content (the transparency dot removed), a view into the input.
    absl::string_view text;
    // The line is complete: a line end follows `text`.
    bool line_end = false;
  };

  Result Decode(absl::string_view text, bool partial, bool bare_lf);

 private:
  bool continuing_ = false;  // the previous piece was cut at the length limit
};

}  // namespace tern::smtp
