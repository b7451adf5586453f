#include "services/ingest/queue_client.h"

#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "asio/async_result.hpp"
#include "asio/post.hpp"
#include "asio/steady_timer.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/metrics/metrics.h"
#include "lib/rpc/server_setup.h"
#include "lib/rpc/status_convert.h"
#include "tern/v1/queue.grpc.pb.h"

namespace tern::ingest {
namespace internal {

// The backstop deadline of a whole Enqueue call. Each step is bounded much
// more tightly by the step timeout; this only guarantees that no call (and
// no reactor) can live forever whatever a client does.
constexpr auto kCallBackstop = std::chrono::hours(2);

struct QueueStub {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<tern::v1::Queue::Stub> stub;
};

// How the bridge works. gRPC runs the reactor's callbacks on its own threads;
// the session coroutine runs on an Asio executor. The coroutine starts an
// operation (StartWrite, or waiting for OnDone) after storing a completion
// handler; the gRPC callback takes the handler under `mu_` and posts it to
// the executor, so the coroutine always resumes on its own thread.
//
// A hold (AddHold before StartCall) keeps gRPC from calling OnDone while the
// session may still start operations from outside a reaction; it is released
// once, by Finish (after StartWritesDone), Cancel or abandonment.
//
// Lifetime: the reactor is shared by the EnqueueCall and by `self_`, which
// gRPC's side holds until OnDone. If the EnqueueCall goes away first (the
// session ended mid-DATA), the reactor is marked abandoned and cancelled:
// its callbacks then post nothing, because the executor may be gone.
class EnqueueReactor final : public grpc::ClientWriteReactor<tern::v1::EnqueueRequest>,
                             public std::enable_shared_from_this<EnqueueReactor> {
 public:
  EnqueueReactor(asio::any_io_executor executor, std::shared_ptr<QueueStub> stub)
      : executor_(std::move(executor)), stub_(std::move(stub)) {}

  grpc::ClientContext context;
  tern::v1::EnqueueResponse response;

  void Begin(std::shared_ptr<EnqueueReactor> self) {
    self_ = std::move(self);
    stub_->stub->async()->Enqueue(&context, &response, this);
    AddHold();
    StartCall();
  }

  // Executor thread. `handler` runs on the executor with the write's result.
  void StartWriteOp(tern::v1::EnqueueRequest request, std::function<void(bool)> handler) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      write_handler_ = std::move(handler);
    }
    request_ = std::move(request);
    StartWrite(&request_);
  }

  // Executor thread. `handler` runs on the executor with the final status.
  void StartFinishOp(bool writes_done, std::function<void(grpc::Status)> handler) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (done_) {
        asio::post(executor_, [h = std::move(handler), s = status_]() { h(s); });
      } else {
        done_handler_ = std::move(handler);
      }
    }
    ReleaseHold(writes_done);
  }

  // Executor thread.
  void Cancel() {
    context.TryCancel();
    ReleaseHold(/*writes_done=*/false);
  }

  // Executor thread: the step timer fired.
  void TimeOut() {
    timed_out_ = true;
    context.TryCancel();
  }
  bool timed_out() const { return timed_out_; }

  // Executor thread: the EnqueueCall is being destroyed.
  void Abandon() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      abandoned_ = true;
      write_handler_ = nullptr;
      done_handler_ = nullptr;
    }
    Cancel();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (abandoned_ || !write_handler_) {
      return;
    }
    asio::post(executor_, [h = std::move(write_handler_), ok]() { h(ok); });
    write_handler_ = nullptr;
  }

  void OnDone(const grpc::Status& status) override {
    std::shared_ptr<EnqueueReactor> keep;
    {
      std::lock_guard<std::mutex> lock(mu_);
      keep = std::move(self_);
      done_ = true;
      status_ = status;
      if (!abandoned_ && done_handler_) {
        asio::post(executor_, [h = std::move(done_handler_), status]() { h(status); });
        done_handler_ = nullptr;
      }
    }
    // `keep` may be the last reference: `this` can be deleted on return.
  }

 private:
  void ReleaseHold(bool writes_done) {
    if (hold_released_) {
      return;
    }
    hold_released_ = true;
    if (writes_done) {
      StartWritesDone();
    }
    RemoveHold();
  }

  asio::any_io_executor executor_;
  std::shared_ptr<QueueStub> stub_;   // keeps the channel alive for the call
  std::shared_ptr<EnqueueReactor> self_;
  tern::v1::EnqueueRequest request_;
  // Executor-only state.
  bool hold_released_ = false;
  bool timed_out_ = false;
  // Shared with gRPC's threads.
  std::mutex mu_;
  bool abandoned_ = false;
  bool done_ = false;
  grpc::Status status_;
  std::function<void(bool)> write_handler_;
  std::function<void(grpc::Status)> done_handler_;
};

// Gathers whole messages from every session into EnqueueBatch calls. At most
// kCallsInFlight calls run at once; a message that arrives while all of
// them are busy waits for the next free one and leaves with everything that
// gathered meanwhile (up to kBatchItems / kBatchBytes per call). Item
// completions run on gRPC's threads and post into each session's executor.
class EnqueueBatcher final : public std::enable_shared_from_this<EnqueueBatcher> {
 public:
  using Done = std::function<void(absl::StatusOr<std::string>)>;
  using SteadyClock = std::chrono::steady_clock;

  EnqueueBatcher(std::shared_ptr<QueueStub> stub, std::chrono::milliseconds timeout)
      : stub_(std::move(stub)), timeout_(timeout) {
    M();  // exported from the start, so a scrape before the first message sees zeros
  }

  void Add(tern::v1::EnqueueItem item, Done done) {
    std::vector<Pending> batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back(Pending{std::move(item), std::move(done), SteadyClock::now()});
      if (in_flight_ >= kCallsInFlight) {
        return;  // leaves with the next call that finishes
      }
      ++in_flight_;
      batch = TakeLocked();
    }
    Send(std::move(batch));
  }

 private:
  // One call in flight: what arrives meanwhile gathers for the next one, so
  // a call carries more messages as the load grows. (Two in flight, one
  // being answered while the next gathered, made more and smaller calls and
  // cost ~10 % more CPU per message in the end-to-end bench: a call's cost
  // is mostly gRPC's thread hand-offs, and the queue's writer groups
  // whatever is waiting anyway.)
  static constexpr int kCallsInFlight = 1;
  static constexpr size_t kBatchItems = 256;
  static constexpr uint64_t kBatchBytes = 8 << 20;

  struct Pending {
    tern::v1::EnqueueItem item;
    Done done;
    SteadyClock::time_point added;
  };
  struct Call {
    grpc::ClientContext context;
    tern::v1::EnqueueBatchRequest request;
    tern::v1::EnqueueBatchResponse response;
    std::vector<Done> done;
    std::vector<SteadyClock::time_point> added;
    SteadyClock::time_point sent;
  };

  // What the SMTP client waits for between its final dot and our answer:
  // the wait for a free call, then the call (mostly the queue's synced
  // commit). Both are latency, not CPU; with a fixed number of client
  // sessions they bound the message rate.
  struct Metrics {
    metrics::Histogram& message_seconds;
    metrics::Histogram& call_seconds;
  };
  static Metrics& M() {
    static Metrics* m = [] {
      auto& r = metrics::Registry::Global();
      return new Metrics{
          r.GetHistogram("tern_ingest_enqueue_seconds",
                         "From a whole (EnqueueBatch) message's end of data until the queue answered for it",
                         metrics::LatencyBuckets()),
          r.GetHistogram("tern_ingest_enqueue_call_seconds", "EnqueueBatch calls to the queue, send to answer",
                         metrics::LatencyBuckets()),
      };
    }();
    return *m;
  }

  std::vector<Pending> TakeLocked() {
    std::vector<Pending> batch;
    uint64_t bytes = 0;
    size_t n = 0;
    while (n < pending_.size() && n < kBatchItems && (n == 0 || bytes + pending_[n].item.body().size() <= kBatchBytes)) {
      bytes += pending_[n].item.body().size();
      ++n;
    }
    batch.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      batch.push_back(std::move(pending_.front()));
      pending_.pop_front();
    }
    return batch;
  }

  void Send(std::vector<Pending> batch) {
    auto call = std::make_shared<Call>();
    call->context.set_wait_for_ready(false);
    call->context.set_deadline(std::chrono::system_clock::now() + timeout_);
    call->request.mutable_items()->Reserve(static_cast<int>(batch.size()));
    call->done.reserve(batch.size());
    call->added.reserve(batch.size());
    for (Pending& p : batch) {
      *call->request.add_items() = std::move(p.item);
      call->done.push_back(std::move(p.done));
      call->added.push_back(p.added);
    }
    call->sent = SteadyClock::now();
    stub_->stub->async()->EnqueueBatch(&call->context, &call->request, &call->response,
                                       [self = shared_from_this(), call](grpc::Status status) {
                                         self->Finished(*call, status);
                                       });
  }

  void Finished(Call& call, const grpc::Status& status) {
    // The next call goes out first: its messages have been waiting for this
    // one, and answering this call's sessions (a post into each session's
    // executor) would otherwise delay it.
    std::vector<Pending> next;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (pending_.empty()) {
        --in_flight_;
      } else {
        next = TakeLocked();
      }
    }
    if (!next.empty()) {
      Send(std::move(next));
    }
    const absl::Status whole = status.ok() ? absl::OkStatus() : rpc::FromGrpc(status);
    M().call_seconds.ObserveSince(call.sent);
    for (const SteadyClock::time_point added : call.added) {
      M().message_seconds.ObserveSince(added);
    }
    for (size_t i = 0; i < call.done.size(); ++i) {
      if (!whole.ok()) {
        call.done[i](whole);
        continue;
      }
      if (static_cast<int>(i) >= call.response.results_size()) {
        call.done[i](absl::InternalError("queue answered EnqueueBatch without a result for every message"));
        continue;
      }
      const tern::v1::EnqueueItemResult& r = call.response.results(static_cast<int>(i));
      if (!r.message_id().empty()) {
        call.done[i](r.message_id());
      } else if (r.code() == 0) {
        call.done[i](absl::InternalError("queue answered without a message id"));
      } else {
        call.done[i](absl::Status(static_cast<absl::StatusCode>(r.code()), r.error()));
      }
    }
  }

  std::shared_ptr<QueueStub> stub_;
  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::deque<Pending> pending_;
  int in_flight_ = 0;
};

}  // namespace internal

namespace {

// Awaits a reactor operation that reports through a std::function<void(T)>,
// bounded by `timeout` (the reactor is cancelled when it passes). `reactor`
// is kept alive by the caller's EnqueueCall.
//
// `start` must be trivially destructible (capture raw pointers only): g++ 12
// destroys a lambda temporary that is passed by value to a coroutine inside a
// co_await expression twice, which corrupted shared_ptr captures here.
template <typename T, typename Start>
asio::awaitable<T> AwaitStep(internal::EnqueueReactor* reactor, std::chrono::milliseconds timeout, Start start) {
  static_assert(std::is_trivially_destructible_v<Start>, "see the comment on AwaitStep");
  auto executor = co_await asio::this_coro::executor;
  asio::steady_timer timer(executor, timeout);
  // The handler may run after this step ended (it was already queued when
  // the operation completed), so it holds the reactor weakly.
  timer.async_wait([weak = reactor->weak_from_this()](const std::error_code& ec) {
    auto alive = weak.lock();
    if (!ec && alive) {
      alive->TimeOut();
    }
  });
  T result = co_await asio::async_initiate<decltype(asio::use_awaitable), void(T)>(
      [start = std::move(start)](auto handler) mutable {
        // std::function needs a copyable callable; the handler is move-only.
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        start(std::function<void(T)>([shared](T value) { (*shared)(std::move(value)); }));
      },
      asio::use_awaitable);
  timer.cancel();
  co_return result;
}

}  // namespace

EnqueueCall::EnqueueCall(std::shared_ptr<internal::EnqueueReactor> reactor, tern::v1::EnqueueHeader header,
                         std::chrono::milliseconds step_timeout)
    : reactor_(std::move(reactor)), header_(std::move(header)), step_timeout_(step_timeout) {}

EnqueueCall::~EnqueueCall() {
  if (!finished_) {
    reactor_->Abandon();
  }
}

asio::awaitable<absl::Status> EnqueueCall::Send(tern::v1::EnqueueRequest request) {
  if (cancelled_) {
    co_return absl::CancelledError("enqueue call cancelled");
  }
  if (failed_) {
    co_return absl::UnavailableError("enqueue stream already failed");
  }
  internal::EnqueueReactor* reactor = reactor_.get();
  tern::v1::EnqueueRequest* pending = &request;
  const bool ok = co_await AwaitStep<bool>(reactor, step_timeout_, [reactor, pending](auto done) {
    reactor->StartWriteOp(std::move(*pending), std::move(done));
  });
  if (!ok) {
    failed_ = true;
    if (reactor_->timed_out()) {
      co_return absl::DeadlineExceededError("queue did not take the data in time");
    }
    co_return absl::UnavailableError("enqueue stream broken");
  }
  co_return absl::OkStatus();
}

asio::awaitable<absl::Status> EnqueueCall::Start() {
  started_ = true;
  tern::v1::EnqueueRequest request;
  *request.mutable_header() = std::move(header_);
  co_return co_await Send(std::move(request));
}

asio::awaitable<absl::Status> EnqueueCall::Write(std::string chunk) {
  tern::v1::EnqueueRequest request;
  request.set_body_chunk(std::move(chunk));
  co_return co_await Send(std::move(request));
}

asio::awaitable<absl::StatusOr<std::string>> EnqueueCall::Finish() {
  const bool writes_done = started_ && !failed_ && !cancelled_;
  internal::EnqueueReactor* reactor = reactor_.get();
  grpc::Status status = co_await AwaitStep<grpc::Status>(
      reactor, step_timeout_,
      [reactor, writes_done](auto done) { reactor->StartFinishOp(writes_done, std::move(done)); });
  finished_ = true;
  if (reactor_->timed_out()) {
    co_return absl::DeadlineExceededError("queue did not answer in time");
  }
  if (!status.ok()) {
    co_return rpc::FromGrpc(status);
  }
  if (reactor_->response.message_id().empty()) {
    co_return absl::InternalError("queue answered without a message id");
  }
  co_return reactor_->response.message_id();
}

void EnqueueCall::Cancel() {
  cancelled_ = true;
  reactor_->Cancel();
}

QueueClient::QueueClient(const std::string& target, std::chrono::milliseconds step_timeout)
    : stub_(std::make_shared<internal::QueueStub>()), step_timeout_(step_timeout) {
  stub_->channel = rpc::MakeChannel(target);
  stub_->stub = tern::v1::Queue::NewStub(stub_->channel);
  batcher_ = std::make_shared<internal::EnqueueBatcher>(stub_, step_timeout_);
}

bool QueueClient::ChannelReady() const {
  return stub_->channel->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_READY;
}

bool QueueClient::WaitForReady(std::chrono::milliseconds timeout) const {
  return stub_->channel->WaitForConnected(std::chrono::system_clock::now() + timeout);
}

asio::awaitable<absl::StatusOr<std::string>> QueueClient::EnqueueWhole(tern::v1::EnqueueHeader header,
                                                                       std::string body) {
  auto executor = co_await asio::this_coro::executor;
  tern::v1::EnqueueItem item;
  *item.mutable_header() = std::move(header);
  item.set_body(std::move(body));
  internal::EnqueueBatcher* batcher = batcher_.get();
  tern::v1::EnqueueItem* pending = &item;
  asio::any_io_executor* ex = &executor;
  // The initiation captures raw pointers only (see AwaitStep); `item` and
  // `executor` live in this frame until the result arrives.
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(absl::StatusOr<std::string>)>(
      [batcher, pending, ex](auto handler) {
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        batcher->Add(std::move(*pending), [shared, target = *ex](absl::StatusOr<std::string> result) {
          asio::post(target, [shared, result = std::move(result)]() mutable { (*shared)(std::move(result)); });
        });
      },
      asio::use_awaitable);
}

QueueClient::~QueueClient() = default;

std::unique_ptr<EnqueueCall> QueueClient::StartEnqueue(asio::any_io_executor executor,
                                                       tern::v1::EnqueueHeader header) {
  auto reactor = std::make_shared<internal::EnqueueReactor>(std::move(executor), stub_);
  reactor->context.set_wait_for_ready(false);
  reactor->context.set_deadline(std::chrono::system_clock::now() + internal::kCallBackstop);
  reactor->Begin(reactor);
  return std::unique_ptr<EnqueueCall>(new EnqueueCall(std::move(reactor), std::move(header), step_timeout_));
}

}  // namespace tern::ingest
