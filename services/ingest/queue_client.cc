#include "services/ingest/queue_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asio/async_result.hpp"
#include "asio/post.hpp"
#include "asio/steady_timer.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/common/log.h"
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

// One queue shard: its channel and stub, and what the client knows of its
// health. Shared by the shard's batcher and by every streaming call to it, so
// the channel outlives them all.
struct QueueStub {
  std::string target;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<tern::v1::Queue::Stub> stub;
  // False with one shard: there is nowhere else to send a message, so its
  // health is not tracked (and one queue behaves exactly as before shards).
  bool track_health = false;
  // Messages handed to this shard and not yet answered.
  std::atomic<int64_t> outstanding{0};
  // Steady-clock nanoseconds until which new messages avoid this shard.
  std::atomic<int64_t> avoid_until_ns{0};
  std::atomic<bool> troubled{false};
  std::mutex mu;
  int failures = 0;  // in a row, under `mu`: the backoff doubles with each

  static int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // A failure that says the shard, not the message, is in trouble. Cancelled
  // (the client went away) and the queue refusing one message's content
  // (InvalidArgument, FailedPrecondition, ...) say nothing about the shard.
  static bool IsTrouble(absl::StatusCode code) {
    switch (code) {
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kDeadlineExceeded:
      case absl::StatusCode::kResourceExhausted:
      case absl::StatusCode::kInternal:
      case absl::StatusCode::kDataLoss:
      case absl::StatusCode::kUnknown:
        return true;
      default:
        return false;
    }
  }

  // Records how a call to this shard went.
  void Note(const absl::Status& status) {
    if (!track_health) {
      return;
    }
    if (status.ok()) {
      if (troubled.load(std::memory_order_relaxed)) {
        std::lock_guard<std::mutex> lock(mu);
        if (troubled.exchange(false)) {
          failures = 0;
          avoid_until_ns.store(0, std::memory_order_relaxed);
          log::Event(log::Level::kNotice, "queue_shard_recovered", {{"queue", target}});
        }
      }
      return;
    }
    if (!IsTrouble(status.code())) {
      return;
    }
    std::lock_guard<std::mutex> lock(mu);
    failures = std::min(failures + 1, 6);
    // 1, 2, 4, 8, 16, then 30 s.
    const auto avoid = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(1000LL << (failures - 1)),
                                                           std::chrono::seconds(30));
    avoid_until_ns.store(NowNs() + std::chrono::duration_cast<std::chrono::nanoseconds>(avoid).count(),
                         std::memory_order_relaxed);
    troubled.store(true);
    log::Event(log::Level::kWarn, "queue_shard_trouble",
               {{"queue", target},
                {"error", absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message())},
                {"avoid_ms", absl::StrCat(avoid.count())}});
  }
};

// The client's handle on one shard.
struct QueueShard {
  std::shared_ptr<QueueStub> stub;
  std::shared_ptr<EnqueueBatcher> batcher;
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
    stub_->outstanding.fetch_add(1, std::memory_order_relaxed);
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
    timed_out_.store(true);
    context.TryCancel();
  }
  bool timed_out() const { return timed_out_.load(); }

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
    stub_->outstanding.fetch_sub(1, std::memory_order_relaxed);
    // Cancelled is the session's doing (its client left), unless our step
    // timer cancelled the call: then the shard was too slow.
    if (timed_out_.load()) {
      stub_->Note(absl::DeadlineExceededError("queue did not answer in time"));
    } else if (status.error_code() != grpc::StatusCode::CANCELLED) {
      stub_->Note(status.ok() ? absl::OkStatus() : rpc::FromGrpc(status));
    }
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
  // Set on the executor, read by OnDone on a gRPC thread.
  std::atomic<bool> timed_out_{false};
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
  // The message's id or why it is not queued. When the queue refused it with
  // ResourceExhausted (it stored nothing), the item comes back so that the
  // client can offer it to another shard without a copy of the body.
  struct Outcome {
    absl::StatusOr<std::string> result;
    std::optional<tern::v1::EnqueueItem> returned;
  };
  using Done = std::function<void(Outcome)>;
  using SteadyClock = std::chrono::steady_clock;

  EnqueueBatcher(std::shared_ptr<QueueStub> stub, std::chrono::milliseconds timeout)
      : stub_(std::move(stub)), timeout_(timeout) {
    M();  // exported from the start, so a scrape before the first message sees zeros
  }

  void Add(tern::v1::EnqueueItem item, Done done) {
    std::vector<Pending> batch;
    stub_->outstanding.fetch_add(1, std::memory_order_relaxed);
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
    stub_->outstanding.fetch_sub(static_cast<int64_t>(call.done.size()), std::memory_order_relaxed);
    // The shard's health: the call's failure, else the first message the
    // queue refused for a reason of its own (out of disk, storage error).
    absl::Status health = whole;
    for (int i = 0; health.ok() && i < call.response.results_size(); ++i) {
      const tern::v1::EnqueueItemResult& r = call.response.results(i);
      if (r.message_id().empty() && QueueStub::IsTrouble(static_cast<absl::StatusCode>(r.code()))) {
        health = absl::Status(static_cast<absl::StatusCode>(r.code()), r.error());
      }
    }
    stub_->Note(health);
    for (size_t i = 0; i < call.done.size(); ++i) {
      const int index = static_cast<int>(i);
      absl::StatusOr<std::string> result;
      if (!whole.ok()) {
        result = whole;
      } else if (index >= call.response.results_size()) {
        result = absl::InternalError("queue answered EnqueueBatch without a result for every message");
      } else if (const tern::v1::EnqueueItemResult& r = call.response.results(index); !r.message_id().empty()) {
        result = r.message_id();
      } else if (r.code() == 0) {
        result = absl::InternalError("queue answered without a message id");
      } else {
        result = absl::Status(static_cast<absl::StatusCode>(r.code()), r.error());
      }
      Outcome outcome{std::move(result), std::nullopt};
      // ResourceExhausted, from the queue or from gRPC before the call was
      // processed, means nothing was stored: the message may go elsewhere.
      if (outcome.result.status().code() == absl::StatusCode::kResourceExhausted &&
          index < call.request.items_size()) {
        outcome.returned = std::move(*call.request.mutable_items(index));
      }
      call.done[i](std::move(outcome));
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
    : QueueClient(std::vector<std::string>{target}, step_timeout) {}

QueueClient::QueueClient(const std::vector<std::string>& targets, std::chrono::milliseconds step_timeout)
    : step_timeout_(step_timeout) {
  for (const std::string& target : targets) {
    auto shard = std::make_shared<internal::QueueShard>();
    shard->stub = std::make_shared<internal::QueueStub>();
    shard->stub->target = target;
    shard->stub->channel = rpc::MakeChannel(target);
    shard->stub->stub = tern::v1::Queue::NewStub(shard->stub->channel);
    shard->stub->track_health = targets.size() > 1;
    shard->batcher = std::make_shared<internal::EnqueueBatcher>(shard->stub, step_timeout_);
    shards_.push_back(std::move(shard));
  }
}

QueueClient::~QueueClient() = default;

size_t QueueClient::PickShard(uint64_t tried) {
  const size_t n = shards_.size();
  if (n == 1) {
    return 0;
  }
  // Ties are taken in turn, so an idle system spreads its mail too.
  const size_t first = static_cast<size_t>(turn_.fetch_add(1, std::memory_order_relaxed) % n);
  const int64_t now = internal::QueueStub::NowNs();
  size_t best = n;
  int64_t best_outstanding = 0;
  size_t fallback = n;  // the untried shard left alone longest
  int64_t fallback_until = 0;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (first + k) % n;
    if (i < 64 && (tried >> i) & 1) {
      continue;
    }
    internal::QueueStub& stub = *shards_[i]->stub;
    const int64_t until = stub.avoid_until_ns.load(std::memory_order_relaxed);
    // try_to_connect: after a failed connection gRPC reports
    // TRANSIENT_FAILURE until asked to connect again, so a shard that was
    // down when ingest started would otherwise never be used once it is up.
    if (until > now || stub.channel->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      if (fallback == n || until < fallback_until) {
        fallback = i;
        fallback_until = until;
      }
      continue;
    }
    const int64_t outstanding = stub.outstanding.load(std::memory_order_relaxed);
    if (best == n || outstanding < best_outstanding) {
      best = i;
      best_outstanding = outstanding;
    }
  }
  if (best != n) {
    return best;
  }
  return fallback != n ? fallback : first;
}

bool QueueClient::ChannelReady() const {
  const int64_t now = internal::QueueStub::NowNs();
  bool ready = false;
  for (const auto& shard : shards_) {
    // Asked of every shard, so an idle channel starts to connect.
    const bool connected = shard->stub->channel->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_READY;
    ready = ready || (connected && shard->stub->avoid_until_ns.load(std::memory_order_relaxed) <= now);
  }
  return ready;
}

std::vector<std::string> QueueClient::WaitForReady(std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::system_clock::now() + timeout;
  for (const auto& shard : shards_) {
    shard->stub->channel->GetState(/*try_to_connect=*/true);
  }
  std::vector<std::string> unready;
  for (const auto& shard : shards_) {
    if (!shard->stub->channel->WaitForConnected(deadline)) {
      unready.push_back(shard->stub->target);
    }
  }
  return unready;
}

asio::awaitable<absl::StatusOr<std::string>> QueueClient::EnqueueWhole(tern::v1::EnqueueHeader header,
                                                                       std::string body) {
  using Outcome = internal::EnqueueBatcher::Outcome;
  auto executor = co_await asio::this_coro::executor;
  tern::v1::EnqueueItem item;
  *item.mutable_header() = std::move(header);
  item.set_body(std::move(body));
  // Every shard is offered the message at most once (the first 64 of a
  // longer list, which config refuses, are told apart).
  const size_t max_attempts = std::min<size_t>(shards_.size(), 64);
  uint64_t tried = 0;
  for (size_t attempt = 1;; ++attempt) {
    const size_t index = PickShard(tried);
    if (index < 64) {
      tried |= uint64_t{1} << index;
    }
    internal::QueueShard& shard = *shards_[index];
    internal::EnqueueBatcher* batcher = shard.batcher.get();
    tern::v1::EnqueueItem* pending = &item;
    asio::any_io_executor* ex = &executor;
    // The initiation captures raw pointers only (see AwaitStep); `item` and
    // `executor` live in this frame until the result arrives.
    Outcome outcome = co_await asio::async_initiate<decltype(asio::use_awaitable), void(Outcome)>(
        [batcher, pending, ex](auto handler) {
          auto shared = std::make_shared<decltype(handler)>(std::move(handler));
          batcher->Add(std::move(*pending), [shared, target = *ex](Outcome outcome) {
            asio::post(target, [shared, outcome = std::move(outcome)]() mutable { (*shared)(std::move(outcome)); });
          });
        },
        asio::use_awaitable);
    // A shard out of disk stored nothing: the next shard may take it.
    if (outcome.returned && attempt < max_attempts) {
      log::Event(log::Level::kInfo, "enqueue_retried_elsewhere",
                 {{"queue", shard.stub->target}, {"error", outcome.result.status().message()}});
      item = *std::move(outcome.returned);
      continue;
    }
    co_return std::move(outcome.result);
  }
}

std::unique_ptr<EnqueueCall> QueueClient::StartEnqueue(asio::any_io_executor executor,
                                                       tern::v1::EnqueueHeader header) {
  auto reactor = std::make_shared<internal::EnqueueReactor>(std::move(executor),
                                                             shards_[PickShard()]->stub);
  reactor->context.set_wait_for_ready(false);
  reactor->context.set_deadline(std::chrono::system_clock::now() + internal::kCallBackstop);
  reactor->Begin(reactor);
  return std::unique_ptr<EnqueueCall>(new EnqueueCall(std::move(reactor), std::move(header), step_timeout_));
}

}  // namespace tern::ingest
