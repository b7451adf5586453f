#include "services/bouncer/bounce_worker.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "lib/common/log.h"
#include "lib/common/status_macros.h"
#include "lib/hooks/hooks_config.h"
#include "lib/rpc/status_convert.h"
#include "services/bouncer/dsn_composer.h"

namespace tern::bouncer {
namespace internal {

// One Hooks.Bounce call on gRPC's callback API: started by the constructor,
// answered on a gRPC thread, waited for by the worker thread. The context,
// request and response live here until the answer came, so the destructor
// waits for it (a cancelled call answers at once).
class BounceHookCall {
 public:
  BounceHookCall(tern::v1::Hooks::StubInterface* stub, tern::v1::BounceRequest request, absl::Duration timeout)
      : request_(std::move(request)) {
    ctx_.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
    tern::v1::Hooks::StubInterface::async_interface* async = stub->async();
    if (async == nullptr) {
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "the Hooks stub has no callback API"));
      return;
    }
    async->Bounce(&ctx_, &request_, &response_, [this](grpc::Status status) { Finish(std::move(status)); });
  }
  BounceHookCall(const BounceHookCall&) = delete;
  BounceHookCall& operator=(const BounceHookCall&) = delete;
  ~BounceHookCall() { Wait(); }

  // Any thread.
  void Cancel() { ctx_.TryCancel(); }

  // Blocks until the answer; response() is valid afterwards.
  grpc::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
    return status_;
  }
  const tern::v1::BounceResponse& response() const { return response_; }

 private:
  void Finish(grpc::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = std::move(status);
    done_ = true;
    cv_.notify_all();
  }

  grpc::ClientContext ctx_;
  tern::v1::BounceRequest request_;
  tern::v1::BounceResponse response_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  grpc::Status status_;  // guarded by mu_
};

}  // namespace internal

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
    : stub_(stub), new_token_(std::move(new_token)), pid_(pid), options_(std::move(options)) {
  Apply(MakeRendering(config));

  const std::string dsn_help = "DSNs enqueued, by kind";
  dsns_failed_ = GetCounter("tern_bouncer_dsns_total", dsn_help, {{"kind", "failed"}});
  dsns_delayed_ = GetCounter("tern_bouncer_dsns_total", dsn_help, {{"kind", "delayed"}});
  dsns_delivered_ = GetCounter("tern_bouncer_dsns_total", dsn_help, {{"kind", "delivered"}});
  double_bounces_ = GetCounter("tern_bouncer_double_bounces_total",
                               "Bounce jobs that could not be answered with a DSN (sender <> or refused)");
  double_bounce_copies_ =
      GetCounter("tern_bouncer_double_bounce_copies_total", "Double bounces copied to double_bounce_recipient");
  redacted_ = GetCounter("tern_bouncer_redacted_dsns_total",
                         "REQUIRETLS DSNs that could not go with REQUIRETLS, sent again redacted (RFC 8689)");
  const std::string suppressed_help = "Bounce jobs acknowledged without a DSN, by reason";
  suppressed_notify_ = GetCounter("tern_bouncer_suppressed_total", suppressed_help, {{"reason", "notify"}});
  suppressed_sender_domain_ =
      GetCounter("tern_bouncer_suppressed_total", suppressed_help, {{"reason", "sender_domain"}});
  suppressed_status_ = GetCounter("tern_bouncer_suppressed_total", suppressed_help, {{"reason", "status"}});
  suppressed_hook_ = GetCounter("tern_bouncer_suppressed_total", suppressed_help, {{"reason", "hook"}});
  render_errors_ = GetCounter("tern_bouncer_render_errors_total", "DSNs that could not be rendered");
  const std::string queue_help = "Failed calls to the queue, by call";
  lease_errors_ = GetCounter("tern_bouncer_queue_errors_total", queue_help, {{"call", "lease"}});
  channel_rebuilds_ = GetCounter("tern_bouncer_queue_channel_rebuilds_total",
                                 "gRPC channels to the queue replaced after Leases kept failing");
  enqueue_errors_ = GetCounter("tern_bouncer_queue_errors_total", queue_help, {{"call", "enqueue"}});
  ack_errors_ = GetCounter("tern_bouncer_queue_errors_total", queue_help, {{"call", "ack"}});
}

BounceWorker::Rendering BounceWorker::MakeRendering(const BouncerConfig& config) const {
  const bool log_warnings = options_.log_config_warnings;
  Rendering r;
  r.me = config.me;
  r.double_bounce_recipient = config.double_bounce_recipient;
  for (dsn::ReportKind kind : {dsn::ReportKind::kFailed, dsn::ReportKind::kDelayed, dsn::ReportKind::kDelivered}) {
    absl::StatusOr<dsn::DsnTemplates> templates = config.TemplatesFor(kind);
    const TemplateSource& source = config.TemplateFor(kind);
    // Validate() parsed the same text; a failure here is a programming error,
    // so fall back to an empty text template rather than crash the service.
    if (!templates.ok()) {
      log::Event(Level::kCrit, "template_invalid", {{"template", source.origin}, {"error", templates.status().message()}});
      templates = dsn::DsnTemplates{*dsn::DsnTemplate::Parse("", source.origin), std::nullopt, std::nullopt};
    }
    for (const std::string& dropped : templates->text.dropped_headers()) {
      if (log_warnings) {
        log::Event(Level::kWarn, "template_header_ignored",
                   {{"template", source.origin}, {"header", dropped}, {"why", "set by tern"}});
      }
    }
    if (templates->image && log_warnings) {
      const std::optional<TemplateSource>& html = config.HtmlFor(kind);
      if (html && html->text.find("cid:" + templates->image->content_id()) == std::string::npos) {
        log::Event(Level::kWarn, "template_image_unreferenced",
                   {{"template", html->origin}, {"content_id", templates->image->content_id()}});
      }
    }
    r.renderers.emplace(kind, dsn::DsnRenderer(*std::move(templates), new_token_, pid_));
  }
  if (log_warnings && config.image && !(config.failed_html || config.delayed_html || config.delivered_html)) {
    log::Event(Level::kWarn, "template_image_unused",
               {{"template", config.image->origin}, {"why", "no outbound.bounce_message*_html template"}});
  }
  absl::StatusOr<SuppressionRules> rules = config.Suppression();
  if (rules.ok()) {
    r.suppression = *std::move(rules);
  } else {
    log::Event(Level::kCrit, "suppression_rules_invalid", {{"error", rules.status().message()}});
  }
  r.max_original_bytes = static_cast<size_t>(std::max<int64_t>(config.max_original_bytes, 0));
  return r;
}

void BounceWorker::Apply(Rendering r) {
  me_ = std::move(r.me);
  double_bounce_recipient_ = std::move(r.double_bounce_recipient);
  renderers_ = std::move(r.renderers);
  suppression_ = std::move(r.suppression);
  compose_options_.max_original_bytes = r.max_original_bytes;
  compose_options_.suppression = &suppression_;
}

void BounceWorker::Reload(const BouncerConfig& config) {
  auto r = std::make_unique<Rendering>(MakeRendering(config));
  std::lock_guard<std::mutex> lock(mu_);
  pending_rendering_ = std::move(r);
}

void BounceWorker::ApplyPendingReload() {
  std::unique_ptr<Rendering> r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r = std::move(pending_rendering_);
  }
  if (r != nullptr) {
    Apply(std::move(*r));
  }
}

void BounceWorker::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  if (lease_ctx_ != nullptr) {
    lease_ctx_->TryCancel();
  }
  for (internal::BounceHookCall* call : pending_hooks_) {
    call->Cancel();
  }
  cv_.notify_all();
}

void BounceWorker::SleepUnlessStopped(absl::Duration d) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoMilliseconds(d), [this] { return stopped_.load(); });
}

void BounceWorker::Run() {
  absl::Duration backoff = options_.min_backoff;
  std::optional<absl::Time> failing_since;
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
      const absl::Time now = absl::Now();
      if (!failing_since.has_value()) {
        failing_since = now;
      } else if (options_.new_stub && now - *failing_since >= options_.rebuild_after) {
        // Only this thread uses the stub (Stop() touches the ClientContext).
        owned_stub_ = options_.new_stub();
        stub_ = owned_stub_.get();
        failing_since = now;
        channel_rebuilds_->Inc();
        log::Event(Level::kNotice, "queue_channel_rebuilt",
                   {{"error", status.error_message()}, {"queue", options_.queue_target}});
      }
      log::Event(Level::kWarn, "queue_lease_failed",
                 {{"code", absl::StrCat(static_cast<int>(status.error_code()))},
                  {"error", status.error_message()},
                  {"retry_in", absl::FormatDuration(backoff)}, {"queue", options_.queue_target}});
      SleepUnlessStopped(backoff);
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    backoff = options_.min_backoff;
    failing_since.reset();
    // Every hook call of the batch first, so they wait out their deadlines
    // together; each job then waits only for its own answer.
    std::vector<std::unique_ptr<internal::BounceHookCall>> hooks;
    hooks.reserve(resp.bounces_size());
    for (const v1::BounceJob& job : resp.bounces()) {
      hooks.push_back(StartBounceHook(job));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& call : hooks) {
        if (call != nullptr) {
          pending_hooks_.push_back(call.get());
          if (stopped_) {
            call->Cancel();
          }
        }
      }
    }
    for (int i = 0; i < resp.bounces_size(); ++i) {
      const v1::BounceJob& job = resp.bounces(i);
      if (stopped_) {
        // Leased but not started: its lease expires and it is retried.
        break;
      }
      absl::Status s = ProcessJob(job, hooks[i].get());
      if (s.code() == absl::StatusCode::kCancelled && stopped_) {
        break;  // stopped while the hook was asked: left to its lease, like the rest
      }
      if (!s.ok()) {
        log::Event(Level::kError, "bounce_job_failed",
                   {{"bounce", job.bounce_id()},
                    {"msg", job.message_id()},
                    {"error", s.ToString()}, {"queue", options_.queue_target}});
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_hooks_.clear();
    }
    // `hooks` goes out of scope here: each waits for its (cancelled) answer.
  }
  log::Event(Level::kInfo, "worker_stopped", {{"worker", options_.worker_id}, {"queue", options_.queue_target}});
}

std::unique_ptr<internal::BounceHookCall> BounceWorker::StartBounceHook(const v1::BounceJob& job) {
  if (options_.hooks == nullptr) {
    return nullptr;
  }
  // The same decision ProcessJob makes: only a DSN that would be sent is
  // worth asking about (a double bounce, NOTIFY or a suppression rule
  // already sends none).
  ComposedReport composed = ComposeReport(job, me_, compose_options_);
  if (composed.disposition != Disposition::kSend) {
    return nullptr;
  }
  v1::BounceRequest req;
  req.set_message_id(job.message_id());
  req.set_bounce_id(job.bounce_id());
  req.set_kind(job.kind());
  req.set_mail_from(job.envelope().mail_from());
  // The recipients the DSN reports on: the report keeps the job's order, so
  // one pass pairs each with its BouncedRecipient (and its result).
  size_t next = 0;
  for (const v1::BouncedRecipient& br : job.recipients()) {
    if (next < composed.report.recipients.size() &&
        br.spec().address() == composed.report.recipients[next].final_recipient) {
      req.add_recipients(br.spec().address());
      *req.add_results() = br.result();
      ++next;
    }
  }
  return std::make_unique<internal::BounceHookCall>(options_.hooks, std::move(req), options_.hook_timeout);
}

BounceWorker::HookVerdict BounceWorker::AwaitBounceHook(const v1::BounceJob& job, internal::BounceHookCall& call) {
  constexpr absl::string_view kFallback = "DSN sent";
  grpc::Status status = call.Wait();
  if (!status.ok()) {
    if (status.error_code() == grpc::StatusCode::CANCELLED && stopped_) {
      return HookVerdict::kStopping;
    }
    hooks::LogHookFailure(hooks::Hook::kBounce, job.bounce_id(), rpc::FromGrpc(status), kFallback);
    return HookVerdict::kSend;
  }
  const v1::BounceAction action = call.response().action();
  switch (action) {
    case v1::BOUNCE_ACTION_CONTINUE:
      hooks::RecordHookCall(hooks::Hook::kBounce, hooks::HookResult::kContinued);
      return HookVerdict::kSend;
    case v1::BOUNCE_ACTION_SUPPRESS:
      hooks::RecordHookCall(hooks::Hook::kBounce, hooks::HookResult::kApplied);
      return HookVerdict::kSuppress;
    default:
      // proto3 enums are open: a newer or broken hook can send any number.
      hooks::LogHookFailure(hooks::Hook::kBounce, job.bounce_id(),
                            absl::InvalidArgumentError(absl::StrCat("unknown action ", static_cast<int>(action))),
                            kFallback);
      return HookVerdict::kSend;
  }
}

absl::Status BounceWorker::ProcessJob(const v1::BounceJob& job) {
  std::unique_ptr<internal::BounceHookCall> hook = StartBounceHook(job);
  return ProcessJob(job, hook.get());
}

absl::Status BounceWorker::ProcessJob(const v1::BounceJob& job, internal::BounceHookCall* hook) {
  ApplyPendingReload();
  ComposedReport composed = ComposeReport(job, me_, compose_options_);
  switch (composed.disposition) {
    case Disposition::kDoubleBounce:
      return HandleNullSender(job);
    case Disposition::kNothingToReport:
    case Disposition::kSuppressed: {
      TERN_RETURN_IF_ERROR(Ack(job, ""));
      (composed.why == "sender_domain" ? suppressed_sender_domain_
       : composed.why == "status"      ? suppressed_status_
                                       : suppressed_notify_)
          ->Inc();
      log::Event(Level::kInfo, "dsn_suppressed",
                 {{"bounce", job.bounce_id()},
                  {"msg", job.message_id()},
                  {"to", job.envelope().mail_from()},
                  {"why", composed.why}, {"queue", options_.queue_target}});
      return absl::OkStatus();
    }
    case Disposition::kSend:
      break;
  }
  if (hook != nullptr) {
    switch (AwaitBounceHook(job, *hook)) {
      case HookVerdict::kSend:
        break;
      case HookVerdict::kStopping:
        return absl::CancelledError("stopping while the bounce hook was asked; the lease will expire");
      case HookVerdict::kSuppress: {
        TERN_RETURN_IF_ERROR(Ack(job, ""));
        suppressed_hook_->Inc();
        log::Event(Level::kInfo, "dsn_suppressed",
                   {{"bounce", job.bounce_id()},
                    {"msg", job.message_id()},
                    {"to", job.envelope().mail_from()},
                    {"why", "hook"}, {"queue", options_.queue_target}});
        return absl::OkStatus();
      }
    }
  }
  if (!composed.suppressed_recipients.empty()) {
    log::Event(Level::kInfo, "dsn_recipients_suppressed",
               {{"bounce", job.bounce_id()},
                {"rcpts", absl::StrJoin(composed.suppressed_recipients, ",")},
                {"why", "status"}, {"queue", options_.queue_target}});
  }
  if (composed.original_trimmed) {
    log::Event(Level::kInfo, "dsn_original_trimmed",
               {{"bounce", job.bounce_id()},
                {"size", absl::StrCat(job.original().size())},
                {"max", absl::StrCat(compose_options_.max_original_bytes)}, {"queue", options_.queue_target}});
  }
  absl::StatusOr<std::string> dsn_id =
      Send(job, composed.report, job.envelope().mail_from(), KindName(composed.report.kind));
  if (dsn_id.status().code() == absl::StatusCode::kInvalidArgument) {
    // The queue will never take this DSN (e.g. the sender address has no
    // domain): retrying would loop forever, so it is a double bounce.
    return HandleDoubleBounce(job, absl::StrCat("queue refused the DSN: ", dsn_id.status().message()));
  }
  if (!dsn_id.ok()) {
    return dsn_id.status();
  }
  return Ack(job, *dsn_id);
}

absl::Status BounceWorker::HandleNullSender(const v1::BounceJob& job) {
  std::string recipient;
  const ComposedReport redacted = ComposeRedactedReport(job, me_, &recipient);
  if (redacted.disposition != Disposition::kSend) {
    if (absl::StartsWith(redacted.why, "unreadable")) {
      return HandleDoubleBounce(job, absl::StrCat("sender is <>; not redacted: ", redacted.why));
    }
    return HandleDoubleBounce(job, "sender is <>");
  }
  // RFC 8689 §5: the report goes again, without the original's header
  // fields and without REQUIRETLS, so that the sender learns of it.
  absl::StatusOr<std::string> dsn_id = Send(job, redacted.report, recipient, kRedactedNote);
  if (dsn_id.status().code() == absl::StatusCode::kInvalidArgument) {
    return HandleDoubleBounce(job, absl::StrCat("queue refused the redacted DSN: ", dsn_id.status().message()));
  }
  if (!dsn_id.ok()) {
    return dsn_id.status();
  }
  TERN_RETURN_IF_ERROR(Ack(job, *dsn_id));
  redacted_->Inc();
  log::Event(Level::kNotice, "dsn_redacted",
             {{"bounce", job.bounce_id()},
              {"msg", job.message_id()},
              {"dsn", *dsn_id},
              {"to", recipient},
              {"status", job.recipients(0).result().enhanced_status()},
              {"note", "the DSN could not go with REQUIRETLS; sent without it and without the original's header"},
              {"queue", options_.queue_target}});
  return absl::OkStatus();
}

absl::Status BounceWorker::HandleDoubleBounce(const v1::BounceJob& job, absl::string_view why) {
  std::string copy_id;
  std::string copy_state = "none configured";
  if (!double_bounce_recipient_.empty()) {
    bool to_self = false;
    for (const v1::BouncedRecipient& r : job.recipients()) {
      to_self = to_self || absl::EqualsIgnoreCase(r.spec().address(), double_bounce_recipient_);
    }
    if (IsDoubleBounceCopy(job) || to_self) {
      // The copy itself failed: copying it again could loop.
      copy_state = "not copied: the failed message was a double-bounce copy";
    } else {
      ComposedReport copy = ComposeDoubleBounceCopy(job, me_, double_bounce_recipient_, compose_options_);
      if (copy.disposition == Disposition::kSend) {
        absl::StatusOr<std::string> id = Send(job, copy.report, double_bounce_recipient_, kDoubleBounceCopyNote);
        if (!id.ok() && id.status().code() != absl::StatusCode::kInvalidArgument) {
          return id.status();  // retried when the lease expires
        }
        if (id.ok()) {
          copy_id = *id;
          copy_state = "copied";
        } else {
          copy_state = absl::StrCat("copy refused: ", id.status().message());
        }
      } else {
        copy_state = "not copied: no failed recipient";
      }
    }
  }
  TERN_RETURN_IF_ERROR(Ack(job, copy_id));
  double_bounces_->Inc();
  if (!copy_id.empty()) {
    double_bounce_copies_->Inc();
  }
  log::Event(Level::kWarn, "double_bounce",
             {{"bounce", job.bounce_id()},
              {"msg", job.message_id()},
              {"rcpts", absl::StrCat(job.recipients_size())},
              {"kind", KindName(KindOf(job.kind()))},
              {"why", why},
              {"copy", copy_state},
              {"copy_to", double_bounce_recipient_},
              {"dsn", copy_id}, {"queue", options_.queue_target}});
  return absl::OkStatus();
}

absl::StatusOr<std::string> BounceWorker::Send(const v1::BounceJob& job, const dsn::DeliveryReport& report,
                                               absl::string_view recipient, absl::string_view note) {
  const dsn::ReportKind kind = report.kind;
  absl::StatusOr<dsn::RenderedDsn> rendered = renderers_.at(kind).Render(report, absl::Now());
  if (!rendered.ok()) {
    render_errors_->Inc();
    // Not InvalidArgument: that code means "the queue refused it for good".
    return absl::InternalError(absl::StrCat("render: ", rendered.status().message()));
  }
  bool duplicate = false;
  absl::StatusOr<std::string> dsn_id = Enqueue(job, *rendered, recipient, note, &duplicate);
  if (!dsn_id.ok()) {
    enqueue_errors_->Inc();
    return dsn_id.status();
  }
  if (!duplicate) {
    (kind == dsn::ReportKind::kDelayed     ? dsns_delayed_
     : kind == dsn::ReportKind::kDelivered ? dsns_delivered_
                                           : dsns_failed_)
        ->Inc();
  }
  log::Event(Level::kInfo, "dsn_enqueued",
             {{"bounce", job.bounce_id()},
              {"msg", job.message_id()},
              {"dsn", *dsn_id},
              {"kind", note},
              {"to", recipient},
              {"rcpts", absl::StrCat(report.recipients.size())},
              {"duplicate", duplicate ? "true" : "false"}, {"queue", options_.queue_target}});
  return dsn_id;
}

absl::StatusOr<std::string> BounceWorker::Enqueue(const v1::BounceJob& job, const dsn::RenderedDsn& dsn,
                                                  absl::string_view recipient, absl::string_view note,
                                                  bool* duplicate) {
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);
  ctx.set_deadline(Deadline(options_.rpc_timeout));
  v1::EnqueueResponse resp;
  std::unique_ptr<grpc::ClientWriterInterface<v1::EnqueueRequest>> writer = stub_->Enqueue(&ctx, &resp);
  v1::EnqueueRequest first;
  *first.mutable_header() = MakeDsnEnqueueHeader(job, dsn, recipient, note);
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
  *duplicate = resp.duplicate();
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
                 {{"bounce", job.bounce_id()},
                  {"status", v1::ReportStatus_Name(result)}, {"queue", options_.queue_target}});
      return absl::OkStatus();
    default:
      ack_errors_->Inc();
      return absl::InternalError(absl::StrCat("the queue refused the Ack: ", v1::ReportStatus_Name(result)));
  }
}

}  // namespace tern::bouncer
