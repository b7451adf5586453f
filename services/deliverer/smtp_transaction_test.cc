// RunSmtpTransaction against a scripted SMTP server on 127.0.0.1:0 in the
// same io_context.
#include "services/deliverer/smtp_transaction.h"

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/experimental/as_tuple.hpp"
#include "asio/io_context.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/local/stream_protocol.hpp"
#include "asio/ssl/context.hpp"
#include "asio/use_awaitable.hpp"
#include "gtest/gtest.h"
#include "lib/net/connection.h"
#include "services/deliverer/test_certs.h"

// GCC 12 at -O2 reports a false -Wmismatched-new-delete for Asio's awaitable
// frame allocator in large coroutines (GCC bug 109224).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace tern::deliverer {
namespace {

using namespace std::chrono_literals;

struct Script {
  std::string banner = "220 mx.x.test ESMTP";
  std::string ehlo = "250-mx.x.test\r\n250-SIZE 1000000\r\n250 8BITMIME";
  std::string helo = "250 mx.x.test";
  std::string starttls = "220 2.0.0 Ready to start TLS";
  std::string auth = "235 2.7.0 Authentication successful";
  std::string mail = "250 2.1.0 Ok";
  std::map<std::string, std::string> rcpt;  // address -> reply; default 250
  std::string data = "354 End data with <CR><LF>.<CR><LF>";
  // DATA when no recipient was accepted (a pipelined DATA): Postfix's words.
  std::string data_without_rcpt = "554 5.5.1 Error: no valid recipients";
  std::string dot = "250 2.0.0 Ok: queued as 123";  // "CLOSE": hang up instead
  std::string rset = "250 2.0.0 Ok";
  // LMTP: one reply per accepted recipient after the dot; fewer than
  // accepted → hang up after the last one.
  bool lmtp = false;
  std::vector<std::string> lmtp_replies;
  // Read this many commands (MAIL + RCPTs) before answering any of them; a
  // client that does not pipeline never sends them all, and the test fails.
  size_t batch = 0;
  // Server TLS context for STARTTLS; null → "454" to STARTTLS.
  std::shared_ptr<asio::ssl::context> tls;
  // Implicit TLS (RFC 8314): the handshake with `tls` before the banner.
  bool implicit_tls = false;
  // After the 220 to STARTTLS, send plain text and hang up (handshake fails).
  bool break_tls = false;
  // At this step ("BANNER", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT",
  // "DATA", "DOT", "RSET") say nothing (stall) or hang up (close).
  std::string stall_at;
  std::string close_at;
  // Hang up right after answering the final dot.
  bool close_after_dot = false;
};

struct Seen {
  std::vector<std::string> commands;
  std::string body;  // raw DATA lines, CRLF-joined, before the dot
  std::string bdat;  // the bytes of every BDAT chunk, as received
  bool batched = false;
  // RSET arrived with more commands behind it in the same read (pipelined).
  bool rset_pipelined = false;
  // The last RCPT had more behind it in the same read (a pipelined DATA).
  bool rcpt_pipelined = false;
  int connections = 0;
  int open_now = 0;  // sessions the server is serving right now
  int open_max = 0;
  int quits = 0;
  bool tls = false;
};

asio::awaitable<void> Reply(net::Connection& c, const std::string& text) {
  (void)co_await c.Write(absl::StrCat(text, "\r\n"), 5s);
}

// True (after stalling or hanging up) when the script stops at `step`.
asio::awaitable<bool> StopsAt(net::Connection& c, const Script& script, const std::string& step) {
  if (script.close_at == step) {
    c.Abort();
    co_return true;
  }
  if (script.stall_at == step) {
    // Say nothing until the client gives up and closes.
    (void)co_await c.ReadLine(1000, 30s);
    (void)co_await c.ReadLine(1000, 30s);
    co_return true;
  }
  co_return false;
}

// Answers a whole message (after the final dot, or the BDAT LAST chunk)
// for `accepted` recipients as `script` says. False when the server hung up.
asio::awaitable<bool> AnswerMessage(net::Connection& c, const Script& script, size_t accepted) {
  if (script.dot == "CLOSE" || co_await StopsAt(c, script, "DOT")) {
    c.Abort();
    co_return false;
  }
  if (script.lmtp) {
    for (size_t i = 0; i < accepted; ++i) {
      if (i >= script.lmtp_replies.size()) {
        c.Abort();
        co_return false;
      }
      co_await Reply(c, script.lmtp_replies[i]);
    }
  } else {
    co_await Reply(c, script.dot);
  }
  if (script.close_after_dot) {
    c.Abort();
    co_return false;
  }
  co_return true;
}

asio::awaitable<void> ServeSession(net::Connection& c, const Script& script, Seen* seen) {
  ++seen->connections;
  if (script.implicit_tls) {
    if (!(co_await c.StartTlsServer(script.tls, 5s)).ok()) {
      co_return;
    }
    seen->tls = true;
  }
  if (co_await StopsAt(c, script, "BANNER")) {
    co_return;
  }
  co_await Reply(c, script.banner);
  auto rcpt_reply = [&](const std::string& line) {
    std::string addr = line.substr(line.find('<') + 1);
    addr = addr.substr(0, addr.find('>'));
    auto it = script.rcpt.find(addr);
    return it == script.rcpt.end() ? std::string("250 2.1.5 Ok") : it->second;
  };
  size_t accepted = 0;
  for (;;) {
    auto line = co_await c.ReadLine(1000, 10s);
    if (!line.ok()) {
      co_return;
    }
    const std::string cmd = line->text;
    seen->commands.push_back(cmd);
    const std::string verb = cmd.substr(0, cmd.find(' '));
    // Named, not a temporary inside the co_await (GCC 12 destroys
    // conditional-expression temporaries there twice).
    const std::string step = verb == "LHLO" ? std::string("EHLO") : verb;
    if (verb != "QUIT" && co_await StopsAt(c, script, step)) {
      co_return;
    }
    if (verb == "EHLO" || verb == "LHLO") {
      accepted = 0;
      co_await Reply(c, script.ehlo);
    } else if (verb == "HELO") {
      co_await Reply(c, script.helo);
    } else if (verb == "STARTTLS") {
      if (!script.tls && !script.break_tls) {
        co_await Reply(c, "454 4.7.0 TLS not available");
        continue;
      }
      co_await Reply(c, script.starttls);
      if (!absl::StartsWith(script.starttls, "220")) {
        continue;
      }
      if (script.break_tls) {
        co_await Reply(c, "this is not a TLS server hello");
        c.Abort();
        co_return;
      }
      if (!(co_await c.StartTlsServer(script.tls, 5s)).ok()) {
        co_return;
      }
      seen->tls = true;
    } else if (verb == "AUTH") {
      const std::string mech = cmd.substr(5, cmd.find(' ', 5) == std::string::npos ? std::string::npos
                                                                                     : cmd.find(' ', 5) - 5);
      std::vector<std::string> challenges;
      if (mech == "LOGIN") {
        challenges = {"334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"};
      } else if (mech == "CRAM-MD5") {
        challenges = {"334 PDEyMzQ1QGV4YW1wbGU+"};
      }
      bool ok = true;
      for (const auto& ch : challenges) {
        co_await Reply(c, ch);
        auto answer = co_await c.ReadLine(1000, 10s);
        if (!answer.ok()) {
          co_return;
        }
        seen->commands.push_back(answer->text);
        ok = ok && answer->text != "*";
      }
      co_await Reply(c, script.auth);
    } else if (verb == "RSET") {
      seen->rset_pipelined = c.buffered() > 0;
      accepted = 0;
      co_await Reply(c, script.rset);
    } else if (verb == "MAIL") {
      std::vector<std::string> batch = {cmd};
      if (script.batch > 0) {
        while (batch.size() < script.batch) {
          auto more = co_await c.ReadLine(1000, 2s);
          if (!more.ok()) {
            break;
          }
          seen->commands.push_back(more->text);
          batch.push_back(more->text);
        }
        seen->batched = batch.size() == script.batch;
      }
      co_await Reply(c, script.mail);
      for (size_t i = 1; i < batch.size(); ++i) {
        const std::string r = rcpt_reply(batch[i]);
        accepted += absl::StartsWith(r, "2") ? 1 : 0;
        co_await Reply(c, r);
      }
    } else if (verb == "RCPT") {
      seen->rcpt_pipelined = c.buffered() > 0;
      const std::string r = rcpt_reply(cmd);
      accepted += absl::StartsWith(r, "2") ? 1 : 0;
      co_await Reply(c, r);
    } else if (verb == "DATA") {
      const std::string& answer = accepted > 0 ? script.data : script.data_without_rcpt;
      co_await Reply(c, answer);
      if (!absl::StartsWith(answer, "354")) {
        continue;
      }
      std::vector<std::string> lines;
      for (;;) {
        auto body = co_await c.ReadLine(1000, 10s);
        if (!body.ok()) {
          co_return;
        }
        if (body->text == ".") {
          break;
        }
        lines.push_back(body->text);
      }
      seen->body = absl::StrJoin(lines, "\r\n");
      if (!co_await AnswerMessage(c, script, accepted)) {
        co_return;
      }
      accepted = 0;
    } else if (verb == "BDAT") {
      // RFC 3030: "BDAT <size> [LAST]", then exactly <size> bytes.
      const std::vector<std::string> words = absl::StrSplit(cmd, ' ');
      size_t size = 0;
      if (words.size() < 2 || !absl::SimpleAtoi(words[1], &size)) {
        co_await Reply(c, "501 5.5.4 bad BDAT");
        continue;
      }
      const bool last = words.size() > 2 && words[2] == "LAST";
      size_t got = 0;
      while (got < size) {
        auto bytes = co_await c.ReadBytes(size - got, 10s);
        if (!bytes.ok()) {
          co_return;
        }
        got += bytes->size();
        seen->bdat += *bytes;
      }
      if (accepted == 0) {
        co_await Reply(c, script.data_without_rcpt);
        continue;
      }
      if (!last) {
        co_await Reply(c, absl::StrCat("250 2.0.0 ", size, " bytes received"));
        continue;
      }
      if (!co_await AnswerMessage(c, script, accepted)) {
        co_return;
      }
      accepted = 0;
    } else if (verb == "QUIT") {
      ++seen->quits;
      co_await Reply(c, "221 2.0.0 Bye");
      co_return;
    } else {
      co_await Reply(c, "500 5.5.2 what?");
    }
  }
}

asio::awaitable<void> ServeOne(asio::ip::tcp::socket socket, Script script, Seen* seen) {
  net::Connection c(std::move(socket));
  seen->open_max = std::max(seen->open_max, ++seen->open_now);
  co_await ServeSession(c, script, seen);
  --seen->open_now;
}

// Accepts sessions until the acceptor is closed.
asio::awaitable<void> Serve(asio::ip::tcp::acceptor& acceptor, Script script, Seen* seen) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::experimental::as_tuple(asio::use_awaitable));
    if (ec) {
      co_return;
    }
    asio::co_spawn(acceptor.get_executor(), ServeOne(std::move(socket), script, seen), asio::detached);
  }
}

class SmtpTransactionTest : public ::testing::Test {
 protected:
  TransactionRequest Request(std::vector<RecipientRequest> rcpts, uint16_t port) {
    TransactionRequest r;
    r.helo_name = "tern.test";
    r.mx_host = "mx.x.test";
    r.ip = "127.0.0.1";
    r.port = port;
    r.mail_from = "sender@a.test";
    r.recipients = std::move(rcpts);
    r.body = std::make_shared<const std::string>("Subject: hi\r\n\r\n.hidden line\r\nlast");
    r.tls = TlsMode::kNone;
    for (auto* t : {&r.timeouts.connect, &r.timeouts.banner, &r.timeouts.ehlo, &r.timeouts.starttls,
                    &r.timeouts.auth, &r.timeouts.mail, &r.timeouts.rcpt, &r.timeouts.data, &r.timeouts.final_dot,
                    &r.timeouts.rset}) {
      *t = 2s;
    }
    return r;
  }

  uint16_t StartServer(const Script& script, Seen* seen) {
    acceptors_.push_back(std::make_unique<asio::ip::tcp::acceptor>(
        io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)));
    asio::co_spawn(io_, Serve(*acceptors_.back(), script, seen), asio::detached);
    return acceptors_.back()->local_endpoint().port();
  }

  TransactionResult RunRequest(TransactionRequest request) {
    io_.restart();
    std::optional<absl::StatusOr<TransactionResult>> result;
    asio::co_spawn(io_, RunSmtpTransaction(std::move(request)),
                   [&](std::exception_ptr e, absl::StatusOr<TransactionResult> r) {
                     EXPECT_FALSE(e);
                     result = std::move(r);
                   });
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!result && std::chrono::steady_clock::now() < deadline) {
      io_.run_one_for(100ms);
    }
    EXPECT_TRUE(result.has_value());
    if (!result || !result->ok()) {
      ADD_FAILURE() << (result ? result->status().ToString() : "no result");
      return TransactionResult();
    }
    return **result;
  }

  // Runs one transaction against `script`; returns the result and what the
  // server saw.
  TransactionResult Run(const Script& script, std::vector<RecipientRequest> rcpts, Seen* seen,
                        std::function<void(TransactionRequest&)> tweak = nullptr) {
    const uint16_t port = StartServer(script, seen);
    TransactionRequest request = Request(std::move(rcpts), port);
    if (tweak) {
      tweak(request);
    }
    return RunRequest(std::move(request));
  }

  // Runs `requests` at once; returns their results in order. `sample`, if
  // given, runs after every handler meanwhile.
  std::vector<TransactionResult> RunTogether(std::vector<TransactionRequest> requests,
                                             std::function<void()> sample = nullptr) {
    io_.restart();
    std::vector<std::optional<absl::StatusOr<TransactionResult>>> results(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      asio::co_spawn(io_, RunSmtpTransaction(std::move(requests[i])),
                     [&results, i](std::exception_ptr e, absl::StatusOr<TransactionResult> r) {
                       EXPECT_FALSE(e);
                       results[i] = std::move(r);
                     });
    }
    auto all = [&] {
      return std::all_of(results.begin(), results.end(), [](const auto& r) { return r.has_value(); });
    };
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (!all() && std::chrono::steady_clock::now() < deadline) {
      io_.run_one_for(100ms);
      if (sample) {
        sample();
      }
    }
    std::vector<TransactionResult> out;
    for (auto& r : results) {
      EXPECT_TRUE(r.has_value() && r->ok());
      out.push_back(r && r->ok() ? **r : TransactionResult());
    }
    return out;
  }

  // Runs `n` transactions to `port` through `pool` at once; `*most_open`
  // gets the most connections the pool counted to that destination.
  std::vector<TransactionResult> RunBurst(ConnectionPool& pool, uint16_t port, int n, size_t* most_open) {
    std::vector<TransactionRequest> requests;
    for (int i = 0; i < n; ++i) {
      TransactionRequest r = Request({"a@x.test"}, port);
      r.pool = &pool;
      requests.push_back(std::move(r));
    }
    const std::string destination = Destination(requests[0]);
    *most_open = 0;
    return RunTogether(std::move(requests), [&] { *most_open = std::max(*most_open, pool.open(destination)); });
  }

  // Lets background work (pool QUITs, server sessions) run for `d`.
  void Settle(std::chrono::milliseconds d) {
    io_.restart();
    io_.run_for(d);
  }

  asio::io_context io_;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> acceptors_;
};

bool Sent(const Seen& seen, absl::string_view prefix) {
  for (const auto& c : seen.commands) {
    if (absl::StartsWith(c, prefix)) {
      return true;
    }
  }
  return false;
}

TEST_F(SmtpTransactionTest, AllRecipientsAccepted) {
  Seen seen;
  TransactionResult r = Run(Script(), {"a@x.test", "b@x.test"}, &seen);
  ASSERT_EQ(r.outcomes.size(), 2u);
  for (const auto& o : r.outcomes) {
    ASSERT_TRUE(o.has_value());
    EXPECT_EQ(o->outcome, OutcomeClass::kDelivered);
    EXPECT_EQ(o->reply_code, 250);
    EXPECT_EQ(o->enhanced_status, "2.0.0");
    EXPECT_EQ(o->reply_text, "Ok: queued as 123");
    EXPECT_EQ(o->remote_mta, "mx.x.test");
    EXPECT_EQ(o->remote_ip, "127.0.0.1");
    EXPECT_GT(o->at_unix_ms, 0);
  }
  EXPECT_TRUE(r.connected);
  EXPECT_FALSE(r.unreachable);
  EXPECT_TRUE(r.failure.empty());
  // SIZE offered: declared; dot-stuffed body arrives with the dot doubled and
  // a CRLF added to the last line.
  EXPECT_EQ(seen.commands[1], absl::StrCat("MAIL FROM:<sender@a.test> SIZE=", 33));
  EXPECT_EQ(seen.body, "Subject: hi\r\n\r\n..hidden line\r\nlast");
  EXPECT_EQ(seen.commands.back(), "QUIT");
}

TEST_F(SmtpTransactionTest, OneRecipientRejectedOneAccepted) {
  Script script;
  script.rcpt["bad@x.test"] = "550 5.1.1 <bad@x.test>: Recipient address rejected: User unknown";
  Seen seen;
  TransactionResult r = Run(script, {"bad@x.test", "good@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r.outcomes[0]->reply_code, 550);
  EXPECT_EQ(r.outcomes[0]->enhanced_status, "5.1.1");
  EXPECT_EQ(r.outcomes[0]->reply_text, "<bad@x.test>: Recipient address rejected: User unknown");
  EXPECT_EQ(r.outcomes[1]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(Sent(seen, "DATA"));
}

TEST_F(SmtpTransactionTest, TempfailAtRcptIsTransientAndSkipsData) {
  Script script;
  script.rcpt["a@x.test"] = "451 4.3.0 Try again later";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kTransient);
  EXPECT_EQ(r.outcomes[0]->reply_code, 451);
  EXPECT_EQ(r.outcomes[0]->enhanced_status, "4.3.0");
  EXPECT_FALSE(Sent(seen, "DATA"));
  EXPECT_TRUE(Sent(seen, "QUIT"));
}

TEST_F(SmtpTransactionTest, PermanentReplyToDataAppliesToAcceptedRecipients) {
  Script script;
  script.rcpt["no@x.test"] = "550 5.1.1 unknown";
  script.data = "554 5.6.0 Message content rejected";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "no@x.test", "b@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1] && r.outcomes[2]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r.outcomes[0]->enhanced_status, "5.6.0");
  EXPECT_EQ(r.outcomes[1]->enhanced_status, "5.1.1");  // keeps its own RCPT reply
  EXPECT_EQ(r.outcomes[2]->reply_code, 554);
}

TEST_F(SmtpTransactionTest, ConnectionClosedAfterDotIsTransientAndAmbiguous) {
  Script script;
  script.dot = "CLOSE";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kTransient);
  EXPECT_EQ(r.outcomes[0]->reply_code, 0);
  EXPECT_NE(r.outcomes[0]->reply_text.find("after the final dot"), std::string::npos) << r.outcomes[0]->reply_text;
  EXPECT_NE(r.outcomes[0]->reply_text.find("may have been delivered"), std::string::npos);
  EXPECT_TRUE(r.outcomes[0]->ambiguous);
  EXPECT_TRUE(r.data_sent);
}

TEST_F(SmtpTransactionTest, PipelinesMailAndRcptsAndMapsRepliesInOrder) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250-PIPELINING\r\n250 8BITMIME";
  script.batch = 4;  // MAIL + 3 RCPT in one go
  script.rcpt["r1@x.test"] = "250 2.1.5 one";
  script.rcpt["r2@x.test"] = "550 5.1.1 two";
  script.rcpt["r3@x.test"] = "452 4.2.2 three";
  Seen seen;
  TransactionResult r = Run(script, {"r1@x.test", "r2@x.test", "r3@x.test"}, &seen, [](TransactionRequest& req) {
    req.body_8bit = true;
  });
  EXPECT_TRUE(seen.batched);
  EXPECT_EQ(seen.commands[1], "MAIL FROM:<sender@a.test> BODY=8BITMIME");
  EXPECT_EQ(seen.commands[2], "RCPT TO:<r1@x.test>");
  EXPECT_EQ(seen.commands[4], "RCPT TO:<r3@x.test>");
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1] && r.outcomes[2]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);  // the DATA reply
  EXPECT_EQ(r.outcomes[1]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r.outcomes[1]->reply_text, "two");
  EXPECT_EQ(r.outcomes[2]->outcome, OutcomeClass::kTransient);
  EXPECT_EQ(r.outcomes[2]->enhanced_status, "4.2.2");
}

TEST_F(SmtpTransactionTest, WithoutPipeliningSendsOneCommandAtATime) {
  Script script;
  script.ehlo = "250 mx.x.test";  // nothing offered
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "b@x.test"}, &seen, [](TransactionRequest& req) {
    req.body_8bit = true;  // not offered: no BODY= parameter
  });
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1]);
  EXPECT_EQ(seen.commands[1], "MAIL FROM:<sender@a.test>");
  EXPECT_EQ(seen.commands[2], "RCPT TO:<a@x.test>");
  EXPECT_EQ(seen.commands[3], "RCPT TO:<b@x.test>");
  EXPECT_EQ(seen.commands[4], "DATA");
}

TEST_F(SmtpTransactionTest, Reply251CountsAsDelivered) {
  Script script;
  script.rcpt["fwd@x.test"] = "251 2.1.5 User not local; will forward to <x@y.test>";
  Seen seen;
  TransactionResult r = Run(script, {"fwd@x.test", "b@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r.outcomes[1]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(Sent(seen, "DATA"));
}

TEST_F(SmtpTransactionTest, EnhancedCode5726FromMailFromIsKeptForAll) {
  Script script;
  script.mail = "550 5.7.26 Unauthenticated email from a.test is not accepted due to domain's DMARC policy";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "b@x.test"}, &seen);
  for (const auto& o : r.outcomes) {
    ASSERT_TRUE(o);
    EXPECT_EQ(o->outcome, OutcomeClass::kPermanent);
    EXPECT_EQ(o->enhanced_status, "5.7.26");
    EXPECT_EQ(o->reply_code, 550);
  }
  EXPECT_FALSE(Sent(seen, "RCPT"));
}

TEST_F(SmtpTransactionTest, ConnectionRefusedLeavesRecipientsUndecided) {
  uint16_t port = 0;
  {
    asio::ip::tcp::acceptor probe(io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    port = probe.local_endpoint().port();
  }
  std::optional<absl::StatusOr<TransactionResult>> result;
  asio::co_spawn(io_, RunSmtpTransaction(Request({"a@x.test"}, port)),
                 [&](std::exception_ptr, absl::StatusOr<TransactionResult> r) { result = std::move(r); });
  io_.run_for(10s);
  ASSERT_TRUE(result && result->ok());
  const TransactionResult& r = **result;
  EXPECT_FALSE(r.connected);
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_NE(r.failure.find(absl::StrCat("connect to mx.x.test[127.0.0.1]:", port, ": ")), std::string::npos)
      << r.failure;
  EXPECT_NE(r.failure.find("refused"), std::string::npos) << r.failure;
  EXPECT_EQ(r.failure_enhanced, "4.4.1");
  EXPECT_TRUE(r.unreachable);  // counts toward suspending the address
}

TEST_F(SmtpTransactionTest, Banner421MovesOnWithTheReply) {
  Script script;
  script.banner = "421 4.3.2 Too busy, try later";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_code, 421);
  EXPECT_EQ(r.failure_enhanced, "4.3.2");
  EXPECT_NE(r.failure.find("421 4.3.2 Too busy"), std::string::npos) << r.failure;
  EXPECT_TRUE(r.unreachable);
}

TEST_F(SmtpTransactionTest, Banner554IsNotABounce) {
  Script script;
  script.banner = "554 5.7.1 go away";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_code, 0);
  EXPECT_EQ(r.failure_enhanced, "4.7.1");
  EXPECT_TRUE(r.unreachable);
}

TEST_F(SmtpTransactionTest, GarbageReplyIsASessionFailureNotACrash) {
  Script script;
  script.ehlo = "hello there";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_enhanced, "4.5.0");
  EXPECT_NE(r.failure.find("hello there"), std::string::npos) << r.failure;
  EXPECT_FALSE(r.unreachable);  // it greeted: a protocol problem, not an absent host
}

TEST_F(SmtpTransactionTest, FallsBackToHeloWhenEhloIsRejected) {
  Script script;
  script.ehlo = "502 5.5.1 EHLO not implemented";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(Sent(seen, "HELO tern.test"));
  EXPECT_EQ(seen.commands[2], "MAIL FROM:<sender@a.test>");  // no SIZE: nothing known
}

TEST_F(SmtpTransactionTest, Rcpt421LeavesThatAndLaterRecipientsUndecided) {
  Script script;
  script.rcpt["a@x.test"] = "550 5.1.1 unknown";
  script.rcpt["b@x.test"] = "421 4.4.2 closing";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "b@x.test", "c@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kPermanent);
  EXPECT_FALSE(r.outcomes[1].has_value());
  EXPECT_FALSE(r.outcomes[2].has_value());
  EXPECT_EQ(r.failure_code, 421);
  EXPECT_FALSE(Sent(seen, "DATA"));
  EXPECT_FALSE(r.unreachable);  // a 421 after the greeting ends this session only
}

TEST_F(SmtpTransactionTest, NonAsciiAddressNeedsSmtputf8) {
  Seen seen;
  TransactionResult r = Run(Script(), {"jøran@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r.outcomes[0]->enhanced_status, "5.6.7");

  Script utf8;
  utf8.ehlo = "250-mx.x.test\r\n250 SMTPUTF8";
  Seen seen2;
  TransactionResult r2 = Run(utf8, {"jøran@x.test"}, &seen2);
  ASSERT_TRUE(r2.outcomes[0]);
  EXPECT_EQ(r2.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(seen2.commands[1], "MAIL FROM:<sender@a.test> SMTPUTF8");
}

TEST_F(SmtpTransactionTest, RequireTlsNeedsTheHostToOfferItAndIsSentOnMailFrom) {
  // Not offered: nothing sent, the recipients left for the next MX host
  // (the deliverer bounces with 5.7.30 when none offers it).
  Seen seen;
  TransactionResult r = Run(Script(), {"a@x.test", "b@x.test"}, &seen,
                            [](TransactionRequest& req) { req.requiretls = true; });
  for (const auto& o : r.outcomes) {
    EXPECT_FALSE(o);
  }
  EXPECT_TRUE(r.requiretls_missing);
  EXPECT_EQ(r.failure_enhanced, "5.7.30");
  EXPECT_NE(r.failure.find("REQUIRETLS is required by the sender, but was not offered by host"), std::string::npos)
      << r.failure;
  EXPECT_FALSE(r.unreachable);
  EXPECT_FALSE(Sent(seen, "MAIL FROM:<sender@a.test>"));
  EXPECT_FALSE(Sent(seen, "DATA"));

  // Offered: MAIL FROM carries it, and the message goes.
  Script offers;
  offers.ehlo = "250-mx.x.test\r\n250 REQUIRETLS";
  Seen seen2;
  TransactionResult r2 = Run(offers, {"a@x.test"}, &seen2, [](TransactionRequest& req) { req.requiretls = true; });
  ASSERT_TRUE(r2.outcomes[0]);
  EXPECT_EQ(r2.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(seen2.commands[1], "MAIL FROM:<sender@a.test> REQUIRETLS");

  // Without the request nothing changes, whatever the host offers.
  Seen seen3;
  TransactionResult r3 = Run(offers, {"a@x.test"}, &seen3);
  ASSERT_TRUE(r3.outcomes[0]);
  EXPECT_EQ(seen3.commands[1], "MAIL FROM:<sender@a.test>");
}

TEST_F(SmtpTransactionTest, ReplyTimeoutIsAFailureWithinTheDeadline) {
  asio::ip::tcp::acceptor acceptor(io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  // Accepts but never says anything.
  std::optional<asio::ip::tcp::socket> held;
  acceptor.async_accept([&](const asio::error_code&, asio::ip::tcp::socket s) { held.emplace(std::move(s)); });
  TransactionRequest request = Request({"a@x.test"}, acceptor.local_endpoint().port());
  request.timeouts.banner = 300ms;
  std::optional<absl::StatusOr<TransactionResult>> result;
  const auto start = std::chrono::steady_clock::now();
  asio::co_spawn(io_, RunSmtpTransaction(std::move(request)),
                 [&](std::exception_ptr, absl::StatusOr<TransactionResult> r) { result = std::move(r); });
  while (!result && std::chrono::steady_clock::now() - start < 10s) {
    io_.run_one_for(100ms);
  }
  ASSERT_TRUE(result && result->ok());
  EXPECT_FALSE((*result)->outcomes[0].has_value());
  EXPECT_NE((*result)->failure.find("timeout"), std::string::npos) << (*result)->failure;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
}

// ---- AUTH (facts §7 vectors on the wire) ----------------------------------

TEST_F(SmtpTransactionTest, AuthPlainSendsTheFactsVector) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 AUTH PLAIN LOGIN";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [](TransactionRequest& req) {
    req.auth_user = "u";
    req.auth_pass = "p";
  });
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r.auth_mechanism, "PLAIN");
  EXPECT_EQ(r.outcomes[0]->auth_mechanism, "PLAIN");
  EXPECT_EQ(seen.commands[1], "AUTH PLAIN AHUAcA==");
  EXPECT_EQ(seen.commands[2], "MAIL FROM:<sender@a.test>");
}

TEST_F(SmtpTransactionTest, AuthPrefersCramMd5AndAnswersTheChallenge) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 AUTH PLAIN LOGIN CRAM-MD5";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [](TransactionRequest& req) {
    req.auth_user = "u";
    req.auth_pass = "p";
  });
  EXPECT_EQ(r.auth_mechanism, "CRAM-MD5");
  EXPECT_EQ(seen.commands[1], "AUTH CRAM-MD5");
  EXPECT_EQ(seen.commands[2], "dSAyMmI1MzI0MDEyZjM0ZGFkZTY0NWE3MjE1MmYwMDU1Yg==");
}

TEST_F(SmtpTransactionTest, AuthTypeLoginIsUsedWhenOffered) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 AUTH PLAIN LOGIN CRAM-MD5";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [](TransactionRequest& req) {
    req.auth_user = "u";
    req.auth_pass = "p";
    req.auth_type = "login";
  });
  EXPECT_EQ(r.auth_mechanism, "LOGIN");
  EXPECT_EQ(seen.commands[1], "AUTH LOGIN");
  EXPECT_EQ(seen.commands[2], "dQ==");
  EXPECT_EQ(seen.commands[3], "cA==");
}

TEST_F(SmtpTransactionTest, AuthRejectedIsTransientMovesOnAndNeverShowsThePassword) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 AUTH PLAIN";
  script.auth = "535 5.7.8 Authentication credentials invalid";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [](TransactionRequest& req) {
    req.auth_user = "relay-user";
    req.auth_pass = "s3cret-pass";
  });
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_enhanced, "4.7.8");
  EXPECT_NE(r.failure.find("535 5.7.8"), std::string::npos) << r.failure;
  EXPECT_EQ(r.failure.find("s3cret"), std::string::npos) << r.failure;
  EXPECT_FALSE(Sent(seen, "MAIL"));
  EXPECT_EQ(seen.quits, 1);
}

TEST_F(SmtpTransactionTest, AuthNotOfferedSendsWithoutAndWarns) {
  Seen seen;
  TransactionResult r = Run(Script(), {"a@x.test"}, &seen, [](TransactionRequest& req) {
    req.auth_user = "u";
    req.auth_pass = "p";
  });
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r.auth_mechanism, "");
  EXPECT_NE(r.warning.find("does not offer AUTH"), std::string::npos) << r.warning;
  EXPECT_FALSE(Sent(seen, "AUTH"));
}

TEST_F(SmtpTransactionTest, AuthNotOfferedWithForceAuthIsATransientFailure) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 AUTH GSSAPI";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [](TransactionRequest& req) {
    req.auth_user = "u";
    req.auth_pass = "p";
    req.force_auth = true;
  });
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_enhanced, "4.7.0");
  EXPECT_NE(r.failure.find("force_auth"), std::string::npos) << r.failure;
  EXPECT_NE(r.failure.find("GSSAPI"), std::string::npos) << r.failure;
  EXPECT_FALSE(Sent(seen, "MAIL"));
  EXPECT_EQ(seen.quits, 1);
}

// ---- STARTTLS --------------------------------------------------------------

TEST_F(SmtpTransactionTest, StartTlsVerifiesAgainstTheConfiguredCaAndGreetsAgain) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok) << "openssl req failed, see " << certs.dir;
  Script script;
  script.ehlo = "250-mx.x.test\r\n250-STARTTLS\r\n250 AUTH PLAIN";
  script.tls = ServerTls(certs.cert, certs.key);
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kOpportunistic;
    req.verify_tls = true;
    req.tls_context = ClientTls(certs.ca);
    req.auth_user = "u";
    req.auth_pass = "p";
  });
  ASSERT_TRUE(r.outcomes[0]) << r.failure;
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(seen.tls);
  EXPECT_NE(r.tls.find("TLS"), std::string::npos) << r.tls;
  EXPECT_TRUE(r.tls_verified);
  EXPECT_EQ(r.outcomes[0]->tls, r.tls);
  EXPECT_TRUE(r.outcomes[0]->tls_verified);
  EXPECT_EQ(seen.commands[0], "EHLO tern.test");
  EXPECT_EQ(seen.commands[1], "STARTTLS");
  EXPECT_EQ(seen.commands[2], "EHLO tern.test");
  EXPECT_EQ(seen.commands[3], "AUTH PLAIN AHUAcA==");  // AUTH only after TLS
}

TEST_F(SmtpTransactionTest, OpportunisticTlsRecordsAnUnverifiedCertificate) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 STARTTLS";
  script.tls = ServerTls(certs.self_signed, certs.self_signed_key);
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kOpportunistic;
    req.tls_context = ClientTls(certs.ca);
  });
  ASSERT_TRUE(r.outcomes[0]) << r.failure;
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_FALSE(r.tls.empty());
  EXPECT_FALSE(r.tls_verified);
}

TEST_F(SmtpTransactionTest, ImplicitTlsHandshakesBeforeTheBannerAndNeverSendsStarttls) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  Script script;
  script.ehlo = "250-mx.x.test\r\n250-STARTTLS\r\n250 AUTH PLAIN";  // STARTTLS offered, not to be used
  script.tls = ServerTls(certs.cert, certs.key);
  script.implicit_tls = true;
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kRequired;
    req.implicit_tls = true;
    req.tls_context = ClientTls(certs.ca);
    req.auth_user = "u";
    req.auth_pass = "p";
  });
  ASSERT_TRUE(r.outcomes[0]) << r.failure;
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(seen.tls);
  EXPECT_TRUE(r.tls_verified);
  EXPECT_NE(r.tls.find("TLS"), std::string::npos) << r.tls;
  EXPECT_EQ(seen.commands[0], "EHLO tern.test");
  EXPECT_EQ(seen.commands[1], "AUTH PLAIN AHUAcA==");
  EXPECT_FALSE(Sent(seen, "STARTTLS"));
}

TEST_F(SmtpTransactionTest, ImplicitTlsFailsWithoutPlainTextWhenTheCertificateOrHandshakeFails) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  // A certificate no trusted CA signed.
  Script untrusted;
  untrusted.tls = ServerTls(certs.self_signed, certs.self_signed_key);
  untrusted.implicit_tls = true;
  auto implicit = [&](TransactionRequest& req) {
    req.tls = TlsMode::kRequired;
    req.implicit_tls = true;
    req.tls_context = ClientTls(certs.ca);
  };
  Seen seen;
  TransactionResult r = Run(untrusted, {"a@x.test"}, &seen, implicit);
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_enhanced, "4.7.5");
  EXPECT_NE(r.failure.find("the certificate did not verify"), std::string::npos) << r.failure;
  EXPECT_TRUE(seen.commands.empty());
  // A plain-text server (STARTTLS port): the client's hello is not a
  // banner's answer; it fails instead of talking in plain text.
  Seen plain_seen;
  TransactionResult plain = Run(Script(), {"a@x.test"}, &plain_seen, implicit);
  EXPECT_FALSE(plain.outcomes[0].has_value());
  EXPECT_EQ(plain.failure_enhanced, "4.7.5");
  EXPECT_NE(plain.failure.find("implicit TLS with host"), std::string::npos) << plain.failure;
  EXPECT_FALSE(Sent(plain_seen, "EHLO tern.test"));
  EXPECT_FALSE(Sent(plain_seen, "MAIL"));
}

TEST_F(SmtpTransactionTest, RequiredTlsWithoutStarttlsIsTransient) {
  Seen seen;
  TransactionResult r = Run(Script(), {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kRequired;
    req.tls_context = ClientTls("");
  });
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_enhanced, "4.7.4");
  EXPECT_NE(r.failure.find("does not offer STARTTLS"), std::string::npos) << r.failure;
  EXPECT_FALSE(Sent(seen, "MAIL"));
}

TEST_F(SmtpTransactionTest, RequiredTlsWithAnUntrustedCertificateIsTransient) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 STARTTLS";
  script.tls = ServerTls(certs.self_signed, certs.self_signed_key);
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kRequired;
    req.tls_context = ClientTls(certs.ca);
  });
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_enhanced, "4.7.5");
  EXPECT_NE(r.failure.find("did not verify"), std::string::npos) << r.failure;
  EXPECT_FALSE(r.tls_failed);  // never a reason to fall back to plain text
  EXPECT_FALSE(Sent(seen, "MAIL"));
}

TEST_F(SmtpTransactionTest, RequiredTlsChecksTheMxName) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 STARTTLS";
  script.tls = ServerTls(certs.cert, certs.key);
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.mx_host = "other.x.test";  // the certificate is for mx.x.test
    req.tls = TlsMode::kRequired;
    req.tls_context = ClientTls(certs.ca);
  });
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_enhanced, "4.7.5");
}

TEST_F(SmtpTransactionTest, RejectUnauthorizedFailsTheAddressWithoutPlainFallback) {
  const TestCerts& certs = TestCerts::Get();
  ASSERT_TRUE(certs.ok);
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 STARTTLS";
  script.tls = ServerTls(certs.self_signed, certs.self_signed_key);
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kOpportunistic;
    req.verify_tls = true;
    req.tls_context = ClientTls(certs.ca);
  });
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_TRUE(r.tls_unverified);
  EXPECT_FALSE(r.tls_failed);
  EXPECT_NE(r.failure.find("rejectUnauthorized"), std::string::npos) << r.failure;
}

TEST_F(SmtpTransactionTest, BrokenHandshakeAsksForAPlainTextRetry) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 STARTTLS";
  script.break_tls = true;
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kOpportunistic;
    req.tls_context = ClientTls("");
  });
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_TRUE(r.tls_failed);
  EXPECT_EQ(r.failure_enhanced, "4.7.5");
}

TEST_F(SmtpTransactionTest, StartTlsRefusedGoesOnInPlainText) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 STARTTLS";  // no server context: 454
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kOpportunistic;
    req.tls_context = ClientTls("");
  });
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(r.tls.empty());
  EXPECT_TRUE(Sent(seen, "STARTTLS"));
}

TEST_F(SmtpTransactionTest, TlsNoneNeverSendsStarttls) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 STARTTLS";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kNone;
    req.tls_context = ClientTls("");
  });
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_FALSE(Sent(seen, "STARTTLS"));
}

// ---- DSN parameters, progress hook -----------------------------------------

TEST_F(SmtpTransactionTest, DsnParametersAreRelayedWhenOfferedAndXtextEncoded) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 DSN";
  Seen seen;
  RecipientRequest a("a@x.test");
  a.notify = kNotifySuccess | kNotifyFailure;
  a.orcpt = "rfc822;A+b@x.test";
  RecipientRequest b("b@x.test");
  b.notify = kNotifyNever;
  TransactionResult r = Run(script, {a, b, "c@x.test"}, &seen, [](TransactionRequest& req) {
    req.ret = DsnRetParam::kHdrs;
    req.envid = "env id=1";
  });
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(seen.commands[1], "MAIL FROM:<sender@a.test> RET=HDRS ENVID=env+20id+3D1");
  EXPECT_EQ(seen.commands[2], "RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+2Bb@x.test");
  EXPECT_EQ(seen.commands[3], "RCPT TO:<b@x.test> NOTIFY=NEVER");
  EXPECT_EQ(seen.commands[4], "RCPT TO:<c@x.test>");
}

TEST_F(SmtpTransactionTest, DsnParametersAreLeftOutWhenNotOffered) {
  Seen seen;
  RecipientRequest a("a@x.test");
  a.notify = kNotifyDelay;
  a.orcpt = "rfc822;a@x.test";
  TransactionResult r = Run(Script(), {a}, &seen, [](TransactionRequest& req) {
    req.ret = DsnRetParam::kFull;
    req.envid = "e1";
  });
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(seen.commands[1], "MAIL FROM:<sender@a.test> SIZE=33");
  EXPECT_EQ(seen.commands[2], "RCPT TO:<a@x.test>");
}

// A before_data hook: counts its calls, notes how many commands the server
// had seen, then answers `verdict`. A plain function (not a lambda
// coroutine) so nothing the coroutine needs lives in a closure.
asio::awaitable<absl::Status> CountingGate(int* calls, const Seen* seen, size_t* commands_at_call,
                                           absl::Status verdict) {
  ++*calls;
  *commands_at_call = seen->commands.size();
  co_return verdict;
}

TEST_F(SmtpTransactionTest, BeforeDataHookIsAwaitedOnceJustBeforeData) {
  Seen seen;
  int calls = 0;
  size_t commands_at_call = 0;
  TransactionResult r = Run(Script(), {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.before_data = [&] { return CountingGate(&calls, &seen, &commands_at_call, absl::OkStatus()); };
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(commands_at_call, 3u);  // EHLO MAIL RCPT: DATA not yet sent
  EXPECT_TRUE(r.data_sent);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r.outcomes[0]->mode, "SMTP");
  EXPECT_GT(r.outcomes[0]->remote_port, 0);
}

TEST_F(SmtpTransactionTest, RefusedBeforeDataHookStopsBeforeDataWithRecipientsUndecided) {
  Seen seen;
  int calls = 0;
  size_t commands_at_call = 0;
  TransactionResult r = Run(Script(), {"a@x.test", "b@x.test"}, &seen, [&](TransactionRequest& req) {
    req.before_data = [&] {
      return CountingGate(&calls, &seen, &commands_at_call, absl::UnavailableError("queue unreachable"));
    };
  });
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(Sent(seen, "DATA"));
  EXPECT_FALSE(r.data_sent);
  EXPECT_FALSE(r.outcomes[0]);  // undecided: the caller may retry them later
  EXPECT_FALSE(r.outcomes[1]);
  EXPECT_EQ(r.failure, "queue unreachable");
  EXPECT_EQ(r.failure_enhanced, "4.3.0");
  EXPECT_TRUE(seen.body.empty());
}

TEST_F(SmtpTransactionTest, PipelinedDataRidesWithMailAndRcptAndTheGateStillPrecedesTheBody) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 PIPELINING";
  Seen seen;
  int calls = 0;
  size_t commands_at_call = 0;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.before_data = [&] { return CountingGate(&calls, &seen, &commands_at_call, absl::OkStatus()); };
  });
  EXPECT_TRUE(seen.rcpt_pipelined);  // DATA came in the same write
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(commands_at_call, 4u);  // EHLO MAIL RCPT DATA: the 354 is in, the body is not
  EXPECT_TRUE(r.data_sent);
  EXPECT_FALSE(seen.body.empty());
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
}

TEST_F(SmtpTransactionTest, RefusedGateAfterPipelinedDataHangsUpWithoutTheBody) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 PIPELINING";
  Seen seen;
  int calls = 0;
  size_t commands_at_call = 0;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest req = Request({"a@x.test", "b@x.test"}, port);
  req.pool = &pool;
  req.before_data = [&] {
    return CountingGate(&calls, &seen, &commands_at_call, absl::UnavailableError("queue unreachable"));
  };
  TransactionResult r = RunRequest(req);
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(r.data_sent);
  EXPECT_TRUE(seen.body.empty());
  EXPECT_FALSE(r.outcomes[0]);  // undecided: tried again later
  EXPECT_FALSE(r.outcomes[1]);
  EXPECT_EQ(r.failure_enhanced, "4.3.0");
  // The server waits for a message after its 354: the session cannot be
  // reused, and is not QUIT (that would be taken as message text).
  EXPECT_EQ(pool.idle(), 0u);
  EXPECT_EQ(seen.quits, 0);
}

// A server offering PIPELINING that refuses a@x.test at RCPT.
Script PipeliningRefusingA() {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 PIPELINING";
  script.rcpt["a@x.test"] = "550 5.1.1 unknown";
  return script;
}

TEST_F(SmtpTransactionTest, NoRecipientAcceptedWhilePipeliningReadsTheDataRefusalAndStaysReusable) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Seen seen;
  int calls = 0;
  size_t commands_at_call = 0;
  const uint16_t port = StartServer(PipeliningRefusingA(), &seen);
  TransactionRequest req = Request({"a@x.test"}, port);
  req.pool = &pool;
  req.before_data = [&] { return CountingGate(&calls, &seen, &commands_at_call, absl::OkStatus()); };
  TransactionResult r = RunRequest(req);
  EXPECT_EQ(calls, 0);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r.outcomes[0]->enhanced_status, "5.1.1");
  EXPECT_EQ(pool.idle(), 1u);
  // The next transaction on it is in step: RSET, then its own replies.
  TransactionRequest next = Request({"b@x.test"}, port);
  next.pool = &pool;
  TransactionResult r2 = RunRequest(next);
  ASSERT_TRUE(r2.outcomes[0]);
  EXPECT_EQ(r2.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(r2.reused);
}

TEST_F(SmtpTransactionTest, ServerAcceptingPipelinedDataWithoutRecipientsIsHungUpOn) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script = PipeliningRefusingA();
  script.data_without_rcpt = "354 go ahead";  // RFC 2920 says it must refuse
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest req = Request({"a@x.test"}, port);
  req.pool = &pool;
  TransactionResult r = RunRequest(req);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kPermanent);
  EXPECT_FALSE(r.data_sent);
  EXPECT_TRUE(seen.body.empty());
  EXPECT_EQ(pool.idle(), 0u);
}

// CHUNKING (RFC 3030): the message goes as one BDAT LAST chunk.
constexpr char kChunkingEhlo[] = "250-mx.x.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 CHUNKING";

TEST_F(SmtpTransactionTest, ChunkingServerGetsTheStoredBytesInOneBdatLastAfterTheGate) {
  Script script;
  script.ehlo = kChunkingEhlo;
  script.batch = 2;  // MAIL and RCPT pipelined; no DATA with them
  Seen seen;
  int calls = 0;
  size_t commands_at_call = 0;
  const std::string body = "Subject: hi\r\n\r\n.leading dot stays single\r\n.\r\nlast\r\n";
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.body = std::make_shared<const std::string>(body);
    req.before_data = [&] { return CountingGate(&calls, &seen, &commands_at_call, absl::OkStatus()); };
  });
  EXPECT_TRUE(seen.batched);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(commands_at_call, 3u);  // EHLO MAIL RCPT: nothing of the message yet
  EXPECT_FALSE(Sent(seen, "DATA"));
  EXPECT_TRUE(Sent(seen, absl::StrCat("BDAT ", body.size(), " LAST")));
  EXPECT_EQ(seen.bdat, body);  // byte for byte: no dot-stuffing, no terminator
  EXPECT_TRUE(r.data_sent);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r.outcomes[0]->reply_text, "Ok: queued as 123");
}

TEST_F(SmtpTransactionTest, BdatCountsTheBodyAfterBareLineEndsAreMadeCrlf) {
  Script script;
  script.ehlo = kChunkingEhlo;
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.body = std::make_shared<const std::string>("Subject: lf\n\nbare\rlast");
  });
  EXPECT_EQ(seen.bdat, "Subject: lf\r\n\r\nbare\r\nlast\r\n");
  EXPECT_TRUE(Sent(seen, "BDAT 27 LAST"));
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
}

// DKIM (dkim.h): the signature field is written before the stored message,
// on both paths, and counted in SIZE= and against the server's limit.
TEST_F(SmtpTransactionTest, DkimSignatureFieldPrecedesTheMessageAndCountsInSize) {
  const std::string sig = "DKIM-Signature: v=1; a=rsa-sha256;\r\n b=AAAA\r\n";
  const std::string body = "Subject: hi\r\n\r\nbody\r\n";
  const auto add = [&](TransactionRequest& req) {
    req.body = std::make_shared<const std::string>(body);
    req.dkim_signature = std::make_shared<const std::string>(sig);
  };
  {
    SCOPED_TRACE("DATA");
    Seen seen;
    TransactionResult r = Run(Script(), {"a@x.test"}, &seen, add);
    ASSERT_TRUE(r.outcomes[0]);
    EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
    EXPECT_EQ(seen.commands[1], absl::StrCat("MAIL FROM:<sender@a.test> SIZE=", sig.size() + body.size()));
    EXPECT_EQ(seen.body, absl::StrCat(sig, "Subject: hi\r\n\r\nbody"));
  }
  {
    SCOPED_TRACE("BDAT");
    Script script;
    script.ehlo = kChunkingEhlo;
    Seen seen;
    TransactionResult r = Run(script, {"a@x.test"}, &seen, add);
    ASSERT_TRUE(r.outcomes[0]);
    EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
    EXPECT_TRUE(Sent(seen, absl::StrCat("BDAT ", sig.size() + body.size(), " LAST")));
    EXPECT_EQ(seen.bdat, sig + body);
  }
  {
    SCOPED_TRACE("over the SIZE limit only with the signature");
    Script script;
    script.ehlo = absl::StrCat("250-mx.x.test\r\n250 SIZE ", body.size() + 1);
    Seen seen;
    TransactionResult r = Run(script, {"a@x.test"}, &seen, add);
    ASSERT_TRUE(r.outcomes[0]);
    EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kPermanent);
    EXPECT_EQ(r.outcomes[0]->enhanced_status, "5.3.4");
  }
}

TEST_F(SmtpTransactionTest, DataIsKeptWhenChunkingIsOffOrTheServerIsLmtp) {
  for (const bool lmtp : {false, true}) {
    SCOPED_TRACE(lmtp ? "LMTP" : "chunking=false");
    Script script;
    script.ehlo = kChunkingEhlo;
    script.lmtp = lmtp;
    script.lmtp_replies = {"250 2.0.0 <a@x.test> saved"};
    Seen seen;
    TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
      req.lmtp = lmtp;
      req.chunking = lmtp;  // LMTP keeps DATA even with chunking on
    });
    EXPECT_TRUE(Sent(seen, "DATA"));
    EXPECT_FALSE(Sent(seen, "BDAT"));
    EXPECT_EQ(seen.body, "Subject: hi\r\n\r\n..hidden line\r\nlast");
    ASSERT_TRUE(r.outcomes[0]);
    EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  }
}

TEST_F(SmtpTransactionTest, PermanentReplyToBdatAppliesToTheAcceptedRecipientsOnly) {
  Script script;
  script.ehlo = kChunkingEhlo;
  script.rcpt["no@x.test"] = "550 5.1.1 unknown";
  script.dot = "554 5.6.0 Message content rejected";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "no@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r.outcomes[0]->enhanced_status, "5.6.0");
  EXPECT_EQ(r.outcomes[1]->enhanced_status, "5.1.1");
  EXPECT_TRUE(Sent(seen, "BDAT"));
}

TEST_F(SmtpTransactionTest, BdatAnsweredAsAnUnknownCommandLeavesRecipientsForADataRetry) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script;
  script.ehlo = kChunkingEhlo;
  script.dot = "502 5.5.1 Error: command not implemented";
  Seen seen;
  TransactionResult r =
      Run(script, {"a@x.test", "b@x.test"}, &seen, [&](TransactionRequest& req) { req.pool = &pool; });
  EXPECT_TRUE(r.chunking_refused);
  EXPECT_FALSE(r.outcomes[0]);  // no verdict on the message: not a bounce
  EXPECT_FALSE(r.outcomes[1]);
  EXPECT_NE(r.failure.find("offered CHUNKING but refused BDAT: 502"), std::string::npos) << r.failure;
  EXPECT_EQ(pool.idle(), 0u);  // out of step with the server: not kept
}

TEST_F(SmtpTransactionTest, ConnectionLostAfterBdatLastIsAmbiguous) {
  Script script;
  script.ehlo = kChunkingEhlo;
  script.dot = "CLOSE";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kTransient);
  EXPECT_TRUE(r.outcomes[0]->ambiguous);
  EXPECT_TRUE(r.data_sent);
  EXPECT_EQ(seen.bdat.size(), 35u);
}

TEST_F(SmtpTransactionTest, RefusedGateBeforeBdatSendsNothingOfTheMessage) {
  Script script;
  script.ehlo = kChunkingEhlo;
  Seen seen;
  int calls = 0;
  size_t commands_at_call = 0;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.before_data = [&] {
      return CountingGate(&calls, &seen, &commands_at_call, absl::UnavailableError("queue unreachable"));
    };
  });
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(Sent(seen, "BDAT"));
  EXPECT_TRUE(seen.bdat.empty());
  EXPECT_FALSE(r.data_sent);
  EXPECT_FALSE(r.outcomes[0]);
  EXPECT_EQ(r.failure_enhanced, "4.3.0");
}

TEST_F(SmtpTransactionTest, ChunkingWithoutPipeliningSendsMailAndRcptOneAtATimeThenBdat) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 CHUNKING";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "b@x.test"}, &seen);
  EXPECT_FALSE(seen.rcpt_pipelined);
  EXPECT_TRUE(Sent(seen, "BDAT 35 LAST"));
  EXPECT_EQ(seen.bdat, "Subject: hi\r\n\r\n.hidden line\r\nlast\r\n");
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r.outcomes[1]->outcome, OutcomeClass::kDelivered);
}

TEST_F(SmtpTransactionTest, PooledChunkingSessionCarriesASecondMessageAfterRset) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script;
  script.ehlo = kChunkingEhlo;
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest first = Request({"a@x.test"}, port);
  first.pool = &pool;
  first.body = std::make_shared<const std::string>("Subject: one\r\n\r\n1\r\n");
  TransactionResult r1 = RunRequest(first);
  TransactionRequest second = first;
  second.body = std::make_shared<const std::string>("Subject: two\r\n\r\n2\r\n");
  TransactionResult r2 = RunRequest(second);
  ASSERT_TRUE(r1.outcomes[0] && r2.outcomes[0]);
  EXPECT_EQ(r1.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r2.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(r2.reused);
  EXPECT_EQ(seen.connections, 1);
  EXPECT_EQ(seen.bdat, "Subject: one\r\n\r\n1\r\nSubject: two\r\n\r\n2\r\n");
}

TEST_F(SmtpTransactionTest, RcptRefusedForAllNeverCallsTheHook) {
  // Plain, and with CHUNKING offered: then neither DATA nor BDAT goes out.
  for (const bool chunking : {false, true}) {
    SCOPED_TRACE(chunking ? "CHUNKING" : "plain");
    Script script;
    if (chunking) {
      script.ehlo = kChunkingEhlo;
    }
    script.rcpt["a@x.test"] = "550 5.1.1 unknown";
    Seen seen;
    int calls = 0;
    size_t commands_at_call = 0;
    TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
      req.before_data = [&] { return CountingGate(&calls, &seen, &commands_at_call, absl::OkStatus()); };
    });
    EXPECT_EQ(calls, 0);
    EXPECT_FALSE(r.data_sent);
    EXPECT_FALSE(Sent(seen, "DATA"));
    EXPECT_FALSE(Sent(seen, "BDAT"));
    ASSERT_TRUE(r.outcomes[0]);
    EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kPermanent);
  }
}

// ---- LMTP ------------------------------------------------------------------

TEST_F(SmtpTransactionTest, LmtpAttributesEachReplyToItsOwnRecipient) {
  Script script;
  script.lmtp = true;
  script.ehlo = "250-lmtp.x.test\r\n250 PIPELINING";
  script.rcpt["b@x.test"] = "550 5.1.1 no b";
  script.lmtp_replies = {"250 2.0.0 a saved", "552 5.2.2 c is over quota"};
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "b@x.test", "c@x.test"}, &seen, [](TransactionRequest& req) {
    req.lmtp = true;
  });
  EXPECT_EQ(seen.commands[0], "LHLO tern.test");
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1] && r.outcomes[2]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r.outcomes[0]->reply_text, "a saved");
  EXPECT_EQ(r.outcomes[1]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r.outcomes[1]->reply_text, "no b");
  EXPECT_EQ(r.outcomes[2]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r.outcomes[2]->enhanced_status, "5.2.2");
  EXPECT_EQ(r.outcomes[2]->mode, "LMTP");
}

TEST_F(SmtpTransactionTest, LmtpFirstOkSecondFailedIsNotHarakasBug) {
  // Facts §7: Haraka reports b delivered and a bounced for 250 then 550.
  Script script;
  script.lmtp = true;
  script.lmtp_replies = {"250 2.0.0 ok", "550 5.1.1 gone"};
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "b@x.test"}, &seen, [](TransactionRequest& req) {
    req.lmtp = true;
  });
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r.outcomes[1]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r.outcomes[1]->reply_text, "gone");
}

TEST_F(SmtpTransactionTest, LmtpConnectionLostAfterSomeRepliesLeavesTheRestAmbiguous) {
  Script script;
  script.lmtp = true;
  script.lmtp_replies = {"250 2.0.0 ok"};
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "b@x.test"}, &seen, [](TransactionRequest& req) {
    req.lmtp = true;
  });
  ASSERT_TRUE(r.outcomes[0] && r.outcomes[1]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_FALSE(r.outcomes[0]->ambiguous);
  EXPECT_EQ(r.outcomes[1]->outcome, OutcomeClass::kTransient);
  EXPECT_TRUE(r.outcomes[1]->ambiguous);
}

asio::awaitable<void> ServeUnix(asio::local::stream_protocol::acceptor& acceptor, Script script, Seen* seen) {
  auto [ec, local] = co_await acceptor.async_accept(asio::experimental::as_tuple(asio::use_awaitable));
  if (ec) {
    co_return;
  }
  asio::ip::tcp::socket socket(acceptor.get_executor());
  socket.assign(asio::ip::tcp::v4(), local.release());
  net::Connection c(std::move(socket));
  co_await ServeSession(c, script, seen);
}

TEST_F(SmtpTransactionTest, LmtpOverAUnixSocket) {
  char tmpl[] = "/tmp/tern-lmtp-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/lmtp.sock";
  asio::local::stream_protocol::acceptor acceptor(io_, asio::local::stream_protocol::endpoint(path));
  Script script;
  script.lmtp = true;
  script.lmtp_replies = {"250 2.0.0 stored"};
  Seen seen;
  asio::co_spawn(io_, ServeUnix(acceptor, script, &seen), asio::detached);
  TransactionRequest request = Request({"a@x.test"}, 0);
  request.lmtp = true;
  request.unix_path = path;
  request.ip = "";
  request.mx_host = path;
  TransactionResult r = RunRequest(std::move(request));
  ASSERT_TRUE(r.outcomes[0]) << r.failure;
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(r.outcomes[0]->reply_text, "stored");
  EXPECT_EQ(r.outcomes[0]->mode, "LMTP");
  EXPECT_EQ(r.outcomes[0]->remote_port, 0);
  EXPECT_EQ(seen.commands[0], "LHLO tern.test");
  acceptor.close();
  std::remove(path.c_str());
  rmdir(tmpl);
}

TEST_F(SmtpTransactionTest, UnixSocketConnectFailureIsUndecided) {
  TransactionRequest request = Request({"a@x.test"}, 0);
  request.lmtp = true;
  request.unix_path = "/nonexistent/tern/lmtp.sock";
  TransactionResult r = RunRequest(std::move(request));
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_NE(r.failure.find("unix:/nonexistent/tern/lmtp.sock"), std::string::npos) << r.failure;
}

// ---- Connection reuse ------------------------------------------------------

TEST_F(SmtpTransactionTest, PooledConnectionIsReusedAfterRset) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Seen seen;
  const uint16_t port = StartServer(Script(), &seen);
  TransactionRequest first = Request({"a@x.test"}, port);
  first.pool = &pool;
  TransactionResult r1 = RunRequest(first);
  ASSERT_TRUE(r1.outcomes[0]);
  EXPECT_FALSE(r1.reused);
  EXPECT_EQ(pool.idle(), 1u);
  TransactionResult r2 = RunRequest(first);
  ASSERT_TRUE(r2.outcomes[0]);
  EXPECT_EQ(r2.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(r2.reused);
  EXPECT_EQ(seen.connections, 1);
  EXPECT_EQ(seen.quits, 0);
  EXPECT_TRUE(Sent(seen, "RSET"));
  EXPECT_EQ(std::count(seen.commands.begin(), seen.commands.end(), "EHLO tern.test"), 1);
  EXPECT_EQ(pool.reused(), 1u);
}

TEST_F(SmtpTransactionTest, PipeliningServerGetsRsetInTheMailGroupOnReuse) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script;
  script.ehlo = "250-mx.x.test\r\n250-PIPELINING\r\n250 8BITMIME";
  script.batch = 2;  // MAIL + 1 RCPT
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest req = Request({"a@x.test"}, port);
  req.pool = &pool;
  ASSERT_TRUE(RunRequest(req).outcomes[0]);
  TransactionResult r2 = RunRequest(req);
  ASSERT_TRUE(r2.outcomes[0]) << r2.failure;
  EXPECT_EQ(r2.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(r2.reused);
  EXPECT_EQ(seen.connections, 1);
  // RFC 2920: RSET, MAIL and RCPT went out in one write, in that order.
  EXPECT_TRUE(seen.rset_pipelined);
  const auto rset = std::find(seen.commands.begin(), seen.commands.end(), "RSET");
  ASSERT_NE(rset, seen.commands.end());
  ASSERT_GE(seen.commands.end() - rset, 3);
  EXPECT_EQ(*(rset + 1), "MAIL FROM:<sender@a.test>");
  EXPECT_EQ(*(rset + 2), "RCPT TO:<a@x.test>");
}

TEST_F(SmtpTransactionTest, DeadPooledConnectionIsReplacedTransparentlyWhenRsetIsPipelined) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script;
  script.ehlo = "250-mx.x.test\r\n250-PIPELINING\r\n250 8BITMIME";
  script.close_at = "RSET";  // the server hangs up when the pooled session is reused
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest req = Request({"a@x.test"}, port);
  req.pool = &pool;
  ASSERT_TRUE(RunRequest(req).outcomes[0]);
  TransactionResult r2 = RunRequest(req);
  ASSERT_TRUE(r2.outcomes[0]) << r2.failure;
  EXPECT_EQ(r2.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_TRUE(r2.failure.empty()) << r2.failure;
  EXPECT_FALSE(r2.reused);
  EXPECT_EQ(seen.connections, 2);
}

TEST(PoolKey, SeparatesClientCertificates) {
  TransactionRequest a;
  a.ip = "192.0.2.1";
  TransactionRequest b = a;
  b.tls_client_cert = "/etc/tern/relay.pem";
  EXPECT_NE(PoolKey(a), PoolKey(b));
  TransactionRequest c = b;
  c.tls_client_cert = "/etc/tern/other.pem";
  EXPECT_NE(PoolKey(b), PoolKey(c));
}

TEST_F(SmtpTransactionTest, PoolKeySeparatesAuthIdentities) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 AUTH PLAIN";
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest a = Request({"a@x.test"}, port);
  a.pool = &pool;
  a.auth_user = "alice";
  a.auth_pass = "pa";
  TransactionRequest b = a;
  b.auth_user = "bob";
  EXPECT_NE(PoolKey(a), PoolKey(b));
  RunRequest(a);
  TransactionResult rb = RunRequest(b);
  EXPECT_FALSE(rb.reused);
  EXPECT_EQ(seen.connections, 2);
}

TEST_F(SmtpTransactionTest, MessageLimitQuitsTheConnection) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 1, 100});
  Seen seen;
  const uint16_t port = StartServer(Script(), &seen);
  TransactionRequest req = Request({"a@x.test"}, port);
  req.pool = &pool;
  RunRequest(req);
  Settle(200ms);
  EXPECT_EQ(pool.idle(), 0u);
  EXPECT_EQ(seen.quits, 1);
  TransactionResult r2 = RunRequest(req);
  EXPECT_FALSE(r2.reused);
  EXPECT_EQ(seen.connections, 2);
}

TEST_F(SmtpTransactionTest, IdleExpirySendsQuit) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{150ms, 100, 100});
  Seen seen;
  const uint16_t port = StartServer(Script(), &seen);
  TransactionRequest req = Request({"a@x.test"}, port);
  req.pool = &pool;
  RunRequest(req);
  EXPECT_EQ(pool.idle(), 1u);
  EXPECT_EQ(seen.quits, 0);
  Settle(600ms);
  EXPECT_EQ(pool.idle(), 0u);
  EXPECT_EQ(seen.quits, 1);
}

TEST_F(SmtpTransactionTest, DeadPooledConnectionIsReplacedTransparently) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script;
  script.close_at = "RSET";  // the server hangs up when the pooled session is reused
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest req = Request({"a@x.test"}, port);
  req.pool = &pool;
  RunRequest(req);
  TransactionResult r2 = RunRequest(req);
  ASSERT_TRUE(r2.outcomes[0]) << r2.failure;
  EXPECT_EQ(r2.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_FALSE(r2.reused);
  EXPECT_EQ(seen.connections, 2);
}

TEST_F(SmtpTransactionTest, ConnectionClosedByTheServerWhileIdleIsNotHandedOut) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script;
  script.close_after_dot = true;
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest req = Request({"a@x.test"}, port);
  req.pool = &pool;
  TransactionResult r1 = RunRequest(req);
  ASSERT_TRUE(r1.outcomes[0]);
  EXPECT_EQ(pool.idle(), 1u);
  Settle(100ms);  // the FIN arrives
  EXPECT_EQ(pool.Take(PoolKey(req)), nullptr);
  EXPECT_EQ(pool.idle(), 0u);
  TransactionResult r2 = RunRequest(req);
  EXPECT_FALSE(r2.reused);
  EXPECT_FALSE(Sent(seen, "RSET"));
  EXPECT_EQ(seen.connections, 2);
}

// ---- Failure at each step: 4xx/5xx, hang-up, silence ------------------------

struct StepCase {
  std::string step;
  bool after_dot;
};

// Test listings (and ctest's names) show the step, not the struct's bytes.
void PrintTo(const StepCase& c, std::ostream* os) { *os << c.step; }

class StepFailureTest : public SmtpTransactionTest, public ::testing::WithParamInterface<StepCase> {
 protected:
  // A script and request where the session reaches `step`.
  void Prepare(Script* script, TransactionRequest* req, const std::string& step) {
    if (step == "STARTTLS") {
      const TestCerts& certs = TestCerts::Get();
      script->ehlo = "250-mx.x.test\r\n250 STARTTLS";
      script->tls = ServerTls(certs.cert, certs.key);
      req->tls = TlsMode::kOpportunistic;
      req->tls_context = ClientTls(certs.ca);
    }
    if (step == "AUTH") {
      script->ehlo = "250-mx.x.test\r\n250 AUTH PLAIN";
      req->auth_user = "u";
      req->auth_pass = "p";
    }
  }

  std::chrono::steady_clock::duration* TimeoutFor(TransactionRequest* req, const std::string& step) {
    if (step == "BANNER") return &req->timeouts.banner;
    if (step == "EHLO") return &req->timeouts.ehlo;
    if (step == "STARTTLS") return &req->timeouts.starttls;
    if (step == "AUTH") return &req->timeouts.auth;
    if (step == "MAIL") return &req->timeouts.mail;
    if (step == "RCPT") return &req->timeouts.rcpt;
    if (step == "DATA") return &req->timeouts.data;
    return &req->timeouts.final_dot;
  }
};

TEST_P(StepFailureTest, HangUpLeavesRecipientsUndecidedOrAmbiguous) {
  const StepCase& c = GetParam();
  Script script;
  script.close_at = c.step;
  TransactionRequest req = Request({"a@x.test", "b@x.test"}, 0);
  Prepare(&script, &req, c.step);
  Seen seen;
  req.port = StartServer(script, &seen);
  TransactionResult r = RunRequest(req);
  for (const auto& o : r.outcomes) {
    if (c.after_dot) {
      ASSERT_TRUE(o);
      EXPECT_EQ(o->outcome, OutcomeClass::kTransient);
      EXPECT_TRUE(o->ambiguous);
    } else {
      EXPECT_FALSE(o.has_value()) << c.step;
    }
  }
  if (!c.after_dot) {
    EXPECT_EQ(r.failure_enhanced.substr(0, 2), "4.") << r.failure;
    EXPECT_FALSE(r.failure.empty());
  }
}

TEST_P(StepFailureTest, SilenceHitsThatStepsTimeout) {
  const StepCase& c = GetParam();
  Script script;
  script.stall_at = c.step;
  TransactionRequest req = Request({"a@x.test"}, 0);
  Prepare(&script, &req, c.step);
  for (auto* t : {&req.timeouts.banner, &req.timeouts.ehlo, &req.timeouts.starttls, &req.timeouts.auth,
                  &req.timeouts.mail, &req.timeouts.rcpt, &req.timeouts.data, &req.timeouts.final_dot}) {
    *t = 10s;
  }
  *TimeoutFor(&req, c.step) = 300ms;
  Seen seen;
  req.port = StartServer(script, &seen);
  const auto start = std::chrono::steady_clock::now();
  TransactionResult r = RunRequest(req);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s) << c.step;
  if (c.after_dot) {
    ASSERT_TRUE(r.outcomes[0]);
    EXPECT_TRUE(r.outcomes[0]->ambiguous);
  } else {
    EXPECT_FALSE(r.outcomes[0].has_value());
    EXPECT_NE(r.failure.find("timeout"), std::string::npos) << c.step << ": " << r.failure;
  }
}

INSTANTIATE_TEST_SUITE_P(EveryStep, StepFailureTest,
                         ::testing::Values(StepCase{"BANNER", false}, StepCase{"EHLO", false},
                                           StepCase{"STARTTLS", false}, StepCase{"AUTH", false},
                                           StepCase{"MAIL", false}, StepCase{"RCPT", false},
                                           StepCase{"DATA", false}, StepCase{"DOT", true}),
                         [](const ::testing::TestParamInfo<StepCase>& info) { return info.param.step; });

TEST_F(SmtpTransactionTest, Ehlo421MovesOnWithTheReply) {
  Script script;
  script.ehlo = "421 4.3.2 shutting down";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_code, 421);
  EXPECT_EQ(r.failure_enhanced, "4.3.2");
}

TEST_F(SmtpTransactionTest, StartTls454IsNotFatalButRequiredTlsMakesItTransient) {
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 STARTTLS";
  script.starttls = "454 4.7.0 TLS not available due to local problem";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen, [&](TransactionRequest& req) {
    req.tls = TlsMode::kRequired;
    req.tls_context = ClientTls("");
  });
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_enhanced, "4.7.0");
  EXPECT_NE(r.failure.find("TLS is required"), std::string::npos) << r.failure;
}

TEST_F(SmtpTransactionTest, MailTempfailDecidesEveryRecipientTransient) {
  Script script;
  script.mail = "451 4.7.1 greylisted";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test", "b@x.test"}, &seen);
  for (const auto& o : r.outcomes) {
    ASSERT_TRUE(o);
    EXPECT_EQ(o->outcome, OutcomeClass::kTransient);
    EXPECT_EQ(o->enhanced_status, "4.7.1");
  }
}

TEST_F(SmtpTransactionTest, MailRefusedWhilePipeliningDrainsRcptRepliesAndStaysReusable) {
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100});
  Script script;
  script.ehlo = "250-mx.x.test\r\n250 PIPELINING";
  script.mail = "550 5.7.1 sender refused";
  script.batch = 3;
  script.rcpt["a@x.test"] = "503 5.5.1 need MAIL";
  script.rcpt["b@x.test"] = "503 5.5.1 need MAIL";
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest req = Request({"a@x.test", "b@x.test"}, port);
  req.pool = &pool;
  TransactionResult r = RunRequest(req);
  for (const auto& o : r.outcomes) {
    ASSERT_TRUE(o);
    EXPECT_EQ(o->outcome, OutcomeClass::kPermanent);
    EXPECT_EQ(o->enhanced_status, "5.7.1");
  }
  EXPECT_EQ(pool.idle(), 1u);
}

TEST_F(SmtpTransactionTest, DataTempfailAppliesToAcceptedRecipients) {
  Script script;
  script.data = "451 4.3.0 try later";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kTransient);
  EXPECT_FALSE(r.data_sent);
}

TEST_F(SmtpTransactionTest, DotRepliesDecideTheAcceptedRecipients) {
  Script script;
  script.dot = "451 4.3.0 queue trouble";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kTransient);
  EXPECT_FALSE(r.outcomes[0]->ambiguous);

  Script reject;
  reject.dot = "554 5.6.0 content rejected";
  Seen seen2;
  TransactionResult r2 = Run(reject, {"a@x.test"}, &seen2);
  ASSERT_TRUE(r2.outcomes[0]);
  EXPECT_EQ(r2.outcomes[0]->outcome, OutcomeClass::kPermanent);
  EXPECT_EQ(r2.outcomes[0]->enhanced_status, "5.6.0");
}

TEST_F(SmtpTransactionTest, Reply252CountsAsDelivered) {
  Script script;
  script.rcpt["v@x.test"] = "252 2.1.5 Cannot VRFY user, but will accept message";
  Seen seen;
  TransactionResult r = Run(script, {"v@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
}

TEST_F(SmtpTransactionTest, MultiLineRepliesAreKeptWhole) {
  Script script;
  script.rcpt["a@x.test"] = "452-4.2.2 Mailbox full\r\n452 4.2.2 try later";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  ASSERT_TRUE(r.outcomes[0]);
  EXPECT_EQ(r.outcomes[0]->reply_text, "Mailbox full try later");
  EXPECT_EQ(r.outcomes[0]->enhanced_status, "4.2.2");
}

TEST_F(SmtpTransactionTest, BindToTheRequestedSourceAddress) {
  Seen seen;
  TransactionResult r = Run(Script(), {"a@x.test"}, &seen, [](TransactionRequest& req) { req.bind_ip = "127.0.0.1"; });
  ASSERT_TRUE(r.outcomes[0]) << r.failure;
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);

  Seen seen2;
  TransactionResult bad = Run(Script(), {"a@x.test"}, &seen2, [](TransactionRequest& req) { req.bind_ip = "::1"; });
  EXPECT_FALSE(bad.outcomes[0].has_value());
  EXPECT_NE(bad.failure.find("other address family"), std::string::npos) << bad.failure;
}

TEST_F(SmtpTransactionTest, ABurstToOneDestinationSharesItsConnectionLimitAndEveryMessageGoesThrough) {
  // Eight messages at once, at most two connections: the first two open
  // them, the other six wait and take them over as each transaction ends.
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100, /*max_per_destination=*/2});
  Script script;
  Seen seen;
  size_t most_open = 0;
  std::vector<TransactionResult> results = RunBurst(pool, StartServer(script, &seen), 8, &most_open);
  for (const auto& r : results) {
    ASSERT_EQ(r.outcomes.size(), 1u);
    ASSERT_TRUE(r.outcomes[0]) << r.failure;
    EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  }
  EXPECT_EQ(seen.connections, 2);
  EXPECT_EQ(seen.open_max, 2);
  EXPECT_EQ(most_open, 2u);
  EXPECT_EQ(pool.reused(), 6u);
  EXPECT_EQ(std::count(seen.commands.begin(), seen.commands.end(), "EHLO tern.test"), 2);
}

TEST_F(SmtpTransactionTest, WithoutReuseAClosedConnectionFreesItsSlotForTheNextMessage) {
  // No pooling: each transaction QUITs; the slot passes on when it closes.
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{0s, 100, 100, /*max_per_destination=*/1});
  Script script;
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  size_t most_open = 0;
  std::vector<TransactionResult> results = RunBurst(pool, port, 3, &most_open);
  for (const auto& r : results) {
    ASSERT_TRUE(r.outcomes[0]) << r.failure;
    EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
    EXPECT_FALSE(r.reused);
  }
  EXPECT_EQ(seen.connections, 3);
  EXPECT_EQ(seen.quits, 3);
  EXPECT_EQ(most_open, 1u);
  EXPECT_EQ(pool.open(Destination(Request({"a@x.test"}, port))), 0u);
}

TEST_F(SmtpTransactionTest, AMessageWaitingLongerThanItsConnectionWaitFailsTransientlyUntried) {
  // One slot, held by a transaction whose server never answers the dot.
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100, /*max_per_destination=*/1});
  Script script;
  script.stall_at = "DOT";
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest first = Request({"a@x.test"}, port);
  first.pool = &pool;
  first.timeouts.final_dot = 3s;
  TransactionRequest second = Request({"b@x.test"}, port);
  second.pool = &pool;
  second.connection_wait = 1s;  // the worker's choice; timeouts.connect (2 s) is the fallback
  std::vector<TransactionResult> results = RunTogether({first, second});
  ASSERT_EQ(results.size(), 2u);
  EXPECT_FALSE(results[1].connected);
  EXPECT_FALSE(results[1].outcomes[0].has_value());
  EXPECT_EQ(results[1].failure_enhanced, "4.4.5");
  EXPECT_NE(results[1].failure.find("no connection to mx.x.test[127.0.0.1]"), std::string::npos) << results[1].failure;
  EXPECT_NE(results[1].failure.find("free within 1 s (1 open,"), std::string::npos) << results[1].failure;
  EXPECT_EQ(seen.connections, 1);
}

TEST_F(SmtpTransactionTest, AnIdleSessionOfAnotherKindIsClosedToMakeRoom) {
  // The slot is held by an idle session authenticated as someone else:
  // it is closed so that the waiting transaction can open its own.
  ConnectionPool pool(io_.get_executor(), ConnectionPool::Options{50s, 100, 100, /*max_per_destination=*/1});
  Script script;
  Seen seen;
  const uint16_t port = StartServer(script, &seen);
  TransactionRequest plain = Request({"a@x.test"}, port);
  plain.pool = &pool;
  ASSERT_TRUE(RunRequest(plain).outcomes[0]);
  EXPECT_EQ(pool.idle(), 1u);
  TransactionRequest other = plain;
  other.helo_name = "other.test";  // another pool key, same destination
  ASSERT_NE(PoolKey(other), PoolKey(plain));
  ASSERT_EQ(Destination(other), Destination(plain));
  TransactionResult r = RunRequest(other);
  ASSERT_TRUE(r.outcomes[0]) << r.failure;
  EXPECT_EQ(r.outcomes[0]->outcome, OutcomeClass::kDelivered);
  EXPECT_EQ(seen.connections, 2);
  EXPECT_EQ(seen.quits, 1);
}

}  // namespace
}  // namespace tern::deliverer
