#include "services/deliverer/deliverer_config.h"

#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "lib/common/status_macros.h"
#include "lib/config/config_watcher.h"
#include "lib/config/outbound_ini.h"
#include "lib/config/queue_targets.h"
#include "services/deliverer/smtp_forward.h"

namespace tern::deliverer {
namespace {

absl::StatusOr<int64_t> GetRanged(const config::IniFile& ini, absl::string_view section, absl::string_view key,
                                  int64_t def, int64_t min, int64_t max) {
  TERN_ASSIGN_OR_RETURN(int64_t v, ini.GetInt(section, key, def));
  if (v < min || v > max) {
    return ini.KeyError(section, key, absl::StrCat("must be between ", min, " and ", max));
  }
  return v;
}

}  // namespace

absl::StatusOr<DelivererConfig> DelivererConfig::Load(const config::ConfigDir& dir) {
  DelivererConfig c;
  TERN_ASSIGN_OR_RETURN(config::IniFile outbound, config::LoadOutboundIni(dir));
  constexpr absl::string_view kM = "main";
  TERN_ASSIGN_OR_RETURN(int64_t conc, GetRanged(outbound, kM, "concurrency_max", 10000, 1, 1000000));
  c.concurrency_max = static_cast<uint32_t>(conc);
  TERN_ASSIGN_OR_RETURN(int64_t ct, GetRanged(outbound, kM, "connect_timeout", 30, 1, 3600));
  c.connect_timeout = std::chrono::seconds(ct);
  TERN_ASSIGN_OR_RETURN(c.local_mx_ok, outbound.GetBool(kM, "local_mx_ok", false));
  TERN_ASSIGN_OR_RETURN(c.enable_tls, outbound.GetBool(kM, "enable_tls", true));
  auto prefer = ParseInetPrefer(outbound.GetString(kM, "inet_prefer", "default"));
  if (!prefer.ok()) {
    return outbound.KeyError(kM, "inet_prefer", prefer.status().message());
  }
  c.inet_prefer = *prefer;

  TERN_ASSIGN_OR_RETURN(config::IniFile tern, dir.Ini("tern.ini"));
  constexpr absl::string_view kD = "deliverer";
  auto queues = config::ReadQueueTargets(tern, kD, config::JoinQueueTargets(c.queues));
  if (!queues.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("tern.ini [deliverer] queue: ", queues.status().message()));
  }
  c.queues = *std::move(queues);
  for (const std::string& s : tern.GetList(kD, "dns_servers")) {
    absl::string_view server = absl::StripAsciiWhitespace(s);
    if (!server.empty()) {
      c.dns_servers.emplace_back(server);
    }
  }
  TERN_ASSIGN_OR_RETURN(int64_t mx_port, GetRanged(tern, kD, "mx_port", 25, 1, 65535));
  c.mx_port = static_cast<uint16_t>(mx_port);
  TERN_ASSIGN_OR_RETURN(int64_t batch, GetRanged(tern, kD, "lease_batch", 64, 1, 10000));
  c.lease_batch = static_cast<uint32_t>(batch);
  TERN_ASSIGN_OR_RETURN(int64_t batch_wait, GetRanged(tern, kD, "call_batch_wait_ms", 5, 0, 1000));
  c.call_batch_wait = std::chrono::milliseconds(batch_wait);
  TERN_ASSIGN_OR_RETURN(int64_t dot, GetRanged(tern, kD, "dot_timeout", 600, 1, 86400));
  c.dot_timeout = std::chrono::seconds(dot);
  c.health_listen = tern.GetString(kD, "health_listen", c.health_listen);
  c.metrics_listen = tern.GetString(kD, "metrics_listen", c.metrics_listen);

  c.timeouts.connect = c.connect_timeout;
  c.timeouts.final_dot = c.dot_timeout;
  struct Step {
    const char* key;
    std::chrono::steady_clock::duration* field;
  };
  for (const Step& step : {Step{"banner_timeout", &c.timeouts.banner}, Step{"ehlo_timeout", &c.timeouts.ehlo},
                           Step{"starttls_timeout", &c.timeouts.starttls}, Step{"auth_timeout", &c.timeouts.auth},
                           Step{"mail_timeout", &c.timeouts.mail}, Step{"rcpt_timeout", &c.timeouts.rcpt},
                           Step{"data_timeout", &c.timeouts.data}, Step{"rset_timeout", &c.timeouts.rset}}) {
    TERN_ASSIGN_OR_RETURN(int64_t v, GetRanged(tern, kD, step.key, ct, 1, 3600));
    *step.field = std::chrono::seconds(v);
  }
  TERN_ASSIGN_OR_RETURN(int64_t pool, GetRanged(tern, kD, "pool_timeout", 50, 0, 3600));
  c.pool_timeout = std::chrono::seconds(pool);
  TERN_ASSIGN_OR_RETURN(int64_t pool_max, GetRanged(tern, kD, "pool_max_messages", 100, 1, 1000000));
  c.pool_max_messages = static_cast<uint32_t>(pool_max);
  TERN_ASSIGN_OR_RETURN(int64_t per_destination,
                        GetRanged(tern, kD, "destination_connections_max", c.destination_connections_max, 0, 100000));
  c.destination_connections_max = static_cast<uint32_t>(per_destination);
  TERN_ASSIGN_OR_RETURN(int64_t ttl, GetRanged(tern, kD, "tls_failure_ttl", 604800, 0, 31536000));
  c.tls_failure_ttl = std::chrono::seconds(ttl);
  TERN_ASSIGN_OR_RETURN(int64_t refresh, GetRanged(tern, kD, "host_flags_refresh", 30, 1, 86400));
  c.host_flags_refresh = std::chrono::seconds(refresh);
  TERN_ASSIGN_OR_RETURN(int64_t unreachable_after, GetRanged(tern, kD, "unreachable_after", 3, 0, 1000));
  c.unreachable_after = static_cast<uint32_t>(unreachable_after);
  TERN_ASSIGN_OR_RETURN(int64_t backoff, GetRanged(tern, kD, "unreachable_backoff", 60, 1, 86400));
  c.unreachable_backoff = std::chrono::seconds(backoff);
  TERN_ASSIGN_OR_RETURN(c.mta_sts, tern.GetBool(kD, "mta_sts", true));
  TERN_ASSIGN_OR_RETURN(int64_t sts_timeout, GetRanged(tern, kD, "mta_sts_timeout", 10, 1, 300));
  c.mta_sts_timeout = std::chrono::seconds(sts_timeout);
  TERN_ASSIGN_OR_RETURN(int64_t sts_port, GetRanged(tern, kD, "mta_sts_port", 443, 1, 65535));
  c.mta_sts_port = static_cast<uint16_t>(sts_port);
  TERN_ASSIGN_OR_RETURN(c.dane, tern.GetBool(kD, "dane", true));
  TERN_ASSIGN_OR_RETURN(c.chunking, tern.GetBool(kD, "chunking", true));
  TERN_ASSIGN_OR_RETURN(int64_t chunking_ttl, GetRanged(tern, kD, "chunking_failure_ttl", 604800, 0, 31536000));
  c.chunking_failure_ttl = std::chrono::seconds(chunking_ttl);
  TERN_ASSIGN_OR_RETURN(int64_t dkim_threads, GetRanged(tern, kD, "dkim_threads", c.dkim_threads, 0, 64));
  c.dkim_threads = static_cast<uint32_t>(dkim_threads);
  TERN_ASSIGN_OR_RETURN(c.config_watch, config::ConfigWatchInterval(tern, kD));
  TERN_ASSIGN_OR_RETURN(c.tlsrpt, tern.GetBool("tlsrpt", "enabled", false));
  TERN_ASSIGN_OR_RETURN(int64_t tlsrpt_flush, GetRanged(tern, "tlsrpt", "flush_seconds", 10, 1, 3600));
  c.tlsrpt_flush = std::chrono::seconds(tlsrpt_flush);

  TERN_ASSIGN_OR_RETURN(config::IniFile routes, dir.Ini("outbound_routes.ini"));
  TERN_ASSIGN_OR_RETURN(c.routes,
                        StaticRoutes::Load(routes, [&dir](const std::string& name) { return dir.PathOf(name); }));
  TERN_ASSIGN_OR_RETURN(SmtpForwardRoutes forward, LoadSmtpForwardRoutes(dir));
  for (StaticRoute& route : forward.by_domain) {
    std::string domain = route.domain;
    if (c.routes.AddIfAbsent(std::move(route))) {
      c.smtp_forward_routes.push_back(std::move(domain));
    }
  }
  for (const auto& [sender, route] : forward.by_sender.all()) {
    c.smtp_forward_routes.push_back(absl::StrCat("from:", sender));
  }
  c.sender_routes = std::move(forward.by_sender);
  TERN_ASSIGN_OR_RETURN(c.tls, TlsOutboundConfig::Load(dir));
  // A route's client certificate fails at startup, not at its first delivery.
  for (const auto& [name, route] : c.routes.all()) {
    if (!route.tls_cert.empty()) {
      TERN_ASSIGN_OR_RETURN(c.route_tls[name], c.tls.MakeContextWithClientCert(route.tls_cert, route.tls_key,
                                                                                absl::StrCat("outbound_routes.ini [",
                                                                                             name, "]")));
    }
  }
  TERN_ASSIGN_OR_RETURN(c.hooks, hooks::LoadHooksConfig(dir));
  TERN_ASSIGN_OR_RETURN(c.dkim, DkimConfig::Load(dir));

  TERN_ASSIGN_OR_RETURN(c.me, dir.Me());
  TERN_RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::Status DelivererConfig::Validate() const {
  // A config built by hand gets the checks Load makes: an address each,
  // none twice, at most kMaxQueueShards.
  if (absl::Status s = config::CheckQueueTargets(queues); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("tern.ini [deliverer] queue: ", s.message()));
  }
  if (me.empty()) {
    return absl::InvalidArgumentError("me: the EHLO name must not be empty");
  }
  if (concurrency_max == 0 || lease_batch == 0 || mx_port == 0) {
    return absl::InvalidArgumentError("concurrency_max, lease_batch and mx_port must be positive");
  }
  return absl::OkStatus();
}

const StaticRoute* DelivererConfig::RouteFor(absl::string_view domain, absl::string_view mail_from) const {
  if (!sender_routes.empty()) {
    if (const StaticRoute* own = routes.FindExact(domain)) {
      return own;
    }
    if (const StaticRoute* by_sender = sender_routes.FindSender(mail_from)) {
      return by_sender;
    }
  }
  return routes.Find(domain);
}

std::vector<std::string> KeepRestartOnlySettings(const DelivererConfig& a, DelivererConfig* b) {
  config::RestartOnlySettings kept;
  kept.Keep(a.queues, b->queues, "tern.ini [deliverer] queue");
  kept.Keep(a.dns_servers, b->dns_servers, "tern.ini [deliverer] dns_servers");
  kept.Keep(a.mx_port, b->mx_port, "tern.ini [deliverer] mx_port");
  kept.Keep(a.lease_batch, b->lease_batch, "tern.ini [deliverer] lease_batch");
  kept.Keep(a.call_batch_wait, b->call_batch_wait, "tern.ini [deliverer] call_batch_wait_ms");
  kept.Keep(a.health_listen, b->health_listen, "tern.ini [deliverer] health_listen");
  kept.Keep(a.metrics_listen, b->metrics_listen, "tern.ini [deliverer] metrics_listen");
  kept.Keep(std::tie(a.pool_timeout, a.pool_max_messages, a.destination_connections_max),
            std::tie(b->pool_timeout, b->pool_max_messages, b->destination_connections_max),
            "tern.ini [deliverer] pool_timeout/pool_max_messages/destination_connections_max");
  kept.Keep(a.unreachable_after, b->unreachable_after, "tern.ini [deliverer] unreachable_after");
  kept.Keep(std::tie(a.mta_sts, a.mta_sts_port), std::tie(b->mta_sts, b->mta_sts_port),
            "tern.ini [deliverer] mta_sts/mta_sts_port");
  kept.Keep(a.dkim_threads, b->dkim_threads, "tern.ini [deliverer] dkim_threads");
  kept.Keep(a.config_watch, b->config_watch, "tern.ini [deliverer] config_watch_ms");
  kept.Keep(std::tie(a.tlsrpt, a.tlsrpt_flush), std::tie(b->tlsrpt, b->tlsrpt_flush), "tern.ini [tlsrpt]");
  kept.Keep(a.hooks, b->hooks, "hooks.ini");
  kept.Keep(a.me, b->me, "me");
  return std::move(kept.names);
}

}  // namespace tern::deliverer
