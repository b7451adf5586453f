#include "services/ingest/server.h"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <time.h>

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/experimental/as_tuple.hpp"
#include "asio/post.hpp"
#include "asio/steady_timer.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/address/mailbox.h"
#include "lib/common/log.h"
#include "lib/common/status_macros.h"
#include "lib/metrics/metrics.h"
#include "services/ingest/queue_client.h"
#include "services/ingest/session.h"

namespace tern::ingest {
namespace {

constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);
// After a failed accept (e.g. EMFILE) wait before trying again, so a full
// file table does not turn the accept loop into a busy loop.
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);

asio::awaitable<void> AcceptLoop(std::shared_ptr<asio::ip::tcp::acceptor> acceptor, std::shared_ptr<ServerCore> core,
                                 bool implicit_tls) {
  while (true) {
    // The new connection belongs to the next shard: its session runs there.
    auto [ec, socket] = co_await acceptor->async_accept(core->NextShard(), kNoThrow);
    if (core->draining || !acceptor->is_open()) {
      co_return;
    }
    if (ec) {
      log::Event(log::Level::kWarn, "accept_failed", {{"error", ec.message()}});
      asio::steady_timer timer(acceptor->get_executor(), kAcceptBackoff);
      co_await timer.async_wait(kNoThrow);
      continue;
    }
    auto executor = socket.get_executor();
    asio::co_spawn(executor, RunSession(std::move(socket), core, implicit_tls), asio::detached);
  }
}

// Each session thread measures its own CPU time over every `interval` and
// exports it as a share of the wall time: near 100 means sessions wait for
// this thread, and smtp.ini nodes should be raised. Ends when the server
// drains or is gone.
asio::awaitable<void> MeasureThreadBusy(std::weak_ptr<ServerCore> weak, size_t shard,
                                        std::chrono::milliseconds interval) {
  metrics::Gauge& busy = metrics::Registry::Global().GetGauge(
      "tern_ingest_session_thread_busy_percent",
      "Share of the last interval the session thread spent on the CPU (smtp.ini nodes threads)",
      {{"thread", absl::StrCat(shard)}});
  auto thread_cpu = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
  };
  asio::steady_timer timer(co_await asio::this_coro::executor);
  auto cpu = thread_cpu();
  auto wall = std::chrono::steady_clock::now();
  while (true) {
    timer.expires_after(interval);
    auto [ec] = co_await timer.async_wait(kNoThrow);
    auto core = weak.lock();
    if (ec || !core || core->draining || core->closed) {
      co_return;
    }
    const auto now_cpu = thread_cpu();
    const auto now_wall = std::chrono::steady_clock::now();
    const double share = std::chrono::duration<double>(now_cpu - cpu).count() /
                         std::max(1e-9, std::chrono::duration<double>(now_wall - wall).count());
    busy.Set(std::clamp<int64_t>(static_cast<int64_t>(share * 100.0 + 0.5), 0, 100));
    cpu = now_cpu;
    wall = now_wall;
  }
}

// One server context for a certificate chain and its key (which may be the
// same PEM bundle: OpenSSL's PEM readers skip the other kind of block), with
// tls.ini's protocol floor and ciphers. `what` names the source in errors.
absl::StatusOr<std::shared_ptr<asio::ssl::context>> MakeServerContext(const IngestConfig& cfg,
                                                                      const std::string& cert_file,
                                                                      const std::string& key_file,
                                                                      const std::string& what) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  std::error_code ec;
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_compression |
                       asio::ssl::context::single_dh_use,
                   ec);
  ctx->use_certificate_chain_file(cert_file, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(what, " certificate ", cert_file, ": ", ec.message()));
  }
  ctx->use_private_key_file(key_file, asio::ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(what, " key ", key_file, ": ", ec.message()));
  }
  SSL_CTX* native = ctx->native_handle();
  if (SSL_CTX_check_private_key(native) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": the key does not match the certificate"));
  }
  int version = TLS1_2_VERSION;
  if (cfg.tls_min_version == "TLSv1") {
    version = TLS1_VERSION;
  } else if (cfg.tls_min_version == "TLSv1.1") {
    version = TLS1_1_VERSION;
  } else if (cfg.tls_min_version == "TLSv1.3") {
    version = TLS1_3_VERSION;
  }
  SSL_CTX_set_min_proto_version(native, version);
  if (!cfg.tls_ciphers.empty() && SSL_CTX_set_cipher_list(native, cfg.tls_ciphers.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls.ini [main] ciphers: no usable cipher in '", cfg.tls_ciphers, "'"));
  }
  return ctx;
}

// The DNS names a certificate serves, lower case: its subjectAltName DNS
// entries, or its CN when it has none (RFC 6125 §6.4.4).
std::vector<std::string> CertificateNames(SSL_CTX* ctx) {
  std::vector<std::string> names;
  X509* cert = SSL_CTX_get0_certificate(ctx);
  if (cert == nullptr) {
    return names;
  }
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(sans, i);
      if (name->type == GEN_DNS) {
        const ASN1_IA5STRING* dns = name->d.dNSName;
        names.push_back(absl::AsciiStrToLower(
            absl::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)), ASN1_STRING_length(dns))));
      }
    }
    GENERAL_NAMES_free(sans);
  }
  if (names.empty()) {
    X509_NAME* subject = X509_get_subject_name(cert);
    const int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (at >= 0) {
      const ASN1_STRING* cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
      names.push_back(absl::AsciiStrToLower(
          absl::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(cn)), ASN1_STRING_length(cn))));
    }
  }
  return names;
}

// OpenSSL's servername callback (during the ClientHello): switches the
// handshake to the bundle whose certificate names the requested host,
// exactly or by a "*." wildcard for its first label. No SNI, or no match:
// the default certificate.
int SelectCertificateBySni(SSL* ssl, int* /*alert*/, void* arg) {
  const auto& sni = *static_cast<const std::map<std::string, std::shared_ptr<asio::ssl::context>>*>(arg);
  const char* requested = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (requested == nullptr) {
    return SSL_TLSEXT_ERR_OK;
  }
  const std::string name = address::CanonicalHostName(requested);
  auto it = sni.find(name);
  const size_t dot = name.find('.');
  if (it == sni.end() && dot != std::string::npos && dot > 0) {
    it = sni.find(absl::StrCat("*", name.substr(dot)));
  }
  if (it != sni.end()) {
    SSL_set_SSL_CTX(ssl, it->second->native_handle());
  }
  return SSL_TLSEXT_ERR_OK;
}

// The server side of STARTTLS and SMTPS: the default context (tls.ini's
// certificate, else the first bundle) and, from config/tls/, the contexts
// chosen by SNI. Clients are not asked for certificates.
absl::Status MakeTlsContexts(ServerCore& core) {
  const IngestConfig& cfg = core.config;
  for (const std::string& bundle : cfg.tls_sni_bundles) {
    TERN_ASSIGN_OR_RETURN(std::shared_ptr<asio::ssl::context> ctx, MakeServerContext(cfg, bundle, bundle, bundle));
    const std::vector<std::string> names = CertificateNames(ctx->native_handle());
    if (names.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(bundle, ": the certificate names no host (no DNS SAN, no CN)"));
    }
    for (const std::string& name : names) {
      core.sni.emplace(name, ctx);  // a name in two bundles: the first file's
    }
  }
  if (!cfg.tls_cert_file.empty()) {
    TERN_ASSIGN_OR_RETURN(core.tls, MakeServerContext(cfg, cfg.tls_cert_file, cfg.tls_key_file, "tls.ini [main]"));
  } else {
    // Its own context, so switching away from it by SNI leaves it intact.
    TERN_ASSIGN_OR_RETURN(core.tls, MakeServerContext(cfg, cfg.tls_sni_bundles.front(),
                                                      cfg.tls_sni_bundles.front(), cfg.tls_sni_bundles.front()));
  }
  if (!core.sni.empty()) {
    SSL_CTX_set_tlsext_servername_callback(core.tls->native_handle(), SelectCertificateBySni);
    SSL_CTX_set_tlsext_servername_arg(core.tls->native_handle(), &core.sni);
  }
  return absl::OkStatus();
}

}  // namespace

IngestServer::IngestServer(asio::io_context& io, std::shared_ptr<ServerCore> core)
    : io_(io), core_(std::move(core)) {}

absl::StatusOr<std::unique_ptr<IngestServer>> IngestServer::Create(asio::io_context& io, IngestConfig config,
                                                                   std::shared_ptr<QueueClient> queue,
                                                                   std::shared_ptr<QueueOutboundHook> hook) {
  return Create(std::vector<asio::io_context*>{&io}, std::move(config), std::move(queue), std::move(hook));
}

IngestServer::~IngestServer() {
  core_->closed = true;
  if (core_->auth_pool) {
    // Lets a check in progress finish; its answer goes to a stopped shard,
    // which is still there (tern-ingest destroys the shards after this).
    core_->auth_pool->join();
  }
}

absl::StatusOr<std::unique_ptr<IngestServer>> IngestServer::Create(std::vector<asio::io_context*> shards,
                                                                   IngestConfig config,
                                                                   std::shared_ptr<QueueClient> queue,
                                                                   std::shared_ptr<QueueOutboundHook> hook) {
  if (shards.empty()) {
    return absl::InvalidArgumentError("no io_context to run sessions on");
  }
  asio::io_context& io = *shards[0];
  auto core = std::make_shared<ServerCore>();
  core->shards = std::move(shards);
  core->config = std::move(config);
  core->queue = std::move(queue);
  core->hook = std::move(hook);
  core->tarpit.emplace(core->config.auth.fail_delay, core->config.auth.fail_delay_max);
  if (core->config.auth.enabled() && !core->config.auth.users.all_plaintext()) {
    // Two threads: a burst of logins against slow hashes still moves while
    // the session threads carry on.
    core->auth_pool = std::make_unique<asio::thread_pool>(2);
  }
  if (core->config.tls_enabled()) {
    TERN_RETURN_IF_ERROR(MakeTlsContexts(*core));
  }
  std::unique_ptr<IngestServer> server(new IngestServer(io, core));
  for (const ListenAddress& listen : core->config.listen) {
    std::error_code ec;
    const asio::ip::address address = asio::ip::make_address(listen.host, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat("smtp.ini listen ", listen.ToString(), ": ", ec.message()));
    }
    const asio::ip::tcp::endpoint endpoint(address, listen.port);
    auto acceptor = std::make_shared<asio::ip::tcp::acceptor>(io);
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) {
      acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    }
    if (!ec) {
      acceptor->bind(endpoint, ec);
    }
    if (!ec) {
      acceptor->listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("smtp.ini listen ", listen.ToString(), ": cannot listen: ", ec.message()));
    }
    server->ports_.push_back(acceptor->local_endpoint().port());
    core->acceptors.push_back(std::move(acceptor));
    core->implicit_tls.push_back(listen.implicit_tls);
  }
  return server;
}

void IngestServer::Start() {
  for (size_t i = 0; i < core_->shards.size(); ++i) {
    asio::co_spawn(*core_->shards[i],
                   MeasureThreadBusy(core_, i, core_->config.thread_busy_interval), asio::detached);
  }
  asio::post(io_, [core = core_]() {
    for (size_t i = 0; i < core->acceptors.size(); ++i) {
      const auto& acceptor = core->acceptors[i];
      const bool implicit_tls = core->implicit_tls[i];
      asio::co_spawn(acceptor->get_executor(), AcceptLoop(acceptor, core, implicit_tls), asio::detached);
      std::error_code ec;
      log::Event(log::Level::kInfo, "listening",
                 {{"address", acceptor->local_endpoint(ec).address().to_string()},
                  {"port", absl::StrCat(acceptor->local_endpoint(ec).port())},
                  {"tls", implicit_tls ? "implicit" : (core->tls ? "starttls" : "off")}});
    }
  });
}

void IngestServer::Shutdown(std::chrono::milliseconds grace) {
  asio::post(io_, [core = core_, grace, &io = io_]() {
    if (core->draining) {
      return;
    }
    core->draining = true;
    for (const auto& acceptor : core->acceptors) {
      std::error_code ignored;
      acceptor->close(ignored);
    }
    log::Event(log::Level::kInfo, "draining",
               {{"sessions", absl::StrCat(core->SessionCount())}, {"grace_ms", absl::StrCat(grace.count())}});
    // Sessions between transactions go now; the others finish theirs. (A
    // session that starts after this sees `draining` before its banner.)
    core->ForEachSession([](Session& session) {
      if (!session.in_transaction()) {
        session.Wake();
      }
    });
    core->grace_timer = std::make_unique<asio::steady_timer>(io, grace);
    core->grace_timer->async_wait([core](const std::error_code& ec) {
      if (ec) {
        return;
      }
      const size_t left = core->SessionCount();
      if (left != 0) {
        log::Event(log::Level::kWarn, "grace_expired", {{"sessions", absl::StrCat(left)}});
      }
      core->ForEachSession([](Session& session) { session.Abort(); });
    });
    core->CheckIdle();
  });
}

bool IngestServer::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(core_->idle_mu);
  return core_->idle_cv.wait_for(lock, timeout, [this] { return core_->idle; });
}

}  // namespace tern::ingest
