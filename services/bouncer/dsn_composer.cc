#include "services/bouncer/dsn_composer.h"

#include "absl/strings/str_cat.h"
#include "lib/dsn/report_parser.h"
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

namespace {

dsn::RecipientStatus ToRecipientStatus(const v1::BouncedRecipient& br, dsn::ReportKind kind, int64_t retry_until_ms) {
  const v1::RecipientResult& res = br.result();
  dsn::RecipientStatus r;
  r.final_recipient = br.spec().address();
  r.original_recipient = br.spec().orcpt();
  r.action = ActionFor(kind);
  r.status = res.enhanced_status();
  r.reply_code = static_cast<int>(res.reply_code());
  r.reply_text = res.reply_text();
  r.remote_mta = res.remote_mta();
  r.last_attempt = FromUnixMs(res.at_unix_ms());
  if (kind == dsn::ReportKind::kDelayed) {
    r.will_retry_until = FromUnixMs(retry_until_ms);
  }
  return r;
}

// The per-message part of the report and the original to quote.
void FillMessageFacts(const v1::BounceJob& job, const ComposeOptions& options, ComposedReport& out) {
  dsn::DeliveryReport& report = out.report;
  report.envid = job.envelope().envid();
  report.arrival = FromUnixMs(job.arrival_unix_ms());
  // A REQUIRETLS message is returned as if RET=HDRS (RFC 8689 §4.3): its
  // body was to travel only over verified TLS, and the way back may not.
  const bool wants_full =
      job.original_is_full() && job.envelope().ret() != v1::DSN_RET_HDRS && !job.envelope().requiretls();
  mime::HeaderBlock block = mime::SplitHeaderBlock(job.original());
  if (wants_full && job.original().size() > options.max_original_bytes) {
    // Too big to return whole: the headers say which message it was.
    report.original = std::string(block.headers);
    report.original_is_full = false;
    out.original_trimmed = true;
  } else {
    report.original = job.original();
    report.original_is_full = wants_full;
  }
  report.original_message_id = mime::GetHeader(block.headers, "Message-Id").value_or("");
  report.original_subject = mime::DecodeEncodedWords(mime::GetHeader(block.headers, "Subject").value_or(""));
}

}  // namespace

ComposedReport ComposeReport(const v1::BounceJob& job, absl::string_view me, const ComposeOptions& options) {
  ComposedReport out;
  const v1::Envelope& env = job.envelope();
  if (IsNullSender(env.mail_from())) {
    out.disposition = Disposition::kDoubleBounce;
    return out;
  }
  if (options.suppression != nullptr && options.suppression->SuppressesSender(env.mail_from())) {
    out.disposition = Disposition::kSuppressed;
    out.why = "sender_domain";
    return out;
  }
  dsn::DeliveryReport& report = out.report;
  report.kind = KindOf(job.kind());
  report.reporting_mta = std::string(me);
  report.original_sender = env.mail_from();

  for (const v1::BouncedRecipient& br : job.recipients()) {
    if (!NotifyAllows(br.spec().notify(), report.kind) || !OutcomeFits(br.result().outcome(), report.kind)) {
      continue;
    }
    dsn::RecipientStatus r = ToRecipientStatus(br, report.kind, job.will_retry_until_unix_ms());
    if (options.suppression != nullptr &&
        options.suppression->SuppressesRecipient(dsn::DeriveStatus(r), r.reply_code)) {
      out.suppressed_recipients.push_back(r.final_recipient);
      continue;
    }
    report.recipients.push_back(std::move(r));
  }
  if (report.recipients.empty()) {
    const bool by_rule = !out.suppressed_recipients.empty();
    out.disposition = by_rule ? Disposition::kSuppressed : Disposition::kNothingToReport;
    out.why = by_rule ? "status" : "notify";
    return out;
  }
  FillMessageFacts(job, options, out);
  out.disposition = Disposition::kSend;
  return out;
}

bool IsDoubleBounceCopy(const v1::BounceJob& job) {
  auto it = job.envelope().notes().find(kDsnNoteKey);
  return it != job.envelope().notes().end() && it->second == kDoubleBounceCopyNote;
}

ComposedReport ComposeDoubleBounceCopy(const v1::BounceJob& job, absl::string_view me, absl::string_view postmaster,
                                       const ComposeOptions& options) {
  ComposedReport out;
  dsn::DeliveryReport& report = out.report;
  report.kind = dsn::ReportKind::kFailed;
  report.reporting_mta = std::string(me);
  report.original_sender = std::string(postmaster);
  for (const v1::BouncedRecipient& br : job.recipients()) {
    if (OutcomeFits(br.result().outcome(), dsn::ReportKind::kFailed)) {
      report.recipients.push_back(ToRecipientStatus(br, dsn::ReportKind::kFailed, 0));
    }
  }
  if (report.recipients.empty()) {
    out.disposition = Disposition::kNothingToReport;
    out.why = "notify";
    return out;
  }
  FillMessageFacts(job, options, out);
  out.disposition = Disposition::kSend;
  return out;
}

namespace {

// x.7.4 (security features not supported: no STARTTLS), x.7.5
// (cryptographic failure: handshake, certificate, DANE), x.7.10 (encryption
// needed) and x.7.30 (REQUIRETLS support required): what keeps a
// REQUIRETLS message from going, where a plain one could.
bool IsTlsFailure(absl::string_view status) {
  if (status.size() < 5 || (status[0] != '4' && status[0] != '5') || status.substr(1, 3) != ".7.") {
    return false;
  }
  const absl::string_view detail = status.substr(4);
  return detail == "4" || detail == "5" || detail == "10" || detail == "30";
}

constexpr char kWithheldSubject[] =
    "(not shown: your message required TLS (REQUIRETLS) and this report could not reach you that way)";

}  // namespace

ComposedReport ComposeRedactedReport(const v1::BounceJob& job, absl::string_view me, std::string* recipient) {
  ComposedReport out;
  out.disposition = Disposition::kNothingToReport;
  const v1::Envelope& env = job.envelope();
  if (!IsNullSender(env.mail_from()) || !env.requiretls() || KindOf(job.kind()) != dsn::ReportKind::kFailed) {
    out.why = "not_requiretls";
    return out;
  }
  // A DSN has one recipient; a null-sender message with several is not
  // Tern's, and one redacted copy per recipient would need as many keys.
  if (job.recipients_size() != 1) {
    out.why = "recipients";
    return out;
  }
  const v1::BouncedRecipient& br = job.recipients(0);
  if (!OutcomeFits(br.result().outcome(), dsn::ReportKind::kFailed) || !IsTlsFailure(br.result().enhanced_status())) {
    out.why = "not_tls_failure";
    return out;
  }
  absl::StatusOr<dsn::DeliveryReport> parsed = dsn::ParseDeliveryReport(job.original());
  if (!parsed.ok()) {
    out.why = absl::StrCat("unreadable: ", parsed.status().message());
    return out;
  }
  out.report = *std::move(parsed);
  if (out.report.reporting_mta.empty()) {
    out.report.reporting_mta = std::string(me);
  }
  out.report.original_sender = br.spec().address();
  out.report.original.clear();
  out.report.original_is_full = false;
  out.report.original_withheld = true;
  out.report.original_message_id.clear();
  out.report.original_subject = kWithheldSubject;
  *recipient = br.spec().address();
  out.disposition = Disposition::kSend;
  return out;
}

std::string IdempotencyKey(const v1::BounceJob& job) { return absl::StrCat("dsn:", job.bounce_id()); }

v1::EnqueueHeader MakeDsnEnqueueHeader(const v1::BounceJob& job, const dsn::RenderedDsn& dsn,
                                       absl::string_view recipient, absl::string_view note) {
  v1::EnqueueHeader header;
  v1::Envelope* env = header.mutable_envelope();
  env->set_mail_from("");
  v1::RecipientSpec* rcpt = env->add_recipients();
  rcpt->set_address(std::string(recipient));
  env->set_smtputf8(!mime::IsAscii(recipient));
  // RFC 8689 §4.3: the report about a REQUIRETLS message (its headers, its
  // recipients) needs the same protection on its way back, unless it is
  // redacted (§5).
  env->set_requiretls(job.envelope().requiretls() && note != kRedactedNote);
  env->set_body_8bit(dsn.body_8bit);
  (*env->mutable_notes())[kDsnNoteKey] = std::string(note);
  header.set_idempotency_key(IdempotencyKey(job));
  header.set_expected_size(dsn.message.size());
  return header;
}

}  // namespace tern::bouncer
