// RunSmtpTransaction against a scripted SMTP server on 127.0.0.1:0 in the
// same io_context.
#include "services/deliverer/smtp_transaction.h"

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "asio/co_spawn.hpp"
#include "asio/detached.hpp"
#include "asio/io_context.hpp"
#include "asio/ip/tcp.hpp"
#include "asio/use_awaitable.hpp"
#include "gtest/gtest.h"
#include "lib/net/connection.h"

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
  std::string mail = "250 2.1.0 Ok";
  std::map<std::string, std::string> rcpt;  // address -> reply; default 250
  std::string data = "354 End data with <CR><LF>.<CR><LF>";
  std::string dot = "250 2.0.0 Ok: queued as 123";  // "CLOSE": hang up instead
  // Read this many commands (MAIL + RCPTs) before answering any of them; a
  // client that does not pipeline never sends them all, and the test fails.
  size_t batch = 0;
};

struct Seen {
  std::vector<std::string> commands;
  std::string body;  // raw DATA lines, CRLF-joined, before the dot
  bool batched = false;
};

asio::awaitable<void> Reply(net::Connection& c, const std::string& text) {
  (void)co_await c.Write(absl::StrCat(text, "\r\n"), 5s);
}

asio::awaitable<void> Serve(asio::ip::tcp::acceptor& acceptor, Script script, Seen* seen) {
  auto socket = co_await acceptor.async_accept(asio::use_awaitable);
  net::Connection c(std::move(socket));
  co_await Reply(c, script.banner);
  if (!absl::StartsWith(script.banner, "2")) {
    // Wait for QUIT, then hang up.
  }
  auto rcpt_reply = [&](const std::string& line) {
    std::string addr = line.substr(line.find('<') + 1);
    addr = addr.substr(0, addr.find('>'));
    auto it = script.rcpt.find(addr);
    return it == script.rcpt.end() ? std::string("250 2.1.5 Ok") : it->second;
  };
  for (;;) {
    auto line = co_await c.ReadLine(1000, 10s);
    if (!line.ok()) {
      co_return;
    }
    const std::string cmd = line->text;
    seen->commands.push_back(cmd);
    if (absl::StartsWith(cmd, "EHLO")) {
      co_await Reply(c, script.ehlo);
    } else if (absl::StartsWith(cmd, "HELO")) {
      co_await Reply(c, script.helo);
    } else if (absl::StartsWith(cmd, "MAIL")) {
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
        co_await Reply(c, rcpt_reply(batch[i]));
      }
    } else if (absl::StartsWith(cmd, "RCPT")) {
      co_await Reply(c, rcpt_reply(cmd));
    } else if (cmd == "DATA") {
      co_await Reply(c, script.data);
      if (!absl::StartsWith(script.data, "354")) {
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
      if (script.dot == "CLOSE") {
        c.Abort();
        co_return;
      }
      co_await Reply(c, script.dot);
    } else if (cmd == "QUIT") {
      co_await Reply(c, "221 2.0.0 Bye");
      co_return;
    } else {
      co_await Reply(c, "500 5.5.2 what?");
    }
  }
}

class SmtpTransactionTest : public ::testing::Test {
 protected:
  TransactionRequest Request(std::vector<std::string> rcpts, uint16_t port) {
    TransactionRequest r;
    r.helo_name = "tern.test";
    r.mx_host = "mx.x.test";
    r.ip = "127.0.0.1";
    r.port = port;
    r.mail_from = "sender@a.test";
    r.recipients = std::move(rcpts);
    r.body = std::make_shared<const std::string>("Subject: hi\r\n\r\n.hidden line\r\nlast");
    r.timeouts.connect = 2s;
    r.timeouts.command = 2s;
    r.timeouts.final_dot = 2s;
    return r;
  }

  // Runs one transaction against `script`; returns the result and what the
  // server saw.
  TransactionResult Run(const Script& script, std::vector<std::string> rcpts, Seen* seen,
                        std::function<void(TransactionRequest&)> tweak = nullptr) {
    // Runs until both sides are done (the server coroutine references
    // `acceptor` and `seen`, so it must not outlive this call).
    io_.restart();
    asio::ip::tcp::acceptor acceptor(io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    const uint16_t port = acceptor.local_endpoint().port();
    asio::co_spawn(io_, Serve(acceptor, script, seen), asio::detached);
    TransactionRequest request = Request(std::move(rcpts), port);
    if (tweak) {
      tweak(request);
    }
    std::optional<absl::StatusOr<TransactionResult>> result;
    asio::co_spawn(io_, RunSmtpTransaction(std::move(request)),
                   [&](std::exception_ptr e, absl::StatusOr<TransactionResult> r) {
                     EXPECT_FALSE(e);
                     result = std::move(r);
                   });
    io_.run_for(20s);
    EXPECT_TRUE(result.has_value());
    if (!result || !result->ok()) {
      ADD_FAILURE() << (result ? result->status().ToString() : "no result");
      return TransactionResult();
    }
    return **result;
  }

  asio::io_context io_;
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
}

TEST_F(SmtpTransactionTest, Banner554IsNotABounce) {
  Script script;
  script.banner = "554 5.7.1 go away";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_code, 0);
  EXPECT_EQ(r.failure_enhanced, "4.7.1");
}

TEST_F(SmtpTransactionTest, GarbageReplyIsASessionFailureNotACrash) {
  Script script;
  script.ehlo = "hello there";
  Seen seen;
  TransactionResult r = Run(script, {"a@x.test"}, &seen);
  EXPECT_FALSE(r.outcomes[0].has_value());
  EXPECT_EQ(r.failure_enhanced, "4.5.0");
  EXPECT_NE(r.failure.find("hello there"), std::string::npos) << r.failure;
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

TEST_F(SmtpTransactionTest, ReplyTimeoutIsAFailureWithinTheDeadline) {
  asio::ip::tcp::acceptor acceptor(io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  // Accepts but never says anything.
  std::optional<asio::ip::tcp::socket> held;
  acceptor.async_accept([&](const asio::error_code&, asio::ip::tcp::socket s) { held.emplace(std::move(s)); });
  TransactionRequest request = Request({"a@x.test"}, acceptor.local_endpoint().port());
  request.timeouts.command = 300ms;
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

}  // namespace
}  // namespace tern::deliverer
