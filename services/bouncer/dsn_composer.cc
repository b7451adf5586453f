#include "services/bouncer/dsn_composer.h"

#include "absl/strings/str_cat.h"
#include "lib/mime/header.h"

namespace tern::bouncer {
namespace {

namespace v1 = ::tern::v1;

bool IsNullSender(absl::string_view mail_from) { return mail_from.empty() || mail_from == "<>"; }

// Whether NOTIFY (a NotifyFlag bit set; 0 = not given) asks for this kind.
bool NotifyAllows(uint32_t notify, dsn::ReportKind kind) {
  if (notify & v1::NOTIFY_NEVER) {
    return false;
  }
  switch (kind) {
    case dsn::ReportKind::kFailed:
      return notify == 0 || (notify & v1::NOTIFY_FAILURE);
    case dsn::ReportKind::kDelayed:
      return notify == 0 || (notify & v1::NOTIFY_DELAY);
    case dsn::ReportKind::kDelivered:
      return (notify & v1::NOTIFY_SUCCESS) != 0;
  }
  return false;
}

// Whether the recipient's last outcome fits a report of this kind.
bool OutcomeFits(v1::Outcome outcome, dsn::ReportKind kind) {
  switch (kind) {
    case dsn::ReportKind::kFailed:
      return outcome != v1::OUTCOME_DELIVERED;
    case dsn::ReportKind::kDelayed:
      return outcome == v1::OUTCOME_TRANSIENT || outcome == v1::OUTCOME_UNSPECIFIED;
    case dsn::ReportKind::kDelivered:
      return outcome == v1::OUTCOME_DELIVERED;
  }
  return false;
}

dsn::Action ActionFor(dsn::ReportKind kind) {
  switch (kind) {
    case dsn::ReportKind::kDelayed:
      return dsn::Action::kDelayed;
    case dsn::ReportKind::kDelivered:
      return dsn::Action::kDelivered;
    case dsn::ReportKind::kFailed:
      break;
  }
  return dsn::Action::kFailed;
}

std::optional<absl::Time> FromUnixMs(int64_t ms) {
  if (ms <= 0) {
    return std::nullopt;
  }
  return absl::FromUnixMillis(ms);
}

}  // namespace

dsn::ReportKind KindOf(v1::BounceKind kind) {
  switch (kind) {
    case v1::BOUNCE_KIND_DELAYED:
      return dsn::ReportKind::kDelayed;
    case v1::BOUNCE_KIND_DELIVERED:
      return dsn::ReportKind::kDelivered;
    default:
      return dsn::ReportKind::kFailed;
  }
}

absl::string_view KindName(dsn::ReportKind kind) {
  switch (kind) {
    case dsn::ReportKind::kDelayed:
      return "delayed";
    case dsn::ReportKind::kDelivered:
      return "delivered";
    case dsn::ReportKind::kFailed:
      break;
  }
  return "failed";
}

ComposedReport ComposeReport(const v1::BounceJob& job, absl::string_view me) {
  ComposedReport out;
  const v1::Envelope& env = job.envelope();
  if (IsNullSender(env.mail_from())) {
    out.disposition = Disposition::kDoubleBounce;
    return out;
  }
  dsn::DeliveryReport& report = out.report;
  report.kind = KindOf(job.kind());
  report.reporting_mta = std::string(me);
  report.envid = env.envid();
  report.arrival = FromUnixMs(job.arrival_unix_ms());
  report.original_sender = env.mail_from();

  const dsn::Action action = ActionFor(report.kind);
  for (const v1::BouncedRecipient& br : job.recipients()) {
    if (!NotifyAllows(br.spec().notify(), report.kind) || !OutcomeFits(br.result().outcome(), report.kind)) {
      continue;
    }
    const v1::RecipientResult& res = br.result();
    dsn::RecipientStatus r;
    r.final_recipient = br.spec().address();
    r.original_recipient = br.spec().orcpt();
    r.action = action;
    r.status = res.enhanced_status();
    r.reply_code = static_cast<int>(res.reply_code());
    r.reply_text = res.reply_text();
    r.remote_mta = res.remote_mta();
    r.last_attempt = FromUnixMs(res.at_unix_ms());
    report.recipients.push_back(std::move(r));
  }
  if (report.recipients.empty()) {
    out.disposition = Disposition::kNothingToReport;
    return out;
  }

  report.original = job.original();
  report.original_is_full = job.original_is_full() && env.ret() != v1::DSN_RET_HDRS;
  mime::HeaderBlock block = mime::SplitHeaderBlock(report.original);
  report.original_message_id = mime::GetHeader(block.headers, "Message-Id").value_or("");
  report.original_subject = mime::DecodeEncodedWords(mime::GetHeader(block.headers, "Subject").value_or(""));
  out.disposition = Disposition::kSend;
  return out;
}

std::string IdempotencyKey(const v1::BounceJob& job) { return absl::StrCat("dsn:", job.bounce_id()); }

v1::EnqueueHeader MakeDsnEnqueueHeader(const v1::BounceJob& job, const dsn::RenderedDsn& dsn) {
  v1::EnqueueHeader header;
  v1::Envelope* env = header.mutable_envelope();
  env->set_mail_from("");
  v1::RecipientSpec* rcpt = env->add_recipients();
  rcpt->set_address(job.envelope().mail_from());
  env->set_smtputf8(!mime::IsAscii(job.envelope().mail_from()));
  env->set_body_8bit(dsn.body_8bit);
  header.set_idempotency_key(IdempotencyKey(job));
  header.set_expected_size(dsn.message.size());
  return header;
}

}  // namespace tern::bouncer
