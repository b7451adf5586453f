#include "lib/mime/header.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tern::mime {
namespace {

bool IsWsp(char c) { return c == ' ' || c == '\t'; }

bool IsControl(unsigned char c) { return c < 0x20 || c == 0x7f; }

}  // namespace

void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {

// Length of the valid UTF-8 sequence at text[i], or 0 if it is invalid
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
size_t ValidUtf8SequenceAt(absl::string_view text, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char c = byte(i);
  if (c < 0x80) {
    return 1;
  }
  size_t len;
  uint32_t cp;
  uint32_t min;
  if ((c & 0xE0) == 0xC0) {
    len = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + len > text.size()) {
    return 0;
  }
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) {
      return 0;
    }
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return len;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

// Tries to decode one encoded-word starting at text[pos] ("=?"). On success
// appends its UTF-8 bytes to `out` and returns the index after "?=".
std::optional<size_t> DecodeOneWord(absl::string_view text, size_t pos, std::string& out) {
  size_t cs_end = text.find('?', pos + 2);
  if (cs_end == absl::string_view::npos || cs_end == pos + 2) {
    return std::nullopt;
  }
  absl::string_view charset = text.substr(pos + 2, cs_end - pos - 2);
  // RFC 2231 §5 allows "charset*language".
  charset = charset.substr(0, charset.find('*'));
  if (cs_end + 2 >= text.size() || text[cs_end + 2] != '?') {
    return std::nullopt;
  }
  char enc = absl::ascii_tolower(text[cs_end + 1]);
  size_t data_start = cs_end + 3;
  size_t data_end = text.find('?', data_start);
  if (data_end == absl::string_view::npos || data_end + 1 >= text.size() || text[data_end + 1] != '=') {
    return std::nullopt;
  }
  absl::string_view data = text.substr(data_start, data_end - data_start);
  for (char c : charset) {
    if (IsWsp(c) || IsControl(static_cast<unsigned char>(c))) {
      return std::nullopt;
    }
  }
  for (char c : data) {
    if (IsWsp(c) || IsControl(static_cast<unsigned char>(c))) {
      return std::nullopt;
    }
  }
  std::string bytes;
  if (enc == 'b') {
    if (!absl::Base64Unescape(data, &bytes)) {
      return std::nullopt;
    }
  } else if (enc == 'q') {
    for (size_t i = 0; i < data.size(); ++i) {
      char c = data[i];
      if (c == '_') {
        bytes.push_back(' ');
      } else if (c == '=') {
        int hi = i + 1 < data.size() ? HexValue(data[i + 1]) : -1;
        int lo = i + 2 < data.size() ? HexValue(data[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
          return std::nullopt;
        }
        bytes.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
      } else {
        bytes.push_back(c);
      }
    }
  } else {
    return std::nullopt;
  }
  std::string cs = absl::AsciiStrToLower(charset);
  if (cs == "utf-8" || cs == "utf8" || cs == "us-ascii") {
    out += bytes;
  } else if (cs == "iso-8859-1" || cs == "latin1" || cs == "iso_8859-1" || cs == "l1") {
    for (unsigned char c : bytes) {
      AppendUtf8(c, out);
    }
  } else {
    return std::nullopt;
  }
  return data_end + 2;
}

constexpr absl::string_view kEncodedWordPrefix = "=?UTF-8?B?";
constexpr absl::string_view kEncodedWordSuffix = "?=";
constexpr size_t kEncodedWordOverhead = 12;  // prefix + suffix
// RFC 2047 §2: an encoded-word is at most 75 characters.
constexpr size_t kMaxEncodedWord = 75;
// The shortest encoded-word worth starting on a partly used line: room for
// one 4-byte UTF-8 character plus a little.
constexpr size_t kMinEncodedWord = kEncodedWordOverhead + 8;

// Builds a folded field body word by word.
class FieldWriter {
 public:
  explicit FieldWriter(absl::string_view name) : out_(absl::StrCat(name, ":")), line_len_(out_.size()) {}

  // Appends `atom` (no whitespace inside, at most kMaxLineLength - 1 bytes)
  // after a space, folding first if the line would pass 78 characters. The
  // first atom stays on the name's line when it fits within 998 so the field
  // never starts with an empty line.
  void Atom(absl::string_view atom) {
    size_t needed = line_len_ + 1 + atom.size();
    bool fits = needed <= kFoldLineLength || (!has_atom_ && needed <= kMaxLineLength);
    if (!fits) {
      Fold();
    }
    out_ += ' ';
    out_.append(atom.data(), atom.size());
    line_len_ += 1 + atom.size();
    has_atom_ = true;
  }

  // Room for an atom on the current line (after its separating space) within
  // the 78-character target.
  size_t Room() const { return line_len_ + 1 >= kFoldLineLength ? 0 : kFoldLineLength - line_len_ - 1; }

  void Fold() {
    out_ += "\r\n";
    line_len_ = 0;
  }

  std::string Finish() && {
    out_ += "\r\n";
    return std::move(out_);
  }

 private:
  std::string out_;
  size_t line_len_;
  bool has_atom_ = false;
};

// Writes `text` (valid UTF-8) as a sequence of encoded-words, each sized to
// fit the current line when it can and split only at character boundaries.
void WriteEncodedRun(absl::string_view text, FieldWriter& writer) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t room = writer.Room();
    if (room < kMinEncodedWord) {
      writer.Fold();
      room = writer.Room();
    }
    size_t word_len = std::min(room, kMaxEncodedWord);
    size_t max_bytes = (word_len - kEncodedWordOverhead) / 4 * 3;
    size_t take = std::min(max_bytes, text.size() - pos);
    // Back off to the start of a UTF-8 character.
    while (take > 0 && pos + take < text.size() &&
           (static_cast<unsigned char>(text[pos + take]) & 0xC0) == 0x80) {
      --take;
    }
    std::string word = absl::StrCat(kEncodedWordPrefix, absl::Base64Escape(text.substr(pos, take)),
                                    kEncodedWordSuffix);
    writer.Atom(word);
    pos += take;
  }
}

std::vector<absl::string_view> SplitWords(absl::string_view text) {
  std::vector<absl::string_view> words;
  size_t pos = 0;
  while (pos < text.size()) {
    while (pos < text.size() && text[pos] == ' ') {
      ++pos;
    }
    size_t end = text.find(' ', pos);
    if (end == absl::string_view::npos) {
      end = text.size();
    }
    if (end > pos) {
      words.push_back(text.substr(pos, end - pos));
    }
    pos = end;
  }
  return words;
}

bool NeedsEncoding(absl::string_view word) {
  // A literal "=?" could be read back as an encoded-word; a word too long for
  // any line can only be split without changing the text by encoding it.
  return !IsAscii(word) || absl::StrContains(word, "=?") || word.size() > kMaxLineLength - 1;
}

}  // namespace

HeaderBlock SplitHeaderBlock(absl::string_view message) {
  HeaderBlock block;
  size_t pos = 0;
  while (pos < message.size()) {
    size_t nl = message.find('\n', pos);
    if (nl == absl::string_view::npos) {
      break;
    }
    absl::string_view line = message.substr(pos, nl - pos);
    if (line.empty() || line == "\r") {
      block.headers = message.substr(0, pos);
      block.body = message.substr(nl + 1);
      block.has_separator = true;
      return block;
    }
    pos = nl + 1;
  }
  block.headers = message;
  return block;
}

std::vector<HeaderField> ParseHeaderFields(absl::string_view header_block) {
  std::vector<HeaderField> fields;
  bool in_field = false;
  bool first_line = true;
  ForEachLine(header_block, [&](absl::string_view line) {
    bool was_first = first_line;
    first_line = false;
    if (!line.empty() && IsWsp(line[0])) {
      if (in_field) {
        absl::StrAppend(&fields.back().raw_value, "\r\n", line);
      }
      return;
    }
    in_field = false;
    if (was_first && absl::StartsWith(line, "From ")) {
      return;  // an mbox separator line
    }
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos) {
      return;
    }
    absl::string_view name = line.substr(0, colon);
    while (!name.empty() && IsWsp(name.back())) {
      name.remove_suffix(1);
    }
    if (!IsValidFieldName(name)) {
      return;
    }
    fields.push_back(HeaderField{std::string(name), std::string(line.substr(colon + 1))});
    in_field = true;
  });
  return fields;
}

std::string Unfold(absl::string_view raw_value) {
  std::string out;
  out.reserve(raw_value.size());
  for (char c : raw_value) {
    if (c != '\r' && c != '\n') {
      out.push_back(c);
    }
  }
  size_t begin = 0;
  while (begin < out.size() && IsWsp(out[begin])) {
    ++begin;
  }
  size_t end = out.size();
  while (end > begin && IsWsp(out[end - 1])) {
    --end;
  }
  return out.substr(begin, end - begin);
}

std::optional<std::string> GetHeader(absl::string_view message, absl::string_view name) {
  for (const HeaderField& field : ParseHeaderFields(SplitHeaderBlock(message).headers)) {
    if (absl::EqualsIgnoreCase(field.name, name)) {
      return Unfold(field.raw_value);
    }
  }
  return std::nullopt;
}

std::string DecodeEncodedWords(absl::string_view value) {
  std::string out;
  std::string pending_ws;  // whitespace seen since the last word
  bool last_was_encoded = false;
  size_t i = 0;
  while (i < value.size()) {
    char c = value[i];
    if (c == '=' && i + 1 < value.size() && value[i + 1] == '?') {
      std::string decoded;
      if (std::optional<size_t> end = DecodeOneWord(value, i, decoded)) {
        if (!last_was_encoded) {
          out += pending_ws;
        }
        pending_ws.clear();
        out += decoded;
        last_was_encoded = true;
        i = *end;
        continue;
      }
    }
    if (IsWsp(c) || c == '\r' || c == '\n') {
      pending_ws.push_back(c);
      ++i;
      continue;
    }
    out += pending_ws;
    pending_ws.clear();
    out.push_back(c);
    last_was_encoded = false;
    ++i;
  }
  out += pending_ws;
  return ToValidUtf8(out);
}

std::string ToValidUtf8(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    size_t len = ValidUtf8SequenceAt(text, i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
    } else {
      out.append(text.data() + i, len);
      i += len;
    }
  }
  return out;
}

bool IsAscii(absl::string_view text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      return false;
    }
  }
  return true;
}

std::string CollapseToOneLine(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool in_run = false;
  for (char c : text) {
    if (IsControl(static_cast<unsigned char>(c))) {
      if (!in_run) {
        out.push_back(' ');
        in_run = true;
      }
    } else {
      out.push_back(c);
      in_run = false;
    }
  }
  return out;
}

bool IsValidFieldName(absl::string_view name) {
  if (name.empty()) {
    return false;
  }
  for (char c : name) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 33 || u > 126 || c == ':') {
      return false;
    }
  }
  return true;
}

std::string FormatHeaderField(absl::string_view name, absl::string_view value, HeaderText text) {
  std::string line = CollapseToOneLine(value);
  if (text == HeaderText::kUnstructured) {
    line = ToValidUtf8(line);
  }
  std::vector<absl::string_view> words = SplitWords(line);
  FieldWriter writer(name);
  if (text == HeaderText::kAsciiStructured) {
    for (absl::string_view word : words) {
      std::string ascii(word);
      for (char& c : ascii) {
        if (static_cast<unsigned char>(c) >= 0x80) {
          c = '?';
        }
      }
      absl::string_view rest = ascii;
      constexpr size_t kChunk = kMaxLineLength - 1;
      while (rest.size() > kChunk) {
        writer.Atom(rest.substr(0, kChunk));
        rest.remove_prefix(kChunk);
      }
      writer.Atom(rest);
    }
    return std::move(writer).Finish();
  }
  size_t i = 0;
  while (i < words.size()) {
    if (!NeedsEncoding(words[i])) {
      writer.Atom(words[i]);
      ++i;
      continue;
    }
    // Adjacent words that need encoding go into one run with their spaces
    // inside the encoded text, since whitespace between two encoded-words
    // disappears when decoded (RFC 2047 §6.2).
    size_t j = i;
    std::string run;
    while (j < words.size() && NeedsEncoding(words[j])) {
      if (j > i) {
        run += ' ';
      }
      absl::StrAppend(&run, words[j]);
      ++j;
    }
    WriteEncodedRun(run, writer);
    i = j;
  }
  return std::move(writer).Finish();
}

std::string FormatRfc5322Date(absl::Time t, absl::TimeZone zone) {
  // The text changes once a second, and ingest formats it twice per message
  // (Received and Date): absl::FormatTime costs ~9,000 instructions a call,
  // about 4 % of ingest's work per message. So each thread keeps its last
  // answer for the same second and zone.
  struct Last {
    int64_t second = 0;
    absl::TimeZone zone;
    std::string text;
  };
  thread_local Last last;
  const int64_t second = absl::ToUnixSeconds(t);  // rounds down, as %S does
  if (last.text.empty() || last.second != second || last.zone != zone) {
    last.text = absl::FormatTime("%a, %d %b %Y %H:%M:%S %z", t, zone);
    last.second = second;
    last.zone = zone;
  }
  return last.text;
}

}  // namespace tern::mime
