#include "services/bouncer/bounce_worker.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/rpc/status_convert.h"
#include "services/bouncer/dsn_composer.h"

namespace tern::bouncer {
namespace {

namespace v1 = ::tern::v1;
using log::Level;

// Body bytes per Enqueue message after the header.
constexpr size_t kChunkBytes = 64 * 1024;

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

metrics::Counter* GetCounter(const std::string& name, const std::string& help, const metrics::Labels& labels = {}) {
  return &metrics::Registry::Global().GetCounter(name, help, labels);
}

}  // namespace

BounceWorker::BounceWorker(v1::Queue::StubInterface* stub, const BouncerConfig& config,
                           dsn::DsnRenderer::TokenGenerator new_token, int64_t pid, Options options)
    : stub_(stub), me_(config.me), options_(std::move(options)) {
  for (dsn::ReportKind kind : {dsn::ReportKind::kFailed, dsn::ReportKind::kDelayed, dsn::ReportKind::kDelivered}) {
    const TemplateSource& source = config.TemplateFor(kind);
    absl::StatusOr<dsn::DsnTemplate> tmpl = dsn::DsnTemplate::Parse(source.text, source.origin);
    // Validate() parsed the same text; a failure here is a programming error,
    // so fall back to an empty template rather than crash the service.
    if (!tmpl.ok()) {
      log::Event(Level::kCrit, "template_invalid", {{"template", source.origin}, {"error", tmpl.status().message()}});
      tmpl = dsn::DsnTemplate::Parse("", source.origin);
    }
    for (const std::string& dropped : tmpl->dropped_headers()) {
      log::Event(Level::kWarn, "template_header_ignored",
                 {{"template", source.origin}, {"header", dropped}, {"why", "set by tern"}});
    }
    renderers_.emplace(kind, dsn::DsnRenderer(*std::move(tmpl), new_token, pid));
  }
  const std::string dsn_help = "DSNs enqueued, by kind";
  dsns_failed_ = GetCounter("tern_bouncer_dsns_total", dsn_help, {{"kind", "failed"}});
  dsns_delayed_ = GetCounter("tern_bouncer_dsns_total", dsn_help, {{"kind", "delayed"}});
  dsns_delivered_ = GetCounter("tern_bouncer_dsns_total", dsn_help, {{"kind", "delivered"}});
  double_bounces_ = GetCounter("tern_bouncer_double_bounces_total", "Bounce jobs for mail from <> (no DSN sent)");
  suppressed_ = GetCounter("tern_bouncer_suppressed_total", "Bounce jobs with nobody to report on (NOTIFY)");
  render_errors_ = GetCounter("tern_bouncer_render_errors_total", "DSNs that could not be rendered");
  const std::string queue_help = "Failed calls to the queue, by call";
  lease_errors_ = GetCounter("tern_bouncer_queue_errors_total", queue_help, {{"call", "lease"}});
  enqueue_errors_ = GetCounter("tern_bouncer_queue_errors_total", queue_help, {{"call", "enqueue"}});
  ack_errors_ = GetCounter("tern_bouncer_queue_errors_total", queue_help, {{"call", "ack"}});
}

void BounceWorker::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  if (lease_ctx_ != nullptr) {
    lease_ctx_->TryCancel();
  }
  cv_.notify_all();
}

void BounceWorker::SleepUnlessStopped(absl::Duration d) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoMilliseconds(d), [this] { return stopped_.load(); });
}

void BounceWorker::Run() {
  absl::Duration backoff = options_.min_backoff;
  while (!stopped_) {
    v1::LeaseRequest req;
    req.set_kind(v1::JOB_KIND_BOUNCE);
    req.set_max_jobs(options_.max_jobs);
    req.set_wait_ms(options_.wait_ms);
    req.set_worker_id(options_.worker_id);
    v1::LeaseResponse resp;
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(Deadline(absl::Milliseconds(options_.wait_ms) + options_.lease_slack));
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopped_) {
        break;
      }
      lease_ctx_ = &ctx;
    }
    grpc::Status status = stub_->Lease(&ctx, req, &resp);
    {
      std::lock_guard<std::mutex> lock(mu_);
      lease_ctx_ = nullptr;
    }
    if (stopped_) {
      break;
    }
    if (!status.ok()) {
      lease_errors_->Inc();
      log::Event(Level::kWarn, "queue_lease_failed",
                 {{"code", absl::StrCat(static_cast<int>(status.error_code()))},
                  {"error", status.error_message()},
                  {"retry_in", absl::FormatDuration(backoff)}});
      SleepUnlessStopped(backoff);
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    backoff = options_.min_backoff;
    for (const v1::BounceJob& job : resp.bounces()) {
      if (stopped_) {
        // Leased but not started: its lease expires and it is retried.
        break;
      }
      absl::Status s = ProcessJob(job);
      if (!s.ok()) {
        log::Event(Level::kError, "bounce_job_failed",
                   {{"bounce", job.bounce_id()}, {"msg", job.message_id()}, {"error", s.ToString()}});
      }
    }
  }
  log::Event(Level::kInfo, "worker_stopped");
}

absl::Status BounceWorker::ProcessJob(const v1::BounceJob& job) {
  ComposedReport composed = ComposeReport(job, me_);
  switch (composed.disposition) {
    case Disposition::kDoubleBounce:
      double_bounces_->Inc();
      log::Event(Level::kWarn, "double_bounce",
                 {{"bounce", job.bounce_id()},
                  {"msg", job.message_id()},
                  {"rcpts", absl::StrCat(job.recipients_size())},
                  {"kind", KindName(KindOf(job.kind()))}});
      return Ack(job, "");
    case Disposition::kNothingToReport:
      suppressed_->Inc();
      log::Event(Level::kInfo, "dsn_suppressed",
                 {{"bounce", job.bounce_id()}, {"msg", job.message_id()}, {"why", "notify"}});
      return Ack(job, "");
    case Disposition::kSend:
      break;
  }
  const dsn::ReportKind kind = composed.report.kind;
  absl::StatusOr<dsn::RenderedDsn> rendered = renderers_.at(kind).Render(composed.report, absl::Now());
  if (!rendered.ok()) {
    render_errors_->Inc();
    return rendered.status();
  }
  absl::StatusOr<std::string> dsn_id = Enqueue(job, *rendered);
  if (!dsn_id.ok()) {
    enqueue_errors_->Inc();
    return dsn_id.status();
  }
  return Ack(job, *dsn_id);
}

absl::StatusOr<std::string> BounceWorker::Enqueue(const v1::BounceJob& job, const dsn::RenderedDsn& dsn) {
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);
  ctx.set_deadline(Deadline(options_.rpc_timeout));
  v1::EnqueueResponse resp;
  std::unique_ptr<grpc::ClientWriterInterface<v1::EnqueueRequest>> writer = stub_->Enqueue(&ctx, &resp);
  v1::EnqueueRequest first;
  *first.mutable_header() = MakeDsnEnqueueHeader(job, dsn);
  bool ok = writer->Write(first);
  for (size_t pos = 0; ok && pos < dsn.message.size(); pos += kChunkBytes) {
    v1::EnqueueRequest chunk;
    chunk.set_body_chunk(dsn.message.substr(pos, kChunkBytes));
    ok = writer->Write(chunk);
  }
  if (ok) {
    writer->WritesDone();
  }
  grpc::Status status = writer->Finish();
  if (!status.ok()) {
    return rpc::FromGrpc(status);
  }
  if (!ok) {
    return absl::UnavailableError("the queue closed the Enqueue stream early");
  }
  if (resp.message_id().empty()) {
    return absl::InternalError("the queue answered Enqueue without a message id");
  }
  const dsn::ReportKind kind = KindOf(job.kind());
  if (!resp.duplicate()) {
    (kind == dsn::ReportKind::kDelayed     ? dsns_delayed_
     : kind == dsn::ReportKind::kDelivered ? dsns_delivered_
                                           : dsns_failed_)
        ->Inc();
  }
  log::Event(Level::kInfo, "dsn_enqueued",
             {{"bounce", job.bounce_id()},
              {"msg", job.message_id()},
              {"dsn", resp.message_id()},
              {"kind", KindName(kind)},
              {"to", job.envelope().mail_from()},
              {"duplicate", resp.duplicate() ? "true" : "false"}});
  return resp.message_id();
}

absl::Status BounceWorker::Ack(const v1::BounceJob& job, const std::string& dsn_message_id) {
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);
  ctx.set_deadline(Deadline(options_.rpc_timeout));
  v1::AckRequest req;
  v1::BounceAck* ack = req.add_acks();
  ack->set_bounce_id(job.bounce_id());
  ack->set_lease_token(job.lease_token());
  ack->set_dsn_message_id(dsn_message_id);
  v1::AckResponse resp;
  grpc::Status status = stub_->Ack(&ctx, req, &resp);
  if (!status.ok()) {
    ack_errors_->Inc();
    return rpc::FromGrpc(status);
  }
  v1::ReportStatus result = resp.statuses_size() > 0 ? resp.statuses(0) : v1::REPORT_STATUS_UNSPECIFIED;
  switch (result) {
    case v1::REPORT_STATUS_APPLIED:
      return absl::OkStatus();
    case v1::REPORT_STATUS_STALE_LEASE:
    case v1::REPORT_STATUS_UNKNOWN:
      // Another bouncer holds (or finished) the job; the idempotency key
      // makes its DSN the same one, so there is nothing to undo.
      log::Event(Level::kWarn, "ack_not_applied",
                 {{"bounce", job.bounce_id()}, {"status", v1::ReportStatus_Name(result)}});
      return absl::OkStatus();
    default:
      ack_errors_->Inc();
      return absl::InternalError(absl::StrCat("the queue refused the Ack: ", v1::ReportStatus_Name(result)));
  }
}

}  // namespace tern::bouncer
