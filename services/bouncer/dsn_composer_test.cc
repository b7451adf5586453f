#include "services/bouncer/dsn_composer.h"

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/config/config_dir.h"
#include "lib/mime/header.h"
#include "services/bouncer/bouncer_config.h"

namespace tern::bouncer {
namespace {

namespace v1 = ::tern::v1;
using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;

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

TEST(DsnComposer, RequireTlsOriginalIsReturnedAsHeadersOnlyAndItsReportKeepsRequireTls) {
  v1::BounceJob job = FailedJob();  // RET=FULL, the whole original sent
  ASSERT_TRUE(ComposeReport(job, "me").report.original_is_full);
  job.mutable_envelope()->set_requiretls(true);
  EXPECT_FALSE(ComposeReport(job, "me").report.original_is_full);

  dsn::RenderedDsn rendered;
  rendered.message = "Subject: x\r\n\r\nbody\r\n";
  EXPECT_TRUE(MakeDsnEnqueueHeader(job, rendered, "alice@example.com", "failed").envelope().requiretls());
  job.mutable_envelope()->set_requiretls(false);
  EXPECT_FALSE(MakeDsnEnqueueHeader(job, rendered, "alice@example.com", "failed").envelope().requiretls());
}

TEST(DsnComposer, OnlyARequireTlsDsnThatFailedOnTlsIsRedacted) {
  // A failed DSN with REQUIRETLS whose one recipient failed with 5.7.30;
  // its text (job.original) is a report on bob.
  const std::string report =
      "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
      "--b\r\n\r\nsorry\r\n"
      "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns;mx.tern.test\r\n\r\n"
      "Final-Recipient: rfc822;bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
      "--b\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: secret\r\n--b--\r\n";
  auto make = [&] {
    v1::BounceJob job;
    job.set_kind(v1::BOUNCE_KIND_FAILED);
    job.mutable_envelope()->set_requiretls(true);
    job.set_original(report);
    v1::BouncedRecipient* r = job.add_recipients();
    r->mutable_spec()->set_address("alice@example.com");
    r->mutable_result()->set_outcome(v1::OUTCOME_PERMANENT);
    r->mutable_result()->set_enhanced_status("5.7.30");
    return job;
  };
  std::string to;
  ComposedReport c = ComposeRedactedReport(make(), "me", &to);
  ASSERT_EQ(c.disposition, Disposition::kSend) << c.why;
  EXPECT_EQ(to, "alice@example.com");
  EXPECT_EQ(c.report.original_sender, "alice@example.com");
  EXPECT_TRUE(c.report.original_withheld);
  EXPECT_TRUE(c.report.original.empty());
  ASSERT_EQ(c.report.recipients.size(), 1u);
  EXPECT_EQ(c.report.recipients[0].final_recipient, "bob@example.net");
  dsn::RenderedDsn rendered;
  EXPECT_FALSE(MakeDsnEnqueueHeader(make(), rendered, to, kRedactedNote).envelope().requiretls());

  v1::BounceJob job = make();
  job.mutable_envelope()->set_mail_from("alice@example.com");  // not a DSN: it gets a DSN of its own
  EXPECT_EQ(ComposeRedactedReport(job, "me", &to).why, "not_requiretls");
  job = make();
  job.mutable_envelope()->set_requiretls(false);
  EXPECT_EQ(ComposeRedactedReport(job, "me", &to).why, "not_requiretls");
  job = make();
  job.set_kind(v1::BOUNCE_KIND_DELAYED);
  EXPECT_EQ(ComposeRedactedReport(job, "me", &to).why, "not_requiretls");
  job = make();
  *job.add_recipients() = job.recipients(0);
  EXPECT_EQ(ComposeRedactedReport(job, "me", &to).why, "recipients");
  job = make();
  job.mutable_recipients(0)->mutable_result()->set_enhanced_status("5.7.1");
  EXPECT_EQ(ComposeRedactedReport(job, "me", &to).why, "not_tls_failure");
  job = make();
  job.mutable_recipients(0)->mutable_result()->set_outcome(v1::OUTCOME_DELIVERED);
  EXPECT_EQ(ComposeRedactedReport(job, "me", &to).why, "not_tls_failure");
  job = make();
  job.set_original("Subject: hi\r\n\r\nhi\r\n");
  EXPECT_EQ(ComposeRedactedReport(job, "me", &to).why.rfind("unreadable: ", 0), 0u);
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
  v1::EnqueueHeader h = MakeDsnEnqueueHeader(job, rendered, "alice@example.com", "failed");
  EXPECT_EQ(h.envelope().mail_from(), "");
  ASSERT_EQ(h.envelope().recipients_size(), 1);
  EXPECT_EQ(h.envelope().recipients(0).address(), "alice@example.com");
  EXPECT_EQ(h.envelope().recipients(0).notify(), 0u);
  EXPECT_EQ(h.idempotency_key(), "dsn:b-1");
  EXPECT_EQ(h.expected_size(), rendered.message.size());
  EXPECT_TRUE(h.envelope().body_8bit());
  EXPECT_FALSE(h.envelope().smtputf8());
  EXPECT_EQ(h.envelope().envid(), "");  // the DSN is a new message
  EXPECT_EQ(h.envelope().notes().at(kDsnNoteKey), "failed");

  EXPECT_TRUE(MakeDsnEnqueueHeader(job, rendered, "j\xC3\xB6rg@example.de", "failed").envelope().smtputf8());
}

TEST(DsnComposer, DelayedReportTakesWillRetryUntilFromTheJob) {
  v1::BounceJob job = FailedJob();
  job.set_kind(v1::BOUNCE_KIND_DELAYED);
  job.set_will_retry_until_unix_ms(1'795'432'000'000);
  job.mutable_recipients(0)->mutable_result()->set_outcome(v1::OUTCOME_TRANSIENT);
  ComposedReport c = ComposeReport(job, "me");
  ASSERT_EQ(c.disposition, Disposition::kSend);
  EXPECT_EQ(c.report.recipients[0].will_retry_until, absl::FromUnixMillis(1'795'432'000'000));

  job.set_will_retry_until_unix_ms(0);  // unknown: no field
  EXPECT_EQ(ComposeReport(job, "me").report.recipients[0].will_retry_until, std::nullopt);
}

TEST(DsnComposer, RetFullOverTheSizeLimitAttachesHeadersOnly) {
  v1::BounceJob job = FailedJob();
  ComposeOptions options;
  options.max_original_bytes = std::string(kOriginal).size();
  ComposedReport at_limit = ComposeReport(job, "me", options);
  EXPECT_TRUE(at_limit.report.original_is_full);
  EXPECT_FALSE(at_limit.original_trimmed);

  options.max_original_bytes -= 1;
  ComposedReport over = ComposeReport(job, "me", options);
  ASSERT_EQ(over.disposition, Disposition::kSend);
  EXPECT_FALSE(over.report.original_is_full);
  EXPECT_TRUE(over.original_trimmed);
  EXPECT_EQ(over.report.original, std::string(kOriginal).substr(0, std::string(kOriginal).find("\r\n\r\n") + 2));
  EXPECT_EQ(over.report.original_message_id, "<orig-1@example.com>");
}

TEST(DsnComposer, SuppressionBySenderDomainDropsTheDsn) {
  absl::StatusOr<SuppressionRules> rules = SuppressionRules::Create({"example.com"}, {}, "d", "s");
  ASSERT_TRUE(rules.ok());
  ComposeOptions options;
  options.suppression = &*rules;
  ComposedReport c = ComposeReport(FailedJob(), "me", options);
  EXPECT_EQ(c.disposition, Disposition::kSuppressed);
  EXPECT_EQ(c.why, "sender_domain");
}

TEST(DsnComposer, SuppressionByStatusDropsOnlyMatchingRecipients) {
  absl::StatusOr<SuppressionRules> rules = SuppressionRules::Create({}, {"5.7.*"}, "d", "s");
  ASSERT_TRUE(rules.ok());
  ComposeOptions options;
  options.suppression = &*rules;
  v1::BounceJob job = FailedJob();
  v1::BouncedRecipient* spam = AddRecipient(job, "carol@example.org", v1::OUTCOME_PERMANENT);
  spam->mutable_result()->set_reply_code(550);
  spam->mutable_result()->set_enhanced_status("5.7.1");
  ComposedReport c = ComposeReport(job, "me", options);
  ASSERT_EQ(c.disposition, Disposition::kSend);
  EXPECT_THAT(c.report.recipients, ElementsAre(Field(&dsn::RecipientStatus::final_recipient, "bob@example.net")));
  EXPECT_THAT(c.suppressed_recipients, ElementsAre("carol@example.org"));

  job.mutable_recipients()->DeleteSubrange(0, 1);
  c = ComposeReport(job, "me", options);
  EXPECT_EQ(c.disposition, Disposition::kSuppressed);
  EXPECT_EQ(c.why, "status");
}

TEST(DsnComposer, DoubleBounceCopyGoesToThePostmasterAndIsMarked) {
  v1::BounceJob job = FailedJob();
  job.mutable_envelope()->set_mail_from("");
  job.mutable_recipients(0)->mutable_spec()->set_notify(v1::NOTIFY_NEVER);  // ignored for the copy
  AddRecipient(job, "ok@example.org", v1::OUTCOME_DELIVERED);
  EXPECT_FALSE(IsDoubleBounceCopy(job));
  ComposedReport c = ComposeDoubleBounceCopy(job, "mx.tern.test", "postmaster@tern.test");
  ASSERT_EQ(c.disposition, Disposition::kSend);
  EXPECT_EQ(c.report.original_sender, "postmaster@tern.test");
  EXPECT_EQ(c.report.kind, dsn::ReportKind::kFailed);
  EXPECT_THAT(c.report.recipients, ElementsAre(Field(&dsn::RecipientStatus::final_recipient, "bob@example.net")));
  EXPECT_EQ(c.report.original_message_id, "<orig-1@example.com>");

  (*job.mutable_envelope()->mutable_notes())[kDsnNoteKey] = kDoubleBounceCopyNote;
  EXPECT_TRUE(IsDoubleBounceCopy(job));
  (*job.mutable_envelope()->mutable_notes())[kDsnNoteKey] = "failed";
  EXPECT_FALSE(IsDoubleBounceCopy(job));
}

// ---- golden files through the shipped templates ---------------------------

std::string GoldenPath(absl::string_view name) {
  return absl::StrCat(TERN_SOURCE_DIR, "/tests/testdata/dsn/", name, ".eml");
}

// Byte-for-byte comparison; TERN_UPDATE_GOLDEN=1 rewrites the file.
void ExpectGolden(absl::string_view name, const std::string& actual) {
  const std::string path = GoldenPath(name);
  const char* update = std::getenv("TERN_UPDATE_GOLDEN");
  if (update != nullptr && std::string(update) == "1") {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    ASSERT_TRUE(out.good()) << "cannot write " << path;
    out << actual;
    return;
  }
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in.good()) << "missing golden file " << path << " (run with TERN_UPDATE_GOLDEN=1 to create it)";
  std::stringstream buffer;
  buffer << in.rdbuf();
  EXPECT_EQ(buffer.str(), actual) << "DSN differs from " << path << "; rerun with TERN_UPDATE_GOLDEN=1 if intended";
}

// Renders `job` as tern-bouncer would with the deploy config's templates.
std::string RenderWithDeployTemplates(const v1::BounceJob& job, absl::Time now) {
  absl::StatusOr<BouncerConfig> cfg =
      LoadBouncerConfig(config::ConfigDir(std::string(TERN_SOURCE_DIR) + "/deploy/config"));
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  ComposedReport c = ComposeReport(job, "mx.tern.test");
  EXPECT_EQ(c.disposition, Disposition::kSend);
  absl::StatusOr<dsn::DsnTemplates> templates = cfg->TemplatesFor(c.report.kind);
  EXPECT_TRUE(templates.ok()) << templates.status();
  auto n = std::make_shared<int>(0);
  dsn::DsnRenderer renderer(*std::move(templates), [n] { return absl::StrCat("tok", ++*n); }, 4242);
  absl::StatusOr<dsn::RenderedDsn> dsn = renderer.Render(c.report, now);
  EXPECT_TRUE(dsn.ok()) << dsn.status();
  return dsn.ok() ? dsn->message : "";
}

TEST(DsnComposerGolden, FailedJobWithShippedTextAndHtmlTemplates) {
  v1::BounceJob job = FailedJob();
  v1::BouncedRecipient* carol = AddRecipient(job, "carol@example.org", v1::OUTCOME_PERMANENT);
  carol->mutable_result()->set_reply_code(554);
  carol->mutable_result()->set_reply_text("5.7.1 <carol@example.org>: Relay access denied");
  carol->mutable_result()->set_remote_mta("mx.example.org");
  AddRecipient(job, "dave@example.org", v1::OUTCOME_DELIVERED);  // not in a failure DSN
  std::string message = RenderWithDeployTemplates(job, absl::FromUnixMillis(1'795'000'120'000));
  ExpectGolden("job_failed_deploy_templates", message);
  EXPECT_THAT(message, HasSubstr("Content-Type: multipart/alternative;"));
  EXPECT_THAT(message, HasSubstr("Content-Type: message/rfc822\r\n"));
  EXPECT_THAT(message, ::testing::Not(HasSubstr("dave@example.org")));
}

TEST(DsnComposerGolden, DelayedJobCarriesWillRetryUntilFromTheQueue) {
  v1::BounceJob job = FailedJob();
  job.set_kind(v1::BOUNCE_KIND_DELAYED);
  job.mutable_envelope()->set_ret(v1::DSN_RET_HDRS);
  job.set_will_retry_until_unix_ms(1'795'432'000'000);
  v1::RecipientResult* res = job.mutable_recipients(0)->mutable_result();
  res->set_outcome(v1::OUTCOME_TRANSIENT);
  res->set_reply_code(451);
  res->set_enhanced_status("4.7.1");
  res->set_reply_text("Greylisted, please try again later");
  std::string message = RenderWithDeployTemplates(job, absl::FromUnixMillis(1'795'014'400'000));
  ExpectGolden("job_delayed", message);
  EXPECT_THAT(message, HasSubstr("Action: delayed\r\n"));
  EXPECT_THAT(message,
              HasSubstr("Will-Retry-Until: " + mime::FormatRfc5322Date(absl::FromUnixMillis(1'795'432'000'000))));
}

}  // namespace
}  // namespace tern::bouncer
