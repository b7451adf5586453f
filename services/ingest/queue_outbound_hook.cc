#include "services/ingest/queue_outbound_hook.h"

#include <grpcpp/grpcpp.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/hooks/hooks_config.h"
#include "lib/rpc/asio_grpc.h"
#include "lib/rpc/status_convert.h"
#include "services/ingest/hook_reply.h"
#include "tern/v1/hooks.grpc.pb.h"

namespace tern::ingest {
namespace internal {

struct HooksStub {
  std::unique_ptr<tern::v1::Hooks::Stub> stub;
};

}  // namespace internal

namespace {

constexpr hooks::Hook kHook = hooks::Hook::kQueueOutbound;
constexpr absl::string_view kFallback = "queued as usual";

}  // namespace

QueueOutboundHook::QueueOutboundHook(std::shared_ptr<grpc::Channel> channel, std::chrono::milliseconds timeout)
    : stub_(std::make_unique<internal::HooksStub>()), timeout_(timeout) {
  stub_->stub = tern::v1::Hooks::NewStub(std::move(channel));
}

QueueOutboundHook::~QueueOutboundHook() = default;

void QueueOutboundHook::Cancel(HookCall* call) {
  call->cancelled = true;
  if (call->context != nullptr) {
    call->context->TryCancel();
  }
}

asio::awaitable<QueueOutboundDecision> QueueOutboundHook::Decide(tern::v1::Envelope envelope, std::string* body,
                                                                 std::string session_id, std::string id,
                                                                 HookCall* call) {
  QueueOutboundDecision decision;
  if (call->cancelled) {
    co_return decision;
  }
  tern::v1::QueueOutboundRequest request;
  *request.mutable_envelope() = std::move(envelope);
  request.set_body(std::move(*body));  // moved, not copied: given back below
  request.set_session_id(std::move(session_id));
  tern::v1::QueueOutboundResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout_);
  tern::v1::Hooks::Stub* stub = stub_->stub.get();
  call->context = &context;
  const grpc::Status status = co_await rpc::AwaitGrpc(
      [&](auto done) { stub->async()->QueueOutbound(&context, &request, &response, std::move(done)); });
  call->context = nullptr;
  *body = std::move(*request.mutable_body());
  if (call->cancelled) {
    co_return decision;  // the session is being aborted: it queues nothing and logs its own end
  }
  if (!status.ok()) {
    hooks::LogHookFailure(kHook, id, rpc::FromGrpc(status), kFallback);
    co_return decision;
  }
  switch (response.action()) {
    case tern::v1::QUEUE_OUTBOUND_ACTION_CONTINUE:
      hooks::RecordHookCall(kHook, hooks::HookResult::kContinued);
      co_return decision;
    case tern::v1::QUEUE_OUTBOUND_ACTION_REJECT: {
      absl::StatusOr<std::string> reply = HookRejectReply(response.reply_code(), response.reply_text());
      if (!reply.ok()) {
        hooks::LogHookFailure(kHook, id, reply.status(), kFallback);
        co_return decision;
      }
      hooks::RecordHookCall(kHook, hooks::HookResult::kApplied);
      decision.action = QueueOutboundDecision::Action::kReject;
      decision.reply = *std::move(reply);
      co_return decision;
    }
    case tern::v1::QUEUE_OUTBOUND_ACTION_TAKE_OVER:
      hooks::RecordHookCall(kHook, hooks::HookResult::kApplied);
      decision.action = QueueOutboundDecision::Action::kTakeOver;
      co_return decision;
    default:
      break;
  }
  hooks::LogHookFailure(kHook, id,
                        absl::InvalidArgumentError(absl::StrCat("unknown action ", static_cast<int>(response.action()))),
                        kFallback);
  co_return decision;
}

}  // namespace tern::ingest
