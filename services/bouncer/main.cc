// tern-bouncer: leases bounce jobs from the queue and sends RFC 3464 DSNs.
//
//   tern-bouncer --config DIR
//
// Reads tern.ini [bouncer], me, outbound.bounce_message*, hooks.ini,
// plugin_timeout and log.ini from DIR (see services/bouncer/README.md). SIGTERM/SIGINT: finish the job in
// progress, then exit 0. A bad config exits 1 with a message naming the file.
#include <unistd.h>

#include <csignal>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/server.h>

#include "CLI/CLI.hpp"
#include "lib/common/ids.h"
#include "lib/common/log.h"
#include "lib/common/process.h"
#include "lib/common/signals.h"
#include "lib/config/config_dir.h"
#include "lib/config/logging_setup.h"
#include "lib/hooks/hooks_channel.h"
#include "lib/hooks/hooks_config.h"
#include "lib/metrics/metrics.h"
#include "lib/rpc/grpc_tls.h"
#include "lib/rpc/server_setup.h"
#include "services/bouncer/bounce_worker.h"
#include "services/bouncer/bouncer_config.h"

namespace {

using tern::log::Level;

int RealMain(const std::string& config_path) {
  tern::BlockServiceSignals();
  tern::config::ConfigDir dir(config_path);
  if (absl::Status s = tern::config::InitLogging(dir, "bouncer"); !s.ok()) {
    std::cerr << "tern-bouncer: " << s.message() << "\n";
    return 1;
  }
  absl::StatusOr<tern::bouncer::BouncerConfig> config = tern::bouncer::LoadBouncerConfig(dir);
  if (!config.ok()) {
    tern::log::Event(Level::kCrit, "config_invalid", {{"dir", config_path}, {"error", config.status().message()}});
    return 1;
  }
  if (absl::Status s = tern::rpc::ConfigureGrpcTls(dir, /*serves=*/!config->health_listen.empty()); !s.ok()) {
    tern::log::Event(Level::kCrit, "config_invalid", {{"dir", config_path}, {"error", s.message()}});
    return 1;
  }
  absl::StatusOr<tern::hooks::HooksConfig> hooks = tern::hooks::LoadHooksConfig(dir);
  if (!hooks.ok()) {
    tern::log::Event(Level::kCrit, "config_invalid", {{"dir", config_path}, {"error", hooks.status().message()}});
    return 1;
  }
  const bool bounce_hook = hooks->Calls(tern::hooks::Hook::kBounce);
  tern::log::Event(Level::kInfo, "starting",
                   {{"queue", config->queue},
                    {"me", config->me},
                    {"template", config->failed_template.origin},
                    {"bounce_hook", bounce_hook ? hooks->address : "none"}});

  std::unique_ptr<tern::metrics::HttpExporter> exporter;
  if (!config->metrics_listen.empty()) {
    exporter = tern::metrics::HttpExporter::Start(config->metrics_listen, tern::metrics::Registry::Global());
    if (!exporter) {
      return 1;  // logged by Start
    }
  }
  std::unique_ptr<grpc::Server> health;
  if (!config->health_listen.empty()) {
    health = tern::rpc::StartHealthServer(config->health_listen);
    if (!health) {
      return 1;  // logged by StartHealthServer
    }
  }

  std::shared_ptr<grpc::Channel> channel = tern::rpc::MakeChannel(config->queue);
  std::unique_ptr<tern::v1::Queue::Stub> stub = tern::v1::Queue::NewStub(channel);
  tern::bouncer::BounceWorker::Options options;
  options.worker_id = absl::StrCat("bouncer-", getpid());
  options.new_stub = [target = config->queue]() -> std::unique_ptr<tern::v1::Queue::StubInterface> {
    return tern::v1::Queue::NewStub(tern::rpc::MakeChannel(target));
  };
  // The bouncer calls one hook; the other services call the rest.
  std::unique_ptr<tern::v1::Hooks::Stub> hooks_stub;
  if (bounce_hook) {
    hooks_stub = tern::v1::Hooks::NewStub(tern::hooks::MakeHooksChannel(*hooks));
    options.hooks = hooks_stub.get();
    options.hook_timeout = absl::FromChrono(hooks->timeout);
  }
  tern::bouncer::BounceWorker worker(stub.get(), *config, [] { return tern::NewRandomToken(); }, getpid(), options);
  std::thread worker_thread([&worker] { worker.Run(); });

  while (true) {
    int sig = tern::WaitForSignal();
    if (sig == SIGHUP) {
      // Templates and addresses are read once; a restart applies changes.
      tern::log::Event(Level::kNotice, "sighup_ignored", {{"why", "restart to reload config"}});
      continue;
    }
    tern::log::Event(Level::kInfo, "stopping", {{"signal", absl::StrCat(sig)}});
    break;
  }
  worker.Stop();
  worker_thread.join();
  if (health) {
    health->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  tern::log::Event(Level::kInfo, "stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  tern::InitServiceProcess();
  CLI::App app{"tern-bouncer: sends RFC 3464 delivery status notifications for the Tern queue"};
  std::string config_path = "config";
  app.add_option("--config", config_path, "Haraka-style config directory")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return RealMain(config_path);
}
