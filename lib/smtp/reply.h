// File: reply.h
//
// Value types for what an SMTP server says to a client: SmtpReply (one
// complete, possibly multi-line reply), EnhancedStatusCode (RFC 3463 x.y.z)
// and EhloCapabilities (the extensions an EHLO reply offers). They are
// produced by lib/smtp/reply_parser.h and never do I/O.
//
// Thread-safety: plain values; copy freely.
//
// Standards: RFC 5321 §4.2 (reply lines), RFC 3463 (enhanced status codes,
// whose subject and detail may have up to three digits: "5.7.26"), RFC 2034
// (enhanced codes in replies), RFC 1869/5321 §4.1.1.1 (EHLO keywords).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace tern::smtp {

// RFC 3463 status: class (2, 4 or 5), subject (0-999), detail (0-999).
struct EnhancedStatusCode {
  int klass = 0;
  int subject = 0;
  int detail = 0;

  std::string ToString() const { return absl::StrCat(klass, ".", subject, ".", detail); }
  friend bool operator==(const EnhancedStatusCode&, const EnhancedStatusCode&) = default;
};

struct SmtpReply {
  int code = 0;  // 200..599
  // Present when the first line carried an enhanced code of the same class.
  std::optional<EnhancedStatusCode> enhanced;
  // The text of each line after "NNN-" / "NNN ", enhanced code removed where
  // a line starts with the reply's enhanced code.
  std::vector<std::string> lines;

  int klass() const { return code / 100; }
  bool positive() const { return code >= 200 && code < 300; }
  bool transient() const { return code >= 400 && code < 500; }
  bool permanent() const { return code >= 500 && code < 600; }

  // The non-empty lines joined with a space (what DSNs and logs show).
  std::string Text() const {
    std::string out;
    for (const auto& line : lines) {
      if (!line.empty()) {
        absl::StrAppend(&out, out.empty() ? "" : " ", line);
      }
    }
    return out;
  }

  // "550 5.1.1 text" in one line, for logs and DSN diagnostic codes.
  std::string ToString() const {
    std::string out = absl::StrCat(code);
    if (enhanced) {
      absl::StrAppend(&out, " ", enhanced->ToString());
    }
    const std::string text = Text();
    if (!text.empty()) {
      absl::StrAppend(&out, " ", text);
    }
    return out;
  }
};

// What a server offered in its EHLO reply. Keywords are case-insensitive.
struct EhloCapabilities {
  bool pipelining = false;        // RFC 2920
  bool size = false;              // RFC 1870
  uint64_t size_limit = 0;        // SIZE n; 0 = no limit given
  bool eight_bit_mime = false;    // RFC 6152
  bool smtputf8 = false;          // RFC 6531
  bool starttls = false;          // RFC 3207
  bool dsn = false;               // RFC 3461
  bool enhanced_status_codes = false;  // RFC 2034
  bool chunking = false;          // RFC 3030 (BDAT)
  bool requiretls = false;        // RFC 8689
  std::vector<std::string> auth_mechanisms;  // upper-cased, RFC 4954
};

}  // namespace tern::smtp
