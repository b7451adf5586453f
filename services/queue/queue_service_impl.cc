#include "services/queue/queue_service_impl.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/rpc/status_convert.h"

namespace tern::queue {
namespace {

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
auto FinishWith(grpc::ServerUnaryReactor* reactor, Response* response) {
  return [reactor, response](absl::StatusOr<Response> result) {
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

grpc::ServerUnaryReactor* QueueServiceImpl::Lease(grpc::CallbackServerContext* context,
                                                  const tern::v1::LeaseRequest* request,
                                                  tern::v1::LeaseResponse* response) {
  auto* reactor = context->DefaultReactor();
  core_->Lease(*request, FinishWith(reactor, response));
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::Report(grpc::CallbackServerContext* context,
                                                   const tern::v1::ReportRequest* request,
                                                   tern::v1::ReportResponse* response) {
  auto* reactor = context->DefaultReactor();
  core_->Report(*request, FinishWith(reactor, response));
  return reactor;
}

grpc::ServerUnaryReactor* QueueServiceImpl::Ack(grpc::CallbackServerContext* context,
                                                const tern::v1::AckRequest* request,
                                                tern::v1::AckResponse* response) {
  auto* reactor = context->DefaultReactor();
  core_->Ack(*request, FinishWith(reactor, response));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::Stats(grpc::CallbackServerContext* context,
                                                  const tern::v1::StatsRequest* /*request*/,
                                                  tern::v1::StatsResponse* response) {
  auto* reactor = context->DefaultReactor();
  core_->Stats(FinishWith(reactor, response));
  return reactor;
}

}  // namespace tern::queue
