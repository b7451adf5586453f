#include "lib/dsn/report_parser.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "lib/dsn/dsn_renderer.h"

namespace tern::dsn {
namespace {

constexpr absl::string_view kTemplate =
    "From: MAILER-DAEMON@{me}\n"
    "To: {to}\n"
    "Subject: Undelivered: {subject}\n"
    "\n"
    "Your message to {recipients} failed: {reason}\n";

absl::Time At(int hour, int minute) {
  return absl::FromCivil(absl::CivilSecond(2026, 11, 21, hour, minute, 0), absl::UTCTimeZone());
}

std::string Render(const DeliveryReport& report) {
  absl::StatusOr<DsnTemplate> tmpl = DsnTemplate::Parse(kTemplate, "outbound.bounce_message");
  EXPECT_TRUE(tmpl.ok()) << tmpl.status();
  int n = 0;
  DsnRenderer renderer(*std::move(tmpl), [&n] { return absl::StrCat("tok", ++n); }, 1);
  absl::StatusOr<RenderedDsn> dsn = renderer.Render(report, At(12, 0));
  EXPECT_TRUE(dsn.ok()) << dsn.status();
  return dsn.ok() ? dsn->message : "";
}

DeliveryReport TwoRecipients() {
  DeliveryReport report;
  report.kind = ReportKind::kFailed;
  report.reporting_mta = "mx.tern.test";
  report.envid = "env-42";
  report.arrival = At(9, 58);
  report.original_sender = "alice@example.com";
  report.original = "Subject: secret plans\r\nMessage-Id: <m1@example.com>\r\n\r\nbody\r\n";
  report.original_subject = "secret plans";
  RecipientStatus bob;
  bob.final_recipient = "bob@example.net";
  bob.original_recipient = "rfc822;Bob@Example.net";
  bob.action = Action::kFailed;
  bob.status = "5.7.30";
  bob.reply_code = 550;
  bob.reply_text = "5.7.30 REQUIRETLS support required";
  bob.remote_mta = "mx1.example.net";
  bob.last_attempt = At(10, 1);
  report.recipients.push_back(bob);
  RecipientStatus jorg;
  jorg.final_recipient = "jörg@bücher.example";
  jorg.action = Action::kDelayed;
  jorg.status = "4.4.1";
  jorg.reply_text = "connect to mx.bücher.example: Connection refused";
  jorg.last_attempt = At(10, 2);
  jorg.will_retry_until = At(23, 0);
  report.recipients.push_back(jorg);
  return report;
}

TEST(ReportParser, ReadsBackWhatTheRendererWrote) {
  absl::StatusOr<DeliveryReport> parsed = ParseDeliveryReport(Render(TwoRecipients()));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->kind, ReportKind::kFailed);
  EXPECT_EQ(parsed->reporting_mta, "mx.tern.test");
  EXPECT_EQ(parsed->envid, "env-42");
  EXPECT_EQ(parsed->arrival, At(9, 58));
  ASSERT_EQ(parsed->recipients.size(), 2u);
  const RecipientStatus& bob = parsed->recipients[0];
  EXPECT_EQ(bob.final_recipient, "bob@example.net");
  EXPECT_EQ(bob.original_recipient, "rfc822;Bob@Example.net");
  EXPECT_EQ(bob.action, Action::kFailed);
  EXPECT_EQ(bob.status, "5.7.30");
  EXPECT_EQ(bob.reply_code, 550);
  EXPECT_EQ(bob.reply_text, "5.7.30 REQUIRETLS support required");
  EXPECT_EQ(bob.remote_mta, "mx1.example.net");
  EXPECT_EQ(bob.last_attempt, At(10, 1));
  const RecipientStatus& jorg = parsed->recipients[1];
  EXPECT_EQ(jorg.final_recipient, "jörg@bücher.example") << "utf-8 addresses come back decoded";
  EXPECT_EQ(jorg.action, Action::kDelayed);
  EXPECT_EQ(jorg.status, "4.4.1");
  EXPECT_EQ(jorg.reply_code, 0) << "no SMTP reply: Tern's own words (X-Tern), ASCII only";
  EXPECT_EQ(jorg.reply_text, "connect to mx.b??cher.example: Connection refused");
  EXPECT_EQ(jorg.will_retry_until, At(23, 0));
  // The original is never read back.
  EXPECT_TRUE(parsed->original.empty());
  EXPECT_TRUE(parsed->original_subject.empty());
  EXPECT_TRUE(parsed->original_message_id.empty());
}

TEST(ReportParser, ARedactedReRenderingKeepsTheReportAndDropsTheOriginal) {
  const std::string first = Render(TwoRecipients());
  ASSERT_NE(first.find("secret plans"), std::string::npos);
  absl::StatusOr<DeliveryReport> parsed = ParseDeliveryReport(first);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  parsed->original_sender = "alice@example.com";
  parsed->original_withheld = true;
  const std::string redacted = Render(*parsed);
  EXPECT_EQ(redacted.find("secret plans"), std::string::npos) << redacted;
  EXPECT_EQ(redacted.find("m1@example.com"), std::string::npos) << redacted;
  EXPECT_EQ(redacted.find("text/rfc822-headers"), std::string::npos) << redacted;
  EXPECT_EQ(redacted.find("message/rfc822"), std::string::npos) << redacted;
  // The same report, field for field.
  absl::StatusOr<DeliveryReport> again = ParseDeliveryReport(redacted);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->recipients.size(), 2u);
  EXPECT_EQ(again->recipients[0].reply_text, parsed->recipients[0].reply_text);
  EXPECT_EQ(again->recipients[1].final_recipient, "jörg@bücher.example");
  EXPECT_EQ(again->envid, "env-42");
}

TEST(ReportParser, ReadsAForeignReportWithLfLinesFoldsAndComments) {
  // Shaped like Postfix's bounces: LF line ends, an X-Postfix diagnostic,
  // folded values, a quoted boundary, fields in odd case.
  const std::string message =
      "From: MAILER-DAEMON (Mail Delivery System)\n"
      "Subject: Undelivered Mail Returned to Sender\n"
      "MIME-Version: 1.0\n"
      "Content-Type: multipart/report; report-type=delivery-status;\n"
      "\tboundary=\"8E3A1C0.1700000000/mail.example.org\"\n"
      "\n"
      "This is a MIME-encapsulated message.\n"
      "\n"
      "--8E3A1C0.1700000000/mail.example.org\n"
      "Content-Description: Notification\n"
      "Content-Type: text/plain; charset=us-ascii\n"
      "\n"
      "I'm sorry to have to inform you that your message could not be delivered.\n"
      "\n"
      "--8E3A1C0.1700000000/mail.example.org\n"
      "Content-Description: Delivery report\n"
      "Content-Type: message/delivery-status\n"
      "\n"
      "Reporting-MTA: dns; mail.example.org\n"
      "X-Postfix-Queue-ID: 8E3A1C0\n"
      "Arrival-Date: Sat, 21 Nov 2026 09:58:00 +0100 (CET)\n"
      "\n"
      "final-recipient: RFC822; carol@example.net\n"
      "ACTION: failed (no such user)\n"
      "Status: 5.1.1\n"
      "Remote-MTA: dns; mx.example.net\n"
      "Diagnostic-Code: smtp; 550 5.1.1 <carol@example.net>:\n"
      "    Recipient address rejected\n"
      "\n"
      "Final-Recipient: rfc822; dave@example.net\n"
      "Action: failed\n"
      "Status: 5.4.4\n"
      "Diagnostic-Code: X-Postfix; Host or domain name not found\n"
      "\n"
      "--8E3A1C0.1700000000/mail.example.org\n"
      "Content-Description: Undelivered Message Headers\n"
      "Content-Type: text/rfc822-headers\n"
      "\n"
      "Subject: hello\n"
      "\n"
      "--8E3A1C0.1700000000/mail.example.org--\n";
  absl::StatusOr<DeliveryReport> parsed = ParseDeliveryReport(message);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->reporting_mta, "mail.example.org");
  EXPECT_FALSE(parsed->arrival) << "a trailing comment is not an RFC 5322 date this parser reads";
  ASSERT_EQ(parsed->recipients.size(), 2u);
  EXPECT_EQ(parsed->recipients[0].final_recipient, "carol@example.net");
  EXPECT_EQ(parsed->recipients[0].action, Action::kFailed);
  EXPECT_EQ(parsed->recipients[0].reply_code, 550);
  EXPECT_EQ(parsed->recipients[0].reply_text, "5.1.1 <carol@example.net>: Recipient address rejected");
  EXPECT_EQ(parsed->recipients[1].reply_code, 0);
  EXPECT_EQ(parsed->recipients[1].reply_text, "Host or domain name not found");
  EXPECT_EQ(parsed->recipients[1].status, "5.4.4");
}

TEST(ReportParser, RefusesWhatIsNotAReport) {
  EXPECT_FALSE(ParseDeliveryReport("Subject: hi\r\n\r\nplain text\r\n").ok());
  EXPECT_FALSE(ParseDeliveryReport("Content-Type: multipart/report\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n").ok())
      << "no boundary";
  // A report whose only parts are text.
  EXPECT_FALSE(
      ParseDeliveryReport("Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n").ok());
  // A delivery-status part with no recipient group, and one with a group
  // that has no Final-Recipient.
  const std::string head =
      "Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n"
      "Reporting-MTA: dns; a.example\r\n";
  EXPECT_FALSE(ParseDeliveryReport(absl::StrCat(head, "--x--\r\n")).ok());
  EXPECT_FALSE(ParseDeliveryReport(absl::StrCat(head, "\r\nAction: failed\r\nStatus: 5.0.0\r\n--x--\r\n")).ok());
  EXPECT_FALSE(
      ParseDeliveryReport(absl::StrCat(head, "\r\nFinal-Recipient: rfc822;a@b\r\nAction: vanished\r\n--x--\r\n"))
          .ok());
  // The same, well formed.
  absl::StatusOr<DeliveryReport> ok =
      ParseDeliveryReport(absl::StrCat(head, "\r\nFinal-Recipient: rfc822;a@b\r\nAction: delayed\r\n--x--\r\n"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->kind, ReportKind::kDelayed);
}

}  // namespace
}  // namespace tern::dsn
