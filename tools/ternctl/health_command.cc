// ternctl health [--service NAME]: one grpc.health.v1 Check against --queue's
// address (any Tern service's gRPC port). Exit 0 when SERVING, 1 otherwise;
// the Dockerfile HEALTHCHECK runs it against each service's own port. With
// several queue shards, every shard is checked: a line "queue A: SERVING"
// each, and exit 0 only when all are SERVING.
#include <grpcpp/client_context.h>

#include <ostream>

#include "CLI/CLI.hpp"
#include "grpc/health/v1/health.grpc.pb.h"
#include "lib/rpc/server_setup.h"
#include "tools/ternctl/admin_call.h"
#include "tools/ternctl/admin_client.h"
#include "tools/ternctl/queue_shards.h"

namespace tern::ternctl {
namespace {

int RunHealth(const GlobalOptions& g, const std::string& service, Io io) {
  absl::StatusOr<std::vector<std::string>> shards = QueueShards(g);
  if (!shards.ok()) {
    return ReportBadQueue(shards.status(), io);
  }
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  auto answers = AskShards<grpc::health::v1::Health, grpc::health::v1::HealthCheckResponse>(
      *shards, [&](grpc::health::v1::Health::Stub& stub, grpc::health::v1::HealthCheckResponse& resp, size_t) {
        grpc::ClientContext ctx;
        SetDeadline(ctx, g);
        return stub.Check(&ctx, req, &resp);
      });
  int code = 0;
  for (const auto& a : answers) {
    if (!a.status.ok()) {
      io.err << "ternctl: health check of " << a.queue << (service.empty() ? "" : " service " + service)
             << " failed: " << a.status.error_message() << "\n";
      code = 1;
      continue;
    }
    const std::string status = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(a.resp.status());
    io.out << (shards->size() == 1 ? "" : "queue " + a.queue + ": ") << status << "\n";
    if (a.resp.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
      code = 1;
    }
  }
  return code;
}

}  // namespace

void AddHealthCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  auto service = std::make_shared<std::string>();
  CLI::App* h =
      app.add_subcommand("health", "gRPC health check of the service at --queue (each shard); exit 0 if SERVING");
  h->add_option("--service", *service, "Service name to check (empty: the whole server)");
  h->callback([&globals, io, &exit_code, service] { exit_code = RunHealth(globals, *service, io); });
}

}  // namespace tern::ternctl
