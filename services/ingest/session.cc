#include "services/ingest/session.h"

#include <algorithm>
#include <chrono>
#include <utility>
#include <variant>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "asio/co_spawn.hpp"
#include "asio/experimental/as_tuple.hpp"
#include "asio/experimental/awaitable_operators.hpp"
#include "asio/post.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/address/idna.h"
#include "lib/common/ids.h"
#include "lib/common/log.h"
#include "lib/metrics/metrics.h"
#include "lib/smtp/command_parser.h"
#include "lib/smtp/dot_decoder.h"
#include "lib/mime/header.h"
#include "services/ingest/proxy_protocol.h"
#include "services/ingest/queue_client.h"
#include "services/ingest/received_header.h"
#include "tern/v1/message.pb.h"

// GCC 12 at -O2 reports a false -Wmismatched-new-delete for Asio's awaitable
// frame allocator in large coroutines (GCC bug 109224), here FinishBody once
// it awaits the queue_outbound hook; as in services/deliverer.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace tern::ingest {
namespace {

constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);

// Body bytes collected before one Enqueue write.
constexpr size_t kChunkBytes = 64 * 1024;
// The longest piece of a DATA/BDAT line read at once (wrapping is the
// assembler's job; this only bounds the read buffer).
constexpr size_t kDataReadMax = 64 * 1024;
// RFC 4954 §4: a server must accept AUTH lines of 12288 octets.
constexpr size_t kAuthLineMax = 12288;
constexpr auto kTlsHandshakeTimeout = std::chrono::seconds(30);
// Past max.bytes the rest of a message is read and dropped (RFC 5321 wants
// the reply after the end of data), but only this much more: a client that
// goes on is disconnected.
constexpr uint64_t kMinDiscardBytes = 1 << 20;
// Bad commands before the session is closed (Postfix's hard error limit).
constexpr int kMaxErrors = 20;
constexpr auto kCloseTimeout = std::chrono::seconds(5);

bool Has8BitOctets(absl::string_view body) {
  return std::any_of(body.begin(), body.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

static_assert(static_cast<int>(smtp::kNotifySuccess) == static_cast<int>(tern::v1::NOTIFY_SUCCESS));
static_assert(static_cast<int>(smtp::kNotifyFailure) == static_cast<int>(tern::v1::NOTIFY_FAILURE));
static_assert(static_cast<int>(smtp::kNotifyDelay) == static_cast<int>(tern::v1::NOTIFY_DELAY));
static_assert(static_cast<int>(smtp::kNotifyNever) == static_cast<int>(tern::v1::NOTIFY_NEVER));

struct Metrics {
  metrics::Counter& connections;
  metrics::Gauge& active;
  metrics::Counter& accepted;
  metrics::Counter& accepted_bytes;
  metrics::Counter& refused_relay;
  metrics::Counter& refused_size;
  metrics::Counter& refused_recipients;
  metrics::Counter& refused_local;
  metrics::Counter& failed_queue_unavailable;
  metrics::Counter& failed_queue_full;
  metrics::Counter& aborted;
  metrics::Counter& refused_headers;
  metrics::Counter& refused_loop;
  metrics::Counter& refused_connections;
  metrics::Counter& auth_ok;
  metrics::Counter& auth_failed;
  metrics::Counter& refused_hook;
  metrics::Counter& taken_over;

  static Metrics& Get() {
    static Metrics* m = [] {
      auto& r = metrics::Registry::Global();
      const std::string refused = "tern_ingest_refused_total";
      const std::string refused_help = "Recipients or messages refused, by reason";
      return new Metrics{
          r.GetCounter("tern_ingest_connections_total", "SMTP connections accepted"),
          r.GetGauge("tern_ingest_sessions_active", "SMTP sessions open now"),
          r.GetCounter("tern_ingest_messages_total", "Messages queued (250 sent)", {{"outcome", "queued"}}),
          r.GetCounter("tern_ingest_message_bytes_total", "Body bytes of queued messages"),
          r.GetCounter(refused, refused_help, {{"reason", "relay_denied"}}),
          r.GetCounter(refused, refused_help, {{"reason", "size_limit"}}),
          r.GetCounter(refused, refused_help, {{"reason", "too_many_recipients"}}),
          r.GetCounter(refused, refused_help, {{"reason", "no_local_delivery"}}),
          r.GetCounter(refused, refused_help, {{"reason", "queue_unavailable"}}),
          r.GetCounter(refused, refused_help, {{"reason", "queue_full"}}),
          r.GetCounter("tern_ingest_data_aborted_total", "DATA phases ended by disconnect or timeout"),
          r.GetCounter(refused, refused_help, {{"reason", "header_lines"}}),
          r.GetCounter(refused, refused_help, {{"reason", "mail_loop"}}),
          r.GetCounter(refused, refused_help, {{"reason", "too_many_connections"}}),
          r.GetCounter("tern_ingest_auth_total", "AUTH attempts", {{"outcome", "ok"}}),
          r.GetCounter("tern_ingest_auth_total", "AUTH attempts", {{"outcome", "failed"}}),
          r.GetCounter(refused, refused_help, {{"reason", "hook"}}),
          r.GetCounter("tern_ingest_messages_total", "Messages queued (250 sent)", {{"outcome", "taken_over"}}),
      };
    }();
    return *m;
  }
};

tern::v1::DsnRet ToProto(smtp::DsnRet ret) {
  switch (ret) {
    case smtp::DsnRet::kFull: return tern::v1::DSN_RET_FULL;
    case smtp::DsnRet::kHdrs: return tern::v1::DSN_RET_HDRS;
    case smtp::DsnRet::kUnspecified: break;
  }
  return tern::v1::DSN_RET_UNSPECIFIED;
}

// IPv4-mapped IPv6 (a dual-stack listener) as the IPv4 address it is.
std::string CanonicalIp(asio::ip::address address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
  }
  return address.to_string();
}

}  // namespace

asio::io_context& ServerCore::NextShard() {
  return *shards[next_shard.fetch_add(1, std::memory_order_relaxed) % shards.size()];
}

void ServerCore::CheckIdle() {
  if (!draining || closed) {
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!sessions.empty()) {
      return;
    }
  }
  // The grace timer belongs to shards[0]. A weak pointer: a task that is
  // never run (the io_context stopped first) must not keep the core alive.
  asio::post(*shards[0], [weak = weak_from_this()]() {
    if (auto core = weak.lock(); core && core->grace_timer) {
      core->grace_timer->cancel();
    }
  });
  std::lock_guard<std::mutex> lock(idle_mu);
  idle = true;
  idle_cv.notify_all();
}

size_t ServerCore::SessionCount() {
  std::lock_guard<std::mutex> lock(mu);
  return sessions.size();
}

std::shared_ptr<const IngestSettings> ServerCore::CurrentSettings() {
  std::lock_guard<std::mutex> lock(mu);
  return settings;
}

void ServerCore::ForEachSession(std::function<void(Session&)> fn) {
  std::vector<std::pair<uint64_t, asio::any_io_executor>> targets;
  {
    std::lock_guard<std::mutex> lock(mu);
    targets.reserve(sessions.size());
    for (const auto& [serial, registered] : sessions) {
      targets.emplace_back(serial, registered.executor);
    }
  }
  auto shared_fn = std::make_shared<std::function<void(Session&)>>(std::move(fn));
  for (auto& [serial, executor] : targets) {
    // On the session's own thread, a session found in the map cannot end
    // before `fn` returns: it ends on that thread too.
    asio::post(executor, [core = shared_from_this(), serial = serial, shared_fn]() {
      Session* session = nullptr;
      {
        std::lock_guard<std::mutex> lock(core->mu);
        auto it = core->sessions.find(serial);
        if (it != core->sessions.end()) {
          session = it->second.session;
        }
      }
      if (session != nullptr) {
        (*shared_fn)(*session);
      }
    });
  }
}

asio::awaitable<void> RunSession(asio::ip::tcp::socket socket, std::shared_ptr<ServerCore> core,
                                 ListenAddress listener) {
  Session session(std::move(socket), std::move(core), listener);
  co_await session.Run();
}

Session::Session(asio::ip::tcp::socket socket, std::shared_ptr<ServerCore> core, const ListenAddress& listener)
    : core_(std::move(core)),
      settings_(core_->CurrentSettings()),
      cfg_(settings_->config),
      conn_(std::move(socket)),
      implicit_tls_(listener.implicit_tls),
      require_client_cert_(listener.require_client_cert),
      session_id_(NewRandomToken().substr(0, 16)) {
  std::error_code ec;
  const auto remote = conn_.socket().remote_endpoint(ec);
  if (!ec) {
    client_ip_ = CanonicalIp(remote.address());
    client_port_ = remote.port();
  } else {
    client_ip_ = "unknown";
  }
  peer_ip_ = client_ip_;
  relay_allowed_ = cfg_.relay_acl.Allows(client_ip_);
  // An idle client gets "421 ... timeout" before we close: the read's
  // deadline must leave the socket open.
  conn_.set_close_on_timeout(false);
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    serial_ = ++core_->next_serial;
    core_->sessions.emplace(serial_, ServerCore::Registered{this, conn_.socket().get_executor()});
  }
  Metrics::Get().connections.Inc();
  Metrics::Get().active.Add(1);
}

Session::~Session() {
  Metrics::Get().active.Add(-1);
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    if (counted_ip_) {
      auto it = core_->sessions_per_ip.find(client_ip_);
      if (it != core_->sessions_per_ip.end() && --it->second == 0) {
        core_->sessions_per_ip.erase(it);
      }
    }
    core_->sessions.erase(serial_);
  }
  core_->CheckIdle();
}

void Session::Wake() {
  if (idle_timer_ != nullptr) {
    idle_timer_->cancel();
  }
  conn_.Interrupt();
}

void Session::Abort() {
  aborted_ = true;
  if (call_ != nullptr) {
    call_->Cancel();
  }
  QueueOutboundHook::Cancel(&hook_call_);
  conn_.Abort();
}

asio::awaitable<void> Session::Run() {
  log::Event(log::Level::kDebug, "connect",
             {{"session", session_id_}, {"client", client_ip_}, {"port", absl::StrCat(client_port_)},
              {"relay", relay_allowed_ ? "allowed" : "denied"}});
  try {
    if (co_await Prelude()) {
      co_await Dialogue();
    }
  } catch (const std::exception& e) {
    // Only a bug gets here (every I/O error is a Status); log and close.
    log::Event(log::Level::kError, "session_error", {{"session", session_id_}, {"error", e.what()}});
  }
  AbortBody();
  co_await conn_.Close(kCloseTimeout);
  log::Event(log::Level::kInfo, "disconnect",
             {{"session", session_id_},
              {"client", client_ip_},
              {"helo", helo_},
              {"tls", conn_.tls() ? "yes" : "no"},
              {"transactions", absl::StrCat(transactions_)},
              {"queued", absl::StrCat(queued_)}});
}

// What happens before the banner, in Haraka's order: a listed proxy must
// send its PROXY line first (no banner until then; 421 after
// proxy_timeout); then the real client is counted against the connection
// limits; then an SMTPS listener does its TLS handshake.
asio::awaitable<bool> Session::Prelude() {
  const std::string& me = cfg_.me;
  std::optional<IpAddress> peer = IpAddress::Parse(peer_ip_);
  const bool from_proxy =
      cfg_.haproxy_enabled && peer.has_value() &&
      std::any_of(cfg_.haproxy_hosts.begin(), cfg_.haproxy_hosts.end(), [&](const Cidr& c) { return c.Contains(*peer); });
  if (from_proxy) {
    absl::StatusOr<ProxyHeader> header = absl::InvalidArgumentError("no PROXY header");
    const ReadResult r = co_await ReadProxyHeader(&header);
    if (r == ReadResult::kTimeout) {
      Reply("421 4.4.2 PROXY timed out");
      co_await Flush();
      co_return false;
    }
    if (r != ReadResult::kLine) {
      co_return false;
    }
    if (!header.ok()) {
      log::Event(log::Level::kNotice, "proxy_invalid",
                 {{"session", session_id_}, {"proxy", peer_ip_}, {"error", header.status().message()}});
      Reply("421 4.7.0 Invalid PROXY format");
      co_await Flush();
      co_return false;
    }
    if (!header->unknown()) {
      asio::error_code ec;
      client_ip_ = CanonicalIp(asio::ip::make_address(header->src_ip, ec));
      client_port_ = header->src_port;
      relay_allowed_ = cfg_.relay_acl.Allows(client_ip_);
    }
    log::Event(log::Level::kDebug, "proxy",
               {{"session", session_id_}, {"proxy", peer_ip_}, {"client", client_ip_},
                {"port", absl::StrCat(client_port_)}});
  }

  counted_ip_ = true;
  size_t from_ip = 0;
  size_t sessions = 0;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    from_ip = ++core_->sessions_per_ip[client_ip_];
    sessions = core_->sessions.size();
  }
  const char* refused = nullptr;
  if (cfg_.max_connections != 0 && sessions > cfg_.max_connections) {
    refused = "421 4.7.0 %s Too many connections, try again later";
  } else if (cfg_.max_connections_per_ip != 0 && from_ip > cfg_.max_connections_per_ip) {
    refused = "421 4.7.0 %s Too many connections from your address, try again later";
  }
  if (refused != nullptr) {
    Metrics::Get().refused_connections.Inc();
    log::Event(log::Level::kNotice, "connection_refused",
               {{"session", session_id_}, {"client", client_ip_}, {"from_ip", absl::StrCat(from_ip)},
                {"sessions", absl::StrCat(sessions)}});
    // On an SMTPS listener a plaintext reply would only confuse the client's
    // TLS stack, and a handshake is what a flood should not get: just close.
    if (!implicit_tls_) {
      Reply(absl::StrReplaceAll(refused, {{"%s", me}}));
      co_await Flush();
    }
    co_return false;
  }

  if (implicit_tls_) {
    co_return co_await TlsHandshake(settings_->tls->ForHandshake(require_client_cert_));
  }
  co_return true;
}

asio::awaitable<bool> Session::TlsHandshake(std::shared_ptr<asio::ssl::context> ctx) {
  absl::Status status = co_await conn_.StartTlsServer(std::move(ctx), kTlsHandshakeTimeout);
  client_cert_ = ClientCertificate::Of(conn_.tls_native_handle());
  if (!status.ok()) {
    // On a listener that requires a certificate, the certificate's names and
    // why it did not verify (none presented: OpenSSL's error says so).
    log::Event(log::Level::kNotice, "tls_failed",
               {{"session", session_id_},
                {"client", client_ip_},
                {"error", status.message()},
                {"client_cert", !cfg_.tls_request_cert ? "off" : require_client_cert_ ? "required" : "requested"},
                {"cert_subject", client_cert_.subject},
                {"verify_error", client_cert_.error}});
    co_return false;
  }
  log::Event(log::Level::kDebug, "tls",
             {{"session", session_id_},
              {"version", conn_.TlsVersion()},
              {"cipher", conn_.TlsCipher()},
              {"verify", ClientCertificate::Name(client_cert_.verify)},
              {"cert_subject", client_cert_.subject},
              {"cert_issuer", client_cert_.issuer},
              {"cert_sha256", client_cert_.sha256},
              {"verify_error", client_cert_.error}});
  if (!relay_allowed_ && cfg_.relay_clientcerts.Allows(client_cert_.sha256, client_cert_.pubkey_sha256)) {
    // relay_clientcerts (relay_acl.h): the certificate the client proved it
    // holds is listed, whoever signed it.
    relay_allowed_ = true;
    log::Event(log::Level::kInfo, "relay_by_certificate",
               {{"session", session_id_},
                {"client", client_ip_},
                {"cert_subject", client_cert_.subject},
                {"cert_sha256", client_cert_.sha256},
                {"verify", ClientCertificate::Name(client_cert_.verify)}});
  }
  co_return true;
}

void Session::Reply(std::string line) {
  absl::StrAppend(&out_, line, "\r\n");
}

asio::awaitable<bool> Session::Flush() {
  if (out_.empty()) {
    co_return true;
  }
  std::string data;
  data.swap(out_);
  absl::Status status = co_await conn_.Write(data, cfg_.inactivity_timeout);
  co_return status.ok();
}

asio::awaitable<Session::ReadResult> Session::ReadProxyHeader(absl::StatusOr<ProxyHeader>* header) {
  const auto deadline = std::chrono::steady_clock::now() + cfg_.proxy_timeout;
  const auto left = [&deadline] {
    return std::max(std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      deadline - std::chrono::steady_clock::now()));
  };
  const auto failed = [](const absl::Status& status) {
    return status.code() == absl::StatusCode::kDeadlineExceeded ? ReadResult::kTimeout : ReadResult::kClosed;
  };
  absl::StatusOr<char> first = co_await conn_.PeekByte(left());
  while (!first.ok() && first.status().code() == absl::StatusCode::kCancelled) {  // a drain waits the header out
    first = co_await conn_.PeekByte(left());
  }
  if (!first.ok()) {
    co_return failed(first.status());
  }
  if (!IsProxyV2Start(*first)) {
    net::Line line;
    const ReadResult r = co_await ReadLine(kProxyV1MaxLine, &line, /*ignore_drain=*/true, left());
    if (r == ReadResult::kLine) {
      *header = line.partial || line.bare_lf ? absl::InvalidArgumentError("line too long or not CRLF")
                                             : ParseProxyV1(line.text);
    }
    co_return r;
  }
  // v2: the fixed part says how much follows (at most 64 KiB, from a host
  // the operator listed); both parts are read in full before parsing.
  std::string raw;
  size_t want = kProxyV2FixedSize;
  for (int part = 0; part < 2; ++part) {
    while (raw.size() < want) {
      auto bytes = co_await conn_.ReadBytes(want - raw.size(), left());
      if (!bytes.ok()) {
        if (bytes.status().code() == absl::StatusCode::kCancelled) {
          continue;
        }
        co_return failed(bytes.status());
      }
      raw += *bytes;
    }
    if (part == 0) {
      absl::StatusOr<size_t> rest = ProxyV2RestSize(raw);
      if (!rest.ok()) {
        *header = rest.status();
        co_return ReadResult::kLine;
      }
      want += *rest;
    }
  }
  *header = ParseProxyV2(raw);
  co_return ReadResult::kLine;
}

asio::awaitable<Session::ReadResult> Session::ReadLine(size_t max_len, net::Line* line, bool ignore_drain,
                                                       std::optional<std::chrono::milliseconds> timeout) {
  if (core_->draining && !in_mail_ && !ignore_drain) {
    co_return ReadResult::kWoken;
  }
  if (std::optional<net::Line> buffered = conn_.TakeBufferedLine(max_len)) {
    // No wait, so no timer: most DATA lines take this path.
    *line = *std::move(buffered);
    co_return ReadResult::kLine;
  }
  const std::chrono::milliseconds wait = timeout.value_or(cfg_.inactivity_timeout);
  auto read = co_await conn_.ReadLine(max_len, wait);
  if (read.ok()) {
    *line = *std::move(read);
    co_return ReadResult::kLine;
  }
  if (read.status().code() == absl::StatusCode::kCancelled) {  // Wake()
    if (ignore_drain) {
      // Inside a command the drain does not interrupt; wait out the rest.
      co_return co_await ReadLine(max_len, line, ignore_drain, timeout);
    }
    co_return ReadResult::kWoken;
  }
  co_return read.status().code() == absl::StatusCode::kDeadlineExceeded ? ReadResult::kTimeout : ReadResult::kClosed;
}

asio::awaitable<void> Session::Sleep(std::chrono::milliseconds delay) {
  asio::steady_timer timer(co_await asio::this_coro::executor, delay);
  idle_timer_ = &timer;
  co_await timer.async_wait(kNoThrow);
  idle_timer_ = nullptr;
}

// The command loop. Replies go to out_ and are flushed only when the client
// has nothing more buffered: a pipelining client (RFC 2920) that sent MAIL,
// RCPT and DATA in one packet gets the three replies in one packet, in order,
// while a client that waits for each reply gets it at once.
asio::awaitable<void> Session::Dialogue() {
  const std::string& me = cfg_.me;
  Reply(absl::StrCat("220 ", me, " ESMTP Tern ready"));
  while (true) {
    if (core_->draining && !in_mail_) {
      Reply(absl::StrCat("421 4.3.2 ", me, " Service shutting down, closing connection"));
      co_await Flush();
      co_return;
    }
    if (!InputPending() && !co_await Flush()) {
      co_return;
    }
    net::Line line;
    ReadResult r = co_await ReadLine(cfg_.max_line_length, &line);
    if (r == ReadResult::kWoken) {
      continue;
    }
    if (r == ReadResult::kTimeout) {
      Reply(absl::StrCat("421 4.4.2 ", me, " Error: timeout exceeded"));
      co_await Flush();
      co_return;
    }
    if (r == ReadResult::kClosed) {
      co_return;
    }
    bool too_long = false;
    while (line.partial) {
      // Read and drop the rest of an over-long command line.
      too_long = true;
      r = co_await ReadLine(cfg_.max_line_length, &line, /*ignore_drain=*/true);
      if (r == ReadResult::kTimeout) {
        Reply(absl::StrCat("421 4.4.2 ", me, " Error: timeout exceeded"));
        co_await Flush();
        co_return;
      }
      if (r != ReadResult::kLine) {
        co_return;
      }
    }
    if (!too_long && absl::StartsWith(line.text, "PROXY ")) {
      // A PROXY line from a host not in [haproxy] hosts (Haraka answers
      // DENYSOFTDISCONNECT: a misconfigured proxy must not bounce mail).
      log::Event(log::Level::kNotice, "proxy_refused", {{"session", session_id_}, {"client", client_ip_}});
      Reply(absl::StrCat("421 4.7.0 ", me, " PROXY not allowed from ", client_ip_));
      co_await Flush();
      co_return;
    }
    smtp::ParseResult parsed;
    if (too_long) {
      parsed = smtp::CommandError{500, "5.5.2", "Error: line too long"};
    } else {
      smtp::ParseContext context;
      context.esmtp = esmtp_;
      context.smtputf8 = in_mail_ && mail_params_.smtputf8;
      parsed = smtp::ParseCommand(line.text, context);
    }
    if (auto* error = std::get_if<smtp::CommandError>(&parsed)) {
      absl::StrAppend(&out_, error->ToString());
      if (++errors_ >= kMaxErrors) {
        Reply(absl::StrCat("421 4.7.0 ", me, " Error: too many errors"));
        co_await Flush();
        co_return;
      }
      continue;
    }
    if (!co_await Handle(std::get<smtp::Command>(parsed))) {
      co_return;
    }
  }
}

void Session::Ehlo() {
  // Only what this server really implements is advertised.
  std::vector<std::string> lines = {
      absl::StrCat(cfg_.me, " Hello ", helo_, " [", client_ip_, "]"),
      "PIPELINING",
      absl::StrCat("SIZE ", cfg_.max_bytes),
      "8BITMIME",
      "ENHANCEDSTATUSCODES",
      "SMTPUTF8",
      "DSN",
      "CHUNKING",
  };
  if (settings_->tls && !conn_.tls()) {
    lines.push_back("STARTTLS");
  }
  if (conn_.tls()) {
    // RFC 8689 §4.1: a promise to relay such mail only over TLS with an
    // authenticated peer that offers REQUIRETLS too (the deliverer keeps
    // it); only where the message itself arrived over TLS.
    lines.push_back("REQUIRETLS");
  }
  if (cfg_.auth.enabled() && (conn_.tls() || !cfg_.auth.require_tls)) {
    lines.push_back(absl::StrCat("AUTH ", absl::StrJoin(cfg_.auth.methods, " ")));
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    Reply(absl::StrCat("250", i + 1 == lines.size() ? " " : "-", lines[i]));
  }
}

asio::awaitable<bool> Session::Handle(smtp::Command& cmd) {
  const std::string& me = cfg_.me;
  switch (cmd.verb) {
    case smtp::Verb::kEhlo:
    case smtp::Verb::kHelo:
      ResetTransaction();
      helo_ = cmd.argument;
      greeted_ = true;
      esmtp_ = cmd.verb == smtp::Verb::kEhlo;
      if (!esmtp_) {
        Reply(absl::StrCat("250 ", me, " Hello ", helo_, " [", client_ip_, "]"));
      } else {
        Ehlo();
      }
      co_return true;

    case smtp::Verb::kMail:
      if (!greeted_) {
        Reply("503 5.5.1 Error: send HELO/EHLO first");
      } else if (in_mail_) {
        Reply("503 5.5.1 Error: nested MAIL command");
      } else if (cmd.mail.size.has_value() && *cmd.mail.size > cfg_.max_bytes) {
        Metrics::Get().refused_size.Inc();
        Reply("552 5.3.4 Message size exceeds fixed maximum message size");
      } else if (cmd.mail.requiretls && !conn_.tls()) {
        // Not advertised in plain text: a message that demands TLS on every
        // hop cannot start with a hop in the clear.
        Reply("530 5.7.10 REQUIRETLS needs a TLS session: send STARTTLS first");
      } else {
        in_mail_ = true;
        ++transactions_;
        txn_id_ = absl::StrCat(session_id_, ".", transactions_);
        mail_from_ = std::move(cmd.path);
        mail_params_ = std::move(cmd.mail);
        Reply("250 2.1.0 Ok");
      }
      co_return true;

    case smtp::Verb::kRcpt:
      if (!in_mail_) {
        Reply("503 5.5.1 Error: need MAIL command");
      } else if (bdat_active_) {
        Reply("503 5.5.1 Error: RCPT after BDAT");
      } else if (rcpts_.size() >= cfg_.max_recipients) {
        Metrics::Get().refused_recipients.Inc();
        Reply("452 4.5.3 Error: too many recipients");
      } else if (cmd.path.domain.empty()) {
        // <Postmaster> without a domain: this relay has no local mailboxes.
        ++rcpts_refused_;
        Metrics::Get().refused_local.Inc();
        Reply(absl::StrCat("550 5.1.1 <", cmd.path.ToString(), ">: no local delivery on this relay"));
      } else if (!relay_allowed_ && !authenticated_) {
        ++rcpts_refused_;
        Metrics::Get().refused_relay.Inc();
        log::Event(log::Level::kNotice, "relay_denied",
                   {{"session", session_id_},
                    {"client", client_ip_},
                    {"helo", helo_},
                    {"from", mail_from_.ToString()},
                    {"rcpt", cmd.path.ToString()}});
        Reply("550 5.7.1 Relaying denied");
      } else if (absl::StatusOr<std::string> ascii = address::DomainToAscii(cmd.path.domain); !ascii.ok()) {
        // A UTF-8 domain with no A-label form can never be resolved: refuse
        // this recipient now rather than have the queue refuse the whole
        // message (451) after DATA.
        ++rcpts_refused_;
        Reply(absl::StrCat("553 5.1.2 <", cmd.path.ToString(), ">: domain is not a valid IDNA name"));
      } else {
        rcpts_.push_back(Recipient{std::move(cmd.path), cmd.rcpt.notify, std::move(cmd.rcpt.orcpt)});
        Reply("250 2.1.5 Ok");
      }
      co_return true;

    case smtp::Verb::kData:
      if (!in_mail_) {
        Reply("503 5.5.1 Error: need MAIL command");
        co_return true;
      }
      if (bdat_active_) {
        // RFC 3030 §3: DATA and BDAT do not mix in one transaction.
        Reply("503 5.5.1 Error: DATA after BDAT");
        co_return true;
      }
      if (rcpts_.empty()) {
        // RFC 2920 §3.1: a pipelined DATA after refused RCPTs gets 554.
        Reply(rcpts_refused_ > 0 ? "554 5.5.1 Error: no valid recipients" : "503 5.5.1 Error: need RCPT command");
        co_return true;
      }
      co_return co_await Data();

    case smtp::Verb::kBdat:
      co_return co_await Bdat(cmd);

    case smtp::Verb::kStarttls:
      co_return co_await StartTls();

    case smtp::Verb::kAuth:
      co_return co_await Auth(cmd);

    case smtp::Verb::kRset:
      ResetTransaction();
      Reply("250 2.0.0 Ok");
      co_return true;
    case smtp::Verb::kNoop:
      Reply("250 2.0.0 Ok");
      co_return true;
    case smtp::Verb::kQuit:
      Reply("221 2.0.0 Bye");
      co_await Flush();
      co_return false;
    case smtp::Verb::kVrfy:
      Reply("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
      co_return true;
    case smtp::Verb::kHelp:
      Reply("214 2.0.0 Tern ESMTP relay; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"
            " STARTTLS AUTH");
      co_return true;
    case smtp::Verb::kUnknown:
      Reply("502 5.5.1 Error: command not implemented");
      co_return true;
  }
  co_return true;
}

// RFC 3207. The client must send nothing after STARTTLS until the handshake:
// anything already buffered was sent in plaintext and could be a command a
// man in the middle injected to run inside the TLS session (CVE-2011-0411).
// Such a client is refused and disconnected. After the handshake the session
// starts over: no HELO, no transaction, no authentication (§4.2).
asio::awaitable<bool> Session::StartTls() {
  if (!settings_->tls) {
    Reply("502 5.5.1 Error: command not implemented");
    co_return true;
  }
  if (conn_.tls()) {
    Reply("503 5.5.1 Error: TLS already active");
    co_return true;
  }
  if (InputPending()) {
    log::Event(log::Level::kNotice, "starttls_pipelined", {{"session", session_id_}, {"client", client_ip_}});
    Reply("554 5.5.1 Error: command pipelined after STARTTLS");
    co_await Flush();
    co_return false;
  }
  // Taken here and passed in: GCC 12 miscompiled this coroutine (a ud2 on
  // its first resume) when TlsHandshake() took the context itself.
  std::shared_ptr<asio::ssl::context> ctx = settings_->tls->ForHandshake(require_client_cert_);
  Reply("220 2.0.0 Ready to start TLS");
  if (!co_await Flush()) {
    co_return false;
  }
  if (!co_await TlsHandshake(std::move(ctx))) {
    co_return false;
  }
  ResetTransaction();
  helo_.clear();
  greeted_ = false;
  esmtp_ = false;
  authenticated_ = false;
  auth_user_.clear();
  co_return true;
}

// One SASL round (RFC 4954 §4): sends `prompt` (a 334 reply) and reads the
// client's base64 answer.
asio::awaitable<Session::Challenge> Session::AskClient(absl::string_view prompt, std::string* decoded) {
  Reply(std::string(prompt));
  if (!co_await Flush()) {
    co_return Challenge::kEnd;
  }
  net::Line line;
  ReadResult r = co_await ReadLine(kAuthLineMax, &line, /*ignore_drain=*/true);
  bool too_long = false;
  while (r == ReadResult::kLine && line.partial) {
    too_long = true;
    r = co_await ReadLine(kAuthLineMax, &line, /*ignore_drain=*/true);
  }
  if (r == ReadResult::kTimeout) {
    Reply(absl::StrCat("421 4.4.2 ", cfg_.me, " Error: timeout exceeded"));
    co_await Flush();
    co_return Challenge::kEnd;
  }
  if (r != ReadResult::kLine) {
    co_return Challenge::kEnd;
  }
  if (too_long) {
    co_return Challenge::kTooLong;
  }
  if (line.text == "*") {
    co_return Challenge::kCancelled;
  }
  if (!DecodeBase64(line.text, decoded)) {
    co_return Challenge::kBadBase64;
  }
  co_return Challenge::kOk;
}

asio::awaitable<void> Session::AuthFailed(absl::string_view mechanism, absl::string_view user) {
  std::chrono::milliseconds delay;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    delay = core_->tarpit->Fail(client_ip_, std::chrono::steady_clock::now());
  }
  Metrics::Get().auth_failed.Inc();
  // The user name is client input (escaped by tern::log); the password is
  // never logged.
  log::Event(log::Level::kNotice, "auth_failed",
             {{"session", session_id_},
              {"client", client_ip_},
              {"method", mechanism},
              {"user", user},
              {"delay_ms", absl::StrCat(delay.count())}});
  // Flush first: the tarpit must not hold back replies already owed.
  co_await Flush();
  co_await Sleep(delay);
  Reply("535 5.7.8 Authentication credentials invalid");
  ++errors_;
}

asio::awaitable<bool> Session::Auth(const smtp::Command& cmd) {
  const AuthConfig& auth = cfg_.auth;
  if (!auth.enabled()) {
    Reply("502 5.5.1 Error: command not implemented");
    co_return true;
  }
  if (!esmtp_) {
    Reply("503 5.5.1 Error: send EHLO first");
    co_return true;
  }
  if (authenticated_) {
    Reply("503 5.5.1 Error: already authenticated");
    co_return true;
  }
  if (in_mail_) {
    Reply("503 5.5.1 Error: AUTH not permitted during a mail transaction");
    co_return true;
  }
  if (auth.require_tls && !conn_.tls()) {
    Reply("538 5.7.11 Encryption required for requested authentication mechanism");
    co_return true;
  }
  if (!auth.Offers(cmd.auth_mechanism)) {
    Reply("504 5.5.4 Unrecognized authentication type");
    co_return true;
  }
  const std::string& mech = cmd.auth_mechanism;

  // Collects one response: the initial response if the client sent one
  // (RFC 4954: "=" is an empty one), else a 334 round.
  std::string response;
  auto answer = [&](const std::optional<std::string>& initial, absl::string_view prompt) -> asio::awaitable<Challenge> {
    if (initial.has_value()) {
      if (*initial == "=") {
        response.clear();
        co_return Challenge::kOk;
      }
      co_return DecodeBase64(*initial, &response) ? Challenge::kOk : Challenge::kBadBase64;
    }
    co_return co_await AskClient(prompt, &response);
  };
  auto refuse = [&](Challenge c) {
    if (c == Challenge::kCancelled) {
      Reply("501 5.0.0 Authentication cancelled");
    } else if (c == Challenge::kBadBase64) {
      Reply("501 5.5.2 Cannot decode response");
    } else if (c == Challenge::kTooLong) {
      Reply("500 5.5.6 Authentication exchange line is too long");
    }
    ++errors_;
  };

  std::string user;
  bool ok = false;
  if (mech == "PLAIN") {
    Challenge c = co_await answer(cmd.auth_initial, "334 ");
    if (c != Challenge::kOk) {
      refuse(c);
      co_return c != Challenge::kEnd;
    }
    std::optional<PlainCredentials> creds = ParseSaslPlain(response);
    if (!creds.has_value()) {
      Reply("501 5.5.2 Invalid PLAIN response");
      ++errors_;
      co_return true;
    }
    user = creds->user;
    ok = co_await VerifyPassword(creds->user, creds->password);
    creds->password.assign(creds->password.size(), '\0');
  } else if (mech == "LOGIN") {
    Challenge c = co_await answer(cmd.auth_initial, "334 VXNlcm5hbWU6");  // "Username:"
    if (c != Challenge::kOk) {
      refuse(c);
      co_return c != Challenge::kEnd;
    }
    user = response;
    c = co_await AskClient("334 UGFzc3dvcmQ6", &response);  // "Password:"
    if (c != Challenge::kOk) {
      refuse(c);
      co_return c != Challenge::kEnd;
    }
    if (!user.empty()) {
      ok = co_await VerifyPassword(user, response);
    }
  } else {  // CRAM-MD5 (RFC 2195): a unique challenge, then "user digest".
    if (cmd.auth_initial.has_value()) {
      Reply("501 5.5.2 CRAM-MD5 takes no initial response");
      ++errors_;
      co_return true;
    }
    const std::string challenge =
        absl::StrCat("<", NewRandomToken().substr(0, 16), ".", absl::ToUnixSeconds(absl::Now()), "@", cfg_.me, ">");
    const std::string prompt = absl::StrCat("334 ", EncodeBase64(challenge));
    Challenge c = co_await AskClient(prompt, &response);
    if (c != Challenge::kOk) {
      refuse(c);
      co_return c != Challenge::kEnd;
    }
    std::optional<std::string> who = CheckCramMd5(challenge, response, auth.users);
    user = who.value_or(response.substr(0, response.rfind(' ')));
    ok = who.has_value();
  }
  response.assign(response.size(), '\0');  // do not keep the secret around

  if (!ok) {
    co_await AuthFailed(mech, user);
    if (errors_ >= kMaxErrors) {
      Reply(absl::StrCat("421 4.7.0 ", cfg_.me, " Error: too many errors"));
      co_await Flush();
      co_return false;
    }
    co_return true;
  }
  authenticated_ = true;
  auth_user_ = user;
  Metrics::Get().auth_ok.Inc();
  log::Event(log::Level::kInfo, "auth",
             {{"session", session_id_}, {"client", client_ip_}, {"method", mech}, {"user", user}});
  Reply("235 2.7.0 Authentication successful");
  co_return true;
}

uint64_t Session::DiscardLimit() const { return cfg_.max_bytes + std::max<uint64_t>(cfg_.max_bytes, kMinDiscardBytes); }

asio::awaitable<bool> Session::OpenBody() {
  queue_failed_ = false;
  if (cfg_.enqueue_inline_max == 0 || !core_->queue->ChannelReady()) {
    // Stream from the start: the call is open before 354, so a queue that
    // cannot be reached costs the client a 451, not an upload.
    if (!co_await OpenStream()) {
      absl::StatusOr<std::string> result = co_await body_call_->Finish();
      QueueFailure(result.ok() ? absl::UnavailableError("queue unavailable") : result.status());
      AbortBody();
      co_return false;
    }
  }
  smtp::AssemblerLimits limits;
  limits.max_bytes = cfg_.max_bytes;
  limits.max_line_length = cfg_.max_data_line_length;
  limits.max_header_lines = cfg_.max_header_lines;
  limits.max_received = cfg_.max_received;
  limits.strip_authentication_results = cfg_.clean_auth_results;
  const absl::Time now = absl::Now();
  assembler_ = std::make_unique<smtp::MessageAssembler>(
      limits, cfg_.add_received ? BuildReceived() : std::string(),
      absl::StrCat("Message-ID: <", NewRandomToken().substr(0, 24), ".", txn_id_, "@", cfg_.me, ">\r\n"),
      absl::StrCat("Date: ", mime::FormatRfc5322Date(now, absl::LocalTimeZone()), "\r\n"));
  co_return true;
}

// Opens the Enqueue stream and sends the header. False if that failed;
// body_call_ is then set and Finish() tells the queue's reason.
asio::awaitable<bool> Session::OpenStream() {
  // Never wait on the queue with replies still owed to the client.
  if (!co_await Flush()) {
    co_return false;
  }
  auto executor = co_await asio::this_coro::executor;
  body_call_ = core_->queue->StartEnqueue(executor, BuildHeader());
  call_ = body_call_.get();
  absl::Status started = co_await body_call_->Start();
  co_return started.ok();
}

bool Session::PushDue(bool all) const {
  if (assembler_->failed() || queue_failed_) {
    return true;  // a call to cancel, or output to drop
  }
  if (!body_call_) {
    return assembler_->pending() > cfg_.enqueue_inline_max;  // time to stream
  }
  return assembler_->pending() >= kChunkBytes || (all && assembler_->pending() > 0);
}

asio::awaitable<void> Session::PushBody(bool all) {
  if (!PushDue(all)) {
    co_return;
  }
  if (assembler_->failed()) {
    // Nothing of this message will be stored: let the queue drop it now.
    if (call_ != nullptr) {
      call_->Cancel();
    }
    co_return;
  }
  if (queue_failed_) {
    assembler_->TakeOutput();
    co_return;
  }
  if (!body_call_) {
    if (assembler_->pending() <= cfg_.enqueue_inline_max) {
      co_return;  // small so far: it may go whole (FinishBody)
    }
    // Too big to hold: stream it from here on.
    if (!co_await OpenStream()) {
      queue_failed_ = true;  // FinishBody asks the call why
      co_return;
    }
  }
  if (assembler_->pending() >= kChunkBytes || (all && assembler_->pending() > 0)) {
    // A named local, not a temporary, as the coroutine argument: g++ 12
    // mishandles non-trivial temporaries inside co_await expressions.
    std::string chunk = assembler_->TakeOutput();
    if (core_->hook) {
      hook_body_.append(chunk);  // the one copy the hook's request needs
    }
    absl::Status written = co_await body_call_->Write(std::move(chunk));
    if (!written.ok()) {
      queue_failed_ = true;
    }
  }
  co_return;
}

void Session::AbortBody() {
  if (call_ != nullptr) {
    call_->Cancel();
  }
  call_ = nullptr;
  body_call_.reset();
  assembler_.reset();
  bdat_active_ = false;
  std::string().swap(hook_body_);  // frees it: a session may idle for long
}

asio::awaitable<bool> Session::FinishBody() {
  assembler_->Finish();
  if (assembler_->failed()) {
    const smtp::MessageAssembler::Outcome outcome = assembler_->outcome();
    const uint64_t size = assembler_->size();
    AbortBody();
    const char* reason = "size_limit";
    if (outcome == smtp::MessageAssembler::Outcome::kTooBig) {
      Metrics::Get().refused_size.Inc();
      Reply("552 5.3.4 Message size exceeds fixed maximum message size");
    } else if (outcome == smtp::MessageAssembler::Outcome::kTooManyHeaderLines) {
      reason = "header_lines";
      Metrics::Get().refused_headers.Inc();
      Reply("552 5.3.4 Message header too large");
    } else {
      reason = "mail_loop";
      Metrics::Get().refused_loop.Inc();
      Reply("554 5.4.6 Too many hops (mail loop detected)");
    }
    log::Event(log::Level::kNotice, "refused",
               {{"session", session_id_},
                {"txn", txn_id_},
                {"client", client_ip_},
                {"reason", reason},
                {"size", absl::StrCat(size)}});
    ResetTransaction();
    co_return true;
  }
  if (assembler_->wrapped()) {
    log::Event(log::Level::kInfo, "data_line_wrapped",
               {{"txn", txn_id_}, {"limit", absl::StrCat(cfg_.max_data_line_length)}});
  }
  const uint64_t size = assembler_->size();
  absl::StatusOr<std::string> id;
  if (body_call_) {
    co_await PushBody(/*all=*/true);
    // Never wait on the queue with replies still buffered.
    if (!co_await Flush()) {
      co_return false;
    }
    // The stream has all of the body but is not half-closed, so the queue
    // has stored nothing yet: a hook that rejects or takes the message over
    // gets the call cancelled (by ResetTransaction). A stream that already
    // failed is answered 451 without asking the hook.
    if (core_->hook && !queue_failed_) {
      // The envelope the stream's header carried (BuildHeader() depends on
      // nothing that changes during DATA).
      tern::v1::EnqueueHeader header = BuildHeader();
      const bool decided = co_await HookDecides(std::move(*header.mutable_envelope()), &hook_body_, size);
      if (aborted_) {
        co_return false;
      }
      if (decided) {
        co_return true;
      }
    }
    std::string().swap(hook_body_);
    id = co_await body_call_->Finish();
    call_ = nullptr;
  } else {
    if (!co_await Flush()) {
      co_return false;
    }
    std::string body = assembler_->TakeOutput();
    tern::v1::EnqueueHeader header = BuildHeader();
    if (!header.envelope().body_8bit() && Has8BitOctets(body)) {
      // Whole in hand, the body can say what the client did not declare.
      header.mutable_envelope()->set_body_8bit(true);
    }
    if (core_->hook) {
      // A named copy, not a temporary, as the coroutine argument (g++ 12).
      tern::v1::Envelope envelope = header.envelope();
      const bool decided = co_await HookDecides(std::move(envelope), &body, size);
      if (aborted_) {
        co_return false;  // nothing is queued: the client never got a 250
      }
      if (decided) {
        co_return true;
      }
    }
    id = co_await core_->queue->EnqueueWhole(std::move(header), std::move(body));
  }
  if (!id.ok()) {
    QueueFailure(id.status());
    ResetTransaction();
    co_return true;
  }
  ++queued_;
  Metrics::Get().accepted.Inc();
  Metrics::Get().accepted_bytes.Inc(size);
  log::Event(log::Level::kInfo, "queued",
             {{"msg", *id},
              {"txn", txn_id_},
              {"from", mail_from_.ToString()},
              {"rcpts", absl::StrCat(rcpts_.size())},
              {"size", absl::StrCat(size)},
              {"client", client_ip_},
              {"tls", conn_.tls() ? "yes" : "no"},
              {"auth", auth_user_},
              {"via", bdat_active_ ? "BDAT" : "DATA"}});
  Reply(absl::StrCat("250 2.0.0 Ok: queued as ", *id));
  ResetTransaction();
  co_return true;
}

asio::awaitable<bool> Session::VerifyPassword(const std::string& user, const std::string& password) {
  const UserDb& users = cfg_.auth.users;
  // SlowToVerify first: a session whose settings have no slow hash never
  // reads auth_pool, which a reload may be setting (ServerCore::auth_pool).
  if (!users.SlowToVerify(user) || core_->auth_pool == nullptr) {
    co_return users.Verify(user, password);
  }
  // The references stay valid: this frame waits for the answer, and the
  // pool is joined before the configuration it reads goes away. co_spawn
  // hands the answer back through this coroutine's executor.
  co_return co_await asio::co_spawn(
      core_->auth_pool->get_executor(),
      [&users, &user, &password]() -> asio::awaitable<bool> { co_return users.Verify(user, password); },
      asio::use_awaitable);
}

// Haraka's queue_outbound, as the last step before the queue: the hook sees
// the envelope and body exactly as they would be queued. A failed call
// (logged by QueueOutboundHook) queues the message as usual.
asio::awaitable<bool> Session::HookDecides(tern::v1::Envelope envelope, std::string* body, uint64_t size) {
  const QueueOutboundDecision decision =
      co_await core_->hook->Decide(std::move(envelope), body, session_id_, txn_id_, &hook_call_);
  if (aborted_ || decision.action == QueueOutboundDecision::Action::kQueue) {
    co_return false;
  }
  const bool reject = decision.action == QueueOutboundDecision::Action::kReject;
  (reject ? Metrics::Get().refused_hook : Metrics::Get().taken_over).Inc();
  log::Event(reject ? log::Level::kNotice : log::Level::kInfo, reject ? "hook_rejected" : "message_taken_over",
             {{"session", session_id_},
              {"txn", txn_id_},
              {"from", mail_from_.ToString()},
              {"rcpts", absl::StrCat(rcpts_.size())},
              {"size", absl::StrCat(size)},
              {"client", client_ip_},
              {"reply", reject ? decision.reply : std::string()}});
  // TAKE_OVER: the hook has the message, so the client may forget it; the
  // transaction id is what the hook saw in the envelope's notes.
  Reply(reject ? decision.reply : absl::StrCat("250 2.0.0 Message accepted by hook, id ", txn_id_));
  ResetTransaction();  // cancels a stream: the queue stores nothing
  co_return true;
}

// DATA. The Enqueue call is opened and its header sent before 354, so an
// unreachable queue costs the client a 451 instead of the whole upload. The
// content then goes line by line through DotDecoder (transparency, the end
// marker; only CRLF.CRLF ends DATA: no SMTP smuggling) and MessageAssembler
// (line ends, wrapping, header policy, limits), and to the queue in
// kChunkBytes writes as it arrives. Over max.bytes the call is cancelled and
// the rest is read and dropped (up to DiscardLimit(); a client that goes on
// past that is disconnected), and the reply is 552 5.3.4.
asio::awaitable<bool> Session::Data() {
  const std::string& me = cfg_.me;
  if (!co_await OpenBody()) {
    ResetTransaction();
    co_return true;
  }
  Reply("354 End data with <CR><LF>.<CR><LF>");
  if (!co_await Flush()) {
    co_return false;
  }
  smtp::DotDecoder decoder;
  while (true) {
    // A line already in the read buffer is taken from there without a copy
    // (it is copied into the message anyway) and without a coroutine call:
    // a client's DATA arrives many lines per read. `text` is valid until
    // the next read, which comes after this line is in the assembler.
    net::Line line;
    net::LineView text;
    ReadResult r = ReadResult::kLine;
    if (std::optional<net::LineView> buffered = conn_.TakeBufferedLineView(kDataReadMax)) {
      text = *buffered;
    } else {
      r = co_await ReadLine(kDataReadMax, &line);
      if (r == ReadResult::kWoken) {
        continue;
      }
      text = net::LineView{line.text, line.partial, line.bare_lf};
    }
    if (r != ReadResult::kLine) {
      Metrics::Get().aborted.Inc();
      log::Event(log::Level::kNotice, "data_aborted",
                 {{"session", session_id_},
                  {"txn", txn_id_},
                  {"client", client_ip_},
                  {"reason", r == ReadResult::kTimeout ? "timeout" : "disconnect"}});
      AbortBody();
      if (r == ReadResult::kTimeout) {
        Reply(absl::StrCat("421 4.4.2 ", me, " Error: timeout exceeded"));
        co_await Flush();
      }
      co_return false;
    }
    const smtp::DotDecoder::Result d = decoder.Decode(text.text, text.partial, text.bare_lf);
    if (d.end) {
      break;
    }
    assembler_->Append(d.text);
    if (d.line_end) {
      assembler_->Append("\r\n");
    }
    if (assembler_->failed() && assembler_->size() > DiscardLimit()) {
      // A never-ending DATA: stop reading it.
      Metrics::Get().refused_size.Inc();
      log::Event(log::Level::kNotice, "refused",
                 {{"session", session_id_}, {"txn", txn_id_}, {"client", client_ip_}, {"reason", "endless_data"}});
      AbortBody();
      Reply("552 5.3.4 Message size exceeds fixed maximum message size");
      Reply(absl::StrCat("421 4.7.0 ", me, " Error: closing connection"));
      co_await Flush();
      co_return false;
    }
    if (PushDue(/*all=*/false)) {
      co_await PushBody(/*all=*/false);
    }
  }
  co_return co_await FinishBody();
}

// Reads exactly n octets (a BDAT chunk) into the assembler, or drops them
// when there is none. Inside a command, so a drain does not interrupt it.
asio::awaitable<Session::ReadResult> Session::ReadBytes(uint64_t n) {
  uint64_t remaining = n;
  while (remaining > 0) {
    const size_t ask = static_cast<size_t>(std::min<uint64_t>(remaining, kDataReadMax));
    auto bytes = co_await conn_.ReadBytes(ask, cfg_.inactivity_timeout);
    if (!bytes.ok()) {
      switch (bytes.status().code()) {
        case absl::StatusCode::kCancelled:
          continue;  // shutdown started: this command still finishes
        case absl::StatusCode::kDeadlineExceeded:
          co_return ReadResult::kTimeout;
        default:
          co_return ReadResult::kClosed;
      }
    }
    remaining -= bytes->size();
    if (assembler_) {
      assembler_->Append(*bytes);
      co_await PushBody(/*all=*/false);
    }
  }
  co_return ReadResult::kLine;
}

// BDAT (RFC 3030). The chunk's octets are read whatever the reply will be:
// they are not commands. The first chunk opens the Enqueue call, like DATA;
// each chunk goes through the same MessageAssembler and streams to the queue.
// The reply to a chunk is "250 2.0.0 <n> octets received"; to the LAST one,
// the queue's durable answer. A chunk that fails ends the transaction.
asio::awaitable<bool> Session::Bdat(const smtp::Command& cmd) {
  const std::string& me = cfg_.me;
  const uint64_t size = cmd.bdat_size;
  const uint64_t so_far = assembler_ ? assembler_->size() : 0;
  if (size > DiscardLimit() || so_far + size > DiscardLimit()) {
    // Not worth reading: refuse and close instead.
    Metrics::Get().refused_size.Inc();
    AbortBody();
    Reply("552 5.3.4 Message size exceeds fixed maximum message size");
    Reply(absl::StrCat("421 4.7.0 ", me, " Error: closing connection"));
    co_await Flush();
    co_return false;
  }
  std::string refusal;
  if (!esmtp_) {
    refusal = "503 5.5.1 Error: send EHLO first";
  } else if (!in_mail_) {
    refusal = "503 5.5.1 Error: need MAIL command";
  } else if (rcpts_.empty()) {
    refusal = rcpts_refused_ > 0 ? "554 5.5.1 Error: no valid recipients" : "503 5.5.1 Error: need RCPT command";
  }
  bool open_failed = false;
  if (refusal.empty() && !bdat_active_) {
    if (!co_await OpenBody()) {
      open_failed = true;  // 451/452 is already in out_
    } else {
      bdat_active_ = true;
    }
  }
  const ReadResult r = co_await ReadBytes(size);
  if (r != ReadResult::kLine) {
    if (bdat_active_) {
      Metrics::Get().aborted.Inc();
      log::Event(log::Level::kNotice, "data_aborted",
                 {{"session", session_id_},
                  {"txn", txn_id_},
                  {"client", client_ip_},
                  {"reason", r == ReadResult::kTimeout ? "timeout" : "disconnect"}});
    }
    AbortBody();
    if (r == ReadResult::kTimeout) {
      Reply(absl::StrCat("421 4.4.2 ", me, " Error: timeout exceeded"));
      co_await Flush();
    }
    co_return false;
  }
  if (!refusal.empty()) {
    Reply(refusal);
    co_return true;
  }
  if (open_failed) {
    ResetTransaction();
    co_return true;
  }
  if (assembler_->failed() && !cmd.bdat_last) {
    // Refuse now (RFC 3030 §2: the client must not send more chunks).
    assembler_->Finish();
    co_return co_await FinishBody();
  }
  if (queue_failed_ && body_call_) {
    absl::StatusOr<std::string> result = co_await body_call_->Finish();
    call_ = nullptr;
    QueueFailure(result.ok() ? absl::UnavailableError("queue write failed") : result.status());
    ResetTransaction();
    co_return true;
  }
  if (!cmd.bdat_last) {
    Reply(absl::StrCat("250 2.0.0 ", size, " octets received"));
    co_return true;
  }
  co_return co_await FinishBody();
}

void Session::QueueFailure(const absl::Status& status) {
  const bool full = status.code() == absl::StatusCode::kResourceExhausted;
  (full ? Metrics::Get().failed_queue_full : Metrics::Get().failed_queue_unavailable).Inc();
  log::Event(log::Level::kWarn, "queue_failed",
             {{"session", session_id_},
              {"txn", txn_id_},
              {"client", client_ip_},
              {"from", mail_from_.ToString()},
              {"rcpts", absl::StrCat(rcpts_.size())},
              {"status", status.ToString()}});
  // Our own failure is never 5xx: the client keeps the message and retries.
  Reply(full ? "452 4.3.1 Insufficient system storage, try again later"
             : "451 4.3.0 Queue unavailable, try again later");
}

void Session::ResetTransaction() {
  AbortBody();
  in_mail_ = false;
  txn_id_.clear();
  mail_from_ = {};
  mail_params_ = {};
  rcpts_.clear();
  rcpts_refused_ = 0;
}

tern::v1::EnqueueHeader Session::BuildHeader() const {
  tern::v1::EnqueueHeader header;
  tern::v1::Envelope* env = header.mutable_envelope();
  env->set_mail_from(mail_from_.ToString());
  for (const Recipient& r : rcpts_) {
    tern::v1::RecipientSpec* spec = env->add_recipients();
    spec->set_address(r.mailbox.ToString());
    spec->set_notify(r.notify);
    spec->set_orcpt(r.orcpt);
  }
  env->set_ret(ToProto(mail_params_.ret));
  env->set_envid(mail_params_.envid);
  env->set_smtputf8(mail_params_.smtputf8);
  env->set_requiretls(mail_params_.requiretls);
  // The header goes out before the body is read, so this is the client's
  // declaration (BODY=8BITMIME, or SMTPUTF8 which implies it), not a scan.
  env->set_body_8bit(mail_params_.body == smtp::BodyType::k8BitMime || mail_params_.smtputf8);
  tern::v1::ClientInfo* client = env->mutable_client();
  client->set_ip(client_ip_);
  client->set_port(client_port_);
  client->set_helo(helo_);
  client->set_tls(conn_.tls());
  client->set_tls_cipher(conn_.TlsDescription());
  if (conn_.tls()) {
    client->set_tls_client_verify(ClientCertificate::Name(client_cert_.verify));
    client->set_tls_client_subject(client_cert_.subject);
    client->set_tls_client_sha256(client_cert_.sha256);
  }
  client->set_auth_user(auth_user_);
  (*env->mutable_notes())["ingest_txn"] = txn_id_;
  return header;
}

std::string Session::BuildReceived() const {
  ReceivedInfo info;
  info.helo = helo_;
  info.client_ip = client_ip_;
  info.me = cfg_.me;
  info.comment = cfg_.received_comment;
  info.protocol = ReceivedProtocol(esmtp_, conn_.tls(), authenticated_, mail_params_.smtputf8);
  if (conn_.tls()) {
    info.tls_version = conn_.TlsVersion();
    info.tls_cipher = conn_.TlsCipher();
    info.tls_verify = ClientCertificate::Name(client_cert_.verify);
  }
  info.id = txn_id_;
  info.time = absl::Now();
  info.zone = absl::LocalTimeZone();
  return BuildReceivedHeader(info);
}

}  // namespace tern::ingest
