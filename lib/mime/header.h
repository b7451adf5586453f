// File: header.h
//
// RFC 5322 header blocks, read and written safely.
//
// Reading (for quoting a message we hold, e.g. the original in a DSN):
//   SplitHeaderBlock() separates the header block from the body,
//   ParseHeaderFields() lists the fields, GetHeader() returns one field's
//   value unfolded, DecodeEncodedWords() turns RFC 2047 encoded-words into
//   UTF-8. Parsing is tolerant: CRLF or bare LF line ends, malformed lines are
//   skipped, never an error, because the input is someone else's message.
//
// Writing (for headers Tern generates, which may quote untrusted text):
//   FormatHeaderField() renders "Name: value" CRLF-terminated, folded at
//   whitespace to 78 characters where possible and never beyond 998. Every
//   CR, LF and other control character in the value becomes a space first, so
//   quoted text can never start a new header field or end the header block.
//   With HeaderText::kUnstructured, words holding non-ASCII bytes (and words
//   that would otherwise be mistaken for encoded-words, or are too long to
//   fold) are written as RFC 2047 B-encoded UTF-8 encoded-words.
//
// Types: HeaderField, HeaderBlock, HeaderText.
// Thread-safety: pure functions; safe to call from any thread.
// Standards: RFC 5322 §2.1.1 (line length), §2.2 and §2.2.3 (fields, folding,
//   unfolding), §3.2.2 (FWS); RFC 2047 §2, §4, §5, §6.2 (encoded-words);
//   RFC 3629 (UTF-8).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tern::mime {

// RFC 5322 §2.1.1: the hard limit (excluding CRLF) and the recommended one.
inline constexpr size_t kMaxLineLength = 998;

// Calls `fn(line)` for each line of `text`, without its LF or CRLF (a last
// line without a line end counts too).
template <typename Fn>
void ForEachLine(absl::string_view text, Fn fn) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == absl::string_view::npos ? text.size() : nl;
    absl::string_view line = text.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    fn(line);
    if (nl == absl::string_view::npos) {
      break;
    }
    pos = nl + 1;
  }
}
inline constexpr size_t kFoldLineLength = 78;

// A message split at its first empty line. `headers` includes the line end of
// the last header line but not the empty line; `body` starts after the empty
// line. A message without an empty line is all headers and `body` is empty.
// Both views point into the input.
struct HeaderBlock {
  absl::string_view headers;
  absl::string_view body;
  bool has_separator = false;  // an empty line was found
};

HeaderBlock SplitHeaderBlock(absl::string_view message);

// One field as it appears in the block: `name` without the colon (trailing
// whitespace of the obsolete "Name :" form removed), `raw_value` everything
// after the colon including folding line breaks (line ends normalised to
// CRLF) and without the final line end.
struct HeaderField {
  std::string name;
  std::string raw_value;
};

// The fields of a header block in order. Lines that are neither a field nor a
// continuation of one (no colon, an invalid name, a leading mbox "From "
// line) are skipped.
std::vector<HeaderField> ParseHeaderFields(absl::string_view header_block);

// RFC 5322 §2.2.3 unfolding (remove each CRLF that is followed by WSP; a bare
// CR or LF is removed as well), then leading and trailing whitespace trimmed.
std::string Unfold(absl::string_view raw_value);

// The unfolded value of the first field called `name` (case-insensitive), or
// nullopt if there is none. Accepts a whole message or a header block.
std::optional<std::string> GetHeader(absl::string_view message, absl::string_view name);

// Decodes RFC 2047 encoded-words (B and Q; charsets UTF-8, US-ASCII and
// ISO-8859-1/Latin-1) into UTF-8; whitespace between two adjacent
// encoded-words is dropped (§6.2). Words in other charsets, or malformed, are
// left as they are. The result is valid UTF-8 (see ToValidUtf8).
std::string DecodeEncodedWords(absl::string_view value);

// `text` with every invalid UTF-8 sequence replaced by U+FFFD.
std::string ToValidUtf8(absl::string_view text);

// Appends code point `cp` (at most U+10FFFF) to `out` as UTF-8.
void AppendUtf8(uint32_t cp, std::string& out);

// True if every byte is below 0x80.
bool IsAscii(absl::string_view text);

// `text` on one line: each run of CR, LF and other control characters (TAB
// included, DEL too) becomes one space. Used for every value Tern quotes into
// a header or a one-line template slot.
std::string CollapseToOneLine(absl::string_view text);

enum class HeaderText {
  // Free text (RFC 5322 `unstructured`, also display phrases): non-ASCII
  // words become RFC 2047 encoded-words; the decoded value is unchanged.
  kUnstructured,
  // Structured ASCII fields (e.g. the fields of message/delivery-status,
  // Message-Id, References): non-ASCII bytes become '?'. A word longer than
  // fits on one line is split with a fold, which adds a space when unfolded.
  kAsciiStructured,
};

// "Name: value\r\n", folded as described at the top of this file. `name` must
// be a valid field name (printable ASCII without colon); the caller owns it.
std::string FormatHeaderField(absl::string_view name, absl::string_view value,
                              HeaderText text = HeaderText::kUnstructured);

// RFC 5322 §3.3 date-time, e.g. "Sat, 21 Nov 2026 10:00:00 +0000": the
// Date field and the date fields of DSNs and Received lines. In UTC unless
// `zone` is given.
std::string FormatRfc5322Date(absl::Time t, absl::TimeZone zone = absl::UTCTimeZone());

// True if `name` is a valid RFC 5322 field name: 1*ftext, ftext = %d33-57 /
// %d59-126.
bool IsValidFieldName(absl::string_view name);

}  // namespace tern::mime
