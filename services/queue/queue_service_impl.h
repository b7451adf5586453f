// File: queue_service_impl.h
//
// The gRPC front end of tern-queue: tern.v1.Queue and tern.v1.Admin on the
// callback API. Each RPC is a reactor that hands its request to QueueCore and
// finishes from the core's completion (on the writer thread, after the synced
// commit), so no gRPC thread ever blocks on storage or waits for a long poll.
//
// Enqueue is client streaming: the first request carries the header (it may
// also carry the first body chunk), the rest carry body chunks, which are
// appended to one buffer reserved from expected_size and then moved into the
// core. A body over kMaxBodyBytes is refused with RESOURCE_EXHAUSTED as soon
// as it is known to be too big.
//
// Thread-safety: the services are stateless apart from the QueueCore pointer,
// which must outlive the gRPC server.
#pragma once

#include <grpcpp/grpcpp.h>

#include "services/queue/queue_core.h"
#include "tern/v1/admin.grpc.pb.h"
#include "tern/v1/queue.grpc.pb.h"

namespace tern::queue {

class QueueServiceImpl final : public tern::v1::Queue::CallbackService {
 public:
  explicit QueueServiceImpl(QueueCore* core) : core_(core) {}

  grpc::ServerReadReactor<tern::v1::EnqueueRequest>* Enqueue(grpc::CallbackServerContext* context,
                                                             tern::v1::EnqueueResponse* response) override;
  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* context, const tern::v1::LeaseRequest* request,
                                  tern::v1::LeaseResponse* response) override;
  grpc::ServerUnaryReactor* Report(grpc::CallbackServerContext* context, const tern::v1::ReportRequest* request,
                                   tern::v1::ReportResponse* response) override;
  grpc::ServerUnaryReactor* Ack(grpc::CallbackServerContext* context, const tern::v1::AckRequest* request,
                                tern::v1::AckResponse* response) override;

 private:
  QueueCore* core_;
};

class AdminServiceImpl final : public tern::v1::Admin::CallbackService {
 public:
  explicit AdminServiceImpl(QueueCore* core) : core_(core) {}

  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context, const tern::v1::StatsRequest* request,
                                  tern::v1::StatsResponse* response) override;

 private:
  QueueCore* core_;
};

}  // namespace tern::queue
