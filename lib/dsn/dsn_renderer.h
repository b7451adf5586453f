// File: dsn_renderer.h
//
// Renders a DeliveryReport into a complete RFC 5322 message: a
// multipart/report DSN built from Haraka-style templates
// (config/outbound.bounce_message, and optionally
// outbound.bounce_message_html and outbound.bounce_message_image).
//
// The text template. Lines up to the first empty line are header fields of
// the DSN (Haraka's default has Received, Date, From, To, Auto-Submitted,
// Subject and Message-Id); the rest is the text of the human-readable part.
// A template whose first line is not a header field is all text. Placeholders
// are Haraka's: {pid} {date} {me} {from} {to} {msgid} {recipients} {reason}
// {extended_reason} {subject}; an unknown name or an empty value renders as
// "?", as in Haraka. Every value is collapsed to one line (CR, LF and other
// control characters become spaces), so quoted text (a remote reply, the
// original Subject) can neither add header fields nor forge lines. The one
// exception is {extended_reason} in the text part, where Tern itself puts one
// recipient per line (each line collapsed); in a header it is joined with
// "; ".
//
//   {from}            "<>" (the DSN's reverse-path)
//   {to}              "<original sender>"
//   {recipients}      "<a@x>, <b@y>" (the recipients reported on)
//   {reason}          the distinct per-recipient reasons, joined with "; "
//   {extended_reason} "a@x: 550 5.1.1 User unknown", one per recipient
//   {subject}         the original Subject, RFC 2047-decoded
//   {msgid}           the DSN's new Message-Id "<token@me>"
//   {date}            now, RFC 5322 date-time
//
// The HTML template (HtmlTemplate) is all body, with the same placeholders;
// every value is HTML-escaped (& < > " ' become entities) and
// {extended_reason} puts "<br>" between recipients. The image
// (InlinePart) is a ready MIME body part, as Haraka ships it: header fields
// (Content-Type, Content-ID, Content-Transfer-Encoding: base64), an empty
// line, the encoded data; the HTML refers to it as "cid:<Content-ID>".
//
// The message. Template header fields (values folded, non-ASCII words
// encoded as RFC 2047 encoded-words), then any of Date, From, To, Subject,
// Message-Id and Auto-Submitted: auto-replied the template lacks, then
// MIME-Version, the multipart/report Content-Type, In-Reply-To and References
// (when the original had a Message-Id). Parts:
//   1. the human-readable part: text/plain alone; with an HTML template a
//      multipart/alternative (text/plain, text/html); with an image as well a
//      multipart/related (type="multipart/alternative") holding that
//      alternative and the image. Text and HTML are us-ascii 7bit, or utf-8
//      quoted-printable when they hold non-ASCII (or over-long) lines, so
//      they never make the DSN 8-bit;
//   2. message/delivery-status;
//   3. message/rfc822 (whole original) or text/rfc822-headers (headers
//      only), declared 8bit when the original holds 8-bit bytes (then the
//      whole DSN is 8bit: RenderedDsn::body_8bit); no third part when the
//      report has original_withheld (a redacted DSN).
// Every multipart is closed, each with its own random boundary that occurs
// nowhere in the content. CRLF throughout, no line longer than 998
// characters. Fields a template must not set (MIME-Version, Content-*,
// References, In-Reply-To) are dropped from it.
//
// Not copied from Haraka (reference/haraka-outbound-facts.md §8): Tern always
// writes MIME-Version and Status, prefixes Remote-MTA with "dns;", uses the
// ENVID (not the Message-Id) as Original-Envelope-Id, writes no trailing
// space after Diagnostic-Code, closes every multipart (Haraka leaves
// multipart/related open when there is no image), gives multipart/related its
// required type parameter and labels non-ASCII text utf-8.
//
// Thread-safety: templates are immutable. DsnRenderer::Render is const and
// safe to call concurrently if the token generator is.
// Standards: RFC 3464 (DSN format), RFC 3462/6522 (multipart/report,
//   text/rfc822-headers), RFC 5322 §3.3 (date-time), §3.6.4 (Message-Id,
//   In-Reply-To, References); RFC 2045 §6.7 (quoted-printable), RFC 2046
//   (multipart, boundaries); RFC 2047; RFC 2387 (multipart/related);
//   RFC 2392 (cid: URLs); RFC 3834 (Auto-Submitted); RFC 6533 §3 (utf-8
//   address type).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/dsn/delivery_status.h"

namespace tern::dsn {

// A parsed outbound.bounce_message.
class DsnTemplate {
 public:
  struct HeaderLine {
    std::string name;
    std::string value;  // unfolded, with {placeholders}
  };

  // Parses template text; `name` (the file name) appears in errors. Fails on
  // invalid UTF-8 or a line in the header section that is neither a field
  // nor a continuation.
  static absl::StatusOr<DsnTemplate> Parse(absl::string_view text, absl::string_view name);

  const std::vector<HeaderLine>& headers() const { return headers_; }
  const std::vector<std::string>& body_lines() const { return body_lines_; }
  // Header fields the template set that Tern owns and dropped (for a warning).
  const std::vector<std::string>& dropped_headers() const { return dropped_headers_; }

 private:
  std::vector<HeaderLine> headers_;
  std::vector<std::string> body_lines_;
  std::vector<std::string> dropped_headers_;
};

// A parsed outbound.bounce_message_html: HTML with {placeholders}, all body.
class HtmlTemplate {
 public:
  // Fails on invalid UTF-8; `name` appears in errors.
  static absl::StatusOr<HtmlTemplate> Parse(absl::string_view text, absl::string_view name);

  const std::vector<std::string>& lines() const { return lines_; }
  // False when the file holds only blank lines: then there is no HTML part.
  bool has_content() const { return has_content_; }

 private:
  std::vector<std::string> lines_;
  bool has_content_ = false;
};

// A ready MIME body part read from a file (outbound.bounce_message_image):
// header fields, an empty line, an already encoded body.
class InlinePart {
 public:
  // Requires 7-bit text, a header section with Content-Type and Content-ID,
  // a Content-Transfer-Encoding of base64, quoted-printable or 7bit (none
  // means 7bit), and lines of at most 998 characters. `name` appears in
  // errors.
  static absl::StatusOr<InlinePart> Parse(absl::string_view text, absl::string_view name);

  // The part as written into the DSN: CRLF line ends, ends with CRLF.
  const std::string& part() const { return part_; }
  // The Content-ID without angle brackets (the HTML says "cid:" + this).
  const std::string& content_id() const { return content_id_; }

 private:
  std::string part_;
  std::string content_id_;
};

// Everything a renderer renders from. `image` is used only together with an
// HTML template that has content.
struct DsnTemplates {
  DsnTemplate text;
  std::optional<HtmlTemplate> html;
  std::optional<InlinePart> image;
};

struct RenderedDsn {
  std::string message;     // RFC 5322 text, CRLF line ends, not dot-stuffed
  std::string message_id;  // the Message-Id given to the DSN, "<token@me>"
  bool body_8bit = false;  // holds 8-bit bytes (send with BODY=8BITMIME)
};

class DsnRenderer {
 public:
  // Returns a new unique token of letters and digits. It names the MIME
  // boundary and the local part of the DSN's Message-Id; tests inject a
  // deterministic one, the service uses tern::NewRandomToken.
  using TokenGenerator = std::function<std::string()>;

  DsnRenderer(DsnTemplates templates, TokenGenerator new_token, int64_t pid)
      : templates_(std::move(templates)), new_token_(std::move(new_token)), pid_(pid) {}
  // Text only.
  DsnRenderer(DsnTemplate tmpl, TokenGenerator new_token, int64_t pid)
      : DsnRenderer(DsnTemplates{std::move(tmpl), std::nullopt, std::nullopt}, std::move(new_token), pid) {}

  // Renders `report` as of `now`. Fails with InvalidArgument when the report
  // has no recipient or no sender (a DSN to <> is a double bounce and must
  // not be rendered), and with Internal if no boundaries absent from the
  // content could be found.
  absl::StatusOr<RenderedDsn> Render(const DeliveryReport& report, absl::Time now) const;

 private:
  DsnTemplates templates_;
  TokenGenerator new_token_;
  int64_t pid_;
};

}  // namespace tern::dsn
