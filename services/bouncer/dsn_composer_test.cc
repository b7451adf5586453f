#include "services/bouncer/dsn_composer.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tern::bouncer {
namespace {

namespace v1 = ::tern::v1;
using ::testing::ElementsAre;
using ::testing::Field;

constexpr char kOriginal[] =
    "From: Alice <alice@example.com>\r\n"
    "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= from\r\n"
    " Alice\r\n"
    "Message-Id: <orig-1@example.com>\r\n"
    "\r\n"
    "body line\r\n";

v1::BouncedRecipient* AddRecipient(v1::BounceJob& job, const std::string& addr, v1::Outcome outcome,
                                   uint32_t notify = 0) {
  v1::BouncedRecipient* r = job.add_recipients();
  r->mutable_spec()->set_address(addr);
  r->mutable_spec()->set_notify(notify);
  r->mutable_result()->set_outcome(outcome);
  return r;
}

v1::BounceJob FailedJob() {
  v1::BounceJob job;
  job.set_bounce_id("b-1");
  job.set_message_id("m-1");
  job.set_lease_token("lease");
  job.set_kind(v1::BOUNCE_KIND_FAILED);
  job.mutable_envelope()->set_mail_from("alice@example.com");
  job.mutable_envelope()->set_envid("ENV-42");
  job.mutable_envelope()->set_ret(v1::DSN_RET_FULL);
  job.set_arrival_unix_ms(1'795'000'000'000);
  job.set_original(kOriginal);
  job.set_original_is_full(true);
  v1::BouncedRecipient* r = AddRecipient(job, "bob@example.net", v1::OUTCOME_PERMANENT);
  r->mutable_spec()->set_orcpt("rfc822;Bob@Example.NET");
  v1::RecipientResult* res = r->mutable_result();
  res->set_reply_code(550);
  res->set_enhanced_status("5.1.1");
  res->set_reply_text("User unknown");
  res->set_remote_mta("mx1.example.net");
  res->set_remote_ip("192.0.2.25");
  res->set_at_unix_ms(1'795'000'060'000);
  return job;
}

TEST(DsnComposer, MapsEveryFieldOfAFailedJob) {
  ComposedReport c = ComposeReport(FailedJob(), "mx.tern.test");
  ASSERT_EQ(c.disposition, Disposition::kSend);
  const dsn::DeliveryReport& r = c.report;
  EXPECT_EQ(r.kind, dsn::ReportKind::kFailed);
  EXPECT_EQ(r.reporting_mta, "mx.tern.test");
  EXPECT_EQ(r.envid, "ENV-42");
  EXPECT_EQ(r.arrival, absl::FromUnixMillis(1'795'000'000'000));
  EXPECT_EQ(r.original_sender, "alice@example.com");
  EXPECT_EQ(r.original, kOriginal);
  EXPECT_TRUE(r.original_is_full);
  EXPECT_EQ(r.original_message_id, "<orig-1@example.com>");
  EXPECT_EQ(r.original_subject, "Gr\xC3\xBC\xC3\x9F" "e from Alice");
  ASSERT_EQ(r.recipients.size(), 1u);
  const dsn::RecipientStatus& s = r.recipients[0];
  EXPECT_EQ(s.final_recipient, "bob@example.net");
  EXPECT_EQ(s.original_recipient, "rfc822;Bob@Example.NET");
  EXPECT_EQ(s.action, dsn::Action::kFailed);
  EXPECT_EQ(s.status, "5.1.1");
  EXPECT_EQ(s.reply_code, 550);
  EXPECT_EQ(s.reply_text, "User unknown");
  EXPECT_EQ(s.remote_mta, "mx1.example.net");
  EXPECT_EQ(s.last_attempt, absl::FromUnixMillis(1'795'000'060'000));
  EXPECT_EQ(s.will_retry_until, std::nullopt);
}

TEST(DsnComposer, NullSenderIsADoubleBounce) {
  v1::BounceJob job = FailedJob();
  job.mutable_envelope()->set_mail_from("");
  EXPECT_EQ(ComposeReport(job, "me").disposition, Disposition::kDoubleBounce);
  job.mutable_envelope()->set_mail_from("<>");
  EXPECT_EQ(ComposeReport(job, "me").disposition, Disposition::kDoubleBounce);
}

TEST(DsnComposer, FailedReportSkipsDeliveredRecipients) {
  v1::BounceJob job = FailedJob();
  AddRecipient(job, "carol@example.org", v1::OUTCOME_DELIVERED);
  AddRecipient(job, "dave@example.org", v1::OUTCOME_TRANSIENT);  // retries used up
  ComposedReport c = ComposeReport(job, "me");
  ASSERT_EQ(c.disposition, Disposition::kSend);
  EXPECT_THAT(c.report.recipients,
              ElementsAre(Field(&dsn::RecipientStatus::final_recipient, "bob@example.net"),
                          Field(&dsn::RecipientStatus::final_recipient, "dave@example.org")));
  EXPECT_EQ(c.report.recipients[1].action, dsn::Action::kFailed);
}

TEST(DsnComposer, HonoursNotify) {
  struct Case {
    const char* label;
    v1::BounceKind kind;
    v1::Outcome outcome;
    uint32_t notify;
    bool reported;
  };
  const uint32_t kFailure = v1::NOTIFY_FAILURE;
  const uint32_t kDelay = v1::NOTIFY_DELAY;
  const uint32_t kSuccess = v1::NOTIFY_SUCCESS;
  const uint32_t kNever = v1::NOTIFY_NEVER;
  const Case cases[] = {
      {"failed, notify not given", v1::BOUNCE_KIND_FAILED, v1::OUTCOME_PERMANENT, 0, true},
      {"failed, FAILURE", v1::BOUNCE_KIND_FAILED, v1::OUTCOME_PERMANENT, kFailure, true},
      {"failed, SUCCESS only", v1::BOUNCE_KIND_FAILED, v1::OUTCOME_PERMANENT, kSuccess, false},
      {"failed, DELAY only", v1::BOUNCE_KIND_FAILED, v1::OUTCOME_PERMANENT, kDelay, false},
      {"failed, NEVER", v1::BOUNCE_KIND_FAILED, v1::OUTCOME_PERMANENT, kNever, false},
      {"delayed, notify not given", v1::BOUNCE_KIND_DELAYED, v1::OUTCOME_TRANSIENT, 0, true},
      {"delayed, DELAY", v1::BOUNCE_KIND_DELAYED, v1::OUTCOME_TRANSIENT, kDelay | kFailure, true},
      {"delayed, FAILURE only", v1::BOUNCE_KIND_DELAYED, v1::OUTCOME_TRANSIENT, kFailure, false},
      {"delayed, but permanent", v1::BOUNCE_KIND_DELAYED, v1::OUTCOME_PERMANENT, kDelay, false},
      {"delivered, notify not given", v1::BOUNCE_KIND_DELIVERED, v1::OUTCOME_DELIVERED, 0, false},
      {"delivered, SUCCESS", v1::BOUNCE_KIND_DELIVERED, v1::OUTCOME_DELIVERED, kSuccess, true},
      {"delivered, but failed", v1::BOUNCE_KIND_DELIVERED, v1::OUTCOME_PERMANENT, kSuccess, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    v1::BounceJob job = FailedJob();
    job.set_kind(c.kind);
    job.mutable_recipients(0)->mutable_spec()->set_notify(c.notify);
    job.mutable_recipients(0)->mutable_result()->set_outcome(c.outcome);
    ComposedReport composed = ComposeReport(job, "me");
    EXPECT_EQ(composed.disposition, c.reported ? Disposition::kSend : Disposition::kNothingToReport);
  }
}

TEST(DsnComposer, KindSetsActionOfEveryRecipient) {
  v1::BounceJob job = FailedJob();
  job.set_kind(v1::BOUNCE_KIND_DELAYED);
  job.mutable_recipients(0)->mutable_result()->set_outcome(v1::OUTCOME_TRANSIENT);
  ComposedReport c = ComposeReport(job, "me");
  ASSERT_EQ(c.disposition, Disposition::kSend);
  EXPECT_EQ(c.report.kind, dsn::ReportKind::kDelayed);
  EXPECT_EQ(c.report.recipients[0].action, dsn::Action::kDelayed);

  job = FailedJob();
  job.set_kind(v1::BOUNCE_KIND_UNSPECIFIED);
  c = ComposeReport(job, "me");
  EXPECT_EQ(c.report.kind, dsn::ReportKind::kFailed);
  EXPECT_EQ(c.report.recipients[0].action, dsn::Action::kFailed);
}

TEST(DsnComposer, RetHdrsAttachesOnlyHeadersEvenIfQueueSentAll) {
  v1::BounceJob job = FailedJob();
  job.mutable_envelope()->set_ret(v1::DSN_RET_HDRS);
  EXPECT_FALSE(ComposeReport(job, "me").report.original_is_full);
  job.mutable_envelope()->set_ret(v1::DSN_RET_FULL);
  job.set_original_is_full(false);  // e.g. over the queue's size limit
  EXPECT_FALSE(ComposeReport(job, "me").report.original_is_full);
}

TEST(DsnComposer, MissingTimesStayUnset) {
  v1::BounceJob job = FailedJob();
  job.set_arrival_unix_ms(0);
  job.mutable_recipients(0)->mutable_result()->set_at_unix_ms(0);
  ComposedReport c = ComposeReport(job, "me");
  EXPECT_EQ(c.report.arrival, std::nullopt);
  EXPECT_EQ(c.report.recipients[0].last_attempt, std::nullopt);
}

TEST(DsnComposer, EnqueueHeaderSendsFromNullSenderToOriginalSender) {
  v1::BounceJob job = FailedJob();
  dsn::RenderedDsn rendered;
  rendered.message = "Subject: x\r\n\r\nbody\r\n";
  rendered.body_8bit = true;
  v1::EnqueueHeader h = MakeDsnEnqueueHeader(job, rendered);
  EXPECT_EQ(h.envelope().mail_from(), "");
  ASSERT_EQ(h.envelope().recipients_size(), 1);
  EXPECT_EQ(h.envelope().recipients(0).address(), "alice@example.com");
  EXPECT_EQ(h.envelope().recipients(0).notify(), 0u);
  EXPECT_EQ(h.idempotency_key(), "dsn:b-1");
  EXPECT_EQ(h.expected_size(), rendered.message.size());
  EXPECT_TRUE(h.envelope().body_8bit());
  EXPECT_FALSE(h.envelope().smtputf8());
  EXPECT_EQ(h.envelope().envid(), "");  // the DSN is a new message

  job.mutable_envelope()->set_mail_from("j\xC3\xB6rg@example.de");
  EXPECT_TRUE(MakeDsnEnqueueHeader(job, rendered).envelope().smtputf8());
}

}  // namespace
}  // namespace tern::bouncer
