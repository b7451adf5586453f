// libFuzzer target: lib/mime on arbitrary text. The readers (header.h
// SplitHeaderBlock, ParseHeaderFields, GetHeader, Unfold,
// DecodeEncodedWords) see messages clients submit and DSNs remote servers
// send back; the writers (FormatHeaderField, QuotedPrintableEncode) quote
// untrusted text (a remote reply, a subject) into what Tern generates. The
// whole input is the message and the value; its first byte picks the field
// name. Checks, each a promise of header.h or quoted_printable.h:
//   * never crashes, memory stays bounded (ASan, UBSan, -rss_limit_mb);
//   * SplitHeaderBlock returns views that put the input back together;
//   * every parsed field has a valid name, a raw value whose line ends are
//     CRLF each followed by whitespace, and GetHeader returns its unfolded
//     value; Unfold leaves no CR, LF, nor outer whitespace;
//   * DecodeEncodedWords and ToValidUtf8 return valid UTF-8;
//   * CollapseToOneLine leaves no control characters;
//   * FormatHeaderField, both kinds: "Name: value" CRLF, ASCII only, no line
//     over 998 octets, no control characters, every fold followed by
//     whitespace, so it reads back as exactly one field of that name and
//     never ends the header block; unfolded (and for kUnstructured decoded)
//     it gives the value's words, single-spaced, as header.h describes;
//   * QuotedPrintableEncode gives 7-bit lines of at most 76 characters
//     without trailing whitespace, which decode back to the input with CRLF
//     line ends.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "lib/common/fuzz_check.h"
#include "lib/mime/header.h"
#include "lib/mime/quoted_printable.h"

namespace {

namespace mime = tern::mime;

using tern::fuzz::Check;
using tern::fuzz::HasControl;

bool IsWsp(char c) { return c == ' ' || c == '\t'; }

bool IsValidUtf8(absl::string_view text) { return mime::ToValidUtf8(text) == text; }

void CheckReaders(absl::string_view message) {
  const mime::HeaderBlock block = mime::SplitHeaderBlock(message);
  Check(absl::StartsWith(message, block.headers) && absl::EndsWith(message, block.body));
  if (block.has_separator) {
    const size_t separator = message.size() - block.headers.size() - block.body.size();
    const absl::string_view empty_line = message.substr(block.headers.size(), separator);
    Check(empty_line == "\n" || empty_line == "\r\n");
  } else {
    Check(block.headers.size() == message.size() && block.body.empty());
  }
  const std::vector<mime::HeaderField> fields = mime::ParseHeaderFields(block.headers);
  for (const mime::HeaderField& field : fields) {
    Check(mime::IsValidFieldName(field.name));
    for (size_t i = 0; i < field.raw_value.size(); ++i) {
      if (field.raw_value[i] == '\n') {
        Check(i > 0 && field.raw_value[i - 1] == '\r' && i + 1 < field.raw_value.size() &&
              IsWsp(field.raw_value[i + 1]));
      }
    }
    const std::string value = mime::Unfold(field.raw_value);
    Check(value.find_first_of("\r\n") == std::string::npos);
    Check(value.empty() || (!IsWsp(value.front()) && !IsWsp(value.back())));
    Check(IsValidUtf8(mime::DecodeEncodedWords(value)));
  }
  if (!fields.empty()) {
    // The first field of a name is the one GetHeader finds.
    const std::optional<std::string> first = mime::GetHeader(message, fields[0].name);
    Check(first.has_value() && *first == mime::Unfold(fields[0].raw_value));
  }
  Check(IsValidUtf8(mime::DecodeEncodedWords(message)));
  const std::string valid = mime::ToValidUtf8(message);
  Check(IsValidUtf8(valid) && (!mime::IsAscii(message) || valid == message));
  Check(!HasControl(mime::CollapseToOneLine(message)));
}

// The words FormatHeaderField writes for `value`, as header.h describes
// them: control runs become spaces (then, for kUnstructured, invalid UTF-8
// becomes U+FFFD), words are separated by spaces.
std::vector<std::string> Words(absl::string_view value, mime::HeaderText kind) {
  std::string line = mime::CollapseToOneLine(value);
  if (kind == mime::HeaderText::kUnstructured) {
    line = mime::ToValidUtf8(line);
  }
  return absl::StrSplit(line, ' ', absl::SkipEmpty());
}

void CheckFormat(absl::string_view name, absl::string_view value, mime::HeaderText kind) {
  const std::string field = mime::FormatHeaderField(name, value, kind);
  Check(absl::StartsWith(field, absl::StrCat(name, ":")) && absl::EndsWith(field, "\r\n"));
  Check(mime::IsAscii(field));
  size_t line_start = 0;
  for (size_t i = 0; i < field.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(field[i]);
    if (c == '\r') {
      Check(i + 1 < field.size() && field[i + 1] == '\n');
      Check(i - line_start <= mime::kMaxLineLength);
      // A line break inside the field is a fold: whitespace follows.
      Check(i + 2 == field.size() || IsWsp(field[i + 2]));
      line_start = i + 2;
      ++i;
      continue;
    }
    Check(c >= 0x20 && c != 0x7f);
  }
  const std::vector<mime::HeaderField> fields = mime::ParseHeaderFields(field);
  Check(fields.size() == 1 && fields[0].name == name);
  Check(mime::SplitHeaderBlock(absl::StrCat(field, "\r\nbody")).headers == field);
  const std::string unfolded = mime::Unfold(fields[0].raw_value);
  std::vector<std::string> words = Words(value, kind);
  if (kind == mime::HeaderText::kUnstructured) {
    // "the decoded value is unchanged" (up to the whitespace between words).
    Check(mime::DecodeEncodedWords(unfolded) == absl::StrJoin(words, " "));
    return;
  }
  // Non-ASCII octets become '?'; a word too long for a line is split with a
  // fold, which unfolds to a space.
  std::vector<std::string> expected;
  for (std::string& word : words) {
    for (char& c : word) {
      if (static_cast<unsigned char>(c) >= 0x80) {
        c = '?';
      }
    }
    for (size_t at = 0; at < word.size(); at += mime::kMaxLineLength - 1) {
      expected.push_back(word.substr(at, mime::kMaxLineLength - 1));
    }
  }
  Check(unfolded == absl::StrJoin(expected, " "));
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;  // the encoder writes upper-case hex only
}

// Decodes what QuotedPrintableEncode wrote, checking RFC 2045 §6.7 on the
// way (line length, 7-bit, no trailing whitespace, well-formed "=XX").
std::string DecodeQuotedPrintable(absl::string_view encoded) {
  std::string out;
  const std::vector<absl::string_view> lines = absl::StrSplit(encoded, "\r\n");
  for (size_t n = 0; n < lines.size(); ++n) {
    const absl::string_view line = lines[n];
    const bool last = n + 1 == lines.size();
    Check(line.size() <= 76);
    Check(line.empty() || !IsWsp(line.back()));
    bool soft = false;
    for (size_t i = 0; i < line.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(line[i]);
      Check((c >= 33 && c <= 126) || c == ' ' || c == '\t');
      if (c != '=') {
        out.push_back(static_cast<char>(c));
        continue;
      }
      if (i + 1 == line.size()) {
        soft = true;
        break;
      }
      Check(i + 2 < line.size());
      const int hi = HexDigit(line[i + 1]);
      const int lo = HexDigit(line[i + 2]);
      Check(hi >= 0 && lo >= 0);
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    }
    Check(!(soft && last));  // a soft break is always followed by text
    if (!soft && !last) {
      out += "\r\n";
    }
  }
  return out;
}

void CheckQuotedPrintable(absl::string_view text) {
  const std::string encoded = mime::QuotedPrintableEncode(text);
  Check(!mime::HasLineLongerThan(encoded, 76));
  std::string expected;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\n' && (i == 0 || text[i - 1] != '\r')) {
      expected += '\r';
    }
    expected += text[i];
  }
  Check(DecodeQuotedPrintable(encoded) == expected);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  CheckReaders(input);
  constexpr absl::string_view kNames[] = {"Subject", "X-Tern-Diagnostic", "Diagnostic-Code", "Content-Description"};
  const absl::string_view name = kNames[size == 0 ? 0 : data[0] % 4];
  CheckFormat(name, input, mime::HeaderText::kUnstructured);
  CheckFormat(name, input, mime::HeaderText::kAsciiStructured);
  CheckQuotedPrintable(input);
  return 0;
}
