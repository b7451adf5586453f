#include "lib/dsn/dsn_renderer.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/mime/header.h"

namespace tern::dsn {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Modelled on Haraka's default outbound.bounce_message, plus every
// placeholder and one header that quotes the original Subject.
constexpr absl::string_view kTemplate =
    "Received: (Haraka {pid} invoked for bounce); {date}\n"
    "Date: {date}\n"
    "From: MAILER-DAEMON@{me}\n"
    "To: {to}\n"
    "Auto-Submitted: auto-replied\n"
    "Subject: failure notice: {subject}\n"
    "Message-Id: {msgid}\n"
    "\n"
    "Hi. This is the mail system at {me}.\n"
    "I could not deliver your message to the following addresses: {recipients}\n"
    "\n"
    "{extended_reason}\n"
    "\n"
    "Reason: {reason}\n"
    "Subject of your message: {subject}\n"
    "From {from} to {to}, unknown {nosuch}.\n"
    "--- Below this line is a copy of the message.\n";

constexpr absl::string_view kOriginalHeaders =
    "Received: from client.example.com ([192.0.2.7]) by mx.tern.test; Fri, 20 Nov 2026 09:58:00 +0000\r\n"
    "From: Alice <alice@example.com>\r\n"
    "To: bob@example.net\r\n"
    "Subject: Quarterly report\r\n"
    "Message-Id: <orig-1234@example.com>\r\n"
    "Date: Fri, 20 Nov 2026 09:58:00 +0000\r\n";

constexpr absl::string_view kOriginalBody = "Hello Bob,\r\n\r\nthe numbers are attached.\r\n";

absl::Time At(int hour, int minute) {
  return absl::FromCivil(absl::CivilSecond(2026, 11, 21, hour, minute, 0), absl::UTCTimeZone());
}

DsnRenderer::TokenGenerator CountingTokens() {
  auto n = std::make_shared<int>(0);
  return [n] { return absl::StrCat("tok", ++*n); };
}

DsnRenderer MakeRenderer(absl::string_view template_text = kTemplate,
                         DsnRenderer::TokenGenerator tokens = CountingTokens()) {
  absl::StatusOr<DsnTemplate> tmpl = DsnTemplate::Parse(template_text, "outbound.bounce_message");
  EXPECT_TRUE(tmpl.ok()) << tmpl.status();
  return DsnRenderer(*std::move(tmpl), std::move(tokens), 4242);
}

RecipientStatus Failed(std::string rcpt, int code, std::string status, std::string text) {
  RecipientStatus r;
  r.final_recipient = std::move(rcpt);
  r.action = Action::kFailed;
  r.reply_code = code;
  r.status = std::move(status);
  r.reply_text = std::move(text);
  r.remote_mta = "mx1.example.net";
  r.last_attempt = At(10, 1);
  return r;
}

DeliveryReport BaseReport() {
  DeliveryReport report;
  report.kind = ReportKind::kFailed;
  report.reporting_mta = "mx.tern.test";
  report.arrival = At(9, 58);
  report.original_sender = "alice@example.com";
  report.original = absl::StrCat(kOriginalHeaders, "\r\n", kOriginalBody);
  report.original_is_full = false;
  report.original_message_id = "<orig-1234@example.com>";
  report.original_subject = "Quarterly report";
  return report;
}

std::string GoldenPath(absl::string_view name) {
  return absl::StrCat(TERN_SOURCE_DIR, "/tests/testdata/dsn/", name, ".eml");
}

// Compares `actual` with the golden file byte for byte; TERN_UPDATE_GOLDEN=1
// rewrites the file instead.
void ExpectGolden(absl::string_view name, const std::string& actual) {
  const std::string path = GoldenPath(name);
  const char* update = std::getenv("TERN_UPDATE_GOLDEN");
  if (update != nullptr && std::string(update) == "1") {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    ASSERT_TRUE(out.good()) << "cannot write " << path;
    out << actual;
    std::cerr << "updated golden file " << path << "\n";
    return;
  }
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in.good()) << "missing golden file " << path << " (run with TERN_UPDATE_GOLDEN=1 to create it)";
  std::stringstream buffer;
  buffer << in.rdbuf();
  EXPECT_EQ(buffer.str(), actual) << "DSN differs from " << path
                                  << "; if the change is intended, rerun with TERN_UPDATE_GOLDEN=1";
}

struct ParsedPart {
  std::string headers;
  std::string body;
};

struct ParsedDsn {
  std::string headers;
  std::string boundary;
  std::vector<ParsedPart> parts;
  bool closed = false;
};

// A strict reader for what the renderer must produce: CRLF only, lines of at
// most 998 characters, a multipart/report whose delimiters each start a line
// and whose close delimiter ends the body.
ParsedDsn ParseDsn(const std::string& message) {
  ParsedDsn dsn;
  for (size_t i = 0; i < message.size(); ++i) {
    if (message[i] == '\n') {
      EXPECT_TRUE(i > 0 && message[i - 1] == '\r') << "bare LF at " << i;
    }
    if (message[i] == '\r') {
      EXPECT_TRUE(i + 1 < message.size() && message[i + 1] == '\n') << "bare CR at " << i;
    }
  }
  for (absl::string_view line : absl::StrSplit(message, "\r\n")) {
    EXPECT_LE(line.size(), mime::kMaxLineLength);
  }
  mime::HeaderBlock top = mime::SplitHeaderBlock(message);
  EXPECT_TRUE(top.has_separator);
  dsn.headers = std::string(top.headers);
  std::optional<std::string> ct = mime::GetHeader(message, "Content-Type");
  EXPECT_TRUE(ct.has_value());
  if (!ct) {
    return dsn;
  }
  EXPECT_THAT(*ct, HasSubstr("multipart/report"));
  EXPECT_THAT(*ct, HasSubstr("report-type=delivery-status"));
  size_t b = ct->find("boundary=\"");
  EXPECT_NE(b, std::string::npos);
  if (b == std::string::npos) {
    return dsn;
  }
  dsn.boundary = ct->substr(b + 10, ct->find('"', b + 10) - b - 10);
  const std::string delimiter = "\r\n--" + dsn.boundary;
  std::string body = "\r\n" + std::string(top.body);
  size_t pos = body.find(delimiter);
  EXPECT_NE(pos, std::string::npos);
  while (pos != std::string::npos) {
    size_t after = pos + delimiter.size();
    if (body.compare(after, 4, "--\r\n") == 0) {
      dsn.closed = true;
      EXPECT_EQ(after + 4, body.size()) << "text after the close delimiter";
      break;
    }
    EXPECT_EQ(body.compare(after, 2, "\r\n"), 0);
    size_t next = body.find(delimiter, after + 2);
    EXPECT_NE(next, std::string::npos) << "unclosed multipart";
    if (next == std::string::npos) {
      break;
    }
    std::string part = body.substr(after + 2, next - after - 2);
    mime::HeaderBlock pb = mime::SplitHeaderBlock(part);
    EXPECT_TRUE(pb.has_separator);
    dsn.parts.push_back(ParsedPart{std::string(pb.headers), std::string(pb.body)});
    pos = next;
  }
  return dsn;
}

std::string PartType(const ParsedPart& part) {
  return mime::GetHeader(part.headers, "Content-Type").value_or("");
}

// The delivery-status groups (per-message first), each as name -> value.
std::vector<std::vector<mime::HeaderField>> StatusGroups(const ParsedPart& part) {
  std::vector<std::vector<mime::HeaderField>> groups;
  for (absl::string_view group : absl::StrSplit(part.body, "\r\n\r\n", absl::SkipEmpty())) {
    groups.push_back(mime::ParseHeaderFields(group));
  }
  return groups;
}

std::string Field(const std::vector<mime::HeaderField>& group, absl::string_view name) {
  for (const mime::HeaderField& f : group) {
    if (absl::EqualsIgnoreCase(f.name, name)) {
      return mime::Unfold(f.raw_value);
    }
  }
  return "<absent>";
}

struct ParsedMultipart {
  std::vector<ParsedPart> parts;
  bool closed = false;
};

// The body parts of a multipart body with `boundary`; `closed` when the close
// delimiter ends it.
ParsedMultipart ParseMultipart(const std::string& raw_body, const std::string& boundary) {
  ParsedMultipart out;
  const std::string delimiter = "\r\n--" + boundary;
  std::string body = "\r\n" + raw_body;
  size_t pos = body.find(delimiter);
  EXPECT_NE(pos, std::string::npos) << "no delimiter for " << boundary;
  while (pos != std::string::npos) {
    size_t after = pos + delimiter.size();
    if (body.compare(after, 4, "--\r\n") == 0) {
      out.closed = true;
      EXPECT_EQ(after + 4, body.size()) << "text after the close delimiter";
      break;
    }
    EXPECT_EQ(body.compare(after, 2, "\r\n"), 0);
    size_t next = body.find(delimiter, after + 2);
    EXPECT_NE(next, std::string::npos) << "unclosed multipart " << boundary;
    if (next == std::string::npos) {
      break;
    }
    std::string part = body.substr(after + 2, next - after - 2);
    mime::HeaderBlock pb = mime::SplitHeaderBlock(part);
    EXPECT_TRUE(pb.has_separator);
    out.parts.push_back(ParsedPart{std::string(pb.headers), std::string(pb.body)});
    pos = next;
  }
  return out;
}

std::string BoundaryOf(const std::string& content_type) {
  size_t b = content_type.find("boundary=\"");
  if (b == std::string::npos) {
    ADD_FAILURE() << "no boundary in " << content_type;
    return "";
  }
  return content_type.substr(b + 10, content_type.find('"', b + 10) - b - 10);
}

std::string DecodeQuotedPrintable(const std::string& qp) {
  std::string out;
  for (size_t i = 0; i < qp.size(); ++i) {
    if (qp[i] == '=' && qp.compare(i + 1, 2, "\r\n") == 0) {
      i += 2;
    } else if (qp[i] == '=' && i + 2 < qp.size()) {
      out.push_back(static_cast<char>(std::stoi(qp.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(qp[i]);
    }
  }
  return out;
}

// A 1x1 transparent PNG.
constexpr char kPixelBase64[] =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

constexpr absl::string_view kHtmlTemplate =
    "<!DOCTYPE html>\n"
    "<html><body>\n"
    "<img src=\"cid:logo@tern.test\" alt=\"\" width=\"1\" height=\"1\">\n"
    "<p>Could not deliver to <b>{recipients}</b> from {to}.</p>\n"
    "<p>Subject: {subject}</p>\n"
    "<div>{extended_reason}</div>\n"
    "<p>{nosuch}</p>\n"
    "</body></html>\n";

std::string ImagePartText() {
  return absl::StrCat("Content-Type: image/png; name=\"logo.png\"\n",
                      "Content-Disposition: inline; filename=\"logo.png\"\n",
                      "Content-Transfer-Encoding: base64\n", "Content-ID: <logo@tern.test>\n", "\n", kPixelBase64,
                      "\n\n");
}

DsnRenderer MakeHtmlRenderer(bool with_image) {
  DsnTemplates t;
  absl::StatusOr<DsnTemplate> text = DsnTemplate::Parse(kTemplate, "outbound.bounce_message");
  EXPECT_TRUE(text.ok()) << text.status();
  t.text = *std::move(text);
  absl::StatusOr<HtmlTemplate> html = HtmlTemplate::Parse(kHtmlTemplate, "outbound.bounce_message_html");
  EXPECT_TRUE(html.ok()) << html.status();
  t.html = *std::move(html);
  if (with_image) {
    absl::StatusOr<InlinePart> image = InlinePart::Parse(ImagePartText(), "outbound.bounce_message_image");
    EXPECT_TRUE(image.ok()) << image.status();
    t.image = *std::move(image);
  }
  return DsnRenderer(std::move(t), CountingTokens(), 4242);
}

// ---- golden files ----------------------------------------------------------

TEST(DsnRendererGolden, SingleFailedRecipientWithEnhancedCode) {
  DeliveryReport report = BaseReport();
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "5.1.1 <bob@example.net>: User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  EXPECT_EQ(dsn->message_id, "<tok1@mx.tern.test>");
  EXPECT_FALSE(dsn->body_8bit);
  ExpectGolden("single_failed_enhanced", dsn->message);
}

TEST(DsnRendererGolden, RemoteReplyWithoutEnhancedCodeGetsDerivedStatus) {
  DeliveryReport report = BaseReport();
  report.recipients.push_back(Failed("bob@example.net", 554, "", "Transaction failed"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ExpectGolden("derived_status", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  auto groups = StatusGroups(parsed.parts[1]);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(Field(groups[1], "Status"), "5.0.0");
  EXPECT_EQ(Field(groups[1], "Diagnostic-Code"), "smtp;554 Transaction failed");
}

TEST(DsnRendererGolden, PartialFailureListsEachFailedRecipientWithItsOwnStatus) {
  DeliveryReport report = BaseReport();
  report.original = absl::StrCat(
      "To: bob@example.net, carol@example.org, dave@example.com\r\n", kOriginalHeaders, "\r\n", kOriginalBody);
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  RecipientStatus carol = Failed("carol@example.org", 552, "5.2.2", "Mailbox full");
  carol.remote_mta = "mx.example.org";
  report.recipients.push_back(carol);
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ExpectGolden("partial_failure", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  auto groups = StatusGroups(parsed.parts[1]);
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(Field(groups[1], "Final-Recipient"), "rfc822;bob@example.net");
  EXPECT_EQ(Field(groups[1], "Status"), "5.1.1");
  EXPECT_EQ(Field(groups[2], "Final-Recipient"), "rfc822;carol@example.org");
  EXPECT_EQ(Field(groups[2], "Status"), "5.2.2");
  EXPECT_EQ(Field(groups[2], "Remote-MTA"), "dns;mx.example.org");
  EXPECT_THAT(parsed.parts[0].body, Not(HasSubstr("dave@")));
}

TEST(DsnRendererGolden, EnvidAndOrcptAreReported) {
  DeliveryReport report = BaseReport();
  report.envid = "QQ314159";
  RecipientStatus r = Failed("bob@example.net", 550, "5.1.1", "User unknown");
  r.original_recipient = "rfc822;Bob.Alias@example.net";
  report.recipients.push_back(r);
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ExpectGolden("envid_orcpt", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  auto groups = StatusGroups(parsed.parts[1]);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(Field(groups[0], "Original-Envelope-Id"), "QQ314159");
  EXPECT_EQ(Field(groups[1], "Original-Recipient"), "rfc822;Bob.Alias@example.net");
}

TEST(DsnRendererGolden, RetFullAttachesTheWholeMessage) {
  DeliveryReport report = BaseReport();
  report.original_is_full = true;
  report.recipients.push_back(Failed("bob@example.net", 550, "5.7.26", "Unauthenticated email is not accepted"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ExpectGolden("ret_full", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_EQ(PartType(parsed.parts[2]), "message/rfc822");
  EXPECT_EQ(parsed.parts[2].body, report.original);
}

TEST(DsnRendererGolden, Utf8SubjectIsQuotedPrintableInTextAndEncodedInHeader) {
  DeliveryReport report = BaseReport();
  const std::string subject = "Gr\xC3\xBC\xC3\x9F" "e aus K\xC3\xB6ln \xE2\x80\x93 Quartalsbericht";
  report.original_subject = subject;
  report.original = absl::StrCat("Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln_=E2=80=93?= Quartalsbericht\r\n",
                                 "From: Alice <alice@example.com>\r\nMessage-Id: <orig-1234@example.com>\r\n\r\nbody\r\n");
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  // The original is 7-bit and Tern's text is quoted-printable: the DSN is too.
  EXPECT_FALSE(dsn->body_8bit);
  EXPECT_TRUE(mime::IsAscii(dsn->message));
  ExpectGolden("utf8_subject", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_EQ(mime::DecodeEncodedWords(mime::GetHeader(dsn->message, "Subject").value()),
            "failure notice: " + subject);
  EXPECT_EQ(PartType(parsed.parts[0]), "text/plain; charset=utf-8");
  EXPECT_EQ(mime::GetHeader(parsed.parts[0].headers, "Content-Transfer-Encoding"), "quoted-printable");
  EXPECT_THAT(DecodeQuotedPrintable(parsed.parts[0].body), HasSubstr("Subject of your message: " + subject + "\r\n"));
  EXPECT_EQ(mime::GetHeader(dsn->message, "Content-Transfer-Encoding"), std::nullopt);
}

TEST(DsnRendererGolden, EightBitSubjectDeclaresTheOriginal8bit) {
  // A raw (unencoded) UTF-8 Subject, as an SMTPUTF8 or sloppy client sends
  // it: quoted as UTF-8 in the text, and the attached headers are 8-bit.
  DeliveryReport report = BaseReport();
  const std::string subject = "Caf\xC3\xA9 \xE2\x98\x95 f\xC3\xBCr alle";
  report.original = absl::StrCat("Subject: ", subject, "\r\nFrom: Alice <alice@example.com>\r\n",
                                 "Message-Id: <orig-1234@example.com>\r\n\r\nbody\r\n");
  report.original_subject = subject;
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  EXPECT_TRUE(dsn->body_8bit);
  ExpectGolden("eightbit_subject", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_TRUE(mime::IsAscii(parsed.headers));
  EXPECT_EQ(mime::GetHeader(dsn->message, "Content-Transfer-Encoding"), "8bit");
  EXPECT_EQ(mime::GetHeader(parsed.parts[0].headers, "Content-Transfer-Encoding"), "quoted-printable");
  EXPECT_EQ(PartType(parsed.parts[2]), "text/rfc822-headers");
  EXPECT_EQ(mime::GetHeader(parsed.parts[2].headers, "Content-Transfer-Encoding"), "8bit");
  EXPECT_THAT(parsed.parts[2].body, HasSubstr("Subject: " + subject + "\r\n"));
}

TEST(DsnRendererGolden, MultiDomainFailureListsEveryDomainsRecipient) {
  DeliveryReport report = BaseReport();
  RecipientStatus bob = Failed("bob@example.net", 550, "5.1.1", "User unknown");
  RecipientStatus carol = Failed("carol@example.org", 0, "", "no MX or address for example.org");
  carol.remote_mta.clear();
  carol.status = "5.1.2";
  RecipientStatus dave = Failed("dave@example.com", 554, "", "Rejected by policy");
  dave.remote_mta = "mx.example.com";
  dave.original_recipient = "rfc822;dave@example.com";
  report.recipients = {bob, carol, dave};
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ExpectGolden("multi_domain", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  auto groups = StatusGroups(parsed.parts[1]);
  ASSERT_EQ(groups.size(), 4u);
  EXPECT_EQ(Field(groups[2], "Status"), "5.1.2");
  EXPECT_EQ(Field(groups[2], "Remote-MTA"), "<absent>");
  EXPECT_EQ(Field(groups[2], "Diagnostic-Code"), "X-Tern;no MX or address for example.org");
  EXPECT_EQ(Field(groups[3], "Status"), "5.0.0");
  EXPECT_EQ(Field(groups[3], "Remote-MTA"), "dns;mx.example.com");
}

TEST(DsnRendererGolden, RetHdrsAttachesOnlyTheHeaders) {
  DeliveryReport report = BaseReport();
  report.original_is_full = false;  // RET=HDRS, or the whole message was over the size limit
  report.recipients.push_back(Failed("bob@example.net", 550, "5.7.26", "Unauthenticated email is not accepted"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ExpectGolden("ret_hdrs", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_EQ(PartType(parsed.parts[2]), "text/rfc822-headers");
  EXPECT_EQ(parsed.parts[2].body, kOriginalHeaders);
  EXPECT_THAT(dsn->message, Not(HasSubstr("the numbers are attached")));
}

TEST(DsnRendererGolden, SuccessReportSaysDelivered) {
  DeliveryReport report = BaseReport();
  report.kind = ReportKind::kDelivered;
  RecipientStatus r = Failed("bob@example.net", 250, "2.0.0", "Ok: queued as 4F2A1");
  r.action = Action::kDelivered;
  report.recipients.push_back(r);
  absl::StatusOr<RenderedDsn> dsn =
      MakeRenderer("Subject: Delivered: {subject}\n\nDelivered to {recipients}:\n{extended_reason}\n").Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ExpectGolden("delivered", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  auto groups = StatusGroups(parsed.parts[1]);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(Field(groups[1], "Action"), "delivered");
  EXPECT_EQ(Field(groups[1], "Status"), "2.0.0");
  EXPECT_EQ(Field(groups[1], "Diagnostic-Code"), "smtp;250 Ok: queued as 4F2A1");
  EXPECT_EQ(Field(groups[1], "Will-Retry-Until"), "<absent>");
}

TEST(DsnRendererGolden, HtmlAndImageMakeClosedRelatedAlternative) {
  DeliveryReport report = BaseReport();
  report.original_subject = "Q3 <draft> & \"final\" \xE2\x80\x93 it's late";
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "<bob@example.net>: User unknown"));
  report.recipients.push_back(Failed("carol@example.org", 552, "5.2.2", "Mailbox full"));
  absl::StatusOr<RenderedDsn> dsn = MakeHtmlRenderer(/*with_image=*/true).Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  EXPECT_FALSE(dsn->body_8bit);
  ExpectGolden("html_image", dsn->message);

  ParsedDsn parsed = ParseDsn(dsn->message);
  EXPECT_TRUE(parsed.closed);
  ASSERT_EQ(parsed.parts.size(), 3u);
  const std::string related_type = PartType(parsed.parts[0]);
  EXPECT_THAT(related_type, HasSubstr("multipart/related; type=\"multipart/alternative\"; boundary="));
  ParsedMultipart related = ParseMultipart(parsed.parts[0].body, BoundaryOf(related_type));
  EXPECT_TRUE(related.closed);
  ASSERT_EQ(related.parts.size(), 2u);
  const std::string alt_type = PartType(related.parts[0]);
  EXPECT_THAT(alt_type, HasSubstr("multipart/alternative; boundary="));
  ParsedMultipart alt = ParseMultipart(related.parts[0].body, BoundaryOf(alt_type));
  EXPECT_TRUE(alt.closed);
  ASSERT_EQ(alt.parts.size(), 2u);
  EXPECT_EQ(PartType(alt.parts[0]), "text/plain; charset=utf-8");
  EXPECT_EQ(PartType(alt.parts[1]), "text/html; charset=utf-8");
  const std::string html = DecodeQuotedPrintable(alt.parts[1].body);
  // Values are escaped; the template's own markup is not.
  EXPECT_THAT(html, HasSubstr("<b>&lt;bob@example.net&gt;, &lt;carol@example.org&gt;</b>"));
  EXPECT_THAT(html, HasSubstr("Q3 &lt;draft&gt; &amp; &quot;final&quot; \xE2\x80\x93 it&#39;s late"));
  EXPECT_THAT(html, HasSubstr("bob@example.net: 550 5.1.1 &lt;bob@example.net&gt;: User unknown<br>\r\n"
                              "carol@example.org: 552 5.2.2 Mailbox full</div>"));
  EXPECT_THAT(html, HasSubstr("src=\"cid:logo@tern.test\""));
  EXPECT_EQ(PartType(related.parts[1]), "image/png; name=\"logo.png\"");
  EXPECT_EQ(mime::GetHeader(related.parts[1].headers, "Content-ID"), "<logo@tern.test>");
  EXPECT_EQ(related.parts[1].body, std::string(kPixelBase64) + "\r\n");
  // Four distinct boundaries would be a bug; three levels, three boundaries.
  EXPECT_NE(BoundaryOf(related_type), parsed.boundary);
  EXPECT_NE(BoundaryOf(alt_type), BoundaryOf(related_type));
}

TEST(DsnRendererGolden, DelayedReportCarriesWillRetryUntil) {
  DeliveryReport report = BaseReport();
  report.kind = ReportKind::kDelayed;
  RecipientStatus r = Failed("bob@example.net", 451, "4.7.1", "Greylisted, try again later");
  r.action = Action::kDelayed;
  r.will_retry_until = At(9, 58) + absl::Hours(24 * 5);
  report.recipients.push_back(r);
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(14, 0));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ExpectGolden("delayed", dsn->message);
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  auto groups = StatusGroups(parsed.parts[1]);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(Field(groups[1], "Action"), "delayed");
  EXPECT_EQ(Field(groups[1], "Will-Retry-Until"), "Thu, 26 Nov 2026 09:58:00 +0000");
}

// ---- structure -------------------------------------------------------------

TEST(DsnRenderer, RenderedDsnHasEveryPartAndClosedBoundary) {
  DeliveryReport report = BaseReport();
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ParsedDsn parsed = ParseDsn(dsn->message);
  EXPECT_TRUE(parsed.closed);
  EXPECT_EQ(parsed.boundary, "=_tern-tok2");
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_EQ(PartType(parsed.parts[0]), "text/plain; charset=us-ascii");
  EXPECT_EQ(PartType(parsed.parts[1]), "message/delivery-status");
  EXPECT_EQ(PartType(parsed.parts[2]), "text/rfc822-headers");
  EXPECT_EQ(parsed.parts[2].body, kOriginalHeaders);

  EXPECT_EQ(mime::GetHeader(dsn->message, "MIME-Version"), "1.0");
  EXPECT_EQ(mime::GetHeader(dsn->message, "Auto-Submitted"), "auto-replied");
  EXPECT_EQ(mime::GetHeader(dsn->message, "To"), "<alice@example.com>");
  EXPECT_EQ(mime::GetHeader(dsn->message, "From"), "MAILER-DAEMON@mx.tern.test");
  EXPECT_EQ(mime::GetHeader(dsn->message, "Message-Id"), "<tok1@mx.tern.test>");
  EXPECT_EQ(mime::GetHeader(dsn->message, "References"), "<orig-1234@example.com>");
  EXPECT_EQ(mime::GetHeader(dsn->message, "In-Reply-To"), "<orig-1234@example.com>");
  EXPECT_EQ(mime::GetHeader(dsn->message, "Date"), "Sat, 21 Nov 2026 10:02:00 +0000");

  auto groups = StatusGroups(parsed.parts[1]);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(Field(groups[0], "Reporting-MTA"), "dns;mx.tern.test");
  EXPECT_EQ(Field(groups[0], "Original-Envelope-Id"), "<absent>");
  EXPECT_EQ(Field(groups[0], "Arrival-Date"), "Sat, 21 Nov 2026 09:58:00 +0000");
  EXPECT_EQ(Field(groups[1], "Original-Recipient"), "<absent>");
  EXPECT_EQ(Field(groups[1], "Action"), "failed");
  EXPECT_EQ(Field(groups[1], "Diagnostic-Code"), "smtp;550 User unknown");
  EXPECT_EQ(Field(groups[1], "Last-Attempt-Date"), "Sat, 21 Nov 2026 10:01:00 +0000");
  EXPECT_THAT(parsed.parts[1].body, Not(HasSubstr(" \r\n")));  // no trailing spaces (Haraka bug)
}

TEST(DsnRenderer, TemplatePlaceholdersFollowHaraka) {
  DeliveryReport report = BaseReport();
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  report.recipients.push_back(Failed("carol@example.org", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  const std::string& text = parsed.parts[0].body;
  EXPECT_THAT(text, HasSubstr("addresses: <bob@example.net>, <carol@example.org>\r\n"));
  EXPECT_THAT(text, HasSubstr("\r\nbob@example.net: 550 5.1.1 User unknown\r\n"
                              "carol@example.org: 550 5.1.1 User unknown\r\n"));
  EXPECT_THAT(text, HasSubstr("Reason: 550 5.1.1 User unknown\r\n"));  // distinct reasons only
  EXPECT_THAT(text, HasSubstr("From <> to <alice@example.com>, unknown ?.\r\n"));
  EXPECT_EQ(mime::GetHeader(dsn->message, "Received"),
            "(Haraka 4242 invoked for bounce); Sat, 21 Nov 2026 10:02:00 +0000");
}

TEST(DsnRenderer, EmptyValueRendersAsQuestionMark) {
  DeliveryReport report = BaseReport();
  report.original_subject = "";
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  EXPECT_EQ(mime::GetHeader(dsn->message, "Subject"), "failure notice: ?");
}

TEST(DsnRenderer, QuotedTextCannotInjectHeadersOrLines) {
  DeliveryReport report = BaseReport();
  report.original_subject = "hi\r\nBcc: victim@example.com\r\n\r\nfake body";
  report.original_message_id = "<x@y>\r\nBcc: victim@example.com";
  report.envid = "ENV\r\nX-Evil: 1";
  RecipientStatus r = Failed("bob@example.net", 550, "5.1.1", "User unknown\r\nX-Injected: yes\r\n\r\n--=_tern-tok2--");
  r.remote_mta = "mx.example.net\r\nX-Evil: 2";
  report.recipients.push_back(r);
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ParsedDsn parsed = ParseDsn(dsn->message);
  EXPECT_TRUE(parsed.closed);
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_EQ(mime::GetHeader(dsn->message, "Bcc"), std::nullopt);
  for (const ParsedPart& part : parsed.parts) {
    for (absl::string_view line : absl::StrSplit(part.headers + part.body, "\r\n")) {
      EXPECT_FALSE(absl::StartsWith(line, "X-Injected")) << line;
      EXPECT_FALSE(absl::StartsWith(line, "X-Evil")) << line;
      EXPECT_FALSE(absl::StartsWith(line, "Bcc")) << line;
    }
  }
  // The boundary was not taken from the quoted reply text.
  EXPECT_NE(parsed.boundary, "=_tern-tok2");
  // Only the msg-id itself is quoted into References, never what follows it.
  EXPECT_EQ(mime::GetHeader(dsn->message, "References"), "<x@y>");
}

TEST(DsnRenderer, PicksAnotherBoundaryWhenTheOriginalContainsIt) {
  DeliveryReport report = BaseReport();
  report.original_is_full = true;
  report.original = absl::StrCat(kOriginalHeaders, "\r\n--=_tern-tok2\r\nsneaky\r\n");
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ParsedDsn parsed = ParseDsn(dsn->message);
  EXPECT_EQ(parsed.boundary, "=_tern-tok3");
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_EQ(parsed.parts[2].body, report.original);
}

TEST(DsnRenderer, FailsWhenNoBoundaryIsFree) {
  DeliveryReport report = BaseReport();
  report.original_is_full = true;
  report.original = absl::StrCat(kOriginalHeaders, "\r\n--=_tern-same\r\n");
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer(kTemplate, [] { return std::string("same"); }).Render(report, At(10, 2));
  EXPECT_EQ(dsn.status().code(), absl::StatusCode::kInternal);
}

TEST(DsnRenderer, LongLinesAreKeptUnder998) {
  DeliveryReport report = BaseReport();
  report.original_is_full = true;
  report.original = absl::StrCat("X-Long: ", std::string(2500, 'h'), "\r\n", kOriginalHeaders, "\r\n",
                                 std::string(3000, 'b'), "\r\n");
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", std::string(2000, 'r')));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ParsedDsn parsed = ParseDsn(dsn->message);  // checks every line
  ASSERT_EQ(parsed.parts.size(), 3u);
  // The long header of the original was folded, so it is still one field.
  EXPECT_EQ(mime::GetHeader(parsed.parts[2].body, "X-Long")->size(), 2500u + 2);
}

TEST(DsnRenderer, BareLfOriginalIsConvertedToCrlf) {
  DeliveryReport report = BaseReport();
  report.original = "Subject: lf only\nFrom: a@b\n\nbody\n";
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_EQ(parsed.parts[2].body, "Subject: lf only\r\nFrom: a@b\r\n");
}

TEST(DsnRenderer, InternationalRecipientUsesUtf8AddressType) {
  DeliveryReport report = BaseReport();
  report.recipients.push_back(Failed("j\xC3\xB6rg+x@b\xC3\xBC" "cher.example", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer().Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  auto groups = StatusGroups(parsed.parts[1]);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(Field(groups[1], "Final-Recipient"), "utf-8;j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.example");
  EXPECT_TRUE(mime::IsAscii(parsed.parts[1].body));
}

TEST(DsnRenderer, RefusesNullSenderAndEmptyRecipientList) {
  DeliveryReport report = BaseReport();
  EXPECT_EQ(MakeRenderer().Render(report, At(10, 2)).status().code(), absl::StatusCode::kInvalidArgument);
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  report.original_sender = "";
  EXPECT_EQ(MakeRenderer().Render(report, At(10, 2)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DsnRenderer, AddsRequiredHeadersATemplateLacks) {
  DeliveryReport report = BaseReport();
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeRenderer("X-Note: {me}\n\nbody {reason}\n").Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  EXPECT_EQ(mime::GetHeader(dsn->message, "X-Note"), "mx.tern.test");
  EXPECT_EQ(mime::GetHeader(dsn->message, "Date"), "Sat, 21 Nov 2026 10:02:00 +0000");
  EXPECT_EQ(mime::GetHeader(dsn->message, "From"), "MAILER-DAEMON@mx.tern.test");
  EXPECT_EQ(mime::GetHeader(dsn->message, "To"), "<alice@example.com>");
  EXPECT_EQ(mime::GetHeader(dsn->message, "Subject"), "Undelivered Mail Returned to Sender");
  EXPECT_EQ(mime::GetHeader(dsn->message, "Message-Id"), "<tok1@mx.tern.test>");
  EXPECT_EQ(mime::GetHeader(dsn->message, "Auto-Submitted"), "auto-replied");
}

TEST(DsnRenderer, HtmlWithoutImageIsAClosedAlternativeWithoutRelated) {
  DeliveryReport report = BaseReport();
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = MakeHtmlRenderer(/*with_image=*/false).Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  EXPECT_THAT(dsn->message, Not(HasSubstr("multipart/related")));
  ParsedDsn parsed = ParseDsn(dsn->message);
  EXPECT_TRUE(parsed.closed);
  ASSERT_EQ(parsed.parts.size(), 3u);
  const std::string alt_type = PartType(parsed.parts[0]);
  ASSERT_THAT(alt_type, HasSubstr("multipart/alternative"));
  ParsedMultipart alt = ParseMultipart(parsed.parts[0].body, BoundaryOf(alt_type));
  EXPECT_TRUE(alt.closed);
  ASSERT_EQ(alt.parts.size(), 2u);
  EXPECT_EQ(PartType(alt.parts[0]), "text/plain; charset=us-ascii");
  EXPECT_EQ(PartType(alt.parts[1]), "text/html; charset=us-ascii");
  EXPECT_EQ(mime::GetHeader(alt.parts[1].headers, "Content-Transfer-Encoding"), "7bit");
  EXPECT_THAT(alt.parts[1].body, HasSubstr("<p>?</p>\r\n"));  // unknown placeholder, as in Haraka
}

TEST(DsnRenderer, BlankHtmlTemplateAddsNoHtmlPart) {
  DsnTemplates t;
  t.text = *DsnTemplate::Parse(kTemplate, "t");
  t.html = *HtmlTemplate::Parse("\n  \n", "h");
  t.image = *InlinePart::Parse(ImagePartText(), "i");
  DeliveryReport report = BaseReport();
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "User unknown"));
  absl::StatusOr<RenderedDsn> dsn = DsnRenderer(std::move(t), CountingTokens(), 1).Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_EQ(PartType(parsed.parts[0]), "text/plain; charset=us-ascii");
  EXPECT_THAT(dsn->message, Not(HasSubstr("image/png")));
}

TEST(DsnRenderer, NestedBoundariesAvoidTheContentToo) {
  // The reply text quotes what would be the alternative's boundary.
  DeliveryReport report = BaseReport();
  report.recipients.push_back(Failed("bob@example.net", 550, "5.1.1", "see\r\n--=_tern-tok3\r\n"));
  absl::StatusOr<RenderedDsn> dsn = MakeHtmlRenderer(/*with_image=*/true).Render(report, At(10, 2));
  ASSERT_TRUE(dsn.ok()) << dsn.status();
  ParsedDsn parsed = ParseDsn(dsn->message);
  ASSERT_EQ(parsed.parts.size(), 3u);
  EXPECT_EQ(parsed.boundary, "=_tern-tok2");
  EXPECT_NE(BoundaryOf(PartType(parsed.parts[0])), "=_tern-tok3");
}

TEST(InlinePart, RequiresHeadersContentIdAnd7bitEncodedData) {
  EXPECT_TRUE(InlinePart::Parse(ImagePartText(), "i").ok());
  EXPECT_EQ(InlinePart::Parse(ImagePartText(), "i")->content_id(), "logo@tern.test");
  struct Case {
    const char* label;
    std::string text;
    const char* error;
  };
  const Case cases[] = {
      {"no headers", "iVBORw0KGgo=\n", "expected a header field"},
      {"no body", "Content-Type: image/png\nContent-ID: <x>\n", "expected MIME header fields"},
      {"no content-id", "Content-Type: image/png\nContent-Transfer-Encoding: base64\n\nAAAA\n", "Content-ID"},
      {"no content-type", "Content-ID: <x>\nContent-Transfer-Encoding: base64\n\nAAAA\n", "no Content-Type"},
      {"binary", "Content-Type: image/png\nContent-ID: <x>\nContent-Transfer-Encoding: binary\n\nAAAA\n",
       "is not base64"},
      {"raw bytes", "Content-Type: image/png\nContent-ID: <x>\n\n\x89PNG\n", "7-bit"},
      {"long line", "Content-Type: image/png\nContent-ID: <x>\n\n" + std::string(1000, 'A') + "\n", "998"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    absl::StatusOr<InlinePart> part = InlinePart::Parse(c.text, "outbound.bounce_message_image");
    ASSERT_FALSE(part.ok());
    EXPECT_THAT(std::string(part.status().message()), HasSubstr("outbound.bounce_message_image"));
    EXPECT_THAT(std::string(part.status().message()), HasSubstr(c.error));
  }
}

TEST(HtmlTemplate, RejectsInvalidUtf8AndKnowsWhenBlank) {
  EXPECT_FALSE(HtmlTemplate::Parse("<p>\xFF</p>\n", "h").ok());
  EXPECT_FALSE(HtmlTemplate::Parse(" \n\t\n", "h")->has_content());
  EXPECT_TRUE(HtmlTemplate::Parse("<p>x</p>", "h")->has_content());
}

// ---- template parsing and helpers ----------------------------------------

TEST(DsnTemplate, SplitsHeadersFromBodyAndJoinsContinuations) {
  absl::StatusOr<DsnTemplate> t = DsnTemplate::Parse("Subject: a\r\n  b\r\nTo: {to}\r\n\r\nline 1\r\n\r\nline 3\r\n", "t");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->headers().size(), 2u);
  EXPECT_EQ(t->headers()[0].name, "Subject");
  EXPECT_EQ(t->headers()[0].value, "a b");
  EXPECT_EQ(t->headers()[1].value, "{to}");
  EXPECT_THAT(t->body_lines(), testing::ElementsAre("line 1", "", "line 3"));
}

TEST(DsnTemplate, TemplateWithoutHeaderSectionIsAllText) {
  absl::StatusOr<DsnTemplate> t = DsnTemplate::Parse("Hello. Sorry: it failed.\n", "t");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->headers().empty());
  EXPECT_THAT(t->body_lines(), testing::ElementsAre("Hello. Sorry: it failed."));
}

TEST(DsnTemplate, DropsFieldsTernOwns) {
  absl::StatusOr<DsnTemplate> t =
      DsnTemplate::Parse("Subject: x\nContent-Type: text/plain;\n charset=latin1\nMIME-Version: 1.0\n\nbody\n", "t");
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->headers().size(), 1u);
  EXPECT_THAT(t->dropped_headers(), testing::ElementsAre("Content-Type", "MIME-Version"));
}

TEST(DsnTemplate, RejectsGarbageInHeaderSectionAndInvalidUtf8) {
  absl::StatusOr<DsnTemplate> bad = DsnTemplate::Parse("Subject: x\nnot a header\n\nbody\n", "outbound.bounce_message");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("outbound.bounce_message line 2"));
  EXPECT_FALSE(DsnTemplate::Parse("Subject: \xFF\n\nbody\n", "t").ok());
}

TEST(DeriveStatus, UsesValidCodeElseReplyClassElseAction) {
  struct Case {
    const char* label;
    const char* status;
    int code;
    Action action;
    const char* expected;
  };
  const Case cases[] = {
      {"given", "5.7.26", 550, Action::kFailed, "5.7.26"},
      {"two-digit code is invalid", "5.7", 550, Action::kFailed, "5.0.0"},
      {"bad class", "3.1.1", 421, Action::kDelayed, "4.0.0"},
      {"2xx", "", 250, Action::kDelivered, "2.0.0"},
      {"no reply, failed", "", 0, Action::kFailed, "5.0.0"},
      {"no reply, delayed", "", 0, Action::kDelayed, "4.0.0"},
      {"no reply, delivered", "", 0, Action::kDelivered, "2.0.0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    RecipientStatus r;
    r.status = c.status;
    r.reply_code = c.code;
    r.action = c.action;
    EXPECT_EQ(DeriveStatus(r), c.expected);
  }
}

}  // namespace
}  // namespace tern::dsn
