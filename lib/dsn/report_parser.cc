// File: report_parser.cc
#include "lib/dsn/report_parser.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "lib/mime/header.h"

namespace tern::dsn {
namespace {

// The `name` parameter of a Content-Type value (quotes removed), or "".
// Boundaries cannot hold ';' (RFC 2046 bchars), but a quoted value of some
// other parameter could, so quotes are respected while splitting.
std::string ContentTypeParameter(absl::string_view value, absl::string_view name) {
  std::vector<std::string> params;
  std::string current;
  bool quoted = false;
  for (char c : value) {
    if (c == '"') {
      quoted = !quoted;
    }
    if (c == ';' && !quoted) {
      params.push_back(current);
      current.clear();
    } else {
      current.push_back(c);
    }
  }
  params.push_back(current);
  for (size_t i = 1; i < params.size(); ++i) {
    absl::string_view p = absl::StripAsciiWhitespace(params[i]);
    const size_t eq = p.find('=');
    if (eq == absl::string_view::npos ||
        !absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(p.substr(0, eq)), name)) {
      continue;
    }
    absl::string_view v = absl::StripAsciiWhitespace(p.substr(eq + 1));
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') {
      v = v.substr(1, v.size() - 2);
    }
    return std::string(v);
  }
  return "";
}

// The media type of a Content-Type value, lower case, without parameters.
std::string MediaType(absl::string_view value) {
  const size_t semi = value.find(';');
  return absl::AsciiStrToLower(absl::StripAsciiWhitespace(value.substr(0, semi)));
}

// The body parts of a multipart body with `boundary` (RFC 2046 §5.1.1): the
// text between delimiter lines, each without the CRLF that belongs to the
// next delimiter. The preamble and epilogue are not parts.
std::vector<absl::string_view> MultipartParts(absl::string_view body, absl::string_view boundary) {
  const std::string delimiter = absl::StrCat("--", boundary);
  std::vector<absl::string_view> parts;
  std::optional<size_t> part_start;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t nl = body.find('\n', pos);
    const size_t end = nl == absl::string_view::npos ? body.size() : nl;
    absl::string_view line = body.substr(pos, end - pos);
    line = absl::StripTrailingAsciiWhitespace(line);  // CR and transport padding
    if (absl::StartsWith(line, delimiter)) {
      const absl::string_view rest = line.substr(delimiter.size());
      if (rest.empty() || rest == "--") {
        if (part_start) {
          size_t part_end = pos;  // the line break before the delimiter is the delimiter's
          if (part_end > *part_start && body[part_end - 1] == '\n') {
            --part_end;
            if (part_end > *part_start && body[part_end - 1] == '\r') {
              --part_end;
            }
          }
          parts.push_back(body.substr(*part_start, part_end - *part_start));
        }
        if (rest == "--") {
          return parts;
        }
        part_start = nl == absl::string_view::npos ? body.size() : nl + 1;
      }
    }
    if (nl == absl::string_view::npos) {
      break;
    }
    pos = nl + 1;
  }
  return parts;  // unclosed: what was delimited so far
}

// "type;value" → value (trimmed); no semicolon → the whole value.
absl::string_view AfterType(absl::string_view value, std::string* type = nullptr) {
  const size_t semi = value.find(';');
  if (semi == absl::string_view::npos) {
    if (type != nullptr) {
      type->clear();
    }
    return absl::StripAsciiWhitespace(value);
  }
  if (type != nullptr) {
    *type = absl::AsciiStrToLower(absl::StripAsciiWhitespace(value.substr(0, semi)));
  }
  return absl::StripAsciiWhitespace(value.substr(semi + 1));
}

// RFC 6533 §3 utf-8-addr-xtext back to UTF-8: each \x{HEX} becomes its
// code point; anything else is kept as it is.
std::string DecodeUtf8AddrXtext(absl::string_view text) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    if (text.substr(i, 3) == "\\x{") {
      const size_t close = text.find('}', i + 3);
      uint32_t cp = 0;
      if (close != absl::string_view::npos && close - (i + 3) >= 1 && close - (i + 3) <= 6 &&
          absl::SimpleHexAtoi(text.substr(i + 3, close - (i + 3)), &cp) && cp <= 0x10FFFF) {
        mime::AppendUtf8(cp, out);
        i = close + 1;
        continue;
      }
    }
    out.push_back(text[i]);
    ++i;
  }
  return out;
}

// Runs of spaces and tabs (what folding leaves in a long diagnostic) as one
// space.
std::string SquashBlanks(absl::string_view text) {
  std::string out;
  for (char c : text) {
    const bool blank = c == ' ' || c == '\t';
    if (blank && (out.empty() || out.back() == ' ')) {
      continue;
    }
    out.push_back(blank ? ' ' : c);
  }
  return std::string(absl::StripTrailingAsciiWhitespace(out));
}

// An address field ("rfc822;a@b", "utf-8;j\x{F6}rg@b"): the address.
std::string AddressOf(absl::string_view value) {
  std::string type;
  const absl::string_view address = AfterType(value, &type);
  return type == "utf-8" ? DecodeUtf8AddrXtext(address) : std::string(address);
}

std::optional<absl::Time> ParseDate(absl::string_view value) {
  const std::string text(absl::StripAsciiWhitespace(value));
  for (const char* format : {"%a, %d %b %Y %H:%M:%S %z", "%d %b %Y %H:%M:%S %z"}) {
    absl::Time t;
    std::string err;
    if (absl::ParseTime(format, text, &t, &err)) {
      return t;
    }
  }
  return std::nullopt;
}

std::optional<Action> ParseAction(absl::string_view value) {
  // An action may carry a comment: "failed (bad address)".
  const absl::string_view word = absl::StripAsciiWhitespace(value.substr(0, value.find_first_of(" \t(")));
  for (Action a : {Action::kFailed, Action::kDelayed, Action::kDelivered, Action::kRelayed, Action::kExpanded}) {
    if (absl::EqualsIgnoreCase(word, ActionName(a))) {
      return a;
    }
  }
  return std::nullopt;
}

// The groups of a delivery-status body: runs of non-empty lines, each
// joined back into a header block.
std::vector<std::string> FieldGroups(absl::string_view body) {
  std::vector<std::string> groups;
  std::string current;
  mime::ForEachLine(body, [&](absl::string_view line) {
    if (absl::StripAsciiWhitespace(line).empty()) {
      if (!current.empty()) {
        groups.push_back(std::move(current));
        current.clear();
      }
      return;
    }
    absl::StrAppend(&current, line, "\r\n");
  });
  if (!current.empty()) {
    groups.push_back(std::move(current));
  }
  return groups;
}

absl::StatusOr<RecipientStatus> ParseRecipientGroup(absl::string_view group) {
  RecipientStatus r;
  bool have_final = false;
  bool have_action = false;
  for (const mime::HeaderField& f : mime::ParseHeaderFields(group)) {
    const std::string value = mime::Unfold(f.raw_value);
    const std::string name = absl::AsciiStrToLower(f.name);
    if (name == "final-recipient") {
      r.final_recipient = AddressOf(value);
      // Blank once rendered (control characters become spaces) is no address.
      have_final = !absl::StripAsciiWhitespace(mime::CollapseToOneLine(r.final_recipient)).empty();
    } else if (name == "original-recipient") {
      std::string type;
      const std::string address = AddressOf(value);
      AfterType(value, &type);
      r.original_recipient = absl::StrCat(type.empty() ? "rfc822" : type, ";", address);
    } else if (name == "action") {
      std::optional<Action> action = ParseAction(value);
      if (!action) {
        return absl::InvalidArgumentError(absl::StrCat("unknown Action \"", value, "\""));
      }
      r.action = *action;
      have_action = true;
    } else if (name == "status") {
      r.status = std::string(absl::StripAsciiWhitespace(value.substr(0, value.find_first_of(" \t("))));
    } else if (name == "remote-mta") {
      r.remote_mta = std::string(AfterType(value));
    } else if (name == "diagnostic-code") {
      std::string type;
      const absl::string_view diagnostic = AfterType(value, &type);
      int code = 0;
      if (type == "smtp" && diagnostic.size() >= 3 && absl::SimpleAtoi(diagnostic.substr(0, 3), &code) &&
          code >= 200 && code <= 599 && (diagnostic.size() == 3 || diagnostic[3] == ' ' || diagnostic[3] == '-')) {
        r.reply_code = code;
        r.reply_text = SquashBlanks(diagnostic.substr(3));
      } else {
        r.reply_text = SquashBlanks(diagnostic);
      }
    } else if (name == "last-attempt-date") {
      r.last_attempt = ParseDate(value);
    } else if (name == "will-retry-until") {
      r.will_retry_until = ParseDate(value);
    }
  }
  if (!have_final) {
    return absl::InvalidArgumentError("a recipient group has no Final-Recipient");
  }
  if (!have_action) {
    return absl::InvalidArgumentError(absl::StrCat("no Action for ", r.final_recipient));
  }
  return r;
}

}  // namespace

absl::StatusOr<DeliveryReport> ParseDeliveryReport(absl::string_view message) {
  const mime::HeaderBlock top = mime::SplitHeaderBlock(message);
  const std::string content_type = mime::GetHeader(top.headers, "Content-Type").value_or("");
  if (MediaType(content_type) != "multipart/report") {
    return absl::InvalidArgumentError(
        absl::StrCat("not a multipart/report (Content-Type \"", mime::CollapseToOneLine(content_type), "\")"));
  }
  const std::string boundary = ContentTypeParameter(content_type, "boundary");
  if (boundary.empty()) {
    return absl::InvalidArgumentError("multipart/report without a boundary");
  }
  std::optional<absl::string_view> status_body;
  for (absl::string_view part : MultipartParts(top.body, boundary)) {
    const mime::HeaderBlock block = mime::SplitHeaderBlock(part);
    // A part without header fields is text/plain (RFC 2046 §5.1.1).
    const std::string type = block.has_separator
                                 ? MediaType(mime::GetHeader(block.headers, "Content-Type").value_or("text/plain"))
                                 : "text/plain";
    if (type == "message/delivery-status" || type == "message/global-delivery-status") {
      status_body = block.body;
      break;
    }
  }
  if (!status_body) {
    return absl::InvalidArgumentError("no message/delivery-status part");
  }
  const std::vector<std::string> groups = FieldGroups(*status_body);
  if (groups.size() < 2) {
    return absl::InvalidArgumentError("the delivery-status part reports on no recipient");
  }
  DeliveryReport report;
  for (const mime::HeaderField& f : mime::ParseHeaderFields(groups[0])) {
    const std::string value = mime::Unfold(f.raw_value);
    if (absl::EqualsIgnoreCase(f.name, "Original-Envelope-Id")) {
      report.envid = value;
    } else if (absl::EqualsIgnoreCase(f.name, "Reporting-MTA")) {
      report.reporting_mta = std::string(AfterType(value));
    } else if (absl::EqualsIgnoreCase(f.name, "Arrival-Date")) {
      report.arrival = ParseDate(value);
    }
  }
  bool any_failed = false;
  bool any_delayed = false;
  for (size_t i = 1; i < groups.size(); ++i) {
    absl::StatusOr<RecipientStatus> r = ParseRecipientGroup(groups[i]);
    if (!r.ok()) {
      return r.status();
    }
    any_failed = any_failed || r->action == Action::kFailed;
    any_delayed = any_delayed || r->action == Action::kDelayed;
    report.recipients.push_back(*std::move(r));
  }
  report.kind = any_failed ? ReportKind::kFailed : any_delayed ? ReportKind::kDelayed : ReportKind::kDelivered;
  return report;
}

}  // namespace tern::dsn
