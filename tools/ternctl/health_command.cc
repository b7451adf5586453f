// ternctl health [--service NAME]: one grpc.health.v1 Check against --queue's
// address (any Tern service's gRPC port). Exit 0 when SERVING, 1 otherwise;
// the Dockerfile HEALTHCHECK runs it against each service's own port.
#include <grpcpp/client_context.h>

#include <ostream>

#include "CLI/CLI.hpp"
#include "grpc/health/v1/health.grpc.pb.h"
#include "lib/rpc/server_setup.h"
#include "tools/ternctl/admin_client.h"

namespace tern::ternctl {
namespace {

int RunHealth(const GlobalOptions& g, const std::string& service, Io io) {
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx, g);
  grpc::Status s = grpc::health::v1::Health::NewStub(rpc::MakeChannel(g.queue))->Check(&ctx, req, &resp);
  if (!s.ok()) {
    io.err << "ternctl: health check of " << g.queue << (service.empty() ? "" : " service " + service)
           << " failed: " << s.error_message() << "\n";
    return 1;
  }
  const std::string status = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
  io.out << status << "\n";
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace

void AddHealthCommands(CLI::App& app, const GlobalOptions& globals, Io io, int& exit_code) {
  auto service = std::make_shared<std::string>();
  CLI::App* h = app.add_subcommand("health", "gRPC health check of the service at --queue; exit 0 if SERVING");
  h->add_option("--service", *service, "Service name to check (empty: the whole server)");
  h->callback([&globals, io, &exit_code, service] { exit_code = RunHealth(globals, *service, io); });
}

}  // namespace tern::ternctl
