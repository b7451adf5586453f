#include "lib/smtp/reply_parser.h"

#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tern::smtp {
namespace {

// Remote text quoted in an error message: escaped and bounded, so logs and
// DSNs never carry raw control characters from the peer.
std::string Quote(absl::string_view line) {
  constexpr size_t kMaxQuoted = 80;
  std::string out = absl::CHexEscape(line.substr(0, kMaxQuoted));
  if (line.size() > kMaxQuoted) {
    out += "...";
  }
  return absl::StrCat("\"", out, "\"");
}

// Reads 1-3 digits at text[*pos]; false if none or more than three.
bool ReadNumber(absl::string_view text, size_t* pos, int* value) {
  size_t start = *pos;
  int v = 0;
  while (*pos < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[*pos]))) {
    v = v * 10 + (text[*pos] - '0');
    ++*pos;
    if (*pos - start > 3) {
      return false;
    }
  }
  if (*pos == start) {
    return false;
  }
  *value = v;
  return true;
}

}  // namespace

std::optional<EnhancedStatusCode> ParseEnhancedStatusCode(absl::string_view text, size_t* consumed) {
  if (text.size() < 5 || (text[0] != '2' && text[0] != '4' && text[0] != '5') || text[1] != '.') {
    return std::nullopt;
  }
  EnhancedStatusCode code;
  code.klass = text[0] - '0';
  size_t pos = 2;
  if (!ReadNumber(text, &pos, &code.subject) || pos >= text.size() || text[pos] != '.') {
    return std::nullopt;
  }
  ++pos;
  if (!ReadNumber(text, &pos, &code.detail)) {
    return std::nullopt;
  }
  if (pos < text.size()) {
    if (text[pos] != ' ' && text[pos] != '\t') {
      return std::nullopt;  // e.g. "5.7.1x" or "5.7.1234"
    }
    ++pos;
  }
  *consumed = pos;
  return code;
}

EnhancedStatusCode DefaultEnhancedStatus(int reply_code) {
  EnhancedStatusCode code;
  code.klass = reply_code / 100;
  return code;
}

void ReplyParser::Reset() {
  reply_ = SmtpReply();
  complete_ = false;
}

SmtpReply ReplyParser::TakeReply() {
  SmtpReply out = std::move(reply_);
  Reset();
  return out;
}

absl::StatusOr<bool> ReplyParser::Feed(absl::string_view line) {
  if (complete_) {
    return absl::FailedPreconditionError("reply already complete; call TakeReply() first");
  }
  if (line.size() > options_.max_line_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("reply line longer than ", options_.max_line_length, " bytes: ", Quote(line)));
  }
  if (line.size() < 3 || !absl::ascii_isdigit(static_cast<unsigned char>(line[0])) ||
      !absl::ascii_isdigit(static_cast<unsigned char>(line[1])) ||
      !absl::ascii_isdigit(static_cast<unsigned char>(line[2]))) {
    return absl::InvalidArgumentError(absl::StrCat("unrecognised reply from server: ", Quote(line)));
  }
  const int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  if (code < 200 || code > 599) {
    return absl::InvalidArgumentError(absl::StrCat("reply code out of range: ", Quote(line)));
  }
  bool last = true;
  absl::string_view text;
  if (line.size() > 3) {
    if (line[3] == '-') {
      last = false;
    } else if (line[3] != ' ') {
      return absl::InvalidArgumentError(absl::StrCat("reply code not followed by space or '-': ", Quote(line)));
    }
    text = line.substr(4);
  }
  if (reply_.code != 0 && code != reply_.code) {
    return absl::InvalidArgumentError(
        absl::StrCat("multi-line reply mixes codes ", reply_.code, " and ", code, ": ", Quote(line)));
  }
  if (reply_.lines.size() >= options_.max_lines) {
    return absl::InvalidArgumentError(absl::StrCat("reply has more than ", options_.max_lines, " lines"));
  }
  const bool first = reply_.code == 0;
  reply_.code = code;
  size_t consumed = 0;
  if (auto enhanced = ParseEnhancedStatusCode(text, &consumed)) {
    // RFC 3463 §3.1: the class must match the reply's first digit; a code of
    // another class is not an enhanced code of this reply (left as text).
    if (enhanced->klass == code / 100) {
      if (first) {
        reply_.enhanced = enhanced;
      }
      if (reply_.enhanced && *reply_.enhanced == *enhanced) {
        text.remove_prefix(consumed);
      }
    }
  }
  reply_.lines.emplace_back(text);
  complete_ = last;
  return last;
}

EhloCapabilities ParseEhloCapabilities(const SmtpReply& ehlo_reply) {
  EhloCapabilities caps;
  // The AUTH mechanisms kept so far, for duplicates: a set, because a hostile
  // server can offer ~240,000 distinct names in one reply (256 lines of 4 KiB)
  // and a scan of auth_mechanisms per name took 30 s of the worker's thread.
  std::set<std::string> seen_mechs;
  // Line 0 is the greeting ("mx.example.com Hello ..."), not a keyword.
  for (size_t i = 1; i < ehlo_reply.lines.size(); ++i) {
    std::vector<absl::string_view> words =
        absl::StrSplit(ehlo_reply.lines[i], absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (words.empty()) {
      continue;
    }
    const std::string keyword = absl::AsciiStrToUpper(words[0]);
    if (keyword == "PIPELINING") {
      caps.pipelining = true;
    } else if (keyword == "SIZE") {
      caps.size = true;
      uint64_t limit = 0;
      if (words.size() > 1 && absl::SimpleAtoi(words[1], &limit)) {
        caps.size_limit = limit;
      }
    } else if (keyword == "8BITMIME") {
      caps.eight_bit_mime = true;
    } else if (keyword == "SMTPUTF8") {
      caps.smtputf8 = true;
    } else if (keyword == "STARTTLS") {
      caps.starttls = true;
    } else if (keyword == "DSN") {
      caps.dsn = true;
    } else if (keyword == "ENHANCEDSTATUSCODES") {
      caps.enhanced_status_codes = true;
    } else if (keyword == "CHUNKING") {
      caps.chunking = true;
    } else if (keyword == "REQUIRETLS") {
      caps.requiretls = true;
    } else if (keyword == "AUTH" || absl::StartsWith(keyword, "AUTH=")) {
      // "AUTH=LOGIN PLAIN" is the pre-RFC 4954 form some servers still send.
      std::vector<absl::string_view> mechs;
      if (keyword.size() > 5) {
        mechs.push_back(words[0].substr(5));
      }
      mechs.insert(mechs.end(), words.begin() + 1, words.end());
      for (absl::string_view mech : mechs) {
        std::string upper = absl::AsciiStrToUpper(mech);
        if (!upper.empty() && seen_mechs.insert(upper).second) {
          caps.auth_mechanisms.push_back(std::move(upper));
        }
      }
    }
  }
  return caps;
}

}  // namespace tern::smtp
