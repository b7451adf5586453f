#include "services/queue/queue_service_impl.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/metrics/metrics.h"
#include "lib/rpc/status_convert.h"

namespace tern::queue {
namespace {

// Calls and items per worker-facing method: items per call is how well the
// callers batch, and each call costs both sides far more CPU than an item
// does (HTTP/2 framing, a reactor, thread hand-offs), so this is the figure
// to watch when throughput per core drops.
struct RpcMetrics {
  metrics::Counter& calls;
  metrics::Counter& items;
  // From the call's arrival to its answer: for the synced methods mostly the
  // wait for a group commit. Not observed for Lease, which long-polls.
  metrics::Histogram& seconds;
};

RpcMetrics& MethodMetrics(const char* method) {
  auto& r = metrics::Registry::Global();
  return *new RpcMetrics{
      r.GetCounter("tern_queue_rpc_calls_total", "Worker-facing RPCs received, by method", {{"method", method}}),
      r.GetCounter("tern_queue_rpc_items_total", "Items those RPCs carried (messages, jobs asked for, reports)",
                   {{"method", method}}),
      r.GetHistogram("tern_queue_rpc_seconds", "Worker-facing RPCs from arrival to answer, by method (not Lease)",
                     metrics::LatencyBuckets(), {{"method", method}}),
  };
}

void CountCall(RpcMetrics& m, int items) {
  m.calls.Inc();
  m.items.Inc(items);
}

// Reads the Enqueue stream into one body buffer, then hands it to the core.
// Deletes itself in OnDone (after Finish), as callback reactors do.
class EnqueueReactor final : public grpc::ServerReadReactor<tern::v1::EnqueueRequest> {
 public:
  EnqueueReactor(QueueCore* core, grpc::CallbackServerContext* context, tern::v1::EnqueueResponse* response)
      : core_(core), context_(context), response_(response) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      EndOfStream();
      return;
    }
    if (request_.has_header()) {
      if (have_header_) {
        Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Enqueue: header sent twice"));
        return;
      }
      have_header_ = true;
      header_ = std::move(*request_.mutable_header());
      if (header_.expected_size() > kMaxBodyBytes) {
        Finish(TooBig());
        return;
      }
      body_.reserve(header_.expected_size());
    } else if (!have_header_) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Enqueue: the first request must carry the header"));
      return;
    }
    const std::string& chunk = request_.body_chunk();
    if (body_.size() + chunk.size() > kMaxBodyBytes) {
      Finish(TooBig());
      return;
    }
    if (body_.empty() && body_.capacity() < chunk.size()) {
      body_ = std::move(*request_.mutable_body_chunk());
    } else {
      body_.append(chunk);
    }
    request_.Clear();
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  static grpc::Status TooBig() {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("Enqueue: message body over ", kMaxBodyBytes, " bytes"));
  }

  void EndOfStream() {
    if (context_->IsCancelled()) {
      // The client gave up: storing the message now could only duplicate it
      // when the client tries again.
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "Enqueue: cancelled by the client"));
      return;
    }
    if (!have_header_) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Enqueue: no header"));
      return;
    }
    core_->Enqueue(std::move(header_), std::move(body_), [this](absl::StatusOr<EnqueueResult> result) {
      if (!result.ok()) {
        Finish(rpc::ToGrpc(result.status()));
        return;
      }
      response_->set_message_id(result->message_id);
      response_->set_duplicate(result->duplicate);
      Finish(grpc::Status::OK);
    });
  }

  QueueCore* core_;
  grpc::CallbackServerContext* context_;
  tern::v1::EnqueueResponse* response_;
  tern::v1::EnqueueRequest request_;
  tern::v1::EnqueueHeader header_;
  bool have_header_ = false;
  std::string body_;
};

// Finishes a unary reactor from a core completion, swapping the result into
// the response gRPC owns (no copy of leased bodies).
template <typename Response>
auto FinishWith(grpc::ServerUnaryReactor* reactor, Response* response, metrics::Histogram* seconds = nullptr) {
  return [reactor, response, seconds, started = std::chrono::steady_clock::now()](absl::StatusOr<Response> result) {
    if (seconds != nullptr) {
      seconds->ObserveSince(started);
    }
    if (!result.ok()) {
      reactor->Finish(rpc::ToGrpc(result.status()));
      return;
    }
    response->Swap(&*result);
    reactor->Finish(grpc::Status::OK);
  };
}

}  // namespace

grpc::ServerReadReactor<tern::v1::EnqueueRequest>* QueueServiceImpl::Enqueue(grpc::CallbackServerContext* context,
                                                                             tern::v1::EnqueueResponse* response) {
  return new EnqueueReactor(core_, context, response);
}

namespace {

// One EnqueueBatch call: counts the items still waiting for their commit and
// finishes the reactor when the last one has its result. The core calls the
// item callbacks from the writer role's holder, usually all from one group.
class BatchState {
 public:
  BatchState(grpc::ServerUnaryReactor* reactor, tern::v1::EnqueueBatchResponse* response, int items,
             metrics::Histogram& seconds)
      : reactor_(reactor), response_(response), remaining_(items), seconds_(seconds) {
    for (int i = 0; i < items; ++i) {
      response_->add_results();
    }
  }

  void Done(int index, const absl::StatusOr<EnqueueResult>& result) {
    tern::v1::EnqueueItemResult* out = response_->mutable_results(index);
    if (result.ok()) {
      out->set_message_id(result->message_id);
      out->set_duplicate(result->duplicate);
    } else {
      out->set_code(static_cast<int32_t>(result.status().code()));
      out->set_error(std::string(result.status().message()));
    }
    if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      seconds_.ObserveSince(started_);
      reactor_->Finish(grpc::Status::OK);
      delete this;
    }
  }

 private:
  grpc::ServerUnaryReactor* reactor_;
  tern::v1::EnqueueBatchResponse* response_;
  std::atomic<int> remaining_;
  metrics::Histogram& seconds_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace

grpc::ServerUnaryReactor* QueueServiceImpl::EnqueueBatch(grpc::CallbackServerContext* context,
                                                         const tern::v1::EnqueueBatchRequest* request,
                                                         tern::v1::EnqueueBatchResponse* response) {
  auto* reactor = context->DefaultReactor();
  const int n = request->items_size();
  static RpcMetrics& metrics = MethodMetrics("EnqueueBatch");
  CountCall(metrics, n);
  if (n == 0) {
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  // gRPC owns the request until the reactor finishes and reads nothing of it
  // after handing it to us, so the bodies are moved out instead of copied
  // (the request object itself is not const, only our view of it).
  auto* items = const_cast<tern::v1::EnqueueBatchRequest*>(request)->mutable_items();
  auto* state = new BatchState(reactor, response, n, metrics.seconds);
  std::vector<QueueCore::EnqueueArgs> batch;
  batch.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    tern::v1::EnqueueItem& item = (*items)[i];
    if (!item.has_header()) {
      state->Done(i, absl::InvalidArgumentError("EnqueueBatch: item without a header"));
      continue;
    }
    if (item.body().size() > kMaxBodyBytes) {
      state->Done(i, absl::ResourceExhaustedError(absl::StrCat("EnqueueBatch: message body over ", kMaxBodyBytes,
                                                               " bytes")));
      continue;
    }
    batch.push_back({std::move(*item.mutable_header()), std::move(*item.mutable_body()),
                     [state, i](absl::StatusOr<EnqueueResult> result) { state->Done(i, result); }});
  }
  // Together, so the batch is one group; usually committed on this thread
  // (the reply may be sent before this returns).
  core_->EnqueueMany(std::move(batch));
  return reactor;
}

namespace {

// A long-polling Lease must learn that its caller went away (OnCancel), or a
// job arriving later would be leased to nobody and sit out the lease.
class LeaseReactor : public grpc::ServerUnaryReactor {
 public:
  std::shared_ptr<std::atomic<bool>> cancelled = std::make_shared<std::atomic<bool>>(false);
  void OnCancel() override { cancelled->store(true, std::memory_order_relaxed); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerUnaryReactor* QueueServiceImpl::Lease(grpc::CallbackServerContext* /*context*/,
                                                  const tern::v1::LeaseRequest* request,
                                                  tern::v1::LeaseResponse* response) {
  static RpcMetrics& metrics = MethodMetrics("Lease");
  CountCall(metrics, static_cast<int>(request->max_jobs()));
  auto* reactor = new LeaseReactor;
  core_->Lease(*request, FinishWith(static_cast<grpc::ServerUnaryReactor*>(reactor), response), reactor->cancelled);
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::Report(grpc::CallbackServerContext* context,
                                                   const tern::v1::ReportRequest* request,
                                                   tern::v1::ReportResponse* response) {
  static RpcMetrics& metrics = MethodMetrics("Report");
  CountCall(metrics, request->reports_size());
  auto* reactor = context->DefaultReactor();
  core_->Report(*request, FinishWith(reactor, response, &metrics.seconds));
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::Ack(grpc::CallbackServerContext* context,
                                                const tern::v1::AckRequest* request,
                                                tern::v1::AckResponse* response) {
  static RpcMetrics& metrics = MethodMetrics("Ack");
  CountCall(metrics, request->acks_size());
  auto* reactor = context->DefaultReactor();
  core_->Ack(*request, FinishWith(reactor, response, &metrics.seconds));
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::Progress(grpc::CallbackServerContext* context,
                                                     const tern::v1::ProgressRequest* request,
                                                     tern::v1::ProgressResponse* response) {
  static RpcMetrics& metrics = MethodMetrics("Progress");
  // Items: progress items plus the reports they carry.
  CountCall(metrics, request->items_size() + request->reports_size());
  auto* reactor = context->DefaultReactor();
  core_->Progress(*request, FinishWith(reactor, response, &metrics.seconds));
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::PutHostFlags(grpc::CallbackServerContext* context,
                                                         const tern::v1::PutHostFlagsRequest* request,
                                                         tern::v1::PutHostFlagsResponse* response) {
  auto* reactor = context->DefaultReactor();
  core_->PutHostFlags(*request, FinishWith(reactor, response));
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::GetHostFlags(grpc::CallbackServerContext* context,
                                                         const tern::v1::GetHostFlagsRequest* request,
                                                         tern::v1::GetHostFlagsResponse* response) {
  auto* reactor = context->DefaultReactor();
  FinishWith(reactor, response)(core_->GetHostFlags(*request));
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::PutStsPolicy(grpc::CallbackServerContext* context,
                                                         const tern::v1::PutStsPolicyRequest* request,
                                                         tern::v1::PutStsPolicyResponse* response) {
  auto* reactor = context->DefaultReactor();
  core_->PutStsPolicy(*request, FinishWith(reactor, response));
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::GetStsPolicy(grpc::CallbackServerContext* context,
                                                         const tern::v1::GetStsPolicyRequest* request,
                                                         tern::v1::GetStsPolicyResponse* response) {
  auto* reactor = context->DefaultReactor();
  FinishWith(reactor, response)(core_->GetStsPolicy(*request));
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::RecordTlsResults(grpc::CallbackServerContext* context,
                                                             const tern::v1::RecordTlsResultsRequest* request,
                                                             tern::v1::RecordTlsResultsResponse* response) {
  auto* reactor = context->DefaultReactor();
  core_->RecordTlsResults(*request, FinishWith(reactor, response));
  return reactor;
}

// ---------------------------------------------------------------------------
// Admin (sync API).

namespace {

// Runs one asynchronous core call and waits for its completion (on a gRPC
// sync thread, which may block).
template <typename T, typename Start>
grpc::Status Wait(Start start, T* response) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<T>>>();
  auto future = promise->get_future();
  start([promise](absl::StatusOr<T> r) { promise->set_value(std::move(r)); });
  absl::StatusOr<T> result = future.get();
  if (!result.ok()) {
    return rpc::ToGrpc(result.status());
  }
  *response = std::move(*result);
  return grpc::Status::OK;
}

template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) {
    return rpc::ToGrpc(result.status());
  }
  *response = std::move(*result);
  return grpc::Status::OK;
}

}  // namespace

grpc::Status AdminServiceImpl::Stats(grpc::ServerContext*, const tern::v1::StatsRequest*,
                                     tern::v1::StatsResponse* response) {
  return Wait<tern::v1::StatsResponse>([this](auto cb) { core_->Stats(std::move(cb)); }, response);
}

grpc::Status AdminServiceImpl::List(grpc::ServerContext*, const tern::v1::ListRequest* request,
                                    tern::v1::ListResponse* response) {
  return Reply(core_->List(*request), response);
}

grpc::Status AdminServiceImpl::Show(grpc::ServerContext*, const tern::v1::ShowRequest* request,
                                    tern::v1::ShowResponse* response) {
  return Reply(core_->Show(request->message_id()), response);
}

grpc::Status AdminServiceImpl::Qshape(grpc::ServerContext*, const tern::v1::QshapeRequest* request,
                                      tern::v1::QshapeResponse* response) {
  return Reply(core_->Qshape(*request), response);
}

grpc::Status AdminServiceImpl::Destinations(grpc::ServerContext*, const tern::v1::DestinationsRequest*,
                                            tern::v1::DestinationsResponse* response) {
  return Wait<tern::v1::DestinationsResponse>([this](auto cb) { core_->Destinations(std::move(cb)); }, response);
}

grpc::Status AdminServiceImpl::ListCorrupt(grpc::ServerContext*, const tern::v1::ListCorruptRequest* request,
                                           tern::v1::ListCorruptResponse* response) {
  return Reply(core_->ListCorrupt(request->limit()), response);
}

grpc::Status AdminServiceImpl::GetCorrupt(grpc::ServerContext*, const tern::v1::GetCorruptRequest* request,
                                          tern::v1::GetCorruptResponse* response) {
  return Reply(core_->GetCorrupt(*request), response);
}

grpc::Status AdminServiceImpl::PurgeCorrupt(grpc::ServerContext*, const tern::v1::PurgeCorruptRequest* request,
                                            tern::v1::PurgeCorruptResponse* response) {
  return Wait<tern::v1::PurgeCorruptResponse>(
      [&](auto cb) { core_->PurgeCorrupt(*request, std::move(cb)); }, response);
}

grpc::Status AdminServiceImpl::ClearHostFlags(grpc::ServerContext*, const tern::v1::ClearHostFlagsRequest* request,
                                              tern::v1::ClearHostFlagsResponse* response) {
  return Wait<tern::v1::ClearHostFlagsResponse>(
      [&](auto cb) { core_->ClearHostFlags(*request, std::move(cb)); }, response);
}

grpc::Status AdminServiceImpl::ListTlsReports(grpc::ServerContext*, const tern::v1::ListTlsReportsRequest*,
                                              tern::v1::ListTlsReportsResponse* response) {
  return Reply(core_->ListTlsReports(), response);
}

grpc::Status AdminServiceImpl::SendTlsReports(grpc::ServerContext*, const tern::v1::SendTlsReportsRequest* request,
                                              tern::v1::SendTlsReportsResponse* response) {
  return Wait<tern::v1::SendTlsReportsResponse>(
      [&](auto cb) { core_->SendTlsReports(*request, std::move(cb)); }, response);
}

grpc::Status AdminServiceImpl::Act(QueueCore::Action action, const tern::v1::ActionRequest& request,
                                   tern::v1::ActionResponse* response) {
  return Wait<tern::v1::ActionResponse>([&](auto cb) { core_->Act(action, request, std::move(cb)); }, response);
}

grpc::Status AdminServiceImpl::Flush(grpc::ServerContext*, const tern::v1::ActionRequest* request,
                                     tern::v1::ActionResponse* response) {
  return Act(QueueCore::Action::kFlush, *request, response);
}
grpc::Status AdminServiceImpl::Hold(grpc::ServerContext*, const tern::v1::ActionRequest* request,
                                    tern::v1::ActionResponse* response) {
  return Act(QueueCore::Action::kHold, *request, response);
}
grpc::Status AdminServiceImpl::Release(grpc::ServerContext*, const tern::v1::ActionRequest* request,
                                       tern::v1::ActionResponse* response) {
  return Act(QueueCore::Action::kRelease, *request, response);
}
grpc::Status AdminServiceImpl::Delete(grpc::ServerContext*, const tern::v1::ActionRequest* request,
                                      tern::v1::ActionResponse* response) {
  return Act(QueueCore::Action::kDelete, *request, response);
}
grpc::Status AdminServiceImpl::Bounce(grpc::ServerContext*, const tern::v1::ActionRequest* request,
                                      tern::v1::ActionResponse* response) {
  return Act(QueueCore::Action::kBounce, *request, response);
}

grpc::Status AdminServiceImpl::Undelete(grpc::ServerContext*, const tern::v1::UndeleteRequest* request,
                                        tern::v1::UndeleteResponse* response) {
  return Wait<tern::v1::UndeleteResponse>([&](auto cb) { core_->Undelete(*request, std::move(cb)); }, response);
}

grpc::Status AdminServiceImpl::ListDeleted(grpc::ServerContext*, const tern::v1::ListDeletedRequest* request,
                                           tern::v1::ListDeletedResponse* response) {
  return Reply(core_->ListDeleted(*request), response);
}

grpc::Status AdminServiceImpl::Pause(grpc::ServerContext*, const tern::v1::PauseRequest*,
                                     tern::v1::PauseResponse* response) {
  bool paused = false;
  grpc::Status s = Wait<bool>([this](auto cb) { core_->SetPaused(true, std::move(cb)); }, &paused);
  response->set_paused(paused);
  return s;
}

grpc::Status AdminServiceImpl::Resume(grpc::ServerContext*, const tern::v1::PauseRequest*,
                                      tern::v1::PauseResponse* response) {
  bool paused = true;
  grpc::Status s = Wait<bool>([this](auto cb) { core_->SetPaused(false, std::move(cb)); }, &paused);
  response->set_paused(paused);
  return s;
}

grpc::Status AdminServiceImpl::Watch(grpc::ServerContext* context, const tern::v1::WatchRequest* request,
                                     grpc::ServerWriter<tern::v1::QueueEvent>* writer) {
  uint64_t cursor = 0;
  if (request->has_after_seq()) {
    cursor = request->after_seq();
  } else if (request->from_oldest()) {
    cursor = core_->OldestEventSeq() - 1;
  } else {
    cursor = core_->LastEventSeq();
  }
  std::vector<tern::v1::QueueEvent> batch;
  while (!context->IsCancelled()) {
    batch.clear();
    absl::Status s = core_->ReadEvents(cursor, 512, &batch);
    if (!s.ok()) {
      return rpc::ToGrpc(s);
    }
    for (const auto& ev : batch) {
      if (!writer->Write(ev)) {
        return grpc::Status::OK;  // the client went away
      }
      cursor = ev.seq();
    }
    if (batch.size() == 512) {
      continue;
    }
    if (request->no_follow()) {
      return grpc::Status::OK;
    }
    // Wake at least once a second to notice a cancelled call.
    core_->WaitForEvents(cursor, 1000);
  }
  return grpc::Status::OK;
}

}  // namespace tern::queue
