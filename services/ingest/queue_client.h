// File: queue_client.h
//
// QueueClient: ingest's side of the queue's Enqueue calls, bridged from
// gRPC's callback API to Asio coroutines.
//
// Most mail is small: a session that has a whole message of at most
// `enqueue_inline_max` bytes hands it over with EnqueueWhole(). Those
// messages share EnqueueBatch calls: while a call is in flight, the messages
// of other sessions gather and go in the next one, the way the queue's group
// commit gathers writes. That makes the RPC cost per message small under
// load and adds no wait when idle (a message with no call in flight leaves
// at once).
//
// Larger messages stream, so ingest never holds a big one whole: Enqueue is
// a client-streaming call that a session feeds while it reads DATA:
//
//   auto call = queue.StartEnqueue(executor, header);
//   TERN_... co_await call->Start();           // sends the header
//   co_await call->Write(chunk);               // as body data arrives
//   absl::StatusOr<std::string> id = co_await call->Finish();
//
// Every co_await resumes on `executor` (gRPC completions are posted there)
// and is bounded by the client's `step_timeout`: when it passes, the call is
// cancelled and the step returns DeadlineExceeded. The call itself carries a
// generous gRPC deadline only as a backstop, because it stays open while the
// SMTP client sends DATA at its own pace. Calls are fail-fast
// (wait_for_ready=false): when the queue is down the first step fails at
// once with Unavailable instead of waiting for the queue to come back.
//
// Shards (ARCHITECTURE §8): the client may lead to several queue shards,
// each a queue service with its own RocksDB. Each message goes to one of
// them: among the shards that are neither in trouble nor unreachable, the one
// with the fewest messages on their way, ties taken in turn. A shard that
// fails a call (unreachable, timed out, out of disk, storage error) is left
// alone for a while (1 s, doubling to 30 s while it keeps failing) and its
// messages go elsewhere; when every shard is in trouble, the one that has
// been left alone longest is tried. A whole message the queue refused with
// ResourceExhausted (out of disk: the queue stored nothing) is offered to the
// other shards before the client hears of it. Nothing else is ever sent
// twice: after any other failure the queue may hold the message, so the
// client gets the error (451) and a resubmission is the client's choice.
// One shard behaves exactly as one queue.
//
// Errors: the queue's own status (Unavailable, ResourceExhausted, ...) as an
// absl::Status; DeadlineExceeded for our step timeout; Cancelled after
// Cancel().
//
// Thread-safety: QueueClient is thread-safe. An EnqueueCall belongs to one
// coroutine on one executor; Cancel() and the destructor must run on that
// executor too. Destroying an unfinished call cancels it: the queue then
// stores nothing.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asio/any_io_executor.hpp"
#include "asio/awaitable.hpp"
#include "tern/v1/queue.pb.h"

namespace tern::ingest {

namespace internal {
class EnqueueBatcher;
class EnqueueReactor;
struct QueueShard;
}  // namespace internal

class EnqueueCall {
 public:
  ~EnqueueCall();
  EnqueueCall(const EnqueueCall&) = delete;
  EnqueueCall& operator=(const EnqueueCall&) = delete;

  // Sends the header (the first request). Call once, before Write().
  asio::awaitable<absl::Status> Start();
  // Sends one body chunk; at most one Write may be in flight. After an error
  // further writes fail at once; Finish() then tells the queue's reason.
  asio::awaitable<absl::Status> Write(std::string chunk);
  // Half-closes the stream (unless a step failed or Cancel() was called) and
  // waits for the queue's answer: the message id, which means the message is
  // durable, or why it is not.
  asio::awaitable<absl::StatusOr<std::string>> Finish();
  // Cancels the call; the queue stores nothing. Finish() may still be
  // awaited afterwards (it returns Cancelled or the queue's error).
  void Cancel();

 private:
  friend class QueueClient;
  EnqueueCall(std::shared_ptr<internal::EnqueueReactor> reactor, tern::v1::EnqueueHeader header,
              std::chrono::milliseconds step_timeout);
  asio::awaitable<absl::Status> Send(tern::v1::EnqueueRequest request);

  std::shared_ptr<internal::EnqueueReactor> reactor_;
  tern::v1::EnqueueHeader header_;
  std::chrono::milliseconds step_timeout_;
  bool started_ = false;
  bool failed_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
};

class QueueClient {
 public:
  // A client of the queue at `target` ("host:port"), or of the shards at
  // `targets` (at least one; lib/config/queue_targets.h). No connection is
  // made until the first call.
  QueueClient(const std::string& target, std::chrono::milliseconds step_timeout);
  QueueClient(const std::vector<std::string>& targets, std::chrono::milliseconds step_timeout);
  ~QueueClient();

  // Opens an Enqueue call whose completions run on `executor`. Nothing is
  // sent until Start().
  std::unique_ptr<EnqueueCall> StartEnqueue(asio::any_io_executor executor, tern::v1::EnqueueHeader header);

  // Enqueues a complete message through a shared EnqueueBatch call and
  // returns its id once it is durable, or why it is not (the queue's status
  // for this message, DeadlineExceeded after `step_timeout`, Unavailable when
  // the queue cannot be reached). Resumes on the caller's executor.
  asio::awaitable<absl::StatusOr<std::string>> EnqueueWhole(tern::v1::EnqueueHeader header, std::string body);

  // True when the channel to a shard that is not in trouble is connected
  // (with one shard: when the channel to the queue is). A session that sees it
  // is not opens a streaming call before 354 instead of waiting for the
  // whole message, so an unreachable queue costs the client a 451 rather
  // than an upload. (An idle channel is asked to connect.)
  bool ChannelReady() const;
  // Connects every shard's channel and waits up to `timeout` in all for them
  // to be ready; returns the targets that are not. Ingest calls it at
  // start-up so the first messages can go whole, and to log early when a
  // queue is not there.
  std::vector<std::string> WaitForReady(std::chrono::milliseconds timeout) const;

 private:
  // The index of the shard for the next message; shards whose bit is set in
  // `tried` are skipped unless every shard has been tried.
  size_t PickShard(uint64_t tried = 0);

  std::vector<std::shared_ptr<internal::QueueShard>> shards_;
  // Where PickShard starts looking, so that ties are taken in turn.
  std::atomic<uint64_t> turn_{0};
  std::chrono::milliseconds step_timeout_;
};

}  // namespace tern::ingest
