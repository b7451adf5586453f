#include "services/ingest/server.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <time.h>

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
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
#include "lib/net/connection.h"
#include "services/ingest/queue_client.h"
#include "services/ingest/session.h"

namespace tern::ingest {
namespace {

constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);
// After a failed accept (e.g. EMFILE) wait before trying again, so a full
// file table does not turn the accept loop into a busy loop.
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);
// Threads that check slow password hashes (ServerCore::auth_pool).
constexpr int kAuthThreads = 2;

asio::awaitable<void> AcceptLoop(std::shared_ptr<asio::ip::tcp::acceptor> acceptor, std::shared_ptr<ServerCore> core,
                                 ListenAddress listener) {
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
    asio::co_spawn(executor, RunSession(std::move(socket), core, listener), asio::detached);
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

// tls.ini's protocol floor and ciphers, and the options every server
// context has.
absl::Status ApplyServerSettings(asio::ssl::context& ctx, const std::string& min_version,
                                 const std::string& ciphers) {
  std::error_code ec;
  ctx.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_compression |
                      asio::ssl::context::single_dh_use,
                  ec);
  SSL_CTX* native = ctx.native_handle();
  SSL_CTX_set_min_proto_version(native, net::TlsVersionFromName(min_version).value_or(TLS1_2_VERSION));
  if (!ciphers.empty() && SSL_CTX_set_cipher_list(native, ciphers.c_str()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("tls.ini [main] ciphers: no usable cipher in '", ciphers, "'"));
  }
  return absl::OkStatus();
}

// One server context for a certificate chain and its key (which may be the
// same PEM bundle: OpenSSL's PEM readers skip the other kind of block), with
// tls.ini's protocol floor and ciphers. `what` names the source in errors.
absl::StatusOr<std::shared_ptr<asio::ssl::context>> MakeServerContext(const std::string& min_version,
                                                                      const std::string& ciphers,
                                                                      const std::string& cert_file,
                                                                      const std::string& key_file,
                                                                      const std::string& what) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  TERN_RETURN_IF_ERROR(ApplyServerSettings(*ctx, min_version, ciphers));
  std::error_code ec;
  ctx->use_certificate_chain_file(cert_file, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(what, " certificate ", cert_file, ": ", ec.message()));
  }
  ctx->use_private_key_file(key_file, asio::ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(what, " key ", key_file, ": ", ec.message()));
  }
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(what, ": the key does not match the certificate"));
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
// handshake to the context whose certificate names the requested host,
// exactly or by a "*." wildcard for its first label. No SNI, or no match:
// the default certificate. `arg` is the map of the handshake's own set
// (ServerTls::Set), whose contexts share its client-certificate policy.
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

// The SSL object's ex_data slot for the client certificate a requiring
// listener rejected (an X509 reference, freed with the SSL object): after a
// failed handshake the session has no peer certificate to read.
void FreeRejected(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/,
                  void* /*argp*/) {
  X509_free(static_cast<X509*>(ptr));
}
int RejectedCertificateIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeRejected);
  return index;
}

// The verify callback of a listener that does not require a certificate:
// any certificate, verified or not, lets the client in, as Haraka's
// rejectUnauthorized=false does; SSL_get_verify_result keeps the failure.
int AcceptAnyClientCertificate(int /*ok*/, X509_STORE_CTX* /*store*/) { return 1; }

// The verify callback of a listener that requires one: a failure ends the
// handshake, after noting the certificate for the log.
int RequireClientCertificate(int ok, X509_STORE_CTX* store) {
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  if (ok == 0 && ssl != nullptr && leaf != nullptr && SSL_get_ex_data(ssl, RejectedCertificateIndex()) == nullptr &&
      X509_up_ref(leaf) == 1) {
    SSL_set_ex_data(ssl, RejectedCertificateIndex(), leaf);
  }
  return ok;
}

// A certificate name for the log: RFC 2253, non-ASCII escaped, bounded.
std::string NameText(const X509_NAME* name) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (bio == nullptr || name == nullptr || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) {
    ERR_clear_error();
    return "";
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(std::clamp<long>(len, 0, 256)));
}

}  // namespace

const char* ClientCertificate::Name(Verify verify) {
  switch (verify) {
    case Verify::kOk:
      return "OK";
    case Verify::kFail:
      return "FAIL";
    case Verify::kNo:
      break;
  }
  return "NO";
}

ClientCertificate ClientCertificate::Of(SSL* ssl) {
  ClientCertificate peer;
  if (ssl == nullptr) {
    return peer;
  }
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) {
    cert = static_cast<X509*>(SSL_get_ex_data(ssl, RejectedCertificateIndex()));
  }
  if (cert == nullptr) {
    return peer;
  }
  peer.subject = NameText(X509_get_subject_name(cert));
  peer.issuer = NameText(X509_get_issuer_name(cert));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) == 1) {
    peer.sha256 = absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(md), len));
  }
  // Of the DER SubjectPublicKeyInfo, as Postfix's public-key fingerprints
  // and `openssl pkey -pubin -outform DER | openssl dgst -sha256` (not
  // X509_pubkey_digest, which hashes only the key's bit string).
  unsigned char* spki = nullptr;
  const int spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &spki);
  if (spki_len > 0 && EVP_Digest(spki, static_cast<size_t>(spki_len), md, &len, EVP_sha256(), nullptr) == 1) {
    peer.pubkey_sha256 = absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(md), len));
  }
  OPENSSL_free(spki);
  ERR_clear_error();
  const long result = SSL_get_verify_result(ssl);
  if (result == X509_V_OK) {
    peer.verify = Verify::kOk;
  } else {
    peer.verify = Verify::kFail;
    peer.error = X509_verify_cert_error_string(result);
  }
  return peer;
}

absl::StatusOr<std::shared_ptr<ServerTls>> ServerTls::Create(const IngestConfig& config) {
  std::shared_ptr<ServerTls> tls(new ServerTls());
  std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> store(nullptr, X509_STORE_free);
  std::unique_ptr<STACK_OF(X509_NAME), void (*)(STACK_OF(X509_NAME)*)> ca_names(
      nullptr, [](STACK_OF(X509_NAME)* names) { sk_X509_NAME_pop_free(names, X509_NAME_free); });
  if (config.tls_request_cert) {
    store.reset(X509_STORE_new());
    if (store == nullptr) {
      return absl::ResourceExhaustedError("OpenSSL could not make a certificate store");
    }
    if (!config.tls_ca_file.empty()) {
      // Only these CAs, as Node.js's `ca` (so Haraka's): see README.
      if (X509_STORE_load_file(store.get(), config.tls_ca_file.c_str()) != 1) {
        ERR_clear_error();
        return absl::InvalidArgumentError(absl::StrCat("tls.ini [main] ca: cannot load ", config.tls_ca_file));
      }
      ca_names.reset(SSL_load_client_CA_file(config.tls_ca_file.c_str()));
      ERR_clear_error();
    } else if (X509_STORE_set_default_paths(store.get()) != 1) {
      ERR_clear_error();
      return absl::InternalError("OpenSSL could not load the system's default trusted CAs");
    }
  }
  TERN_RETURN_IF_ERROR(tls->MakeSet(config, false, store.get(), ca_names.get()));
  if (std::any_of(config.listen.begin(), config.listen.end(),
                  [](const ListenAddress& listen) { return listen.require_client_cert; })) {
    TERN_RETURN_IF_ERROR(tls->MakeSet(config, true, store.get(), ca_names.get()));
  }
  return tls;
}

absl::Status ServerTls::MakeSet(const IngestConfig& config, bool require_client_cert, X509_STORE* store,
                                const STACK_OF(X509_NAME)* ca_names) {
  Set& set = sets_[require_client_cert ? 1 : 0];
  // One set of ticket keys (name, HMAC key, AES key) and one session id
  // context per set: OpenSSL resumes a session only in the set it began in.
  unsigned char ticket_keys[80];
  if (RAND_bytes(ticket_keys, sizeof(ticket_keys)) != 1) {
    return absl::InternalError("OpenSSL could not make session ticket keys");
  }
  static constexpr unsigned char kRequested[] = "tern-ingest";
  static constexpr unsigned char kRequired[] = "tern-ingest/required";
  // What every context of the set has alike, so that a handshake switched to
  // an SNI context verifies and resumes as it would have on the default.
  auto configure = [&](SSL_CTX* ctx) {
    if (require_client_cert) {
      SSL_CTX_set_session_id_context(ctx, kRequired, sizeof(kRequired) - 1);
    } else {
      SSL_CTX_set_session_id_context(ctx, kRequested, sizeof(kRequested) - 1);
    }
    SSL_CTX_set_tlsext_ticket_keys(ctx, ticket_keys, sizeof(ticket_keys));
    if (!config.tls_request_cert) {
      return;
    }
    SSL_CTX_set1_cert_store(ctx, store);
    if (ca_names != nullptr) {
      SSL_CTX_set_client_CA_list(ctx, SSL_dup_CA_list(ca_names));
    }
    if (require_client_cert) {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                         RequireClientCertificate);
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, AcceptAnyClientCertificate);
    }
  };
  for (const TlsCertificateFiles& files : config.tls_sni_certificates) {
    TERN_ASSIGN_OR_RETURN(std::shared_ptr<asio::ssl::context> ctx,
                          MakeServerContext(config.tls_min_version, config.tls_ciphers, files.cert_file,
                                            files.key_file, files.cert_file));
    const std::vector<std::string> names = CertificateNames(ctx->native_handle());
    if (names.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(files.cert_file, ": the certificate names no host (no DNS SAN, no CN)"));
    }
    configure(ctx->native_handle());
    for (const std::string& name : names) {
      set.sni.emplace(name, ctx);  // a name in two certificates: the first file's
    }
  }
  // The default has a context of its own, so switching away from it by SNI
  // leaves it intact.
  if (!config.tls_cert_file.empty()) {
    TERN_ASSIGN_OR_RETURN(set.default_ctx, MakeServerContext(config.tls_min_version, config.tls_ciphers,
                                                             config.tls_cert_file, config.tls_key_file,
                                                             "tls.ini [main]"));
  } else {
    const TlsCertificateFiles& first = config.tls_sni_certificates.front();
    TERN_ASSIGN_OR_RETURN(set.default_ctx, MakeServerContext(config.tls_min_version, config.tls_ciphers,
                                                             first.cert_file, first.key_file, first.cert_file));
  }
  configure(set.default_ctx->native_handle());
  if (!set.sni.empty()) {
    SSL_CTX_set_tlsext_servername_callback(set.default_ctx->native_handle(), SelectCertificateBySni);
    SSL_CTX_set_tlsext_servername_arg(set.default_ctx->native_handle(), &set.sni);
  }
  OPENSSL_cleanse(ticket_keys, sizeof(ticket_keys));
  return absl::OkStatus();
}

std::shared_ptr<asio::ssl::context> ServerTls::ForHandshake(bool require_client_cert) const {
  return sets_[require_client_cert ? 1 : 0].default_ctx;
}

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
  // LoadIngestConfig has checked it; a config built in code is checked here
  // (e.g. that a listener requiring client certificates has them asked for).
  TERN_RETURN_IF_ERROR(config.Validate());
  asio::io_context& io = *shards[0];
  auto core = std::make_shared<ServerCore>();
  core->shards = std::move(shards);
  core->queue = std::move(queue);
  core->hook = std::move(hook);
  core->tarpit.emplace(config.auth.fail_delay, config.auth.fail_delay_max);
  if (config.auth.enabled() && config.auth.users.any_slow_to_verify()) {
    // Two threads: a burst of logins against slow hashes still moves while
    // the session threads carry on. Salted SHA and plaintext passwords are
    // checked on the session's thread, so without crypt(3) hashes there is
    // no pool.
    core->auth_pool = std::make_unique<asio::thread_pool>(kAuthThreads);
  }
  auto settings = std::make_shared<IngestSettings>();
  if (config.tls_enabled()) {
    TERN_ASSIGN_OR_RETURN(settings->tls, ServerTls::Create(config));
  }
  settings->config = std::move(config);
  core->settings = settings;
  std::unique_ptr<IngestServer> server(new IngestServer(io, core));
  for (const ListenAddress& listen : settings->config.listen) {
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
    core->listeners.push_back(listen);
  }
  return server;
}

void IngestServer::Start() {
  const std::shared_ptr<const IngestSettings> settings = core_->CurrentSettings();
  for (size_t i = 0; i < core_->shards.size(); ++i) {
    asio::co_spawn(*core_->shards[i],
                   MeasureThreadBusy(core_, i, settings->config.thread_busy_interval), asio::detached);
  }
  asio::post(io_, [core = core_, settings]() {
    for (size_t i = 0; i < core->acceptors.size(); ++i) {
      const auto& acceptor = core->acceptors[i];
      const ListenAddress& listener = core->listeners[i];
      asio::co_spawn(acceptor->get_executor(), AcceptLoop(acceptor, core, listener), asio::detached);
      std::error_code ec;
      log::Event(log::Level::kInfo, "listening",
                 {{"address", acceptor->local_endpoint(ec).address().to_string()},
                  {"port", absl::StrCat(acceptor->local_endpoint(ec).port())},
                  {"tls", listener.implicit_tls ? "implicit" : (settings->tls ? "starttls" : "off")},
                  {"client_cert", !settings->tls || !settings->config.tls_request_cert ? "off"
                                  : listener.require_client_cert                        ? "required"
                                                                                        : "requested"}});
    }
  });
}

absl::StatusOr<IngestServer::ReloadResult> IngestServer::Reload(IngestConfig config) {
  const std::shared_ptr<const IngestSettings> running = core_->CurrentSettings();
  const IngestConfig& old = running->config;
  ReloadResult result;
  result.needs_restart = KeepRestartOnlySettings(old, &config);
  TERN_RETURN_IF_ERROR(config.Validate());
  auto settings = std::make_shared<IngestSettings>();
  if (config.tls_enabled()) {
    // Certificates and keys are read here, so a renewed pair that does not
    // load leaves the old one serving.
    TERN_ASSIGN_OR_RETURN(settings->tls, ServerTls::Create(config));
  }
  const bool needs_pool = config.auth.enabled() && config.auth.users.any_slow_to_verify();
  settings->config = std::move(config);
  std::lock_guard<std::mutex> lock(core_->mu);
  if (needs_pool && core_->auth_pool == nullptr && !core_->closed) {
    core_->auth_pool = std::make_unique<asio::thread_pool>(kAuthThreads);
  }
  core_->tarpit->SetDelays(settings->config.auth.fail_delay, settings->config.auth.fail_delay_max);
  core_->settings = std::move(settings);
  return result;
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
