#include "lib/hooks/hooks_channel.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>

#include "lib/rpc/server_setup.h"

namespace tern::hooks {

std::shared_ptr<grpc::Channel> MakeHooksChannel(const HooksConfig& cfg) {
  if (!cfg.Any()) {
    return nullptr;
  }
  grpc::ChannelArguments args;
  // queue_outbound carries a whole message, as a Lease does.
  args.SetMaxReceiveMessageSize(rpc::kMaxMessageBytes);
  args.SetMaxSendMessageSize(rpc::kMaxMessageBytes);
  // A hook server that restarts should be used again within seconds, not after
  // gRPC's default backoff of up to two minutes (calls meanwhile fall back).
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (cfg.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = cfg.tls_ca_pem;
    creds = grpc::SslCredentials(ssl);
    if (!cfg.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(cfg.tls_server_name);
    }
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(cfg.address, creds, args);
}

}  // namespace tern::hooks
