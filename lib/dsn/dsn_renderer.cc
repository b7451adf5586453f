#include "lib/dsn/dsn_renderer.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "lib/mime/header.h"
#include "lib/mime/quoted_printable.h"

namespace tern::dsn {
namespace {

using mime::CollapseToOneLine;
using mime::FormatHeaderField;
using mime::FormatRfc5322Date;
using mime::HeaderText;

constexpr char kCrlf[] = "\r\n";
// A boundary starting with "=_" cannot occur in quoted-printable or base64
// text, which makes a clash with quoted content even less likely.
constexpr absl::string_view kBoundaryPrefix = "=_tern-";
constexpr int kBoundaryAttempts = 8;
// Longest msg-id taken over from the original into References.
constexpr size_t kMaxMsgIdLength = 900;

using Values = std::map<std::string, std::string, std::less<>>;

bool IsWsp(char c) { return c == ' ' || c == '\t'; }

absl::string_view Trim(absl::string_view s) {
  while (!s.empty() && IsWsp(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && IsWsp(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

// Fields of the DSN that Tern writes itself; a template may not set them.
bool IsOwnedField(absl::string_view name) {
  return absl::EqualsIgnoreCase(name, "MIME-Version") || absl::StartsWithIgnoreCase(name, "Content-") ||
         absl::EqualsIgnoreCase(name, "References") || absl::EqualsIgnoreCase(name, "In-Reply-To");
}

// Fields whose value is a msg-id or a date, not free text.
bool IsStructuredField(absl::string_view name) {
  return absl::EqualsIgnoreCase(name, "Message-Id") || absl::EqualsIgnoreCase(name, "Date");
}

bool LooksLikeHeaderLine(absl::string_view line) {
  size_t colon = line.find(':');
  return colon != absl::string_view::npos && mime::IsValidFieldName(line.substr(0, colon));
}

// Replaces each {name} (name = letters, digits, '_') by its value; an unknown
// name or an empty value becomes "?" as in Haraka. Other braces stay.
std::string Substitute(absl::string_view line, const Values& values) {
  std::string out;
  size_t i = 0;
  while (i < line.size()) {
    if (line[i] == '{') {
      size_t j = i + 1;
      while (j < line.size() && (absl::ascii_isalnum(line[j]) || line[j] == '_')) {
        ++j;
      }
      if (j > i + 1 && j < line.size() && line[j] == '}') {
        auto it = values.find(line.substr(i + 1, j - i - 1));
        out += (it == values.end() || it->second.empty()) ? "?" : it->second;
        i = j + 1;
        continue;
      }
    }
    out.push_back(line[i]);
    ++i;
  }
  return out;
}

// Splits a text line longer than 998 bytes, preferring the last space in the
// second half of the allowed length, else at a UTF-8 character boundary.
void AppendWrappedLine(absl::string_view line, std::string& out) {
  while (line.size() > mime::kMaxLineLength) {
    size_t cut = mime::kMaxLineLength;
    size_t space = line.rfind(' ', cut - 1);
    if (space != absl::string_view::npos && space >= cut / 2) {
      cut = space;
    } else {
      while (cut > 1 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) {
        --cut;
      }
    }
    absl::StrAppend(&out, line.substr(0, cut), kCrlf);
    line.remove_prefix(cut);
    if (!line.empty() && line.front() == ' ' && cut != mime::kMaxLineLength) {
      line.remove_prefix(1);  // the space we broke at
    }
  }
  absl::StrAppend(&out, line, kCrlf);
}

// The original, ready to be a MIME part body: CRLF line ends, a bare CR made
// a space, no line over 998 bytes (a long header line is folded, a long body
// line broken), and a final CRLF.
std::string NormalizeAttachment(absl::string_view original) {
  std::string out;
  out.reserve(original.size() + original.size() / 32 + 2);
  bool in_headers = true;
  mime::ForEachLine(original, [&](absl::string_view raw) {
    std::string line(raw);
    for (char& c : line) {
      if (c == '\r') {
        c = ' ';
      }
    }
    if (line.empty()) {
      in_headers = false;
    }
    absl::string_view rest = line;
    bool first = true;
    while (rest.size() > mime::kMaxLineLength) {
      size_t take = (in_headers && !first) ? mime::kMaxLineLength - 1 : mime::kMaxLineLength;
      absl::StrAppend(&out, (in_headers && !first) ? " " : "", rest.substr(0, take), kCrlf);
      rest.remove_prefix(take);
      first = false;
    }
    absl::StrAppend(&out, (in_headers && !first) ? " " : "", rest, kCrlf);
  });
  return out;
}

// RFC 6533 §3 utf-8-addr-xtext: QCHARs as they are, anything else \x{HEX}.
std::string Utf8AddrXtext(absl::string_view address) {
  std::string valid = mime::ToValidUtf8(address);
  std::string out;
  size_t i = 0;
  while (i < valid.size()) {
    unsigned char c = static_cast<unsigned char>(valid[i]);
    uint32_t cp;
    size_t len;
    if (c < 0x80) {
      cp = c, len = 1;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F, len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F, len = 3;
    } else {
      cp = c & 0x07, len = 4;
    }
    for (size_t k = 1; k < len && i + k < valid.size(); ++k) {
      cp = (cp << 6) | (static_cast<unsigned char>(valid[i + k]) & 0x3F);
    }
    bool qchar = (cp >= 0x21 && cp <= 0x2a) || (cp >= 0x2c && cp <= 0x3c) || (cp >= 0x3e && cp <= 0x5b) ||
                 (cp >= 0x5d && cp <= 0x7e);
    if (qchar) {
      out.push_back(static_cast<char>(cp));
    } else {
      absl::StrAppend(&out, "\\x{", absl::StrFormat("%X", cp), "}");
    }
    i += len;
  }
  return out;
}

// "rfc822;addr", or "utf-8;<xtext>" for an internationalised address.
std::string TypedAddress(absl::string_view type, absl::string_view address) {
  std::string addr = CollapseToOneLine(address);
  if (mime::IsAscii(addr) && (type.empty() || !absl::EqualsIgnoreCase(type, "utf-8"))) {
    return absl::StrCat(type.empty() ? "rfc822" : type, ";", addr);
  }
  return absl::StrCat("utf-8;", Utf8AddrXtext(addr));
}

std::string OriginalRecipientValue(absl::string_view orcpt) {
  size_t semi = orcpt.find(';');
  if (semi == absl::string_view::npos) {
    return TypedAddress("", orcpt);
  }
  absl::string_view type = Trim(orcpt.substr(0, semi));
  bool type_ok = !type.empty();
  for (char c : type) {
    if (!absl::ascii_isalnum(c) && c != '-') {
      type_ok = false;
    }
  }
  return TypedAddress(type_ok ? type : "rfc822", Trim(orcpt.substr(semi + 1)));
}

// The first "<...>" of `value` when it is a plausible msg-id (printable
// ASCII, no spaces or angle brackets inside), else "".
std::string ExtractMsgId(absl::string_view value) {
  size_t open = value.find('<');
  if (open == absl::string_view::npos) {
    return "";
  }
  size_t close = value.find('>', open + 1);
  if (close == absl::string_view::npos || close == open + 1 || close - open + 1 > kMaxMsgIdLength) {
    return "";
  }
  absl::string_view inner = value.substr(open + 1, close - open - 1);
  for (char c : inner) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '<') {
      return "";
    }
  }
  return std::string(value.substr(open, close - open + 1));
}

// A token is used in a boundary and a msg-id: keep it to safe characters.
std::string SafeToken(absl::string_view token) {
  std::string out;
  for (char c : token) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_') {
      out.push_back(c);
    }
  }
  return out;
}

// The human-readable reason for one recipient: reply code, status (unless
// the reply text already starts with a status code) and text.
std::string ReasonFor(const RecipientStatus& r, absl::string_view status) {
  const std::string collapsed = CollapseToOneLine(r.reply_text);
  const std::string text(Trim(collapsed));
  std::vector<std::string> parts;
  if (r.reply_code != 0) {
    parts.push_back(absl::StrCat(r.reply_code));
  }
  size_t first_space = text.find(' ');
  absl::string_view first_word = absl::string_view(text).substr(0, first_space);
  if (!IsValidStatusCode(first_word)) {
    parts.push_back(std::string(status));
  }
  if (!text.empty()) {
    parts.push_back(text);
  }
  return absl::StrJoin(parts, " ");
}

absl::string_view DefaultSubject(ReportKind kind) {
  switch (kind) {
    case ReportKind::kDelayed:
      return "Delayed Mail (still being retried)";
    case ReportKind::kDelivered:
      return "Successful Mail Delivery Report";
    case ReportKind::kFailed:
      break;
  }
  return "Undelivered Mail Returned to Sender";
}

// & < > " ' as entities: a value quoted into HTML can add no markup.
std::string HtmlEscape(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

// Splits template text into lines (LF or CRLF ends).
std::vector<absl::string_view> SplitLines(absl::string_view text) {
  std::vector<absl::string_view> lines;
  mime::ForEachLine(text, [&](absl::string_view line) { lines.push_back(line); });
  return lines;
}

// A leaf text part ("text/plain" or "text/html") holding `body` (CRLF
// lines): us-ascii 7bit when it can be, else utf-8 quoted-printable, so the
// human-readable parts never make the DSN 8-bit.
std::string TextPart(absl::string_view subtype, const std::string& body) {
  const bool ascii = mime::IsAscii(body);
  const bool encode = !ascii || mime::HasLineLongerThan(body, mime::kMaxLineLength);
  return absl::StrCat(
      FormatHeaderField("Content-Type", absl::StrCat("text/", subtype, "; charset=", ascii ? "us-ascii" : "utf-8"),
                        HeaderText::kAsciiStructured),
      FormatHeaderField("Content-Transfer-Encoding", encode ? "quoted-printable" : "7bit",
                        HeaderText::kAsciiStructured),
      kCrlf, encode ? mime::QuotedPrintableEncode(body) : body);
}

// A multipart body part: its Content-Type (with `params` before the
// boundary), then each part after a delimiter, then the close delimiter.
// Each part ends with CRLF; the CRLF before a delimiter belongs to the
// delimiter (RFC 2046 §5.1.1), so a part keeps its own final line break.
std::string MultipartPart(absl::string_view subtype, absl::string_view params, absl::string_view boundary,
                          const std::vector<const std::string*>& parts) {
  std::string out = FormatHeaderField(
      "Content-Type", absl::StrCat("multipart/", subtype, "; ", params, "boundary=\"", boundary, "\""),
      HeaderText::kAsciiStructured);
  // The first kCrlf ends the header block; later ones start a delimiter.
  for (const std::string* part : parts) {
    absl::StrAppend(&out, kCrlf, "--", boundary, kCrlf, *part);
  }
  absl::StrAppend(&out, kCrlf, "--", boundary, "--", kCrlf);
  return out;
}

}  // namespace

absl::StatusOr<HtmlTemplate> HtmlTemplate::Parse(absl::string_view text, absl::string_view name) {
  if (mime::ToValidUtf8(text) != text) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": the template is not valid UTF-8"));
  }
  HtmlTemplate tmpl;
  for (absl::string_view line : SplitLines(text)) {
    tmpl.lines_.emplace_back(line);
    if (!Trim(line).empty()) {
      tmpl.has_content_ = true;
    }
  }
  return tmpl;
}

absl::StatusOr<InlinePart> InlinePart::Parse(absl::string_view text, absl::string_view name) {
  auto error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", what));
  };
  if (!mime::IsAscii(text)) {
    return error("the part must be 7-bit text (encode the data as base64)");
  }
  std::vector<absl::string_view> lines = SplitLines(text);
  while (!lines.empty() && Trim(lines.back()).empty()) {
    lines.pop_back();
  }
  InlinePart part;
  bool in_headers = true;
  bool saw_field = false;
  std::string headers;
  for (size_t i = 0; i < lines.size(); ++i) {
    absl::string_view line = lines[i];
    if (line.size() > mime::kMaxLineLength) {
      return error(absl::StrCat("line ", i + 1, " is longer than 998 characters"));
    }
    if (in_headers) {
      if (line.empty()) {
        in_headers = false;
      } else if (IsWsp(line[0]) ? !saw_field : !LooksLikeHeaderLine(line)) {
        return error(absl::StrCat("line ", i + 1, ": expected a header field (\"Name: value\") before the first empty line"));
      } else {
        saw_field = true;
        absl::StrAppend(&headers, line, kCrlf);
      }
    }
    for (char c : line) {
      if (static_cast<unsigned char>(c) < 0x20 && c != '\t') {
        return error(absl::StrCat("line ", i + 1, " holds a control character"));
      }
    }
    absl::StrAppend(&part.part_, line, kCrlf);
  }
  if (in_headers || !saw_field) {
    return error("expected MIME header fields, an empty line, then the encoded data");
  }
  std::optional<std::string> type = mime::GetHeader(headers, "Content-Type");
  if (!type || type->empty()) {
    return error("the part has no Content-Type");
  }
  std::string cte = absl::AsciiStrToLower(mime::GetHeader(headers, "Content-Transfer-Encoding").value_or("7bit"));
  if (cte != "base64" && cte != "quoted-printable" && cte != "7bit") {
    return error(absl::StrCat("Content-Transfer-Encoding \"", cte, "\" is not base64, quoted-printable or 7bit"));
  }
  std::string cid = ExtractMsgId(mime::GetHeader(headers, "Content-ID").value_or(""));
  if (cid.size() < 3) {
    return error("the part needs a Content-ID (e.g. \"Content-ID: <logo.png>\") for the HTML to refer to");
  }
  part.content_id_ = cid.substr(1, cid.size() - 2);
  return part;
}

absl::StatusOr<DsnTemplate> DsnTemplate::Parse(absl::string_view text, absl::string_view name) {
  if (mime::ToValidUtf8(text) != text) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": the template is not valid UTF-8"));
  }
  const std::vector<absl::string_view> lines = SplitLines(text);

  DsnTemplate tmpl;
  size_t i = 0;
  if (!lines.empty() && lines[0].empty()) {
    i = 1;  // an empty first line: no header section, as in Haraka
  } else if (!lines.empty() && LooksLikeHeaderLine(lines[0])) {
    bool dropping = false;
    for (; i < lines.size() && !lines[i].empty(); ++i) {
      absl::string_view line = lines[i];
      if (IsWsp(line[0])) {
        if (!dropping) {
          absl::StrAppend(&tmpl.headers_.back().value, " ", Trim(line));
        }
        continue;
      }
      if (!LooksLikeHeaderLine(line)) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, " line ", i + 1, ": expected a header field (\"Name: value\") before the first empty line"));
      }
      size_t colon = line.find(':');
      std::string field_name(line.substr(0, colon));
      dropping = IsOwnedField(field_name);
      if (dropping) {
        tmpl.dropped_headers_.push_back(field_name);
        continue;
      }
      tmpl.headers_.push_back(HeaderLine{field_name, std::string(Trim(line.substr(colon + 1)))});
    }
    if (i < lines.size()) {
      ++i;  // the empty line
    }
  }
  for (; i < lines.size(); ++i) {
    tmpl.body_lines_.emplace_back(lines[i]);
  }
  return tmpl;
}

absl::StatusOr<RenderedDsn> DsnRenderer::Render(const DeliveryReport& report, absl::Time now) const {
  if (report.recipients.empty()) {
    return absl::InvalidArgumentError("a DSN needs at least one recipient");
  }
  if (report.original_sender.empty()) {
    return absl::InvalidArgumentError("the original sender is <>: no DSN may be sent (double bounce)");
  }
  const std::string me = CollapseToOneLine(report.reporting_mta);
  const std::string sender = CollapseToOneLine(report.original_sender);
  const std::string date = FormatRfc5322Date(now);

  RenderedDsn out;
  out.message_id = absl::StrCat("<", SafeToken(new_token_()), "@", me, ">");

  // Placeholder values.
  std::vector<std::string> statuses;
  std::vector<std::string> rcpt_list;
  std::vector<std::string> reasons;         // distinct, in order
  std::vector<std::string> extended;        // one per recipient
  for (const RecipientStatus& r : report.recipients) {
    statuses.push_back(DeriveStatus(r));
    std::string addr = CollapseToOneLine(r.final_recipient);
    rcpt_list.push_back(absl::StrCat("<", addr, ">"));
    std::string reason = ReasonFor(r, statuses.back());
    if (std::find(reasons.begin(), reasons.end(), reason) == reasons.end()) {
      reasons.push_back(reason);
    }
    extended.push_back(absl::StrCat(addr, ": ", reason));
  }
  Values values = {
      {"pid", absl::StrCat(pid_)},
      {"date", date},
      {"me", me},
      {"from", "<>"},
      {"to", absl::StrCat("<", sender, ">")},
      {"msgid", out.message_id},
      {"recipients", absl::StrJoin(rcpt_list, ", ")},
      {"reason", absl::StrJoin(reasons, "; ")},
      {"extended_reason", absl::StrJoin(extended, "; ")},
      {"subject", std::string(Trim(CollapseToOneLine(mime::ToValidUtf8(report.original_subject))))},
  };
  for (auto& [key, value] : values) {
    value = CollapseToOneLine(value);
  }
  Values body_values = values;
  body_values["extended_reason"] = absl::StrJoin(extended, "\n");

  // Top-level header fields from the template, then the required ones it lacks.
  std::string headers;
  std::set<std::string> present;
  for (const DsnTemplate::HeaderLine& h : templates_.text.headers()) {
    std::string value = Substitute(h.value, values);
    present.insert(absl::AsciiStrToLower(h.name));
    headers += FormatHeaderField(h.name, value,
                                 IsStructuredField(h.name) ? HeaderText::kAsciiStructured : HeaderText::kUnstructured);
  }
  auto add_if_missing = [&](absl::string_view field, absl::string_view value, HeaderText text) {
    if (!present.count(absl::AsciiStrToLower(field))) {
      headers += FormatHeaderField(field, value, text);
    }
  };
  add_if_missing("Date", date, HeaderText::kAsciiStructured);
  add_if_missing("From", absl::StrCat("MAILER-DAEMON@", me), HeaderText::kUnstructured);
  add_if_missing("To", values["to"], HeaderText::kUnstructured);
  add_if_missing("Subject", DefaultSubject(report.kind), HeaderText::kUnstructured);
  add_if_missing("Message-Id", out.message_id, HeaderText::kAsciiStructured);
  add_if_missing("Auto-Submitted", "auto-replied", HeaderText::kAsciiStructured);

  // Part 1: the human-readable text (and HTML, and image).
  std::string text;
  for (const std::string& line : templates_.text.body_lines()) {
    std::string rendered = Substitute(line, body_values);
    size_t pos = 0;
    while (true) {
      size_t nl = rendered.find('\n', pos);
      AppendWrappedLine(absl::string_view(rendered).substr(pos, nl == std::string::npos ? std::string::npos : nl - pos),
                        text);
      if (nl == std::string::npos) {
        break;
      }
      pos = nl + 1;
    }
  }
  std::string text_part = TextPart("plain", text);
  std::string html_part;
  const bool with_html = templates_.html && templates_.html->has_content();
  const bool with_image = with_html && templates_.image;
  if (with_html) {
    Values html_values;
    for (const auto& [key, value] : values) {
      html_values[key] = HtmlEscape(value);
    }
    std::vector<std::string> escaped;
    for (const std::string& e : extended) {
      escaped.push_back(HtmlEscape(CollapseToOneLine(e)));
    }
    html_values["extended_reason"] = absl::StrJoin(escaped, "<br>\n");
    std::string html;
    for (const std::string& line : templates_.html->lines()) {
      std::string rendered = Substitute(line, html_values);
      for (absl::string_view piece : absl::StrSplit(rendered, '\n')) {
        absl::StrAppend(&html, piece, kCrlf);
      }
    }
    html_part = TextPart("html", html);
  }

  // Part 2: message/delivery-status.
  std::string status = FormatHeaderField("Content-Type", "message/delivery-status", HeaderText::kAsciiStructured);
  status += kCrlf;
  if (!report.envid.empty()) {
    status += FormatHeaderField("Original-Envelope-Id", report.envid, HeaderText::kAsciiStructured);
  }
  status += FormatHeaderField("Reporting-MTA", absl::StrCat("dns;", me), HeaderText::kAsciiStructured);
  if (report.arrival) {
    status += FormatHeaderField("Arrival-Date", FormatRfc5322Date(*report.arrival), HeaderText::kAsciiStructured);
  }
  for (size_t i = 0; i < report.recipients.size(); ++i) {
    const RecipientStatus& r = report.recipients[i];
    status += kCrlf;
    if (!Trim(r.original_recipient).empty()) {
      status += FormatHeaderField("Original-Recipient", OriginalRecipientValue(r.original_recipient),
                                  HeaderText::kAsciiStructured);
    }
    status += FormatHeaderField("Final-Recipient", TypedAddress("rfc822", r.final_recipient),
                                HeaderText::kAsciiStructured);
    status += FormatHeaderField("Action", ActionName(r.action), HeaderText::kAsciiStructured);
    status += FormatHeaderField("Status", statuses[i], HeaderText::kAsciiStructured);
    if (!Trim(r.remote_mta).empty()) {
      status += FormatHeaderField("Remote-MTA", absl::StrCat("dns;", Trim(CollapseToOneLine(r.remote_mta))),
                                  HeaderText::kAsciiStructured);
    }
    std::string reply_text(Trim(CollapseToOneLine(r.reply_text)));
    if (r.reply_code != 0) {
      status += FormatHeaderField(
          "Diagnostic-Code",
          reply_text.empty() ? absl::StrCat("smtp;", r.reply_code) : absl::StrCat("smtp;", r.reply_code, " ", reply_text),
          HeaderText::kAsciiStructured);
    } else if (!reply_text.empty()) {
      // No reply (DNS, connection, TLS, REQUIRETLS): Tern's own words, in a
      // private diagnostic type as Postfix does with X-Postfix (RFC 3464
      // §2.3.6), so that the reason is in the machine-readable part too.
      status +=
          FormatHeaderField("Diagnostic-Code", absl::StrCat("X-Tern;", reply_text), HeaderText::kAsciiStructured);
    }
    if (r.last_attempt) {
      status += FormatHeaderField("Last-Attempt-Date", FormatRfc5322Date(*r.last_attempt),
                                  HeaderText::kAsciiStructured);
    }
    if (r.action == Action::kDelayed && r.will_retry_until) {
      status += FormatHeaderField("Will-Retry-Until", FormatRfc5322Date(*r.will_retry_until),
                                  HeaderText::kAsciiStructured);
    }
  }

  // Part 3: the original, whole or its header block; none when withheld
  // (a redacted DSN: RFC 6522 §3 makes the third part optional).
  std::string part3;
  if (!report.original_withheld) {
    absl::string_view original_view = report.original;
    if (!report.original_is_full) {
      original_view = mime::SplitHeaderBlock(original_view).headers;
    }
    const std::string original = NormalizeAttachment(original_view);
    const bool original_8bit = !mime::IsAscii(original);
    if (report.original_is_full) {
      part3 = absl::StrCat(
          FormatHeaderField("Content-Type", "message/rfc822", HeaderText::kAsciiStructured),
          FormatHeaderField("Content-Description", "Undelivered Message", HeaderText::kAsciiStructured));
    } else {
      part3 = absl::StrCat(
          FormatHeaderField("Content-Type", "text/rfc822-headers", HeaderText::kAsciiStructured),
          FormatHeaderField("Content-Description", "Undelivered Message Headers", HeaderText::kAsciiStructured));
    }
    if (original_8bit) {
      part3 += FormatHeaderField("Content-Transfer-Encoding", "8bit", HeaderText::kAsciiStructured);
    }
    absl::StrAppend(&part3, kCrlf, original);
    out.body_8bit = original_8bit;
  }

  // Boundaries that occur nowhere in the content (RFC 2046 §5.1.1) and in no
  // other boundary, so no delimiter line can be mistaken for another.
  std::vector<const std::string*> leaves = {&text_part, &status};
  if (!part3.empty()) {
    leaves.push_back(&part3);
  }
  if (with_html) {
    leaves.push_back(&html_part);
  }
  if (with_image) {
    leaves.push_back(&templates_.image->part());
  }
  std::vector<std::string> chosen;
  auto pick_boundary = [&]() -> std::string {
    for (int attempt = 0; attempt < kBoundaryAttempts; ++attempt) {
      std::string candidate = absl::StrCat(kBoundaryPrefix, SafeToken(new_token_()));
      std::string delimiter = absl::StrCat("--", candidate);
      bool free = true;
      for (const std::string* leaf : leaves) {
        free = free && !absl::StrContains(*leaf, delimiter);
      }
      for (const std::string& other : chosen) {
        free = free && !absl::StrContains(other, candidate) && !absl::StrContains(candidate, other);
      }
      if (free) {
        chosen.push_back(candidate);
        return candidate;
      }
    }
    return "";
  };
  const std::string boundary = pick_boundary();
  const std::string alt_boundary = with_html ? pick_boundary() : "";
  const std::string related_boundary = with_image ? pick_boundary() : "";
  if (boundary.empty() || (with_html && alt_boundary.empty()) || (with_image && related_boundary.empty())) {
    return absl::InternalError("could not find a MIME boundary absent from the DSN content");
  }
  std::string part1;
  if (!with_html) {
    part1 = std::move(text_part);
  } else {
    part1 = MultipartPart("alternative", "", alt_boundary, {&text_part, &html_part});
    if (with_image) {
      part1 = MultipartPart("related", "type=\"multipart/alternative\"; ", related_boundary,
                            {&part1, &templates_.image->part()});
    }
  }

  std::string msgid_ref = ExtractMsgId(report.original_message_id);
  std::string& m = out.message;
  m.reserve(headers.size() + part1.size() + status.size() + part3.size() + 512);
  m += headers;
  m += FormatHeaderField("MIME-Version", "1.0", HeaderText::kAsciiStructured);
  m += FormatHeaderField("Content-Type",
                         absl::StrCat("multipart/report; report-type=delivery-status; boundary=\"", boundary, "\""),
                         HeaderText::kAsciiStructured);
  if (out.body_8bit) {
    m += FormatHeaderField("Content-Transfer-Encoding", "8bit", HeaderText::kAsciiStructured);
  }
  if (!msgid_ref.empty()) {
    m += FormatHeaderField("In-Reply-To", msgid_ref, HeaderText::kAsciiStructured);
    m += FormatHeaderField("References", msgid_ref, HeaderText::kAsciiStructured);
  }
  // Each part ends with CRLF and is followed by CRLF "--boundary": that CRLF
  // belongs to the delimiter (RFC 2046 §5.1.1), so the parts keep their own
  // final line break.
  absl::StrAppend(&m, kCrlf, "This is a MIME-encapsulated message.", kCrlf);
  for (const std::string* part : {&part1, &status, &part3}) {
    if (part->empty()) {
      continue;  // no third part
    }
    absl::StrAppend(&m, kCrlf, "--", boundary, kCrlf, *part);
  }
  absl::StrAppend(&m, kCrlf, "--", boundary, "--", kCrlf);
  return out;
}

}  // namespace tern::dsn
