#include "lib/address/mailbox.h"

#include <arpa/inet.h>

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tern::address {
namespace {

bool IsAtextAscii(unsigned char c) {
  if (absl::ascii_isalnum(c)) {
    return true;
  }
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
    case '/': case '=': case '?': case '^': case '_': case '`': case '{': case '|': case '}': case '~':
      return true;
    default:
      return false;
  }
}

// qtextSMTP (RFC 5321 §4.1.2): %d32-33 / %d35-91 / %d93-126.
bool IsQtextAscii(unsigned char c) { return c == 32 || c == 33 || (c >= 35 && c <= 91) || (c >= 93 && c <= 126); }

// The length of the well-formed UTF-8 sequence (RFC 3629 §4) that starts at
// s[i], whose first octet is >= 0x80; 0 if it is not well formed (overlong
// forms, surrogates and code points above U+10FFFF included).
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  const auto at = [&](size_t k) -> int { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : -1; };
  const auto cont = [&](size_t k, int lo = 0x80, int hi = 0xBF) {
    const int c = at(k);
    return c >= lo && c <= hi;
  };
  const int c0 = at(0);
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    return cont(1) ? 2 : 0;
  }
  if (c0 == 0xE0) {
    return cont(1, 0xA0, 0xBF) && cont(2) ? 3 : 0;
  }
  if ((c0 >= 0xE1 && c0 <= 0xEC) || c0 == 0xEE || c0 == 0xEF) {
    return cont(1) && cont(2) ? 3 : 0;
  }
  if (c0 == 0xED) {
    return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0;
  }
  if (c0 == 0xF0) {
    return cont(1, 0x90, 0xBF) && cont(2) && cont(3) ? 4 : 0;
  }
  if (c0 >= 0xF1 && c0 <= 0xF3) {
    return cont(1) && cont(2) && cont(3) ? 4 : 0;
  }
  if (c0 == 0xF4) {
    return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

bool IsValidIpv4Literal(absl::string_view text) {
  // IPv4-address-literal = Snum 3("." Snum); Snum = 1*3DIGIT (0-255).
  int parts = 0;
  size_t i = 0;
  while (true) {
    size_t digits = 0;
    int value = 0;
    while (i < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[i])) && digits < 4) {
      value = value * 10 + (text[i] - '0');
      ++digits;
      ++i;
    }
    if (digits == 0 || digits > 3 || value > 255) {
      return false;
    }
    ++parts;
    if (i == text.size()) {
      return parts == 4;
    }
    if (text[i] != '.' || parts == 4) {
      return false;
    }
    ++i;
  }
}

class PathParser {
 public:
  PathParser(absl::string_view input, const PathOptions& options) : in_(input), options_(options) {}

  absl::StatusOr<ParsedPath> Path() {
    ParsedPath out;
    if (in_.empty()) {
      return Syntax("empty address");
    }
    if (in_[0] != '<') {
      if (!options_.allow_missing_brackets) {
        return Syntax("address must be enclosed in <>");
      }
      auto mailbox = Mailbox(/*in_brackets=*/false);
      if (!mailbox.ok()) {
        return mailbox.status();
      }
      if (pos_ < in_.size() && in_[pos_] != ' ') {
        return Syntax("unexpected character after address");
      }
      // Count the missing brackets so the limit is the same in both forms.
      if (pos_ + 2 > kMaxPathOctets) {
        return Syntax("path too long");
      }
      out.mailbox = *std::move(mailbox);
      out.consumed = pos_;
      out.non_ascii = non_ascii_;
      return out;
    }
    pos_ = 1;
    if (Peek() == '>') {
      if (!options_.allow_null) {
        return Syntax("empty address not allowed here");
      }
      out.consumed = 2;
      return out;
    }
    if (Peek() == '@') {
      // Source route (A-d-l ":"): parsed for syntax, then dropped.
      while (true) {
        ++pos_;  // '@'
        if (absl::Status s = Domain(/*allow_literal=*/false).status(); !s.ok()) {
          return s;
        }
        if (Peek() == ',') {
          ++pos_;
          if (Peek() != '@') {
            return Syntax("bad source route");
          }
          continue;
        }
        if (Peek() != ':') {
          return Syntax("bad source route");
        }
        ++pos_;
        break;
      }
    } else if (options_.allow_postmaster) {
      constexpr absl::string_view kPostmaster = "postmaster";
      const absl::string_view rest = in_.substr(pos_);
      if (rest.size() > kPostmaster.size() && absl::StartsWithIgnoreCase(rest, kPostmaster) &&
          rest[kPostmaster.size()] == '>') {
        out.mailbox.local = std::string(rest.substr(0, kPostmaster.size()));
        out.consumed = pos_ + kPostmaster.size() + 1;
        return out;
      }
    }
    auto mailbox = Mailbox(/*in_brackets=*/true);
    if (!mailbox.ok()) {
      return mailbox.status();
    }
    if (Peek() != '>') {
      return Syntax(AtEnd() ? "missing closing >" : "unexpected character in address");
    }
    ++pos_;
    if (pos_ > kMaxPathOctets) {
      return Syntax("path too long");
    }
    out.mailbox = *std::move(mailbox);
    out.consumed = pos_;
    out.non_ascii = non_ascii_;
    return out;
  }

  absl::StatusOr<address::Mailbox> Mailbox(bool in_brackets) {
    address::Mailbox mailbox;
    auto local = LocalPart();
    if (!local.ok()) {
      return local.status();
    }
    if (Peek() != '@') {
      if (AtEnd() || (in_brackets && Peek() == '>') || (!in_brackets && Peek() == ' ')) {
        return Syntax("missing @domain");
      }
      return Syntax("bad character in local part");
    }
    ++pos_;
    auto domain = Domain(/*allow_literal=*/true);
    if (!domain.ok()) {
      return domain.status();
    }
    mailbox.local = *std::move(local);
    mailbox.domain = *std::move(domain);
    return mailbox;
  }

  absl::StatusOr<std::string> LocalPart() {
    const size_t start = pos_;
    if (Peek() == '"') {
      ++pos_;
      bool closed = false;
      while (!AtEnd()) {
        const unsigned char c = static_cast<unsigned char>(in_[pos_]);
        if (c == '"') {
          ++pos_;
          closed = true;
          break;
        }
        if (c == '\\') {
          // quoted-pairSMTP = %d92 %d32-126
          if (pos_ + 1 >= in_.size() || static_cast<unsigned char>(in_[pos_ + 1]) < 32 ||
              static_cast<unsigned char>(in_[pos_ + 1]) > 126) {
            return Syntax("bad quoted pair in local part");
          }
          pos_ += 2;
          continue;
        }
        if (c >= 0x80) {
          if (absl::Status s = Utf8Char(); !s.ok()) {
            return s;
          }
          continue;
        }
        if (!IsQtextAscii(c)) {
          return Syntax("bad character in quoted local part");
        }
        ++pos_;
      }
      if (!closed) {
        return Syntax("unterminated quoted local part");
      }
    } else {
      // Dot-string = Atom *("." Atom)
      bool want_atom = true;
      while (!AtEnd()) {
        const unsigned char c = static_cast<unsigned char>(in_[pos_]);
        if (c == '.') {
          if (want_atom) {
            return Syntax(pos_ == start ? "local part starts with a dot" : "empty label in local part");
          }
          want_atom = true;
          ++pos_;
        } else if (IsAtextAscii(c)) {
          want_atom = false;
          ++pos_;
        } else if (c >= 0x80) {
          if (absl::Status s = Utf8Char(); !s.ok()) {
            return s;
          }
          want_atom = false;
        } else {
          break;
        }
      }
      if (pos_ == start) {
        return Syntax("empty local part");
      }
      if (want_atom) {
        return Syntax("local part ends with a dot");
      }
    }
    if (pos_ - start > kMaxLocalPartOctets) {
      return Syntax("local part longer than 64 octets");
    }
    return std::string(in_.substr(start, pos_ - start));
  }

  absl::StatusOr<std::string> Domain(bool allow_literal) {
    const size_t start = pos_;
    if (Peek() == '[') {
      if (!allow_literal) {
        return Syntax("address literal not allowed in source route");
      }
      const size_t close = in_.find(']', pos_);
      if (close == absl::string_view::npos) {
        return Syntax("unterminated address literal");
      }
      const absl::string_view inner = in_.substr(pos_ + 1, close - pos_ - 1);
      if (absl::StartsWithIgnoreCase(inner, "IPv6:")) {
        const std::string text(inner.substr(5));
        in6_addr addr;
        // inet_pton reads a C string: a NUL would end the address early and
        // let whatever follows it through into the domain.
        if (text.empty() || text.find('\0') != std::string::npos || inet_pton(AF_INET6, text.c_str(), &addr) != 1) {
          return Syntax("bad IPv6 address literal");
        }
      } else if (!IsValidIpv4Literal(inner)) {
        if (inner.find(':') != absl::string_view::npos) {
          return Syntax("unsupported address literal");
        }
        return Syntax("bad IPv4 address literal");
      }
      pos_ = close + 1;
      return std::string(in_.substr(start, pos_ - start));
    }
    while (!AtEnd()) {
      const unsigned char c = static_cast<unsigned char>(in_[pos_]);
      if (absl::ascii_isalnum(c) || c == '-' || c == '.') {
        ++pos_;
      } else if (c >= 0x80) {
        if (absl::Status s = Utf8Char(); !s.ok()) {
          return s;
        }
      } else {
        break;
      }
    }
    const absl::string_view domain = in_.substr(start, pos_ - start);
    if (domain.empty()) {
      return Syntax("missing domain");
    }
    if (!IsValidDomain(domain, /*smtputf8=*/true)) {
      return Syntax(domain.size() > kMaxDomainOctets ? "domain longer than 255 octets" : "bad domain");
    }
    return std::string(domain);
  }

 private:
  // Consumes one UTF-8 character at pos_ (first octet >= 0x80).
  absl::Status Utf8Char() {
    if (!options_.smtputf8) {
      return absl::FailedPreconditionError("non-ASCII address without SMTPUTF8");
    }
    const size_t n = Utf8SequenceLength(in_, pos_);
    if (n == 0) {
      return Syntax("invalid UTF-8 in address");
    }
    non_ascii_ = true;
    pos_ += n;
    return absl::OkStatus();
  }

  static absl::Status Syntax(absl::string_view reason) { return absl::InvalidArgumentError(reason); }
  bool AtEnd() const { return pos_ >= in_.size(); }
  char Peek() const { return AtEnd() ? '\0' : in_[pos_]; }

  absl::string_view in_;
  PathOptions options_;
  size_t pos_ = 0;
  bool non_ascii_ = false;
};

}  // namespace

std::string Mailbox::ToString() const {
  if (domain.empty()) {
    return local;
  }
  return absl::StrCat(local, "@", domain);
}

std::string CanonicalHostName(absl::string_view name) {
  std::string out = absl::AsciiStrToLower(name);
  while (!out.empty() && out.back() == '.') {
    out.pop_back();
  }
  return out;
}

bool IsValidDomain(absl::string_view domain, bool smtputf8) {
  if (domain.empty() || domain.size() > kMaxDomainOctets) {
    return false;
  }
  size_t label_start = 0;
  for (size_t i = 0; i <= domain.size(); ++i) {
    if (i < domain.size() && domain[i] != '.') {
      const unsigned char c = static_cast<unsigned char>(domain[i]);
      if (c >= 0x80) {
        // U-label octets (RFC 6531 sub-domain =/ U-label). IDNA2008 rules
        // are left to the resolver; only well-formed UTF-8 is required.
        const size_t n = smtputf8 ? Utf8SequenceLength(domain, i) : 0;
        if (n == 0) {
          return false;
        }
        i += n - 1;
      } else if (!absl::ascii_isalnum(c) && c != '-') {
        return false;
      }
      continue;
    }
    // A label ends at i: Let-dig [Ldh-str], at most 63 octets.
    const absl::string_view label = domain.substr(label_start, i - label_start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    label_start = i + 1;
  }
  return true;
}

absl::StatusOr<ParsedPath> ParsePathPrefix(absl::string_view input, const PathOptions& options) {
  return PathParser(input, options).Path();
}

absl::StatusOr<Mailbox> ParsePath(absl::string_view input, const PathOptions& options) {
  auto parsed = ParsePathPrefix(input, options);
  if (!parsed.ok()) {
    return parsed.status();
  }
  if (parsed->consumed != input.size()) {
    return absl::InvalidArgumentError("unexpected text after address");
  }
  return std::move(parsed->mailbox);
}

absl::StatusOr<Mailbox> ParseMailbox(absl::string_view input, bool smtputf8) {
  PathOptions options;
  options.smtputf8 = smtputf8;
  options.allow_missing_brackets = true;
  if (input.empty() || input[0] == '<') {
    return absl::InvalidArgumentError("expected a bare mailbox");
  }
  return ParsePath(input, options);
}

}  // namespace tern::address
