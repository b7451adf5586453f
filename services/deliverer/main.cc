// tern-deliverer: leases delivery jobs from the queue and delivers them over
// SMTP. See README.md.
#include <csignal>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "asio/io_context.hpp"
#include "asio/signal_set.hpp"
#include "lib/common/log.h"
#include "lib/common/process.h"
#include "lib/config/config_dir.h"
#include "lib/config/logging_setup.h"
#include "lib/config/queue_targets.h"
#include "lib/dns/cares_resolver.h"
#include "lib/metrics/metrics.h"
#include "lib/rpc/grpc_tls.h"
#include "lib/rpc/server_setup.h"
#include "services/deliverer/deliverer_config.h"
#include "services/deliverer/delivery_worker.h"
#include "services/deliverer/route_planner.h"

#include <grpcpp/server.h>

int main(int argc, char** argv) {
  tern::InitServiceProcess();
  CLI::App app{"tern-deliverer: Tern's SMTP delivery worker"};
  std::string config_path = "config";
  app.add_option("--config", config_path, "Haraka-style config directory")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  using namespace tern;
  config::ConfigDir dir(config_path);
  if (absl::Status s = config::InitLogging(dir, "deliverer"); !s.ok()) {
    log::Error(absl::StrCat("config: ", s.message()));
    return EXIT_FAILURE;
  }
  auto loaded = deliverer::DelivererConfig::Load(dir);
  if (!loaded.ok()) {
    log::Error(absl::StrCat("config: ", loaded.status().message()));
    return EXIT_FAILURE;
  }
  const deliverer::DelivererConfig config = *std::move(loaded);
  if (absl::Status s = rpc::ConfigureGrpcTls(dir, /*serves=*/!config.health_listen.empty()); !s.ok()) {
    log::Error(absl::StrCat("config: ", s.message()));
    return EXIT_FAILURE;
  }

  // Sockets report EPIPE instead of killing the process.
  std::signal(SIGPIPE, SIG_IGN);
  asio::io_context io(1);
  // Installed before gRPC starts threads; Asio's handler is async-signal-safe
  // whichever thread takes the signal.
  asio::signal_set signals(io, SIGINT, SIGTERM);

  dns::CaresResolver::Options dns_options;
  dns_options.servers = config.dns_servers;
  auto resolver = dns::CaresResolver::Create(io.get_executor(), dns_options);
  if (!resolver.ok()) {
    log::Error(absl::StrCat("dns: ", resolver.status().message()));
    return EXIT_FAILURE;
  }

  deliverer::RoutePlanner::Options route_options;
  route_options.inet_prefer = config.inet_prefer;
  route_options.local_mx_ok = config.local_mx_ok;
  route_options.port = config.mx_port;
  route_options.me = config.me;
  route_options.local_addresses = deliverer::RoutePlanner::InterfaceAddresses();

  std::unique_ptr<grpc::Server> health;
  if (!config.health_listen.empty()) {
    health = rpc::StartHealthServer(config.health_listen);
    if (!health) {
      return EXIT_FAILURE;
    }
  }
  std::unique_ptr<metrics::HttpExporter> exporter;
  if (!config.metrics_listen.empty()) {
    exporter = metrics::HttpExporter::Start(config.metrics_listen, metrics::Registry::Global());
    if (!exporter) {
      log::Error(absl::StrCat("cannot serve metrics on ", config.metrics_listen));
      return EXIT_FAILURE;
    }
  }

  // One channel per queue shard, in config order (DeliveryWorker).
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (const std::string& target : config.queues) {
    channels.push_back(rpc::MakeChannel(target));
  }
  deliverer::DeliveryWorker worker(io, config, std::move(channels), **resolver,
                                   deliverer::RoutePlanner(route_options));
  bool stopping = false;
  std::function<void(const asio::error_code&, int)> on_signal = [&](const asio::error_code& ec, int sig) {
    if (ec) {
      return;
    }
    if (stopping) {
      log::Event(log::Level::kWarn, "second_signal_exiting_now", {{"signal", absl::StrCat(sig)}});
      io.stop();
      return;
    }
    stopping = true;
    log::Event(log::Level::kNotice, "signal", {{"signal", absl::StrCat(sig)}});
    worker.Stop([&io] { io.stop(); });
    signals.async_wait(on_signal);
  };
  signals.async_wait(on_signal);

  log::Event(log::Level::kNotice, "started",
             {{"queue", tern::config::JoinQueueTargets(config.queues)},
              {"me", config.me},
              {"concurrency_max", absl::StrCat(config.concurrency_max)},
              {"mx_port", absl::StrCat(config.mx_port)},
              {"hooks", config.hooks.Any() ? config.hooks.address : "none"}});
  worker.Start();
  io.run();
  if (health) {
    health->Shutdown();
  }
  return EXIT_SUCCESS;
}
