#include "services/ingest/received_header.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "lib/mime/header.h"

namespace tern::ingest {
namespace {

constexpr size_t kFoldWidth = 78;
constexpr size_t kMaxHeloInHeader = 255;

// A token of the TLS comment: what OpenSSL names versions and ciphers with
// (letters, digits, "_", "-", ".", "/"); anything else becomes "_", so the
// comment cannot be broken whatever a library reports.
std::string CommentToken(absl::string_view text) {
  std::string out;
  for (char c : text.substr(0, 64)) {
    const bool ok = absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
                    c == '/';
    out.push_back(ok ? c : '_');
  }
  return out.empty() ? std::string("unknown") : out;
}

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
  std::vector<Token> tokens = {
      {"Received:", false},
      {"from", false},
      {SanitizeHelo(info.helo), false},
      {literal, false},
      {"by", true},
      {info.me, false},
      {absl::StrCat("(", info.comment, ")"), false},
      {"with", false},
      {info.protocol, false},
      {"id", false},
  };
  if (info.tls_version.empty()) {
    tokens.push_back({absl::StrCat(info.id, ";"), false});
  } else {
    tokens.push_back({info.id, false});
    tokens.push_back({absl::StrCat("(version=", CommentToken(info.tls_version), " cipher=",
                                   CommentToken(info.tls_cipher), " verify=", CommentToken(info.tls_verify), ");"),
                      true});
  }
  tokens.push_back({mime::FormatRfc5322Date(info.time, info.zone), true});
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
