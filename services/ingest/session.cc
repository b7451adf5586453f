#include "services/ingest/session.h"

#include <chrono>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "asio/experimental/as_tuple.hpp"
#include "asio/experimental/awaitable_operators.hpp"
#include "asio/this_coro.hpp"
#include "asio/use_awaitable.hpp"
#include "lib/common/ids.h"
#include "lib/common/log.h"
#include "lib/metrics/metrics.h"
#include "lib/smtp/command_parser.h"
#include "services/ingest/queue_client.h"
#include "services/ingest/received_header.h"
#include "tern/v1/message.pb.h"

namespace tern::ingest {
namespace {

using asio::experimental::awaitable_operators::operator||;
constexpr auto kNoThrow = asio::experimental::as_tuple(asio::use_awaitable);

// Body bytes collected before one Enqueue write.
constexpr size_t kChunkBytes = 64 * 1024;
// RFC 5321 §4.5.3.1.8 asks for at least 100; more than this is refused with
// 452 4.5.3 (the client sends the rest in another transaction).
constexpr size_t kMaxRecipients = 1000;
// Bad commands before the session is closed (Postfix's hard error limit).
constexpr int kMaxErrors = 20;
// Our idle timer must fire before the connection's own read deadline, which
// would close the socket before we could say 421.
constexpr auto kReadBackstop = std::chrono::seconds(30);
constexpr auto kCloseTimeout = std::chrono::seconds(5);

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

}  // namespace

void ServerCore::CheckIdle() {
  if (!draining || !sessions.empty()) {
    return;
  }
  if (grace_timer) {
    grace_timer->cancel();
  }
  std::lock_guard<std::mutex> lock(idle_mu);
  idle = true;
  idle_cv.notify_all();
}

asio::awaitable<void> RunSession(asio::ip::tcp::socket socket, std::shared_ptr<ServerCore> core) {
  Session session(std::move(socket), std::move(core));
  co_await session.Run();
}

Session::Session(asio::ip::tcp::socket socket, std::shared_ptr<ServerCore> core)
    : core_(std::move(core)), cfg_(core_->config), conn_(std::move(socket)), session_id_(NewRandomToken().substr(0, 16)) {
  std::error_code ec;
  const auto remote = conn_.socket().remote_endpoint(ec);
  if (!ec) {
    asio::ip::address address = remote.address();
    if (address.is_v6() && address.to_v6().is_v4_mapped()) {
      address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
    }
    client_ip_ = address.to_string();
    client_port_ = remote.port();
  } else {
    client_ip_ = "unknown";
  }
  relay_allowed_ = cfg_.relay_acl.Allows(client_ip_);
  core_->sessions.insert(this);
  Metrics::Get().connections.Inc();
  Metrics::Get().active.Add(1);
}

Session::~Session() {
  Metrics::Get().active.Add(-1);
  core_->sessions.erase(this);
  core_->CheckIdle();
}

void Session::Wake() {
  woken_ = true;
  if (idle_timer_ != nullptr) {
    idle_timer_->cancel();
  }
}

void Session::Abort() {
  if (call_ != nullptr) {
    call_->Cancel();
  }
  conn_.Abort();
}

asio::awaitable<void> Session::Run() {
  log::Event(log::Level::kDebug, "connect",
             {{"session", session_id_}, {"client", client_ip_}, {"port", absl::StrCat(client_port_)},
              {"relay", relay_allowed_ ? "allowed" : "denied"}});
  try {
    co_await Dialogue();
  } catch (const std::exception& e) {
    // Only a bug gets here (every I/O error is a Status); log and close.
    log::Event(log::Level::kError, "session_error", {{"session", session_id_}, {"error", e.what()}});
  }
  if (call_ != nullptr) {
    call_->Cancel();
  }
  co_await conn_.Close(kCloseTimeout);
  log::Event(log::Level::kInfo, "disconnect",
             {{"session", session_id_},
              {"client", client_ip_},
              {"helo", helo_},
              {"transactions", absl::StrCat(transactions_)},
              {"queued", absl::StrCat(queued_)}});
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

asio::awaitable<Session::ReadResult> Session::ReadLine(size_t max_len, net::Line* line) {
  if (core_->draining && !in_mail_) {
    co_return ReadResult::kWoken;
  }
  asio::steady_timer timer(co_await asio::this_coro::executor, cfg_.inactivity_timeout);
  idle_timer_ = &timer;
  woken_ = false;
  auto result =
      co_await (conn_.ReadLine(max_len, cfg_.inactivity_timeout + kReadBackstop) || timer.async_wait(kNoThrow));
  idle_timer_ = nullptr;
  if (result.index() == 1) {
    co_return woken_ ? ReadResult::kWoken : ReadResult::kTimeout;
  }
  auto& read = std::get<0>(result);
  if (!read.ok()) {
    co_return ReadResult::kClosed;
  }
  *line = *std::move(read);
  co_return ReadResult::kLine;
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
    if (conn_.buffered() == 0 && !co_await Flush()) {
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
      r = co_await ReadLine(cfg_.max_line_length, &line);
      if (r == ReadResult::kTimeout) {
        Reply(absl::StrCat("421 4.4.2 ", me, " Error: timeout exceeded"));
        co_await Flush();
        co_return;
      }
      if (r != ReadResult::kLine) {
        co_return;
      }
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
        co_return true;
      }
      // Only what this server really implements is advertised.
      Reply(absl::StrCat("250-", me, " Hello ", helo_, " [", client_ip_, "]"));
      Reply("250-PIPELINING");
      Reply(absl::StrCat("250-SIZE ", cfg_.max_bytes));
      Reply("250-8BITMIME");
      Reply("250-ENHANCEDSTATUSCODES");
      Reply("250-SMTPUTF8");
      Reply("250 DSN");
      co_return true;

    case smtp::Verb::kMail:
      if (!greeted_) {
        Reply("503 5.5.1 Error: send HELO/EHLO first");
      } else if (in_mail_) {
        Reply("503 5.5.1 Error: nested MAIL command");
      } else if (cmd.mail.size.has_value() && *cmd.mail.size > cfg_.max_bytes) {
        Metrics::Get().refused_size.Inc();
        Reply("552 5.3.4 Message size exceeds fixed maximum message size");
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
      } else if (rcpts_.size() >= kMaxRecipients) {
        Metrics::Get().refused_recipients.Inc();
        Reply("452 4.5.3 Error: too many recipients");
      } else if (cmd.path.domain.empty()) {
        // <Postmaster> without a domain: this relay has no local mailboxes.
        ++rcpts_refused_;
        Metrics::Get().refused_local.Inc();
        Reply(absl::StrCat("550 5.1.1 <", cmd.path.ToString(), ">: no local delivery on this relay"));
      } else if (!relay_allowed_) {
        ++rcpts_refused_;
        Metrics::Get().refused_relay.Inc();
        log::Event(log::Level::kNotice, "relay_denied",
                   {{"session", session_id_},
                    {"client", client_ip_},
                    {"helo", helo_},
                    {"from", mail_from_.ToString()},
                    {"rcpt", cmd.path.ToString()}});
        Reply("550 5.7.1 Relaying denied");
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
      if (rcpts_.empty()) {
        // RFC 2920 §3.1: a pipelined DATA after refused RCPTs gets 554.
        Reply(rcpts_refused_ > 0 ? "554 5.5.1 Error: no valid recipients" : "503 5.5.1 Error: need RCPT command");
        co_return true;
      }
      co_return co_await Data();

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
      Reply("214 2.0.0 Tern ESMTP relay; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP");
      co_return true;
    case smtp::Verb::kStarttls:
    case smtp::Verb::kAuth:
    case smtp::Verb::kBdat:
    case smtp::Verb::kUnknown:
      Reply("502 5.5.1 Error: command not implemented");
      co_return true;
  }
  co_return true;
}

// DATA. The Enqueue call is opened and its header sent before 354, so an
// unreachable queue costs the client a 451 instead of the whole upload. The
// body is then streamed in kChunkBytes writes as lines arrive: dot-stuffing
// removed (RFC 5321 §4.5.2), lines longer than data_line_length wrapped with
// CRLF SPACE (Haraka's documented behaviour), bare LF ends normalised to
// CRLF. A lone "." ends DATA only when it ends in CRLF, so "<LF>.<LF>" can
// never end a message early (SMTP smuggling). Over max.bytes the call is
// cancelled, the rest is read and dropped, and the reply is 552 5.3.4.
asio::awaitable<bool> Session::Data() {
  const std::string& me = cfg_.me;
  auto executor = co_await asio::this_coro::executor;
  std::unique_ptr<EnqueueCall> call = core_->queue->StartEnqueue(executor, BuildHeader());
  call_ = call.get();
  absl::Status started = co_await call->Start();
  if (!started.ok()) {
    absl::StatusOr<std::string> result = co_await call->Finish();
    call_ = nullptr;
    QueueFailure(result.ok() ? started : result.status());
    ResetTransaction();
    co_return true;
  }
  Reply("354 End data with <CR><LF>.<CR><LF>");
  if (!co_await Flush()) {
    call_ = nullptr;
    co_return false;
  }

  std::string chunk = BuildReceived();
  uint64_t size = 0;
  bool too_big = false;
  bool queue_failed = false;
  bool continuing = false;  // the previous part was cut at data_line_length
  bool wrapped = false;
  while (true) {
    net::Line line;
    const ReadResult r = co_await ReadLine(cfg_.max_data_line_length, &line);
    if (r == ReadResult::kWoken) {
      continue;
    }
    if (r != ReadResult::kLine) {
      call->Cancel();
      call_ = nullptr;
      Metrics::Get().aborted.Inc();
      log::Event(log::Level::kNotice, "data_aborted",
                 {{"session", session_id_},
                  {"txn", txn_id_},
                  {"client", client_ip_},
                  {"reason", r == ReadResult::kTimeout ? "timeout" : "disconnect"}});
      if (r == ReadResult::kTimeout) {
        Reply(absl::StrCat("421 4.4.2 ", me, " Error: timeout exceeded"));
        co_await Flush();
      }
      co_return false;
    }
    absl::string_view text = line.text;
    const size_t before = chunk.size();
    if (!continuing) {
      if (!line.partial && !line.bare_lf && text == ".") {
        break;
      }
      if (!text.empty() && text.front() == '.' && !(line.bare_lf && text == ".")) {
        text.remove_prefix(1);
      }
    } else if (!text.empty()) {
      chunk += "\r\n ";
      wrapped = true;
    }
    chunk.append(text.data(), text.size());
    if (!line.partial) {
      chunk += "\r\n";
    }
    continuing = line.partial;
    size += chunk.size() - before;

    if (!too_big && size > cfg_.max_bytes) {
      too_big = true;
      call->Cancel();
    }
    if (too_big || queue_failed) {
      chunk.clear();
      continue;
    }
    if (chunk.size() >= kChunkBytes) {
      std::string out;
      out.swap(chunk);
      if (!(co_await call->Write(std::move(out))).ok()) {
        queue_failed = true;
      }
    }
  }

  if (too_big) {
    call_ = nullptr;
    Metrics::Get().refused_size.Inc();
    log::Event(log::Level::kNotice, "refused",
               {{"session", session_id_},
                {"txn", txn_id_},
                {"client", client_ip_},
                {"reason", "size_limit"},
                {"size", absl::StrCat(size)}});
    Reply("552 5.3.4 Message size exceeds fixed maximum message size");
    ResetTransaction();
    co_return true;
  }
  if (wrapped) {
    log::Event(log::Level::kInfo, "data_line_wrapped",
               {{"txn", txn_id_}, {"limit", absl::StrCat(cfg_.max_data_line_length)}});
  }
  if (!queue_failed && !chunk.empty()) {
    if (!(co_await call->Write(std::move(chunk))).ok()) {
      queue_failed = true;
    }
  }
  // Nothing is pending here (the 354 was flushed), but keep the rule: never
  // wait on the queue with replies still buffered.
  if (!co_await Flush()) {
    call_ = nullptr;
    co_return false;
  }
  absl::StatusOr<std::string> id = co_await call->Finish();
  call_ = nullptr;
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
              {"client", client_ip_}});
  Reply(absl::StrCat("250 2.0.0 Ok: queued as ", *id));
  ResetTransaction();
  co_return true;
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
  // The header goes out before the body is read, so this is the client's
  // declaration (BODY=8BITMIME, or SMTPUTF8 which implies it), not a scan.
  env->set_body_8bit(mail_params_.body == smtp::BodyType::k8BitMime || mail_params_.smtputf8);
  tern::v1::ClientInfo* client = env->mutable_client();
  client->set_ip(client_ip_);
  client->set_port(client_port_);
  client->set_helo(helo_);
  client->set_tls(conn_.tls());
  (*env->mutable_notes())["ingest_txn"] = txn_id_;
  return header;
}

std::string Session::BuildReceived() const {
  ReceivedInfo info;
  info.helo = helo_;
  info.client_ip = client_ip_;
  info.me = cfg_.me;
  info.protocol = ReceivedProtocol(esmtp_, conn_.tls(), /*authenticated=*/false, mail_params_.smtputf8);
  info.id = txn_id_;
  info.time = absl::Now();
  info.zone = absl::LocalTimeZone();
  return BuildReceivedHeader(info);
}

}  // namespace tern::ingest
