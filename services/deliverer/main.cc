// tern-deliverer: leases delivery jobs from the queue and delivers them over
// SMTP. See README.md.
//
// Signals: SIGTERM/SIGINT drain (DeliveryWorker::Stop), a second one exits
// at once. SIGHUP reads the config again, and so does a change of any file
// the deliverer reads (looked at every tern.ini [deliverer]
// config_watch_ms): outbound.ini, the routes, tls.ini, the step timeouts,
// the DKIM keys, log.ini and more apply to the deliveries that start from
// then on (DeliveryWorker::Reload says which). The rest (the queue shards,
// DNS servers, listeners, pool limits, hooks.ini, me, ...) is read at
// startup: a rolling restart applies it and loses nothing (leases go back
// to the queue). A reload names the changed settings that wait for that
// restart (`reload_needs_restart`), and says at once when the files would
// not load at the next start (`reload_failed`).
#include <csignal>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "asio/io_context.hpp"
#include "asio/signal_set.hpp"
#include "lib/common/log.h"
#include "lib/common/process.h"
#include "lib/config/config_dir.h"
#include "lib/config/config_watcher.h"
#include "lib/config/logging_setup.h"
#include "lib/config/outbound_ini.h"
#include "lib/config/queue_targets.h"
#include "lib/dns/cares_resolver.h"
#include "lib/metrics/metrics.h"
#include "lib/rpc/grpc_tls.h"
#include "lib/rpc/server_setup.h"
#include "services/deliverer/deliverer_config.h"
#include "services/deliverer/delivery_worker.h"
#include "services/deliverer/route_planner.h"

#include <grpcpp/server.h>

namespace {

// SIGHUP: the config read again, once. One that loads applies to the
// deliveries that start from then on (DeliveryWorker::Reload); the settings
// only a restart applies keep their running values and are named
// (`reload_needs_restart`). One that does not load changes nothing and is
// reported while this process still runs (a restart with it would fail),
// except that the DKIM files are then read on their own and applied if they
// load, so that an unrelated broken file never holds up a key rotation. On
// the event loop: building tls.ini's client context (the system CA store)
// holds it about 0.1 s, once per change of the files.
void Reload(const tern::config::ConfigDir& dir, tern::deliverer::DelivererConfig* running,
            tern::deliverer::DeliveryWorker& worker) {
  using tern::log::Level;
  const bool log_ini_loaded = tern::config::ReloadLogging(dir, "deliverer");
  auto dkim_counts = [](const tern::deliverer::DkimConfig& dkim) {
    return std::make_pair(std::string(dkim.enabled ? "true" : "false"),
                          absl::StrCat(dkim.keys.size() + (dkim.fallback ? 1 : 0)));
  };
  auto loaded = tern::deliverer::DelivererConfig::Load(dir);
  if (!loaded.ok()) {
    tern::config::RecordReload(false);
    tern::log::Event(Level::kError, "reload_failed",
                     {{"error", loaded.status().message()},
                      {"effect", "running as before; a restart with these files would fail"}});
    absl::StatusOr<tern::deliverer::DkimConfig> dkim = tern::deliverer::DkimConfig::Load(dir);
    if (!dkim.ok()) {
      tern::log::Event(Level::kError, "reload_failed",
                       {{"error", dkim.status().message()}, {"effect", "signing goes on with the keys it had"}});
      return;
    }
    const auto [enabled, keys] = dkim_counts(*dkim);
    running->dkim = *dkim;
    worker.ReloadDkim(*std::move(dkim));
    tern::log::Event(Level::kNotice, "config_reloaded",
                     {{"files", "dkim.ini, dkim/, dkim.private.key"}, {"dkim", enabled}, {"dkim_keys", keys}});
    return;
  }
  tern::deliverer::DelivererConfig next = *std::move(loaded);
  tern::config::LogReloadNeedsRestart(tern::deliverer::KeepRestartOnlySettings(*running, &next),
                                      "these keep their running values until a restart (a rolling restart loses "
                                      "nothing)");
  const auto [enabled, keys] = dkim_counts(next.dkim);
  const std::string concurrency_max = absl::StrCat(next.concurrency_max);
  const std::string enable_tls = next.enable_tls ? "true" : "false";
  *running = next;
  worker.Reload(std::move(next));
  tern::config::RecordReload(log_ini_loaded);
  tern::log::Event(Level::kNotice, "config_reloaded",
                   {{"concurrency_max", concurrency_max},
                    {"enable_tls", enable_tls},
                    {"dkim", enabled},
                    {"dkim_keys", keys}});
}

}  // namespace

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
  // What runs: a reload replaces what it applies (Reload).
  deliverer::DelivererConfig config = *std::move(loaded);
  if (absl::Status s = rpc::ConfigureGrpcTls(dir, /*serves=*/!config.health_listen.empty()); !s.ok()) {
    log::Error(absl::StrCat("config: ", s.message()));
    return EXIT_FAILURE;
  }
  config::RecordConfigLoaded();

  // Sockets report EPIPE instead of killing the process.
  std::signal(SIGPIPE, SIG_IGN);
  asio::io_context io(1);
  // Installed before gRPC starts threads; Asio's handler is async-signal-safe
  // whichever thread takes the signal.
  asio::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);

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
    if (sig == SIGHUP) {
      if (!stopping) {
        Reload(dir, &config, worker);
      }
      signals.async_wait(on_signal);
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
  if (!config.smtp_forward_routes.empty()) {
    // Where a Haraka config's smtp_forward.ini sends mail: worth one line,
    // since it decides whether mail goes to MX hosts at all.
    const deliverer::StaticRoute* all = config.routes.Find("*");
    log::Event(log::Level::kNotice, "smtp_forward_routes",
               {{"domains", absl::StrJoin(config.smtp_forward_routes, ",")},
                {"default", all != nullptr && !all->hosts.empty()
                                ? absl::StrCat(all->hosts.front().host, ":", all->hosts.front().port)
                                : std::string("mx")}});
  }
  // A change of the files read reloads as SIGHUP does: the watcher signals
  // this process, and the handler above, the one place that reloads,
  // takes it on the event loop.
  std::vector<std::string> watched =
      config::WatchPaths(dir, {"dkim.ini", "dkim", "dkim.private.key", "dkim_sign.ini", "plugins", "tern.ini",
                               "outbound_routes.ini", "smtp_forward.ini", "tls.ini", "hooks.ini", "plugin_timeout", "me",
                               "log.ini"});
  for (std::string& path : config::OutboundIniWatchPaths(dir)) {
    watched.push_back(std::move(path));
  }
  std::unique_ptr<config::ConfigWatcher> watcher = config::ReloadOnChange(std::move(watched), config.config_watch);
  worker.Start();
  io.run();
  watcher.reset();
  if (health) {
    health->Shutdown();
  }
  return EXIT_SUCCESS;
}
