#include "services/ingest/received_header.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "lib/mime/header.h"

namespace tern::ingest {
namespace {

constexpr size_t kFoldWidth = 78;
constexpr size_t kMaxHeloInHeader = 255;

}  // namespace

std::string ReceivedProtocol(bool esmtp, bool tls, bool authenticated, bool smtputf8) {
  if (!esmtp) {
    return "SMTP";
  }
  std::string out = smtputf8 ? "UTF8SMTP" : "ESMTP";
  if (tls) {
    out += "S";
  }
  if (authenticated) {
    out += "A";
  }
  return out;
}

std::string SanitizeHelo(absl::string_view helo) {
  std::string out;
  for (char c : helo.substr(0, kMaxHeloInHeader)) {
    const unsigned char u = static_cast<unsigned char>(c);
    const bool ok = absl::ascii_isalnum(u) || c == '.' || c == '-' || c == '_' || c == ':' || c == '[' ||
                    c == ']' || c == '@';
    out.push_back(ok ? c : '_');
  }
  return out.empty() ? std::string("unknown") : out;
}

std::string BuildReceivedHeader(const ReceivedInfo& info) {
  const bool v6 = info.client_ip.find(':') != std::string::npos;
  const std::string literal = absl::StrCat("([", v6 ? "IPv6:" : "", info.client_ip, "])");
  // Tokens joined by single spaces; a fold may replace any of those spaces.
  // "by" and the date always start a new line, the usual layout.
  struct Token {
    std::string text;
    bool break_before;
  };
  const std::vector<Token> tokens = {
      {"Received:", false},
      {"from", false},
      {SanitizeHelo(info.helo), false},
      {literal, false},
      {"by", true},
      {info.me, false},
      {"(Tern)", false},
      {"with", false},
      {info.protocol, false},
      {"id", false},
      {absl::StrCat(info.id, ";"), false},
      {mime::FormatRfc5322Date(info.time, info.zone), true},
  };
  std::string out;
  size_t line_len = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const Token& t = tokens[i];
    if (i == 0) {
      out = t.text;
      line_len = t.text.size();
      continue;
    }
    if (t.break_before || line_len + 1 + t.text.size() > kFoldWidth) {
      absl::StrAppend(&out, "\r\n\t", t.text);
      line_len = 1 + t.text.size();
    } else {
      absl::StrAppend(&out, " ", t.text);
      line_len += 1 + t.text.size();
    }
  }
  out += "\r\n";
  return out;
}

}  // namespace tern::ingest
