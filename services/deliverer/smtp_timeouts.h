// File: smtp_timeouts.h
//
// SmtpTimeouts: how long the deliverer waits at each step of an SMTP/LMTP
// session. Every network wait has one of these deadlines; a write uses the
// timeout of the step it belongs to.
//
// Thread-safety: a plain value.
//
// Standards: RFC 5321 §4.5.3.2 (its suggested minimums are longer: 5 min per
// command, 10 min for the final dot; Haraka uses 30 s for everything).
#pragma once

#include <chrono>

namespace tern::deliverer {

// One timeout per step. Defaults match tern.ini [deliverer] (where unset keys
// default to outbound.ini connect_timeout, Haraka's one timeout for all).
struct SmtpTimeouts {
  std::chrono::steady_clock::duration connect = std::chrono::seconds(30);
  std::chrono::steady_clock::duration banner = std::chrono::seconds(30);
  std::chrono::steady_clock::duration ehlo = std::chrono::seconds(30);
  std::chrono::steady_clock::duration starttls = std::chrono::seconds(30);  // command + handshake
  std::chrono::steady_clock::duration auth = std::chrono::seconds(30);
  std::chrono::steady_clock::duration mail = std::chrono::seconds(30);
  std::chrono::steady_clock::duration rcpt = std::chrono::seconds(30);
  std::chrono::steady_clock::duration data = std::chrono::seconds(30);      // DATA → 354
  std::chrono::steady_clock::duration final_dot = std::chrono::minutes(10); // body + final reply(s)
  std::chrono::steady_clock::duration rset = std::chrono::seconds(30);
  std::chrono::steady_clock::duration quit = std::chrono::seconds(5);

  bool operator==(const SmtpTimeouts&) const = default;
};

}  // namespace tern::deliverer
