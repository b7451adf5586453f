#include "lib/smtp/command_parser.h"

#include <cstdint>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tern::smtp {
namespace {

// RFC 3461 §4.4: ENVID at most 100 characters; §4.2: ORCPT at most 500.
constexpr size_t kMaxEnvidLength = 100;
constexpr size_t kMaxOrcptLength = 500;

CommandError Error(int code, absl::string_view enhanced, absl::string_view text) {
  return CommandError{code, std::string(enhanced), std::string(text)};
}

CommandError SyntaxError(absl::string_view text) { return Error(500, "5.5.2", text); }
CommandError BadArgument(absl::string_view text) { return Error(501, "5.5.4", text); }
CommandError UnknownParameter(absl::string_view text) { return Error(555, "5.5.4", text); }

struct VerbEntry {
  absl::string_view name;
  Verb verb;
};
constexpr VerbEntry kVerbs[] = {
    {"EHLO", Verb::kEhlo}, {"HELO", Verb::kHelo}, {"MAIL", Verb::kMail},         {"RCPT", Verb::kRcpt},
    {"DATA", Verb::kData}, {"RSET", Verb::kRset}, {"NOOP", Verb::kNoop},         {"QUIT", Verb::kQuit},
    {"VRFY", Verb::kVrfy}, {"HELP", Verb::kHelp}, {"STARTTLS", Verb::kStarttls}, {"AUTH", Verb::kAuth},
    {"BDAT", Verb::kBdat},
};

bool IsKeywordChar(char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-'; }

// esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 octets (RFC 6531 §3.3).
bool IsValueChar(char c) {
  const unsigned char u = static_cast<unsigned char>(c);
  return (u >= 33 && u <= 126 && u != '=') || u >= 0x80;
}

bool HasControlCharacters(absl::string_view text) {
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 32 || u == 127) {
      return true;
    }
  }
  return false;
}

// Splits "KEY=VALUE KEY2 ..." into parameters, checking the syntax of each.
std::optional<CommandError> SplitParameters(absl::string_view text, std::vector<EsmtpParameter>* out) {
  for (absl::string_view item : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    EsmtpParameter p;
    const size_t eq = item.find('=');
    const absl::string_view key = item.substr(0, eq);
    if (key.empty() || !absl::ascii_isalnum(static_cast<unsigned char>(key[0]))) {
      return BadArgument("Bad parameter syntax");
    }
    for (char c : key) {
      if (!IsKeywordChar(c)) {
        return BadArgument("Bad parameter syntax");
      }
    }
    p.keyword = absl::AsciiStrToUpper(key);
    if (eq != absl::string_view::npos) {
      const absl::string_view value = item.substr(eq + 1);
      if (value.empty()) {
        return BadArgument(absl::StrCat("Bad ", p.keyword, " parameter: empty value"));
      }
      for (char c : value) {
        if (!IsValueChar(c)) {
          return BadArgument(absl::StrCat("Bad ", p.keyword, " parameter: bad character in value"));
        }
      }
      p.value = std::string(value);
      p.has_value = true;
    }
    for (const EsmtpParameter& seen : *out) {
      if (seen.keyword == p.keyword) {
        return BadArgument(absl::StrCat("Duplicate ", p.keyword, " parameter"));
      }
    }
    out->push_back(std::move(p));
  }
  return std::nullopt;
}

std::optional<CommandError> RequireValue(const EsmtpParameter& p) {
  if (!p.has_value) {
    return BadArgument(absl::StrCat(p.keyword, " parameter requires a value"));
  }
  return std::nullopt;
}

std::optional<CommandError> ApplyMailParameter(const EsmtpParameter& p, MailParameters* mail) {
  if (p.keyword == "SIZE") {
    if (auto e = RequireValue(p)) {
      return e;
    }
    if (p.value.size() > 20) {
      return BadArgument("Bad SIZE parameter");
    }
    uint64_t size = 0;
    for (char c : p.value) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
        return BadArgument("Bad SIZE parameter");
      }
      const uint64_t digit = static_cast<uint64_t>(c - '0');
      // 20 digits can exceed 2^64: saturate, the size limit refuses it anyway.
      if (size > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
        size = std::numeric_limits<uint64_t>::max();
      } else {
        size = size * 10 + digit;
      }
    }
    mail->size = size;
    return std::nullopt;
  }
  if (p.keyword == "BODY") {
    if (auto e = RequireValue(p)) {
      return e;
    }
    if (absl::EqualsIgnoreCase(p.value, "7BIT")) {
      mail->body = BodyType::k7Bit;
    } else if (absl::EqualsIgnoreCase(p.value, "8BITMIME")) {
      mail->body = BodyType::k8BitMime;
    } else {
      return BadArgument(absl::StrCat("Unsupported BODY type"));
    }
    return std::nullopt;
  }
  if (p.keyword == "SMTPUTF8") {
    if (p.has_value) {
      return BadArgument("SMTPUTF8 parameter takes no value");
    }
    mail->smtputf8 = true;
    return std::nullopt;
  }
  if (p.keyword == "REQUIRETLS") {
    if (p.has_value) {
      return BadArgument("REQUIRETLS parameter takes no value");
    }
    mail->requiretls = true;
    return std::nullopt;
  }
  if (p.keyword == "RET") {
    if (auto e = RequireValue(p)) {
      return e;
    }
    if (absl::EqualsIgnoreCase(p.value, "FULL")) {
      mail->ret = DsnRet::kFull;
    } else if (absl::EqualsIgnoreCase(p.value, "HDRS")) {
      mail->ret = DsnRet::kHdrs;
    } else {
      return BadArgument("Bad RET parameter");
    }
    return std::nullopt;
  }
  if (p.keyword == "ENVID") {
    if (auto e = RequireValue(p)) {
      return e;
    }
    std::string decoded;
    if (!DecodeXtext(p.value, &decoded) || decoded.size() > kMaxEnvidLength || HasControlCharacters(decoded)) {
      return BadArgument("Bad ENVID parameter");
    }
    mail->envid = std::move(decoded);
    return std::nullopt;
  }
  if (p.keyword == "AUTH") {
    if (auto e = RequireValue(p)) {
      return e;
    }
    // RFC 4954 §5: AUTH=<> or an xtext-encoded mailbox.
    std::string decoded;
    if (!DecodeXtext(p.value, &decoded) || HasControlCharacters(decoded) || decoded.size() > 500) {
      return BadArgument("Bad AUTH parameter");
    }
    mail->auth = std::move(decoded);
    return std::nullopt;
  }
  return UnknownParameter(absl::StrCat("Unsupported parameter ", p.keyword));
}

std::optional<CommandError> ApplyRcptParameter(const EsmtpParameter& p, RcptParameters* rcpt) {
  if (p.keyword == "NOTIFY") {
    if (auto e = RequireValue(p)) {
      return e;
    }
    uint32_t bits = 0;
    for (absl::string_view word : absl::StrSplit(p.value, ',')) {
      uint32_t bit = 0;
      if (absl::EqualsIgnoreCase(word, "SUCCESS")) {
        bit = kNotifySuccess;
      } else if (absl::EqualsIgnoreCase(word, "FAILURE")) {
        bit = kNotifyFailure;
      } else if (absl::EqualsIgnoreCase(word, "DELAY")) {
        bit = kNotifyDelay;
      } else if (absl::EqualsIgnoreCase(word, "NEVER")) {
        bit = kNotifyNever;
      } else {
        return BadArgument("Bad NOTIFY parameter");
      }
      if (bits & bit) {
        return BadArgument("Bad NOTIFY parameter");
      }
      bits |= bit;
    }
    // NEVER must stand alone (RFC 3461 §4.1).
    if ((bits & kNotifyNever) && bits != kNotifyNever) {
      return BadArgument("Bad NOTIFY parameter: NEVER with other values");
    }
    rcpt->notify = bits;
    return std::nullopt;
  }
  if (p.keyword == "ORCPT") {
    if (auto e = RequireValue(p)) {
      return e;
    }
    // orcpt-parameter = "ORCPT=" original-recipient-address
    // original-recipient-address = addr-type ";" xtext
    const size_t semi = p.value.find(';');
    if (semi == std::string::npos || semi == 0 || semi + 1 == p.value.size() || p.value.size() > kMaxOrcptLength) {
      return BadArgument("Bad ORCPT parameter");
    }
    const absl::string_view type = absl::string_view(p.value).substr(0, semi);
    for (char c : type) {
      if (!IsKeywordChar(c)) {
        return BadArgument("Bad ORCPT parameter");
      }
    }
    std::string decoded;
    if (!DecodeXtext(absl::string_view(p.value).substr(semi + 1), &decoded) || HasControlCharacters(decoded)) {
      return BadArgument("Bad ORCPT parameter");
    }
    rcpt->orcpt = absl::StrCat(type, ";", decoded);
    return std::nullopt;
  }
  return UnknownParameter(absl::StrCat("Unsupported parameter ", p.keyword));
}

ParseResult ParseMail(Command cmd, const ParseContext& context) {
  constexpr absl::string_view kFrom = "FROM:";
  if (!absl::StartsWithIgnoreCase(cmd.argument, kFrom)) {
    return BadArgument("Syntax: MAIL FROM:<address>");
  }
  absl::string_view rest = absl::string_view(cmd.argument).substr(kFrom.size());
  while (!rest.empty() && rest.front() == ' ') {
    rest.remove_prefix(1);
  }
  if (rest.empty()) {
    return BadArgument("Syntax: MAIL FROM:<address>");
  }
  address::PathOptions options;
  options.allow_null = true;
  options.allow_missing_brackets = true;
  // Whether UTF-8 is allowed depends on SMTPUTF8, which follows the path:
  // accept it here and check once the parameters are known.
  options.smtputf8 = true;
  auto path = address::ParsePathPrefix(rest, options);
  if (!path.ok()) {
    return Error(553, "5.1.7", absl::StrCat("Bad sender address syntax: ", path.status().message()));
  }
  rest.remove_prefix(path->consumed);
  if (!rest.empty() && rest.front() != ' ') {
    return Error(553, "5.1.7", "Bad sender address syntax: unexpected text after address");
  }
  if (auto e = SplitParameters(rest, &cmd.parameters)) {
    return *e;
  }
  if (!context.esmtp && !cmd.parameters.empty()) {
    return UnknownParameter("ESMTP parameters need EHLO");
  }
  for (const EsmtpParameter& p : cmd.parameters) {
    if (auto e = ApplyMailParameter(p, &cmd.mail)) {
      return *e;
    }
  }
  if (path->non_ascii && !cmd.mail.smtputf8) {
    return Error(553, "5.6.7", "Non-ASCII sender address needs SMTPUTF8");
  }
  cmd.path = std::move(path->mailbox);
  cmd.path_non_ascii = path->non_ascii;
  return cmd;
}

ParseResult ParseRcpt(Command cmd, const ParseContext& context) {
  constexpr absl::string_view kTo = "TO:";
  if (!absl::StartsWithIgnoreCase(cmd.argument, kTo)) {
    return BadArgument("Syntax: RCPT TO:<address>");
  }
  absl::string_view rest = absl::string_view(cmd.argument).substr(kTo.size());
  while (!rest.empty() && rest.front() == ' ') {
    rest.remove_prefix(1);
  }
  if (rest.empty()) {
    return BadArgument("Syntax: RCPT TO:<address>");
  }
  address::PathOptions options;
  options.allow_postmaster = true;
  options.allow_missing_brackets = true;
  options.smtputf8 = context.smtputf8;
  auto path = address::ParsePathPrefix(rest, options);
  if (!path.ok()) {
    if (path.status().code() == absl::StatusCode::kFailedPrecondition) {
      return Error(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8");
    }
    return Error(501, "5.1.3", absl::StrCat("Bad recipient address syntax: ", path.status().message()));
  }
  rest.remove_prefix(path->consumed);
  if (!rest.empty() && rest.front() != ' ') {
    return Error(501, "5.1.3", "Bad recipient address syntax: unexpected text after address");
  }
  if (auto e = SplitParameters(rest, &cmd.parameters)) {
    return *e;
  }
  if (!context.esmtp && !cmd.parameters.empty()) {
    return UnknownParameter("ESMTP parameters need EHLO");
  }
  for (const EsmtpParameter& p : cmd.parameters) {
    if (auto e = ApplyRcptParameter(p, &cmd.rcpt)) {
      return *e;
    }
  }
  cmd.path = std::move(path->mailbox);
  cmd.path_non_ascii = path->non_ascii;
  return cmd;
}

// BDAT chunk-size [SP end-marker] (RFC 3030 §2).
ParseResult ParseBdat(Command cmd) {
  const std::vector<absl::string_view> words = absl::StrSplit(cmd.argument, ' ', absl::SkipEmpty());
  if (words.empty() || words.size() > 2 || words[0].size() > 18) {
    return BadArgument("Syntax: BDAT size [LAST]");
  }
  uint64_t size = 0;
  for (char c : words[0]) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return BadArgument("Syntax: BDAT size [LAST]");
    }
    size = size * 10 + static_cast<uint64_t>(c - '0');
  }
  if (words.size() == 2) {
    if (!absl::EqualsIgnoreCase(words[1], "LAST")) {
      return BadArgument("Syntax: BDAT size [LAST]");
    }
    cmd.bdat_last = true;
  }
  cmd.bdat_size = size;
  return cmd;
}

// AUTH mechanism [SP initial-response] (RFC 4954 §4).
ParseResult ParseAuth(Command cmd) {
  const std::vector<absl::string_view> words = absl::StrSplit(cmd.argument, ' ', absl::SkipEmpty());
  if (words.empty() || words.size() > 2 || words[0].size() > 20) {
    return BadArgument("Syntax: AUTH mechanism [initial-response]");
  }
  for (char c : words[0]) {
    // sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA / DIGIT / HYPHEN / UNDERSCORE
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return BadArgument("Syntax: AUTH mechanism [initial-response]");
    }
  }
  cmd.auth_mechanism = absl::AsciiStrToUpper(words[0]);
  if (words.size() == 2) {
    cmd.auth_initial = std::string(words[1]);
  }
  return cmd;
}

}  // namespace

const char* VerbName(Verb verb) {
  for (const VerbEntry& e : kVerbs) {
    if (e.verb == verb) {
      return e.name.data();
    }
  }
  return "UNKNOWN";
}

std::string CommandError::ToString() const { return absl::StrCat(code, " ", enhanced, " ", text, "\r\n"); }

bool DecodeXtext(absl::string_view text, std::string* out) {
  out->clear();
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '+') {
      // hexchar = "+" 2(%x30-39 / %x41-46): upper-case hex only.
      if (i + 2 >= text.size()) {
        return false;
      }
      int value = 0;
      for (size_t k = 1; k <= 2; ++k) {
        const char h = text[i + k];
        if (h >= '0' && h <= '9') {
          value = value * 16 + (h - '0');
        } else if (h >= 'A' && h <= 'F') {
          value = value * 16 + (h - 'A' + 10);
        } else {
          return false;
        }
      }
      out->push_back(static_cast<char>(value));
      i += 2;
      continue;
    }
    // xchar = %d33-42 / %d44-60 / %d62-126 (printable ASCII but "+" and "=").
    if (c < 33 || c > 126 || c == '=') {
      return false;
    }
    out->push_back(static_cast<char>(c));
  }
  return true;
}

ParseResult ParseCommand(absl::string_view line, const ParseContext& context) {
  if (HasControlCharacters(line)) {
    return SyntaxError("Syntax error: control characters in command");
  }
  absl::string_view text = absl::StripTrailingAsciiWhitespace(line);
  if (absl::StripLeadingAsciiWhitespace(text).empty()) {
    return SyntaxError("Syntax error: empty command");
  }
  const size_t space = text.find(' ');
  const absl::string_view verb_text = text.substr(0, space);
  absl::string_view argument = space == absl::string_view::npos ? absl::string_view() : text.substr(space + 1);
  argument = absl::StripLeadingAsciiWhitespace(argument);

  Command cmd;
  cmd.verb_text = std::string(verb_text);
  cmd.argument = std::string(argument);
  for (const VerbEntry& e : kVerbs) {
    if (absl::EqualsIgnoreCase(verb_text, e.name)) {
      cmd.verb = e.verb;
      break;
    }
  }

  switch (cmd.verb) {
    case Verb::kUnknown:
      return SyntaxError("Error: command not recognized");
    case Verb::kEhlo:
    case Verb::kHelo:
      if (cmd.argument.empty()) {
        return BadArgument(absl::StrCat("Syntax: ", VerbName(cmd.verb), " hostname"));
      }
      return cmd;
    case Verb::kMail:
      return ParseMail(std::move(cmd), context);
    case Verb::kRcpt:
      return ParseRcpt(std::move(cmd), context);
    case Verb::kData:
    case Verb::kRset:
    case Verb::kQuit:
    case Verb::kStarttls:
      if (!cmd.argument.empty()) {
        return BadArgument(absl::StrCat("Syntax: ", VerbName(cmd.verb)));
      }
      return cmd;
    case Verb::kVrfy:
      if (cmd.argument.empty()) {
        return BadArgument(absl::StrCat("Syntax: ", VerbName(cmd.verb), " argument"));
      }
      return cmd;
    case Verb::kAuth:
      return ParseAuth(std::move(cmd));
    case Verb::kBdat:
      return ParseBdat(std::move(cmd));
    case Verb::kNoop:
    case Verb::kHelp:
      return cmd;
  }
  return SyntaxError("Error: command not recognized");
}

}  // namespace tern::smtp
