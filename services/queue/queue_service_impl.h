// File: queue_service_impl.h
//
// The gRPC front end of tern-queue: tern.v1.Queue and tern.v1.Admin on the
// callback API. Each RPC is a reactor that hands its request to QueueCore and
// finishes from the core's completion (on the thread holding the writer role,
// after the synced commit). The worker-facing calls lead: a gRPC thread that
// finds the role free commits the group itself, blocking on its synced write
// (at most GroupCommitter::kLeaderGroups groups), which saves a thread
// hand-off per call; a long poll never holds a thread while it waits.
//
// Enqueue is client streaming: the first request carries the header (it may
// also carry the first body chunk), the rest carry body chunks, which are
// appended to one buffer reserved from expected_size and then moved into the
// core. A body over kMaxBodyBytes is refused with RESOURCE_EXHAUSTED as soon
// as it is known to be too big.
//
// EnqueueBatch hands each item to the core on its own (the group committer
// then writes them in shared synced batches) and finishes once every item
// has its result; items are independent, so one refused item (say, an
// invalid envelope) never costs the others their place.
//
// Admin is a synchronous service: its reads scan RocksDB on the calling
// thread and Watch is a long-lived stream that blocks waiting for events,
// which is what gRPC's sync thread pool is for; operator traffic is light.
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
  grpc::ServerUnaryReactor* EnqueueBatch(grpc::CallbackServerContext* context,
                                         const tern::v1::EnqueueBatchRequest* request,
                                         tern::v1::EnqueueBatchResponse* response) override;
  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* context, const tern::v1::LeaseRequest* request,
                                  tern::v1::LeaseResponse* response) override;
  grpc::ServerUnaryReactor* Report(grpc::CallbackServerContext* context, const tern::v1::ReportRequest* request,
                                   tern::v1::ReportResponse* response) override;
  grpc::ServerUnaryReactor* Ack(grpc::CallbackServerContext* context, const tern::v1::AckRequest* request,
                                tern::v1::AckResponse* response) override;
  grpc::ServerUnaryReactor* Progress(grpc::CallbackServerContext* context, const tern::v1::ProgressRequest* request,
                                     tern::v1::ProgressResponse* response) override;
  grpc::ServerUnaryReactor* PutHostFlags(grpc::CallbackServerContext* context,
                                         const tern::v1::PutHostFlagsRequest* request,
                                         tern::v1::PutHostFlagsResponse* response) override;
  grpc::ServerUnaryReactor* GetHostFlags(grpc::CallbackServerContext* context,
                                         const tern::v1::GetHostFlagsRequest* request,
                                         tern::v1::GetHostFlagsResponse* response) override;
  grpc::ServerUnaryReactor* PutStsPolicy(grpc::CallbackServerContext* context,
                                         const tern::v1::PutStsPolicyRequest* request,
                                         tern::v1::PutStsPolicyResponse* response) override;
  grpc::ServerUnaryReactor* GetStsPolicy(grpc::CallbackServerContext* context,
                                         const tern::v1::GetStsPolicyRequest* request,
                                         tern::v1::GetStsPolicyResponse* response) override;
  grpc::ServerUnaryReactor* RecordTlsResults(grpc::CallbackServerContext* context,
                                             const tern::v1::RecordTlsResultsRequest* request,
                                             tern::v1::RecordTlsResultsResponse* response) override;

 private:
  QueueCore* core_;
};

class AdminServiceImpl final : public tern::v1::Admin::Service {
 public:
  explicit AdminServiceImpl(QueueCore* core) : core_(core) {}

  grpc::Status Stats(grpc::ServerContext* context, const tern::v1::StatsRequest* request,
                     tern::v1::StatsResponse* response) override;
  grpc::Status List(grpc::ServerContext* context, const tern::v1::ListRequest* request,
                    tern::v1::ListResponse* response) override;
  grpc::Status Show(grpc::ServerContext* context, const tern::v1::ShowRequest* request,
                    tern::v1::ShowResponse* response) override;
  grpc::Status Qshape(grpc::ServerContext* context, const tern::v1::QshapeRequest* request,
                      tern::v1::QshapeResponse* response) override;
  grpc::Status Destinations(grpc::ServerContext* context, const tern::v1::DestinationsRequest* request,
                            tern::v1::DestinationsResponse* response) override;
  grpc::Status Flush(grpc::ServerContext* context, const tern::v1::ActionRequest* request,
                     tern::v1::ActionResponse* response) override;
  grpc::Status Hold(grpc::ServerContext* context, const tern::v1::ActionRequest* request,
                    tern::v1::ActionResponse* response) override;
  grpc::Status Release(grpc::ServerContext* context, const tern::v1::ActionRequest* request,
                       tern::v1::ActionResponse* response) override;
  grpc::Status Delete(grpc::ServerContext* context, const tern::v1::ActionRequest* request,
                      tern::v1::ActionResponse* response) override;
  grpc::Status Bounce(grpc::ServerContext* context, const tern::v1::ActionRequest* request,
                      tern::v1::ActionResponse* response) override;
  grpc::Status Pause(grpc::ServerContext* context, const tern::v1::PauseRequest* request,
                     tern::v1::PauseResponse* response) override;
  grpc::Status Resume(grpc::ServerContext* context, const tern::v1::PauseRequest* request,
                      tern::v1::PauseResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context, const tern::v1::WatchRequest* request,
                     grpc::ServerWriter<tern::v1::QueueEvent>* writer) override;
  grpc::Status ListCorrupt(grpc::ServerContext* context, const tern::v1::ListCorruptRequest* request,
                           tern::v1::ListCorruptResponse* response) override;
  grpc::Status GetCorrupt(grpc::ServerContext* context, const tern::v1::GetCorruptRequest* request,
                          tern::v1::GetCorruptResponse* response) override;
  grpc::Status PurgeCorrupt(grpc::ServerContext* context, const tern::v1::PurgeCorruptRequest* request,
                            tern::v1::PurgeCorruptResponse* response) override;
  grpc::Status Undelete(grpc::ServerContext* context, const tern::v1::UndeleteRequest* request,
                        tern::v1::UndeleteResponse* response) override;
  grpc::Status ListDeleted(grpc::ServerContext* context, const tern::v1::ListDeletedRequest* request,
                           tern::v1::ListDeletedResponse* response) override;
  grpc::Status ClearHostFlags(grpc::ServerContext* context, const tern::v1::ClearHostFlagsRequest* request,
                              tern::v1::ClearHostFlagsResponse* response) override;
  grpc::Status ListTlsReports(grpc::ServerContext* context, const tern::v1::ListTlsReportsRequest* request,
                              tern::v1::ListTlsReportsResponse* response) override;
  // Blocks this gRPC thread until the report run is done (one run at a time).
  grpc::Status SendTlsReports(grpc::ServerContext* context, const tern::v1::SendTlsReportsRequest* request,
                              tern::v1::SendTlsReportsResponse* response) override;

 private:
  grpc::Status Act(QueueCore::Action action, const tern::v1::ActionRequest& request,
                   tern::v1::ActionResponse* response);
  QueueCore* core_;
};

}  // namespace tern::queue
