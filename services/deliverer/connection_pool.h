// File: connection_pool.h
//
// SmtpSession: an open SMTP/LMTP connection that has been greeted (and
// possibly upgraded to TLS and authenticated), with what the server offered.
// ConnectionPool keeps such sessions idle between deliveries so that the next
// delivery to the same destination skips connect, banner, EHLO, STARTTLS and
// AUTH (RSET first, by the transaction).
//
// The pool key names everything that makes two sessions interchangeable:
// protocol, MX address (or unix path), port, source address, EHLO name, TLS
// policy and AUTH identity (see PoolKey in smtp_transaction.h), so a
// connection authenticated for one route is never used for another.
//
// Idle sessions are closed with QUIT when they have been idle for
// `idle_timeout`, when they have carried `max_messages` messages, or when the
// pool holds `max_idle` sessions already. A session the server closed (or
// sent anything to) while idle is dropped when taken, so a stale connection
// is never handed out knowingly; the transaction still copes with one that
// dies at RSET by opening a fresh connection.
//
// Connections per destination. With `max_per_destination` set, at most that
// many connections (busy, idle or saying QUIT) are open at once to one
// destination (address and port, or unix socket path); a transaction that
// would need one more waits (Acquire) until a session of its kind is handed
// back or a connection closes, in arrival order, for as long as the caller
// says (the worker gives half of what is left of the delivery's lease).
// Without it a burst of deliveries to one domain opened one connection each:
// hundreds at once, more than many receivers take from one client (Postfix's
// smtp-sink serves 256 and leaves the rest unanswered; large mailbox
// providers answer 421), and the extra sessions waited for a banner until
// they timed out.
//
// Executor: single-threaded like the worker; every method runs on the
// executor given at construction. Idle timers and QUITs are coroutines on it
// that keep the pool's state alive until they finish.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "asio/any_io_executor.hpp"
#include "asio/awaitable.hpp"
#include "lib/net/connection.h"
#include "lib/smtp/reply.h"

namespace tern::deliverer {

class ConnectionSlot;

struct SmtpSession {
  // Declared first so that it is released last, after the connection closed.
  std::unique_ptr<ConnectionSlot> slot;  // null when nothing counts connections
  std::unique_ptr<net::Connection> conn;
  smtp::EhloCapabilities caps;
  bool lmtp = false;
  std::string tls;             // "TLSv1.3 TLS_AES_256_GCM_SHA384" or "" for plain text
  bool tls_verified = false;
  std::string dane;            // the TLSA record that matched, "" = no DANE
  std::string auth_mechanism;  // "" = not authenticated
  uint32_t messages = 0;       // messages completed on this connection
  std::string relay;           // "mx.example.com[192.0.2.1]:25", for logs
};

// Sends QUIT, waits up to `timeout` for the reply, closes the connection.
asio::awaitable<void> QuitSession(SmtpSession& session, std::chrono::steady_clock::duration timeout);

class ConnectionPool {
 public:
  struct Options {
    // 0 disables pooling: every session is closed after its transaction.
    std::chrono::steady_clock::duration idle_timeout = std::chrono::seconds(50);
    uint32_t max_messages = 100;
    size_t max_idle = 10000;
    // Connections open at once per destination; 0 = no limit.
    uint32_t max_per_destination = 0;
  };

  // What Acquire hands out: an idle session of the key (RSET it first), or
  // the right to open a new connection (`slot`, to be moved into the new
  // SmtpSession), or neither when the wait timed out.
  struct Acquired {
    std::unique_ptr<SmtpSession> session;
    std::unique_ptr<ConnectionSlot> slot;
    bool timed_out = false;
  };

  ConnectionPool(asio::any_io_executor executor, Options options);
  ~ConnectionPool();
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;

  bool enabled() const;

  // The most recently parked live session for `key`, or null.
  std::unique_ptr<SmtpSession> Take(const std::string& key);

  // A session for `key` to `destination`: a parked one (as Take), else a
  // slot for a new connection if the destination has one free, else waits
  // up to `timeout` for either (sessions handed back go to waiters of the
  // same key first; idle sessions of other keys are closed to make room).
  asio::awaitable<Acquired> Acquire(std::string key, std::string destination,
                                    std::chrono::steady_clock::duration timeout);

  // Hands `session` to the oldest transaction waiting for its key, or parks
  // it for reuse, or QUITs it (in the background) when pooling is off, it
  // reached max_messages, the pool is full, or only transactions of other
  // keys wait for its destination (its closing frees their slot).
  void Put(const std::string& key, std::unique_ptr<SmtpSession> session);

  // QUITs every idle session (in parallel) and refuses new ones; returns when
  // all are closed or after `timeout`.
  asio::awaitable<void> Shutdown(std::chrono::steady_clock::duration timeout);

  size_t idle() const;
  // Connections counted against `destination`'s limit right now.
  size_t open(const std::string& destination) const;
  // Sessions handed out by Take (i.e. reused) since start.
  uint64_t reused() const;

  class State;

 private:
  std::shared_ptr<State> state_;
};

// One of a destination's connection slots, held by the SmtpSession of the
// connection it was granted for; destroying it frees the slot for the next
// waiting transaction.
class ConnectionSlot {
 public:
  ConnectionSlot(std::weak_ptr<ConnectionPool::State> state, std::string destination);
  ~ConnectionSlot();
  ConnectionSlot(const ConnectionSlot&) = delete;
  ConnectionSlot& operator=(const ConnectionSlot&) = delete;
  const std::string& destination() const { return destination_; }

 private:
  std::weak_ptr<ConnectionPool::State> state_;
  std::string destination_;
};

}  // namespace tern::deliverer
