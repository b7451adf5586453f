#include "lib/rpc/server_setup.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/rpc/grpc_tls.h"

namespace tern::rpc {
namespace {

// gRPC collects server plugins (reflection) when a ServerBuilder is
// constructed, not when it is built, so registering from PrepareServerBuilder
// would be too late for the builder it is given. Registering at static
// initialisation makes every builder in a process that links this file carry
// health and reflection. Both calls are idempotent.
const bool kServerPluginsRegistered = [] {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  return true;
}();

}  // namespace

void PrepareServerBuilder(grpc::ServerBuilder& builder) {
  (void)kServerPluginsRegistered;
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Reconnect quickly after a queue restart instead of backing off to minutes.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  // In compose, a service may look the queue's name up before the container
  // network knows it; gRPC's default waits 30 s before asking DNS again.
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 1000);
  if (GrpcTls().enabled && !GrpcTls().server_name.empty()) {
    args.SetSslTargetNameOverride(GrpcTls().server_name);
  }
  return grpc::CreateCustomChannel(target, ChannelCredentials(), args);
}

std::unique_ptr<grpc::Server> StartHealthServer(const std::string& listen) {
  grpc::ServerBuilder builder;
  PrepareServerBuilder(builder);
  int port = 0;
  builder.AddListeningPort(listen, ServerCredentials(), &port);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    log::Event(log::Level::kError, "health_listen_failed", {{"listen", listen}});
    return nullptr;
  }
  log::Event(log::Level::kInfo, "health_listening", {{"listen", listen}, {"port", absl::StrCat(port)}});
  return server;
}

}  // namespace tern::rpc
