#include "lib/mime/quoted_printable.h"

namespace tern::mime {
namespace {

// RFC 2045 §6.7 rule 5: encoded lines are at most 76 characters, the soft
// line break's "=" included.
constexpr size_t kMaxEncodedLine = 76;

constexpr char kHex[] = "0123456789ABCDEF";

void EncodeLine(absl::string_view line, std::string& out) {
  size_t column = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    const bool last = i + 1 == line.size();
    // Rule 3: a space or tab is literal unless it ends the line.
    const bool literal = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !last);
    char buf[3];
    size_t len = 1;
    if (literal) {
      buf[0] = static_cast<char>(c);
    } else {
      buf[0] = '=';
      buf[1] = kHex[c >> 4];
      buf[2] = kHex[c & 0x0F];
      len = 3;
    }
    // Keep room for the "=" of a soft break unless this is the line's end.
    const size_t limit = last ? kMaxEncodedLine : kMaxEncodedLine - 1;
    if (column + len > limit) {
      out += "=\r\n";
      column = 0;
    }
    out.append(buf, len);
    column += len;
  }
}

}  // namespace

std::string QuotedPrintableEncode(absl::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 8 + 8);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    absl::string_view line = text.substr(pos, nl == absl::string_view::npos ? absl::string_view::npos : nl - pos);
    if (nl != absl::string_view::npos && !line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    EncodeLine(line, out);
    if (nl == absl::string_view::npos) {
      break;
    }
    out += "\r\n";
    pos = nl + 1;
  }
  return out;
}

bool HasLineLongerThan(absl::string_view text, size_t max_length) {
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == absl::string_view::npos ? text.size() : nl;
    size_t len = end - pos;
    if (nl != absl::string_view::npos && len > 0 && text[end - 1] == '\r') {
      --len;
    }
    if (len > max_length) {
      return true;
    }
    if (nl == absl::string_view::npos) {
      break;
    }
    pos = nl + 1;
  }
  return false;
}

}  // namespace tern::mime
