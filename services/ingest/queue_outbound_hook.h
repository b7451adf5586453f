// File: queue_outbound_hook.h
//
// QueueOutboundHook: ingest's call of the user's Hooks.QueueOutbound
// (Haraka's queue_outbound; proto/tern/v1/hooks.proto), made after the
// client's final dot, once everything ingest does to a message is done, and
// before the message is handed to the queue. The hook sees the envelope and
// the body exactly as they would be queued and decides:
//
//   CONTINUE   queue it as usual (250 once the queue has it, as without the hook)
//   REJECT     answer the hook's 4xx/5xx (made safe by HookRejectReply); nothing is queued
//   TAKE_OVER  the hook has the message: answer 250; nothing is queued
//
// A call that fails (the hooks.ini deadline passes, an error, UNIMPLEMENTED,
// an unknown action, REJECT without a 4xx/5xx code) changes nothing: the
// message is queued as usual, and hook_failed is logged and counted
// (hooks::LogHookFailure). Every other answer is counted by
// hooks::RecordHookCall: applied for REJECT and TAKE_OVER, continue for
// CONTINUE.
//
// Cost: none when queue_outbound is off (ingest then makes no
// QueueOutboundHook). When it is on, the body is moved into the request and
// back, not copied; gRPC's serialisation is the only copy.
//
// Thread-safety: Decide() may run on any number of sessions at once (the
// gRPC stub is thread-safe); a HookCall belongs to one session, and
// Cancel() must run on that session's executor.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "asio/awaitable.hpp"
#include "tern/v1/message.pb.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace tern::ingest {

namespace internal {
struct HooksStub;
}  // namespace internal

struct QueueOutboundDecision {
  enum class Action : uint8_t { kQueue, kReject, kTakeOver };
  Action action = Action::kQueue;
  // kReject: the reply line to send (no CRLF), already safe for the wire.
  std::string reply;
};

// The call a session has in flight, so that Session::Abort() can end it.
struct HookCall {
  grpc::ClientContext* context = nullptr;  // set while a call runs
  bool cancelled = false;
};

class QueueOutboundHook {
 public:
  // Calls the Hooks server behind `channel` (hooks::MakeHooksChannel), each
  // call bounded by `timeout` (hooks.ini timeout_ms).
  QueueOutboundHook(std::shared_ptr<grpc::Channel> channel, std::chrono::milliseconds timeout);
  ~QueueOutboundHook();

  // Asks the hook about one message and returns what to do; resumes on the
  // caller's executor. `*body` is moved into the request and given back
  // unchanged before this returns. `id` (ingest's transaction id) names the
  // message in hook_failed lines. While the call runs, `call->context` is
  // set; after Cancel(call) the answer is kQueue and nothing is logged (the
  // caller is going away).
  asio::awaitable<QueueOutboundDecision> Decide(tern::v1::Envelope envelope, std::string* body,
                                                std::string session_id, std::string id, HookCall* call);

  // Ends the call in flight, if any (Session::Abort).
  static void Cancel(HookCall* call);

 private:
  std::unique_ptr<internal::HooksStub> stub_;
  const std::chrono::milliseconds timeout_;
};

}  // namespace tern::ingest
